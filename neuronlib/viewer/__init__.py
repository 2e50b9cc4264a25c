"""Circuit-graph viewer: a self-contained interactive HTML page and a static matplotlib figure.

The data model (the contract between the attribution/edge code and this viewer)
--------------------------------------------------------------------------------
A circuit graph has three parts.

``nodes``: a list of dicts (or a pandas DataFrame with these columns)

    ==============  ==========  ================================================================
    key             type        meaning
    ==============  ==========  ================================================================
    id              str         unique node id (ints are converted to str)
    site            str         "mlp_acts", "mlp_out", "attn_out", "resid", "embed", "logit", ...
    layer           int         -1 for embeddings, 0..n_layers-1 for layers, n_layers for the
                                output / metric node
    position        int         token position (0-based, < len(meta["tokens"]) when given)
    token           str         token text at that position (default: meta["tokens"][position])
    unit            int         neuron / latent index (default -1)
    sign            str         "+", "-" or "" (which side of a neuron, docs/method.md §1)
    score           float       attribution score (finite; default 0.0)
    label           str         short name, e.g. "L23/N8079-" (default: neuronlib.neurons.neuron_label
                                for a neuron -- site "mlp_acts" with a unit --, else the id)
    group           str | None  hand/auto grouping, e.g. "say a capital" (None = ungrouped)
    description     str         free-text description, e.g. top output tokens
    ==============  ==========  ================================================================

    Other keys are kept (made JSON-safe) but not displayed.

``edges``: a list of dicts (or a DataFrame) ``{"source": id, "target": id, "weight": float}``.
    ``weight`` is the edge score ``v_s * dv_t/dv_s`` (docs/method.md §3); it must be finite.
    Self loops and duplicate (source, target) pairs are rejected.

``meta``: a dict ``{"title": str, "prompt": str, "tokens": [str], "n_layers": int, "metric": str, ...}``.
    Missing ``tokens`` are inferred from the nodes, a missing ``n_layers`` from the node layers.
    An optional ``"group_colors": {group: colour}`` overrides the default palette (a colour is "#rrggbb",
    "#rgb" or a matplotlib colour name; anything else is a ValueError naming the group).

A graph can be passed as a :class:`neuronlib.CircuitGraph` (the graph type every study builds), as
``{"nodes": ..., "edges": ..., "meta": ...}`` (lists or DataFrames), as a ``(nodes, edges, meta)`` tuple,
or as the dict returned by :func:`graph_to_json`.

Public functions
----------------
- :func:`graph_to_json` -- validate and normalise; returns a JSON-serialisable dict.
- :func:`layout_graph` -- node coordinates shared by the HTML and the static figure.
- :func:`render_html` / :func:`save_html` / :func:`show` -- the interactive page: the package's asset files
  (``assets/template.html``, ``viewer.css``, ``guard.js``, ``viewer.js``) and the graph data inlined into one
  offline file, locked by a Content-Security-Policy that allows no network and only the page's own inline
  script and style, by their sha256 hashes (``show`` wraps it in an ``<iframe srcdoc>`` for Jupyter).
- :func:`draw_circuit` -- the same layout drawn with matplotlib (works with the Agg backend).
- :func:`attribution_graph` / :func:`save_attribution_graph` -- the circuit as the attribution-graph JSON
  that circuit-tracer's local viewer and Neuronpedia read (neurons as features; node ids in
  :mod:`neuronlib.viewer.export` and docs/graph-export.md).

The rendered page sets, on ``<body>``: ``data-ready="1"`` when drawing finished, ``data-nodes`` /
``data-edges`` (nodes/edges currently shown), ``data-total-nodes`` / ``data-total-edges``, and
``data-error`` if anything failed. Each node is one ``<circle class="node">`` in the SVG.
"""

from .export import attribution_graph, save_attribution_graph
from .figure import draw_circuit
from .graph import NEG_EDGE_COLOR, POS_EDGE_COLOR, SCHEMA_VERSION, graph_to_json
from .layout import layout_graph
from .page import render_html, save_html, show

__all__ = [
    "SCHEMA_VERSION",
    "graph_to_json",
    "layout_graph",
    "render_html",
    "save_html",
    "show",
    "draw_circuit",
    "attribution_graph",
    "save_attribution_graph",
    "POS_EDGE_COLOR",
    "NEG_EDGE_COLOR",
]
