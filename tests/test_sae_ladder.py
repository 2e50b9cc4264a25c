"""The SAE quality ladder (neuronlib.paper.sae_ladder): rungs, training and re-use, quality, the ladder table, its
verdict rule, notebook 01's basis verdict and the ladder figure."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import matplotlib
import numpy as np
import pandas as pd
import pytest
from conftest import one_torch_thread, perfect_sae, tiny_texts

import neuronlib
from neuronlib.paper import figures as F
from neuronlib.paper import sae_baselines
from neuronlib.paper import sae_ladder as L
from neuronlib.paper.sva import POOLED
from neuronlib.saes import save_sae

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BASE = sae_baselines.SAETrainConfig(n_tokens=64, n_eval_tokens=64, epochs=1, batch_size=64, seq_len=16, lr=1e-2,
                                    forward_batch=8, dead_after_tokens=256)
TINY = (
    L.Rung("a", 64, ("mlp_out", "resid"), expansion=2, k=4, epochs=2),
    L.Rung("b", 256, ("mlp_out",), expansion=2, k=4),
    L.Rung("c", 640, ("mlp_out",), expansion=2, k=4),
    L.Rung("c-x4-k2", 640, ("mlp_out",), expansion=4, k=2, layers=(1,)),
)


# ------------------------------------------------------------------------------------------------------ rungs


def test_default_ladders_are_valid_and_span_ten_times():
    for ladder in (L.LADDER, L.SMOKE_LADDER):
        L.check_ladder(ladder)
    full = [r for r in L.LADDER if not r.partial]
    assert max(r.n_tokens for r in full) / min(r.n_tokens for r in full) >= 10
    top = max(full, key=lambda r: r.n_tokens)
    assert top.n_tokens >= 300_000 and "mlp_out" in top.sites and top.layers is None
    extras = [r for r in L.LADDER if r.partial]
    assert len(extras) == 2 and all(r.layers == (L.LADDER_LAYER,) and r.n_tokens == top.n_tokens for r in extras)
    assert len({(r.expansion, r.k) for r in extras} | {(top.expansion, top.k)}) == 3  # two other (width, k) settings
    cfg = top.config()
    assert (cfg.n_tokens, cfg.expansion, cfg.k, cfg.outlier_cap) == (300_000, 8, 32, 3.0)


@pytest.mark.parametrize("ladder, match", [
    (TINY[:2], "at least 3 full rungs"),
    ((L.Rung("a", 100), L.Rung("b", 300), L.Rung("c", 900)), "span 9.0x"),
    ((L.Rung("a", 100), L.Rung("b", 300), L.Rung("c", 1000, k=16)), "one architecture"),
    ((L.Rung("a", 100), L.Rung("a", 300), L.Rung("c", 1000)), "distinct"),
    ((L.Rung("a", 100), L.Rung("b", 100), L.Rung("c", 1000)), "distinct token budgets"),
    ((*TINY[:3], L.Rung("x", 999, layers=(0,))), "needs a full rung with 999"),
    ((*TINY[:3], L.Rung("x", 256, ("resid",), layers=(0,))), "needs a full rung"),
])
def test_bad_ladders_are_one_line_errors(ladder, match):
    with pytest.raises(ValueError, match=match):
        L.check_ladder(ladder)


@pytest.mark.parametrize("kwargs, match", [
    ({"name": "a/b", "n_tokens": 10}, "names a folder"),
    ({"name": "a", "n_tokens": 0}, "n_tokens must be a positive integer"),
    ({"name": "a", "n_tokens": 10.5}, "n_tokens must be a positive integer"),
    ({"name": "a", "n_tokens": 10, "sites": ("mlp_acts",)}, "sites must be"),
    ({"name": "a", "n_tokens": 10, "k": 0}, "k must be"),
    ({"name": "a", "n_tokens": 10, "layers": ()}, "layers must be"),
])
def test_bad_rungs_are_one_line_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        L.Rung(**kwargs)


# ------------------------------------------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    with one_torch_thread():
        model = neuronlib.load_model("tiny-llama")
        root = tmp_path_factory.mktemp("saes")
        runs = L.train_ladder(model, TINY, base=BASE, root=root, texts=tiny_texts(), workers=1, progress=False,
                              log=lambda *a: None)
        yield model, root, runs


def test_a_tiny_ladder_trains_every_rung_in_its_own_root(trained):
    model, root, runs = trained
    assert list(runs.rung) == ["a", "b", "c", "c-x4-k2"]
    assert list(runs.n_trained) == [2 * model.n_layers, model.n_layers, model.n_layers, 1]
    assert (runs.n_reused == 0).all() and (runs.train_seconds > 0).all()
    for rung in TINY:
        table = L.load_rung(model, rung, root=root)
        assert len(table) == len(rung.sites) * len(rung.layers_of(model))
        assert (table.d_sae == rung.expansion * model.d_model).all() and (table.k == rung.k).all()
        assert (table.n_unique_tokens == rung.config(BASE).n_train_windows * BASE.seq_len).all()
        assert (L.rung_root(rung, root) / model.name).is_dir()
    # the extra setting trained from its full rung's tokens (same data hash), and no activations are left behind
    extra = L.load_rung(model, TINY[3], root=root, saes=True)["mlp_out"][1]
    assert extra.cfg["data_hash"] == L.rung_data_hash(model, TINY[2], base=BASE, texts=tiny_texts())
    assert extra.cfg["corpus"]["n_prompts"] == 0
    assert not list(root.rglob("_activations_*"))
    assert not (root / model.name).exists()  # nothing in the baselines' own folder


def test_a_second_call_reuses_every_rung(trained, monkeypatch):
    model, root, _ = trained

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(sae_baselines, "_train_one", no_training)
    runs = L.train_ladder(model, TINY, base=BASE, root=root, texts=tiny_texts(), workers=1, progress=False,
                          log=lambda *a: None)
    assert (runs.n_trained == 0).all() and list(runs.n_reused) == [2 * model.n_layers, model.n_layers,
                                                                    model.n_layers, 1]


def test_a_missing_extra_setting_trains_again_from_recollected_activations(trained, tmp_path):
    import shutil

    model, root, _ = trained
    copy = tmp_path / "saes"
    shutil.copytree(root, copy)
    shutil.rmtree(L.rung_root(TINY[3], copy))
    runs = L.train_ladder(model, TINY, base=BASE, root=copy, texts=tiny_texts(), workers=1, progress=False,
                          log=lambda *a: None).set_index("rung")
    assert runs.loc["c", "n_trained"] == 0 and runs.loc["c-x4-k2", "n_trained"] == 1
    assert runs.loc["c-x4-k2", "collect_seconds"] > 0  # its full rung was re-used, so the activations were gone
    assert not list(copy.rglob("_activations_*"))


# ------------------------------------------------------------------------------------------------------ quality


def test_quality_table_on_trained_and_on_perfect_saes(trained, tmp_path):
    model, root, _ = trained
    windows = sae_baselines.corpus_token_windows(model.tokenizer, 12, 16, texts=tiny_texts(seed=7))
    q = L.ladder_quality(model, TINY, windows, root=root, splice_tokens=64, prompts=["the cat sat", "a dog ran far"],
                         cache_dir=tmp_path / "cache")
    assert list(q.columns) == L.QUALITY_COLUMNS
    n_rows = sum(len(r.sites) * len(r.layers_of(model)) for r in TINY)
    assert len(q) == 2 * n_rows and set(q.text) == {"heldout", "sva_test"}
    held = q[q.text == "heldout"]
    assert (held.n_tokens == windows.numel()).all() and (held.n_predictions == 4 * 15).all()
    assert held.ev.between(-1, 1).all() and held.dead_fraction.between(0, 1).all() and (held.l0 <= held.k).all()
    assert (held.kl_zero > 0).all() and (held.kl_spliced >= 0).all() and held.ce_recovered.notna().all()

    # perfect SAEs saved as a rung: explained variance 1 and CE loss recovered 1
    rungs = (L.Rung("p1", 100), L.Rung("p2", 300), L.Rung("p3", 1000))
    for rung in rungs:
        for layer in range(model.n_layers):
            save_sae(perfect_sae(model.d_model), sae_baselines.sae_path(model, "mlp_out", layer,
                                                                        L.rung_root(rung, tmp_path)))
    p = L.ladder_quality(model, rungs, windows, root=tmp_path, splice_tokens=64, cache_dir=tmp_path / "cache")
    assert ((p.ev - 1).abs() < 1e-5).all() and ((p.ce_recovered - 1).abs() < 1e-3).all()
    gate = L.quality_gate(p)
    assert gate.passes.all() and (gate.layers_failing == 0).all() and list(gate.rung) == ["p1", "p2", "p3"]
    gate = L.quality_gate(q)
    assert set(zip(gate.rung, gate.site)) == {("a", "mlp_out"), ("a", "resid"), ("b", "mlp_out"), ("c", "mlp_out"),
                                              ("c-x4-k2", "mlp_out")}
    strict = L.quality_gate(q, thresholds={"mlp_out": 1.01, "resid": 1.01})
    assert not strict.passes.any() and (strict.layers_failing == strict.layers).all()
    with pytest.raises(ValueError, match="no rows with text"):
        L.quality_gate(q, text="other")
    with pytest.raises(ValueError, match="splice_tokens"):
        L.ladder_quality(model, TINY, windows, root=root, splice_tokens=8, cache_dir=tmp_path / "cache")
    # a second call reads every rung's measures from the cache
    from neuronlib import cache

    cache.reset_stats()
    again = L.ladder_quality(model, TINY, windows, root=root, splice_tokens=64, prompts=["the cat sat", "a dog ran far"],
                             cache_dir=tmp_path / "cache")
    assert cache.stats()["sae_quality"] == {"hits": len(TINY), "misses": 0}
    pd.testing.assert_frame_equal(again, q)


def test_quality_gate_uses_the_ev_without_position_zero():
    q = pd.DataFrame({"rung": "r", "text": "heldout", "site": "mlp_out", "layer": [0, 1], "ev": [0.85, 0.79],
                      "ev_all": [0.99, 0.99], "ce_recovered": 0.95, "kl_spliced": 0.1, "l0": 8.0,
                      "dead_fraction": 0.0})
    gate = L.quality_gate(q).iloc[0]
    assert not gate.passes and gate.layers_failing == 1 and gate.ev_min == 0.79
    assert L.quality_gate(q.assign(ev=[0.85, 0.81])).passes.all()


# ------------------------------------------------------------------------------------------------------ ladder table


def _headline(rows):
    base = {"template": POOLED, "setting": "paired", "eval_metric": "logit_diff", "ablation": "mean"}
    return pd.DataFrame([{**base, **r} for r in rows])


def _sizes(k, lo, hi, t=0.8):
    return {f"k@F>={t}": k, f"k@F>={t}_lo": lo, f"k@F>={t}_hi": hi}


def _both(k, lo, hi):
    return {**_sizes(k, lo, hi, 0.8), **_sizes(2 * k, 2 * lo, 2 * hi, 0.9)}


def test_ladder_table_joins_quality_sizes_and_reference_lines():
    quality = pd.DataFrame([{"rung": r, "n_unique_tokens": n, "expansion": 8, "k": 32, "text": "heldout",
                             "site": "mlp_out", "layer": layer, "ev": ev + 0.01 * layer, "ev_all": 0.9,
                             "ce_recovered": ce, "ce_delta": 0.1, "kl_spliced": 0.05, "l0": 32, "dead_fraction": 0.1}
                            for r, n, ev, ce in (("30k", 30_000, 0.6, 0.8), ("300k", 300_000, 0.8, 0.95))
                            for layer in range(3)])
    headlines = {r: _headline([{"method": m, "basis": "sae_mlp_out", **_both(k, k / 2, k * 2),
                                "latents@F>=0.8": k - 1, "latents@F>=0.9": 2 * k - 1}
                               for m in ("ig-inputs", "relp")]) for r, k in (("30k", 400.0), ("300k", 100.0))}
    reference = _headline([{"method": m, "basis": b, **_both(k, k - 5, k + 5)}
                           for m in ("ig-inputs", "relp") for b, k in (("mlp_acts", 50.0), ("mlp_out", 900.0))]
                          + [{"method": "relp", "basis": "mlp_acts", **_both(1.0, 1.0, 1.0),
                              "template": "nounpp"}])  # a per-template row: never read
    t = L.ladder_table(quality, {r: h.assign(model="tiny") for r, h in headlines.items()}, reference)
    assert (t.model == "tiny").all()
    assert len(t) == 4 and list(t.method) == ["ig-inputs", "ig-inputs", "relp", "relp"]
    top = t[(t.rung == "300k") & (t.method == "relp")].iloc[0]
    assert top["k@F>=0.8"] == 100 and top["k@F>=0.8_hi"] == 200 and top["k@F>=0.9"] == 200
    assert top["neurons_k@F>=0.8"] == 50 and top["neurons_k@F>=0.8_hi"] == 55 and top["mlp_out_k@F>=0.9"] == 1800
    assert top.ev == pytest.approx(0.81) and top.ev_min == pytest.approx(0.8) and top.ce_recovered == 0.95
    assert top["latents@F>=0.8"] == 99 and top.layers == 3
    with pytest.raises(ValueError, match="no quality rows"):
        L.ladder_table(quality, {**headlines, "1M": headlines["30k"]}, reference)
    with pytest.raises(ValueError, match="reference headline lacks"):
        L.ladder_table(quality, headlines, reference.drop(columns=["k@F>=0.9_hi"]))


# ------------------------------------------------------------------------------------------------------ verdict


def ladder_rows(sae, neurons=(50, 40, 60), ce=(0.7, 0.85, 0.95), method="ig-inputs"):
    """A ladder table of rungs 30k / 100k / 300k: SAE sizes ``sae`` [(k, lo, hi)] and top-rung quality ``ce``."""
    rows = []
    for (name, n), (k, lo, hi), c in zip((("30k", 30_000), ("100k", 100_000), ("300k", 300_000)), sae, ce):
        rows.append({"rung": name, "n_unique_tokens": n, "method": method, "site": "mlp_out", "ce_recovered": c,
                     "ce_recovered_min": c - 0.02, "ev": c - 0.1, **_sizes(k, lo, hi),
                     **{f"neurons_{key}": v for key, v in _sizes(*neurons).items()},
                     **{f"mlp_out_{key}": v for key, v in _sizes(900, 800, 1000).items()}})
    return pd.DataFrame(rows)


def test_verdict_sparser_when_above_everywhere_and_the_top_rung_is_good():
    t = ladder_rows([(500, 300, 900), (300, 200, 400), (120, 80, 200)], ce=(0.8, 0.9, 0.96))
    v = L.ladder_verdict(t, method="ig-inputs")
    assert v.verdict == L.VERDICT_SPARSER and v.decided and v.above_everywhere and v.quality_ok
    assert v.top_ce_recovered == pytest.approx(0.94)
    assert list(v.numbers.rung) == ["30k", "100k", "300k"] and v.numbers.above.all()
    assert "falls" in v.trend and "2.40x the neuron size" in v.trend
    assert "neurons sparser than SAEs" in str(v) and "IG-10 (inputs)" in str(v)


def test_verdict_not_decided_when_the_top_rung_recovers_under_90_percent():
    t = ladder_rows([(500, 300, 900), (300, 200, 400), (120, 80, 200)], ce=(0.7, 0.8, 0.91))  # min over layers 0.89
    v = L.ladder_verdict(t, method="ig-inputs")
    assert v.verdict == L.VERDICT_UNDECIDED and not v.quality_ok and v.above_everywhere
    assert "0.890 < 0.9" in v.reason
    assert L.ladder_verdict(t, method="ig-inputs", top_quality="ce_recovered").verdict == L.VERDICT_SPARSER


def test_verdict_not_decided_when_the_curve_crosses_or_the_intervals_overlap():
    crossing = ladder_rows([(500, 300, 900), (100, 70, 150), (30, 20, 45)], ce=(0.9, 0.95, 0.97))
    v = L.ladder_verdict(crossing, method="ig-inputs")
    assert v.verdict == L.VERDICT_UNDECIDED and v.quality_ok and not v.above_everywhere
    assert list(v.numbers.above) == [True, True, False] and "at 300k" in v.reason
    # point estimates all above the neuron line (50), but the top rung's interval reaches into the neurons' [40, 60]
    overlap = ladder_rows([(500, 300, 900), (300, 200, 400), (90, 55, 150)], ce=(0.9, 0.95, 0.97))
    v = L.ladder_verdict(overlap, method="ig-inputs")
    assert v.verdict == L.VERDICT_UNDECIDED and list(v.numbers.above) == [True, True, False]
    # a size not reached on the grid is not "above"
    unreached = ladder_rows([(np.nan, np.nan, np.nan), (300, 200, 400), (120, 80, 200)], ce=(0.9, 0.95, 0.97))
    assert L.ladder_verdict(unreached, method="ig-inputs").verdict == L.VERDICT_UNDECIDED


def test_verdict_orders_rungs_by_quality_and_checks_its_input():
    t = ladder_rows([(500, 300, 900), (300, 200, 400), (120, 80, 200)], ce=(0.96, 0.8, 0.9))
    v = L.ladder_verdict(t, method="ig-inputs")
    assert list(v.numbers.rung) == ["100k", "300k", "30k"]
    assert v.top_ce_recovered == pytest.approx(0.88)  # the top rung is the one with most tokens, not the best
    with pytest.raises(ValueError, match="at least 2 needed"):
        L.ladder_verdict(t, method="relp")
    with pytest.raises(ValueError, match="lacks"):
        L.ladder_verdict(t.drop(columns=["neurons_k@F>=0.8_hi"]), method="ig-inputs")
    both = pd.concat([t, ladder_rows([(500, 300, 900)] * 3, method="relp")])
    both = both.assign(**{f"{p}k@F>=0.9{e}": both[f"{p}k@F>=0.8{e}"] for p in ("", "neurons_")
                          for e in ("", "_lo", "_hi")})
    table = L.ladder_verdicts(both, methods=("ig-inputs", "relp"))
    assert list(table.method) == ["ig-inputs"] * 2 + ["relp"] * 2 and list(table.threshold) == [0.8, 0.9] * 2
    assert table.text.str.contains("faithfulness 0.9").sum() == 2


# ------------------------------------------------------------------------------------------------------ notebook 01


def basis_headline(neurons, sae, method="relp"):
    rows = []
    for basis, (k, lo, hi) in (("mlp_acts", neurons), ("sae_mlp_out", sae)):
        rows.append({"method": method, "setting": "paired", "eval_metric": "logit_diff", "basis": basis,
                     "template": POOLED, **_sizes(k, lo, hi), "latents@F>=0.8": k - 3 if basis != "mlp_acts" else
                     np.nan})
        rows.append({"method": method, "setting": "paired", "eval_metric": "logit_diff", "basis": basis,
                     "template": "nounpp", **_sizes(k + 1, lo, hi)})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("neurons, sae, words", [
    ((50, 40, 60), (500, 300, 900), "**neurons are sparser** (10.0× fewer nodes than SAE latents on MLP outputs)"),
    ((500, 300, 900), (50, 40, 60), "**SAE latents on MLP outputs is sparser** (10.0× fewer nodes than neurons)"),
    ((50, 40, 80), (70, 60, 90), "**as sparse** (the intervals overlap)"),
    ((50, 40, 60), (np.nan, np.nan, np.nan), "**not comparable**"),
])
def test_basis_verdict_reads_the_intervals(neurons, sae, words):
    text = L.basis_verdict(basis_headline(neurons, sae), method="relp", templates=["nounpp"])
    assert words in text
    assert text.startswith("RelP, faithfulness 0.8: neurons ")
    assert text.endswith(f"Per template, neurons vs SAE: nounpp: {neurons[0] + 1:,.0f} vs "
                         f"{'—' if np.isnan(sae[0]) else f'{sae[0] + 1:,.0f}'}.")
    with pytest.raises(ValueError, match="no column"):
        L.basis_verdict(basis_headline(neurons, sae), method="relp", threshold=0.7)


# ------------------------------------------------------------------------------------------------------ figure


def test_ladder_figure_draws_ig_first_with_reference_lines():
    t = ladder_rows([(500, 300, 900), (300, 200, np.inf), (120, 80, 200)])
    t = pd.concat([t, ladder_rows([(400, 300, 500)] * 3, method="relp")], ignore_index=True)
    t = t.assign(model="tiny", **{f"{p}k@F>=0.9{e}": 2 * t[f"{p}k@F>=0.8{e}"] for p in ("", "neurons_", "mlp_out_")
                                  for e in ("", "_lo", "_hi")})
    fig = F.fig_sae_ladder(t, methods=("ig-inputs", "relp"))
    axes = fig.axes
    assert len(axes) == 4 and axes[0].get_title() == "IG-10 (inputs)" and axes[1].get_title() == "RelP"
    ys = sorted({round(line.get_ydata()[0]) for line in axes[0].get_lines() if len(set(line.get_ydata())) == 1
                 and line.get_xdata()[0] == 0})
    assert ys == [50, 100, 900, 1800]  # neurons and MLP outputs, at F 0.8 and 0.9
    xs = [list(line.get_xdata()) for line in axes[0].get_lines() if len(line.get_xdata()) == 3]
    assert [0.7, 0.85, 0.95] in xs and axes[0].get_yscale() == "log"
    assert [tx.get_text() for tx in axes[0].texts] == ["30k", "100k", "300k"]
    assert fig.get_suptitle().startswith("Circuit size vs SAE quality (tiny;")
    plt.close(fig)
    # the curve runs in order of quality, whatever the order of the tokens
    fig = F.fig_sae_ladder(t.assign(ce_recovered=np.tile([0.9, 0.7, 0.8], 2)), methods=("ig-inputs",))
    xs = [list(line.get_xdata()) for line in fig.axes[0].get_lines() if len(line.get_xdata()) == 3]
    assert [0.7, 0.8, 0.9] in xs and [tx.get_text() for tx in fig.axes[0].texts] == ["100k", "300k", "30k"]
    plt.close(fig)
    with pytest.raises(ValueError, match="takes no ax="):
        F.fig_sae_ladder(t, ax=axes[0])
    plt.close("all")


def test_ladder_figure_is_drawn_by_name_but_not_registered_until_committed(tmp_path):
    from neuronlib.paper.results import write_table

    assert "fig2c_sae_ladder" in F.PENDING and "fig2c_sae_ladder" not in F.figure_registry()
    t = ladder_rows([(500, 300, 900), (300, 200, 400), (120, 80, 200)]).assign(model="tiny")
    t = t.assign(**{f"{p}k@F>=0.9{e}": t[f"{p}k@F>=0.8{e}"] for p in ("", "neurons_", "mlp_out_")
                    for e in ("", "_lo", "_hi")})
    write_table(t, "sae_ladder", tmp_path, parameters={}, model="tiny", description="synthetic")
    paths = F.save("fig2c_sae_ladder", tmp_path, tmp_path / "figures")
    assert [p.name for p in paths] == ["fig2c_sae_ladder.png", "fig2c_sae_ladder.pdf"]
    assert all(p.stat().st_size > 5_000 for p in paths)
    assert "fig2c_sae_ladder" not in F.draw_all(tmp_path, tmp_path / "all")  # make figures leaves it out


def test_splice_layers_limits_the_spliced_forwards(trained, tmp_path):
    model, root, _ = trained
    windows = sae_baselines.corpus_token_windows(model.tokenizer, 4, 16, texts=tiny_texts(seed=7))
    q = L.ladder_quality(model, TINY[:3], windows, root=root, splice_tokens=32, splice_layers=(1,), cache_dir=tmp_path)
    assert q[q.layer == 1].ce_recovered.notna().all() and q[q.layer == 0].ce_recovered.isna().all()
    assert q.ev.notna().all()  # reconstruction is measured at every layer


def test_make_ladder_takes_notebook_parameters():
    ladder = L.make_ladder(layer=7)
    assert [r.layers for r in ladder if r.partial] == [(7,), (7,)] and len(ladder) == len(L.LADDER)
    rungs = [{"name": "a", "n_tokens": 100, "sites": ["mlp_out", "resid"]}, {"name": "b", "n_tokens": 300},
             {"name": "c", "n_tokens": 1000}, {"name": "c2", "n_tokens": 1000, "k": 8, "layers": [0]}]
    ladder = L.make_ladder(rungs, layer=3)
    assert ladder[0].sites == ("mlp_out", "resid") and ladder[3].layers == (3,) and ladder[3].k == 8
    with pytest.raises(ValueError, match="a rung is a Rung"):
        L.make_ladder([1, 2, 3])
