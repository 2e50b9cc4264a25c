"""A content-addressed cache for expensive results (attributions, sweeps, trained SAEs' stats).

One key scheme: :func:`cache_key` hashes everything a result depends on (model, method, data hash, options), the
package version and the stamp of the code that computes it (:func:`neuronlib.codestamps.dependency_stamp`: the
kind's module in :data:`KIND_CODE`, or the modules named by ``code=``, and every neuronlib module they import). A
change to that code changes the key, so old entries stop matching without a version number to bump; a docstring
or comment change keeps them.

Entries are never unpickled as arbitrary objects. A value is stored as a tree of plain containers (dict, list, str,
numbers, tensors) written with ``torch.save`` and read with ``torch.load(weights_only=True)``; pandas DataFrames,
numpy arrays, tuples and neuronlib's own dataclasses and named tuples are encoded into that tree and rebuilt on
load (only classes defined inside ``neuronlib`` are rebuilt). Any entry that cannot be read (truncated, garbage,
an old pickled format, another kind) is recomputed with a one-line warning. Writes are atomic (a locked temp
file + rename, :mod:`neuronlib.locks`); a result that cannot be written (disk full, read-only) is returned uncached.
:func:`stats` reports hits and misses per kind for this process.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import torch

logger = logging.getLogger(__name__)

FORMAT = 2  # the on-disk entry format (1 = pickled torch.save of arbitrary objects, no longer read)

# The module that computes each kind of entry: a key holds the stamp of it and of everything it imports. A kind
# missing here cannot make a key without ``code=`` (tests/test_cache_keys.py checks every kind the package uses).
KIND_CODE: dict[str, str] = {
    "sva_attribution": "neuronlib.paper.sva",
    "sva_eval": "neuronlib.paper.sva",
    "prompt_circuits": "neuronlib.paper.casestudy",
    "neuron_maxima": "neuronlib.describe",
    "edges": "neuronlib.edges",
    "sae_baseline": "neuronlib.paper.sae_baselines",
}

_TAG = "__neuronlib_cache__"
_hits: Counter = Counter()
_misses: Counter = Counter()


def results_dir() -> Path:
    from .models import cache_dir

    return cache_dir() / "results"


def data_hash(obj: Any) -> str:
    """A stable hash of JSON-able data (records, prompts, options)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_key(*, code=None, **parts) -> str:
    """The key of a result: a hash of ``parts``, the package version and the stamp of the code that computes it.

    ``code``: the module name(s) that compute the result; default the module of ``parts["kind"]`` in
    :data:`KIND_CODE` (a kind without one raises ValueError: say which code computes it)."""
    from . import __version__
    from .codestamps import dependency_stamp

    if code is None:
        kind = parts.get("kind")
        if kind not in KIND_CODE:
            raise ValueError(f"cache_key: which code computes a {kind!r} entry? pass code= (module names) or add the "
                             "kind to neuronlib.cache.KIND_CODE")
        code = KIND_CODE[kind]
    return data_hash({**parts, "neuronlib": __version__, "code": dependency_stamp(code)})


def entry_path(kind: str, key: str, directory: Path | None = None) -> Path:
    return Path(directory or results_dir()) / kind / f"{key}.pt"


def stats() -> dict[str, dict[str, int]]:
    """{kind: {"hits": n, "misses": n}} for this process (a miss is any computed entry, unreadable ones included)."""
    kinds = sorted(set(_hits) | set(_misses))
    return {k: {"hits": _hits[k], "misses": _misses[k]} for k in kinds}


def reset_stats() -> None:
    _hits.clear()
    _misses.clear()


# ----------------------------------------------------------------------------------------------------------------
# Encoding values into what torch.load(weights_only=True) reads back.

def _qualname(cls) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _neuronlib_class(name: str):
    module, _, qual = name.partition(":")
    if not (module == "neuronlib" or module.startswith("neuronlib.")) or "." in qual or not qual:
        raise TypeError(f"cache entry names class {name!r}, which is not a neuronlib class")
    cls = getattr(importlib.import_module(module), qual)
    if not isinstance(cls, type):
        raise TypeError(f"cache entry names {name!r}, which is not a class")
    return cls


def encode(value: Any) -> Any:
    """``value`` as a tree of dicts, lists, strings, numbers and tensors; TypeError for what cannot be stored."""
    import numpy as np
    import pandas as pd

    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor, torch.dtype)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            return {_TAG: "ndarray_object", "items": [encode(v) for v in value.tolist()]}
        return {_TAG: "ndarray", "tensor": torch.from_numpy(np.array(value, copy=True))}
    if isinstance(value, pd.DataFrame):
        return {_TAG: "DataFrame", "columns": [encode(c) for c in value.columns],
                "data": [_encode_series(value.iloc[:, i]) for i in range(value.shape[1])],
                "index": _encode_series(value.index.to_series()), "index_name": encode(value.index.name)}
    if isinstance(value, pd.Series):
        return {_TAG: "Series", "data": _encode_series(value), "name": encode(value.name),
                "index": _encode_series(value.index.to_series())}
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        cls = type(value)
        _neuronlib_class(_qualname(cls))  # only neuronlib's named tuples
        return {_TAG: "namedtuple", "class": _qualname(cls), "items": [encode(v) for v in value]}
    if isinstance(value, tuple):
        return {_TAG: "tuple", "items": [encode(v) for v in value]}
    if isinstance(value, (set, frozenset)):
        return {_TAG: "set", "items": [encode(v) for v in sorted(value, key=repr)]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) and k != _TAG for k in value):
            return {k: encode(v) for k, v in value.items()}
        return {_TAG: "dict", "items": [[encode(k), encode(v)] for k, v in value.items()]}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        name = _qualname(type(value))
        try:
            _neuronlib_class(name)
        except (TypeError, ImportError, AttributeError):
            raise TypeError(f"cannot cache a {type(value).__name__} (only neuronlib's dataclasses)") from None
        return {_TAG: "dataclass", "class": name,
                "fields": {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    raise TypeError(f"cannot cache a value of type {type(value).__module__}.{type(value).__name__}")


def _encode_series(series) -> dict:
    import numpy as np

    dtype = str(series.dtype)
    values = series.to_numpy()
    if values.dtype.kind in "biuf" and values.dtype != np.float16:
        return {"dtype": dtype, "tensor": torch.from_numpy(np.array(values, copy=True))}
    return {"dtype": dtype, "items": [encode(v) for v in series.tolist()]}


def _decode_series(blob: dict):
    import pandas as pd

    if "tensor" in blob:
        return pd.Series(blob["tensor"].numpy(), dtype=blob["dtype"])
    items = [decode(v) for v in blob["items"]]
    try:
        return pd.Series(items, dtype=blob["dtype"])
    except (TypeError, ValueError):
        return pd.Series(items, dtype=object)


def decode(tree: Any) -> Any:
    """The inverse of :func:`encode`."""
    import pandas as pd

    if isinstance(tree, list):
        return [decode(v) for v in tree]
    if not isinstance(tree, dict):
        return tree
    tag = tree.get(_TAG)
    if tag is None:
        return {k: decode(v) for k, v in tree.items()}
    if tag == "tuple":
        return tuple(decode(v) for v in tree["items"])
    if tag == "set":
        return {decode(v) for v in tree["items"]}
    if tag == "dict":
        return {decode(k): decode(v) for k, v in tree["items"]}
    if tag == "ndarray":
        return tree["tensor"].numpy()
    if tag == "ndarray_object":
        import numpy as np

        out = np.empty(len(tree["items"]), dtype=object)
        out[:] = [decode(v) for v in tree["items"]]
        return out
    if tag == "DataFrame":
        columns = [decode(c) for c in tree["columns"]]
        index = pd.Index(_decode_series(tree["index"]), name=decode(tree["index_name"]))
        frame = pd.DataFrame({i: _decode_series(s).set_axis(index) for i, s in enumerate(tree["data"])}, index=index)
        frame.columns = columns
        return frame
    if tag == "Series":
        series = _decode_series(tree["data"])
        series.index = pd.Index(_decode_series(tree["index"]))
        series.name = decode(tree["name"])
        return series
    if tag == "namedtuple":
        return _neuronlib_class(tree["class"])(*[decode(v) for v in tree["items"]])
    if tag == "dataclass":
        cls = _neuronlib_class(tree["class"])
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{tree['class']} is not a dataclass")
        fields = {k: decode(v) for k, v in tree["fields"].items()}
        init = {f.name for f in dataclasses.fields(cls) if f.init}
        obj = cls(**{k: v for k, v in fields.items() if k in init})
        for k, v in fields.items():
            if k not in init:
                object.__setattr__(obj, k, v)
        return obj
    raise TypeError(f"unknown cache entry tag {tag!r}")


# ----------------------------------------------------------------------------------------------------------------

def read_entry(path: Path, kind: str | None = None):
    """The value stored at ``path``; raises on anything unreadable, of another format or another kind."""
    blob = torch.load(path, weights_only=True, map_location="cpu")
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or "value" not in blob:
        raise ValueError("not a neuronlib cache entry of format 2")
    if kind is not None and blob.get("kind") != kind:
        raise ValueError(f"entry of kind {blob.get('kind')!r}, expected {kind!r}")
    return decode(blob["value"])


def write_entry(path: Path, kind: str, value) -> None:
    from .locks import remove_stale, temporary

    blob = {"format": FORMAT, "kind": kind, "value": encode(value)}
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent, f".{path.name}.tmp-")  # left by a run killed mid-write
    with temporary(path.parent, f".{path.name}.tmp-") as tmp:
        torch.save(blob, tmp)
        os.replace(tmp, path)


def cached_entry(kind: str, key: str, compute: Callable[[], Any], *, refresh: bool = False,
                 directory: Path | None = None) -> tuple[Any, bool]:
    """(value, hit): the stored result for (kind, key), or the computed one (then stored) with ``hit=False``.

    An unreadable entry (truncated, garbage bytes, an old pickled entry, an entry of another kind) is
    recomputed with a one-line warning (``hit=False``). A value that cannot be stored safely (see the module
    docstring), or that cannot be written (disk full, read-only folder), is returned uncached with a one-line
    warning: a failing cache never fails the computation."""
    path = entry_path(kind, key, directory)
    try:
        present = path.exists()
    except OSError:  # a folder this user may not read: a miss (the write below says why it is not cached)
        present = False
    if present and not refresh:
        try:
            value = read_entry(path, kind)
        except Exception as err:  # noqa: BLE001 - any damage means: recompute
            logger.warning(f"cache: unreadable {kind} entry {path.name} ({type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''}); recomputing")
        else:
            _hits[kind] += 1
            logger.debug(f"cache hit: {kind} {key}")
            return value, True
    _misses[kind] += 1
    logger.debug(f"cache miss: {kind} {key}")
    value = compute()
    try:
        write_entry(path, kind, value)
    except TypeError as err:
        logger.warning(f"cache: {kind} result not stored ({err})")
    except (OSError, RuntimeError) as err:  # disk full (torch's zip writer raises RuntimeError), read-only, ...
        # the result is what the caller waited for: hand it back and say the cache missed it
        logger.warning(f"cache: {kind} result computed but not cached in {path.parent} ({_reason(err)}); "
                       "it is recomputed next time")
    return value, False


def _reason(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def cached(kind: str, key: str, compute: Callable[[], Any], *, refresh: bool = False, directory: Path | None = None):
    """The stored result for (kind, key), computing and storing it on a miss (:func:`cached_entry` without the flag)."""
    return cached_entry(kind, key, compute, refresh=refresh, directory=directory)[0]
