"""What ``neuronlib reproduce`` says before and while it runs: a time estimate per notebook and what it re-uses.

**Estimates.** :data:`REFERENCE` holds each notebook's measured wall time at the paper's sizes on the reference
machine (:data:`REFERENCE_MACHINE`), for a first run (empty results cache) and a second run (everything cached).
A short calibration (:func:`calibration_workload`: a fixed 1-thread MLP forward + backward at SmolLM2-135M's widths,
timed in a child process so the runner never holds torch) compared with the same workload's time on the reference
machine (:data:`REFERENCE_CALIBRATION_S`) scales them to this machine. They are estimates: the notebooks' time does
not scale exactly with one matrix workload, and the reference first-run times were summed from runs made on cores
shared with other jobs.

**Re-use.** After a notebook runs to the end, the runner writes a record next to its executed copy
(``NAME.cache.json``): every results-cache entry the notebook read or wrote (its path, whether it reads back, and
the stamp of the code its key holds, :func:`neuronlib.codestamps.dependency_stamp`) and a signature of what else goes into the keys (the
notebook's code cells, its parameters, the package version, the package data files, ``$NEURONLIB_DEVICE``). The
next run counts an entry as re-used only when the signature is the same, the entry's file is there, it read back
and its code stamp is unchanged; a notebook with anything else is estimated as a first run.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# Measured wall times (minutes) at the paper's sizes (300 train / 40 test SVA pairs per template), each notebook run
# through `python -m neuronlib reproduce --only NAME`: (first run, second run, where measured).
# Second runs: benchmarks/results/reproduce.md, run "warm 300/40, cached steps" (2026-11-30 09:20-09:27), and for 03
# on Qwen2.5-Coder-1.5B the README's Full reproduction table (commit e29b25b). First runs: that README table's
# first-run column, or benchmarks/results/reproduce.md run "cold results (SAEs, model files kept), paper's sizes"
# (2026-11-30 11:50-12:46) where the README's figure had some steps cached before.
REFERENCE: dict[str, tuple[float, float, str]] = {
    "00": (0.5, 0.5, "reproduce.md, cold results / cached steps"),
    "01": (113.8, 1.4, "README: SAE training 29.8 + SAE-basis attributions and evaluations 84; cached steps"),
    "02": (207.0, 1.3, "README: 159 + 25 data seeds + 23 per-site IG (cores shared); cached steps"),
    "03": (20.7, 1.2, "README: 18.7 on Qwen2.5-Coder-1.5B + ~2 GGUF conversion; second run 1.2"),
    "04": (22.9, 1.2, "README: 22.9 with 32-prompt node pools; cached steps"),
    "05": (11.1, 0.8, "reproduce.md, cold results (cores shared); cached steps"),
    "06": (16.9, 1.2, "reproduce.md, cold results (cores shared); cached steps"),
}
REFERENCE_MACHINE = "AMD EPYC, 2 cores, no GPU, torch 2.13.0+cpu"
# calibration_workload() on a machine of the reference machine's type (AMD EPYC, 2 cores, 24 GiB, torch 2.13.0+cpu):
# the median of 5 calls (0.148-0.158 s) on 2026-12-05, 1-minute load 1.7-1.9 from other jobs (the notebook times
# above were measured at load 0.1-3.2)
REFERENCE_CALIBRATION_S = 0.153

RECORD_SUFFIX = ".cache.json"
RECORD_FORMAT = 1
CACHE_LOG_ENV = "NEURONLIB_CACHE_LOG"  # the kernel appends the cache entries it uses here (notebook.setup)
PROGRESS_ENV = "NEURONLIB_PROGRESS"  # the kernel writes its running progress bars here (notebook.setup)
_SIGNATURE_ENV = ("NEURONLIB_DEVICE",)


def calibration_workload(*, device: str = "cpu", threads: int = 1, repeats: int = 5, steps: int = 8) -> float:
    """Seconds of the best of ``repeats`` timings of ``steps`` forward + backward passes of a gated MLP at
    SmolLM2-135M's widths (576 -> 1536 -> 576, 128 tokens) with ``threads`` torch threads on ``device``."""
    import torch

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    x_TD = torch.randn(128, 576, generator=gen).to(device)
    weights = [torch.randn(a, b, generator=gen).div(a ** 0.5).to(device).requires_grad_()
               for a, b in ((576, 1536), (576, 1536), (1536, 576))]

    def once():
        for _ in range(steps):
            h_TM = torch.nn.functional.silu(x_TD @ weights[0]) * (x_TD @ weights[1])
            (h_TM @ weights[2]).square().mean().backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    once()  # warm-up: allocations, kernels
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        once()
        best = min(best, time.perf_counter() - t0)
    return best


def calibrate(*, threads: int | None = None, timeout: float = 120) -> tuple[float | None, str]:
    """(speed factor, basis): this machine's :func:`calibration_workload` time over the reference machine's (2.0 =
    twice as slow), run in a child process on ``$NEURONLIB_DEVICE`` with ``threads`` torch threads (None: the
    notebooks' default); (None, why) if it could not run. The factor includes what other jobs take of the machine
    now."""
    device = os.environ.get("NEURONLIB_DEVICE") or "cpu"
    code = ("import sys\nfrom neuronlib.paper.notebook import DEFAULT_THREADS\n"
            "from neuronlib.paper.runplan import calibration_workload\n"
            "threads = int(sys.argv[2]) if sys.argv[2] != 'None' else DEFAULT_THREADS\n"
            "print(threads, calibration_workload(device=sys.argv[1], threads=threads))")
    try:
        out = subprocess.run([sys.executable, "-c", code, device, str(threads)], capture_output=True, text=True,
                             timeout=timeout, env={**os.environ, "PYTHONPATH": _pythonpath()})
        used, seconds = out.stdout.strip().splitlines()[-1].split()
        used, seconds = int(used), float(seconds)
    except (subprocess.TimeoutExpired, ValueError, IndexError, OSError) as err:
        return None, f"nothing: the calibration failed ({type(err).__name__}), so the reference machine's times"
    factor = seconds / REFERENCE_CALIBRATION_S
    return factor, (f"a {seconds:.3f} s torch workload on {device} ({used} thread{'s' * (used != 1)}) against "
                    f"{REFERENCE_CALIBRATION_S:.3f} s there: x{factor:.2f}")


def _pythonpath() -> str:
    """The child imports this neuronlib, wherever the runner's came from."""
    import neuronlib

    here = str(Path(neuronlib.__file__).resolve().parent.parent)
    return os.pathsep.join([here, *filter(None, [os.environ.get("PYTHONPATH")])])


# ---------------------------------------------------------------------------------------------------- records

def record_path(executed: Path, book: Path) -> Path:
    return Path(executed) / f"{book.stem}{RECORD_SUFFIX}"


def signature(book: Path, parameters: dict) -> dict:
    """What goes into a notebook's cache keys besides the code: its code cells, its parameters, the package version
    and data files, and the device variable (each as a short hash or value, so a record can say what changed)."""
    from .. import __version__

    cells = json.loads(Path(book).read_text())["cells"]
    code = [("".join(c["source"]), sorted(c.get("metadata", {}).get("tags", []))) for c in cells
            if c["cell_type"] == "code"]
    data = hashlib.sha256()
    import neuronlib

    root = Path(neuronlib.__file__).resolve().parent / "data"
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        data.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return {"notebook": _hash(code), "parameters": {k: repr(v) for k, v in sorted(parameters.items())},
            "neuronlib": __version__, "data": data.hexdigest()[:16],
            "env": {name: os.environ.get(name) for name in _SIGNATURE_ENV}}


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_cache_log(path: Path) -> list[dict]:
    """The entries a kernel appended to ``path`` (one JSON object a line; a torn last line is skipped), one per
    entry."""
    entries = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        entries.setdefault((entry["kind"], entry["path"], entry.get("key")), entry)  # the first says if it was a hit
    return list(entries.values())


def write_record(path: Path, *, book: Path, parameters: dict, seconds: float, entries: list[dict]) -> None:
    """The record of a notebook that ran to the end (see the module docstring); written atomically."""
    blob = {"format": RECORD_FORMAT, "notebook": book.name, "signature": signature(book, parameters),
            "seconds": round(seconds, 1), "hits": sum(bool(e.get("hit")) for e in entries),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "entries": entries}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(blob, indent=1))
    os.replace(tmp, path)


@dataclass
class Reuse:
    """What a notebook's next run can take from the results cache."""
    reused: int  # entries whose file is there and whose code stamp is unchanged
    total: int  # entries the last run used
    why_not: str = ""  # why nothing counts as re-used (no record, a changed parameter), or what recomputes
    last_seconds: float | None = None
    recorded: bool = True  # False: no record of an earlier run
    changed: bool = False  # the notebook, its parameters, the package version or data changed since that run

    @property
    def complete(self) -> bool:
        return self.total > 0 and self.reused == self.total and not self.why_not


def reuse(book: Path, parameters: dict, record: Path) -> Reuse:
    """What ``book``'s run with ``parameters`` re-uses, from the record its last full run left at ``record``."""
    try:
        blob = json.loads(Path(record).read_text())
    except (OSError, json.JSONDecodeError):
        return Reuse(0, 0, "no record of an earlier run", recorded=False)
    if blob.get("format") != RECORD_FORMAT:
        return Reuse(0, 0, "no record of an earlier run in this format", recorded=False)
    old, new = blob["signature"], signature(book, parameters)
    changed = [name for name in ("notebook", "neuronlib", "data", "env") if old.get(name) != new[name]]
    keys = set(old["parameters"]) | set(new["parameters"])
    changed += [f"parameter {k}" for k in sorted(keys) if old["parameters"].get(k) != new["parameters"].get(k)]
    entries = blob.get("entries", [])
    if parameters.get("REFRESH") is True:
        return Reuse(0, len(entries), "REFRESH=True recomputes every step", blob.get("seconds"), changed=True)
    if changed:
        return Reuse(0, len(entries), f"changed since the last run: {', '.join(changed)}", blob.get("seconds"),
                     changed=True)
    from ..codestamps import dependency_stamp

    stamps: dict[tuple, str] = {}
    saved: dict[str, set] = {}
    missing = stale = unreadable = 0
    for entry in entries:
        roots = tuple(entry.get("code") or ())
        if roots not in stamps:
            try:
                stamps[roots] = dependency_stamp(list(roots)) if roots else ""
            except (KeyError, ValueError, OSError):  # a module that is gone
                stamps[roots] = "gone"
        if not roots or stamps[roots] != entry.get("stamp"):
            stale += 1
        elif not entry.get("readable", False):
            unreadable += 1
        elif not _present(entry, saved):
            missing += 1
    why = ", ".join(part for part in (f"{stale} with changed code" if stale else "",
                                      f"{unreadable} the cache could not read back" if unreadable else "",
                                      f"{missing} missing" if missing else "") if part)
    return Reuse(len(entries) - missing - stale - unreadable, len(entries), why, blob.get("seconds"))


def _present(entry: dict, saved: dict[str, set]) -> bool:
    """Whether ``entry`` is stored: a results-cache file, or a trained SAE whose ``cfg.json`` under the folder
    ``entry["path"]`` holds its key (``saved``: the keys found per folder, filled on first use)."""
    if entry["kind"] != "sae_baseline":
        return Path(entry["path"]).is_file()
    if entry["path"] not in saved:
        keys = set()
        for cfg in Path(entry["path"]).rglob("cfg.json"):
            try:
                keys.add(json.loads(cfg.read_text()).get("train_key"))
            except (OSError, ValueError, AttributeError):
                continue
        saved[entry["path"]] = keys
    return entry.get("key") in saved[entry["path"]]


# ---------------------------------------------------------------------------------------------------- the plan

@dataclass
class Estimate:
    book: str
    minutes: float | None  # None: no reference time for this notebook
    line: str


def estimate(book: Path, *, factor: float | None, state: Reuse | None, smoke: bool, paper_sizes: bool) -> Estimate:
    """One notebook's plan line: its estimated wall time on this machine and what it re-uses."""
    ref = REFERENCE.get(book.name[:2])
    scale = factor or 1.0
    if smoke:
        return Estimate(book.name, None, f"{book.name}: SMOKE (small sizes; the estimates are for full runs only)")
    if ref is None:
        return Estimate(book.name, None, f"{book.name}: no reference time")
    cold, warm = ref[0] * scale, ref[1] * scale
    sizes = "" if paper_sizes else " (at the paper's sizes; your parameters differ)"
    last = f"; last run here {state.last_seconds / 60:.1f} min" if state and state.last_seconds else ""
    if state is not None and state.complete:
        return Estimate(book.name, warm, f"{book.name}: re-uses {state.reused} cached results, est. "
                                         f"{minutes_text(warm)} instead of {minutes_text(cold)}{sizes}{last}")
    if state is not None and state.recorded and not state.why_not and not state.total:
        return Estimate(book.name, cold, f"{book.name}: caches nothing, est. {minutes_text(cold)}{sizes}{last}")
    if state is not None and state.recorded and state.total and not state.changed:
        return Estimate(book.name, cold, f"{book.name}: re-uses {state.reused} of {state.total} cached results "
                                         f"({state.total - state.reused} recompute: {state.why_not}), est. up to "
                                         f"{minutes_text(cold)}{sizes}{last}")
    why = state.why_not if state is not None and state.why_not else "no record of an earlier run"
    return Estimate(book.name, cold, f"{book.name}: nothing counted as re-used ({why}), est. up to "
                                     f"{minutes_text(cold)} as a first run{sizes}")


def minutes_text(m: float) -> str:
    return f"{m:.1f} min" if m < 10 else f"{m:.0f} min" if m < 120 else f"{m / 60:.1f} h"


def plan(books: list[Path], *, parameters_of: dict, executed: Path, smoke: bool, factor: float | None,
         basis: str, paper_sizes: bool) -> tuple[list[Estimate], list[str]]:
    """(one estimate per notebook, the lines to print before the first notebook starts)."""
    rows = []
    for book in books:
        state = None if smoke else reuse(book, parameters_of[book], record_path(executed, book))
        rows.append(estimate(book, factor=factor, state=state, smoke=smoke, paper_sizes=paper_sizes))
    lines = ["plan (estimated wall time on this machine):"] + [f"  {r.line}" for r in rows]
    known = [r.minutes for r in rows if r.minutes is not None]
    if known:
        lines.append(f"  total est. {minutes_text(sum(known))}; basis: measured times on {REFERENCE_MACHINE} "
                     f"(benchmarks/results/reproduce.md, README Performance) scaled by {basis}")
    return rows, lines
