"""Every paper figure, drawn from the tidy tables in ``results/`` (never from a model), so ``make figures``
re-draws them all in seconds and they can be restyled without recomputing.

Each function takes DataFrames (as read by :func:`neuronlib.paper.results.read_table`) and returns a matplotlib
figure; :func:`draw_all` maps table names to figure functions. Sections below are one per study.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

# ===================================================================================================================
# SVA, basis comparison and edges (notebooks 01, 02, 04): figures 1, 2, 2a, 3, 4, 5, 6 and A.
# Every function takes the tidy tables of results/ (``sva_curves``: neuronlib.paper.sva.curve_table, with bootstrap
# intervals over test pairs; ``*_scores_*``: sva.score_tables; ``edge_pruning``: the edges study) and returns a figure.
# Bands are the bootstrap intervals of the table (never a range over templates).
# ===================================================================================================================

SVA_ALL = 10**12  # the requested size of the full circuit (sva.ALL)
METHOD_LABELS = {
    "atp": "AtP", "relp": "RelP", "relp-no-gate": "RelP, no gate rule", "relp-no-half": "RelP, no half rule",
    "ig": "IG-10 (per site)", "ig-inputs": "IG-10 (inputs)",
}
BASIS_LABELS = {
    "mlp_acts": "MLP activations (neurons)", "mlp_out": "MLP outputs", "attn_out": "attention outputs",
    "resid": "residual stream", "sae_mlp_out": "SAE latents on MLP outputs",
    "sae_resid": "SAE latents on residual stream", "sae_attn_out": "SAE latents on attention outputs",
}
_METHOD_STYLES = {"relp": "-", "ig-inputs": "-", "ig": "-", "atp": ":", "relp-no-gate": "-.", "relp-no-half": "--"}
_EXTRA_COLORS = {"relp-no-gate": "#8c564b", "relp-no-half": "#e377c2", "ig": "#17becf"}
_SVA_TEMPLATES = ("simple", "nounpp", "rc", "within_rc")


def _color(key: str) -> str:
    from .. import plotting

    return _EXTRA_COLORS.get(key, plotting.COLORS.get(key, "0.3"))


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
                     ablation: str = "mean", eval_metric: str = "logit_diff", title: str | None = None):
    """Figure 1: faithfulness and completeness of circuits on one basis vs size, one column per template and one for
    the pooled line; top row log axis (up to every node), bottom row linear 0–400. Bands: 95 % bootstrap intervals
    over test pairs."""
    import matplotlib.pyplot as plt

    from .. import plotting

    sel = _sva_select(curves, basis=basis, setting=setting, ablation=ablation, eval_metric=eval_metric,
                      method=tuple(methods))
    present = set(sel.template)
    templates = [t for t in _SVA_TEMPLATES if t in present] + sorted(present - set(_SVA_TEMPLATES) - {"pooled"})
    panels = templates + (["pooled"] if "pooled" in present else [])
    ylim = _sva_ylim(sel)
    with plotting.style():
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
                     f"{setting} runs, {ablation} ablation; bands: 95% bootstrap over test pairs)", fontsize=9)
    return fig


def fig_methods_by_basis(curves, *, bases=("mlp_acts", "mlp_out", "attn_out", "resid"),
                         methods=("relp", "ig-inputs", "atp"),
                         ablation_methods=("relp", "relp-no-gate", "relp-no-half"),
                         setting: str = "paired", ablation: str = "mean", template: str = "pooled",
                         title: str | None = None):
    """Figure 3 (and A): the pooled curves, one panel per basis comparing the methods, and a last panel with RelP
    and its ablated rule sets on the neurons. Bands: bootstrap intervals."""
    import matplotlib.pyplot as plt

    from .. import plotting

    sel = _sva_select(curves, setting=setting, ablation=ablation, eval_metric="logit_diff", template=template)
    bases = [b for b in bases if b in set(sel.basis)]
    panels = [(BASIS_LABELS.get(b, b), sel[sel.basis == b], methods) for b in bases]
    abl = sel[(sel.basis == "mlp_acts") & sel.method.isin(ablation_methods or ())]
    if abl.method.nunique() > 1:
        panels.append(("RelP rules (neurons)", abl, ablation_methods))
    used = []
    with plotting.style():
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
                     "ablation; bands: 95% bootstrap)", fontsize=9)
    return fig


def fig_basis_comparison(curves, *, methods=("ig-inputs", "relp"),
                         bases=("mlp_acts", "mlp_out", "attn_out", "resid", "sae_mlp_out", "sae_resid"),
                         linear_bases=("mlp_acts", "sae_mlp_out", "sae_resid"), template: str = "pooled",
                         title: str | None = None):
    """Figure 2: pooled faithfulness / completeness vs size, one column per method, every basis in each panel
    (neuron-basis sites solid, SAE sites dashed); top row log axis, bottom row linear 0–400. Bands: bootstrap."""
    import matplotlib.pyplot as plt

    from .. import plotting

    sel = _sva_select(curves, setting="paired", ablation="mean", eval_metric="logit_diff", template=template)
    methods = [m for m in methods if m in set(sel.method)] or list(methods[:1])
    ylim = _sva_ylim(sel)
    with plotting.style():
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
            axes[0][col].legend(fontsize=6.5, loc="center left")
        for row in range(2):
            axes[row][0].set_ylabel("faithfulness (filled, ideal 1)\ncompleteness (open, ideal 0)")
        fig.suptitle(title or f"SVA circuits by basis: neurons vs SAE latents\n({_sva_models(sel)}; {template} over "
                     "templates; paired, mean ablation; bands: 95% bootstrap)", fontsize=9)
    return fig


def fig_unpaired(curves, *, template: str = "pooled", title: str | None = None):
    """Figure 5: circuits found without a counterfactual (zero baseline, metric logit(y)). Left: evaluated as the
    paper does, on the test pairs' logit difference under mean ablation; right panels: the single-answer extra
    (logit(y) under zero and mean ablation), each with its own y range."""
    import matplotlib.pyplot as plt

    from .. import plotting

    sel = _sva_select(curves, setting="unpaired", template=template)
    panels = [("paired evaluation: logit difference,\nmean ablation (as the paper)", "logit_diff", "mean")]
    panels += [(f"extra: logit(y), {a} ablation", "logit", a) for a in ("zero", "mean")
               if len(sel[(sel.eval_metric == "logit") & (sel.ablation == a)])]
    used = []
    with plotting.style():
        fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 4.0), squeeze=False,
                                 layout="constrained")
        for ax, (ptitle, metric, ablation) in zip(axes[0], panels):
            frame = sel[(sel.eval_metric == metric) & (sel.ablation == ablation)]
            for (method, basis), g in frame.groupby(["method", "basis"]):
                style = _METHOD_STYLES.get(method, "-") if method != "relp" else "-"
                _sva_curve(ax, g, color=_color(basis), linestyle=style)
                label = f"{METHOD_LABELS.get(method, method)}, {BASIS_LABELS.get(basis, basis)}"
                entry = (label, _color(basis), style)
                if entry not in used:
                    used.append(entry)
            _sva_decorate(ax, ylim=_sva_ylim(frame, limit=(-10.0, 10.0)))
            ax.set_title(ptitle)
            ax.set_xlabel("circuit size (nodes)")
            ax.set_ylabel("faithfulness / completeness")
        _sva_legend(fig, used, ncol=3)
        fig.suptitle(title or "Unpaired SVA: circuits from the zero baseline and metric logit(y)\n"
                     f"({_sva_models(sel)}; {template}; bands: 95% bootstrap)", fontsize=9)
    return fig


def fig_score_distribution(histogram, concentration, layers, *, method: str = "relp", title: str | None = None):
    """Figure 4 (and 2a per method): (a) distribution of log10 |node score| per basis, every template's nodes
    pooled; (b) share of the total |score| held by the top-k nodes (median over templates, with the range);
    (c..) the layers of the top-k nodes, per basis."""
    import matplotlib.pyplot as plt

    from .. import plotting

    h = histogram[histogram.method == method]
    c = concentration[concentration.method == method]
    lay = layers[layers.method == method]
    bases = [b for b in BASIS_LABELS if b in set(h.basis) | set(c.basis)]
    ks = sorted(set(lay.k))
    with plotting.style():
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


def fig_edge_pruning(edges, *, title: str | None = None):
    """Figure 6: faithfulness and completeness vs edges kept, per edge score (``relevance``: the pruning score of the
    paper's released experiments, v_s·∂v_t/∂v_s × ∂m/∂v_t; ``raw``: the paper's text formula), pooled over
    templates with bootstrap bands; (c) faithfulness at equal neuron count against the top neurons by node score."""
    import matplotlib.pyplot as plt

    from .. import plotting

    pooled = edges[edges.template == "pooled"] if "pooled" in set(edges.template) else edges
    per = edges[edges.template != "pooled"]
    colors = {"raw": _color("relp"), "relevance": "#d1495b"}
    labels = {"relevance": r"relevance $v_s\,\partial v_t/\partial v_s\cdot\partial m/\partial v_t$ (paper's code)",
              "raw": r"raw $v_s\,\partial v_t/\partial v_s$ (paper's text)"}
    weights = [w for w in ("relevance", "raw") if w in set(edges.weight)]
    with plotting.style():
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
        axes[0].legend(loc="lower right", fontsize=7)
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
        ax.legend(loc="lower right", fontsize=7)
        models = _sva_models(edges)
        fig.suptitle(title or f"Edge pruning on SVA ({models}; thin: templates, thick: pooled with 95% bootstrap)")
    return fig


# The SVA section's figures: name -> (tables it needs, how to draw it from them). Read by draw_all below.
SVA_FIGURES = {
    "fig1_sva_faithfulness": (("sva_curves",), lambda t: fig_faithfulness(t["sva_curves"])),
    "fig3_sva_ig_vs_relp": (("sva_curves",), lambda t: fig_methods_by_basis(t["sva_curves"])),
    "fig4_sva_score_distribution": (("sva_scores_histogram", "sva_scores_concentration", "sva_scores_layers"),
                                    lambda t: fig_score_distribution(t["sva_scores_histogram"],
                                                                     t["sva_scores_concentration"],
                                                                     t["sva_scores_layers"])),
    "fig5_sva_unpaired": (("sva_curves",), lambda t: fig_unpaired(t["sva_curves"])),
    "figA_gemma_basis_comparison": (("sva_curves_gemma",), lambda t: fig_methods_by_basis(
        t["sva_curves_gemma"], bases=("mlp_acts", "mlp_out"), methods=("relp", "ig-inputs"), ablation_methods=(),
        title="Gemma-3-270M, SVA: pooled over templates (paired, mean ablation; bands: 95% bootstrap)")),
    "fig2_basis_comparison": (("basis_curves",), lambda t: fig_basis_comparison(t["basis_curves"])),
    "fig2a_attribution_concentration": (("basis_scores_histogram", "basis_scores_concentration",
                                         "basis_scores_layers"),
                                        lambda t: fig_score_distribution(t["basis_scores_histogram"],
                                                                         t["basis_scores_concentration"],
                                                                         t["basis_scores_layers"])),
    "fig6_edge_pruning": (("edge_pruning",), lambda t: fig_edge_pruning(t["edge_pruning"])),
}


# ===================================================================================================================
# appendix case studies (notebook 06; tables from neuronlib.paper.appendix): addition AUROC histograms and heatmaps,
# multilingual features by layer, IOI faithfulness / completeness.
# ===================================================================================================================


def _appendix_family(fam: str) -> str:
    return "operand is n" if fam.startswith("operand_") else {"mod10": "sum mod 10", "mod2": "sum mod 2",
                                                              "mod5": "sum mod 5", "tens": "tens digit"}.get(fam, fam)


def fig_addition_auroc_histograms(hist, *, threshold: float = 0.8, title: str | None = None):
    """One panel per label family (``addition_auroc_hist``): histogram over neurons of the best folded AUROC
    (|AUROC - 0.5| + 0.5) over the family's one-vs-rest labels, real labels (bars) vs one null draw (line)."""
    import matplotlib.pyplot as plt

    from ..plotting import style

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
            ax.set_title(p, fontsize=9)
            ax.set_xlabel("|AUROC − 0.5| + 0.5 (best label)")
        axes[0][0].set_ylabel("neurons")
        axes[0][0].legend(fontsize=7)
        fig.suptitle(title or "Addition: how well each neuron's attribution separates a label", fontsize=10)
    return fig


def fig_addition_heatmaps(heat, *, title: str | None = None):
    """A 10 x 10 heatmap (a down, b across) of each strongest neuron's position-summed attribution
    (``addition_heatmap``)."""
    import matplotlib.pyplot as plt

    from ..plotting import style

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
            ax.set_xticklabels(M.columns, fontsize=6)
            ax.set_yticks(range(len(M.index)))
            ax.set_yticklabels(M.index, fontsize=6)
            ax.set_xlabel("b", fontsize=7)
            ax.set_ylabel("a", fontsize=7)
            ax.set_title(f"{name}: {g['label'].iloc[0]} (AUROC {g['auroc_select'].iloc[0]:.2f})", fontsize=7)
            fig.colorbar(im, ax=ax, shrink=0.75)
        fig.suptitle(title or "Addition: attribution of the strongest sum-mod-10 neurons over (a, b)", fontsize=10)
    return fig


def fig_features_by_layer(layers, *, title: str | None = None):
    """Neurons per layer selected by AUROC (dashed) and replicated on the held-out phrasing (solid), one line per
    feature type (``antonyms_features_by_layer``)."""
    import matplotlib.pyplot as plt

    from ..plotting import style

    colors = {"language": "#1b6ca8", "concept": "#d1495b", "attribute": "#4c9a2a"}
    fams = list(dict.fromkeys(layers["family"]))
    with style():
        fig, axes = plt.subplots(1, max(1, len(fams)), figsize=(3.6 * max(1, len(fams)), 3.4), squeeze=False,
                                 layout="constrained")
        for ax, fam in zip(axes[0], fams):
            g = layers[layers["family"] == fam]
            c = colors.get(fam, "#555")
            ax.plot(g["layer"], g["replicated"], color=c, marker="o", ms=3, label="replicated on held-out phrasing")
            ax.plot(g["layer"], g["selected"], color=c, ls="--", lw=1, label="selected (AUROC ≥ 0.9)")
            ax.set_xlabel("layer")
            ax.set_title(f"{fam} neurons", fontsize=9)
            ax.legend(fontsize=7)
        axes[0][0].set_ylabel("neurons")
        fig.suptitle(title or "Multilingual antonyms: language / concept / attribute neurons by layer", fontsize=10)
    return fig


def fig_ioi_curves(curves, *, title: str | None = None):
    """Faithfulness and completeness vs circuit size, neurons vs MLP outputs (``ioi_curves``): pooled over every
    (template, name order) with its 95% bootstrap band over test pairs (thick), each (template, order) thin; log x
    axis."""
    import matplotlib.pyplot as plt

    from ..plotting import style

    colors = {"mlp_acts": "#1b6ca8", "mlp_out": "#d1495b"}
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
        axes[0].legend(fontsize=8)
        n = int(pooled["n_test"].iloc[0]) if len(pooled) else 0
        k = len(strata.drop_duplicates(["template", "order"]))
        fig.suptitle(title or f"IOI circuits per template and name order ({k} strata, thin), pooled over {n} held-out "
                     "pairs (thick; band: 95% bootstrap over pairs)", fontsize=9)
    return fig


def fig_addition_nulls(draws, *, title: str | None = None):
    """Per answer token (rows) and sum-mod-k family (columns): the held-out replicated count with the real labels
    (vertical line) against its operand-balanced and label-shuffle nulls (histograms over draws;
    ``addition_mod_null_draws``)."""
    import matplotlib.pyplot as plt

    from ..plotting import style

    colors = {"operand-balanced": "#1b6ca8", "label shuffle": "#d1495b"}
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
                ax.set_title(f"{_appendix_family(fam)}, {token}", fontsize=8)
                ax.set_xlabel("neuron-label pairs replicated on held-out pairs", fontsize=7)
        axes[0][0].set_ylabel("null draws")
        axes[0][0].legend(fontsize=7)
        fig.suptitle(title or "Addition: sum-mod-k neurons against the operand-balanced and the label-shuffle null",
                     fontsize=10)
    return fig


APPENDIX_FIGURES = {
    "figA1_addition_auroc_histograms": (("addition_auroc_hist",),
                                         lambda t: fig_addition_auroc_histograms(t["addition_auroc_hist"])),
    "figA2_addition_heatmaps": (("addition_heatmap",), lambda t: fig_addition_heatmaps(t["addition_heatmap"])),
    "figA3_antonyms_features_by_layer": (("antonyms_features_by_layer",),
                                          lambda t: fig_features_by_layer(t["antonyms_features_by_layer"])),
    "figA4_ioi_curves": (("ioi_curves",), lambda t: fig_ioi_curves(t["ioi_curves"])),
    "figA5_addition_nulls": (("addition_mod_null_draws",), lambda t: fig_addition_nulls(t["addition_mod_null_draws"])),
}


# ===================================================================================================================
# Re-drawing every figure from results/ (``make figures``; ``python -m neuronlib.paper.figures``)
# ===================================================================================================================


def figure_registry() -> dict:
    """{figure name: (table names, draw function)} from every section's ``*_FIGURES`` dict of this module."""
    registry = {}
    for name, value in sorted(globals().items()):
        if name.endswith("_FIGURES") and isinstance(value, dict):
            registry.update(value)
    return registry


def draw_all(results_dir, figures_dir, *, names=None) -> dict:
    """Draw every figure whose tables are in ``results_dir`` into ``figures_dir`` (PNG + PDF).

    Returns {figure name: list of paths, or the reason it was skipped}; no model is loaded."""
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..plotting import save_figure
    from .results import read_table

    results_dir, out = Path(results_dir), {}
    for name, (tables, draw) in figure_registry().items():
        if names and name not in names:
            continue
        missing = [t for t in tables if not (results_dir / f"{t}.csv").exists()]
        if missing:
            out[name] = f"skipped: no table {', '.join(missing)}"
            continue
        fig = draw({t: read_table(t, results_dir) for t in tables})
        out[name] = save_figure(fig, name, directory=figures_dir)
        plt.close(fig)
    return out


def readme_table(results_dir, *, template_rows: bool = True) -> str:
    """The README's results table as Markdown, rendered from ``results/sva_headline.csv`` (and ``basis_headline``
    when present): per template and pooled, k at faithfulness 0.8 and 0.9 with 95 % bootstrap intervals, the
    completeness there and m(M) − m(∅). Numbers are formatted by :func:`readme_cells` so the test can re-derive them."""
    from pathlib import Path

    from .results import read_provenance, read_table

    results_dir = Path(results_dir)
    header = ["| model | method | basis | template | k @ F≥0.8 [95% CI] | completeness there | k @ F≥0.9 [95% CI] | "
              "completeness there | m(M) − m(∅) | flags |", "|---|---|---|---|---:|---:|---:|---:|---:|---|"]
    lines = []
    # notebook 02's table has the neuron bases; notebook 01's adds the SAE bases (its neuron rows are the same runs)
    for table, rows in (("sva_headline", README_ROWS), ("basis_headline", README_SAE_ROWS)):
        if not (results_dir / f"{table}.csv").exists():
            continue
        frame = read_table(table, results_dir)
        lines += header
        for row in readme_rows(frame, template_rows=template_rows, rows=rows):
            lines.append("| " + " | ".join(readme_cells(row)) + " |")
        meta = read_provenance(table, results_dir)
        lines.append("")
        lines.append(f"*`{table}`: run of {meta.get('date', '?')} at commit {meta.get('commit', '?')}, model "
                     f"{meta.get('model', '?')}.*")
        lines.append("")
    if (results_dir / "sva_seed_summary.csv").exists():
        seeds = read_table("sva_seed_summary", results_dir)
        n = int(seeds.seeds.max())
        lines += [f"Across {n} data seeds (other draws and noun-group splits of the generator; RelP on the neurons, "
                  "paired): median [min, max] over the seeds, ∞ where a seed does not reach the threshold.", "",
                  "| model | template | k @ F≥0.8 | k @ F≥0.9 | m(M) − m(∅) | seeds |", "|---|---|---:|---:|---:|---|"]
        order = {t: i for i, t in enumerate((*_SVA_TEMPLATES, "pooled"))}
        for _, r in seeds.sort_values("template", key=lambda c: c.map(order).fillna(9)).iterrows():
            ks = [fmt_size(r[f'k@F>={t}_median'], r[f'k@F>={t}_min'], r[f'k@F>={t}_max'])
                  for t in (0.8, 0.9)]
            lines.append(f"| {r.model} | {r.template} | {ks[0]} | {ks[1]} | {float(r.effect_median):.2f} "
                         f"[{float(r.effect_min):.2f}, {float(r.effect_max):.2f}] | {r.data_seeds} |")
        meta = read_provenance("sva_seed_summary", results_dir)
        lines += ["", f"*`sva_seed_summary`: run of {meta.get('date', '?')} at commit {meta.get('commit', '?')}.*"]
    return "\n".join(lines).rstrip() + "\n"


README_ROWS = (("relp", "mlp_acts"), ("ig-inputs", "mlp_acts"), ("relp", "mlp_out"), ("ig-inputs", "mlp_out"),
               ("relp", "sae_mlp_out"), ("relp", "sae_resid"))
README_SAE_ROWS = tuple((m, b) for m in ("relp", "ig-inputs") for b in ("sae_mlp_out", "sae_resid"))


def readme_rows(frame, *, template_rows: bool = True, rows=None):
    sel = frame[(frame.setting == "paired") & (frame.eval_metric == "logit_diff") & (frame.ablation == "mean")]
    for method, basis in README_ROWS if rows is None else rows:
        g = sel[(sel.method == method) & (sel.basis == basis)]
        if not template_rows:
            g = g[g.template == "pooled"]
        order = {t: i for i, t in enumerate((*_SVA_TEMPLATES, "pooled"))}
        yield from (r for _, r in g.sort_values("template", key=lambda s: s.map(order).fillna(9)).iterrows())


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


def readme_cells(row) -> list[str]:
    """The Markdown cells of one headline row (the format the README test parses back)."""
    flags = headline_flags(row)
    cells = [str(row.model), METHOD_LABELS.get(row.method, row.method), str(row.basis), str(row.template)]
    for t in (0.8, 0.9):
        cells.append(fmt_size(row[f'k@F>={t}'], row[f'k@F>={t}_lo'], row[f'k@F>={t}_hi']))
        c = float(row[f"completeness@F>={t}"])
        cells.append("—" if np.isnan(c) else f"{c:.2f}")
    cells.append(f"{float(row.effect):.2f} [{float(row.effect_lo):.2f}, {float(row.effect_hi):.2f}]")
    cells.append(", ".join(flags))
    return cells


def main(argv=None) -> int:
    import argparse
    import time
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m neuronlib.paper.figures",
                                     description="Re-draw every paper figure from the tables in results/.")
    parser.add_argument("--results", default="results")
    parser.add_argument("--figures", default="figures")
    parser.add_argument("--readme-table", action="store_true", help="print the README results table and exit")
    args = parser.parse_args(argv)
    # the module as imported (every section loaded), also when this file runs as __main__ before its end
    from neuronlib.paper import figures as module

    if args.readme_table:
        print(module.readme_table(args.results), end="")
        return 0
    t0 = time.perf_counter()
    drawn = module.draw_all(Path(args.results), Path(args.figures))
    for name, what in drawn.items():
        print(f"{name:36s} {what if isinstance(what, str) else ', '.join(str(p) for p in what)}")
    print(f"{sum(not isinstance(w, str) for w in drawn.values())} figures in {time.perf_counter() - t0:.1f} s")
    return 0


# ===============================================================================================================
# capitals and languages (notebooks 03 and 05; tables from neuronlib.paper.multihop and neuronlib.paper.languages)


KIND_COLORS = {"capital": "#1b6ca8", "state": "#d1495b", "city": "#4c9a2a", "language": "#1b6ca8",
               "country": "#d1495b"}
VARIANT_COLORS = {"country group": "#1b6ca8", "random": "#999999", "matched": "#e39b2d"}


def _by_set(frames):
    """A tidy table with a ``set`` column -> {set: frame}; a dict passes through."""
    if isinstance(frames, dict):
        return frames
    return {name: g.drop(columns="set").reset_index(drop=True) for name, g in frames.groupby("set", sort=False)}




def plot_steering(sweeps, flips=None, *, paper_range=(0.0, 2.0), title: str | None = None,
                  xlabel: str = "multiplier on 'say a capital' neurons"):
    """One panel per prompt set: p(kind) for each kind (capital/state/city, or language/country/city) vs
    multiplier (thin: per prompt; thick: mean), the paper's 0-2 range shaded; flip fractions on a twin axis.

    ``sweeps``: a tidy table with a ``set`` column (one :func:`neuronlib.paper.multihop.steering_sweep` frame per
    set, as the notebook writes it to ``results/``) or a dict set -> frame; ``flips`` likewise
    (:func:`neuronlib.paper.multihop.flip_fraction` frames, with ``source`` and ``target`` columns in the table)."""
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
                ax2.set_ylabel("fraction of prompts flipped", fontsize=8)
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
            ax.legend(h + h2, l + l2, loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=3, fontsize=7)
        if title:
            fig.suptitle(title, fontsize=10)
    return fig


def plot_swap_matrix(swaps: pd.DataFrame, *, variants=None, value: str = "p_target_capital",
                     sweep: pd.DataFrame | None = None, title: str | None = None):
    """One heatmap per variant: source state (rows) x target state (columns) of p(target's capital) after the
    swap; white dots mark pairs whose top answer became the target's capital; the success rate in each title.
    With ``sweep`` (a :func:`swap_summary` frame with an ``n_nodes`` axis), a last panel plots success rate vs the
    number of patched neurons."""
    import matplotlib.pyplot as plt

    from ..plotting import style
    from .multihop import swap_summary

    variants = list(dict.fromkeys(swaps["variant"])) if variants is None else list(variants)
    summ = swap_summary(swaps).set_index("variant")
    states = list(dict.fromkeys(swaps["source"]))
    n = len(states)
    cell = max(3.6, min(0.2 * n + 1.6, 7.5))
    extra = 1 if sweep is not None else 0
    with style():
        fig, axes = plt.subplots(1, len(variants) + extra, figsize=(cell * len(variants) + 4.6 * extra + 1.4, cell + 1.4),
                                 squeeze=False, layout="constrained",
                                 gridspec_kw={"width_ratios": [1] * len(variants) + [1.1] * extra})
        im = None
        for ax, variant in zip(axes[0], variants):
            g = swaps[swaps["variant"] == variant]
            M = g.pivot(index="source", columns="target", values=value).reindex(index=states, columns=states)
            S = g.pivot(index="source", columns="target", values="success").reindex(index=states, columns=states)
            im = ax.imshow(M.to_numpy(dtype=float), cmap="magma", vmin=0, vmax=1)
            ys, xs = np.nonzero(S.fillna(False).to_numpy(dtype=bool))
            ax.scatter(xs, ys, s=10, c="white", edgecolors="black", linewidths=0.4)
            ax.set_xticks(range(n))
            ax.set_xticklabels(states, rotation=90, fontsize=6)
            ax.set_yticks(range(n))
            ax.set_yticklabels(states, fontsize=6)
            ax.set_xlabel("target state (values from its prompt)", fontsize=8)
            ax.grid(False)
            nodes = summ.loc[variant, "mean_nodes"]
            ax.set_title(f"{variant}\n~{nodes:.0f} neurons; success {summ.loc[variant, 'success_rate']:.0%} "
                         f"of {int(summ.loc[variant, 'pairs'])} pairs", fontsize=8)
        axes[0][0].set_ylabel("source state (its prompt is run)", fontsize=8)
        if im is not None:
            fig.colorbar(im, ax=list(axes[0][:len(variants)]), shrink=0.8, pad=0.01, label="p(target's capital)")
        if sweep is not None:
            ax = axes[0][-1]
            roles = sweep["variant"].str.rsplit("-", n=1).str[0]
            for role, ls in zip(dict.fromkeys(roles), ("-", "--", ":")):
                g = sweep[roles == role]
                for col, lab, c in (("success_rate", "top answer = target's capital", "#1b6ca8"),
                                    ("prefers_target", "p(target cap.) > p(source cap.)", "#d1495b")):
                    ax.plot(g["mean_nodes"], g[col], marker="o", color=c if role == "top" else "#999", ls=ls,
                            label=f"{role}: {lab}")
            ticks = sorted(set(sweep["mean_nodes"]))
            ax.set_xscale("log")
            ax.set_xticks(ticks)
            ax.set_xticklabels([f"{v:.0f}" for v in ticks], fontsize=7)
            ax.minorticks_off()
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel("neurons patched at the state token (top: mean |attribution| on selection states)",
                          fontsize=8)
            ax.set_ylabel("fraction of pairs", fontsize=8)
            ax.set_title(f"how many neurons carry the state? ({int(sweep['pairs'].iloc[0])} pairs)", fontsize=8)
            ax.legend(fontsize=7, loc="upper left")
        if title:
            fig.suptitle(title, fontsize=10)
    return fig


def plot_language_accuracy(acc):
    """Accuracy of each task of the languages study (the ``split == "all"`` rows of ``languages_accuracy``) and per
    split, with Wilson 95% intervals."""
    import matplotlib.pyplot as plt

    from ..plotting import style

    splits = list(dict.fromkeys(acc["split"])) if "split" in acc else ["all"]
    tasks = list(dict.fromkeys(acc["task"]))
    colors = {"all": "#333333", "selection": "#1b6ca8", "evaluation": "#d1495b"}
    with style():
        fig, ax = plt.subplots(figsize=(1.6 * len(tasks) + 2.5, 3.8), layout="constrained")
        width = 0.8 / len(splits)
        for j, split in enumerate(splits):
            g = acc[acc["split"] == split].set_index("task").reindex(tasks) if "split" in acc else acc.set_index("task")
            x = np.arange(len(tasks)) + (j - (len(splits) - 1) / 2) * width
            err = np.vstack([g["accuracy"] - g["accuracy_lo"], g["accuracy_hi"] - g["accuracy"]])
            ax.bar(x, g["accuracy"], width, color=colors.get(split, "#777"), alpha=0.85,
                   label=f"{split} (n = {'/'.join(str(int(v)) for v in g['n'].unique())})")
            ax.errorbar(x, g["accuracy"], yerr=err, fmt="none", ecolor="black", lw=0.8, capsize=2)
        ax.set_xticks(range(len(tasks)))
        ax.set_xticklabels([t.replace("_", " ") for t in tasks], fontsize=8)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("top answer = expected name (whole name)")
        ax.set_title("city → country → language: accuracy with Wilson 95% intervals", fontsize=9)
        ax.legend(fontsize=7)
    return fig


def plot_language_patching(summary, *, kind: str = "other language"):
    """Patching at the city's tokens (``languages_patch_summary``): success rate (top answer = the target city's)
    vs number of patched neurons for the country group and its random and |attribution|-matched controls, with
    Wilson intervals; dense references as horizontal lines. Left: language answer (two-hop prompt); right: country
    answer (city -> country prompt)."""
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
    ax.set_title(f"{answer} answer ({task.replace('_', ' ')} prompt), {n} {kind} pairs", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")


def plot_language_steering(summary):
    """Scaling say-an-answer neurons and controls at the last position (``languages_knockout_controls``,
    ``capitals_knockout_controls``): one panel per neuron set, mean p(kind) (language, country, city, or
    capital, state, city) with bootstrap intervals and the fraction of prompts whose top answer changed (Wilson),
    vs multiplier."""
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
            ax.set_title(f"{name} ({int(g['n_neurons'].iloc[0])} neurons, n = {int(g['n'].iloc[0])})", fontsize=9)
            ax.set_xlabel("multiplier at the last position")
            ax.set_ylim(-0.02, 1.02)
        axes[0][0].set_ylabel("probability / fraction")
        axes[0][0].legend(fontsize=7)
    return fig


ROLE_COLORS = {"random": "#999999", "matched": "#e39b2d"}


def plot_set_group(summary, *, target: str, title: str | None = None):
    """Steering toward a target (:func:`neuronlib.paper.multihop.set_group_summary`): per group size, the fraction
    of prompts whose top answer becomes the ``target`` (Wilson 95% intervals) for the group and its random and
    matched controls (one panel per ``template`` when the table has that column)."""
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
            ax.set_title(f"{panel or ''} (n = {n} prompts)".strip(), fontsize=9)
            ax.legend(fontsize=7, loc="upper left")
        axes[0][0].set_ylabel(f"top answer = the {target}")
        if title:
            fig.suptitle(title, fontsize=10)
    return fig


def plot_patch_dose(dose, *, kind: str = "other language"):
    """The patch dose curve (``languages_patch_dose``): success rate (top answer = the target city's) vs the
    number of nodes patched, top |activation difference| vs random nodes at the same positions, at the city's
    tokens (solid) and at the later positions (dashed), with Wilson intervals; language answer left, country
    answer right."""
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


def fig_dallas_circuit(nodes: pd.DataFrame, tokens: pd.DataFrame, *, per_group: int = 6):
    """Figure 7 from ``capitals_<model>_dallas_circuit`` (the grouped two-hop circuit, one row per node) and
    ``capitals_<model>_dallas_tokens`` (position, token): the strongest ``per_group`` nodes of each group (3 of the
    first-token group), x = token position, y = layer."""
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
    return viewer.draw_circuit(graph, figsize=(12, 8.5), label_fontsize=6.5, title=title)


def fig_composition(summary: pd.DataFrame, *, title: str | None = None):
    """The composition test (``capitals_<model>_composition_summary``): fraction of pairs whose top answer becomes
    the target city's capital vs the number of neurons set at the city token (top |attribution|, random, matched;
    Wilson 95% intervals), with the source circuit's own group and the dense residual patch (best layer) as
    reference lines."""
    import matplotlib.pyplot as plt

    from ..plotting import style

    with style():
        fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
        dose = summary[summary["size"] > 0]
        for shift, role in zip((1.0, 0.9, 1.1), dict.fromkeys(dose["role"])):
            h = dose[dose["role"] == role].sort_values("size")
            err = np.clip(np.vstack([h["success"] - h["success_lo"], h["success_hi"] - h["success"]]), 0, None)
            ax.errorbar(h["size"] * shift, h["success"], yerr=err, marker="o", capsize=2,
                        color=ROLE_COLORS.get(role, "#1b6ca8"), label=f"{role} neurons")
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
        ax.set_title(title or f"Swapping the state at the city token ({n} pairs of evaluation prompts)", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    return fig


CAPITALS_FIGURES = {
    "fig7_dallas_circuit": (("capitals_qwen_dallas_circuit", "capitals_qwen_dallas_tokens"),
                            lambda t: fig_dallas_circuit(t["capitals_qwen_dallas_circuit"],
                                                         t["capitals_qwen_dallas_tokens"])),
    "fig8_capital_scaling": (("capitals_qwen_scaling", "capitals_qwen_flips"),
                             lambda t: plot_steering(t["capitals_qwen_scaling"], t["capitals_qwen_flips"],
                                                     title="Scaling 'say a capital' neurons (and controls) at their "
                                                     "circuit positions, evaluation states (x0 = knock-out)")),
    "fig8e_dallas_group_scaling": (("capitals_qwen_group_scaling",),
                                   lambda t: plot_steering(t["capitals_qwen_group_scaling"], paper_range=(-4, 4),
                                                           xlabel="multiplier on the group's nodes")),
    "fig8f_composition": (("capitals_qwen_composition_summary",),
                          lambda t: fig_composition(t["capitals_qwen_composition_summary"])),
}


# keep last: every section's *_FIGURES must be defined before main() runs
if __name__ == "__main__":
    raise SystemExit(main())
