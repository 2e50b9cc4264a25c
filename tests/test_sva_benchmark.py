"""The SVA benchmark runner (neuronlib.sva_benchmark) on the tiny model, and the notebook's parameters cell."""
import math
from pathlib import Path

import nbformat
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
    # 3 runs x 2 templates attributions; evaluations: (2 + 1 + 2) per template
    assert counter.calls == {"attribute": 6, "evaluate": 10}
    curves = result.curves
    assert list(curves.columns) == sb.COLUMNS
    assert set(curves.template) == {"simple", "nounpp"}
    assert set(zip(curves.method, curves.setting)) == {("relp", "paired"), (sb.IG_METHOD, "paired"),
                                                      ("relp", "unpaired")}
    assert set(curves[curves.setting == "unpaired"].ablation) == {"zero", "mean"}
    assert set(curves[curves.setting == "paired"].ablation) == {"mean"}
    assert curves[["faithfulness", "completeness", "m_C", "m_Cbar", "m_M", "m_empty"]].notna().all().all()
    T = {"simple": 2, "nounpp": 5}
    width = {"mlp_acts": model.d_mlp, "resid": model.d_model}
    keys = ["template", "method", "basis", "setting", "ablation"]
    for (template, method, basis, setting, ablation), g in curves.groupby(keys):
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
    # the linear sizes only where asked for
    relp_acts = curves[(curves.method == "relp") & (curves.basis == "mlp_acts") & (curves.setting == "paired")]
    assert 8 in set(relp_acts["k"]) and 8 not in set(curves[curves.method == sb.IG_METHOD]["k"])
    # unpaired: metric logit(y) on clean prompts; zero ablation of every neuron gives a different m(empty)
    unp = curves[curves.setting == "unpaired"].groupby("ablation").m_empty.first()
    assert unp["zero"] != unp["mean"]
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


def test_tables_and_figures_from_frames(bench, tmp_path):
    model, data, cache_dir = bench
    result = sb.run_benchmark(model, data, cache_dir=cache_dir, **KW)  # cached by the test above, or computed
    avg = sb.average_curves(result.curves)
    assert set(avg.k) >= {1, 4, 16, sb.ALL}
    table = sb.size_at_faithfulness(result.curves)
    assert {"size@F>=0.8", "completeness@F>=0.8", "size@F>=0.9"} <= set(table.columns)
    names = []
    for fig_fn, kwargs in ((sb.fig_faithfulness, {}), (sb.fig_methods_by_basis, {}), (sb.fig_unpaired, {})):
        fig = fig_fn(result.curves, directory=tmp_path, **kwargs)
        names.append(fig)
    scores = sb.score_frame(result.attributions)
    assert set(scores.basis) == {"mlp_acts", "resid"} and (scores.abs_score >= 0).all()
    sb.fig_score_distribution(scores, ks=(5, 20), directory=tmp_path)
    conc = sb.concentration(scores, ks=(1, 10))
    assert ((conc["share of top 1"] > 0) & (conc["share of top 1"] <= conc["share of top 10"])).all()
    for name in ("fig1_sva_faithfulness", "fig3_sva_ig_vs_relp", "fig4_sva_score_distribution", "fig5_sva_unpaired"):
        for ext in ("png", "pdf"):
            assert (tmp_path / f"{name}.{ext}").stat().st_size > 1000


def test_size_at_faithfulness_on_a_known_frame():
    rows = []
    for template, total, faith in (("a", 100, [0.5, 0.85, 0.95, 1.0]), ("b", 50, [0.7, 0.75, 0.99, 1.0])):
        for k, f in zip([1, 10, 100, sb.ALL], faith):
            rows.append({"model": "m", "template": template, "method": "relp", "basis": "mlp_acts", "setting": "paired",
                         "ablation": "mean", "k": k, "size": min(k, total), "total_nodes": total, "faithfulness": f,
                         "completeness": 1 - f})
    curves = pd.DataFrame(rows)
    avg = sb.average_curves(curves)
    # k=100 exceeds template b's 50 nodes: b contributes its full circuit (size 50) there
    row = avg[avg.k == 100].iloc[0]
    assert row.faithfulness == pytest.approx((0.95 + 0.99) / 2) and row["size"] == pytest.approx(75)
    table = sb.size_at_faithfulness(curves, thresholds=(0.8, 0.9, 0.999)).iloc[0]
    assert table["size@F>=0.8"] == 10 and table["completeness@F>=0.8"] == pytest.approx(0.2)
    assert table["size@F>=0.9"] == 75
    assert math.isnan(table["size@F>=0.999"])  # only the full circuit reaches it, and that one does not count
    per_template = sb.size_at_faithfulness(curves, average=False).set_index("template")
    assert per_template.loc["a", "size@F>=0.8"] == 10 and per_template.loc["b", "size@F>=0.8"] == 50


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


def test_notebook_parameters_cell():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "code" and "parameters" in first.metadata.get("tags", [])
    params = {}
    exec(first.source, {}, params)
    assert params["MODEL"] == "smollm2-135m" and params["SMOKE"] is False
    assert isinstance(params["N_TRAIN"], int) and isinstance(params["N_TEST"], int)
    assert params["LOG_SIZES"] == sorted(params["LOG_SIZES"]) and max(params["LINEAR_SIZES"]) <= 400
    # committed with outputs cleared; the figures it regenerates are named as the README/METHOD say
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    source = "\n".join(c.source for c in nb.cells)
    for name in ("fig1_sva_faithfulness", "fig3_sva_ig_vs_relp", "fig4_sva_score_distribution", "fig5_sva_unpaired"):
        assert name in source or name in Path(sb.__file__).read_text()
