"""Node coordinates shared by the HTML page and the static matplotlib figure."""

from __future__ import annotations

import math
from typing import Any, Mapping

from .graph import PALETTE as _PALETTE
from .graph import SPECIAL_GROUPS as _SPECIAL_GROUPS
from .graph import _normalise


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

