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


def read_table(name: str, columns, path=None):
    """A packaged JSON-lines table (``path`` overrides it) as a DataFrame with exactly ``columns``, in that order;
    a file without one of them is an error that names the file."""
    import pandas as pd

    path = Path(path) if path is not None else packaged(name)
    df = pd.read_json(path, lines=True, dtype=False)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    return df[list(columns)].reset_index(drop=True)
