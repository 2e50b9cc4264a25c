"""Evaluation of edge-pruned circuits (docs/method.md §3–4): faithfulness and completeness of the neurons that
survive :meth:`neuronlib.graph.CircuitGraph.prune`, over a sweep of edge budgets. The tables of the paper's figure 6
built from these sweeps are in :mod:`neuronlib.paper.edges`.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from .graph import CircuitGraph, _top_count, prune_mask
from .inputs import Prepared, prepare
from .interventions import ablation_runner
from .sites import Node, empty_mask, node_masks

DEFAULT_PERCENTS = (0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)


def _circuit_mask(model, neurons, T):
    return node_masks(model, neurons, T).get("mlp_acts", empty_mask(model, "mlp_acts", T))


def evaluate_edge_pruning(model, graph: CircuitGraph, test_data, *, percents=DEFAULT_PERCENTS, mode: str = "mean",
                          metric="logit_diff", recursive: bool = False, node_baseline: bool = False,
                          completeness: bool = True, batch_size: int = 32, progress: bool | None = None,
                          per_example: bool = False) -> pd.DataFrame:
    """Faithfulness and completeness of the edge-pruned circuits (docs/method.md §3–4).

    For each ``percent``: keep the top ``percent`` % edges by |weight|, keep the neurons with ≥1 incoming and ≥1
    outgoing kept edge (:meth:`CircuitGraph.prune`), then run the test prompts with every other neuron (all layers,
    all positions) ablated (m(C)) and with the surviving neurons ablated (m(C̄)); ``mode`` "mean" (per-position
    mean over the counterfactual prompts) or "zero". ``node_baseline=True`` also evaluates, at the same node count,
    the top neurons of the graph by |node score| (a node-ranking reference). ``completeness=False`` skips the m(C̄)
    runs (half the cost; completeness is then NaN). Circuits already evaluated are not run again. The test prompts
    must have the graph's token length. Returns one row per percent: percent, n_edges (top edges kept),
    n_edges_alive (kept edges between surviving nodes), n_nodes (surviving neurons), faithfulness, completeness,
    m_C, m_Cbar, m_M, m_empty (+ faithfulness_nodes, completeness_nodes). ``per_example=True`` adds ``m_C_ex``,
    ``m_Cbar_ex``, ``m_M_ex``, ``m_empty_ex`` (and ``m_C_nodes_ex``): per-test-prompt metric arrays, for intervals
    (:func:`edge_pruning_table`).
    """
    prepared = test_data if isinstance(test_data, Prepared) else prepare(model, test_data)
    T = len(graph.meta.get("tokens") or [])
    if prepared.T != T or len(set(prepared.lengths.tolist())) > 1:
        raise ValueError(f"test prompts must all have the graph's token length ({T}); got lengths "
                         f"{sorted(set(prepared.lengths.tolist()))}")
    run = ablation_runner(model, prepared, ("mlp_acts",), mode, metric, batch_size,
                          progress=(len(percents) > 1) if progress is None else progress)
    neuron_rows = graph.nodes[graph.nodes["kind"] == "neuron"]
    by_score = neuron_rows.reindex(neuron_rows["score"].abs().sort_values(ascending=False, kind="stable").index)
    ranked = [Node("mlp_acts", int(r.layer), int(r.position), int(r.unit)) for r in by_score.itertuples()]
    # Every circuit of the sweep (full model, empty circuit, then C and C̄ per distinct node set: large percents
    # often keep the same nodes) is one block of rows of the same batched forwards.
    every = torch.ones(model.n_layers, T, model.d_mlp, dtype=torch.bool)
    circuits, slots = [None, {"mlp_acts": every}], {}

    def slot(mask):
        key = mask.numpy().tobytes()
        if key not in slots:
            slots[key] = len(circuits)
            circuits.extend([{"mlp_acts": ~mask}] + ([{"mlp_acts": mask}] if completeness else []))
        return slots[key]

    plan = []
    for p in percents:
        edges_kept, nodes_kept = prune_mask(graph, p, recursive=recursive)
        kept = graph.nodes[nodes_kept]
        neurons = [Node("mlp_acts", int(r.layer), int(r.position), int(r.unit))
                   for r in kept[kept["kind"] == "neuron"].itertuples()]
        plan.append((p, int(edges_kept.sum()), len(neurons), slot(_circuit_mask(model, neurons, T)),
                     slot(_circuit_mask(model, ranked[: len(neurons)], T)) if node_baseline else None))
    per = run(circuits).detach().double().cpu()
    m = per.mean(1).tolist()
    mM, m0 = m[0], m[1]
    denom = mM - m0

    def ratios(i):
        mC, mCb = m[i], (m[i + 1] if completeness else float("nan"))
        return mC, mCb, (mC - m0) / denom if denom else float("nan"), (mCb - m0) / denom if denom else float("nan")

    out = []
    for p, alive, n_nodes, i, j in plan:
        mC, mCb, faith, comp = ratios(i)
        row = {"percent": p, "n_edges": _top_count(len(graph.edges), p, None), "n_edges_alive": alive,
               "n_nodes": n_nodes, "faithfulness": faith, "completeness": comp, "m_C": mC, "m_Cbar": mCb,
               "m_M": mM, "m_empty": m0, "n_examples": len(prepared)}
        if j is not None:
            row["faithfulness_nodes"], row["completeness_nodes"] = ratios(j)[2:]
        if per_example:
            nan = np.full(len(prepared), np.nan)
            row.update(m_C_ex=per[i].numpy(), m_Cbar_ex=per[i + 1].numpy() if completeness else nan,
                       m_M_ex=per[0].numpy(), m_empty_ex=per[1].numpy())
            if j is not None:
                row["m_C_nodes_ex"] = per[j].numpy()
        out.append(row)
    return pd.DataFrame(out)


def edges_to_reach(frame: pd.DataFrame, target: float = 0.8, column: str = "faithfulness") -> float:
    """The smallest number of edges at which ``column`` reaches ``target`` (log-linear interpolation between the
    swept points); NaN if it never does."""
    f = frame.sort_values("n_edges")
    x, y = f["n_edges"].to_numpy(dtype=float), f[column].to_numpy(dtype=float)
    for i in range(len(y)):
        if y[i] >= target:
            if i == 0 or x[i - 1] <= 0:
                return float(x[i])
            lx0, lx1 = math.log10(x[i - 1]), math.log10(x[i])
            t = (target - y[i - 1]) / (y[i] - y[i - 1]) if y[i] != y[i - 1] else 1.0
            return float(10 ** (lx0 + t * (lx1 - lx0)))
    return float("nan")
