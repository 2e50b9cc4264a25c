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
# the means, never a mean of per-pair ratios); their intervals come from a seeded bootstrap (the same resamples for
# every circuit size of a curve, so a size at a threshold has an interval too). The resampled unit is the independent
# one: with ``clusters`` (one label per example, e.g. its clean prefix) whole clusters are drawn with replacement, so
# pairs that share a prefix move together; without, every example is its own cluster. ``strata`` (e.g. the template)
# keep each stratum's number of clusters in every resample. Proportions get Wilson's score interval.

N_BOOT = 1000
CONFIDENCE = 0.95
AGGREGATES = ("pooled", "mean")


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


def _labels(values, n: int, what: str) -> np.ndarray | None:
    if values is None:
        return None
    values = np.asarray(values)
    if len(values) != n:
        raise ValueError(f"{len(values)} {what} labels for {n} examples")
    return values


def bootstrap_indices(n: int, n_boot: int = N_BOOT, *, seed: int = 0, strata=None) -> np.ndarray:
    """``[n_boot, n]`` indices of resampled examples (with replacement), reproducible from ``seed``.

    ``strata``: one label per example; each example is then resampled within its own stratum (e.g. the template),
    so every resample keeps each stratum's size."""
    rng = np.random.default_rng(seed)
    if strata is None:
        return rng.integers(0, n, size=(n_boot, n))
    strata = _labels(strata, n, "strata")
    out = np.empty((n_boot, n), dtype=np.int64)
    for label in dict.fromkeys(strata.tolist()):
        members = np.flatnonzero(strata == label)
        out[:, members] = members[rng.integers(0, len(members), size=(n_boot, len(members)))]
    return out


def bootstrap_weights(n: int, n_boot: int = N_BOOT, *, seed: int = 0, strata=None, clusters=None) -> np.ndarray:
    """``[n_boot, n]`` resampling weights: how many times each example is in each resample (reproducible from
    ``seed``). ``clusters``: one label per example; a resample draws, within each stratum, as many clusters as the
    stratum has (with replacement) and every member of a drawn cluster gets its count. Without ``clusters`` each
    example is its own cluster, and the draws are those of :func:`bootstrap_indices` (the same seed resamples the
    same examples)."""
    strata = _labels(strata, n, "strata")
    clusters = _labels(clusters, n, "cluster")
    if clusters is None:
        clusters = np.arange(n)
    strata_of = np.zeros(n, dtype=np.int64) if strata is None else strata
    rng = np.random.default_rng(seed)
    out = np.zeros((n_boot, n), dtype=np.int64)
    rows = np.arange(n_boot)[:, None]
    for label in dict.fromkeys(strata_of.tolist()):
        members = np.flatnonzero(strata_of == label)
        names, which = np.unique(clusters[members], return_inverse=True)
        # clusters numbered by first appearance, so a stratum's draws do not depend on how labels sort
        first = {}
        for w in which.tolist():
            first.setdefault(w, len(first))
        order = np.array([first[w] for w in which.tolist()], dtype=np.int64)
        draws = rng.integers(0, len(names), size=(n_boot, len(names)))
        counts = np.zeros((n_boot, len(names)), dtype=np.int64)
        np.add.at(counts, (np.broadcast_to(rows, draws.shape), draws), 1)
        out[:, members] = counts[:, order]
    return out


def pooled_ratio(numerator, denominator) -> np.ndarray:
    """Σ numerator / Σ denominator over the last axis (the examples); NaN where the denominator sums to 0."""
    num = np.asarray(numerator, dtype=np.float64).sum(-1)
    den = np.asarray(denominator, dtype=np.float64).sum(-1)
    return _divide(num, den)


def _divide(num, den) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den != 0, num / np.where(den != 0, den, 1), np.nan)


def _aggregate(num, den, weights, strata, aggregate: str) -> np.ndarray:
    """The aggregate ratio for each weight row: ``num``, ``den`` [..., n], ``weights`` [B, n] -> [..., B]."""
    if aggregate == "pooled":
        return _divide(num @ weights.T, den @ weights.T)
    labels = np.zeros(num.shape[-1], dtype=np.int64) if strata is None else strata
    parts = [_divide(num[..., labels == s] @ weights[:, labels == s].T, den[..., labels == s] @ weights[:, labels == s].T)
             for s in dict.fromkeys(labels.tolist())]
    return np.mean(parts, axis=0)


def aggregate_ratio(numerator, denominator, *, strata=None, aggregate: str = "pooled") -> np.ndarray:
    """The ratio over the last axis: ``"pooled"`` = Σ num / Σ den over every example (each stratum weighted by its
    denominator, e.g. its effect); ``"mean"`` = the unweighted mean over ``strata`` of each stratum's pooled ratio
    (e.g. the mean of the templates' faithfulness curves)."""
    if aggregate not in AGGREGATES:
        raise ValueError(f"unknown aggregate {aggregate!r}; use one of {AGGREGATES}")
    num = np.asarray(numerator, dtype=np.float64)
    den = np.broadcast_to(np.asarray(denominator, dtype=np.float64), num.shape)
    strata = _labels(strata, num.shape[-1], "strata")
    return _aggregate(num, den, np.ones((1, num.shape[-1])), strata, aggregate)[..., 0]


def bootstrap_ratio(numerator, denominator, *, n_boot: int = N_BOOT, seed: int = 0, strata=None, clusters=None,
                    aggregate: str = "pooled", confidence: float = CONFIDENCE) -> dict[str, np.ndarray]:
    """The ratio Σ num / Σ den (``aggregate="mean"``: the mean over strata of each stratum's ratio, see
    :func:`aggregate_ratio`) and its percentile bootstrap interval over the examples, or over ``clusters`` of them.

    ``numerator``: ``[..., n]`` (e.g. one row per circuit size; every row is resampled with the same examples);
    ``denominator``: ``[n]`` or broadcastable to the numerator. Returns {"estimate", "lo", "hi", "samples"} where
    ``samples`` is ``[n_boot, ...]``."""
    if aggregate not in AGGREGATES:
        raise ValueError(f"unknown aggregate {aggregate!r}; use one of {AGGREGATES}")
    num = np.asarray(numerator, dtype=np.float64)
    den = np.broadcast_to(np.asarray(denominator, dtype=np.float64), num.shape)
    n = num.shape[-1]
    if clusters is None and aggregate == "pooled":
        idx = bootstrap_indices(n, n_boot, seed=seed, strata=strata)  # [B, n]
        with np.errstate(divide="ignore", invalid="ignore"):
            s_num, s_den = num[..., idx].sum(-1), den[..., idx].sum(-1)  # [..., B]
            samples = np.moveaxis(np.where(s_den != 0, s_num / np.where(s_den != 0, s_den, 1), np.nan), -1, 0)
    else:
        weights = bootstrap_weights(n, n_boot, seed=seed, strata=strata, clusters=clusters).astype(np.float64)
        samples = np.moveaxis(_aggregate(num, den, weights, _labels(strata, n, "strata"), aggregate), -1, 0)
    alpha = (1 - confidence) / 2
    with np.errstate(invalid="ignore"):
        lo, hi = np.nanquantile(samples, [alpha, 1 - alpha], axis=0) if n_boot else (np.nan, np.nan)
    return {"estimate": aggregate_ratio(num, den, strata=strata, aggregate=aggregate), "lo": lo, "hi": hi,
            "samples": samples}


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


def falls_back(values, threshold: float) -> bool:
    """True if a curve reaches ``threshold`` and later drops below it again (on the grid)."""
    values = np.asarray(values, dtype=np.float64)
    hit = np.flatnonzero(values >= threshold)
    return bool(len(hit) and (values[hit[0]:] < threshold).any())


def interval_beyond(lo, hi, *, above: float | None = None, below: float | None = None) -> bool:
    """True if some interval [lo, hi] (e.g. one per circuit size) lies wholly above ``above`` (lo > above) or
    wholly below ``below`` (hi < below): a flag from intervals, never from a point estimate crossing a line."""
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    out = False
    if above is not None:
        out |= bool((lo > above).any())
    if below is not None:
        out |= bool((hi < below).any())
    return out


def sizes_at_threshold(sizes, boot: dict, threshold: float, *, rule: str = "first",
                       confidence: float = CONFIDENCE) -> dict[str, object]:
    """Size at ``threshold`` of a bootstrapped curve (:func:`bootstrap_ratio` over sizes) by a crossing rule of
    :data:`CROSSING_RULES` ("first": :func:`size_at_threshold`; "stays_above": :func:`size_staying_above`): the
    estimate, its interval and the per-resample sizes. A resample whose curve never reaches the threshold counts as +inf (so the upper bound
    is inf when more than (1 − confidence)/2 of them miss). Returns {"estimate", "lo", "hi", "reached", "per"}
    (``per``: per resample, NaN where not reached)."""
    if rule not in CROSSING_RULES:
        raise ValueError(f"unknown crossing rule {rule!r}; use one of {tuple(CROSSING_RULES)}")
    at = CROSSING_RULES[rule]
    estimate = at(sizes, boot["estimate"], threshold)
    per = np.array([at(sizes, s, threshold) for s in boot["samples"]])
    if not len(per):
        return {"estimate": estimate, "lo": float("nan"), "hi": float("nan"), "reached": float("nan"), "per": per}
    per_inf = np.where(np.isnan(per), np.inf, per)
    alpha = (1 - confidence) / 2
    return {"estimate": estimate, "lo": float(np.quantile(per_inf, alpha, method="lower")),
            "hi": float(np.quantile(per_inf, 1 - alpha, method="higher")),
            "reached": float(np.isfinite(per_inf).mean()), "per": per}


def bootstrap_size_at_threshold(sizes, numerator, denominator, threshold: float, *, n_boot: int = N_BOOT,
                                seed: int = 0, strata=None, clusters=None, aggregate: str = "pooled",
                                rule: str = "first", confidence: float = CONFIDENCE) -> dict[str, float]:
    """Size at ``threshold`` of the ratio curve (:func:`bootstrap_ratio`) and its bootstrap interval.

    ``numerator``: ``[S, n]`` (one row per size of ``sizes``), ``denominator``: ``[n]``; ``rule``: a key of
    :data:`CROSSING_RULES`. Returns {"estimate", "lo", "hi", "reached"} (see :func:`sizes_at_threshold`)."""
    boot = bootstrap_ratio(numerator, denominator, n_boot=n_boot, seed=seed, strata=strata, clusters=clusters,
                           aggregate=aggregate, confidence=confidence)
    out = sizes_at_threshold(sizes, boot, threshold, rule=rule, confidence=confidence)
    return {k: v for k, v in out.items() if k != "per"}


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
