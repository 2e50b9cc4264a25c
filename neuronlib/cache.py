"""A content-addressed cache for expensive results (attributions, sweeps, trained SAEs' stats).

One key scheme: :func:`cache_key` hashes everything a result depends on (model, method, data hash, options), the
package version and, when the parts name a ``kind``, that kind's code version (:data:`CODE_VERSIONS`; bump it when
the code that computes that kind changes, so its old entries stop matching). :func:`cached` also stores the kind's
code version in each entry and treats an entry of another version as a miss.

Entries are never unpickled as arbitrary objects. A value is stored as a tree of plain containers (dict, list, str,
numbers, tensors) written with ``torch.save`` and read with ``torch.load(weights_only=True)``; pandas DataFrames,
numpy arrays, tuples and neuronlib's own dataclasses and named tuples are encoded into that tree and rebuilt on
load (only classes defined inside ``neuronlib`` are rebuilt). Any entry that cannot be read (truncated, garbage,
an old pickled format, another code version) is recomputed with a one-line warning. Writes are atomic (a locked temp
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

# Per-kind code version: bump a kind's number when the code that computes it changes.
CODE_VERSIONS: dict[str, int] = {
    "sva_attribution": 1,
    "sva_eval": 1,
    "prompt_circuits": 1,
    "neuron_maxima": 1,
    "edges": 1,
    "sae_baseline": 1,
}

_TAG = "__neuronlib_cache__"
_hits: Counter = Counter()
_misses: Counter = Counter()


def results_dir() -> Path:
    from .models import cache_dir

    return cache_dir() / "results"


def code_version(kind: str) -> int:
    return CODE_VERSIONS.get(kind, 1)


def data_hash(obj: Any) -> str:
    """A stable hash of JSON-able data (records, prompts, options)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_key(**parts) -> str:
    """The key of a result: a hash of ``parts``, the package version and (if ``kind`` is a part) its code version."""
    from . import __version__

    extra = {"neuronlib": __version__}
    if "kind" in parts and code_version(str(parts["kind"])) != 1:  # version 1 keeps the keys made before versions
        extra["code_version"] = code_version(str(parts["kind"]))
    return data_hash({**parts, **extra})


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
    """The value stored at ``path``; raises on anything unreadable, of another format or another code version."""
    blob = torch.load(path, weights_only=True, map_location="cpu")
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or "value" not in blob:
        raise ValueError("not a neuronlib cache entry of format 2")
    if kind is not None and (blob.get("kind") != kind or blob.get("code_version") != code_version(kind)):
        raise ValueError(f"entry of kind {blob.get('kind')!r} version {blob.get('code_version')}, "
                         f"expected {kind!r} version {code_version(kind)}")
    return decode(blob["value"])


def write_entry(path: Path, kind: str, value) -> None:
    from .locks import remove_stale, temporary

    blob = {"format": FORMAT, "kind": kind, "code_version": code_version(kind), "value": encode(value)}
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent, f".{path.name}.tmp-")  # left by a run killed mid-write
    with temporary(path.parent, f".{path.name}.tmp-") as tmp:
        torch.save(blob, tmp)
        os.replace(tmp, path)


def cached_entry(kind: str, key: str, compute: Callable[[], Any], *, refresh: bool = False,
                 directory: Path | None = None) -> tuple[Any, bool]:
    """(value, hit): the stored result for (kind, key), or the computed one (then stored) with ``hit=False``.

    An unreadable entry (truncated, garbage bytes, an old pickled entry, another code version of ``kind``) is
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
