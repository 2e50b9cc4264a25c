"""The static figure: the page's layout drawn with matplotlib (works with the Agg backend)."""

from __future__ import annotations

import math
from typing import Any

from .graph import NEG_EDGE_COLOR, POS_EDGE_COLOR, _normalise
from .layout import layout_graph


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
