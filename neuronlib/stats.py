"""Statistics for grouping neurons by hypothesis labels.

AUROC of a neuron's attribution across prompts against a binary label (e.g. "the prompt's sum is
even") says how well that neuron's attribution separates the label (docs/method.md §6-7).
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


# ------------------------------------------------------------------------------------- intervals: bootstrap, Wilson
# Faithfulness and completeness are pooled ratios over test pairs, Σ(m(C) − m(∅)) / Σ(m(M) − m(∅)) (the ratio of
# the means, never a mean of per-pair ratios); their intervals come from a seeded bootstrap over the pairs (the same
# resampled pairs for every circuit size of a curve, so a size at a threshold has an interval too). Proportions get
# Wilson's score interval.

N_BOOT = 1000
CONFIDENCE = 0.95


def wilson_interval(successes, n, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval for a proportion ``successes / n`` (NaNs for n = 0)."""
    from scipy.stats import norm

    successes, n = float(successes), float(n)
    if n <= 0:
        return (float("nan"), float("nan"))
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n], got {successes} of {n}")
    z = float(norm.ppf(0.5 + confidence / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_indices(n: int, n_boot: int = N_BOOT, *, seed: int = 0, strata=None) -> np.ndarray:
    """``[n_boot, n]`` indices of resampled examples (with replacement), reproducible from ``seed``.

    ``strata``: one label per example; each example is then resampled within its own stratum (e.g. the template),
    so every resample keeps each stratum's size."""
    rng = np.random.default_rng(seed)
    if strata is None:
        return rng.integers(0, n, size=(n_boot, n))
    strata = np.asarray(strata)
    if len(strata) != n:
        raise ValueError(f"{len(strata)} strata labels for {n} examples")
    out = np.empty((n_boot, n), dtype=np.int64)
    for label in dict.fromkeys(strata.tolist()):
        members = np.flatnonzero(strata == label)
        out[:, members] = members[rng.integers(0, len(members), size=(n_boot, len(members)))]
    return out


def pooled_ratio(numerator, denominator) -> np.ndarray:
    """Σ numerator / Σ denominator over the last axis (the examples); NaN where the denominator sums to 0."""
    num = np.asarray(numerator, dtype=np.float64).sum(-1)
    den = np.asarray(denominator, dtype=np.float64).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den != 0, num / np.where(den != 0, den, 1), np.nan)


def bootstrap_ratio(numerator, denominator, *, n_boot: int = N_BOOT, seed: int = 0, strata=None,
                    confidence: float = CONFIDENCE) -> dict[str, np.ndarray]:
    """The pooled ratio Σ num / Σ den and its percentile bootstrap interval over the examples.

    ``numerator``: ``[..., n]`` (e.g. one row per circuit size; every row is resampled with the same examples);
    ``denominator``: ``[n]`` or broadcastable to the numerator. Returns {"estimate", "lo", "hi", "samples"} where
    ``samples`` is ``[n_boot, ...]``."""
    num = np.asarray(numerator, dtype=np.float64)
    den = np.broadcast_to(np.asarray(denominator, dtype=np.float64), num.shape)
    n = num.shape[-1]
    idx = bootstrap_indices(n, n_boot, seed=seed, strata=strata)  # [B, n]
    with np.errstate(divide="ignore", invalid="ignore"):
        s_num, s_den = num[..., idx].sum(-1), den[..., idx].sum(-1)  # [..., B]
        samples = np.moveaxis(np.where(s_den != 0, s_num / np.where(s_den != 0, s_den, 1), np.nan), -1, 0)
    alpha = (1 - confidence) / 2
    with np.errstate(invalid="ignore"):
        lo, hi = np.nanquantile(samples, [alpha, 1 - alpha], axis=0) if n_boot else (np.nan, np.nan)
    return {"estimate": pooled_ratio(num, den), "lo": lo, "hi": hi, "samples": samples}


def size_at_threshold(sizes, values, threshold: float) -> float:
    """The circuit size at which a curve first reaches ``threshold``, interpolated log-linearly on the grid.

    ``sizes`` ascending (> 0), ``values`` the curve there. Between the last grid point below the threshold (k0, v0)
    and the first one at or above it (k1, v1): log k = log k0 + (t − v0) / (v1 − v0) · (log k1 − log k0). The first
    grid point itself if the curve starts at or above the threshold; NaN if it never reaches it."""
    sizes = np.asarray(sizes, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    hit = np.flatnonzero(values >= threshold)
    if not len(hit):
        return float("nan")
    i = int(hit[0])
    if i == 0:
        return float(sizes[0])
    k0, k1, v0, v1 = sizes[i - 1], sizes[i], values[i - 1], values[i]
    if not np.isfinite(v0) or v1 == v0:
        return float(k1)
    frac = (threshold - v0) / (v1 - v0)
    return float(np.exp(np.log(k0) + frac * (np.log(k1) - np.log(k0))))


def size_staying_above(sizes, values, threshold: float) -> float:
    """The circuit size from which a curve stays at or above ``threshold`` to the end of the grid, interpolated
    log-linearly between the last grid point below it and the next one (as :func:`size_at_threshold`). The first
    grid point if no point is below; NaN if the last one is."""
    values = np.asarray(values, dtype=np.float64)
    below = np.flatnonzero(~(values >= threshold))
    if not len(below):
        return float(np.asarray(sizes, dtype=np.float64)[0])
    j = int(below[-1])
    if j == len(values) - 1:
        return float("nan")
    return size_at_threshold(np.asarray(sizes)[j:], values[j:], threshold)


CROSSING_RULES = {"first": size_at_threshold, "stays_above": size_staying_above}


def crossing_brackets(sizes, curves, thresholds, *, margin: float = 0.0) -> set[tuple[float, float]]:
    """The pairs of neighbouring grid sizes (k0, k1) between which any of ``curves`` (``[n_curves, len(sizes)]``, or
    one curve) comes within ``margin`` of a threshold of ``thresholds``: min(v0, v1) − margin < t ≤ max(v0, v1) +
    margin. With margin 0 these are the segments that cross t, so the brackets of both rules of
    :data:`CROSSING_RULES` are among them; a finer grid inside the other segments changes neither rule's size unless
    the curve moves by more than ``margin`` between two coarse points (a dip or a spike the coarse grid steps over).
    """
    sizes = np.asarray(sizes, dtype=np.float64)
    curves = np.atleast_2d(np.asarray(curves, dtype=np.float64))
    lo = np.fmin(curves[:, :-1], curves[:, 1:]) - margin
    hi = np.fmax(curves[:, :-1], curves[:, 1:]) + margin
    near = np.zeros(len(sizes) - 1, dtype=bool) if len(sizes) > 1 else np.zeros(0, dtype=bool)
    for t in thresholds:
        near |= ((lo < t) & (t <= hi)).any(0)
    return {(float(sizes[i]), float(sizes[i + 1])) for i in np.flatnonzero(near)}


def refined_sizes(grid, coarse, brackets) -> list:
    """The sizes of ``grid`` strictly inside any of ``brackets`` and not in ``coarse``: what a coarse sweep adds so
    that every crossing it located is interpolated between the full grid's neighbours."""
    have = set(coarse)
    return sorted(k for k in grid if k not in have and any(a < k < b for a, b in brackets))


def coarse_to_fine(evaluate, grid, coarse, thresholds, *, margin: float = 0.0) -> dict:
    """A curve on ``coarse`` (with ``grid``'s ends) refined around its threshold crossings: ``evaluate(sizes)`` ->
    the curve's values there (one call per stage). Returns {size: value} on the coarse sizes plus the sizes of
    ``grid`` inside every segment that comes within ``margin`` of a threshold (:func:`crossing_brackets`), where
    both rules of :data:`CROSSING_RULES` give what they give on the full grid."""
    grid = sorted(grid)
    on_grid = set(grid)
    coarse = sorted({grid[0], grid[-1], *(k for k in coarse if k in on_grid)})
    values = dict(zip(coarse, evaluate(coarse)))
    extra = refined_sizes(grid, coarse, crossing_brackets(coarse, [values[k] for k in coarse], thresholds,
                                                                   margin=margin))
    if extra:
        values.update(zip(extra, evaluate(extra)))
    return dict(sorted(values.items()))


def falls_back(values, threshold: float) -> bool:
    """True if a curve reaches ``threshold`` and later drops below it again (on the grid)."""
    values = np.asarray(values, dtype=np.float64)
    hit = np.flatnonzero(values >= threshold)
    return bool(len(hit) and (values[hit[0]:] < threshold).any())


def bootstrap_size_at_threshold(sizes, numerator, denominator, threshold: float, *, n_boot: int = N_BOOT,
                                seed: int = 0, strata=None, confidence: float = CONFIDENCE) -> dict[str, float]:
    """Size at ``threshold`` of the pooled-ratio curve and its bootstrap interval.

    ``numerator``: ``[S, n]`` (one row per size of ``sizes``), ``denominator``: ``[n]``. A resample whose curve never
    reaches the threshold counts as +inf (so the upper bound is inf when more than (1 − confidence)/2 of them miss).
    Returns {"estimate", "lo", "hi", "reached"} with ``reached`` the fraction of resamples that reach it."""
    boot = bootstrap_ratio(numerator, denominator, n_boot=n_boot, seed=seed, strata=strata, confidence=confidence)
    estimate = size_at_threshold(sizes, boot["estimate"], threshold)
    per = np.array([size_at_threshold(sizes, s, threshold) for s in boot["samples"]])
    per = np.where(np.isnan(per), np.inf, per)
    alpha = (1 - confidence) / 2
    if not len(per):
        return {"estimate": estimate, "lo": float("nan"), "hi": float("nan"), "reached": float("nan")}
    lo = np.quantile(per, alpha, method="lower")
    hi = np.quantile(per, 1 - alpha, method="higher")
    return {"estimate": estimate, "lo": float(lo), "hi": float(hi), "reached": float(np.isfinite(per).mean())}


# ------------------------------------------------------------------------------------- permutation nulls for AUROC
# "N neurons have AUROC >= 0.9" means little without the number that pass when the labels carry no information:
# the labels are shuffled across prompts (keeping how many are positive) and the count is taken again. The ranks are
# computed once, so a permutation costs one row sum.


def auroc_from_ranks(ranks_PU: np.ndarray, labels_P) -> np.ndarray:
    """AUROC per unit from precomputed column ranks (``scipy.stats.rankdata(scores, axis=0)``)."""
    pos = _check_labels(labels_P, ranks_PU.shape[0])
    n_pos = int(pos.sum())
    n_neg = len(pos) - n_pos
    return (ranks_PU[pos].sum(axis=0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def permute_within(labels, strata, rng) -> np.ndarray:
    """``labels`` shuffled within each stratum (a stratum's multiset of labels is kept; ``strata=None``: one
    stratum). For a paired design (each state gives one prompt of each label) this flips each pair's labels with
    probability 1/2 and never moves a label from one state to another."""
    labels = np.asarray(labels)
    if strata is None:
        return rng.permutation(labels)
    strata = np.asarray(strata, dtype=object)
    if len(strata) != len(labels):
        raise ValueError(f"{len(labels)} labels but {len(strata)} strata")
    out = labels.copy()
    for s in dict.fromkeys(strata.tolist()):
        idx = np.flatnonzero(strata == s)
        out[idx] = labels[rng.permutation(idx)]
    return out


def permutation_null_counts(scores_PU, labels_P, *, high: float | None = None, low: float | None = None,
                            n_perm: int = 200, seed: int = 0, strata=None) -> dict[str, object]:
    """How many units pass an AUROC threshold (``>= high`` and/or ``<= low``) with the real labels, and with
    ``n_perm`` shuffles of them (within ``strata``, e.g. the state of each prompt, when given: see
    :func:`permute_within`). Returns {"observed": int, "null": int array [n_perm], "null_mean", "null_q95",
    "p_value"} where ``p_value`` = (1 + #{null >= observed}) / (1 + n_perm)."""
    if high is None and low is None:
        raise ValueError("give high and/or low")
    scores = np.asarray(scores_PU, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D (prompts x units), got shape {scores.shape}")
    labels = _check_labels(labels_P, scores.shape[0])
    ranks = rankdata(scores, axis=0)

    def count(lab):
        a = auroc_from_ranks(ranks, lab)
        passed = np.zeros(a.shape, dtype=bool)
        if high is not None:
            passed |= a >= high
        if low is not None:
            passed |= a <= low
        return int(passed.sum())

    rng = np.random.default_rng(seed)
    observed = count(labels)
    null = np.array([count(permute_within(labels, strata, rng)) for _ in range(n_perm)], dtype=np.int64)
    return {"observed": observed, "null": null, "null_mean": float(null.mean()) if n_perm else float("nan"),
            "null_q95": float(np.quantile(null, 0.95)) if n_perm else float("nan"),
            "p_value": float((1 + (null >= observed).sum()) / (1 + n_perm))}
