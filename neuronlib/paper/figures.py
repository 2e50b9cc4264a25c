"""Every paper figure, drawn from the tidy tables in ``results/`` (never from a model), so ``make figures``
re-draws them all in seconds and they can be restyled without recomputing.

Each function takes DataFrames (as read by :func:`neuronlib.paper.results.read_table`) and returns a matplotlib
figure; the single-panel ones (:func:`plot_language_accuracy`, :func:`fig_composition`, :func:`fig_dallas_circuit`)
draw into ``ax=`` when given, the multi-panel ones refuse it with a ``ValueError``. :data:`FIGURES` (at the end)
registers every file in ``figures/`` once: which tables and which function with which options draw it
(:data:`PENDING`: recipes whose table and files are not committed yet); :func:`draw` draws one by name (with
``rc=``/``colors=`` overrides) and :func:`draw_all` all of them. Labels, colours and the style come from
:mod:`neuronlib.paper.style`. Sections below are one per study.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ..data.sva import TEMPLATES as _SVA_TEMPLATES
from .style import (
    BASIS_LABELS,
    EDGE_WEIGHT_COLORS,
    FEATURE_COLORS,
    IOI_SITE_COLORS,
    KIND_COLORS,
    METHOD_LABELS,
    NULL_COLORS,
    ROLE_COLORS,
    SPLIT_COLORS,
    VARIANT_COLORS,
    style,
)
from .style import METHOD_LINESTYLES as _METHOD_STYLES
from .style import color as _color
from .style import fontsize as _fs


def _no_ax(ax, name: str) -> None:
    """Multi-panel figures make their own figure: an ``ax`` given to one is refused, not ignored."""
    if ax is not None:
        raise ValueError(f"{name} draws several panels into a figure of its own, so it takes no ax=; restyle it with "
                         "rc= and colors=, or draw a single-panel figure into your axes")


def _one_panel(ax, **subplots):
    """(figure, axes) of a single-panel figure: the caller's ``ax`` and its figure, else a new figure."""
    import matplotlib.pyplot as plt

    return plt.subplots(**subplots) if ax is None else (ax.figure, ax)


# ===================================================================================================================
# SVA, basis comparison and edges (notebooks 01, 02, 04): figures 1, 2, 2a, 3, 4, 5, 6 and A.
# Every function takes the tidy tables of results/ (``sva_curves``: neuronlib.paper.sva.curve_table, with bootstrap
# intervals over test pairs; ``*_scores_*``: sva.score_tables; ``edge_pruning``: the edges study) and returns a figure.
# Bands are the bootstrap intervals of the table (never a range over templates).
# ===================================================================================================================

def _sva_select(curves, **eq):
    sel = curves
    for col, val in eq.items():
        if val is None or col not in sel:
            continue
        sel = sel[sel[col].isin(val)] if isinstance(val, (tuple, list, set)) else sel[sel[col] == val]
    return sel


def _sva_curve(ax, g, *, color, linestyle="-", linear=False, band=True, label=None):
    """Faithfulness (filled markers) and completeness (open markers) with their bootstrap bands."""
    g = g.sort_values("size")
    if linear:
        g = g[g["size"] <= 400]
    if not len(g):
        return
    ax.plot(g["size"], g.faithfulness, linestyle=linestyle, marker="o", ms=3, color=color, label=label)
    ax.plot(g["size"], g.completeness, linestyle=linestyle, marker="o", ms=3, mfc="white", color=color, alpha=0.85)
    if band and "faithfulness_lo" in g:
        ax.fill_between(g["size"], g.faithfulness_lo, g.faithfulness_hi, color=color, alpha=0.15, lw=0)
        ax.fill_between(g["size"], g.completeness_lo, g.completeness_hi, color=color, alpha=0.08, lw=0)


def _sva_decorate(ax, *, linear=False, ylim=None):
    if linear:
        ax.set_xlim(0, 410)
    else:
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(left=0.8)
    for y in (0, 1):
        ax.axhline(y, color="0.6", lw=0.7, ls=":")
    ax.axhline(0.8, color="0.8", lw=0.6, ls="--")
    ax.set_ylim(*(ylim or (-0.25, 1.25)))


def _sva_ylim(frame, limit=(-1.0, 2.0)):
    vals = pd.concat([frame.faithfulness, frame.completeness]).dropna() if len(frame) else pd.Series(dtype=float)
    if not len(vals):
        return (-0.25, 1.25)
    return (max(limit[0], min(-0.1, float(vals.min()) - 0.05)), min(limit[1], max(1.1, float(vals.max()) + 0.05)))


def _sva_legend(fig, entries, *, ncol=None, markers=True):
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, linestyle=ls, label=label) for label, c, ls in entries]
    if markers:
        handles += [Line2D([], [], color="0.25", marker="o", linestyle="none", label="faithfulness (ideal 1)"),
                    Line2D([], [], color="0.25", marker="o", mfc="white", linestyle="none",
                           label="completeness (ideal 0)")]
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol or min(len(handles), 6))


def _sva_models(frame) -> str:
    return ", ".join(sorted(set(frame.model))) if "model" in frame and len(frame) else ""


def fig_faithfulness(curves, *, basis: str = "mlp_acts", methods=("relp", "ig-inputs"), setting: str = "paired",
                     ablation: str = "mean", eval_metric: str = "logit_diff", title: str | None = None, ax=None):
    """Figure 1: faithfulness and completeness of circuits on one basis vs size, one column per template and one for
    the pooled line; top row log axis (up to every node), bottom row linear 0–400. Bands: 95 % bootstrap intervals
    over test pairs."""
    _no_ax(ax, "fig_faithfulness")
    import matplotlib.pyplot as plt

    sel = _sva_select(curves, basis=basis, setting=setting, ablation=ablation, eval_metric=eval_metric,
                      method=tuple(methods))
    present = set(sel.template)
    templates = [t for t in _SVA_TEMPLATES if t in present] + sorted(present - set(_SVA_TEMPLATES) - {"pooled"})
    panels = templates + (["pooled"] if "pooled" in present else [])
    ylim = _sva_ylim(sel)
    with style():
        fig, axes = plt.subplots(2, max(1, len(panels)), figsize=(3.0 * max(1, len(panels)), 6.0), squeeze=False,
                                 sharey=True, layout="constrained")
        for col, t in enumerate(panels):
            frame = sel[sel.template == t]
            for row, linear in enumerate((False, True)):
                ax = axes[row, col]
                for method in methods:
                    _sva_curve(ax, frame[frame.method == method], color=_color(method), linear=linear)
                _sva_decorate(ax, linear=linear, ylim=ylim)
                ax.set_xlabel("circuit size (nodes)")
            n = int(frame.n_test.max()) if len(frame) else 0
            flag = " (below floor)" if len(frame) and bool(frame.below_floor.any()) else ""
            name = f"pooled, {int(frame.templates.max())} templates" if t == "pooled" else t
            axes[0, col].set_title(f"{name}{flag}\n{n} test pairs")
        axes[0, 0].set_ylabel("faithfulness / completeness\nlog axis")
        axes[1, 0].set_ylabel("faithfulness / completeness\nlinear axis, 0–400")
        _sva_legend(fig, [(METHOD_LABELS.get(m, m), _color(m), "-") for m in methods if m in set(sel.method)])
        fig.suptitle(title or f"SVA circuits on {BASIS_LABELS.get(basis, basis)}\n({_sva_models(sel)}; "
                     f"{setting} runs, {ablation} ablation; bands: 95% bootstrap over test pairs)", fontsize=_fs(9))
    return fig


def fig_methods_by_basis(curves, *, bases=("mlp_acts", "mlp_out", "attn_out", "resid"),
                         methods=("relp", "ig-inputs", "atp"),
                         ablation_methods=("relp", "relp-no-gate", "relp-no-half"),
                         setting: str = "paired", ablation: str = "mean", template: str = "pooled",
                         title: str | None = None, ax=None):
    """Figure 3 (and A): the pooled curves, one panel per basis comparing the methods, and a last panel with RelP
    and its ablated rule sets on the neurons. Bands: bootstrap intervals."""
    _no_ax(ax, "fig_methods_by_basis")
    import matplotlib.pyplot as plt

    sel = _sva_select(curves, setting=setting, ablation=ablation, eval_metric="logit_diff", template=template)
    bases = [b for b in bases if b in set(sel.basis)]
    panels = [(BASIS_LABELS.get(b, b), sel[sel.basis == b], methods) for b in bases]
    abl = sel[(sel.basis == "mlp_acts") & sel.method.isin(ablation_methods or ())]
    if abl.method.nunique() > 1:
        panels.append(("RelP rules (neurons)", abl, ablation_methods))
    used = []
    with style():
        fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(3.2 * max(1, len(panels)), 3.9), squeeze=False,
                                 sharey=True, layout="constrained")
        ylim = _sva_ylim(pd.concat([p[1] for p in panels])) if panels else None
        for ax, (ptitle, frame, ms) in zip(axes[0], panels):
            for method in ms:
                g = frame[frame.method == method]
                if len(g):
                    _sva_curve(ax, g, color=_color(method), linestyle=_METHOD_STYLES.get(method, "-"))
                    if method not in [u[0] for u in used]:
                        used.append((method, _color(method)))
            _sva_decorate(ax, ylim=ylim)
            ax.set_title(ptitle)
            ax.set_xlabel("circuit size (nodes)")
        axes[0][0].set_ylabel("faithfulness / completeness")
        _sva_legend(fig, [(METHOD_LABELS.get(m, m), c, _METHOD_STYLES.get(m, "-")) for m, c in used],
                    ncol=len(used) + 2)
        fig.suptitle(title or f"SVA, {template} over templates\n({_sva_models(sel)}; {setting} runs, {ablation} "
                     "ablation; bands: 95% bootstrap)", fontsize=_fs(9))
    return fig


def fig_basis_comparison(curves, *, methods=("ig-inputs", "relp"),
                         bases=("mlp_acts", "mlp_out", "attn_out", "resid", "sae_mlp_out", "sae_resid"),
                         linear_bases=("mlp_acts", "sae_mlp_out", "sae_resid"), template: str = "pooled",
                         title: str | None = None, ax=None):
    """Figure 2: pooled faithfulness / completeness vs size, one column per method, every basis in each panel
    (neuron-basis sites solid, SAE sites dashed); top row log axis, bottom row linear 0–400. Bands: bootstrap."""
    _no_ax(ax, "fig_basis_comparison")
    import matplotlib.pyplot as plt

    sel = _sva_select(curves, setting="paired", ablation="mean", eval_metric="logit_diff", template=template)
    methods = [m for m in methods if m in set(sel.method)] or list(methods[:1])
    ylim = _sva_ylim(sel)
    with style():
        fig, axes = plt.subplots(2, len(methods), figsize=(5.6 * len(methods), 8.0), squeeze=False, sharey=True,
                                 layout="constrained")
        for col, method in enumerate(methods):
            for row, linear in enumerate((False, True)):
                ax = axes[row][col]
                for basis in bases:
                    if linear and basis not in linear_bases:
                        continue
                    g = sel[(sel.method == method) & (sel.basis == basis)]
                    _sva_curve(ax, g, color=_color(basis), linestyle="--" if basis.startswith("sae_") else "-",
                               linear=linear, label=BASIS_LABELS.get(basis, basis))
                _sva_decorate(ax, linear=linear, ylim=ylim)
                ax.set_xlabel("circuit size (nodes)")
                ax.set_title(METHOD_LABELS.get(method, method) + (" (linear axis, 0–400)" if linear else ""))
            axes[0][col].legend(fontsize=_fs(6.5), loc="center left")
        for row in range(2):
            axes[row][0].set_ylabel("faithfulness (filled, ideal 1)\ncompleteness (open, ideal 0)")
        fig.suptitle(title or f"SVA circuits by basis: neurons vs SAE latents\n({_sva_models(sel)}; {template} over "
                     "templates; paired, mean ablation; bands: 95% bootstrap)", fontsize=_fs(9))
    return fig


def fig_unpaired(curves, *, template: str = "pooled", title: str | None = None, ax=None):
    """Figure 5: circuits found without a counterfactual (zero baseline, metric logit(y)). Left: evaluated as the
    paper does, on the test pairs' logit difference under mean ablation; right panels: the single-answer extra
    (logit(y) under zero and mean ablation), each with its own y range."""
    _no_ax(ax, "fig_unpaired")
    import matplotlib.pyplot as plt

    sel = _sva_select(curves, setting="unpaired", template=template)
    panels = [("paired evaluation: logit difference,\nmean ablation (as the paper)", "logit_diff", "mean")]
    panels += [(f"extra: logit(y), {a} ablation", "logit", a) for a in ("zero", "mean")
               if len(sel[(sel.eval_metric == "logit") & (sel.ablation == a)])]
    used = []
    with style():
        fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 4.0), squeeze=False,
                                 layout="constrained")
        for ax, (ptitle, metric, ablation) in zip(axes[0], panels):
            frame = sel[(sel.eval_metric == metric) & (sel.ablation == ablation)]
            for (method, basis), g in frame.groupby(["method", "basis"]):
                ls = _METHOD_STYLES.get(method, "-") if method != "relp" else "-"
                _sva_curve(ax, g, color=_color(basis), linestyle=ls)
                label = f"{METHOD_LABELS.get(method, method)}, {BASIS_LABELS.get(basis, basis)}"
                entry = (label, _color(basis), ls)
                if entry not in used:
                    used.append(entry)
            _sva_decorate(ax, ylim=_sva_ylim(frame, limit=(-10.0, 10.0)))
            ax.set_title(ptitle)
            ax.set_xlabel("circuit size (nodes)")
            ax.set_ylabel("faithfulness / completeness")
        _sva_legend(fig, used, ncol=3)
        fig.suptitle(title or "Unpaired SVA: circuits from the zero baseline and metric logit(y)\n"
                     f"({_sva_models(sel)}; {template}; bands: 95% bootstrap)", fontsize=_fs(9))
    return fig


def fig_score_distribution(histogram, concentration, layers, *, method: str = "relp", title: str | None = None,
                           ax=None):
    """Figure 4 (and 2a per method): (a) distribution of log10 |node score| per basis, every template's nodes
    pooled; (b) share of the total |score| held by the top-k nodes (median over templates, with the range);
    (c..) the layers of the top-k nodes, per basis."""
    _no_ax(ax, "fig_score_distribution")
    import matplotlib.pyplot as plt

    h = histogram[histogram.method == method]
    c = concentration[concentration.method == method]
    lay = layers[layers.method == method]
    bases = [b for b in BASIS_LABELS if b in set(h.basis) | set(c.basis)]
    ks = sorted(set(lay.k))
    with style():
        fig, axes = plt.subplots(1, 2 + len(ks), figsize=(3.1 * (2 + len(ks)), 3.5), squeeze=False,
                                 layout="constrained")
        ax_hist, ax_cum, ax_layers = axes[0][0], axes[0][1], axes[0][2:]
        for basis in bases:
            color, ls = _color(basis), "--" if basis.startswith("sae_") else "-"
            g = h[h.basis == basis]
            ax_hist.step((g.bin_lo + g.bin_hi) / 2, g.density, where="mid", color=color, ls=ls, lw=1.3)
            gc = c[c.basis == basis]
            if len(gc):
                grid = np.unique(gc.k)
                per = np.array([np.interp(grid, gt.k, gt.share) for _, gt in gc.groupby("template")])
                ax_cum.plot(grid, np.median(per, 0), color=color, ls=ls)
                ax_cum.fill_between(grid, per.min(0), per.max(0), color=color, alpha=0.1, lw=0)
            for ax, k in zip(ax_layers, ks):
                gl = lay[(lay.basis == basis) & (lay.k == k)]
                ax.step(gl.layer, gl.fraction, where="mid", color=color, ls=ls)
        ax_hist.set_xlabel("log10 |mean attribution score|")
        ax_hist.set_ylabel("density of nodes")
        ax_hist.set_title("(a) score distribution")
        ax_cum.set_xscale("log")
        ax_cum.set_xlabel("top-k nodes")
        ax_cum.set_ylabel("share of total |score|")
        ax_cum.set_title("(b) concentration\n(median, range over templates)")
        for i, (ax, k) in enumerate(zip(ax_layers, ks)):
            ax.set_title(f"({chr(ord('c') + i)}) layers of the top {k:,}")
            ax.set_xlabel("layer")
            ax.set_ylabel("fraction of nodes")
        _sva_legend(fig, [(BASIS_LABELS[b], _color(b), "--" if b.startswith("sae_") else "-") for b in bases],
                    markers=False)
        fig.suptitle(title or f"SVA node attribution scores by basis ({METHOD_LABELS.get(method, method)}, paired; "
                     "every template's nodes pooled)")
    return fig


def fig_edge_pruning(edges, *, title: str | None = None, ax=None):
    """Figure 6: faithfulness and completeness vs edges kept, per edge score (``relevance``: the pruning score of the
    paper's released experiments, v_s·∂v_t/∂v_s × ∂m/∂v_t; ``raw``: the paper's text formula), pooled over
    templates with bootstrap bands; (c) faithfulness at equal neuron count against the top neurons by node score."""
    _no_ax(ax, "fig_edge_pruning")
    import matplotlib.pyplot as plt

    pooled = edges[edges.template == "pooled"] if "pooled" in set(edges.template) else edges
    per = edges[edges.template != "pooled"]
    colors = {w: _color(w, colors=EDGE_WEIGHT_COLORS) for w in EDGE_WEIGHT_COLORS}
    labels = {"relevance": r"relevance $v_s\,\partial v_t/\partial v_s\cdot\partial m/\partial v_t$ (paper's code)",
              "raw": r"raw $v_s\,\partial v_t/\partial v_s$ (paper's text)"}
    weights = [w for w in ("relevance", "raw") if w in set(edges.weight)]
    with style():
        fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.2), layout="constrained")
        for ax, col in ((axes[0], "faithfulness"), (axes[1], "completeness")):
            for w in weights:
                for _, g in per[per.weight == w].groupby("template"):
                    g = g.sort_values("n_edges")
                    ax.plot(g.n_edges, g[col], color=colors[w], alpha=0.3, lw=0.9)
                g = pooled[pooled.weight == w].sort_values("n_edges")
                ax.plot(g.n_edges, g[col], color=colors[w], lw=2.0, marker="o", ms=3, label=labels[w])
                if f"{col}_lo" in g:
                    ax.fill_between(g.n_edges, g[f"{col}_lo"], g[f"{col}_hi"], color=colors[w], alpha=0.15, lw=0)
            ax.set_xscale("log")
            ax.set_xlabel("edges kept")
            ax.set_ylabel(col)
            ax.axhline(0.8 if col == "faithfulness" else 0.0, color="grey", ls=":", lw=1)
        axes[0].set_title("(a) faithfulness (ideal 1)")
        axes[1].set_title("(b) completeness (ideal 0)")
        axes[0].legend(loc="lower right", fontsize=_fs(7))
        ax = axes[2]
        for w in weights:
            g = pooled[pooled.weight == w].sort_values("n_nodes")
            ax.plot(g.n_nodes, g.faithfulness, color=colors[w], lw=2, marker="o", ms=3, label=f"edge-pruned ({w})")
        if "faithfulness_nodes" in pooled and weights:
            g = pooled[pooled.weight == weights[0]].sort_values("n_nodes")
            ax.plot(g.n_nodes, g.faithfulness_nodes, color="#444444", lw=1.6, ls="--", marker="s", ms=3,
                    label="top neurons by |RelP score|")
        ax.set_xscale("log")
        ax.set_xlabel("neurons in the circuit")
        ax.set_ylabel("faithfulness")
        ax.axhline(0.8, color="grey", ls=":", lw=1)
        ax.set_title("(c) at equal circuit size")
        ax.legend(loc="lower right", fontsize=_fs(7))
        models = _sva_models(edges)
        fig.suptitle(title or f"Edge pruning on SVA ({models}; thin: templates, thick: pooled with 95% bootstrap)")
    return fig


def fig_sae_training(quality, *, title: str | None = None, ax=None):
    """Figure 2b: the baseline SAEs per layer (``sae_quality``): explained variance on held-out corpus tokens, L0
    (active latents per token on the SVA prompts) and the fraction of latents that never fire on held-out corpus
    tokens, one line per site."""
    _no_ax(ax, "fig_sae_training")
    import matplotlib.pyplot as plt

    panels = (("heldout_explained_variance", "held-out explained variance"), ("l0", "L0 (active latents / token, SVA prompts)"),
              ("dead_fraction", "latents never firing (held out)"))
    with style():
        fig, axes = plt.subplots(1, 3, figsize=(11, 3.2), layout="constrained")
        for site, g in quality.groupby("site"):
            g = g.sort_values("layer")
            for ax, (col, _) in zip(axes, panels):
                ax.plot(g.layer, g[col], marker="o", color=_color("sae_" + site), label=f"sae_{site}")
        for ax, (_, name) in zip(axes, panels):
            ax.set_title(name)
            ax.set_xlabel("layer")
        axes[0].legend()
        d_sae, k = (int(quality[c].iloc[0]) if len(quality) else 0 for c in ("d_sae", "k"))
        fig.suptitle(title or f"Baseline SAEs on {_sva_models(quality)}: d_sae {d_sae}, k {k}")
    return fig


def fig_sae_ladder(ladder, *, methods=("ig-inputs", "relp"), site: str = "mlp_out", thresholds=(0.8, 0.9),
                   qualities=(("ce_recovered", "CE loss recovered (median over layers)"),
                              ("ev", "held-out explained variance, no position 0 (median)")),
                   title: str | None = None, ax=None):
    """Figure 2c: the SAE quality ladder (``sae_ladder``, :func:`neuronlib.paper.sae_ladder.ladder_table`).
    Columns: one per method (IG first); rows: one per quality measure on the x axis. Each rung's circuit size at
    faithfulness 0.8 (filled) and 0.9 (open) on its ``sae_{site}`` basis with its 95% bootstrap interval (an open
    upper end drawn to the top of the panel), against the rung's quality; horizontal lines: the neuron
    (``mlp_acts``) and MLP-output sizes of the same benchmark, bands their intervals."""
    _no_ax(ax, "fig_sae_ladder")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    sel = ladder[ladder["site"] == site] if "site" in ladder else ladder
    methods = [m for m in methods if m in set(sel["method"])] or list(dict.fromkeys(sel["method"]))
    marker_face = dict(zip(thresholds, ("full", "none", "left")))
    with style():
        fig, axes = plt.subplots(len(qualities), max(1, len(methods)), figsize=(4.6 * max(1, len(methods)),
                                 3.3 * len(qualities)), layout="constrained", squeeze=False)
        for col, method in enumerate(methods):
            g = sel[sel["method"] == method].sort_values("n_unique_tokens")
            for row, (quality, qlabel) in enumerate(qualities):
                ax = axes[row][col]
                for ref, colour, ls in (("neurons", _color("mlp_acts"), "-"), ("mlp_out", _color("mlp_out"), "--")):
                    for t in thresholds:
                        c = f"{ref}_k@F>={t}"
                        if c not in g or not len(g) or not np.isfinite(g[c].iloc[0]):
                            continue
                        alpha = 1.0 if t == thresholds[0] else 0.5
                        ax.axhline(g[c].iloc[0], color=colour, ls=ls, lw=1.1, alpha=alpha)
                        lo, hi = g[f"{c}_lo"].iloc[0], g[f"{c}_hi"].iloc[0]
                        if np.isfinite(lo) and np.isfinite(hi):
                            ax.axhspan(lo, hi, color=colour, alpha=0.08 * alpha, lw=0)
                by_quality = g.sort_values([quality, "n_unique_tokens"])  # the curve as quality rises
                for t in thresholds:
                    k, lo, hi = (by_quality[f"k@F>={t}{e}"].to_numpy(float) for e in ("", "_lo", "_hi"))
                    x = by_quality[quality].to_numpy(float)
                    top = np.nanmax(np.concatenate([k, lo, hi[np.isfinite(hi)], [1.0]])) * 3
                    err = np.vstack([np.clip(k - lo, 0, None), np.clip(np.where(np.isfinite(hi), hi, top) - k, 0,
                                                                       None)])
                    ax.errorbar(x, k, yerr=err, marker="o", ms=5, capsize=2, lw=1.2, color=_color("sae_" + site),
                                mfc=_color("sae_" + site) if marker_face[t] == "full" else "white",
                                alpha=1.0 if t == thresholds[0] else 0.75)
                    if t == thresholds[0]:
                        for xi, ki, name in zip(x, k, by_quality["rung"]):
                            if np.isfinite(xi) and np.isfinite(ki):
                                ax.annotate(str(name), (xi, ki), textcoords="offset points", xytext=(4, 4),
                                            fontsize=_fs(7))
                ax.set_yscale("log")
                ax.set_xlabel(qlabel)
                if col == 0:
                    ax.set_ylabel("circuit size (nodes)")
                if row == 0:
                    ax.set_title(METHOD_LABELS.get(method, method))
        sae = _color("sae_" + site)
        handles = [Line2D([], [], color=sae, marker="o", label=f"SAE latents on {site}, F 0.8"),
                   Line2D([], [], color=sae, marker="o", mfc="white", label="... F 0.9"),
                   Line2D([], [], color=_color("mlp_acts"), label="neurons (mlp_acts)"),
                   Line2D([], [], color=_color("mlp_out"), ls="--", label="MLP outputs (faint: F 0.9)")]
        fig.legend(handles=handles, loc="outside lower center", ncol=4)
        fig.suptitle(title or f"Circuit size vs SAE quality ({_sva_models(ladder)}; SVA pooled over templates, "
                              "95% bootstrap)", fontsize=_fs(9))
    return fig


# ===================================================================================================================
# appendix case studies (notebook 06; tables from neuronlib.paper.appendix): addition AUROC histograms and heatmaps,
# multilingual features by layer, IOI faithfulness / completeness.
# ===================================================================================================================


def _appendix_family(fam: str) -> str:
    return "operand is n" if fam.startswith("operand_") else {"mod10": "sum mod 10", "mod2": "sum mod 2",
                                                              "mod5": "sum mod 5", "tens": "tens digit"}.get(fam, fam)


def fig_addition_auroc_histograms(hist, *, threshold: float = 0.8, title: str | None = None, ax=None):
    """One panel per label family (``addition_auroc_hist``): histogram over neurons of the best folded AUROC
    (|AUROC - 0.5| + 0.5) over the family's one-vs-rest labels, real labels (bars) vs one null draw (line)."""
    _no_ax(ax, "fig_addition_auroc_histograms")
    import matplotlib.pyplot as plt

    h = hist.copy()
    h["panel"] = h["family"].map(_appendix_family)
    h = h.groupby(["panel", "bin_lo", "bin_hi"], sort=False)[["real", "null"]].sum().reset_index()
    panels = list(dict.fromkeys(h["panel"]))
    with style():
        fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.2), squeeze=False, layout="constrained")
        for ax, p in zip(axes[0], panels):
            g = h[h["panel"] == p]
            width = (g["bin_hi"] - g["bin_lo"]).to_numpy()
            ax.bar(g["bin_lo"], g["real"].clip(lower=0.5), width=width, align="edge", color="#1b6ca8", alpha=0.8,
                   label="real labels")
            ax.step(g["bin_lo"], g["null"].clip(lower=0.5), where="post", color="#d1495b", lw=1.2,
                    label="null labels")
            ax.axvline(threshold, color="#444", ls=":", lw=1)
            ax.set_yscale("log")
            ax.set_title(p, fontsize=_fs(9))
            ax.set_xlabel("|AUROC − 0.5| + 0.5 (best label)")
        axes[0][0].set_ylabel("neurons")
        axes[0][0].legend(fontsize=_fs(7))
        fig.suptitle(title or "Addition: how well each neuron's attribution separates a label", fontsize=_fs(10))
    return fig


def fig_addition_heatmaps(heat, *, title: str | None = None, ax=None):
    """A 10 x 10 heatmap (a down, b across) of each strongest neuron's position-summed attribution
    (``addition_heatmap``)."""
    _no_ax(ax, "fig_addition_heatmaps")
    import matplotlib.pyplot as plt

    neurons = list(dict.fromkeys(heat["neuron"]))
    ncol = min(3, max(1, len(neurons)))
    nrow = max(1, -(-len(neurons) // ncol))
    with style():
        fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 3.0 * nrow), squeeze=False, layout="constrained")
        for ax in axes.flat:
            ax.axis("off")
        for ax, name in zip(axes.flat, neurons):
            g = heat[heat["neuron"] == name]
            M = g.pivot(index="a", columns="b", values="attribution")
            v = float(np.nanmax(np.abs(M.to_numpy()))) or 1.0
            im = ax.imshow(M.to_numpy(), cmap="RdBu_r", vmin=-v, vmax=v)
            ax.axis("on")
            ax.grid(False)
            ax.set_xticks(range(len(M.columns)))
            ax.set_xticklabels(M.columns, fontsize=_fs(6))
            ax.set_yticks(range(len(M.index)))
            ax.set_yticklabels(M.index, fontsize=_fs(6))
            ax.set_xlabel("b", fontsize=_fs(7))
            ax.set_ylabel("a", fontsize=_fs(7))
            ax.set_title(f"{name}: {g['label'].iloc[0]} (AUROC {g['auroc_select'].iloc[0]:.2f})", fontsize=_fs(7))
            fig.colorbar(im, ax=ax, shrink=0.75)
        fig.suptitle(title or "Addition: attribution of the strongest sum-mod-10 neurons over (a, b)", fontsize=_fs(10))
    return fig


def fig_features_by_layer(layers, *, title: str | None = None, ax=None):
    """Neurons per layer selected by AUROC (dashed) and replicated on the held-out phrasing (solid), one line per
    feature type (``antonyms_features_by_layer``)."""
    _no_ax(ax, "fig_features_by_layer")
    import matplotlib.pyplot as plt

    fams = list(dict.fromkeys(layers["family"]))
    with style():
        fig, axes = plt.subplots(1, max(1, len(fams)), figsize=(3.6 * max(1, len(fams)), 3.4), squeeze=False,
                                 layout="constrained")
        for ax, fam in zip(axes[0], fams):
            g = layers[layers["family"] == fam]
            c = _color(fam, "#555", colors=FEATURE_COLORS)
            ax.plot(g["layer"], g["replicated"], color=c, marker="o", ms=3, label="replicated on held-out phrasing")
            ax.plot(g["layer"], g["selected"], color=c, ls="--", lw=1, label="selected (AUROC ≥ 0.9)")
            ax.set_xlabel("layer")
            ax.set_title(f"{fam} neurons", fontsize=_fs(9))
            ax.legend(fontsize=_fs(7))
        axes[0][0].set_ylabel("neurons")
        fig.suptitle(title or "Multilingual antonyms: language / concept / attribute neurons by layer", fontsize=_fs(10))
    return fig


def fig_ioi_curves(curves, *, title: str | None = None, ax=None):
    """Faithfulness and completeness vs circuit size, neurons vs MLP outputs (``ioi_curves``): pooled over every
    (template, name order) with its 95% bootstrap band over test pairs (thick), each (template, order) thin; log x
    axis."""
    _no_ax(ax, "fig_ioi_curves")
    import matplotlib.pyplot as plt

    colors = {site: _color(site, colors=IOI_SITE_COLORS) for site in IOI_SITE_COLORS}
    names = {"mlp_acts": "MLP neurons", "mlp_out": "MLP outputs"}
    pooled = curves[curves["order"] == "pooled"]
    strata = curves[curves["order"] != "pooled"]
    with style():
        fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.6), layout="constrained", sharey=True)
        for ax, what in zip(axes, ("faithfulness", "completeness")):
            for (site, _, _), g in strata[strata["measure"] == what].groupby(["site", "template", "order"]):
                g = g.sort_values("size")
                ax.plot(g["size"].clip(lower=0.5), g["value"], color=colors.get(site, "#555"), lw=0.6, alpha=0.35)
            for site, g in pooled[pooled["measure"] == what].groupby("site", sort=False):
                g = g.sort_values("size")
                x = g["size"].clip(lower=0.5)
                ax.plot(x, g["value"], marker="o", ms=3, lw=1.8, color=colors.get(site, "#555"),
                        label=f"{names.get(site, site)}, pooled")
                ax.fill_between(x, g["lo"], g["hi"], color=colors.get(site, "#555"), alpha=0.15)
            ax.axhline(1.0 if what == "faithfulness" else 0.0, color="#999", ls=":", lw=1)
            ax.set_xscale("log")
            ax.set_xlabel("circuit size (nodes; 0 plotted at 0.5)")
            ax.set_title(what)
        axes[0].set_ylabel("ratio (paired, mean ablation)")
        axes[0].legend(fontsize=_fs(8))
        n = int(pooled["n_test"].iloc[0]) if len(pooled) else 0
        k = len(strata.drop_duplicates(["template", "order"]))
        fig.suptitle(title or f"IOI circuits per template and name order ({k} strata, thin), pooled over {n} held-out "
                     "pairs (thick; band: 95% bootstrap over pairs)", fontsize=_fs(9))
    return fig


def fig_addition_nulls(draws, *, title: str | None = None, ax=None):
    """Per answer token (rows) and sum-mod-k family (columns): the held-out replicated count with the real labels
    (vertical line) against its operand-balanced and label-shuffle nulls (histograms over draws;
    ``addition_mod_null_draws``)."""
    _no_ax(ax, "fig_addition_nulls")
    import matplotlib.pyplot as plt

    colors = {kind: _color(kind, colors=NULL_COLORS) for kind in NULL_COLORS}
    tokens = list(dict.fromkeys(draws["token"]))
    fams = list(dict.fromkeys(draws["family"]))
    with style():
        fig, axes = plt.subplots(len(tokens), len(fams), figsize=(3.2 * len(fams), 2.7 * len(tokens)),
                                 squeeze=False, layout="constrained")
        for i, token in enumerate(tokens):
            for j, fam in enumerate(fams):
                ax = axes[i][j]
                g = draws[(draws["token"] == token) & (draws["family"] == fam)]
                observed = int(g.loc[g["kind"] == "observed", "n_replicated"].iloc[0])
                top = max(observed, int(g["n_replicated"].max()))
                bins = np.linspace(-0.5, top + 0.5, min(top + 2, 40))
                for kind, c in colors.items():
                    ax.hist(g.loc[g["kind"] == kind, "n_replicated"], bins=bins, color=c, alpha=0.5, label=kind)
                ax.axvline(observed, color="#222", lw=1.5, label="real labels")
                ax.set_title(f"{_appendix_family(fam)}, {token}", fontsize=_fs(8))
                ax.set_xlabel("neuron-label pairs replicated on held-out pairs", fontsize=_fs(7))
        axes[0][0].set_ylabel("null draws")
        axes[0][0].legend(fontsize=_fs(7))
        fig.suptitle(title or "Addition: sum-mod-k neurons against the operand-balanced and the label-shuffle null",
                     fontsize=_fs(10))
    return fig


# ===============================================================================================================
# capitals and languages (notebooks 03 and 05; tables from neuronlib.paper.multihop and neuronlib.paper.languages)




def _by_set(frames):
    """A tidy table with a ``set`` column -> {set: frame}, without the columns that are empty for that set (the
    table's sets measure different flips); a dict passes through."""
    if isinstance(frames, dict):
        return frames
    return {name: g.drop(columns="set").dropna(axis=1, how="all").reset_index(drop=True)
            for name, g in frames.groupby("set", sort=False)}




def plot_steering(sweeps, flips=None, *, paper_range=(0.0, 2.0), title: str | None = None,
                  xlabel: str = "multiplier on 'say a capital' neurons", ax=None):
    """One panel per prompt set: p(kind) for each kind (capital/state/city, or language/country/city) vs
    multiplier (thin: per prompt; thick: mean), the paper's 0-2 range shaded; flip fractions on a twin axis.

    ``sweeps``: a tidy table with a ``set`` column (one :func:`neuronlib.paper.casestudy.steering_sweep` frame per
    set, as the notebook writes it to ``results/``) or a dict set -> frame; ``flips`` likewise
    (:func:`neuronlib.paper.multihop.flip_fraction` frames, with ``source`` and ``target`` columns in the table)."""
    _no_ax(ax, "plot_steering")
    import matplotlib.pyplot as plt

    from ..plotting import style

    sweeps = _by_set(sweeps)
    flips = _by_set(flips) if flips is not None else None

    with style():
        fig, axes = plt.subplots(1, len(sweeps), figsize=(5.2 * len(sweeps), 4.6), squeeze=False, layout="constrained")
        for ax, (name, sweep) in zip(axes[0], sweeps.items()):
            ax.axvspan(*paper_range, color="#ececec", zorder=0,
                       label=f"paper's range (x{paper_range[0]:g} to x{paper_range[1]:g})")
            ax.axvline(1.0, color="#999", lw=0.8, ls=":")
            for kind in [c[2:] for c in sweep.columns if c.startswith("p_") and not c.endswith(("_lo", "_hi"))]:
                col = f"p_{kind}"
                wide = sweep.pivot(index="multiplier", columns="example", values=col)
                ax.plot(wide.index, wide.values, color=KIND_COLORS.get(kind, "#777"), alpha=0.12, lw=0.7)
                ax.plot(wide.index, wide.mean(1), color=KIND_COLORS.get(kind, "#777"), lw=2.4, marker="o", ms=3,
                        label=f"p({kind}) mean")
            if flips is not None and name in flips and len(flips[name]) and flips[name]["n"].iloc[0] > 0:
                fl = flips[name]
                col = [c for c in fl.columns if c.startswith("flip_to_") and not c.endswith(("_lo", "_hi"))][0]
                source = fl.attrs.get("source", fl["source"].iloc[0] if "source" in fl else "?")
                ax2 = ax.twinx()
                ax2.plot(fl["multiplier"], fl[col], color="#444", ls="--", lw=1.3,
                         label=f"top answer {source} → {col[8:]} (of {int(fl['n'].iloc[0])})")
                ax2.set_ylim(-0.02, 1.02)
                ax2.set_ylabel("fraction of prompts flipped", fontsize=_fs(8))
                ax2.grid(False)
                ax2.spines["right"].set_visible(True)
                h2, l2 = ax2.get_legend_handles_labels()
            else:
                h2, l2 = [], []
            n = sweep["example"].nunique()
            ax.set_title(f"{name} (n = {n})")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("next-token probability (first token)")
            ax.set_ylim(-0.02, 1.02)
            h, l = ax.get_legend_handles_labels()
            ax.legend(h + h2, l + l2, loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=3, fontsize=_fs(7))
        if title:
            fig.suptitle(title, fontsize=_fs(10))
    return fig


def plot_language_accuracy(acc, *, ax=None):
    """Accuracy of each task of the languages study (the ``split == "all"`` rows of ``languages_accuracy``) and per
    split, with Wilson 95% intervals; into ``ax`` when given (the figure returned is its figure)."""
    from ..plotting import style

    splits = list(dict.fromkeys(acc["split"])) if "split" in acc else ["all"]
    tasks = list(dict.fromkeys(acc["task"]))
    with style():
        fig, ax = _one_panel(ax, figsize=(1.6 * len(tasks) + 2.5, 3.8), layout="constrained")
        width = 0.8 / len(splits)
        for j, split in enumerate(splits):
            g = acc[acc["split"] == split].set_index("task").reindex(tasks) if "split" in acc else acc.set_index("task")
            x = np.arange(len(tasks)) + (j - (len(splits) - 1) / 2) * width
            err = np.vstack([g["accuracy"] - g["accuracy_lo"], g["accuracy_hi"] - g["accuracy"]])
            ax.bar(x, g["accuracy"], width, color=_color(split, "#777", colors=SPLIT_COLORS), alpha=0.85,
                   label=f"{split} (n = {'/'.join(str(int(v)) for v in g['n'].unique())})")
            ax.errorbar(x, g["accuracy"], yerr=err, fmt="none", ecolor="black", lw=0.8, capsize=2)
        ax.set_xticks(range(len(tasks)))
        ax.set_xticklabels([t.replace("_", " ") for t in tasks], fontsize=_fs(8))
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("top answer = expected name (whole name)")
        ax.set_title("city → country → language: accuracy with Wilson 95% intervals", fontsize=_fs(9))
        ax.legend(fontsize=_fs(7))
    return fig


def plot_language_patching(summary, *, kind: str = "other language", ax=None):
    """Patching at the city's tokens (``languages_patch_summary``): success rate (top answer = the target city's)
    vs number of patched neurons for the country group and its random and |attribution|-matched controls, with
    Wilson intervals; dense references as horizontal lines. Left: language answer (two-hop prompt); right: country
    answer (city -> country prompt)."""
    _no_ax(ax, "plot_language_patching")
    import matplotlib.pyplot as plt

    from ..plotting import style

    s = summary[summary["kind"] == kind]
    with style():
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained", sharey=True)
        for ax, (task, answer) in zip(axes, (("two_hop", "language"), ("city_to_country", "country"))):
            g = s[s["task"] == task]
            for shift, (prefix, color) in zip((1.0, 0.9, 1.1), VARIANT_COLORS.items()):  # offsets keep ties visible
                h = g[g["variant"].str.startswith(prefix + " ")].sort_values("n_neurons")
                if not len(h):
                    continue
                err = np.vstack([h["success"] - h["success_lo"], h["success_hi"] - h["success"]])
                ax.errorbar(h["n_neurons"] * shift, h["success"], yerr=err, marker="o", color=color, capsize=2,
                            label=prefix + ("" if prefix == "country group" else " (control)"))
            dense = g[g["variant"].str.contains("dense")]
            for r, ls in zip(dense.itertuples(), ("--", ":", "-.")):
                ax.axhline(r.success, color="#444", ls=ls, lw=1, label=f"{r.variant}: {r.success:.0%}")
            _patch_panel(ax, g, answer, task, kind, "neurons patched at the city's tokens")
        axes[0].set_ylabel("top answer = the target city's")
    return fig


def _patch_panel(ax, g, answer: str, task: str, kind: str, xlabel: str):
    """Axes, title and legend of one panel of a patching figure (success rate vs patch size, log x)."""
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(xlabel)
    n = int(g["pairs"].max()) if len(g) else 0
    ax.set_title(f"{answer} answer ({task.replace('_', ' ')} prompt), {n} {kind} pairs", fontsize=_fs(9))
    ax.legend(fontsize=_fs(7), loc="upper left")


def plot_language_steering(summary, *, ax=None):
    """Scaling say-an-answer neurons and controls at the last position (``languages_knockout_controls``,
    ``capitals_knockout_controls``): one panel per neuron set, mean p(kind) (language, country, city, or
    capital, state, city) with bootstrap intervals and the fraction of prompts whose top answer changed (Wilson),
    vs multiplier."""
    _no_ax(ax, "plot_language_steering")
    import matplotlib.pyplot as plt

    from ..plotting import style

    sets = list(dict.fromkeys(summary["set"]))
    with style():
        fig, axes = plt.subplots(1, len(sets), figsize=(4.4 * len(sets), 4.0), squeeze=False, layout="constrained",
                                 sharey=True)
        for ax, name in zip(axes[0], sets):
            g = summary[summary["set"] == name].sort_values("multiplier")
            ax.axvline(1.0, color="#999", lw=0.8, ls=":")
            kinds = [c[2:] for c in g.columns if c.startswith("p_") and not c.endswith(("_lo", "_hi"))]
            for kind in kinds:
                ax.plot(g["multiplier"], g[f"p_{kind}"], marker="o", ms=3, color=KIND_COLORS.get(kind, "#777"),
                        label=f"p({kind})")
                ax.fill_between(g["multiplier"], g[f"p_{kind}_lo"], g[f"p_{kind}_hi"], color=KIND_COLORS.get(kind, "#777"),
                                alpha=0.15)
            ax.plot(g["multiplier"], g["changed"], color="black", ls="--", lw=1.2, label="top answer changed")
            ax.fill_between(g["multiplier"], g["changed_lo"], g["changed_hi"], color="black", alpha=0.08)
            ax.set_title(f"{name} ({int(g['n_neurons'].iloc[0])} neurons, n = {int(g['n'].iloc[0])})", fontsize=_fs(9))
            ax.set_xlabel("multiplier at the last position")
            ax.set_ylim(-0.02, 1.02)
        axes[0][0].set_ylabel("probability / fraction")
        axes[0][0].legend(fontsize=_fs(7))
    return fig


def plot_set_group(summary, *, target: str, title: str | None = None, ax=None):
    """Steering toward a target (:func:`neuronlib.paper.casestudy.set_group_summary`): per group size, the fraction
    of prompts whose top answer becomes the ``target`` (Wilson 95% intervals) for the group and its random and
    matched controls (one panel per ``template`` when the table has that column)."""
    _no_ax(ax, "plot_set_group")
    import matplotlib.pyplot as plt

    from ..plotting import style

    panels = list(dict.fromkeys(summary["template"])) if "template" in summary else [None]
    with style():
        fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.8), squeeze=False,
                                 layout="constrained", sharey=True)
        for ax, panel in zip(axes[0], panels):
            g = summary if panel is None else summary[summary["template"] == panel]
            for shift, role in zip((1.0, 0.9, 1.1), dict.fromkeys(g["role"])):
                h = g[g["role"] == role].sort_values("size")
                err = np.vstack([h["success"] - h["success_lo"], h["success_hi"] - h["success"]])
                ax.errorbar(h["size"] * shift, h["success"], yerr=err, marker="o", capsize=2,
                            color=ROLE_COLORS.get(role, "#1b6ca8"), label=role)
            ax.set_xscale("log")
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel("neurons set at the last position")
            n = int(g["n"].max()) if len(g) else 0
            ax.set_title(f"{panel or ''} (n = {n} prompts)".strip(), fontsize=_fs(9))
            ax.legend(fontsize=_fs(7), loc="upper left")
        axes[0][0].set_ylabel(f"top answer = the {target}")
        if title:
            fig.suptitle(title, fontsize=_fs(10))
    return fig


def plot_patch_dose(dose, *, kind: str = "other language", ax=None):
    """The patch dose curve (``languages_patch_dose``): success rate (top answer = the target city's) vs the
    number of nodes patched, top |activation difference| vs random nodes at the same positions, at the city's
    tokens (solid) and at the later positions (dashed), with Wilson intervals; language answer left, country
    answer right."""
    _no_ax(ax, "plot_patch_dose")
    import matplotlib.pyplot as plt

    from ..plotting import style

    d = dose[dose["kind"] == kind]
    with style():
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained", sharey=True)
        for ax, (task, answer) in zip(axes, (("two_hop", "language"), ("city_to_country", "country"))):
            g = d[d["task"] == task]
            for where, ls in zip(dict.fromkeys(g["where"]), ("-", "--")):
                h = g[g["where"] == where].sort_values("size")
                for col, lo, hi, color, lab in (("success", "success_lo", "success_hi", "#1b6ca8", "top |Δ|"),
                                                ("random_success", None, "random_hi", "#999999", "random")):
                    yerr = None if lo is None else np.vstack([h[col] - h[lo], h[hi] - h[col]])
                    ax.errorbar(h["size"], h[col], yerr=yerr, marker="o", ms=3, ls=ls, color=color, capsize=2,
                                label=f"{lab} at the {where}")
            _patch_panel(ax, g, answer, task, kind, "nodes patched (layer, position, neuron)")
        axes[0].set_ylabel("top answer = the target city's")
    return fig


def fig_dallas_circuit(nodes: pd.DataFrame, tokens: pd.DataFrame, *, per_group: int = 6, ax=None):
    """Figure 7 from ``capitals_<model>_dallas_circuit`` (the grouped two-hop circuit, one row per node) and
    ``capitals_<model>_dallas_tokens`` (position, token): the strongest ``per_group`` nodes of each group (3 of the
    first-token group), x = token position, y = layer; into ``ax`` when given."""
    from .. import viewer
    from .multihop import circuit_graph

    toks = tokens.sort_values("position")["token"].fillna("").astype(str).tolist()
    meta = nodes.attrs if nodes.attrs else {}
    ranked = nodes.dropna(subset=["group"]).assign(a=lambda x: x["score"].abs()).sort_values("a", ascending=False)
    shown = pd.concat([ranked[ranked["group"] != "first token"].groupby("group", sort=False).head(per_group),
                       ranked[ranked["group"] == "first token"].head(3)])
    title = (f"Dallas two-hop circuit: {len(nodes)} nodes; the {per_group} strongest of each group shown "
             "(3 of the first-token group)")
    graph = circuit_graph(shown, toks, title=meta.get("title", title), prompt="".join(toks),
                          n_layers=int(nodes["layer"].max()) + 1)
    return viewer.draw_circuit(graph, ax=ax, figsize=(12, 8.5), label_fontsize=_fs(6.5), title=title)


def fig_composition(summary: pd.DataFrame, *, title: str | None = None, ax=None):
    """The composition test (``capitals_<model>_composition_summary``): fraction of pairs whose top answer becomes
    the target city's capital vs the number of neurons set at the city token (top |attribution|, random, matched;
    Wilson 95% intervals), with the source circuit's own group and the dense residual patch (best layer) as
    reference lines; into ``ax`` when given (the figure returned is its figure)."""
    from ..plotting import style

    with style():
        fig, ax = _one_panel(ax, figsize=(6.4, 4.2), layout="constrained")
        dose = summary[summary["size"] > 0]
        for shift, role in zip((1.0, 0.9, 1.1), dict.fromkeys(dose["role"])):
            h = dose[dose["role"] == role].sort_values("size")
            err = np.clip(np.vstack([h["success"] - h["success_lo"], h["success_hi"] - h["success"]]), 0, None)
            ax.errorbar(h["size"] * shift, h["success"], yerr=err, marker="o", capsize=2,
                        color=_color(role, "#1b6ca8", colors=ROLE_COLORS), label=f"{role} neurons")
        dense = summary[summary["site"] == "resid"]
        if len(dense):
            best = dense.loc[dense["success"].idxmax()]
            ax.axhline(best["success"], color="#4c9a2a", ls="--", lw=1.2,
                       label=f"dense: whole residual stream, {best['variant']}")
        group = summary[(summary["size"] <= 0) & (summary["site"] == "mlp_acts")]
        for r, ls in zip(group.itertuples(), (":", "-.")):
            ax.axhline(r.success, color="#d1495b", ls=ls, lw=1.2, label=f"{r.variant} (~{r.mean_units:.0f})")
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("neurons set to their values on the other prompt (at the city token)")
        ax.set_ylabel("top answer = the other state's capital")
        n = int(summary["pairs"].max()) if len(summary) else 0
        ax.set_title(title or f"Swapping the state at the city token ({n} pairs of evaluation prompts)",
                     fontsize=_fs(9))
        ax.legend(fontsize=_fs(7), loc="upper left")
    return fig


# ===================================================================================================================
# The registry: every file in figures/ has exactly one recipe here, and ``make figures`` (:func:`main`) draws each
# from the tables in results/. ``draw(name)`` is how a notebook or a reader draws one, with any override in view.
# ===================================================================================================================


@dataclass(frozen=True)
class Recipe:
    """How one figure is drawn: ``function(*tables, **named, **kwargs)``, the tables read from results/ (``named``:
    {keyword: table}; ``where``: {column: value} rows of the first table to keep). ``function`` None: a circuit
    graph that its notebook draws from the model, with no results/ table to draw it from (``make figures`` leaves
    its files alone)."""
    function: Callable | None
    tables: tuple[str, ...] = ()
    kwargs: dict = field(default_factory=dict)
    notebook: str = ""
    formats: tuple[str, ...] = ("png", "pdf")
    where: dict = field(default_factory=dict)
    named: dict = field(default_factory=dict)
    kept: tuple[str, ...] = ()  # formats its notebook writes from the model (an interactive page): left alone here


FIGURES = {
    "fig1_sva_faithfulness": Recipe(fig_faithfulness, ("sva_curves",), notebook="02"),
    "fig2_basis_comparison": Recipe(fig_basis_comparison, ("basis_curves",), notebook="01"),
    "fig2a_attribution_concentration": Recipe(
        fig_score_distribution, ("basis_scores_histogram", "basis_scores_concentration", "basis_scores_layers"),
        notebook="01"),
    "fig2b_sae_training": Recipe(fig_sae_training, ("sae_quality",), notebook="01"),
    "fig3_sva_ig_vs_relp": Recipe(fig_methods_by_basis, ("sva_curves",), notebook="02"),
    "fig4_sva_score_distribution": Recipe(
        fig_score_distribution, ("sva_scores_histogram", "sva_scores_concentration", "sva_scores_layers"),
        notebook="02"),
    "fig5_sva_unpaired": Recipe(fig_unpaired, ("sva_curves",), notebook="02"),
    "fig6_edge_pruning": Recipe(fig_edge_pruning, ("edge_pruning",), notebook="04"),
    "figA_gemma_basis_comparison": Recipe(
        fig_methods_by_basis, ("sva_curves_gemma",), notebook="02",
        kwargs={"bases": ("mlp_acts", "mlp_out"), "methods": ("relp", "ig-inputs"), "ablation_methods": (),
                "title": "Gemma-3-270M, SVA: pooled over templates (paired, mean ablation; bands: 95% bootstrap)"}),
    "fig7_dallas_circuit": Recipe(fig_dallas_circuit, ("capitals_qwen_dallas_circuit", "capitals_qwen_dallas_tokens"),
                                  notebook="03", kept=("html",)),
    "fig8_capital_scaling": Recipe(
        plot_steering, ("capitals_qwen_scaling", "capitals_qwen_flips"), notebook="03",
        kwargs={"title": "Scaling 'say a capital' neurons (and controls) at their circuit positions, evaluation "
                         "states (x0 = knock-out)"}),
    "fig8e_dallas_group_scaling": Recipe(
        plot_steering, ("capitals_qwen_group_scaling",), notebook="03",
        kwargs={"paper_range": (-4, 4), "xlabel": "multiplier on the group's nodes"}),
    "fig8f_composition": Recipe(fig_composition, ("capitals_qwen_composition_summary",), notebook="03"),
    "fig9a_language_accuracy": Recipe(plot_language_accuracy, ("languages_accuracy",), notebook="05"),
    "fig9b_country_patching": Recipe(plot_language_patching, ("languages_patch_summary",), notebook="05"),
    "fig9c_language_knockout_controls": Recipe(plot_language_steering, ("languages_knockout_controls",),
                                               notebook="05"),
    "fig9d_language_steer_to_country": Recipe(
        plot_set_group, ("languages_steer_to_country",), notebook="05",
        kwargs={"target": "country", "title": "Setting say-a-language neurons to their values on country-answer "
                                              "prompts (evaluation cities)"}),
    "fig9e_country_patch_dose": Recipe(plot_patch_dose, ("languages_patch_dose",), notebook="05"),
    "figA1_addition_auroc_histograms": Recipe(fig_addition_auroc_histograms, ("addition_auroc_hist",),
                                              notebook="06"),
    "figA2_addition_heatmaps": Recipe(fig_addition_heatmaps, ("addition_heatmap",), notebook="06"),
    "figA3_antonyms_features_by_layer": Recipe(fig_features_by_layer, ("antonyms_features_by_layer",),
                                               notebook="06"),
    "figA4_ioi_curves": Recipe(fig_ioi_curves, ("ioi_curves",), notebook="06"),
    "figA5_addition_nulls": Recipe(fig_addition_nulls, ("addition_mod_null_draws",), notebook="06"),
    "quickstart_circuit": Recipe(None, notebook="00", formats=("html",)),
    "sva_edge_circuit": Recipe(None, notebook="04", formats=("html", "png", "pdf")),
}


# Recipes whose tables and files are not committed yet: :func:`draw` and :func:`save` (so a notebook's
# ``S.figure(name)``) draw them, ``make figures`` and the registry leave them out. A recipe moves up into FIGURES in the
# commit that adds its table to results/ and its files to figures/.
PENDING = {
    "fig2c_sae_ladder": Recipe(fig_sae_ladder, ("sae_ladder",), notebook="01"),
}


def figure_registry() -> dict[str, Recipe]:
    """{figure name: :class:`Recipe`} for every file in figures/."""
    return dict(FIGURES)


def draw(name: str, results: str | Path = "results", *, rc: dict | None = None, colors: dict | None = None,
         **kwargs):
    """Figure ``name`` drawn from the tables in ``results``; returns the matplotlib figure.

    ``rc``: matplotlib rcParams for this figure (they win over the project style and the user's settings);
    ``colors``: {key: colour} for a basis or method (figures 1-6, 2a, 2b, A), an edge score (``relevance``,
    ``raw``), a feature type, IOI site or null (A1-A5);
    ``kwargs``: the figure function's own options (e.g. ``title=``, ``methods=``), over the recipe's, and ``ax=``
    (an Axes of yours) for a single-panel figure.
    Example: ``draw("fig1_sva_faithfulness", rc={"font.size": 12}, colors={"relp": "black"})``: every text size
    follows ``font.size``."""
    from .results import read_table
    from .style import palette

    if name not in FIGURES and name not in PENDING:
        raise ValueError(f"no figure {name!r}; the figures are {', '.join(FIGURES)}")
    recipe = FIGURES.get(name) or PENDING[name]
    if recipe.function is None:
        raise ValueError(f"{name} is a circuit graph drawn by notebook {recipe.notebook} from the model; it has no "
                         "results/ table to draw it from")
    frames = [read_table(t, results) for t in recipe.tables]
    for col, value in recipe.where.items():
        frames[0] = frames[0][frames[0][col] == value]
    named = {key: read_table(t, results) for key, t in recipe.named.items()}
    with style(rc), palette(colors):
        return recipe.function(*frames, **named, **{**recipe.kwargs, **kwargs})


def save(name: str, results: str | Path = "results", figures: str | Path = "figures", *, rc: dict | None = None,
         colors: dict | None = None, **kwargs) -> list[Path]:
    """:func:`draw` figure ``name`` and save it as ``figures/{name}.png`` and ``.pdf``; returns the paths."""
    import matplotlib as mpl
    import matplotlib.pyplot as plt

    from ..plotting import save_figure

    fig = draw(name, results, rc=rc, colors=colors, **kwargs)
    try:
        with mpl.rc_context(rc or {}):  # savefig.* parameters are read when saving
            return save_figure(fig, name, directory=figures)
    finally:
        plt.close(fig)


def draw_all(results_dir, figures_dir, *, names=None) -> dict:
    """Draw every registered figure whose tables are in ``results_dir`` into ``figures_dir`` (PNG + PDF).

    Returns {figure name: list of paths, or the reason it was skipped}; no model is loaded."""
    results_dir, out = Path(results_dir), {}
    for name, recipe in FIGURES.items():
        if names and name not in names:
            continue
        missing = [t for t in (*recipe.tables, *recipe.named.values()) if not (results_dir / f"{t}.csv").exists()]
        if recipe.function is None:
            out[name] = f"kept: a circuit graph drawn by notebook {recipe.notebook} from the model"
        elif missing:
            out[name] = f"skipped: no table {', '.join(missing)} (notebook {recipe.notebook} writes it)"
        else:
            out[name] = save(name, results_dir, figures_dir)
    return out


def main(argv=None) -> int:
    import argparse
    import sys
    import time

    import matplotlib

    parser = argparse.ArgumentParser(prog="python -m neuronlib.paper.figures",
                                     description="Re-draw every paper figure from the tables in results/.")
    parser.add_argument("--results", default="results")
    parser.add_argument("--figures", default="figures")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="draw only these figures")
    args = parser.parse_args(argv)
    if not Path(args.results).is_dir():
        print(f"error: no results folder {args.results} (run from the checkout, or pass --results)", file=sys.stderr)
        return 2
    unknown = sorted(set(args.only or ()) - set(FIGURES))
    if unknown:
        print(f"error: no figure {', '.join(unknown)}; the figures are {', '.join(FIGURES)}", file=sys.stderr)
        return 2
    # the module as imported, also when this file runs as __main__
    from neuronlib.paper import figures as module

    matplotlib.use("Agg")
    t0 = time.perf_counter()
    drawn = module.draw_all(Path(args.results), Path(args.figures), names=args.only)
    for name, what in drawn.items():
        print(f"{name:36s} {what if isinstance(what, str) else ', '.join(str(p) for p in what)}")
    print(f"{sum(not isinstance(w, str) for w in drawn.values())} figures in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
