"""Statistics for grouping neurons by hypothesis labels.

AUROC of a neuron's attribution across prompts against a binary label (e.g. "the prompt's sum is
even") says how well that neuron's attribution separates the label (METHOD.md §6-7).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def _check_labels(labels, n: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if len(labels) != n:
        raise ValueError(f"{n} score rows but {len(labels)} labels")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be binary (bool or 0/1)")
    pos = labels.astype(bool)
    if pos.all() or not pos.any():
        raise ValueError("AUROC needs both classes among the labels")
    return pos


def auroc_per_unit(scores_PU, labels_P) -> np.ndarray:
    """AUROC of each unit's scores (columns of a P prompts x U units array) against labels_P.

    Mann-Whitney form: the probability that a positive prompt scores higher than a negative
    one, ties counted half; computed from average ranks, so it is exact for ties.
    """
    scores = np.asarray(scores_PU, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D (prompts x units), got shape {scores.shape}")
    pos = _check_labels(labels_P, scores.shape[0])
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    n_pos = int(pos.sum())
    n_neg = len(pos) - n_pos
    ranks = rankdata(scores, axis=0)  # average ranks: a tie contributes half to U
    u = ranks[pos].sum(axis=0) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def auroc(scores, labels) -> float:
    """AUROC of one score vector against binary labels (see :func:`auroc_per_unit`)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {scores.shape}")
    return float(auroc_per_unit(scores[:, None], labels)[0])
