"""The paper's presentation in one place: labels, colours, number formats and the matplotlib style.

Tables (``neuronlib.paper.sva``, ``neuronlib.paper.readme``) and figures (``neuronlib.paper.figures``) both read
these names, so a method is called and coloured the same in every table, README row and figure.

Style precedence, lowest first: matplotlib's defaults < :data:`STYLE` (the project's rcParams) < the user's own
rcParams (a style sheet, ``matplotlibrc`` or ``plt.rcParams[...] = ...`` before drawing) < the ``rc`` passed to
:func:`style` or to :func:`neuronlib.paper.figures.draw`. Only rcParams that still hold matplotlib's default get
the project's value, so a user's setting is never silently overwritten. Every text size follows ``font.size``: the
project's title, label and legend sizes and the sizes the figure functions pass (:func:`fontsize`) are stated at
the project's 10 pt and scale with the font size in force, so ``rc={"font.size": 13}`` enlarges all of a figure's
text. Colours: :func:`color` reads :data:`COLORS`, overridden inside ``with palette({...}):``.
"""
from __future__ import annotations

import contextlib
import contextvars

import numpy as np

METHOD_LABELS = {
    "atp": "AtP", "relp": "RelP", "relp-no-gate": "RelP, no gate rule", "relp-no-half": "RelP, no half rule",
    "ig": "IG-10 (per site)", "ig-inputs": "IG-10 (inputs)",
}
BASIS_LABELS = {
    "mlp_acts": "MLP activations (neurons)", "mlp_out": "MLP outputs", "attn_out": "attention outputs",
    "resid": "residual stream", "sae_mlp_out": "SAE latents on MLP outputs",
    "sae_resid": "SAE latents on residual stream", "sae_attn_out": "SAE latents on attention outputs",
}

# One colour per basis / method, shared by all figures so a reader learns them once.
COLORS = {
    "mlp_acts": "#1b6ca8", "mlp_out": "#e07b00", "attn_out": "#4c9a2a", "resid": "#8e44ad", "embed": "#7f7f7f",
    "sae_mlp_out": "#f4b35e", "sae_resid": "#c39bd3",
    "relp": "#1b6ca8", "ig": "#17becf", "atp": "#66a182", "ig-inputs": "#edae49",
    "relp-no-gate": "#8c564b", "relp-no-half": "#e377c2",
}
METHOD_LINESTYLES = {"relp": "-", "ig-inputs": "-", "ig": "-", "atp": ":", "relp-no-gate": "-.",
                     "relp-no-half": "--"}
# the case studies (notebooks 03 and 05): what an answer is, and a group against its controls
KIND_COLORS = {"capital": "#1b6ca8", "state": "#d1495b", "city": "#4c9a2a", "language": "#1b6ca8",
               "country": "#d1495b"}
VARIANT_COLORS = {"country group": "#1b6ca8", "random": "#999999", "matched": "#e39b2d"}
ROLE_COLORS = {"random": "#999999", "matched": "#e39b2d"}
# the edges study's two edge scores, and the appendix studies' feature types, IOI sites and nulls
EDGE_WEIGHT_COLORS = {"raw": COLORS["relp"], "relevance": "#d1495b"}
FEATURE_COLORS = {"language": "#1b6ca8", "concept": "#d1495b", "attribute": "#4c9a2a"}
IOI_SITE_COLORS = {"mlp_acts": "#1b6ca8", "mlp_out": "#d1495b"}
NULL_COLORS = {"operand-balanced": "#1b6ca8", "label shuffle": "#d1495b"}
SPLIT_COLORS = {"all": "#333333", "selection": "#1b6ca8", "evaluation": "#d1495b"}

STYLE = {
    "figure.dpi": 110, "savefig.dpi": 200, "savefig.bbox": "tight", "font.size": 10, "axes.titlesize": 11,
    "axes.labelsize": 10, "legend.fontsize": 8, "legend.frameon": False, "axes.spines.top": False,
    "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.25, "lines.linewidth": 1.6, "lines.markersize": 4,
}

_PALETTE: contextvars.ContextVar[dict] = contextvars.ContextVar("palette", default={})


def color(key: str, default: str = "0.3", *, colors: dict | None = None) -> str:
    """The colour of ``key`` (a basis, method or a figure's own category): a :func:`palette` override, else
    ``colors`` (default :data:`COLORS`), else ``default``."""
    return _PALETTE.get().get(key, (COLORS if colors is None else colors).get(key, default))


@contextlib.contextmanager
def palette(colors: dict | None = None):
    """``with palette({"relp": "black"}):`` figures drawn inside the block use these colours for these keys."""
    token = _PALETTE.set({**_PALETTE.get(), **(colors or {})})
    try:
        yield
    finally:
        _PALETTE.reset(token)


def _unchanged(key: str) -> bool:
    import matplotlib as mpl

    now, default = mpl.rcParams[key], mpl.rcParamsDefault[key]
    try:
        return bool(now == default)
    except ValueError:  # array-valued parameters
        return bool(np.array_equal(now, default))


# the project's text sizes, stated at STYLE["font.size"] and scaled with the font size in force
_TEXT_SIZES = ("axes.titlesize", "axes.labelsize", "legend.fontsize")


@contextlib.contextmanager
def style(rc: dict | None = None):
    """``with style():`` the project style for figures made inside the block only (see the module docstring for
    what wins): :data:`STYLE` for the rcParams still at matplotlib's default, then ``rc``."""
    import matplotlib as mpl

    rc = dict(rc or {})
    project = {k: v for k, v in STYLE.items() if _unchanged(k)}
    base = float(rc.get("font.size", project.get("font.size", mpl.rcParams["font.size"])))
    for key in _TEXT_SIZES:
        if key in project:
            project[key] = STYLE[key] * base / STYLE["font.size"]
    with mpl.rc_context({**project, **rc}):
        yield


def fontsize(points: float) -> float:
    """A text size stated at the project's font size (:data:`STYLE`), scaled to the ``font.size`` in force."""
    import matplotlib as mpl

    return points * float(mpl.rcParams["font.size"]) / STYLE["font.size"]


def fmt_size(v, lo=None, hi=None) -> str:
    """A size with its interval, e.g. "62 [41, 95]" (— when not reached or unknown; ∞ for an open upper bound)."""
    def one(x):
        x = float("nan") if x is None else float(x)
        return "—" if np.isnan(x) else ("∞" if np.isinf(x) else f"{x:,.0f}")
    return one(v) if lo is None else f"{one(v)} [{one(lo)}, {one(hi)}]"


def headline_flags(row, thresholds=(0.8, 0.9)) -> list[str]:
    """The flags of one headline row: "below floor", "F>1" / "C<0" (an interval wholly beyond 1 / 0 at some size)
    and "falls back@t" for every threshold t where the curve drops under t again after reaching it."""
    flags = [name for name, col in (("below floor", "below_floor"), ("F>1", "faithfulness_above_1"),
                                    ("C<0", "completeness_below_0")) if bool(row.get(col, False))]
    return flags + [f"falls back@{t:g}" for t in thresholds if bool(row.get(f"falls_back@F>={t:g}", False))]
