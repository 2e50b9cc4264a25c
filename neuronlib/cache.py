"""A content-addressed cache for expensive results (attributions, sweeps, trained SAEs' stats).

The key is a hash of everything the result depends on (model, method, data hash, options, package version), so a
changed input never returns a stale result. Writes are atomic (temp file + rename).
"""
from __future__ import annotations

import logging

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch


logger = logging.getLogger(__name__)

def results_dir() -> Path:
    from .models import cache_dir

    return cache_dir() / "results"


def data_hash(obj: Any) -> str:
    """A stable hash of JSON-able data (records, prompts, options)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_key(**parts) -> str:
    from . import __version__

    return data_hash({**parts, "neuronlib": __version__})


def cached(kind: str, key: str, compute: Callable[[], Any], *, refresh: bool = False, directory: Path | None = None):
    """Return the stored result for (kind, key), computing and storing it on a miss (torch.save format)."""
    path = (directory or results_dir()) / kind / f"{key}.pt"
    if path.exists() and not refresh:
        try:
            return torch.load(path, weights_only=False)
        except (OSError, RuntimeError, EOFError) as err:
            logger.warning(f"unreadable cache entry {path} ({err}); recomputing")
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, dir=path.parent)
    os.close(fd)
    try:
        torch.save(value, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return value
