"""Coarse-to-fine circuit-size sweeps: the threshold crossings of a coarse grid refined with the full grid's sizes
give the k@F of the full grid (both crossing rules), on the saved curves of notebook 02 and through run_benchmark."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_sva_benchmark import tiny_data

from neuronlib import stats
from neuronlib.paper import sva as sb

REPO = Path(__file__).resolve().parents[1]
SAVED = ["sva_curves.csv", "sva_curves_gemma.csv", "basis_curves.csv"]


def _same(a, b) -> bool:
    return bool(np.isclose(a, b, rtol=1e-12) or (np.isnan(a) and np.isnan(b)))


def _saved_curves():
    frame = pd.concat([pd.read_csv(REPO / "results" / f) for f in SAVED])
    keys = [*sb.KEYS, "template"]
    for key, g in frame.drop_duplicates([*keys, "k"]).groupby(keys):
        g = g[g.k < sb.ALL].sort_values("k")
        yield key, list(g.k), dict(zip(g.k, g.faithfulness))


def test_coarse_to_fine_gives_the_full_grids_sizes_on_saved_curves():
    refine = sb.Refine(curves=())
    n_curves = evaluated = full = coarse_only_differs = 0
    for key, grid, faith in _saved_curves():
        calls = []

        def evaluate(sizes):
            calls.append(list(sizes))
            return [faith[k] for k in sizes]

        got = stats.coarse_to_fine(evaluate, grid, refine.coarse, sb.THRESHOLDS, margin=refine.margin)
        assert len(calls) <= 2 and set(got) <= set(grid)
        coarse = [k for k in grid if k in set(refine.coarse_grid(grid))]
        for t in sb.THRESHOLDS:
            for name, rule in stats.CROSSING_RULES.items():
                want = rule(grid, [faith[k] for k in grid], t)
                assert _same(rule(list(got), list(got.values()), t), want), (key, t, name)
                coarse_only_differs += not _same(rule(coarse, [faith[k] for k in coarse], t), want)
        n_curves += 1
        evaluated, full = evaluated + len(got), full + len(grid)
    assert n_curves >= 100
    assert evaluated < 0.75 * full  # fewer circuits than the full grid...
    assert coarse_only_differs > n_curves  # ...and the refinement, not the coarse grid alone, gives the same sizes


def test_margin_catches_a_dip_the_coarse_grid_steps_over():
    grid = [1, 2, 3, 5, 10, 20, 30, 50, 100]
    curve = dict(zip(grid, [0.1, 0.3, 0.5, 0.85, 0.95, 0.75, 0.95, 0.97, 0.99]))  # dips under 0.8 at 20
    coarse = [1, 10, 100]
    full = stats.size_staying_above(grid, list(curve.values()), 0.8)
    assert full > 20
    for margin, same in ((0.0, False), (0.2, True)):
        got = stats.coarse_to_fine(lambda ks: [curve[k] for k in ks], grid, coarse, (0.8,), margin=margin)
        assert _same(stats.size_staying_above(list(got), list(got.values()), 0.8), full) is same
    assert stats.size_at_threshold(grid, list(curve.values()), 0.8) < 5


def test_run_benchmark_refine_keeps_the_headline(tiny_llama, tmp_path):
    data = tiny_data(n_train=6, n_test=16)
    kw = dict(plan=[sb.Run("relp", ("mlp_acts", "resid"))], log_sizes=tuple(range(1, 120, 2)), linear_sizes=(),
              cache_dir=tmp_path, log=None)
    full = sb.run_benchmark(tiny_llama, data, **kw)
    refine = sb.Refine(curves=(("relp", "mlp_acts"), ("relp", "resid")), coarse=(1, 9, 49), n_boot=50)
    fine = sb.run_benchmark(tiny_llama, data, refine=refine, **kw)
    # the random tiny model's curves wander, so its bootstrap curves cross near every coarse segment (the saved
    # curves above show the saving): here the two stages and their merge are what is checked
    steps = fine.log[fine.log.step == "evaluation"]
    assert len(steps) == 2 * (full.log.step == "evaluation").sum()
    assert fine.options == {"refine": refine.parameters()}
    h_full = sb.headline_table(full, n_boot=50).set_index([*sb.KEYS, "template"])
    h_fine = sb.headline_table(fine, n_boot=50).set_index([*sb.KEYS, "template"]).loc[h_full.index]
    cols = [c for c in h_full.columns if c.startswith(("k@F", "completeness@F", "reached@F", "effect"))]
    assert np.isfinite(h_full["k@F>=0.8"].to_numpy(dtype=float)).any()  # some curve crosses: the test compares sizes
    pd.testing.assert_frame_equal(h_fine[cols], h_full[cols], check_exact=False, rtol=1e-12)
    written = sb.write_tables(fine, tmp_path / "tables", n_boot=20)
    sidecar = json.loads((tmp_path / "tables" / "sva_headline.json").read_text())
    assert json.dumps(sidecar).count('"margin": 0.1') == 1 and "sva_headline" in written


@pytest.mark.parametrize("rule", sorted(stats.CROSSING_RULES))
def test_rules_on_a_monotone_curve_agree(rule):
    sizes, values = [1, 10, 100], [0.5, 0.7, 0.9]
    assert stats.CROSSING_RULES[rule](sizes, values, 0.8) == pytest.approx(np.sqrt(1000))
