"""The SVA benchmark runner (neuronlib.paper.sva) on the tiny model: every basis (SAE sites too) through one runner,
per-example metrics, pooled ratios with bootstrap intervals, per-template headlines, and the notebook's parameters."""
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch

import neuronlib
from neuronlib.paper import sva as sb

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "02_agreement_circuits.ipynb"

NOUNS = [("friend", "friends"), ("uncle", "uncles"), ("athlete", "athletes"), ("boy", "boys"), ("girl", "girls"),
         ("chef", "chefs"), ("manager", "managers"), ("key", "keys")]
VERBS = [(" is", " are"), (" has", " have"), (" does", " do"), (" goes", " go")]


def _pair(subject, plural, rest, verb):
    sg, pl = subject
    vs, vp = verb
    clean, patch = (pl, sg) if plural else (sg, pl)
    return {"clean_prefix": f"the {clean}{rest}", "patch_prefix": f"the {patch}{rest}",
            "clean_answer": vp if plural else vs, "patch_answer": vs if plural else vp}


def tiny_data(n_train=10, n_test=4):
    """Two templates from the tiny model's word list: "the friends" (2 tokens), "the uncles behind the dogs" (5)."""
    simple = [_pair(NOUNS[i % 8], i % 2 == 0, "", VERBS[(i // 2) % 4]) for i in range(n_train + n_test)]
    nounpp = [_pair(NOUNS[i % 8], i % 2 == 0, f" {('behind', 'near')[(i // 3) % 2]} the "
                    f"{('dog', 'dogs')[(i // 5) % 2]}", VERBS[i % 4]) for i in range(n_train + n_test)]
    return {name: sb.TemplateData(name, recs[:n_train], recs[n_train:]) for name, recs in
            (("simple", simple), ("nounpp", nounpp))}


PLAN = [
    sb.Run("relp", ("mlp_acts", "resid"), linear=("mlp_acts",)),
    sb.Run(sb.IG_METHOD, ("mlp_acts",), n_train=4),
    sb.Run("relp", ("mlp_acts",), setting="unpaired", ablations=("zero", "mean")),
]
KW = dict(plan=PLAN, log_sizes=(1, 4, 16), linear_sizes=(8,), log=None)


class Counter:
    def __init__(self, monkeypatch):
        self.calls = {"attribute": 0, "evaluate": 0}
        real_attribute, real_eval = neuronlib.attribute, sb.evaluate_circuit

        def attribute(*a, **k):
            self.calls["attribute"] += 1
            return real_attribute(*a, **k)

        def evaluate(*a, **k):
            self.calls["evaluate"] += 1
            return real_eval(*a, **k)

        monkeypatch.setattr(neuronlib, "attribute", attribute)
        monkeypatch.setattr(sb, "evaluate_circuit", evaluate)

    def reset(self):
        self.calls = dict.fromkeys(self.calls, 0)


@pytest.fixture(scope="module")
def bench(tiny_llama, tmp_path_factory):
    cache_dir = tmp_path_factory.mktemp("sva-cache")
    data = tiny_data()
    return tiny_llama, data, cache_dir


def test_benchmark_frame_structure_and_sanity(bench, monkeypatch):
    model, data, cache_dir = bench
    counter = Counter(monkeypatch)
    result = sb.run_benchmark(model, data, cache_dir=cache_dir, **KW)
    # 3 runs x 2 templates attributions; evaluations per template: 2 (relp, two bases) + 1 (IG) + 3 (unpaired: the
    # paired logit difference under mean ablation, and the single-answer extra under zero and mean ablation)
    assert counter.calls == {"attribute": 6, "evaluate": 12}
    curves = result.curves
    assert list(curves.columns) == sb.COLUMNS
    assert set(curves.template) == {"simple", "nounpp"}
    assert set(zip(curves.method, curves.setting)) == {("relp", "paired"), (sb.IG_METHOD, "paired"),
                                                      ("relp", "unpaired")}
    unp = curves[curves.setting == "unpaired"]
    assert set(zip(unp.eval_metric, unp.ablation)) == {("logit_diff", "mean"), ("logit", "zero"), ("logit", "mean")}
    assert set(curves[curves.setting == "paired"].ablation) == {"mean"}
    assert set(curves[curves.setting == "paired"].eval_metric) == {"logit_diff"}
    assert curves[["faithfulness", "completeness", "m_C", "m_Cbar", "m_M", "m_empty"]].notna().all().all()
    T = {"simple": 2, "nounpp": 5}
    width = {"mlp_acts": model.d_mlp, "resid": model.d_model}
    keys = ["template", "method", "basis", "setting", "ablation", "eval_metric"]
    for (template, method, basis, setting, ablation, eval_metric), g in curves.groupby(keys):
        total = model.n_layers * T[template] * width[basis]
        assert (g.total_nodes == total).all()
        g = g.sort_values("k")
        assert g["size"].is_monotonic_increasing and g["k"].is_unique
        assert g["size"].iloc[-1] == total and g["k"].iloc[-1] == sb.ALL
        assert (g["size"] <= total).all()
        full = g.iloc[-1]
        assert full.faithfulness == pytest.approx(1.0, abs=1e-5)
        assert full.completeness == pytest.approx(0.0, abs=1e-5)
        assert g.m_M.nunique() == 1 and g.m_empty.nunique() == 1
        expected_n = 4 if method == sb.IG_METHOD else 10
        assert (g.n_train == expected_n).all() and (g.n_test == 4).all()
        # the per-example metrics average to the curve's means
        ex = result.examples[(template, model.name, method, basis, setting, ablation, eval_metric)]
        assert ex["m_C"].shape == (len(g), 4) and ex["m_M"].shape == (4,)
        assert list(ex["k"]) == list(g["k"])
        assert ex["m_C"].mean(1) == pytest.approx(g.m_C.to_numpy(), abs=1e-5)
        assert ex["m_Cbar"].mean(1) == pytest.approx(g.m_Cbar.to_numpy(), abs=1e-5)
        assert float(ex["m_M"].mean()) == pytest.approx(g.m_M.iloc[0], abs=1e-5)
    # the linear sizes only where asked for
    relp_acts = curves[(curves.method == "relp") & (curves.basis == "mlp_acts") & (curves.setting == "paired")]
    assert 8 in set(relp_acts["k"]) and 8 not in set(curves[curves.method == sb.IG_METHOD]["k"])
    # unpaired single-answer extra: metric logit(y) on clean prompts; zero ablation gives a different m(empty)
    extra = unp[unp.eval_metric == "logit"].groupby("ablation").m_empty.first()
    assert extra["zero"] != extra["mean"]
    # unpaired circuits evaluated as the paper does: on the test pairs' logit difference, means over the patch
    # prompts, so the intact and the fully ablated model are the paired runs' own
    paired_eval = unp[(unp.eval_metric == "logit_diff") & (unp.basis == "mlp_acts")].groupby("template")
    relp_paired = relp_acts.groupby("template")
    for col in ("m_M", "m_empty"):
        assert paired_eval[col].first().to_dict() == pytest.approx(relp_paired[col].first().to_dict(), abs=1e-5)
    # accuracy frame and attributions
    assert set(result.accuracy.template) == {"simple", "nounpp"}
    att = result.attributions[("simple", "relp", "paired")]
    assert set(att.scores) == {"mlp_acts", "resid"} and att.n_examples == 1
    assert att.meta["averaged_over"] == 10

    # second call: everything from the cache, nothing recomputed, identical results
    counter.reset()
    again = sb.run_benchmark(model, data, cache_dir=cache_dir, **KW)
    assert counter.calls == {"attribute": 0, "evaluate": 0}
    assert again.log.cached.all() and not result.log.cached.any()
    pd.testing.assert_frame_equal(result.curves, again.curves)
    for key, att in result.attributions.items():
        for site, v in att.scores.items():
            assert torch.equal(v, again.attributions[key][site])
    for key, ex in result.examples.items():
        assert np.array_equal(ex["m_C"], again.examples[key]["m_C"])

    # other sizes: a new evaluation, the same attribution; other training pairs: a new attribution, except for IG,
    # whose 4 pairs are unchanged
    one = {"simple": data["simple"]}
    small = {**KW, "plan": [sb.Run("relp", ("mlp_acts", "resid")), PLAN[1]]}  # no linear sizes: other evaluations
    counter.reset()
    sb.run_benchmark(model, one, cache_dir=cache_dir, **{**small, "log_sizes": (2, 4)})
    assert counter.calls == {"attribute": 0, "evaluate": 3}
    counter.reset()
    sb.run_benchmark(model, {"simple": sb.TemplateData("simple", data["simple"].train[:8], data["simple"].test)},
                     cache_dir=cache_dir, **small)
    assert counter.calls == {"attribute": 1, "evaluate": 2}


def test_evaluate_circuit_per_example_columns(tiny_llama):
    td = tiny_data()["nounpp"]
    scores = neuronlib.attribute(tiny_llama, td.train, method="relp", sites=("mlp_acts",))
    frame = neuronlib.evaluate_circuit(tiny_llama, scores, td.test, sizes=[0, 3, 30], per_example=True)
    plain = neuronlib.evaluate_circuit(tiny_llama, scores, td.test, sizes=[0, 3, 30])
    assert "m_C_ex" not in plain
    for _, row in frame.iterrows():
        assert len(row.m_C_ex) == len(td.test) == row.n_examples
        assert row.m_C_ex.mean() == pytest.approx(row.m_C, abs=1e-5)
        assert row.m_Cbar_ex.mean() == pytest.approx(row.m_Cbar, abs=1e-5)
        # the frame's ratio is the pooled ratio of the per-pair values
        ratio = (row.m_C_ex - row.m_empty_ex).sum() / (row.m_M_ex - row.m_empty_ex).sum()
        assert row.faithfulness == pytest.approx(ratio, abs=1e-4)
    pd.testing.assert_frame_equal(plain, frame[plain.columns])


def test_sae_sites_run_through_the_same_runner(tmp_path, monkeypatch):
    """SAE bases go through run_benchmark like any other basis; the cache key follows the SAEs."""
    from neuronlib.saes import TopKSAE

    model = neuronlib.load_model("tiny-llama")
    d = model.d_model
    model.attach_saes("sae_mlp_out", [TopKSAE(d, 2 * d, 4, seed=i) for i in range(model.n_layers)])
    data = {"simple": tiny_data(6, 4)["simple"]}
    plan = [sb.Run("relp", ("mlp_acts", "sae_mlp_out"), linear=("sae_mlp_out",))]
    counter = Counter(monkeypatch)
    result = sb.run_benchmark(model, data, plan=plan, log_sizes=(1, 4, 16), linear_sizes=(8,), cache_dir=tmp_path)
    assert counter.calls == {"attribute": 1, "evaluate": 2}
    sae = result.curves[result.curves.basis == "sae_mlp_out"].sort_values("k")
    assert (sae.total_nodes == model.n_layers * 2 * (2 * d + 1)).all()  # latents + one error node per (layer, pos)
    assert 8 in set(sae.k) and sae.faithfulness.iloc[-1] == pytest.approx(1.0, abs=1e-5)
    # other SAEs: a new attribution and new evaluations, never the old entries
    model.attach_saes("sae_mlp_out", [TopKSAE(d, 2 * d, 4, seed=100 + i) for i in range(model.n_layers)])
    counter.reset()
    sb.run_benchmark(model, data, plan=plan, log_sizes=(1, 4, 16), linear_sizes=(8,), cache_dir=tmp_path)
    assert counter.calls == {"attribute": 1, "evaluate": 2}
    with pytest.raises(ValueError, match="bases"):
        sb.Run("relp", bases=("sae_neurons",))


def _synthetic_result(effects=(2.0, 2.0, 0.2), n=30, seed=0):
    """A BenchmarkResult whose per-pair metrics are drawn around known faithfulness curves."""
    rng = np.random.default_rng(seed)
    ks = np.array([1, 10, 100, 1000, sb.ALL])
    fractions = np.array([0.2, 0.7, 0.9, 1.05, 1.0])
    examples, rows = {}, []
    for i, eff in enumerate(effects):
        t = f"t{i}"
        m0 = rng.normal(0, 0.1, n)
        mM = m0 + eff + rng.normal(0, 0.1, n)
        mC = m0[None] + fractions[:, None] * (mM - m0)[None] + rng.normal(0, 0.05, (len(ks), n))
        mC[-1] = mM
        mCb = mM[None] - mC + m0[None]
        examples[(t, "m", "relp", "mlp_acts", "paired", "mean", "logit_diff")] = {
            "k": ks, "size": np.minimum(ks, 5000), "m_C": mC, "m_Cbar": mCb, "m_M": mM, "m_empty": m0,
            "n_train": 10, "total_nodes": 5000}
    return sb.BenchmarkResult(pd.DataFrame(rows, columns=sb.COLUMNS), {}, pd.DataFrame(), pd.DataFrame(), examples)


def test_headline_pools_ratios_interpolates_and_flags():
    result = _synthetic_result()
    head = sb.headline_table(result, n_boot=500).set_index("template")
    assert set(head.index) == {"t0", "t1", "t2", sb.POOLED, sb.TEMPLATE_MEAN}
    # the small-effect template is flagged and kept out of the pooled line
    assert head.loc["t2", "below_floor"] and not head.loc["t0", "below_floor"]
    assert head.loc[sb.POOLED, "templates"] == 2 and head.loc[sb.POOLED, "n_test"] == 60
    # no cluster labels stored: every pair is its own cluster
    assert head.loc[sb.POOLED, "n_clusters"] == 60 and sb.bootstrap_unit(result) == "test pair"
    ex = [result.examples[(t, "m", "relp", "mlp_acts", "paired", "mean", "logit_diff")] for t in ("t0", "t1")]
    curves = sb.curve_table(result, n_boot=200).set_index(["template", "k"])
    pooled_f = sum((e["m_C"][2] - e["m_empty"]).sum() for e in ex) / sum((e["m_M"] - e["m_empty"]).sum() for e in ex)
    assert curves.loc[(sb.POOLED, 100), "faithfulness"] == pytest.approx(pooled_f)
    assert (curves.faithfulness_lo <= curves.faithfulness + 1e-9).all()
    assert (curves.faithfulness <= curves.faithfulness_hi + 1e-9).all()
    # 0.8 lies between k=10 (~0.7) and k=100 (~0.9): interpolated in log k, inside the interval
    for t in ("t0", sb.POOLED):
        k = head.loc[t, "k@F>=0.8"]
        assert 10 < k < 100 and head.loc[t, "k@F>=0.8_lo"] <= k <= head.loc[t, "k@F>=0.8_hi"]
        assert head.loc[t, "reached@F>=0.8"] > 0.9
        # 1.05 at k = 1000, the interval wholly above 1
        assert head.loc[t, "faithfulness_above_1"] and head.loc[t, "max_faithfulness_lo"] > 1
        assert not head.loc[t, "falls_back@F>=0.8"]
    assert head.loc["t0", "effect_lo"] < 2.0 < head.loc["t0", "effect_hi"]
    text = sb.pooled_summary(head.reset_index(), method="relp", basis="mlp_acts")
    assert "2 templates" in text and "60 test pairs" in text


@pytest.mark.slow  # slow on 2 cores: left out of `make test-fast`
def test_tables_and_figures_from_frames(bench, tmp_path):
    from neuronlib.paper import figures
    from neuronlib.paper.results import read_provenance, read_table

    model, data, cache_dir = bench
    result = sb.run_benchmark(model, data, cache_dir=cache_dir, **KW)  # cached by the test above, or computed
    tables = sb.write_tables(result, tmp_path / "results", floor=0.0, n_boot=200)
    curves = read_table("sva_curves", tmp_path / "results")
    assert {"faithfulness_lo", "faithfulness_hi", "completeness_lo", "completeness_hi"} <= set(curves.columns)
    assert sb.POOLED in set(curves.template) and set(curves.k) >= {1, 4, 16, sb.ALL}
    head = tables["sva_headline"]
    assert {"k@F>=0.8", "k@F>=0.8_lo", "k@F>=0.8_hi", "completeness@F>=0.8", "k@F>=0.9", "effect"} <= set(head.columns)
    assert {"k@F>=0.9|first", "k@F>=0.9|stays_above_hi", "reached@F>=0.8|stays_above"} <= set(head.columns)
    # the runner stores each test pair's clean prefix; the sidecars say what the intervals resample
    params = read_provenance("sva_headline", tmp_path / "results")["parameters"]
    assert params["bootstrap_unit"] == "clean prefix" == read_provenance(
        "sva_curves", tmp_path / "results")["parameters"]["bootstrap_unit"]
    assert (params["headline_aggregate"], params["headline_crossing"]) == ("pooled", "first")
    scores = tables["sva_scores_concentration"]
    assert set(scores.basis) == {"mlp_acts", "resid"} and scores.share.between(0, 1 + 1e-9).all()
    steps = read_table("sva_steps", tmp_path / "results")  # what each step cost, stable across cached re-runs
    assert set(steps.step) == {"attribution", "evaluation"} and (steps.compute_seconds > 0).all()
    assert "cached" not in steps.columns and len(steps) == len(result.log)
    drawn = figures.draw_all(tmp_path / "results", tmp_path / "figures")
    for name in ("fig1_sva_faithfulness", "fig3_sva_ig_vs_relp", "fig4_sva_score_distribution", "fig5_sva_unpaired"):
        for ext in ("png", "pdf"):
            assert (tmp_path / "figures" / f"{name}.{ext}").stat().st_size > 1000, drawn[name]
    assert drawn["fig2_basis_comparison"].startswith("skipped")


def test_compare_methods_and_run_validation(tiny_llama, tmp_path):
    td = tiny_data()["simple"]
    comparison, cost, atts = sb.compare_methods(tiny_llama, td, methods=("ig", sb.IG_METHOD, "relp"), n=3,
                                                ks=(5, 20), cache_dir=tmp_path)
    assert len(comparison) == 3 and set(cost.method) == {"ig", sb.IG_METHOD, "relp"} and (cost.n == 3).all()
    assert comparison.spearman.between(-1, 1).all()
    assert comparison[["top5_overlap", "top20_overlap"]].stack().between(0, 1).all()
    assert sb.topk_overlap(atts["ig"], atts["ig"], "mlp_acts", 20) == 1.0
    # IG's per-site and input variants differ, but rank the tiny model's neurons alike (same estimand at the input)
    assert not torch.equal(atts["ig"]["mlp_acts"], atts[sb.IG_METHOD]["mlp_acts"])
    with pytest.raises(ValueError, match="unknown method"):
        sb.Run("shap")
    with pytest.raises(ValueError, match="setting"):
        sb.Run("relp", setting="both")
    with pytest.raises(ValueError, match="bases"):
        sb.Run("relp", bases=("neurons",))
    with pytest.raises(ValueError, match="unpaired"):
        sb.Run("relp", eval_metrics=("logit",))


def test_ig_check_runs_every_template_and_labels_each_row_by_variant(tiny_llama, tmp_path):
    data = tiny_data(6, 4)
    table, result = sb.ig_check(tiny_llama, data, n=3, log_sizes=(1, 4, 16), linear_sizes=(), cache_dir=tmp_path,
                                n_boot=100, floor=0.0)
    # every template given (the default is all four; the tiny data has two), both variants, then the aggregates
    assert list(table.template) == ["simple"] * 2 + ["nounpp"] * 2 + [sb.POOLED] * 2 + [sb.TEMPLATE_MEAN] * 2
    assert list(table.ig_variant) == ["per-site IG", "IG on inputs"] * 4
    assert (table.n_train == 3).all() and (table.n_clusters[:4] == 4).all()
    per_template = table[table.template.isin(["simple", "nounpp"])]
    assert per_template.top10_overlap.between(0, 1).all() and (per_template.seconds_per_pair > 0).all()
    assert table[table.template == sb.POOLED].spearman.isna().all()
    # the two rows of a template share its comparison, and differ in their sizes' source
    simple = per_template[per_template.template == "simple"]
    assert simple.spearman.nunique() == 1
    assert {"k@F>=0.8", "k@F>=0.8_lo", "k@F>=0.8_hi", "reached@F>=0.8"} <= set(table.columns)
    assert set(result.curves.method) == {"ig", sb.IG_METHOD}
    assert sb.statistics_parameters(result)["bootstrap_unit"] == "clean prefix"


def test_load_templates_from_a_directory_of_community_files(tiny_llama, tmp_path):
    import json

    data = tiny_data(6, 4)
    for name, td in data.items():
        (tmp_path / f"{name}_train.json").write_text("".join(json.dumps({**r, "case": "x"}) + "\n" for r in td.train))
        (tmp_path / f"{name}_test.jsonl").write_text("".join(json.dumps({**r, "case": "x"}) + "\n" for r in td.test))
    assert set(sb.sva_files(tmp_path, "train")) == {"simple", "nounpp"}
    loaded = sb.load_templates(tiny_llama, None, n_train=6, n_test=4, data_dir=tmp_path)
    assert set(loaded) == {"simple", "nounpp"} and len(loaded["nounpp"].train) == 6
    with pytest.raises(ValueError, match="usable"):
        sb.load_templates(tiny_llama, ["simple"], n_train=60, n_test=4, data_dir=tmp_path)
    few = sb.load_templates(tiny_llama, ["simple"], n_train=60, n_test=4, data_dir=tmp_path, strict=False)
    assert len(few["simple"].train) == 6
    table = sb.data_table(tiny_llama, loaded)
    assert list(table.template) == list(loaded) and (table.train_pairs == 6).all()


def test_notebook_parameters_cell():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "code" and "parameters" in first.metadata.get("tags", [])
    params = {}
    exec(first.source, {}, params)
    assert params["MODEL"] == "smollm2-135m" and params["SMOKE"] is False
    # the paper's sizes are the full run's defaults
    assert params["N_TRAIN"] == 300 and params["N_TEST"] == 40
    assert params["LOG_SIZES"] == sorted(params["LOG_SIZES"]) and max(params["LINEAR_SIZES"]) <= 400
    assert "SVA_DATA" in params and params["SVA_DATA"] is None
    source = "\n".join(c.source for c in nb.cells)
    for name in ("fig1_sva_faithfulness", "fig3_sva_ig_vs_relp", "fig4_sva_score_distribution", "fig5_sva_unpaired"):
        assert name in source


def test_seed_summary_takes_median_min_max_and_counts_unreached():
    rows = []
    for seed, (k8, k9, eff) in enumerate([(50.0, 200.0, 3.0), (70.0, np.nan, 2.0), (60.0, 400.0, 4.0)]):
        rows.append({"model": "m", "method": "relp", "basis": "mlp_acts", "setting": "paired", "ablation": "mean",
                     "eval_metric": "logit_diff", "template": "t0", "k@F>=0.8": k8, "k@F>=0.9": k9,
                     "completeness@F>=0.8": 0.1 * seed, "completeness@F>=0.9": np.nan if np.isnan(k9) else 0.5,
                     "effect": eff, "data_seed": seed})
    s = sb.seed_summary(pd.DataFrame(rows)).iloc[0]
    assert s["seeds"] == 3 and s["data_seeds"] == "0,1,2"
    assert (s["k@F>=0.8_median"], s["k@F>=0.8_min"], s["k@F>=0.8_max"]) == (60.0, 50.0, 70.0)
    # a seed that never reaches 0.9 counts as +inf: the median is the larger of the two reached values
    assert s["seeds_reached@F>=0.9"] == 2 and s["k@F>=0.9_median"] == 400.0 and np.isinf(s["k@F>=0.9_max"])
    assert s["completeness@F>=0.9_median"] == 0.5 and s["effect_median"] == 3.0
    view = sb.seed_view(sb.seed_summary(pd.DataFrame(rows)))
    assert view.iloc[0]["k @ F≥0.8: median [min, max]"] == "60 [50, 70]"
    assert view.iloc[0]["k @ F≥0.9: median [min, max]"] == "400 [200, ∞]"


def test_latent_counts_leave_out_the_error_nodes_of_each_circuit():
    """latents@F>=t = k@F>=t minus the error nodes (last unit of an SAE site) among the k top-ranked nodes; the pooled
    line averages the templates it pools; other bases get NaN."""

    class Scores(dict):  # the two things add_latent_counts reads from an Attribution: .scores and [basis][0]
        @property
        def scores(self):
            return self

    # [L=1, T=1, U=4]: units 0..2 latents, unit 3 the error node. Ranking a: err, l0, l1, l2; ranking b: l0, l1, err, l2
    a = Scores(sae_resid=torch.tensor([[[[0.5, 0.4, 0.3, 0.9]]]]))
    b = Scores(sae_resid=torch.tensor([[[[0.9, 0.8, 0.1, 0.7]]]]))
    atts = {("x", "relp", "paired"): a, ("y", "relp", "paired"): b}
    base = {"model": "m", "method": "relp", "setting": "paired", "ablation": "mean", "eval_metric": "logit_diff",
            "below_floor": False}
    rows = [{**base, "basis": "sae_resid", "template": "x", "k@F>=0.8": 2.0, "k@F>=0.8_lo": 1.0, "k@F>=0.8_hi": np.inf},
            {**base, "basis": "sae_resid", "template": "y", "k@F>=0.8": 3.0, "k@F>=0.8_lo": 3.0, "k@F>=0.8_hi": 4.0},
            {**base, "basis": "sae_resid", "template": sb.POOLED, "k@F>=0.8": 3.0, "k@F>=0.8_lo": 2.0,
             "k@F>=0.8_hi": np.nan},
            {**base, "basis": "mlp_acts", "template": "x", "k@F>=0.8": 5.0, "k@F>=0.8_lo": 4.0, "k@F>=0.8_hi": 6.0}]
    out = sb.add_latent_counts(pd.DataFrame(rows), atts, thresholds=(0.8,)).set_index(["basis", "template"])
    x, y, pooled = out.loc[("sae_resid", "x")], out.loc[("sae_resid", "y")], out.loc[("sae_resid", sb.POOLED)]
    assert (x["latents@F>=0.8"], x["latents@F>=0.8_lo"], x["latents@F>=0.8_hi"]) == (1.0, 0.0, np.inf)
    assert (y["latents@F>=0.8"], y["latents@F>=0.8_lo"], y["latents@F>=0.8_hi"]) == (2.0, 2.0, 3.0)
    assert pooled["latents@F>=0.8"] == 2.0 and pooled["latents@F>=0.8_lo"] == 1.5  # (2 + 2) / 2, (1 + 2) / 2
    assert np.isnan(pooled["latents@F>=0.8_hi"]) and np.isnan(out.loc[("mlp_acts", "x"), "latents@F>=0.8"])


def _exact_result(curves: dict[str, tuple[float, list[float]]], n=8, clusters=None):
    """Noise-free curves: every pair of template t has effect eff and faithfulness fractions[i] at size i."""
    ks = np.array([1, 10, 100, 1000, 10000, 100000, sb.ALL])
    examples = {}
    for t, (eff, fractions) in curves.items():
        mM, m0 = np.full(n, eff), np.zeros(n)
        mC = np.array([*fractions, 1.0])[:, None] * mM[None]
        examples[(t, "m", "relp", "mlp_acts", "paired", "mean", "logit_diff")] = {
            "k": ks, "size": np.minimum(ks, 10**6), "m_C": mC, "m_Cbar": mM[None] - mC, "m_M": mM, "m_empty": m0,
            "n_train": 10, "total_nodes": 10**6, "clusters": None if clusters is None else clusters(t, n)}
    return sb.BenchmarkResult(pd.DataFrame(columns=sb.COLUMNS), {}, pd.DataFrame(), pd.DataFrame(), examples)


def _log_cross(k0, k1, v0, v1, t=0.9):
    return float(np.exp(np.log(k0) + (t - v0) / (v1 - v0) * (np.log(k1) - np.log(k0))))


def test_headline_reports_both_aggregates_and_both_crossing_rules():
    # t0 (effect 4) falls back after 10; t1 (effect 1) dips at 1000: the four (aggregate, rule) sizes all differ
    t0 = [0.2, 0.95, 0.80, 0.95, 0.95, 0.95]
    t1 = [0.2, 0.90, 0.95, 0.50, 0.95, 0.95]
    head = sb.headline_table(_exact_result({"t0": (4.0, t0), "t1": (1.0, t1)}), n_boot=50,
                             thresholds=(0.9,)).set_index("template")
    pooled = [(4 * a + b) / 5 for a, b in zip(t0, t1)]   # effect-weighted: 0.94 at 10, 0.86 at 1000
    mean = [(a + b) / 2 for a, b in zip(t0, t1)]         # unweighted: 0.925 at 10, 0.725 at 1000
    expected = {(sb.POOLED, "first"): _log_cross(1, 10, pooled[0], pooled[1]),
                (sb.POOLED, "stays_above"): _log_cross(1000, 10000, pooled[3], pooled[4]),
                (sb.TEMPLATE_MEAN, "first"): _log_cross(1, 10, mean[0], mean[1]),
                (sb.TEMPLATE_MEAN, "stays_above"): _log_cross(1000, 10000, mean[3], mean[4])}
    for (row, rule), k in expected.items():
        assert head.loc[row, f"k@F>=0.9|{rule}"] == pytest.approx(k, rel=1e-9)
        # noise-free pairs: every resample gives the same size
        assert head.loc[row, f"k@F>=0.9|{rule}_lo"] == pytest.approx(k, rel=1e-9)
    assert len({round(k, 6) for k in expected.values()}) == 4
    # the headline (bare) columns are the pooled line's first crossing
    assert head.loc[sb.POOLED, "k@F>=0.9"] == head.loc[sb.POOLED, "k@F>=0.9|first"]
    assert (sb.HEADLINE_AGGREGATE, sb.HEADLINE_CROSSING) == ("pooled", "first")
    assert head.loc[sb.POOLED, "falls_back@F>=0.9"] and head.loc[sb.TEMPLATE_MEAN, "falls_back@F>=0.9"]
    assert head.loc[sb.TEMPLATE_MEAN, "effect"] == pytest.approx(2.5) and head.loc[sb.POOLED, "effect"] == 2.5
    view = sb.headline_view(head.reset_index())
    assert "falls back@0.9" in view.loc[("RelP", "mlp_acts", sb.POOLED), "flags"]
    agg = sb.aggregate_view(head.reset_index(), thresholds=(0.9,)).set_index("aggregate")
    assert agg.loc[sb.POOLED, "k@F≥0.9 (first)"].endswith("(headline)")
    assert agg.loc[sb.TEMPLATE_MEAN, "k@F≥0.9 (stays_above)"].startswith(
        f"{expected[(sb.TEMPLATE_MEAN, 'stays_above')]:,.0f} [")
    assert "headline" not in agg.loc[sb.TEMPLATE_MEAN, "k@F≥0.9 (first)"]


def test_float_noise_above_1_or_below_0_is_not_flagged():
    rng = np.random.default_rng(0)
    n = 40
    ks = np.array([1, 10, 100, sb.ALL])
    m0 = rng.normal(0, 0.1, n)
    den = rng.uniform(1.7, 5.1, n)
    mM = m0 + den

    def centred(scale):
        e = rng.normal(0, scale, n)
        return e - e.sum() * den / den.sum()  # Σ e = 0: the pooled ratio is exactly the target

    examples = {}
    for t, top in (("noise", 1 + 4e-8), ("over", 1.3)):
        mC = m0[None] + np.array([0.3, 0.8, top, 1.0])[:, None] * den[None]
        mC[:3] += np.stack([centred(0.3) for _ in range(3)])
        mCb = m0[None] + np.array([0.5, 0.1, -0.001, 0.0])[:, None] * den[None]
        mCb[:3] += np.stack([centred(0.3) for _ in range(3)])
        mCb[-1] = m0
        examples[(t, "m", "relp", "mlp_acts", "paired", "mean", "logit_diff")] = {
            "k": ks, "size": ks.clip(max=1000), "m_C": mC, "m_Cbar": mCb, "m_M": mM, "m_empty": m0,
            "n_train": 10, "total_nodes": 1000}
    result = sb.BenchmarkResult(pd.DataFrame(columns=sb.COLUMNS), {}, pd.DataFrame(), pd.DataFrame(), examples)
    head = sb.headline_table(result, n_boot=300).set_index("template")
    noise = head.loc["noise"]
    assert noise.max_faithfulness > 1 and noise.min_completeness < 0  # the old point-estimate flags would fire
    assert not noise.faithfulness_above_1 and not noise.completeness_below_0
    assert noise.max_faithfulness_lo < 1 < noise.max_faithfulness
    assert head.loc["over", "faithfulness_above_1"] and head.loc["over", "max_faithfulness_lo"] > 1


def test_intervals_resample_clean_prefixes():
    t0 = [0.2, 0.7, 0.9, 0.95, 0.97, 0.98]
    rng = np.random.default_rng(0)

    def noisy(result):  # per-pair effects vary, so resampling matters
        for e in result.examples.values():
            scale = rng.uniform(0.5, 1.5, len(e["m_M"]))
            for name in ("m_C", "m_Cbar"):
                e[name] = e[name] * scale[None]
            e["m_M"] = e["m_M"] * scale
        return result

    # 10 prefixes, each carrying 4 pairs (identical pairs within a prefix)
    per_prefix = noisy(_exact_result({"t0": (2.0, t0)}, n=10))
    e = per_prefix.examples[("t0", "m", "relp", "mlp_acts", "paired", "mean", "logit_diff")]
    dup = np.repeat(np.arange(10), 4)
    dup_e = {**e, "m_C": e["m_C"][:, dup], "m_Cbar": e["m_Cbar"][:, dup], "m_M": e["m_M"][dup],
             "m_empty": e["m_empty"][dup], "clusters": np.array([f"The x{i}" for i in dup], dtype=object)}
    clustered = sb.BenchmarkResult(per_prefix.curves, {}, pd.DataFrame(), pd.DataFrame(),
                                   {("t0", "m", "relp", "mlp_acts", "paired", "mean", "logit_diff"): dup_e})
    assert sb.bootstrap_unit(clustered) == "clean prefix" and sb.bootstrap_unit(per_prefix) == "test pair"
    a = sb.curve_table(clustered, n_boot=200).query("template == 't0'").reset_index(drop=True)
    b = sb.curve_table(per_prefix, n_boot=200).query("template == 't0'").reset_index(drop=True)
    np.testing.assert_allclose(a.faithfulness_lo, b.faithfulness_lo, rtol=1e-9)
    np.testing.assert_allclose(a.faithfulness_hi, b.faithfulness_hi, rtol=1e-9)
    assert (a.n_test == 40).all() and (a.n_clusters == 10).all()
    # the same 40 rows resampled as independent pairs: narrower, wrongly
    rows = {**dup_e, "clusters": None}
    naive = sb.BenchmarkResult(per_prefix.curves, {}, pd.DataFrame(), pd.DataFrame(),
                               {("t0", "m", "relp", "mlp_acts", "paired", "mean", "logit_diff"): rows})
    c = sb.curve_table(naive, n_boot=200).query("template == 't0'").reset_index(drop=True)
    inner = slice(1, -1)  # the full circuit (faithfulness 1 in every resample) has no width
    assert ((a.faithfulness_hi - a.faithfulness_lo)[inner] > (c.faithfulness_hi - c.faithfulness_lo)[inner]).all()
