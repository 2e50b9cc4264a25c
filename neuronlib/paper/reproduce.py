"""Run every numbered notebook in order with papermill: the package's main job.

Executed copies go to ``runs/`` (outside git); figures go to ``figures/`` (a smoke run writes them under
``runs/smoke/figures`` instead, so it never overwrites the committed full-run figures).
"""
from __future__ import annotations

import logging

import os
import time
from pathlib import Path

import pandas as pd

from ..models import DEFAULT_MODEL


logger = logging.getLogger(__name__)

def checkout(start: Path | None = None) -> Path:
    """The repository checkout that holds ``notebooks/``: ``start`` (default: the working directory) or a parent.

    The notebooks are not part of the installed package; ``make reproduce`` runs from the checkout."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "notebooks").is_dir() and (folder / "pyproject.toml").is_file():
            return folder
    raise ValueError(f"no neuron-circuits checkout (a folder with notebooks/ and pyproject.toml) at or above {here}; "
                     "run from the repository")


def notebooks(directory: Path | None = None) -> list[Path]:
    directory = Path(directory) if directory is not None else checkout() / "notebooks"
    return sorted(p for p in directory.glob("[0-9][0-9]_*.ipynb"))


def _figure_state(directory: Path) -> dict[str, float]:
    if not directory.exists():
        return {}
    return {p.name: p.stat().st_mtime for p in directory.iterdir() if p.is_file()}


def run_notebook(path: Path, *, smoke: bool, model: str, out_dir: Path, figures: Path, log=None) -> dict:
    log = log or logger.info
    import papermill

    out_dir.mkdir(parents=True, exist_ok=True)
    figures.mkdir(parents=True, exist_ok=True)
    before = _figure_state(figures)
    old_env = os.environ.get("NEURONLIB_FIGURES")
    os.environ["NEURONLIB_FIGURES"] = str(figures)  # the kernel inherits it
    t0 = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(path), str(out_dir / path.name), parameters={"MODEL": model, "SMOKE": smoke},
            cwd=str(path.parent), progress_bar=True, kernel_name="python3",
        )
    finally:
        if old_env is None:
            os.environ.pop("NEURONLIB_FIGURES", None)
        else:
            os.environ["NEURONLIB_FIGURES"] = old_env
    seconds = time.perf_counter() - t0
    after = _figure_state(figures)
    made = sorted(name for name, mtime in after.items() if before.get(name) != mtime)
    log(f"  {path.name}: {seconds:.0f} s, {len(made)} figure files")
    return {"notebook": path.name, "seconds": seconds, "figures": made, "executed": str(out_dir / path.name)}


def reproduce(*, smoke: bool = False, model: str = DEFAULT_MODEL, only: list[str] | None = None,
              out_dir: Path | None = None, log=None) -> pd.DataFrame:
    """Execute the notebooks; returns one row per notebook (seconds, figures written, executed copy)."""
    log = log or logger.info
    root = checkout()
    base = Path(out_dir) if out_dir is not None else root / "runs" / ("smoke" if smoke else "full")
    figures = base / "figures" if smoke else Path(os.environ.get("NEURONLIB_FIGURES", root / "figures"))
    books = notebooks()
    if only:
        books = [b for b in books if any(key in b.name for key in only)]
    if not books:
        raise ValueError("no notebooks to run" + (f" matching {only}" if only else ""))
    log(f"neuronlib reproduce: {len(books)} notebooks, model {model}, {'SMOKE' if smoke else 'full'} mode")
    t0 = time.perf_counter()
    rows = []
    for i, book in enumerate(books, 1):
        log(f"[{i}/{len(books)}] {book.name}")
        rows.append(run_notebook(book, smoke=smoke, model=model, out_dir=base / "executed", figures=figures, log=log))
    total = time.perf_counter() - t0
    log(f"done in {total / 60:.1f} min; executed notebooks in {base / 'executed'}; figures in {figures}")
    for row in rows:
        for fig in row["figures"]:
            log(f"  {fig:40s} <- {row['notebook']}")
    return pd.DataFrame(rows)
