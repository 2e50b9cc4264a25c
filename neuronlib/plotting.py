"""One way to save figures (PNG + PDF into figures/); the style itself is :mod:`neuronlib.paper.style`.

Figure functions elsewhere take DataFrames (cached results), so figures can be restyled without recomputing.
"""
from __future__ import annotations

import os
from pathlib import Path

# The project's colours and style live in neuronlib.paper.style; notebooks 01 and 04 call plotting.style().
from .paper.style import COLORS, STYLE, style  # noqa: F401


def figures_dir() -> Path:
    """Where figures go: ``$NEURONLIB_FIGURES`` (set by the reproduce runner), else ``./figures``."""
    return Path(os.environ.get("NEURONLIB_FIGURES", Path.cwd() / "figures"))


def save_figure(fig, name: str, *, directory: str | Path | None = None) -> list[Path]:
    """Save ``fig`` as ``{name}.png`` and ``{name}.pdf``; returns the paths.

    The files are byte-identical for the same figure under the pinned matplotlib: the PDF carries no creation
    date, and Agg's PNG no time stamp."""
    out = Path(directory) if directory is not None else figures_dir()
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        path = out / f"{name}.{ext}"
        fig.savefig(path, metadata={"CreationDate": None} if ext == "pdf" else None)
        paths.append(path)
    return paths
