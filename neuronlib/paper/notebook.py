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

from ..logs import show_logs


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
    t_start: float = field(default_factory=time.perf_counter)
    _model: object = None

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
        from .results import git_commit

        when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        return (f"run of {when}, neuronlib {__version__} at commit {git_commit() or 'unknown'}\n"
                f"MODEL={self.model_name} SMOKE={self.smoke} threads={self.threads}\n"
                f"figures -> {self.figures}\nresults -> {self.results}\ncache   -> {self.cache or 'default'}")


def _checkout_or_cwd() -> Path:
    from .reproduce import checkout

    try:
        return checkout()
    except ValueError:
        return Path.cwd()


def setup(*, MODEL: str, SMOKE: bool, FIGURES_DIR=None, CACHE_DIR=None, RESULTS_DIR=None, REFRESH: bool = False,
          THREADS: int | None = None, name: str = "notebook") -> Session:
    """Resolve a notebook's output folders, torch threads and logging; see the module docstring."""
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
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
    if THREADS is None:
        busy = os.getloadavg()[0] > 0.75 * (os.cpu_count() or 1)
        THREADS = 1 if busy else (os.cpu_count() or 1)
    torch.set_num_threads(int(THREADS))
    try:
        import pandas as pd

        pd.set_option("display.width", 160, "display.max_columns", 30, "display.precision", 3,
                      "display.max_colwidth", 90)
    except ImportError:
        pass
    return Session(model_name=MODEL, smoke=bool(SMOKE), figures=figures, results=results, cache=cache,
                   refresh=bool(REFRESH), threads=int(THREADS), scratch=scratch if SMOKE else None)
