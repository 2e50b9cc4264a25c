import numpy as np
import pytest

from neuronlib.stats import auroc, auroc_per_unit


def brute_force_auroc(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_perfect_reversed_and_tied():
    labels = [0, 0, 1, 1]
    assert auroc([1, 2, 3, 4], labels) == 1.0
    assert auroc([4, 3, 2, 1], labels) == 0.0
    assert auroc([5, 5, 5, 5], labels) == 0.5


def test_hand_computed_cases():
    # positives {0.35, 0.8} vs negatives {0.1, 0.4}: 3 of 4 pairs won.
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    # positives {2, 3} vs negatives {1, 2}: 1 + 0.5 (tie) + 1 + 1 = 3.5 of 4.
    assert auroc([1, 2, 2, 3], [0, 1, 0, 1]) == pytest.approx(0.875)
    # bool labels work the same as 0/1
    assert auroc([1, 2, 2, 3], [False, True, False, True]) == pytest.approx(0.875)


def test_matches_brute_force_on_random_data_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = int(rng.integers(4, 40))
        scores = rng.integers(0, 5, size=p).astype(float)  # few values -> many ties
        labels = rng.integers(0, 2, size=p)
        labels[:2] = [0, 1]
        assert auroc(scores, labels) == pytest.approx(brute_force_auroc(scores, labels), abs=1e-12)


def test_vectorised_equals_per_unit_loop():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(30, 50))
    scores[:, :10] = np.round(scores[:, :10])  # some tied columns
    labels = rng.integers(0, 2, size=30)
    labels[:2] = [0, 1]
    # One unit made to separate the labels perfectly, another inverted.
    scores[:, 20] = labels + 0.01 * rng.random(30)
    scores[:, 21] = -scores[:, 20]
    vec = auroc_per_unit(scores, labels)
    assert vec.shape == (50,)
    loop = np.array([brute_force_auroc(scores[:, u], labels) for u in range(50)])
    np.testing.assert_allclose(vec, loop, atol=1e-12)
    assert vec[20] == 1.0 and vec[21] == 0.0


def test_errors():
    with pytest.raises(ValueError, match="both classes"):
        auroc([1, 2, 3], [1, 1, 1])
    with pytest.raises(ValueError, match="both classes"):
        auroc_per_unit(np.zeros((3, 2)), [0, 0, 0])
    with pytest.raises(ValueError, match="labels"):
        auroc([1, 2, 3], [0, 1])
    with pytest.raises(ValueError, match="binary"):
        auroc([1, 2, 3], [0, 1, 2])
    with pytest.raises(ValueError, match="NaN"):
        auroc([1, np.nan, 3], [0, 1, 1])
    with pytest.raises(ValueError, match="2-D"):
        auroc_per_unit([1, 2, 3], [0, 1, 1])


# ------------------------------------------------------------------------------------- intervals: bootstrap, Wilson
from neuronlib import stats  # noqa: E402


def test_wilson_matches_the_closed_form_and_edge_cases():
    lo, hi = stats.wilson_interval(8, 10)
    # Wilson 95 % for 8/10 (textbook value 0.490-0.943)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert stats.wilson_interval(0, 20)[0] == 0.0 and stats.wilson_interval(20, 20)[1] == 1.0
    assert stats.wilson_interval(0, 20)[1] > 0.1  # not a degenerate [0, 0]
    assert all(np.isnan(stats.wilson_interval(0, 0)))
    with pytest.raises(ValueError):
        stats.wilson_interval(5, 3)


def test_pooled_ratio_is_a_ratio_of_sums_not_a_mean_of_ratios():
    num, den = np.array([1.0, 9.0]), np.array([1.0, 1.0])
    assert stats.pooled_ratio(num, den) == pytest.approx(5.0)
    num, den = np.array([1.0, 1.0]), np.array([0.1, 1.9])
    assert stats.pooled_ratio(num, den) == pytest.approx(1.0)  # the mean of ratios would be 5.26
    assert np.isnan(stats.pooled_ratio([1.0], [0.0]))


def test_bootstrap_is_seeded_covers_the_estimate_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    den = rng.normal(2.0, 0.5, 400)
    num = 0.8 * den + rng.normal(0, 0.3, 400)
    a = stats.bootstrap_ratio(num, den, n_boot=1000, seed=3)
    b = stats.bootstrap_ratio(num, den, n_boot=1000, seed=3)
    assert a["lo"] == b["lo"] and a["hi"] == b["hi"] and a["samples"].shape == (1000,)
    assert a["lo"] < a["estimate"] < a["hi"] and a["lo"] < 0.8 < a["hi"]
    small = stats.bootstrap_ratio(num[:25], den[:25], n_boot=1000, seed=3)
    assert (small["hi"] - small["lo"]) > 2 * (a["hi"] - a["lo"])
    # several rows (circuit sizes) are resampled with the same examples
    rows = stats.bootstrap_ratio(np.stack([num, num]), den, n_boot=200, seed=0)
    assert np.array_equal(rows["samples"][:, 0], rows["samples"][:, 1])


def test_stratified_resampling_keeps_each_stratum():
    strata = np.array(["a"] * 3 + ["b"] * 5)
    idx = stats.bootstrap_indices(8, 500, seed=0, strata=strata)
    assert (strata[idx[:, :3]] == "a").all() and (strata[idx[:, 3:]] == "b").all()
    assert len(np.unique(idx[:, 3:])) == 5


def test_size_at_threshold_interpolates_log_linearly_and_flags_fall_back():
    sizes, values = [10, 100, 1000], [0.5, 0.7, 0.9]
    # 0.8 lies halfway between 0.7 (100) and 0.9 (1000) -> 10 ** 2.5
    assert stats.size_at_threshold(sizes, values, 0.8) == pytest.approx(10 ** 2.5)
    assert stats.size_at_threshold(sizes, values, 0.9) == pytest.approx(1000)
    assert stats.size_at_threshold(sizes, values, 0.4) == 10
    assert np.isnan(stats.size_at_threshold(sizes, values, 0.95))
    assert not stats.falls_back(values, 0.8)
    assert stats.falls_back([0.5, 0.85, 0.7, 0.9], 0.8) and not stats.falls_back([0.5, 0.6], 0.8)


def test_bootstrap_size_at_threshold_brackets_the_crossing():
    rng = np.random.default_rng(0)
    n = 60
    den = rng.normal(2.0, 0.3, n)
    sizes = np.array([1, 10, 100, 1000])
    fractions = np.array([0.2, 0.6, 0.85, 0.98])
    num = fractions[:, None] * den[None, :] + rng.normal(0, 0.2, (4, n))
    out = stats.bootstrap_size_at_threshold(sizes, num, den, 0.8, n_boot=1000, seed=0)
    assert 10 < out["estimate"] < 100 and out["lo"] <= out["estimate"] <= out["hi"]
    assert out["reached"] == 1.0
    never = stats.bootstrap_size_at_threshold(sizes, num * 0.5, den, 0.8, n_boot=200, seed=0)
    assert np.isnan(never["estimate"]) and never["hi"] == np.inf and never["reached"] == 0.0
