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
    sign            str         "+", "-" or "" (which side of a neuron, METHOD.md section 1)
    score           float       attribution score (finite; default 0.0)
    label           str         short name, e.g. "L23/N8079-" (default: the id)
    group           str | None  hand/auto grouping, e.g. "say a capital" (None = ungrouped)
    description     str         free-text description, e.g. top output tokens
    ==============  ==========  ================================================================

    Other keys are kept (made JSON-safe) but not displayed.

``edges``: a list of dicts (or a DataFrame) ``{"source": id, "target": id, "weight": float}``.
    ``weight`` is the edge score ``v_s * dv_t/dv_s`` (METHOD.md section 3); it must be finite.
    Self loops and duplicate (source, target) pairs are rejected.

``meta``: a dict ``{"title": str, "prompt": str, "tokens": [str], "n_layers": int, "metric": str, ...}``.
    Missing ``tokens`` are inferred from the nodes, a missing ``n_layers`` from the node layers.
    An optional ``"group_colors": {group: "#rrggbb"}`` overrides the default palette.

A graph can be passed as ``{"nodes": ..., "edges": ..., "meta": ...}`` (lists or DataFrames),
as a ``(nodes, edges, meta)`` tuple, or as the dict returned by :func:`graph_to_json`.

Public functions
----------------
- :func:`graph_to_json` -- validate and normalise; returns a JSON-serialisable dict.
- :func:`layout_graph` -- node coordinates shared by the HTML and the static figure.
- :func:`render_html` / :func:`save_html` / :func:`show` -- the interactive page (no network access,
  inline JS/CSS/data; ``show`` wraps it in an ``<iframe srcdoc>`` for Jupyter).
- :func:`draw_circuit` -- the same layout drawn with matplotlib (works with the Agg backend).

The rendered page sets, on ``<body>``: ``data-ready="1"`` when drawing finished, ``data-nodes`` /
``data-edges`` (nodes/edges currently shown), ``data-total-nodes`` / ``data-total-edges``, and
``data-error`` if anything failed. Each node is one ``<circle class="node">`` in the SVG.
"""

from __future__ import annotations

import html as _html
import json
import math
import numbers
from pathlib import Path
from typing import Any, Mapping

__all__ = [
    "SCHEMA_VERSION",
    "graph_to_json",
    "layout_graph",
    "render_html",
    "save_html",
    "show",
    "draw_circuit",
]

SCHEMA_VERSION = "neuronlib.viewer/1"

# Categorical palette for groups (colour-blind friendly first, then extras).
_PALETTE = [
    "#E69F00", "#56B4E9", "#009E73", "#CC79A7", "#0072B2", "#D55E00",
    "#8C6D31", "#7B4FA0", "#B5B800", "#17BECF", "#E377C2", "#2CA02C",
    "#A0522D", "#6B8E23", "#4682B4", "#C71585",
]
_SPECIAL_GROUPS = {  # display group -> colour, for nodes without a group
    "(embedding)": "#5F6368",
    "(output)": "#202124",
    "(ungrouped)": "#B0B5BA",
}
POS_EDGE_COLOR = "#3B6FB6"
NEG_EDGE_COLOR = "#D1495B"

_NODE_KEYS = ("id", "site", "layer", "position", "token", "unit", "sign", "score", "label", "group",
              "description")


# ----------------------------------------------------------------------------------------------
# validation / normalisation
# ----------------------------------------------------------------------------------------------

def _is_missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    try:  # pandas.NA / NaT / numpy nan
        import pandas as pd  # noqa: WPS433 (optional dependency)

        res = pd.isna(v)
        return bool(res) if isinstance(res, (bool,)) or getattr(res, "shape", None) == () else False
    except Exception:  # pragma: no cover - pandas missing or exotic value
        return False


def _records(obj: Any, what: str) -> list[dict]:
    """A list of dicts from a list of mappings or a DataFrame."""
    if obj is None:
        return []
    if hasattr(obj, "to_dict") and hasattr(obj, "columns"):  # pandas DataFrame
        return [dict(r) for r in obj.to_dict(orient="records")]
    if isinstance(obj, Mapping):
        raise ValueError(f"{what} must be a list of dicts or a DataFrame, not a single dict")
    try:
        rows = list(obj)
    except TypeError:
        raise ValueError(f"{what} must be a list of dicts or a DataFrame, got {type(obj).__name__}") from None
    out = []
    for i, r in enumerate(rows):
        if not isinstance(r, Mapping):
            raise ValueError(f"{what}[{i}] must be a dict, got {type(r).__name__}")
        out.append(dict(r))
    return out


def _as_int(v: Any, what: str) -> int:
    if isinstance(v, bool) or _is_missing(v):
        raise ValueError(f"{what} must be an integer, got {v!r}")
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real) and float(v).is_integer():
        return int(v)
    if isinstance(v, str):
        try:
            return int(v.strip())
        except ValueError:
            pass
    raise ValueError(f"{what} must be an integer, got {v!r}")


def _as_float(v: Any, what: str) -> float:
    if isinstance(v, bool) or v is None:
        raise ValueError(f"{what} must be a finite number, got {v!r}")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a finite number, got {v!r}") from None
    if not math.isfinite(f):
        raise ValueError(f"{what} must be finite, got {f!r}")
    return f


def _as_str(v: Any, default: str = "") -> str:
    if _is_missing(v):
        return default
    return v if isinstance(v, str) else str(v)


def _as_id(v: Any, what: str) -> str:
    if _is_missing(v) or isinstance(v, bool):
        raise ValueError(f"{what} is missing")
    if isinstance(v, numbers.Integral):
        v = str(int(v))
    if not isinstance(v, str):
        raise ValueError(f"{what} must be a str, got {type(v).__name__}")
    if v == "":
        raise ValueError(f"{what} must be a non-empty str")
    return v


def _jsonable(obj: Any) -> Any:
    """Recursively convert to plain JSON types (numpy scalars/arrays, tuples, non-finite -> None)."""
    if obj is None or isinstance(obj, (str, bool)):
        return obj
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return _jsonable(obj.tolist())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in obj]
    if _is_missing(obj):
        return None
    return str(obj)


def _unpack(graph: Any) -> tuple[Any, Any, Any]:
    if isinstance(graph, Mapping):
        if "nodes" not in graph:
            raise ValueError("graph dict must have a 'nodes' key (and 'edges', 'meta')")
        return graph["nodes"], graph.get("edges", []), graph.get("meta", {})
    if isinstance(graph, (tuple, list)) and len(graph) in (2, 3):
        nodes, edges = graph[0], graph[1]
        meta = graph[2] if len(graph) == 3 else {}
        return nodes, edges, meta
    raise ValueError("graph must be a dict {'nodes', 'edges', 'meta'} or a (nodes, edges, meta) tuple, "
                     f"got {type(graph).__name__}")


def graph_to_json(nodes: Any, edges: Any = None, meta: Mapping | None = None) -> dict:
    """Validate and normalise a circuit graph; return ``{"schema", "nodes", "edges", "meta"}``.

    ``nodes``/``edges`` are lists of dicts or DataFrames (see the module docstring); ``nodes`` may
    also be a whole graph dict / tuple, in which case ``edges`` and ``meta`` must be omitted.
    Raises ``ValueError`` naming the problem (duplicate node id, unknown edge endpoint, non-finite
    weight or score, bad layer/position/sign, ...). The result is JSON-serialisable
    (``json.dumps(..., allow_nan=False)`` works) and passing it back in returns an equal dict.
    """
    if edges is None and meta is None and (
            isinstance(nodes, Mapping)
            or (isinstance(nodes, tuple) and len(nodes) in (2, 3) and not isinstance(nodes[0], Mapping))):
        nodes, edges, meta = _unpack(nodes)
    if meta is None:
        meta = {}
    if not isinstance(meta, Mapping):
        raise ValueError(f"meta must be a dict, got {type(meta).__name__}")
    meta = dict(meta)

    node_rows = _records(nodes, "nodes")
    edge_rows = _records(edges, "edges")

    # --- tokens ---
    tokens_v = meta.get("tokens")
    tokens: list[str] | None
    if tokens_v is None:
        tokens = None
    elif isinstance(tokens_v, (str, bytes, Mapping)) or not hasattr(tokens_v, "__iter__"):
        raise ValueError(f"meta['tokens'] must be a list of str, got {type(tokens_v).__name__}")
    else:
        tokens = [_as_str(t) for t in list(tokens_v)]

    # --- nodes ---
    out_nodes: list[dict] = []
    seen: dict[str, int] = {}
    for i, r in enumerate(node_rows):
        nid = _as_id(r.get("id"), f"nodes[{i}]['id']")
        if nid in seen:
            raise ValueError(f"duplicate node id {nid!r} (nodes[{seen[nid]}] and nodes[{i}])")
        seen[nid] = i
        where = f"node {nid!r}"
        if "layer" not in r:
            raise ValueError(f"{where}: missing 'layer'")
        if "position" not in r:
            raise ValueError(f"{where}: missing 'position'")
        layer = _as_int(r.get("layer"), f"{where}: layer")
        if layer < -1:
            raise ValueError(f"{where}: layer must be >= -1 (-1 = embeddings), got {layer}")
        position = _as_int(r.get("position"), f"{where}: position")
        if position < 0:
            raise ValueError(f"{where}: position must be >= 0, got {position}")
        if tokens is not None and position >= len(tokens):
            raise ValueError(f"{where}: position {position} is out of range for meta['tokens'] "
                             f"(length {len(tokens)})")
        default_tok = tokens[position] if tokens is not None else ""
        sign = _as_str(r.get("sign"), "")
        if sign not in ("+", "-", ""):
            raise ValueError(f"{where}: sign must be '+', '-' or '', got {sign!r}")
        unit_v = r.get("unit")
        unit = -1 if _is_missing(unit_v) else _as_int(unit_v, f"{where}: unit")
        score_v = r.get("score")
        score = 0.0 if score_v is None else _as_float(score_v, f"{where}: score")
        group = r.get("group")
        group = None if _is_missing(group) or group == "" else _as_str(group)
        node = {
            "id": nid,
            "site": _as_str(r.get("site"), ""),
            "layer": layer,
            "position": position,
            "token": _as_str(r.get("token"), default_tok),
            "unit": unit,
            "sign": sign,
            "score": score,
            "label": _as_str(r.get("label"), "") or nid,
            "group": group,
            "description": _as_str(r.get("description"), ""),
        }
        for k, v in r.items():  # keep extra fields, JSON-safe
            if k not in node and isinstance(k, str):
                node[k] = _jsonable(v)
        out_nodes.append(node)

    # --- n_layers ---
    if meta.get("n_layers") is not None and not _is_missing(meta.get("n_layers")):
        n_layers = _as_int(meta["n_layers"], "meta['n_layers']")
        if n_layers < 0:
            raise ValueError(f"meta['n_layers'] must be >= 0, got {n_layers}")
    else:
        layers = [n["layer"] for n in out_nodes]
        if not layers:
            n_layers = 0
        elif any(n["site"] == "logit" for n in out_nodes):
            n_layers = max(max(layers), 0)
        else:
            n_layers = max(layers) + 1
    for n in out_nodes:
        if n["layer"] > n_layers:
            raise ValueError(f"node {n['id']!r}: layer {n['layer']} exceeds meta['n_layers'] = {n_layers} "
                             "(the output node is at layer n_layers)")

    # --- tokens inferred from the nodes ---
    if tokens is None:
        n_pos = max((n["position"] for n in out_nodes), default=-1) + 1
        tokens = [""] * n_pos
        for n in out_nodes:
            if n["token"] and not tokens[n["position"]]:
                tokens[n["position"]] = n["token"]
        for n in out_nodes:
            if not n["token"]:
                n["token"] = tokens[n["position"]]

    # --- edges ---
    out_edges: list[dict] = []
    pairs: set[tuple[str, str]] = set()
    for i, r in enumerate(edge_rows):
        src = _as_id(r.get("source"), f"edges[{i}]['source']")
        tgt = _as_id(r.get("target"), f"edges[{i}]['target']")
        if src not in seen:
            raise ValueError(f"edges[{i}]: source {src!r} is not a node id")
        if tgt not in seen:
            raise ValueError(f"edges[{i}]: target {tgt!r} is not a node id")
        if src == tgt:
            raise ValueError(f"edges[{i}]: self loop on node {src!r}")
        if (src, tgt) in pairs:
            raise ValueError(f"edges[{i}]: duplicate edge {src!r} -> {tgt!r}")
        pairs.add((src, tgt))
        if "weight" not in r:
            raise ValueError(f"edges[{i}] ({src!r} -> {tgt!r}): missing 'weight'")
        w = _as_float(r.get("weight"), f"edges[{i}] ({src!r} -> {tgt!r}): weight")
        edge = {"source": src, "target": tgt, "weight": w}
        for k, v in r.items():
            if k not in edge and isinstance(k, str):
                edge[k] = _jsonable(v)
        out_edges.append(edge)

    # --- meta ---
    gc = meta.get("group_colors")
    if gc is not None and not isinstance(gc, Mapping):
        raise ValueError("meta['group_colors'] must be a dict {group: colour}")
    out_meta = {k: _jsonable(v) for k, v in meta.items() if isinstance(k, str)}
    out_meta.update({
        "title": _as_str(meta.get("title"), "Circuit"),
        "prompt": _as_str(meta.get("prompt"), ""),
        "tokens": tokens,
        "n_layers": n_layers,
        "metric": _as_str(meta.get("metric"), ""),
    })
    return {"schema": SCHEMA_VERSION, "nodes": out_nodes, "edges": out_edges, "meta": out_meta}


def _normalise(graph: Any) -> dict:
    if isinstance(graph, Mapping) and graph.get("schema") == SCHEMA_VERSION:
        return graph_to_json(graph["nodes"], graph["edges"], graph["meta"])
    return graph_to_json(*_unpack(graph))


# ----------------------------------------------------------------------------------------------
# layout (shared by HTML and matplotlib)
# ----------------------------------------------------------------------------------------------

def _display_group(node: Mapping, n_layers: int) -> str:
    if node["group"] is not None:
        return node["group"]
    if node["layer"] == -1 or node["site"] == "embed":
        return "(embedding)"
    if node["layer"] == n_layers or node["site"] in ("logit", "metric", "output"):
        return "(output)"
    return "(ungrouped)"


def _layer_name(layer: int, n_layers: int) -> str:
    if layer == -1:
        return "emb"
    if layer == n_layers:
        return "out"
    return f"L{layer}"


def layout_graph(graph: Any, *, compress_layers: bool = False, row_height: float = 26.0,
                 node_spacing: float = 13.0) -> dict:
    """Coordinates for every node (pixels, y grows downwards, embeddings at the bottom).

    Returns ``{"width", "height", "plot": [x0, y0, x1, y1], "nodes": [[x, y, r, group_index]...]
    (aligned with graph["nodes"]), "groups": [{"name", "color", "count"}], "columns": [{"position",
    "token", "x", "x0", "x1"}], "rows": [{"layer", "name", "y"}], "max_abs_score", "max_abs_weight"}``.
    ``compress_layers=True`` keeps only the rows (layers) that hold a node.
    """
    g = _normalise(graph)
    nodes, edges, meta = g["nodes"], g["edges"], g["meta"]
    n_layers = meta["n_layers"]
    tokens = meta["tokens"]

    # groups: real groups in first-seen order sorted by size (desc), then the special ones
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, n in enumerate(nodes):
        dg = _display_group(n, n_layers)
        counts[dg] = counts.get(dg, 0) + 1
        first.setdefault(dg, i)
    real = sorted((k for k in counts if k not in _SPECIAL_GROUPS), key=lambda k: first[k])
    special = [k for k in _SPECIAL_GROUPS if k in counts]
    user_colors = meta.get("group_colors") or {}
    groups = []
    for j, name in enumerate(real):
        color = user_colors.get(name) or _PALETTE[j % len(_PALETTE)]
        groups.append({"name": name, "color": str(color), "count": counts[name], "special": False})
    for name in special:
        groups.append({"name": name, "color": str(user_colors.get(name) or _SPECIAL_GROUPS[name]),
                       "count": counts[name], "special": True})
    gindex = {gr["name"]: j for j, gr in enumerate(groups)}

    # rows
    if compress_layers and nodes:
        layer_list = sorted({n["layer"] for n in nodes})
    else:
        layer_list = list(range(-1, n_layers + 1))
    margin_l, margin_r, margin_t, margin_b = 64.0, 24.0, 22.0, 118.0
    plot_h = max(len(layer_list), 1) * row_height
    rows = []
    for k, layer in enumerate(layer_list):
        y = margin_t + plot_h - (k + 0.5) * row_height
        rows.append({"layer": layer, "name": _layer_name(layer, n_layers), "y": y})
    row_y = {r["layer"]: r["y"] for r in rows}

    # cells (layer, position) -> node indices, ordered by group then |score|
    cells: dict[tuple[int, int], list[int]] = {}
    for i, n in enumerate(nodes):
        cells.setdefault((n["layer"], n["position"]), []).append(i)
    for key, idx in cells.items():
        idx.sort(key=lambda i: (gindex[_display_group(nodes[i], n_layers)], -abs(nodes[i]["score"]),
                                nodes[i]["id"]))
    max_cell = {}
    for (layer, pos), idx in cells.items():
        max_cell[pos] = max(max_cell.get(pos, 0), len(idx))

    columns = []
    x = margin_l
    for pos in range(len(tokens)):
        m = max_cell.get(pos, 0)
        width = 30.0 if m == 0 else min(max(46.0, m * node_spacing + 18.0), 300.0)
        columns.append({"position": pos, "token": tokens[pos], "x0": x, "x1": x + width, "x": x + width / 2})
        x += width
    width_total = x + margin_r

    max_abs_score = max((abs(n["score"]) for n in nodes), default=0.0)
    max_abs_weight = max((abs(e["weight"]) for e in edges), default=0.0)

    coords: list[list[float]] = [[0.0, 0.0, 0.0, 0] for _ in nodes]
    for (layer, pos), idx in cells.items():
        col = columns[pos]
        avail = col["x1"] - col["x0"] - 14.0
        k = len(idx)
        step = 0.0 if k == 1 else min(node_spacing, avail / (k - 1))
        start = col["x"] - step * (k - 1) / 2
        for j, i in enumerate(idx):
            s = abs(nodes[i]["score"])
            r = 3.0 + 5.0 * math.sqrt(s / max_abs_score) if max_abs_score > 0 else 4.0
            coords[i] = [round(start + j * step, 2), round(row_y[layer], 2), round(r, 2),
                         gindex[_display_group(nodes[i], n_layers)]]

    return {
        "width": round(width_total, 2),
        "height": round(margin_t + plot_h + margin_b, 2),
        "plot": [margin_l, margin_t, x, margin_t + plot_h],
        "nodes": coords,
        "groups": groups,
        "columns": columns,
        "rows": rows,
        "max_abs_score": max_abs_score,
        "max_abs_weight": max_abs_weight,
    }


# ----------------------------------------------------------------------------------------------
# HTML
# ----------------------------------------------------------------------------------------------

def _script_json(obj: Any) -> str:
    """JSON safe to embed in a <script> element: no '<', '>', '&', U+2028/9 literally present."""
    s = json.dumps(obj, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    return (s.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


_CSS = r"""
*{box-sizing:border-box}
html,body{margin:0;padding:0;background:#fff;color:#202124;
  font-family:-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,"DejaVu Sans","Liberation Sans",sans-serif;
  font-size:13px}
#hdr{padding:8px 12px 4px 12px}
#hdr h1{font-size:16px;margin:0 0 2px 0;font-weight:600}
#hdr .sub{color:#5f6368;font-size:12px;white-space:pre-wrap;word-break:break-word}
#controls{display:flex;flex-wrap:wrap;gap:6px 16px;align-items:center;padding:6px 12px;
  border-top:1px solid #e3e5e8;border-bottom:1px solid #e3e5e8;background:#f8f9fa}
#controls label{display:inline-flex;align-items:center;gap:5px}
#thr-slider{width:200px}
#thr-num{width:90px}
#counts{font-weight:600}
#legend{display:flex;flex-wrap:wrap;gap:4px 14px;padding:6px 12px;align-items:center}
.lg{display:inline-flex;align-items:center;gap:5px;cursor:pointer;user-select:none;padding:1px 4px;border-radius:4px}
.lg:hover{background:#eef1f4}
.lg.on{background:#e1e8f5;outline:1px solid #9db3dc}
.lgx{display:inline-flex;align-items:center;gap:5px;padding:1px 4px}
.sw.neg{background:#fff;border:1.5px dashed #202124}
.sw{display:inline-block;width:12px;height:12px;border-radius:50%;border:1px solid rgba(0,0,0,.35)}
.esw{display:inline-block;width:22px;height:0;border-top:3px solid}
.lgc{color:#80868b}
#wrap{overflow:auto;padding:0 4px 8px 4px}
#svg{display:block}
.edge{fill:none;pointer-events:visibleStroke}
.node{stroke:#fff;stroke-width:1;cursor:pointer}
.node[data-sign="-"]{stroke:#202124;stroke-dasharray:2 1.5}
.nlabel{font-size:9px;fill:#3c4043;pointer-events:none;paint-order:stroke;stroke:#fff;stroke-width:2.5px}
.rowlab{font-size:10px;fill:#5f6368}
.poslab{font-size:9px;fill:#9aa0a6}
.toklab{font-size:11px;fill:#202124;white-space:pre}
.grid{stroke:#eef0f2;stroke-width:1}
.colband{fill:#f6f7f9}
svg.focus .edge:not(.hl){stroke-opacity:.03}
svg.focus .edge.hl{stroke-opacity:.95}
svg.focus .node:not(.nb){opacity:.18}
svg.focus .nlabel:not(.nb){opacity:.18}
svg.focus .nlabel.nb{display:inline !important}
.node.cur{stroke:#000;stroke-width:2;stroke-dasharray:none}
#tip{position:fixed;display:none;max-width:360px;background:#fff;border:1px solid #c4c8cc;border-radius:6px;
  box-shadow:0 2px 8px rgba(0,0,0,.18);padding:6px 8px;font-size:12px;pointer-events:none;z-index:10}
#tip .t{font-weight:600;margin-bottom:3px}
#tip table{border-collapse:collapse}
#tip td{padding:0 6px 0 0;vertical-align:top}
#tip td.k{color:#5f6368;white-space:nowrap}
#tip td.v{white-space:pre-wrap;word-break:break-word}
#error{display:none;color:#b00020;font-weight:600;padding:8px 12px}
"""

# The page script. It reads the inline JSON (never evaluated as code), builds the SVG with DOM
# calls and sets text with textContent only (no innerHTML), so data strings cannot inject markup.
_JS_GUARD = r"""
(function(){
  function fail(msg){
    try{
      document.documentElement.setAttribute('data-error', String(msg));
      if(document.body){ document.body.setAttribute('data-error', String(msg)); }
      var el=document.getElementById('error');
      if(el){ el.textContent='Viewer error: '+String(msg); el.style.display='block'; }
    }catch(e){}
  }
  window.__circuitFail = fail;
  window.addEventListener('error', function(ev){
    fail((ev && ev.message ? ev.message : 'error') + (ev && ev.lineno ? ' (line '+ev.lineno+')' : ''));
  });
})();
"""

_JS_MAIN = r"""
(function(){
'use strict';
var SVGNS=document.getElementById('svg').namespaceURI;  // the SVG namespace, without spelling a URL
function el(tag, attrs, parent){
  var e=document.createElementNS(SVGNS, tag);
  if(attrs){ for(var k in attrs){ if(Object.prototype.hasOwnProperty.call(attrs,k)){ e.setAttribute(k, String(attrs[k])); } } }
  if(parent){ parent.appendChild(e); }
  return e;
}
function hel(tag, cls, text, parent){
  var e=document.createElement(tag);
  if(cls){ e.className=cls; }
  if(text!==undefined && text!==null){ e.textContent=String(text); }
  if(parent){ parent.appendChild(e); }
  return e;
}
function fmt(x){
  if(x===0){ return '0'; }
  if(!isFinite(x)){ return String(x); }
  var a=Math.abs(x);
  if(a>=1000 || a<0.001){ return x.toExponential(3); }
  return x.toPrecision(4).replace(/\.?0+$/,'');
}
function showTok(t){
  t=String(t).replace(/\n/g,'\\n').replace(/\t/g,'\\t').replace(/\r/g,'\\r');
  return t.length>16 ? t.slice(0,15)+'\u2026' : t;
}
function r2(v){ return Math.round(v*100)/100; }

function main(){
  var body=document.body;
  var D=JSON.parse(document.getElementById('graph-data').textContent);
  var G=D.graph, L=D.layout, OPT=D.options||{};
  var nodes=G.nodes, edges=G.edges, meta=G.meta;
  var N=nodes.length, E=edges.length;
  var i, j;

  // header
  document.getElementById('title').textContent=meta.title||'Circuit';
  var sub=[];
  if(meta.prompt){ sub.push('Prompt: '+JSON.stringify(String(meta.prompt))); }
  if(meta.metric){ sub.push('Metric: '+meta.metric); }
  sub.push(N+' nodes, '+E+' edges, '+meta.n_layers+' layers');
  document.getElementById('sub').textContent=sub.join('   \u00b7   ');

  var idx={};
  for(i=0;i<N;i++){ idx[nodes[i].id]=i; }
  var inE=[], outE=[];
  for(i=0;i<N;i++){ inE.push([]); outE.push([]); }
  for(j=0;j<E;j++){ outE[idx[edges[j].source]].push(j); inE[idx[edges[j].target]].push(j); }

  var svg=document.getElementById('svg');
  var W=L.width, H=L.height, P=L.plot;
  var sx=1;                                  // horizontal stretch (fills the window width)
  function X(x){ return P[0]+(x-P[0])*sx; }

  // static background: column bands, row grid, labels
  var gBg=el('g',{'class':'bg'},svg);
  var bands=[], grid=[], posLabs=[], tokLabs=[];
  L.columns.forEach(function(c,k){
    if(k%2===0){ bands.push([el('rect',{'class':'colband',y:P[1],height:P[3]-P[1]},gBg), c]); }
  });
  L.rows.forEach(function(r){
    grid.push(el('line',{'class':'grid',x1:P[0],y1:r.y,y2:r.y},gBg));
    var t=el('text',{'class':'rowlab',x:P[0]-8,y:r.y+3.5,'text-anchor':'end'},gBg);
    t.textContent=r.name;
  });
  L.columns.forEach(function(c){
    var t=el('text',{'class':'poslab',y:P[3]+12,'text-anchor':'middle'},gBg);
    t.textContent=String(c.position);
    posLabs.push([t,c]);
    var tk=el('text',{'class':'toklab','text-anchor':'end'},gBg);
    tk.textContent=showTok(c.token);
    var ti=el('title',null,tk); ti.textContent='position '+c.position+': '+JSON.stringify(String(c.token));
    tokLabs.push([tk,c]);
  });

  // edges: weakest first so strong ones are drawn on top
  var maxW=L.max_abs_weight>0?L.max_abs_weight:1;
  var order=[]; for(j=0;j<E;j++){ order.push(j); }
  order.sort(function(a,b){ return Math.abs(edges[a].weight)-Math.abs(edges[b].weight); });
  var gE=el('g',{'class':'edges'},svg);
  var edgeEls=new Array(E);
  order.forEach(function(j){
    var e=edges[j], f=Math.abs(e.weight)/maxW;
    var p=el('path',{'class':'edge',stroke:e.weight>=0?OPT.pos_color:OPT.neg_color,
      'stroke-width':(0.4+3.6*f).toFixed(2),'stroke-opacity':(0.12+0.68*Math.sqrt(f)).toFixed(3)},gE);
    p.setAttribute('data-i', j);
    edgeEls[j]=p;
  });

  // nodes and their labels
  var gN=el('g',{'class':'nodes'},svg);
  var gT=el('g',{'class':'labels'},svg);
  var nodeEls=new Array(N), labelEls=new Array(N), labelW=new Array(N);
  var drawOrder=[];   // ungrouped/embedding/output nodes first, so grouped nodes are drawn on top
  for(i=0;i<N;i++){ if(L.groups[L.nodes[i][3]].special){ drawOrder.push(i); } }
  for(i=0;i<N;i++){ if(!L.groups[L.nodes[i][3]].special){ drawOrder.push(i); } }
  drawOrder.forEach(function(i){
    var n=nodes[i], c=L.nodes[i];
    var circ=el('circle',{'class':'node',cy:c[1],r:c[2],fill:L.groups[c[3]].color},gN);
    if(n.sign){ circ.setAttribute('data-sign', n.sign); }
    circ.setAttribute('data-i', i);
    nodeEls[i]=circ;
    var lt=el('text',{'class':'nlabel',y:c[1]-c[2]-1},gT);
    lt.textContent=n.label;
    labelEls[i]=lt;
  });
  for(i=0;i<N;i++){   // label widths, measured once (estimate if the browser cannot measure)
    var w=0;
    try{ w=labelEls[i].getComputedTextLength(); }catch(err){ w=0; }
    labelW[i]=(w>0?w:5.2*String(nodes[i].label).length)+2;
  }

  function geometry(){
    var Wx=X(W);
    svg.setAttribute('viewBox','0 0 '+r2(Wx)+' '+H);
    bands.forEach(function(b){ b[0].setAttribute('x', r2(X(b[1].x0))); b[0].setAttribute('width', r2((b[1].x1-b[1].x0)*sx)); });
    grid.forEach(function(g){ g.setAttribute('x2', r2(X(P[2]))); });
    posLabs.forEach(function(p){ p[0].setAttribute('x', r2(X(p[1].x))); });
    tokLabs.forEach(function(p){ p[0].setAttribute('transform','translate('+r2(X(p[1].x))+','+(P[3]+24)+') rotate(-50)'); });
    for(var j=0;j<E;j++){
      var e=edges[j], s=L.nodes[idx[e.source]], t=L.nodes[idx[e.target]];
      var xs=r2(X(s[0])), xt=r2(X(t[0])), ym=r2((s[1]+t[1])/2);
      edgeEls[j].setAttribute('d','M'+xs+' '+s[1]+' C'+xs+' '+ym+' '+xt+' '+ym+' '+xt+' '+t[1]);
    }
    for(var i=0;i<N;i++){
      var c=L.nodes[i];
      nodeEls[i].setAttribute('cx', r2(X(c[0])));
      labelEls[i].setAttribute('x', r2(X(c[0])+c[2]+2));
    }
    applyZoom();
    placeLabels();
  }

  // labels: 'auto' = greedy by |score|, skipping labels that would overlap a placed label or a node
  var labelMode=document.getElementById('labels');
  function placeLabels(){
    var mode=labelMode.value, i, k;
    gT.style.display=(mode==='none')?'none':'';
    if(mode==='none'){ return; }
    var vis=[]; for(i=0;i<N;i++){ if(nodeOn[i]){ vis.push(i); } }
    if(mode==='all'){ for(i=0;i<N;i++){ labelEls[i].style.display=nodeOn[i]?'':'none'; } return; }
    vis.sort(function(a,b){ return Math.abs(nodes[b].score)-Math.abs(nodes[a].score); });
    var boxes=[];
    function hit(b){ for(var q=0;q<boxes.length;q++){ var o=boxes[q]; if(b[0]<o[2] && o[0]<b[2] && b[1]<o[3] && o[1]<b[3]){ return true; } } return false; }
    var circles=vis.map(function(i){ var c=L.nodes[i]; return [X(c[0])-c[2], c[1]-c[2], X(c[0])+c[2], c[1]+c[2], i]; });
    for(i=0;i<N;i++){ labelEls[i].style.display='none'; }
    vis.forEach(function(i){
      var c=L.nodes[i], x0=X(c[0])+c[2]+2, y1=c[1]-c[2]-1;
      var b=[x0, y1-9, x0+labelW[i], y1+1];
      if(b[2]>X(W)){ return; }
      if(hit(b)){ return; }
      for(k=0;k<circles.length;k++){ var o=circles[k]; if(o[4]!==i && b[0]<o[2] && o[0]<b[2] && b[1]<o[3] && o[1]<b[3]){ return; } }
      boxes.push(b);
      labelEls[i].style.display='';
    });
  }
  labelMode.value=(N<=OPT.auto_label_max)?'auto':'none';
  labelMode.addEventListener('change', placeLabels);

  // legend
  var lg=document.getElementById('legend');
  var legendEls=[];
  L.groups.forEach(function(g,k){
    var it=hel('span','lg',null,lg);
    var sw=hel('span','sw',null,it); sw.style.background=g.color;
    hel('span',null,g.name,it);
    hel('span','lgc','('+g.count+')',it);
    it.setAttribute('data-group', k);
    it.title='click to highlight this group';
    it.addEventListener('click', function(ev){ ev.stopPropagation(); toggleGroup(k); });
    legendEls.push(it);
  });
  var ep=hel('span','lgx',null,lg); var s1=hel('span','esw',null,ep); s1.style.borderColor=OPT.pos_color;
  hel('span',null,'positive edge',ep);
  var en=hel('span','lgx',null,lg); var s2=hel('span','esw',null,en); s2.style.borderColor=OPT.neg_color;
  hel('span',null,'negative edge',en);
  var sn=hel('span','lgx',null,lg); hel('span','sw neg',null,sn); hel('span',null,'\u2212 side of a neuron',sn);
  hel('span','lgc','size \u221d |score|, edge width \u221d |weight|',lg);

  // threshold and visibility
  var absSorted=edges.map(function(e){ return Math.abs(e.weight); }).sort(function(a,b){ return a-b; });
  var slider=document.getElementById('thr-slider'), num=document.getElementById('thr-num');
  var hideIso=document.getElementById('hide-iso');
  slider.min=0; slider.max=E; slider.step=1;
  var thr=Math.max(0, +OPT.min_abs_weight||0);
  var edgeOn=new Array(E), nodeOn=new Array(N);
  for(i=0;i<N;i++){ nodeOn[i]=true; }
  function countBelow(t){ var lo=0, hi=absSorted.length; while(lo<hi){ var m=(lo+hi)>>1; if(absSorted[m]<t){ lo=m+1; } else { hi=m; } } return lo; }
  function apply(){
    var ne=0, nn=0, deg=new Array(N), i, j;
    for(i=0;i<N;i++){ deg[i]=0; }
    for(j=0;j<E;j++){
      var on=Math.abs(edges[j].weight)>=thr;
      edgeOn[j]=on;
      edgeEls[j].style.display=on?'':'none';
      if(on){ ne++; deg[idx[edges[j].source]]++; deg[idx[edges[j].target]]++; }
    }
    for(i=0;i<N;i++){
      var v=!(hideIso.checked && deg[i]===0);
      nodeOn[i]=v;
      nodeEls[i].style.display=v?'':'none';
      if(v){ nn++; }
    }
    body.setAttribute('data-nodes', nn);
    body.setAttribute('data-edges', ne);
    document.getElementById('counts').textContent='Showing '+nn+' / '+N+' nodes, '+ne+' / '+E+' edges';
    placeLabels();
    refocus();
  }
  function setThr(t, fromSlider){
    thr=(t===Infinity)?Infinity:((isFinite(t) && t>0)?t:0);
    if(!fromSlider){ slider.value=countBelow(thr); }
    num.value=(thr===Infinity)?'':fmt(thr);
    apply();
  }
  slider.addEventListener('input', function(){
    var k=+slider.value;
    setThr(k<=0?0:(k>=E?Infinity:absSorted[k]), true);
  });
  num.addEventListener('change', function(){ var v=parseFloat(num.value); setThr(isNaN(v)?0:v, false); });
  hideIso.addEventListener('change', apply);

  // focus: hover or click a node, or click a legend group
  var pinned=null, hovered=null, groupSel=null;
  function clearFocus(){
    svg.classList.remove('focus');
    var hl=svg.querySelectorAll('.hl,.nb,.cur');
    for(var k=0;k<hl.length;k++){ hl[k].classList.remove('hl','nb','cur'); }
  }
  function mark(i){ nodeEls[i].classList.add('nb'); labelEls[i].classList.add('nb'); }
  function focusNodes(list, cur){
    clearFocus();
    if(!list.length){ return; }
    svg.classList.add('focus');
    list.forEach(function(i){
      mark(i);
      inE[i].concat(outE[i]).forEach(function(j){
        if(!edgeOn[j]){ return; }
        edgeEls[j].classList.add('hl');
        mark(idx[edges[j].source]); mark(idx[edges[j].target]);
      });
    });
    if(cur!==undefined && cur!==null){ nodeEls[cur].classList.add('cur'); }
  }
  function refocus(){
    if(hovered!==null){ focusNodes([hovered], hovered); }
    else if(pinned!==null){ focusNodes([pinned], pinned); }
    else if(groupSel!==null){
      var l=[]; for(var i=0;i<N;i++){ if(L.nodes[i][3]===groupSel && nodeOn[i]){ l.push(i); } }
      focusNodes(l, null);
    } else { clearFocus(); }
    legendEls.forEach(function(it,k){ it.classList.toggle('on', k===groupSel); });
  }
  function toggleGroup(k){ groupSel=(groupSel===k)?null:k; pinned=null; refocus(); }

  // tooltip (text only, via textContent)
  var tip=document.getElementById('tip');
  function row(tb,k,v){ var tr=hel('tr',null,null,tb); hel('td','k',k,tr); hel('td','v',v,tr); }
  function clearTip(){ while(tip.firstChild){ tip.removeChild(tip.firstChild); } }
  function showTip(ev, i){
    var n=nodes[i], nin=0, nout=0;
    clearTip();
    hel('div','t',n.label,tip);
    var tb=hel('table',null,null,tip);
    inE[i].forEach(function(j){ if(edgeOn[j]){ nin++; } }); outE[i].forEach(function(j){ if(edgeOn[j]){ nout++; } });
    row(tb,'layer', n.layer===-1?'-1 (embeddings)':(n.layer===meta.n_layers?n.layer+' (output)':n.layer));
    row(tb,'position', n.position);
    row(tb,'token', JSON.stringify(String(n.token)));
    row(tb,'site', n.site+(n.unit>=0?'  unit '+n.unit:'')+(n.sign?'  ('+n.sign+')':''));
    row(tb,'score', fmt(n.score));
    row(tb,'group', n.group===null?'\u2014':n.group);
    if(n.description){ row(tb,'description', n.description); }
    row(tb,'edges shown', nin+' in, '+nout+' out');
    tip.style.display='block';
    placeTip(ev);
  }
  function showEdgeTip(ev, j){
    var e=edges[j];
    clearTip();
    hel('div','t',nodes[idx[e.source]].label+' \u2192 '+nodes[idx[e.target]].label,tip);
    row(hel('table',null,null,tip),'weight', fmt(e.weight));
    tip.style.display='block';
    placeTip(ev);
  }
  function placeTip(ev){
    var x=ev.clientX+14, y=ev.clientY+14, w=tip.offsetWidth, h=tip.offsetHeight;
    if(x+w>window.innerWidth-4){ x=Math.max(4, ev.clientX-w-14); }
    if(y+h>window.innerHeight-4){ y=Math.max(4, ev.clientY-h-14); }
    tip.style.left=x+'px'; tip.style.top=y+'px';
  }
  function hideTip(){ tip.style.display='none'; }
  function isA(t, cls){ return t && t.classList && t.classList.contains(cls); }

  gN.addEventListener('mouseover', function(ev){
    if(!isA(ev.target,'node')){ return; }
    hovered=+ev.target.getAttribute('data-i'); refocus(); showTip(ev, hovered);
  });
  gN.addEventListener('mousemove', function(ev){ if(tip.style.display==='block'){ placeTip(ev); } });
  gN.addEventListener('mouseout', function(ev){
    if(!isA(ev.target,'node')){ return; }
    hovered=null; hideTip(); refocus();
  });
  gN.addEventListener('click', function(ev){
    if(!isA(ev.target,'node')){ return; }
    ev.stopPropagation();
    var i=+ev.target.getAttribute('data-i');
    pinned=(pinned===i)?null:i; groupSel=null; refocus();
  });
  gE.addEventListener('mouseover', function(ev){ if(isA(ev.target,'edge')){ showEdgeTip(ev, +ev.target.getAttribute('data-i')); } });
  gE.addEventListener('mousemove', function(ev){ if(tip.style.display==='block'){ placeTip(ev); } });
  gE.addEventListener('mouseout', hideTip);
  svg.addEventListener('click', function(){ pinned=null; groupSel=null; refocus(); });
  document.addEventListener('keydown', function(ev){ if(ev.key==='Escape'){ pinned=null; groupSel=null; hovered=null; hideTip(); refocus(); } });

  // zoom (uniform) on top of the horizontal stretch
  var zoom=document.getElementById('zoom'), wrap=document.getElementById('wrap');
  function applyZoom(){
    var z=(+zoom.value)/100;
    svg.setAttribute('width', (X(W)*z).toFixed(1)); svg.setAttribute('height', (H*z).toFixed(1));
    document.getElementById('zoom-val').textContent=zoom.value+'%';
  }
  var lastAvail=-1;
  function stretch(){   // horizontal stretch so the plot fills the available width
    var avail=wrap.clientWidth||0;
    lastAvail=avail;
    var a=(avail>0?avail:W)-10;
    sx=Math.min(OPT.max_stretch, Math.max(1, (a-P[0]-(W-P[2]))/(P[2]-P[0])));
    document.body.setAttribute('data-stretch', sx.toFixed(3));
    geometry();
  }
  function fitWidth(){ zoom.value=100; stretch(); }
  zoom.addEventListener('input', applyZoom);
  document.getElementById('fit').addEventListener('click', fitWidth);
  // re-stretch when the available width changes (window resize; iframes in notebooks are often laid
  // out after the script ran). Debounced, so the observer never loops.
  var rt=null;
  function onResize(){
    if(rt){ clearTimeout(rt); }
    rt=setTimeout(function(){ rt=null; if((wrap.clientWidth||0)!==lastAvail){ stretch(); } }, 120);
  }
  window.addEventListener('resize', onResize);
  window.addEventListener('load', onResize);
  if(typeof ResizeObserver==='function'){ new ResizeObserver(onResize).observe(wrap); }

  body.setAttribute('data-total-nodes', N);
  body.setAttribute('data-total-edges', E);
  fitWidth();
  setThr(thr, false);
  body.setAttribute('data-ready', '1');
}
try { main(); }
catch(err){ window.__circuitFail(err && err.message ? err.message : String(err)); throw err; }
})();
"""

_BODY = """<div id="hdr"><h1 id="title"></h1><div class="sub" id="sub"></div></div>
<div id="controls">
  <label title="hide edges whose |weight| is below this value">min |weight|
    <input type="range" id="thr-slider" value="0"><input type="number" id="thr-num" min="0" step="any"></label>
  <label><input type="checkbox" id="hide-iso"> hide nodes without shown edges</label>
  <label>node labels <select id="labels"><option value="auto">non-overlapping</option>
    <option value="all">all</option><option value="none">none</option></select></label>
  <label>zoom <input type="range" id="zoom" min="25" max="200" step="5" value="100"><span id="zoom-val"></span></label>
  <button type="button" id="fit">fit width</button>
  <span id="counts"></span>
</div>
<div id="legend"></div>
<div id="error"></div>
<div id="wrap"><svg id="svg" role="img"></svg></div>
<div id="tip"></div>
"""


def render_html(graph: Any, *, min_abs_weight: float = 0.0, max_edges: int | None = None,
                compress_layers: bool = False, auto_label_max: int = 2000,
                max_stretch: float = 4.0) -> str:
    """One self-contained HTML page (inline CSS/JS/data, no network requests) for a circuit graph.

    ``min_abs_weight``: initial edge threshold (adjustable in the page). ``max_edges``: keep only the
    strongest edges (by |weight|) in the page. ``compress_layers``: drop empty layer rows.
    Node labels (non-overlapping ones, largest |score| first) are on by default when there are at most
    ``auto_label_max`` nodes. The plot is stretched horizontally (at most ``max_stretch`` times) to
    fill the window width.
    """
    g = _normalise(graph)
    if max_edges is not None and len(g["edges"]) > max_edges:
        keep = sorted(g["edges"], key=lambda e: -abs(e["weight"]))[: max(int(max_edges), 0)]
        g = dict(g, edges=keep)
    lay = layout_graph(g, compress_layers=compress_layers)
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
    title = _html.escape(g["meta"]["title"], quote=True)
    csp = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
           "img-src data:; font-src data:; connect-src 'none'; base-uri 'none'; form-action 'none'")
    parts = [
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{csp}\">\n",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
        "<meta name=\"generator\" content=\"neuronlib.viewer\">\n",
        f"<title>{title}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n",
        _BODY,
        "<script type=\"application/json\" id=\"graph-data\">", _script_json(data), "</script>\n",
        "<script>", _JS_GUARD, "</script>\n",
        "<script>", _JS_MAIN, "</script>\n",
        "</body>\n</html>\n",
    ]
    return "".join(parts)


def save_html(graph: Any, path: str | Path, **kwargs: Any) -> Path:
    """Write :func:`render_html` to ``path`` (UTF-8); returns the path."""
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


# ----------------------------------------------------------------------------------------------
# matplotlib
# ----------------------------------------------------------------------------------------------

def _hex_to_rgb(c: str) -> tuple[float, float, float]:
    from matplotlib.colors import to_rgb

    return to_rgb(c)


def draw_circuit(graph: Any, *, ax=None, min_abs_weight: float = 0.0, max_edges: int | None = 3000,
                 labels: bool | str = "auto", legend: bool = True, compress_layers: bool = False,
                 title: str | None = None, figsize: tuple[float, float] | None = None,
                 label_fontsize: float = 6.0):
    """Static version of the page's layout (x = token position, y = layer); returns the Figure.

    Nodes are one scatter collection per group (``gid="circuit-nodes"``; the legend lists the groups),
    size ~ |score|, dashed black outline for the "-" side of a neuron. Edges are a LineCollection
    (``gid="circuit-edges"``) of curves, width/opacity ~ |weight|, blue positive / red negative; only
    edges with |weight| >= ``min_abs_weight`` and at most the ``max_edges`` strongest are drawn.
    ``labels``: "auto" (non-overlapping labels, largest |score| first), True (all) or False (none).
    """
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    g = _normalise(graph)
    lay = layout_graph(g, compress_layers=compress_layers)
    nodes, edges, meta = g["nodes"], g["edges"], g["meta"]
    W = lay["width"]
    x0, y0, x1, y1 = lay["plot"]

    if ax is None:
        if figsize is None:
            figsize = (max(6.0, min(W / 72.0, 40.0)), max(4.0, min((y1 - y0 + 150) / 72.0, 30.0)))
        fig, ax = plt.subplots(figsize=figsize)
    else:
        fig = ax.figure
    pt_per_px = 0.75  # layout units are CSS px; 1 px = 0.75 pt

    # background bands
    for k, c in enumerate(lay["columns"]):
        if k % 2 == 0:
            ax.axvspan(c["x0"], c["x1"], color="#f3f4f6", zorder=0, lw=0)
    for r in lay["rows"]:
        ax.axhline(r["y"], color="#eceef1", lw=0.6, zorder=0.5)

    # edges
    sel = [e for e in edges if abs(e["weight"]) >= min_abs_weight]
    sel.sort(key=lambda e: abs(e["weight"]))
    if max_edges is not None and len(sel) > max_edges:
        sel = sel[len(sel) - int(max_edges):]
    idx = {n["id"]: i for i, n in enumerate(nodes)}
    maxw = lay["max_abs_weight"] or 1.0
    tt = np.linspace(0.0, 1.0, 20)[:, None]
    segs, cols, widths = [], [], []
    pos_rgb, neg_rgb = _hex_to_rgb(POS_EDGE_COLOR), _hex_to_rgb(NEG_EDGE_COLOR)
    for e in sel:
        s = lay["nodes"][idx[e["source"]]]
        t = lay["nodes"][idx[e["target"]]]
        ym = (s[1] + t[1]) / 2
        p0, p1, p2, p3 = (np.array(p, dtype=float) for p in ((s[0], s[1]), (s[0], ym), (t[0], ym), (t[0], t[1])))
        curve = ((1 - tt) ** 3) * p0 + 3 * ((1 - tt) ** 2) * tt * p1 + 3 * (1 - tt) * tt ** 2 * p2 + tt ** 3 * p3
        segs.append(curve)
        f = abs(e["weight"]) / maxw
        rgb = pos_rgb if e["weight"] >= 0 else neg_rgb
        cols.append((*rgb, 0.12 + 0.68 * math.sqrt(f)))
        widths.append((0.4 + 3.6 * f) * pt_per_px)
    if segs:
        lc = LineCollection(segs, colors=cols, linewidths=widths, zorder=1, capstyle="round")
        lc.set_gid("circuit-edges")
        ax.add_collection(lc)

    # nodes, one collection per group
    handles = []
    for gi, grp in enumerate(lay["groups"]):
        members = [i for i, c in enumerate(lay["nodes"]) if c[3] == gi]
        if not members:
            continue
        xs = [lay["nodes"][i][0] for i in members]
        ys = [lay["nodes"][i][1] for i in members]
        sizes = [(2 * lay["nodes"][i][2] * pt_per_px) ** 2 for i in members]
        edgecolors = ["#202124" if nodes[i]["sign"] == "-" else "white" for i in members]
        linestyles = ["--" if nodes[i]["sign"] == "-" else "-" for i in members]
        sc = ax.scatter(xs, ys, s=sizes, c=grp["color"], edgecolors=edgecolors, linewidths=0.6,
                        linestyles=linestyles, zorder=3 if grp["special"] else 3.5,
                        label=f"{grp['name']} ({grp['count']})")
        sc.set_gid("circuit-nodes")
        handles.append(Line2D([], [], marker="o", ls="", markerfacecolor=grp["color"],
                              markeredgecolor="#555", markersize=7, label=f"{grp['name']} ({grp['count']})"))

    # axes
    ax.set_xlim(x0 - 4, x1 + 36)  # room on the right for the labels of the last column
    ax.set_ylim(y1, y0)  # y grows downwards in the layout: embeddings at the bottom
    ax.set_yticks([r["y"] for r in lay["rows"]])
    ax.set_yticklabels([r["name"] for r in lay["rows"]], fontsize=7)
    ax.set_xticks([c["x"] for c in lay["columns"]])

    def _tok(t: str) -> str:
        t = t.replace("\n", "\\n").replace("\t", "\\t").replace("$", r"\$")
        return t if len(t) <= 16 else t[:15] + "\u2026"

    ax.set_xticklabels([_tok(c["token"]) for c in lay["columns"]], rotation=50, ha="right",
                       rotation_mode="anchor", fontsize=8)
    for sp in ("top", "right"):
        ax.spines[sp].set_visible(False)
    ax.tick_params(length=0)
    ax.set_ylabel("layer")
    ttl = meta["title"] if title is None else title
    if ttl:
        ax.set_title(ttl.replace("$", r"\$"), fontsize=10)
    if legend and handles:
        handles += [Line2D([], [], color=POS_EDGE_COLOR, lw=2, label="positive edge"),
                    Line2D([], [], color=NEG_EDGE_COLOR, lw=2, label="negative edge")]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7,
                  frameon=False, borderaxespad=0.0)
    fig.tight_layout()

    # node labels: "auto" = greedy by |score|, skipping labels that would overlap a placed label or
    # another node (in display pixels, after the layout is final); True = all; False = none
    if labels:
        dpi = fig.dpi
        to_px = ax.transData.transform
        centers = to_px([[c[0], c[1]] for c in lay["nodes"]]) if nodes else np.zeros((0, 2))
        radii = [c[2] * pt_per_px * dpi / 72.0 for c in lay["nodes"]]
        char_w = 0.6 * label_fontsize * dpi / 72.0
        text_h = label_fontsize * dpi / 72.0
        boxes: list[tuple[float, float, float, float]] = []
        order = sorted(range(len(nodes)), key=lambda i: -abs(nodes[i]["score"]))
        for i in order:
            cx, cy = centers[i]
            r = radii[i]
            bx0, by0 = cx + r + 1.0, cy + r * 0.5
            box = (bx0, by0, bx0 + char_w * len(nodes[i]["label"]), by0 + text_h)
            if labels == "auto":
                clash = any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in boxes)
                if not clash:
                    for k in range(len(nodes)):
                        if k == i:
                            continue
                        kx, ky = centers[k]
                        kr = radii[k]
                        if box[0] < kx + kr and kx - kr < box[2] and box[1] < ky + kr and ky - kr < box[3]:
                            clash = True
                            break
                if clash:
                    continue
            boxes.append(box)
            ax.annotate(nodes[i]["label"].replace("$", r"\$"), (lay["nodes"][i][0], lay["nodes"][i][1]),
                        xytext=(lay["nodes"][i][2] * pt_per_px + 1.0, lay["nodes"][i][2] * pt_per_px * 0.5),
                        textcoords="offset points", fontsize=label_fontsize, color="#3c4043", zorder=4,
                        annotation_clip=False)
    return fig
