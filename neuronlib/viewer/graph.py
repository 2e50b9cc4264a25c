"""Validation and normalisation of a circuit graph (the viewer's data model; see :mod:`neuronlib.viewer`)."""

from __future__ import annotations

import math
import numbers
import re
from typing import Any, Mapping

from ..neurons import neuron_label

SCHEMA_VERSION = "neuronlib.viewer/1"

# Categorical palette for groups (colour-blind friendly first, then extras).
PALETTE = [
    "#E69F00", "#56B4E9", "#009E73", "#CC79A7", "#0072B2", "#D55E00",
    "#8C6D31", "#7B4FA0", "#B5B800", "#17BECF", "#E377C2", "#2CA02C",
    "#A0522D", "#6B8E23", "#4682B4", "#C71585",
]
SPECIAL_GROUPS = {  # display group -> colour, for nodes without a group
    "(embedding)": "#5F6368",
    "(output)": "#202124",
    "(ungrouped)": "#B0B5BA",
}
POS_EDGE_COLOR = "#3B6FB6"
NEG_EDGE_COLOR = "#D1495B"

_HEX_COLOR = re.compile(r"^#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")


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


# Significant digits of every number a page or an exported graph holds: what the viewer shows (3) and one more.
# The last digits of scores move with the machine's thread count; rounded, a rerun writes the same bytes.
EXPORT_DIGITS = 4


def round_floats(obj: Any, digits: int = EXPORT_DIGITS) -> Any:
    """``obj`` (plain JSON values) with every float rounded to ``digits`` significant digits (ints, strings and
    bools unchanged)."""
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}") if math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {k: round_floats(v, digits) for k, v in obj.items()}
    if isinstance(obj, list):
        return [round_floats(v, digits) for v in obj]
    return obj


def _is_graph_object(graph: Any) -> bool:
    """A :class:`neuronlib.CircuitGraph` (or any object with ``nodes``, ``edges`` and ``meta`` attributes)."""
    return (not isinstance(graph, (Mapping, tuple, list)) and hasattr(graph, "nodes") and hasattr(graph, "edges")
            and hasattr(graph, "meta"))


def _unpack(graph: Any) -> tuple[Any, Any, Any]:
    if _is_graph_object(graph):
        return graph.nodes, graph.edges, graph.meta
    if isinstance(graph, Mapping):
        if "nodes" not in graph:
            raise ValueError("graph dict must have a 'nodes' key (and 'edges', 'meta')")
        return graph["nodes"], graph.get("edges", []), graph.get("meta", {})
    if isinstance(graph, (tuple, list)) and len(graph) in (2, 3):
        nodes, edges = graph[0], graph[1]
        meta = graph[2] if len(graph) == 3 else {}
        return nodes, edges, meta
    raise ValueError("graph must be a CircuitGraph, a dict {'nodes', 'edges', 'meta'} or a (nodes, edges, meta) tuple, "
                     f"got {type(graph).__name__}")


def graph_to_json(nodes: Any, edges: Any = None, meta: Mapping | None = None) -> dict:
    """Validate and normalise a circuit graph; return ``{"schema", "nodes", "edges", "meta"}``.

    ``nodes``/``edges`` are lists of dicts or DataFrames (see the module docstring); ``nodes`` may
    also be a whole graph (a :class:`neuronlib.CircuitGraph`, a graph dict or a tuple), in which case
    ``edges`` and ``meta`` must be omitted. A neuron (site ``mlp_acts`` with a unit) without a label is
    named by :func:`neuronlib.neurons.neuron_label` (``L23/N807-``).
    Raises ``ValueError`` naming the problem (duplicate node id, unknown edge endpoint, non-finite
    weight or score, bad layer/position/sign, ...). The result is JSON-serialisable
    (``json.dumps(..., allow_nan=False)`` works) and passing it back in returns an equal dict.
    """
    if edges is None and meta is None and (
            isinstance(nodes, Mapping) or _is_graph_object(nodes)
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
        site = _as_str(r.get("site"), "")
        label = _as_str(r.get("label"), "")
        if not label:
            label = neuron_label(layer, unit, sign) if site == "mlp_acts" and unit >= 0 and layer >= 0 else nid
        node = {
            "id": nid,
            "site": site,
            "layer": layer,
            "position": position,
            "token": _as_str(r.get("token"), default_tok),
            "unit": unit,
            "sign": sign,
            "score": score,
            "label": label,
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
    out_meta = {k: _jsonable(v) for k, v in meta.items() if isinstance(k, str)}
    if gc is not None:
        out_meta["group_colors"] = check_group_colors(gc)
    out_meta.update({
        "title": _as_str(meta.get("title"), "Circuit"),
        "prompt": _as_str(meta.get("prompt"), ""),
        "tokens": tokens,
        "n_layers": n_layers,
        "metric": _as_str(meta.get("metric"), ""),
    })
    return {"schema": SCHEMA_VERSION, "nodes": out_nodes, "edges": out_edges, "meta": out_meta}


def check_group_colors(colors: Any) -> dict[str, str]:
    """``{group: "#rrggbb"}`` from ``meta["group_colors"]``; raises ValueError naming the bad entry.

    A colour is a hex string (``"#rgb"`` or ``"#rrggbb"``) or a name matplotlib knows (``"tab:blue"``,
    ``"red"``); every colour is returned as lower-case ``#rrggbb`` (so the page and the figure agree, and
    no colour string reaches the page unchecked).
    """
    if not isinstance(colors, Mapping):
        raise ValueError(f"meta['group_colors'] must be a dict {{group: colour}}, got {type(colors).__name__}")
    out: dict[str, str] = {}
    for group, color in colors.items():
        if not isinstance(group, str) or not group:
            raise ValueError(f"meta['group_colors']: group names must be non-empty str, got {group!r}")
        where = f"meta['group_colors'][{group!r}]"
        if not isinstance(color, str):
            raise ValueError(f"{where}: a colour is a str such as '#1f77b4', got {type(color).__name__} {color!r}")
        c = color.strip()
        if _HEX_COLOR.match(c):
            if len(c) == 4:
                c = "#" + "".join(ch * 2 for ch in c[1:])
            out[group] = c.lower()
            continue
        try:
            from matplotlib.colors import to_hex  # named colours only; imported when needed

            out[group] = to_hex(c, keep_alpha=False).lower()
        except (ImportError, ValueError):
            raise ValueError(f"{where}: {color!r} is not a colour (use '#rrggbb', '#rgb' or a matplotlib "
                             "colour name)") from None
    return out


def _normalise(graph: Any) -> dict:
    if isinstance(graph, Mapping) and graph.get("schema") == SCHEMA_VERSION:
        return graph_to_json(graph["nodes"], graph["edges"], graph["meta"])
    return graph_to_json(*_unpack(graph))


