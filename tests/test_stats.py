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
