"""One figure style for every notebook, and one way to save figures (PNG + PDF into figures/).

Figure functions elsewhere take DataFrames (cached results), so figures can be restyled without recomputing.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

# Colours per basis / method, shared by all figures so a reader learns them once.
COLORS = {
    "mlp_acts": "#1b6ca8", "mlp_out": "#e07b00", "attn_out": "#4c9a2a", "resid": "#8e44ad", "embed": "#7f7f7f",
    "sae_mlp_out": "#f4b35e", "sae_resid": "#c39bd3",
    "relp": "#1b6ca8", "ig": "#d1495b", "atp": "#66a182", "ig-inputs": "#edae49",
    "relp-no-gate": "#7aa6c2", "relp-no-half": "#9fc5e8",
}

STYLE = {
    "figure.dpi": 110, "savefig.dpi": 200, "savefig.bbox": "tight", "font.size": 10, "axes.titlesize": 11,
    "axes.labelsize": 10, "legend.fontsize": 8, "legend.frameon": False, "axes.spines.top": False,
    "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.25, "lines.linewidth": 1.6, "lines.markersize": 4,
}


def figures_dir() -> Path:
    """Where figures go: ``$NEURONLIB_FIGURES`` (set by the reproduce runner), else ``./figures``."""
    return Path(os.environ.get("NEURONLIB_FIGURES", Path.cwd() / "figures"))


@contextlib.contextmanager
def style():
    """``with plotting.style():`` applies the project style to figures made inside the block only."""
    import matplotlib.pyplot as plt

    with plt.rc_context(STYLE):
        yield


def save_figure(fig, name: str, *, directory: str | Path | None = None) -> list[Path]:
    """Save ``fig`` as ``{name}.png`` and ``{name}.pdf``; returns the paths."""
    out = Path(directory) if directory is not None else figures_dir()
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        path = out / f"{name}.{ext}"
        fig.savefig(path, metadata={"CreationDate": None} if ext == "pdf" else None)
        paths.append(path)
    return paths
