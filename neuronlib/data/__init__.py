"""Datasets the paper uses: subject-verb agreement, capitals, an offline text corpus.

The data files ship inside the package (``neuronlib/data/files``) and are read with :mod:`importlib.resources`, so
an installed neuronlib works outside the repository; the repository's ``data/`` holds identical copies for readers
(``tests/test_packaging.py`` checks that they match).
"""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def packaged(name: str = "") -> Path:
    """Path of a file (or folder) shipped in ``neuronlib/data/files``, e.g. ``packaged("sva")``."""
    path = Path(str(files(__name__) / "files")) / name
    if not path.exists():
        raise FileNotFoundError(f"no packaged data file {name!r} (looked in {path.parent})")
    return path
