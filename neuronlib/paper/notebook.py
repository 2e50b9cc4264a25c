"""The one setup every notebook runs after its ``parameters`` cell.

Every notebook takes the same parameter names (``MODEL``, ``SMOKE``, ``FIGURES_DIR``, ``CACHE_DIR``,
``RESULTS_DIR``, ``REFRESH``) and hands them to :func:`setup`, which decides where things go:

- full run: figures into ``$NEURONLIB_FIGURES`` or the checkout's ``figures/``, tables into ``results/``, the
  results cache under ``$NEURONLIB_CACHE``;
- SMOKE run: everything into one temporary folder (under ``$NEURONLIB_SMOKE_DIR`` when the runner sets it), so a
  smoke run never overwrites committed figures or tables, and the folder is removed when the kernel exits unless
  the runner owns it.
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..inputs import as_int
from ..logs import show_logs

# torch threads of a notebook kernel unless its THREADS parameter says otherwise. Fixed, never read from the load
# average: scores differ in the last digits (up to 6e-6) between 1 and 2 threads, so a rerun with another count would
# not reproduce the committed tables byte for byte. Each table's sidecar records the count (results.provenance).
DEFAULT_THREADS = 1


@dataclass
class Session:
    model_name: str
    smoke: bool
    figures: Path
    results: Path
    cache: Path | None
    refresh: bool
    threads: int
    scratch: Path | None = None  # SMOKE: the temporary folder that holds everything the run writes
    name: str = "notebook"
    params: dict = field(default_factory=dict)  # the run's parameters (after SMOKE's overrides): every table records them
    t_start: float = field(default_factory=time.perf_counter)
    _model: object = None

    def cached(self, step: str, fn, *args, **kwargs):
        """``fn(*args, **kwargs)``, from the results cache when this step already ran on the same inputs.

        The key holds the notebook and step names, ``fn``'s name, a fingerprint of every argument (a model by name,
        device and dtype; frames, arrays and tensors by content) and the stamp of the code that computes the step
        (:func:`step_code`, through :func:`neuronlib.cache.cache_key`), so a code change or other inputs recompute.
        ``REFRESH=True`` recomputes. For steps whose result is a table or a tree of plain values (what
        :mod:`neuronlib.cache` stores); anything else is returned uncached."""
        from .. import cache

        key = cache.cache_key(kind="notebook_step", code=step_code(fn, *args, *kwargs.values()), notebook=self.name,
                              step=step, fn=fingerprint(fn), args=[fingerprint(a) for a in args],
                              kwargs={k: fingerprint(v) for k, v in sorted(kwargs.items())})
        return cache.cached("notebook_step", key, lambda: fn(*args, **kwargs), refresh=self.refresh,
                            directory=self.cache)

    def save(self, frame, name: str, description: str, *, model: str | None = None):
        """Write ``frame`` as ``results/{name}.csv`` with its sidecar (:func:`neuronlib.paper.results.write_table`):
        this session's :attr:`params`, ``model`` (default: the session's model name) and ``description``."""
        from .results import write_table

        return write_table(frame, name, self.results, parameters=self.params, model=model or self.model_name,
                           description=description)

    @property
    def model(self):
        """The loaded model (loaded on first use)."""
        if self._model is None:
            import neuronlib

            self._model = neuronlib.load_model(self.model_name)
        return self._model

    def show(self, fig, name: str):
        """Save ``fig`` as ``figures/{name}.png/.pdf``, close it and display the saved PNG."""
        import matplotlib.pyplot as plt

        from ..plotting import save_figure

        paths = save_figure(fig, name, directory=self.figures)
        plt.close(fig)
        return self._display(paths)

    def figure(self, name: str, **overrides):
        """Draw registered figure ``name`` (:data:`neuronlib.paper.figures.FIGURES`) from this session's results
        tables, save it into its figures folder and display it: the same file ``make figures`` draws. ``overrides``
        (``rc=``, ``colors=``, the figure function's options) go to :func:`neuronlib.paper.figures.draw`."""
        from .figures import save

        return self._display(save(name, self.results, self.figures, **overrides))

    @staticmethod
    def _display(paths):
        try:
            from IPython.display import Image, display

            display(Image(filename=str(paths[0])))
        except ImportError:
            pass
        return paths

    def elapsed(self) -> str:
        return f"{(time.perf_counter() - self.t_start) / 60:.1f} min"

    def __str__(self) -> str:
        import datetime

        from .. import __version__
        from .results import run_commit

        when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        return (f"run of {when}, neuronlib {__version__} at commit {run_commit() or 'unknown'}\n"
                f"MODEL={self.model_name} SMOKE={self.smoke} threads={self.threads}\n"
                f"figures -> {self.figures}\nresults -> {self.results}\ncache   -> {self.cache or 'default'}")


def fingerprint(value):
    """A JSON-able stand-in for ``value`` that changes when its content does (for cache keys)."""
    import dataclasses
    import hashlib
    import json

    import numpy as np
    import pandas as pd
    import torch

    def digest(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()[:16]

    if hasattr(value, "hf") and hasattr(value, "tokenizer"):  # a neuronlib Model
        return {"model": value.name, "device": str(value.device), "dtype": str(value.dtype),
                "saes": sorted(getattr(value, "saes", {}) or {})}
    if isinstance(value, pd.DataFrame):
        try:
            content = pd.util.hash_pandas_object(value, index=True).values.tobytes()
        except TypeError:  # unhashable cells (lists): hash the table's JSON instead
            content = json.dumps(value.to_dict("split"), sort_keys=True, default=str).encode()
        return {"frame": digest(content), "columns": [str(c) for c in value.columns],
                "dtypes": [str(d) for d in value.dtypes]}
    if isinstance(value, pd.Series):
        return {"series": digest(pd.util.hash_pandas_object(value, index=True).values.tobytes()), "name": str(value.name)}
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        return {"tensor": digest(t.view(torch.uint8).numpy().tobytes() if t.numel() else b""), "shape": list(t.shape),
                "dtype": str(t.dtype)}
    if isinstance(value, np.ndarray):
        return {"array": digest(np.ascontiguousarray(value).tobytes()), "shape": list(value.shape),
                "dtype": str(value.dtype)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"type": type(value).__qualname__,
                **{f.name: fingerprint(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if hasattr(value, "to_pandas") and hasattr(value, "column_names"):  # a datasets.Dataset
        return fingerprint(value.to_pandas())
    if callable(value) and hasattr(value, "__code__"):  # a function: by name, and by its code unless it is ours
        module = value.__module__ or ""
        name = f"{module}.{value.__qualname__}"
        if module.startswith("neuronlib"):
            return {"function": name}
        return {"function": name, "code": digest(_code_bytes(value.__code__))}
    if isinstance(value, dict):
        return {str(k): fingerprint(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [fingerprint(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    raise TypeError(f"cannot fingerprint a {type(value).__name__} for a cache key; pass plain values, frames, "
                    "arrays or tensors")


def step_code(*values) -> list[str]:
    """The neuronlib modules a notebook step's code comes from, the roots of its cache key's code stamp: the module
    of each neuronlib function among ``values`` (the step's function and arguments); for a function defined
    elsewhere (in the notebook), the neuronlib modules and functions its code refers to by global name, nested
    functions included. A step that reaches no neuronlib code by these rules gets every module of the package."""
    import types

    from ..codestamps import package_modules

    known = package_modules()
    found: set[str] = set()

    def visit(value, seen):
        if id(value) in seen:
            return
        seen.add(id(value))
        if isinstance(value, types.ModuleType):
            name = value.__name__
        elif callable(value) and hasattr(value, "__module__"):
            name = getattr(value, "__module__", None) or ""
        else:
            return
        if name in known:
            found.add(name)
        code = getattr(value, "__code__", None)
        if code is not None and name not in known:  # a function of the notebook: what it calls by global name
            for global_name in _global_names(code):
                visit(value.__globals__.get(global_name), seen)

    seen: set[int] = set()
    for v in values:
        for item in (v if isinstance(v, (list, tuple)) else v.values() if isinstance(v, dict) else [v]):
            visit(item, seen)
    return sorted(found) or sorted(known)


def _global_names(code) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            names |= _global_names(const)
    return names


def _code_bytes(code) -> bytes:
    """A function's bytecode, names and constants, nested functions included (repr of a code object has an address)."""
    parts = [code.co_code, repr(code.co_names).encode()]
    for const in code.co_consts:
        parts.append(_code_bytes(const) if hasattr(const, "co_code") else repr(const).encode())
    return b"\x00".join(parts)


def _checkout_or_cwd() -> Path:
    from .reproduce import checkout

    try:
        return checkout()
    except ValueError:
        return Path.cwd()


def setup(*, MODEL: str, SMOKE: bool, FIGURES_DIR=None, CACHE_DIR=None, RESULTS_DIR=None, REFRESH: bool = False,
          THREADS: int | None = None, name: str = "notebook") -> Session:
    """Resolve a notebook's output folders, torch threads (``THREADS``, default :data:`DEFAULT_THREADS`: the same
    on every machine) and logging; see the module docstring."""
    import torch

    from .results import RUN_COMMIT_ENV, git_commit

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not os.environ.get(RUN_COMMIT_ENV):  # tables record the commit the run started from, not the one at writing
        os.environ[RUN_COMMIT_ENV] = git_commit(_checkout_or_cwd()) or ""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    show_logs("INFO")
    if SMOKE:
        parent = os.environ.get("NEURONLIB_SMOKE_DIR")
        if parent:
            Path(parent).mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f"{name}-smoke-", dir=parent))
        if not parent:
            atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        figures = Path(FIGURES_DIR or os.environ.get("NEURONLIB_FIGURES") or scratch / "figures")
        results = Path(RESULTS_DIR or scratch / "results")
        cache = Path(CACHE_DIR or scratch / "cache")
    else:
        root = _checkout_or_cwd()
        figures = Path(FIGURES_DIR or os.environ.get("NEURONLIB_FIGURES") or root / "figures")
        results = Path(RESULTS_DIR or os.environ.get("NEURONLIB_RESULTS") or root / "results")
        cache = Path(CACHE_DIR) if CACHE_DIR else None
    for folder in (figures, results):
        folder.mkdir(parents=True, exist_ok=True)
    THREADS = DEFAULT_THREADS if THREADS is None else as_int(THREADS, "THREADS", minimum=1)
    torch.set_num_threads(THREADS)
    try:
        import pandas as pd

        pd.set_option("display.width", 160, "display.max_columns", 30, "display.precision", 3,
                      "display.max_colwidth", 90)
    except ImportError:
        pass
    report_to_runner()
    return Session(model_name=MODEL, smoke=bool(SMOKE), figures=figures, results=results, cache=cache,
                   refresh=bool(REFRESH), threads=int(THREADS), scratch=scratch if SMOKE else None, name=name)


def report_to_runner() -> None:
    """When ``neuronlib reproduce`` runs this kernel (its variables set): append every results-cache entry the
    notebook uses to the runner's log, for its re-use count next time, and keep writing the running progress bars
    to its progress file, for the terminal (a kernel's own output only reaches the executed notebook)."""
    from .runplan import CACHE_LOG_ENV, PROGRESS_ENV

    if os.environ.get(CACHE_LOG_ENV):
        record_cache_use(Path(os.environ[CACHE_LOG_ENV]))
    if os.environ.get(PROGRESS_ENV):
        mirror_progress(Path(os.environ[PROGRESS_ENV]))


def record_cache_use(log: Path) -> None:
    """From now on, every :func:`neuronlib.cache.cached_entry` call of this process appends one JSON line to ``log``:
    kind, entry path, hit, the key's code roots and their :func:`neuronlib.codestamps.dependency_stamp`.

    The cache module's functions are wrapped here, not changed: every cache key holds the code stamp of
    :mod:`neuronlib.cache` (the kinds' modules import it), so a hook written into it would retire every stored
    entry. Callers look the functions up on the module at call time, so the wrappers see every entry."""
    import json

    from .. import cache
    from ..codestamps import dependency_stamp

    if getattr(cache.cached_entry, "records_to", None) == str(log):
        return
    make_key = getattr(cache.cache_key, "wrapped", cache.cache_key)
    get_entry = getattr(cache.cached_entry, "wrapped", cache.cached_entry)
    code_of: dict[str, tuple[list[str], str]] = {}

    def cache_key(*, code=None, **parts):
        key = make_key(code=code, **parts)
        roots = code if code is not None else cache.KIND_CODE.get(parts.get("kind"))
        roots = [roots] if isinstance(roots, str) else sorted(roots or ())
        code_of[key] = (roots, dependency_stamp(roots) if roots else "")
        if parts.get("kind") == "sae_baseline":  # a trained SAE: saved outside the results cache, its key in cfg.json
            from ..models import cache_dir

            write({"kind": "sae_baseline", "path": str((cache_dir() / "saes").resolve()), "key": key, "hit": None,
                   "readable": True, "code": roots, "stamp": code_of[key][1]})
        return key

    def cached_entry(kind, key, compute, **options):
        value, hit = get_entry(kind, key, compute, **options)
        roots, stamp = code_of.get(key, ([], ""))
        path = cache.entry_path(kind, key, options.get("directory")).resolve()
        readable = hit
        if not hit and path.is_file():  # a value the cache writes but cannot read back is recomputed every run
            try:
                cache.read_entry(path, kind)
                readable = True
            except Exception:  # noqa: BLE001 - whatever the cache's reader refuses
                readable = False
        write({"kind": kind, "path": str(path), "key": key, "hit": hit, "readable": readable, "code": roots,
               "stamp": stamp})
        return value, hit

    def write(line: dict):
        with open(log, "a") as stream:  # one short line per write: appends from worker threads do not interleave
            stream.write(json.dumps(line) + "\n")

    cache_key.wrapped, cached_entry.wrapped, cached_entry.records_to = make_key, get_entry, str(log)
    cache.cache_key, cache.cached_entry = cache_key, cached_entry


def mirror_progress(path: Path, *, every_s: float = 1.0):
    """A daemon thread that writes the running tqdm bars of this process (every tqdm registers in
    ``tqdm.tqdm._instances``; disabled ones do not), outermost first, as one-line meters with their ETA, and the
    last message neuronlib logged (steps without a bar say what they finished), to ``path`` every ``every_s``
    seconds while they change. Returns the thread."""
    import json
    import logging
    import threading

    from tqdm import tqdm

    running = next((t for t in threading.enumerate() if t.name == "neuronlib-progress"), None)
    if running is not None:
        return running

    class LastMessage(logging.Handler):
        message = ""

        def emit(self, record):
            self.message = " ".join(record.getMessage().split())

    last_message = LastMessage(logging.INFO)
    logging.getLogger("neuronlib").addHandler(last_message)

    with_total = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
    without_total = "{desc}: {n_fmt} [{elapsed}, {rate_fmt}{postfix}]"

    def meters() -> list[str]:
        with tqdm.get_lock():
            bars = [bar for bar in tqdm._instances if not bar.disable]
        out = []
        for bar in sorted(bars, key=lambda b: b.start_t):
            d = bar.format_dict
            out.append(tqdm.format_meter(**{**d, "bar_format": with_total if d["total"] else without_total}))
        return out

    def loop():
        last = None
        while True:
            try:
                now = {"bars": meters(), "log": last_message.message}
            except Exception:  # noqa: BLE001 - a bar closing mid-read: try again at the next tick
                now = last
            if now != last:
                tmp = path.with_name(f".{path.name}.tmp")
                try:
                    tmp.write_text(json.dumps(now))
                    os.replace(tmp, path)
                except OSError:  # the runner's folder is gone: nobody is watching
                    return
                last = now
            time.sleep(every_s)

    thread = threading.Thread(target=loop, name="neuronlib-progress", daemon=True)
    thread.start()
    return thread
