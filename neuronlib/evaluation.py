"""Circuit evaluation (docs/method.md §4): faithfulness and completeness over a sweep of circuit sizes.

    faithfulness(C) = (m(C) - m(∅)) / (m(M) - m(∅))      completeness(C) = (m(C̄) - m(∅)) / (m(M) - m(∅))

m(C): every node of the basis outside C ablated; m(C̄): the nodes of C ablated; m(M): the full model; m(∅): every
node of the basis ablated. Metrics are averaged over the test examples before the ratio.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
import torch

from .attribution import Attribution, check_same_model
from .inputs import as_int, prepare
from .interventions import AblationMode, ablation_runner
from .sites import check_sites
from .tracing import on_remote

if TYPE_CHECKING:
    from .models import Model

DEFAULT_SIZES = (0, 1, 2, 5, 10, 20, 50, 100, 200, 300, 400, 500, 1000, 2000, 5000, 10000, 20000, 50000)


def node_ranks(scores: Attribution, sites) -> dict[str, torch.Tensor]:
    """Global rank (0 = largest |mean score|) of every node of ``sites``, as {site: [L, T, U] long}."""
    one = scores if scores.n_examples == 1 else scores.mean()
    flat = torch.cat([one.scores[s][0].flatten() for s in sites])
    order = flat.abs().argsort(descending=True, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    out, start = {}, 0
    for s in sites:
        shape = one.scores[s][0].shape
        out[s] = rank[start:start + shape.numel()].view(shape)
        start += shape.numel()
    return out


def _groups(data, group_by, n):
    if group_by is None:
        return None
    from .inputs import records

    rows = records(data)
    missing = [i for i, row in enumerate(rows) if not isinstance(row, dict) or group_by not in row]
    if missing:
        raise ValueError(f"group_by={group_by!r}: example {missing[0]} has no field {group_by!r}")
    return [row[group_by] for row in rows]


def evaluate_circuit(
    model: Model,
    scores: Attribution,
    test_data,
    *,
    sizes=None,
    thresholds=None,
    mode: AblationMode = "mean",
    sites=None,
    metric="logit_diff",
    batch_size: int = 32,
    group_by: str | None = None,
    progress: bool | None = None,
    per_example: bool = False,
    remote=None,
) -> pd.DataFrame:
    """Faithfulness and completeness of the top-k circuits (by |mean score| over ``scores``' examples).

    ``sizes`` (node counts) or ``thresholds`` (keep nodes with |score| >= t) define the sweep. ``sites`` is the basis
    (default: the sites of ``scores``); all its nodes at every layer and position can be ablated. The test prompts
    must have the token length of the attribution prompts so positions mean the same thing. ``group_by`` names a
    field of the test records (e.g. "template"): the ratios are then also computed per group.
    All circuits of the sweep run batched together (memory: one boolean mask per circuit, 2 x sizes + 2 masks of
    the basis' size). Returns one row per (group, size): size, threshold, faithfulness, completeness, m_C, m_Cbar,
    m_M, m_empty, n_examples. ``per_example=True`` adds the columns ``m_C_ex``, ``m_Cbar_ex``, ``m_M_ex`` and
    ``m_empty_ex``: each cell a float array with the metric of every example of the row's group (test order), so
    intervals can resample examples (:func:`neuronlib.stats.bootstrap_ratio`); the ratios are
    Σ(m(C) − m(∅)) / Σ(m(M) − m(∅)) over those examples. ``remote``: run the sweep's forwards through nnsight's
    remote (NDIF) backend (see :func:`neuronlib.tracing.on_remote`).
    """
    model = on_remote(model, remote)
    if sizes is not None and thresholds is not None:
        raise ValueError("give sizes or thresholds, not both")
    check_same_model(model, scores, "the circuit is evaluated")
    sites = check_sites(sites) if sites is not None else scores.sites
    missing = [s for s in sites if s not in scores.scores]
    if missing:
        raise ValueError(f"scores have no site(s) {missing}")
    prepared = prepare(model, test_data, batch_size=batch_size)
    T = scores.scores[sites[0]].shape[2]
    if prepared.T != T or len(set(prepared.lengths.tolist())) > 1:
        raise ValueError(f"test prompts must all have the attribution prompts' token length ({T}); got lengths "
                         f"{sorted(set(prepared.lengths.tolist()))}")
    ranks = node_ranks(scores, sites)
    total = sum(r.numel() for r in ranks.values())
    one = scores if scores.n_examples == 1 else scores.mean()
    abs_sorted = torch.cat([one.scores[s][0].flatten() for s in sites]).abs().sort(descending=True).values
    if thresholds is not None:
        if not len(thresholds):
            raise ValueError("thresholds is empty: give at least one threshold (or sizes)")
        sweep = [(int((abs_sorted >= t).sum()), float(t)) for t in thresholds]
    else:
        sizes = DEFAULT_SIZES if sizes is None else [as_int(k, "each of sizes", minimum=0) for k in sizes]
        if not sizes:
            raise ValueError("sizes is empty: give at least one circuit size (or thresholds)")
        sweep = [(min(k, total), float(abs_sorted[k - 1]) if 0 < k <= total else float("nan")) for k in sizes]
    run = ablation_runner(model, prepared, sites, mode, metric, batch_size,
                          progress=(len(sweep) > 1) if progress is None else progress)
    # Every circuit (full model, empty circuit, then C and C̄ per size) is one block of rows of the same batched
    # forwards: on a CPU the fixed cost of a traced forward is a large part of a small one.
    circuits = [None, {s: torch.ones_like(r, dtype=torch.bool) for s, r in ranks.items()}]
    for k, _ in sweep:
        circuits += [{s: r >= k for s, r in ranks.items()}, {s: r < k for s, r in ranks.items()}]
    m_CB = run(circuits)
    labels = [("all", torch.ones(len(prepared), dtype=torch.bool))]
    groups = _groups(test_data, group_by, len(prepared))
    if groups is not None:
        labels += [(g, torch.tensor([x == g for x in groups])) for g in dict.fromkeys(groups)]
    rows = []
    for i, (k, threshold) in enumerate(sweep):
        for name, sel in labels:
            mM, m0, mC, mCb = (float(m_CB[c][sel].mean()) for c in (0, 1, 2 + 2 * i, 3 + 2 * i))
            denom = mM - m0
            rows.append({"group": name, "size": k, "threshold": threshold,
                         "faithfulness": (mC - m0) / denom if denom else float("nan"),
                         "completeness": (mCb - m0) / denom if denom else float("nan"),
                         "m_C": mC, "m_Cbar": mCb, "m_M": mM, "m_empty": m0, "n_examples": int(sel.sum())})
            if per_example:
                rows[-1].update({f"{col}_ex": m_CB[c][sel].detach().double().cpu().numpy().copy() for col, c in
                                 (("m_M", 0), ("m_empty", 1), ("m_C", 2 + 2 * i), ("m_Cbar", 3 + 2 * i))})
    return pd.DataFrame(rows)
