"""The interactive page: real asset files (``assets/``) inlined at save time into one offline HTML file.

``assets/template.html`` holds the markup with ``{{name}}`` slots; ``assets/viewer.css``, ``assets/guard.js``
(sets ``data-error`` on any uncaught error) and ``assets/viewer.js`` (draws the graph) are inlined verbatim, the
graph goes in as JSON inside a non-executed ``<script type="application/json">`` element. The page's
Content-Security-Policy allows no network at all (``default-src 'none'``, ``connect-src 'none'``) and no inline
code except the two scripts and the one style block it was saved with: each is allowed by the sha256 hash of its
exact text, computed when the page is rendered (no ``'unsafe-inline'``), so a script that is not ours -- injected
markup, or an edit to the file -- does not run.
"""

from __future__ import annotations

import base64
import hashlib
import html as _html
import json
import re
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from .graph import NEG_EDGE_COLOR, POS_EDGE_COLOR, _normalise, round_floats
from .layout import layout_graph

ASSETS = ("template.html", "viewer.css", "guard.js", "viewer.js")
_SLOT = re.compile(r"\{\{(\w+)\}\}")
_TEMPLATE_SLOTS = {"csp", "title", "style", "data", "guard", "script"}


@lru_cache(maxsize=None)
def asset(name: str) -> str:
    """The text of one packaged asset file (``neuronlib/viewer/assets/NAME``); checked once per process.

    Raises FileNotFoundError for an unknown or missing asset and ValueError for an asset that could break out of
    the element it is inlined into (``</script`` in a script, ``</style`` in the style sheet) or a template whose
    slots are not exactly the ones :func:`render_html` fills.
    """
    if name not in ASSETS:
        raise FileNotFoundError(f"no viewer asset {name!r}; the assets are {', '.join(ASSETS)}")
    path = files(__package__).joinpath("assets", name)
    if not path.is_file():
        raise FileNotFoundError(f"viewer asset {name!r} is missing from the installed package ({path})")
    text = path.read_text(encoding="utf-8")
    low = text.lower()
    if name.endswith(".js") and ("<script" in low or "</script" in low or "<!--" in low):
        raise ValueError(f"viewer asset {name} must not contain '<script', '</script' or '<!--'")
    if name.endswith(".css") and "</style" in low:
        raise ValueError(f"viewer asset {name} must not contain '</style'")
    if name == "template.html":
        slots = _SLOT.findall(text)
        if sorted(slots) != sorted(_TEMPLATE_SLOTS):
            raise ValueError(f"viewer template slots are {sorted(slots)}, expected each of {sorted(_TEMPLATE_SLOTS)} "
                             "once")
    return text


def csp_hash(text: str) -> str:
    """The CSP source expression allowing an inline element with exactly this text: ``'sha256-<base64>'``."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def content_security_policy(scripts: list[str], styles: list[str]) -> str:
    """The page's policy: nothing from the network, and only these inline scripts and styles (by hash)."""
    script_src = " ".join(csp_hash(s) for s in scripts) or "'none'"
    style_src = " ".join(csp_hash(s) for s in styles) or "'none'"
    return (f"default-src 'none'; script-src {script_src}; style-src {style_src}; img-src data:; font-src data:; "
            "connect-src 'none'; base-uri 'none'; form-action 'none'")


def _script_json(obj: Any) -> str:
    """JSON safe to embed in a <script> element: no '<', '>', '&', U+2028/9 literally present."""
    s = json.dumps(obj, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    return (s.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _fill(template: str, values: dict[str, str]) -> str:
    """Fill every ``{{slot}}`` in one pass (a value that itself contains ``{{x}}`` is never re-filled)."""
    return _SLOT.sub(lambda m: values[m.group(1)], template)


def render_html(graph: Any, *, min_abs_weight: float = 0.0, max_edges: int | None = None,
                compress_layers: bool = False, auto_label_max: int = 2000,
                max_stretch: float = 4.0) -> str:
    """One self-contained HTML page (inline CSS/JS/data, no network requests) for a circuit graph.

    ``graph``: a :class:`neuronlib.CircuitGraph`, a graph dict or a (nodes, edges, meta) tuple.
    ``min_abs_weight``: initial edge threshold (adjustable in the page). ``max_edges``: keep only the
    strongest edges (by |weight|) in the page. ``compress_layers``: drop empty layer rows.
    Node labels (non-overlapping ones, largest |score| first) are on by default when there are at most
    ``auto_label_max`` nodes. The plot is stretched horizontally (at most ``max_stretch`` times) to
    fill the window width. Numbers are rounded to :data:`~neuronlib.viewer.graph.EXPORT_DIGITS` significant
    digits, so a rerun whose scores differ in the last digits writes the same bytes.
    The page's Content-Security-Policy allows its two inline scripts and its style
    block by their sha256 hashes (computed here), and nothing else.
    """
    g = _normalise(graph)
    if max_edges is not None and len(g["edges"]) > max_edges:
        keep = sorted(g["edges"], key=lambda e: -abs(e["weight"]))[: max(int(max_edges), 0)]
        g = dict(g, edges=keep)
    g = round_floats(g)  # numbers to EXPORT_DIGITS: a rerun writes the same page
    lay = round_floats(layout_graph(g, compress_layers=compress_layers))
    data = {
        "graph": g,
        "layout": lay,
        "options": {
            "min_abs_weight": float(min_abs_weight),
            "pos_color": POS_EDGE_COLOR,
            "neg_color": NEG_EDGE_COLOR,
            "auto_label_max": int(auto_label_max),
            "max_stretch": float(max_stretch),
        },
    }
    style, guard, script = asset("viewer.css"), asset("guard.js"), asset("viewer.js")
    return _fill(asset("template.html"), {
        "csp": content_security_policy([guard, script], [style]),  # quote-free: constants and base64
        "title": _html.escape(g["meta"]["title"], quote=True),
        "style": style,
        "data": _script_json(data),
        "guard": guard,
        "script": script,
    })


def save_html(graph: Any, path: str | Path, **kwargs: Any) -> Path:
    """Write :func:`render_html` to ``path`` (UTF-8; one file, opens offline); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(graph, **kwargs), encoding="utf-8")
    return path


def show(graph: Any, *, height: int | None = None, **kwargs: Any):
    """An ``IPython.display.HTML`` holding the page in an ``<iframe srcdoc>`` (scripts run in notebooks)."""
    from IPython.display import HTML  # imported lazily: only needed in notebooks

    page = render_html(graph, **kwargs)
    if height is None:
        lay_h = layout_graph(graph, compress_layers=kwargs.get("compress_layers", False))["height"]
        height = int(min(max(lay_h + 170, 300), 900))
    srcdoc = _html.escape(page, quote=True)
    frame = (f'<div class="neuronlib-circuit"><iframe srcdoc="{srcdoc}" sandbox="allow-scripts" '
             f'style="width:100%;height:{int(height)}px;border:1px solid #ddd" '
             'title="circuit graph"></iframe></div>')
    return HTML(frame)
