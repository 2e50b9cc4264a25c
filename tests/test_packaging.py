"""The package reads its data from inside itself, and the repository's data/ matches the packaged copy."""
from pathlib import Path

import pytest

from neuronlib.data import packaged

REPO = Path(__file__).resolve().parents[1]


def test_repository_data_matches_packaged_copy():
    shipped = packaged()
    files = sorted(p.relative_to(shipped) for p in shipped.rglob("*.jsonl"))
    assert files, "no packaged data files"
    repo_files = sorted(p.relative_to(REPO / "data") for p in (REPO / "data").rglob("*.jsonl"))
    assert files == repo_files, "data/ and neuronlib/data/files hold different file sets"
    for rel in files:
        assert (shipped / rel).read_bytes() == (REPO / "data" / rel).read_bytes(), f"{rel} differs"


def test_missing_packaged_file_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="no packaged data file"):
        packaged("nosuch.jsonl")


def test_library_never_reaches_into_the_checkout():
    offenders = []
    for path in (REPO / "neuronlib").rglob("*.py"):
        text = path.read_text()
        if "parents[" in text or "REPO_ROOT" in text:
            offenders.append(str(path.relative_to(REPO)))
    assert not offenders, f"library code reaches into the checkout by relative path: {offenders}"
