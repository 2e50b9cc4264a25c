"""Provenance for the paper's tables: every figure and headline table is a tidy CSV in ``results/`` with a JSON
sidecar saying which run made it (parameters, model, package version, commit, date, torch threads, and the stamp of
every result-affecting module the run loaded: :func:`neuronlib.codestamps.code_stamps`, the same per-module stamps
the results cache keys its entries by).

Figures are drawn from these tables (:mod:`neuronlib.paper.figures`), and numbers in the notebooks' prose and the
README are rendered from them, so a number is never typed by hand.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd

from ..codestamps import code_stamps, is_presentation, loaded_code, stamp_sources  # noqa: F401  (the stamps sidecars record)

logger = logging.getLogger(__name__)

RUN_COMMIT_ENV = "NEURONLIB_RUN_COMMIT"  # the commit of the checkout when the run started (set by the runner)


def git_commit(start: Path | None = None) -> str | None:
    """The checkout's HEAD commit (with ``+dirty`` when result-affecting files differ from it), or None."""
    try:
        cwd = str(start or Path.cwd())
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "neuronlib"], cwd=cwd, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def run_commit() -> str | None:
    """The commit recorded when this run started (:data:`RUN_COMMIT_ENV`, set by the runner and by a notebook's
    setup); the checkout's current commit when no run recorded one."""
    import os

    return os.environ.get(RUN_COMMIT_ENV) or git_commit()


def provenance(parameters: dict[str, Any] | None = None, *, model: str | None = None) -> dict[str, Any]:
    from .. import __version__

    return {"parameters": dict(parameters or {}), "model": model, "neuronlib": __version__,
            "commit": run_commit(), "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "code": code_stamps(), "threads": _torch_threads()}


def _torch_threads() -> int | None:
    """torch's thread count in this process (scores move in their last digits with it), or None without torch."""
    import sys

    torch = sys.modules.get("torch")
    return None if torch is None else int(torch.get_num_threads())


def write_table(frame: pd.DataFrame, name: str, directory: str | Path, *, parameters: dict | None = None,
                model: str | None = None, description: str = "") -> Path:
    """Write ``{directory}/{name}.csv`` and its sidecar ``{name}.json`` (provenance + description); returns the CSV."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.csv"
    frame.to_csv(path, index=False)
    meta = provenance(parameters, model=model)
    meta.update({"table": name, "description": description, "columns": list(map(str, frame.columns)),
                 "rows": int(len(frame))})
    (directory / f"{name}.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")
    logger.info(f"wrote {path} ({len(frame)} rows)")
    return path


def read_table(name: str, directory: str | Path) -> pd.DataFrame:
    path = Path(directory) / f"{name}.csv"
    if not path.exists():
        raise FileNotFoundError(f"no results table {path}; run the notebook that writes it (make reproduce)")
    return pd.read_csv(path)


def read_provenance(name: str, directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"no provenance sidecar {path}")
    return json.loads(path.read_text())


def stale_tables(directory: str | Path) -> dict[str, list[str]]:
    """``{table: [modules whose code changed since its run]}`` for the tables in ``directory`` that are stale.

    A sidecar records a stamp per module that its process had loaded (:func:`code_stamps`); a table is stale when one
    of those modules' stamps differs from the current code's (a module that no longer exists counts as changed). A
    sidecar without per-module stamps, or one that cannot be read, is stale with the reason in place of a module."""
    stale: dict[str, list[str]] = {}
    current: dict[str, str] = {}
    for sidecar in sorted(Path(directory).glob("*.json")):
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            stale[sidecar.stem] = ["(unreadable sidecar)"]
            continue
        recorded = meta.get("code")
        if not isinstance(recorded, dict):
            stale[sidecar.stem] = ["(no per-module code stamps)"]
            continue
        missing = [m for m in recorded if m not in current]
        if missing:
            current.update(code_stamps(missing))
        # a module declared presentation since the run cannot have moved its results
        changed = sorted(m for m, stamp in recorded.items() if current.get(m) != stamp and not is_presentation(m))
        if changed:
            stale[sidecar.stem] = changed
    return stale


def results_folder(directory: str | Path | None = None) -> Path | None:
    """``directory``, else ``$NEURONLIB_RESULTS``, else the checkout's ``results/`` (None outside a checkout)."""
    import os

    if directory is not None:
        return Path(directory)
    if os.environ.get("NEURONLIB_RESULTS"):
        return Path(os.environ["NEURONLIB_RESULTS"])
    from .reproduce import checkout

    try:
        return checkout() / "results"
    except ValueError:
        return None


def doctor_lines(directory: str | Path | None = None) -> list[str]:
    """What ``neuronlib doctor`` says about ``results/``: how many tables, the run that made them, and a warning
    naming the tables whose result-affecting code changed after their run (:func:`stale_tables`)."""
    folder = results_folder(directory)
    if folder is None or not folder.is_dir():
        return ["results: no results/ folder here (run `make reproduce` in the checkout)"]
    tables = sorted(p.stem for p in folder.glob("*.csv"))
    if not tables:
        return [f"results: {folder} holds no tables yet"]
    dates = set()
    for name in tables:
        try:
            meta = read_provenance(name, folder)
            dates.add(f"{meta.get('date', '?')[:10]} at {str(meta.get('commit') or '?')[:12]}")
        except (OSError, ValueError):
            dates.add("?")
    lines = [f"results: {len(tables)} tables in {folder} (runs: {', '.join(sorted(dates))})"]
    stale = stale_tables(folder)
    if stale:
        lines.append(f"  WARNING: code that can move a result changed after the run that made {len(stale)} table(s); "
                     "re-run the notebooks that write them:")
        groups: dict[tuple[str, ...], list[str]] = {}
        for name, changed in stale.items():
            groups.setdefault(tuple(changed), []).append(name)
        for changed, names in sorted(groups.items()):
            lines.append(f"    changed {', '.join(changed)}: {', '.join(sorted(names))}")
    else:
        lines.append("  code stamps match every table's run")
    return lines
