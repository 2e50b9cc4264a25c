"""The edges study (notebook 04, the paper's figure 6): tidy tables from edge-pruning sweeps
(:func:`neuronlib.pruning.evaluate_edge_pruning` frames run with ``per_example=True``) and the faithfulness of the
node pool the edge graphs are built on. Every ratio is pooled over test prompts, Σ(m(C) − m(∅)) / Σ(m(M) − m(∅)),
with a percentile bootstrap interval over those prompts (within each template when templates are pooled).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..attribution import attribute
from ..evaluation import evaluate_circuit
from ..stats import bootstrap_ratio, bootstrap_size_at_threshold, pooled_ratio

_PER_EXAMPLE = ("m_C_ex", "m_Cbar_ex", "m_M_ex", "m_empty_ex", "m_C_nodes_ex")


def _stack(frames: list[pd.DataFrame], column: str) -> np.ndarray:
    """[rows, Σ examples]: a per-example column of frames with the same rows, the templates' examples side by side."""
    return np.concatenate([np.stack(f[column].to_list()) for f in frames], axis=1)


def _strata(frames: list[pd.DataFrame]) -> np.ndarray:
    return np.concatenate([np.full(len(f.m_M_ex.iloc[0]), i) for i, f in enumerate(frames)])


def _with_pooled(frames: dict) -> dict[str, list]:
    """{weight: [(template, frame, strata)]}: each template's frame (sorted by percent; strata None), then a
    ``"pooled"`` frame over the percents every template has: ``n_edges`` / ``n_nodes`` the mean over templates, the
    per-example columns the templates' test prompts side by side (strata: the template of each)."""
    by_weight: dict[str, list] = {}
    for (template, weight), f in frames.items():
        by_weight.setdefault(weight, []).append((template, f.sort_values("percent").reset_index(drop=True)))
    out = {}
    for weight, items in by_weight.items():
        common = sorted(set.intersection(*(set(f.percent) for _, f in items)))
        sub = [f[f.percent.isin(common)].reset_index(drop=True) for _, f in items]
        pooled = pd.DataFrame({"percent": common, "n_edges": np.mean([s.n_edges for s in sub], axis=0),
                               "n_nodes": np.mean([s.n_nodes for s in sub], axis=0)})
        for c in _PER_EXAMPLE:
            if all(c in s for s in sub):
                pooled[c] = list(_stack(sub, c))
        out[weight] = [(t, f, None) for t, f in items] + [("pooled", pooled, _strata(sub))]
    return out


def edge_pruning_table(frames: dict, *, n_boot: int = 1000, seed: int = 0, model: str | None = None) -> pd.DataFrame:
    """The tidy table of figure 6.

    ``frames``: {(template, weight): frame}. One row per (template, weight, percent) and a ``template == "pooled"``
    row per (weight, percent) pooling every template's test prompts (``n_edges`` and ``n_nodes`` are the mean over
    templates there). Faithfulness, completeness and the node-ranking reference carry 95 % bootstrap intervals over
    test prompts."""
    rows = []
    for weight, entries in _with_pooled(frames).items():
        for template, f, st in entries:
            m0 = np.stack(f.m_empty_ex.to_list())
            den = np.stack(f.m_M_ex.to_list()) - m0
            out = {}
            for name, col in (("faithfulness", "m_C_ex"), ("completeness", "m_Cbar_ex"),
                              ("faithfulness_nodes", "m_C_nodes_ex")):
                if col in f:
                    out[name] = bootstrap_ratio(np.stack(f[col].to_list()) - m0, den, n_boot=n_boot, seed=seed,
                                                strata=st)
            for i, r in enumerate(f.itertuples()):
                row = {"model": model, "template": template, "weight": weight, "percent": float(r.percent),
                       "n_edges": float(r.n_edges), "n_nodes": float(r.n_nodes), "n_test": int(den.shape[1]),
                       "effect": float(den[i].mean())}
                for name, b in out.items():
                    row[name] = float(b["estimate"][i])
                    row[f"{name}_lo"], row[f"{name}_hi"] = float(b["lo"][i]), float(b["hi"][i])
                rows.append(row)
    return pd.DataFrame(rows)


def edges_to_reach_table(frames: dict, *, thresholds=(0.8,), n_boot: int = 1000, seed: int = 0,
                         model: str | None = None) -> pd.DataFrame:
    """Edges needed for faithfulness ``t`` per (template, weight) and pooled, with bootstrap intervals.

    ``frames`` as for :func:`edge_pruning_table`. The crossing is interpolated log-linearly in the number of edges
    (:func:`neuronlib.stats.size_at_threshold`; the pooled x-axis is the mean edge count over templates at each
    percent). Also reports the neurons left at the first percent that reaches t, and faithfulness / completeness with
    every edge kept (the last percent): ``faithfulness_all`` and ``completeness_all`` with their bootstrap intervals,
    and ``pool_neurons``, the neurons left there. With 100 % in the sweep that is the graph's whole node pool (every
    neuron keeps its edge to the output and one from an embedding), so ``faithfulness_all`` is the ceiling that edge
    pruning of this pool can reach."""
    rows = []
    for weight, entries in _with_pooled(frames).items():
        for template, f, st in entries:
            m0 = np.stack(f.m_empty_ex.to_list())
            den = np.stack(f.m_M_ex.to_list())[0] - m0[0]
            num = np.stack(f.m_C_ex.to_list()) - m0
            faith = pooled_ratio(num, den[None])
            row = {"model": model, "template": template, "weight": weight, "total_edges": float(f.n_edges.max()),
                   "n_test": len(den), "pool_neurons": float(f.n_nodes.iloc[-1])}
            for name, part in (("faithfulness_all", num[-1]),
                               ("completeness_all", np.stack(f.m_Cbar_ex.to_list())[-1] - m0[-1])):
                b = bootstrap_ratio(part, den, n_boot=n_boot, seed=seed, strata=st)
                row.update({name: float(b["estimate"]), f"{name}_lo": float(b["lo"]), f"{name}_hi": float(b["hi"])})
            for t in thresholds:
                b = bootstrap_size_at_threshold(f.n_edges.to_numpy(float), num, den, t, n_boot=n_boot, seed=seed,
                                                strata=st)
                hit = np.flatnonzero(faith >= t)
                row.update({f"edges@F>={t}": b["estimate"], f"edges@F>={t}_lo": b["lo"], f"edges@F>={t}_hi": b["hi"],
                            f"reached@F>={t}": b["reached"],
                            f"neurons@F>={t}": float(f.n_nodes.iloc[hit[0]]) if len(hit) else np.nan})
            rows.append(row)
    return pd.DataFrame(rows)


def node_pool_table(model, train: dict, test: dict, *, n_prompts=(8, 32), k: int = 1000, mode: str = "mean",
                    n_boot: int = 1000, seed: int = 0, batch_size: int = 64) -> pd.DataFrame:
    """Faithfulness and completeness of the node pool an edge graph is built on, against how many training prompts
    pick it.

    ``train`` / ``test``: {template: examples} (one token length per template). For each ``n`` in ``n_prompts``: the
    top ``k`` neurons by |mean RelP score| (counterfactual baseline) over the first ``n`` training prompts of the
    template (how :func:`neuronlib.edges.attribute_edges` picks its nodes), every other neuron ablated (``mode``) on
    the held-out prompts. One row per (template, n_train) and a ``"pooled"`` row per n_train (the templates' test
    prompts together, resampled within template), with 95 % bootstrap intervals over test prompts."""
    rows, parts = [], {}
    for template in train:
        for n in n_prompts:
            if n > len(train[template]):
                raise ValueError(f"{template}: {n} training prompts asked for, {len(train[template])} given")
            scores = attribute(model, train[template].select(range(n)), method="relp", baseline="counterfactual",
                               sites=("mlp_acts",), progress=False)
            f = evaluate_circuit(model, scores, test[template], sizes=[k], mode=mode, sites=("mlp_acts",),
                                 batch_size=batch_size, per_example=True, progress=False)
            parts.setdefault(n, []).append((template, f))
    for n, items in parts.items():
        frames = [f for _, f in items]
        for template, f, st in [(t, [f], None) for t, f in items] + [("pooled", frames, _strata(frames))]:
            m0 = _stack(f, "m_empty_ex")
            den = _stack(f, "m_M_ex") - m0
            row = {"model": model.name, "template": template, "n_train": n, "pool_neurons": int(f[0]["size"].iloc[0]),
                   "n_test": int(den.shape[1])}
            for name, col in (("faithfulness", "m_C_ex"), ("completeness", "m_Cbar_ex")):
                b = bootstrap_ratio(_stack(f, col)[0] - m0[0], den[0], n_boot=n_boot, seed=seed, strata=st)
                row.update({name: float(b["estimate"]), f"{name}_lo": float(b["lo"]), f"{name}_hi": float(b["hi"])})
            rows.append(row)
    return pd.DataFrame(rows)
