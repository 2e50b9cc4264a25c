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


# ------------------------------------------------------------------------------------- cluster bootstrap, aggregates


def _curve_data(n=12, sizes=3, seed=0):
    rng = np.random.default_rng(seed)
    den = rng.uniform(1, 4, n)
    num = den[None] * rng.uniform(0.3, 1.2, (sizes, n))
    return num, den


@pytest.mark.parametrize("strata", [None, np.repeat([0, 1], 6)])
def test_cluster_bootstrap_of_duplicated_rows_equals_bootstrap_of_one_row_per_cluster(strata):
    from neuronlib.stats import bootstrap_ratio

    num, den = _curve_data()
    k = 4
    # every cluster's row 4 times, in a shuffled order; clusters named by strings
    rng = np.random.default_rng(1)
    dup = rng.permutation(np.tile(np.arange(12), k))
    labels = np.array([f"prefix {i}" for i in dup], dtype=object)
    first = list(dict.fromkeys(dup.tolist()))  # the clusters in order of first appearance
    one = bootstrap_ratio(num[:, first], den[first], n_boot=300, seed=3,
                          strata=None if strata is None else strata[first])
    clustered = bootstrap_ratio(num[:, dup], den[dup], n_boot=300, seed=3, clusters=labels,
                                strata=None if strata is None else strata[dup])
    np.testing.assert_allclose(clustered["estimate"], one["estimate"], rtol=1e-12)
    np.testing.assert_allclose(clustered["samples"], one["samples"], rtol=1e-12)
    np.testing.assert_allclose(clustered["lo"], one["lo"], rtol=1e-12)
    np.testing.assert_allclose(clustered["hi"], one["hi"], rtol=1e-12)
    # resampling the duplicated rows as if independent pretends to 4x the data: a narrower interval
    rows = bootstrap_ratio(num[:, dup], den[dup], n_boot=300, seed=3,
                           strata=None if strata is None else strata[dup])
    assert ((clustered["hi"] - clustered["lo"]) > (rows["hi"] - rows["lo"])).all()


def test_bootstrap_weights_move_clusters_together_and_keep_strata():
    from neuronlib.stats import bootstrap_indices, bootstrap_weights

    strata = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    clusters = np.array(["a", "a", "b", "b", "c", "c", "d", "d", "e", "e"])
    w = bootstrap_weights(10, 200, seed=5, strata=strata, clusters=clusters)
    for pair in ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9)):
        assert (w[:, pair[0]] == w[:, pair[1]]).all()
    assert (w[:, :4].sum(1) == 4).all() and (w[:, 4:].sum(1) == 6).all()
    assert len(np.unique(w[:, 0])) > 1
    # without clusters: the draws of bootstrap_indices, as counts
    idx = bootstrap_indices(10, 50, seed=2, strata=strata)
    counts = np.stack([np.bincount(row, minlength=10) for row in idx])
    assert (bootstrap_weights(10, 50, seed=2, strata=strata) == counts).all()
    with pytest.raises(ValueError, match="cluster"):
        bootstrap_weights(10, 5, clusters=["a"] * 9)


def test_pooled_aggregate_weights_by_effect_mean_aggregate_does_not():
    from neuronlib.stats import aggregate_ratio, bootstrap_ratio

    # stratum 0: ratio 0.5 on effect 4 per pair; stratum 1: ratio 1.0 on effect 1 per pair
    den = np.array([4.0, 4.0, 1.0, 1.0])
    num = np.array([2.0, 2.0, 1.0, 1.0])
    strata = np.array([0, 0, 1, 1])
    assert aggregate_ratio(num, den, strata=strata) == pytest.approx(6 / 10)
    assert aggregate_ratio(num, den, strata=strata, aggregate="mean") == pytest.approx(0.75)
    boot = bootstrap_ratio(num, den, strata=strata, aggregate="mean", n_boot=50)
    assert boot["estimate"] == pytest.approx(0.75) and np.allclose(boot["samples"], 0.75)
    with pytest.raises(ValueError, match="aggregate"):
        aggregate_ratio(num, den, aggregate="median")


def test_crossing_rules_first_and_stays_above_differ_on_a_curve_that_falls_back():
    from neuronlib.stats import CROSSING_RULES, bootstrap_size_at_threshold, size_at_threshold, size_staying_above

    sizes = [1, 10, 100, 1000, 10000]
    curve = [0.5, 0.95, 0.85, 0.88, 0.92]
    first = size_at_threshold(sizes, curve, 0.9)
    stays = size_staying_above(sizes, curve, 0.9)
    assert first == pytest.approx(10 ** ((0.9 - 0.5) / (0.95 - 0.5)))
    assert stays == pytest.approx(10 ** (3 + (0.9 - 0.88) / (0.92 - 0.88)))
    # a curve that never falls back: the two rules agree; one that ends below: "stays above" never holds
    rising = [0.5, 0.95, 0.96, 0.97, 0.98]
    assert size_staying_above(sizes, rising, 0.9) == pytest.approx(size_at_threshold(sizes, rising, 0.9))
    assert np.isnan(size_staying_above(sizes, [0.5, 0.95, 0.96, 0.97, 0.8], 0.9))
    assert size_staying_above(sizes, [0.95, 0.95, 0.96, 0.97, 0.98], 0.9) == 1
    assert set(CROSSING_RULES) == {"first", "stays_above"}
    # through the bootstrap: noise-free pairs, so every resample has the curve's own sizes
    num, den = np.array(curve)[:, None] * np.ones((1, 6)), np.ones(6)
    for rule, k in (("first", first), ("stays_above", stays)):
        b = bootstrap_size_at_threshold(sizes, num, den, 0.9, rule=rule, n_boot=20, clusters=list("aabbcc"))
        assert b["estimate"] == pytest.approx(k) and b["lo"] == pytest.approx(k) and b["reached"] == 1
    with pytest.raises(ValueError, match="crossing rule"):
        bootstrap_size_at_threshold(sizes, num, den, 0.9, rule="last")


def test_flags_come_from_intervals_not_point_estimates():
    from neuronlib.stats import bootstrap_ratio, interval_beyond

    rng = np.random.default_rng(0)
    den = rng.uniform(1.5, 5, 40)
    noise = rng.normal(0, 0.3, 40)
    noise -= noise.mean() * den / den.mean()  # Σ noise = 0: the pooled estimate is exactly the target
    assert abs(noise.sum()) < 1e-9
    over = bootstrap_ratio((1 + 4e-8) * den + noise, den, n_boot=500)
    assert over["estimate"] > 1 and not interval_beyond(over["lo"], over["hi"], above=1.0)
    clearly = bootstrap_ratio(1.2 * den + noise, den, n_boot=500)
    assert clearly["lo"] > 1 and interval_beyond(clearly["lo"], clearly["hi"], above=1.0)
    under = bootstrap_ratio(-0.001 * den + noise, den, n_boot=500)
    assert under["estimate"] < 0 and not interval_beyond(under["lo"], under["hi"], below=0.0)
    assert interval_beyond([0.1, 0.2], [0.3, -0.01], below=0.0)
