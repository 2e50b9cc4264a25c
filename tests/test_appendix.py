"""The appendix case studies: labels, splits, AUROC groups with nulls (the operand-balanced null of the sum-mod-k
families included), IOI pairs per template and name order, and notebook 06's parameters cell. Tiny models and
synthetic scores only (the notebook runs on the real models in SMOKE mode)."""
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from neuronlib.paper import appendix as A

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "06_appendix_case_studies.ipynb"


# ------------------------------------------------------------------------------------------------ addition labels


def test_addition_table_labels():
    df = A.addition_table(9)
    assert len(df) == 100
    row = df[(df["a"] == 7) & (df["b"] == 8)].iloc[0]
    assert (row["sum"], row["mod10"], row["mod2"], row["mod5"], row["tens"]) == (15, 5, 1, 0, 1)
    assert sorted(df["mod10"].value_counts().tolist()) == [10] * 10
    ops = A.operand_labels(df, 3)
    assert ops.sum() == 19  # a = 3 (10) + b = 3 (10) - (3, 3)
    labels = A.addition_labels(df)
    assert {"mod10", "mod2", "mod5", "tens", "operand_0", "operand_9"} <= set(labels.columns)
    assert A.family_group("operand_4") == "operand" and A.family_group("mod5") == "mod5"


def test_stratified_split_keeps_every_class_in_both_halves():
    df = A.addition_table(9)
    sel, ev = A.stratified_split(df["mod10"], seed=1)
    assert not set(sel) & set(ev)
    assert sorted(np.r_[sel, ev].tolist()) == list(range(100))
    for col in ("mod10", "mod5", "mod2"):
        assert set(df[col].iloc[sel]) == set(df[col].iloc[ev]) == set(df[col])
    assert (df["mod10"].iloc[sel].value_counts() == 5).all()


def test_addition_prompt_without_chat_template(tiny_llama):
    assert A.addition_prompt(3, 4) == "3 + 4 = "
    assert A.addition_prompt(3, 4, tiny_llama.tokenizer) == "3 + 4 = "  # the tiny tokenizer has no chat template


def test_accuracy_row_has_a_wilson_interval():
    r = A.accuracy_row([True] * 8 + [False] * 2, task="x")
    assert r["task"] == "x" and r["n"] == 10 and r["correct"] == 8 and r["accuracy"] == 0.8
    assert r["lo"] < 0.8 < r["hi"] and 0.4 < r["lo"] < 0.5  # Wilson 95%: (0.49, 0.94)


# ------------------------------------------------------------------------------------------------ AUROC groups


def planted_scores(P=60, L=3, U=40, seed=0):
    """Random attribution with unit (1, 7) equal to the label "value == 2" plus noise, unit (2, 3) its negative."""
    rng = np.random.default_rng(seed)
    labels = pd.DataFrame({"kind": rng.integers(0, 4, P), "flag": rng.integers(0, 2, P)})
    x = rng.normal(size=(P, L, U))
    y = (labels["kind"] == 2).to_numpy()
    x[:, 1, 7] = 3.0 * y + 0.1 * rng.normal(size=P)
    x[:, 2, 3] = -3.0 * y + 0.1 * rng.normal(size=P)
    return torch.tensor(x), labels


def test_auroc_groups_finds_the_planted_neurons_and_they_replicate():
    x, labels = planted_scores()
    sel, ev = np.arange(0, 60, 2), np.arange(1, 60, 2)
    summary, neurons = A.auroc_groups(x, labels, ["kind", "flag"], sel, ev, threshold=0.9, n_perm=50, seed=0)
    row = summary[(summary["family"] == "kind") & (summary["value"] == 2)].iloc[0]
    found = neurons[(neurons["family"] == "kind") & (neurons["value"] == 2)]
    pairs = set(zip(found["layer"], found["unit"]))
    assert {(1, 7), (2, 3)} <= pairs
    planted = found[found["layer"].isin([1, 2]) & found["unit"].isin([7, 3])]
    assert planted["replicated"].all()
    assert (planted.set_index(["layer", "unit"]).loc[(1, 7), "auroc_select"] > 0.9)
    assert (planted.set_index(["layer", "unit"]).loc[(2, 3), "auroc_select"] < 0.1)
    # two planted neurons replicate; shuffled evaluation labels almost never give two
    assert row["n_replicated"] >= 2 and row["replicated_null_mean"] < 1.0 and row["replicated_p"] <= 0.05
    # a binary family is tested once, not once per value
    assert (summary["family"] == "flag").sum() == 1


def test_auroc_groups_on_pure_noise_matches_its_null():
    rng = np.random.default_rng(3)
    x = torch.tensor(rng.normal(size=(80, 2, 200)))
    labels = pd.DataFrame({"kind": rng.integers(0, 2, 80)})
    summary, _ = A.auroc_groups(x, labels, ["kind"], np.arange(40), np.arange(40, 80), threshold=0.7, n_perm=100)
    row = summary.iloc[0]
    assert row["replicated_p"] > 0.01  # nothing real to find
    assert row["n_selected"] <= row["null_q95"] + 5


def test_auroc_groups_rejects_overlapping_halves():
    x, labels = planted_scores()
    with pytest.raises(ValueError, match="overlap"):
        A.auroc_groups(x, labels, ["kind"], np.arange(40), np.arange(30, 60), threshold=0.9, n_perm=5)


def test_auroc_groups_skips_labels_missing_from_a_half():
    x, labels = planted_scores()
    labels.loc[labels.index[::2], "kind"] = 0  # all selection prompts have kind 0 ...
    labels.loc[labels.index[1::2][:1], "kind"] = 1
    summary, _ = A.auroc_groups(x, labels, ["kind"], np.arange(0, 60, 2), np.arange(1, 60, 2), threshold=0.9,
                                n_perm=5)
    assert summary.empty and list(summary.columns) == A.SUMMARY_COLUMNS
    assert A.family_summary(summary).empty


def test_auroc_histogram_counts_every_neuron_and_shows_the_planted_one():
    x, labels = planted_scores()
    hist = A.auroc_histogram(x, labels, ["kind"], seed=0)
    assert hist["real"].sum() == hist["null"].sum() == 3 * 40
    top = hist[hist["bin_lo"] >= 0.98]
    assert top["real"].sum() >= 2 and top["null"].sum() == 0


def test_folded_and_features_by_layer():
    assert np.allclose(A.folded([0.1, 0.5, 0.8]), [0.9, 0.5, 0.8])
    neurons = pd.DataFrame({"family": ["language", "language", "concept"], "value": ["en", "fr", "big"],
                            "layer": [0, 2, 2], "unit": [1, 1, 5], "auroc_select": [0.95, 0.97, 0.05],
                            "auroc_eval": [0.92, 0.5, 0.03], "replicated": [True, False, True]})
    by = A.features_by_layer(neurons, 3).set_index(["family", "layer"])
    assert by.loc[("language", 2), "selected"] == 1 and by.loc[("language", 2), "replicated"] == 0
    assert by.loc[("concept", 2), "replicated"] == 1 and by["selected"].sum() == 3
    assert len(A.replicated_neurons(neurons)) == 2


def test_circuit_pipeline_on_a_tiny_model(tiny_llama):
    prompts = ["the keys to the cabinet", "the key to the cabinet", "the dogs near the boy", "the dog near the boy",
               "the friend of the chef", "the friends of the chef"]
    circ = A.trace_circuits(tiny_llama, prompts, tau=0.005, cache=False, progress=False)
    assert circ.summed.shape == (6, tiny_llama.n_layers, tiny_llama.d_mlp)
    labels = pd.DataFrame({"plural": [1, 0, 1, 0, 0, 1]})
    summary, neurons = A.auroc_groups(circ.summed, labels, ["plural"], [0, 1, 2, 3], [4, 5], threshold=0.9,
                                      n_perm=10)
    assert len(summary) == 1 and summary["n_selected"].iloc[0] == len(neurons)
    sizes = A.circuit_sizes(circ)
    assert sizes["prompts"] == 6 and sizes["lo"] <= sizes["mean_nodes"] <= sizes["hi"]


# ------------------------------------------------------------------------------------------------ operand-balanced null


def classes_hold_each_operand_once(a, b, labels) -> bool:
    """Every class of ``labels`` holds every value of a once and every value of b once."""
    frame = pd.DataFrame({"a": a, "b": b, "y": labels})
    return all(sorted(g["a"]) == list(range(10)) and sorted(g["b"]) == list(range(10)) for _, g in frame.groupby("y"))


def test_balanced_null_labels_are_latin_squares_and_differ():
    df = A.addition_table(9)
    assert classes_hold_each_operand_once(df["a"], df["b"], df["mod10"])  # the real design
    rng = np.random.default_rng(0)
    draws = [A.null_sum_labels("operand-balanced", df["a"], df["b"], df["mod10"], rng) for _ in range(50)]
    for y in draws:
        assert classes_hold_each_operand_once(df["a"], df["b"], y)
    assert len({tuple(y) for y in draws}) == 50  # every draw is another labelling
    assert sum(np.array_equal(y, df["mod10"]) for y in draws) == 0
    # on a subset of the grid (sums >= 10) every class holds each operand at most once
    two = df[df["sum"] >= 10]
    y = A.balanced_sum_labels(two["a"], two["b"], np.random.default_rng(1))
    frame = two.assign(y=y)
    assert (frame.groupby("y")["a"].agg(lambda v: v.is_unique)).all()
    assert (frame.groupby("y")["b"].agg(lambda v: v.is_unique)).all()
    with pytest.raises(ValueError, match="digits"):
        A.balanced_sum_labels([10], [1], rng)


def test_histogram_null_labels_balance_the_mod_families_and_shuffle_the_rest():
    df = A.addition_table(9)
    labels = A.addition_labels(df)
    null = A.addition_null_labels(df, labels, seed=4)
    assert list(null.columns) == list(labels.columns)
    assert classes_hold_each_operand_once(df["a"], df["b"], null["mod10"])
    assert (null["mod5"] == null["mod10"] % 5).all() and (null["mod2"] == null["mod10"] % 2).all()
    rest = [c for c in labels.columns if c not in A.MOD_FAMILIES]
    assert sorted(map(tuple, null[rest].to_numpy())) == sorted(map(tuple, labels[rest].to_numpy()))  # rows moved
    assert not null[rest].equals(labels[rest])


def test_label_shuffle_keeps_class_sizes_but_breaks_the_balance():
    df = A.addition_table(9)
    rng = np.random.default_rng(0)
    draws = [A.null_sum_labels("label shuffle", df["a"], df["b"], df["mod10"], rng) for _ in range(20)]
    assert all(sorted(np.bincount(y)) == [10] * 10 for y in draws)
    assert not any(classes_hold_each_operand_once(df["a"], df["b"], y) for y in draws)
    with pytest.raises(ValueError, match="null kind"):
        A.null_sum_labels("shuffle", df["a"], df["b"], df["mod10"], rng)


def test_mod_family_counts_agree_with_auroc_groups():
    df = A.addition_table(9)
    rng = np.random.default_rng(2)
    x = torch.tensor(rng.normal(size=(100, 2, 150)) * (rng.random((100, 2, 150)) < 0.5))
    labels = A.mod_labels(df["mod10"])
    sel, ev = A.stratified_split(df["mod10"], seed=3)
    summary, _ = A.auroc_groups(x, labels, list(labels.columns), sel, ev, threshold=0.7, n_perm=2)
    counts = A.mod_family_counts(x.reshape(100, -1).numpy(), df["mod10"], threshold=0.7, split_seed=3)
    for fam, (n_sel, n_rep) in counts.items():
        g = summary[summary["family"] == fam]
        assert (n_sel, n_rep) == (g["n_selected"].sum(), g["n_replicated"].sum())
    assert sum(c[0] for c in counts.values()) > 0


def operand_scores(planted: bool, seed: int = 0) -> torch.Tensor:
    """400 neurons that each track operand a (plus noise); with ``planted`` five of them track "sum mod 10 = 3"."""
    df = A.addition_table(9)
    rng = np.random.default_rng(seed)
    x = 3 * rng.normal(size=(10, 400))[df["a"].to_numpy()] + 0.3 * rng.normal(size=(100, 400))
    if planted:
        x[:, :5] = 2.0 * (df["mod10"].to_numpy() == 3)[:, None] + 0.3 * rng.normal(size=(100, 5))
    return torch.tensor(x[:, None, :])


def test_operand_neurons_inflate_the_shuffle_null_not_the_balanced_one():
    df = A.addition_table(9)
    draws = A.mod_family_null(operand_scores(False), df["a"], df["b"], df["mod10"], threshold=0.8, n_draws=40)
    assert set(draws["kind"]) == {"observed", *A.NULL_KINDS} and (draws["draw"] == -1).sum() == 3
    s = A.mod_null_summary(draws, token="first").set_index(["family", "null"])
    bal, shuf = s.loc[("mod10", "operand-balanced")], s.loc[("mod10", "label shuffle")]
    assert bal["draws"] == shuf["draws"] == 40 and bal["token"] == "first"
    assert bal["selected"] == shuf["selected"]  # one observed count, two nulls
    assert shuf["selected_null_mean"] > 3 * bal["selected_null_mean"]
    assert bal["selected_null_lo"] <= bal["selected"] <= bal["selected_null_hi"]  # no sum signal: inside its null
    assert bal["verdict"] == "does not replicate"


def test_planted_mod10_neurons_replicate_against_the_balanced_null():
    df = A.addition_table(9)
    draws = A.mod_family_null(operand_scores(True), df["a"], df["b"], df["mod10"], threshold=0.8, n_draws=60)
    s = A.mod_null_summary(draws).set_index(["family", "null"])
    bal = s.loc[("mod10", "operand-balanced")]
    assert bal["replicated"] >= 5 > bal["replicated_null_hi"]
    assert bal["replicated_p"] <= 0.05 and bal["verdict"] == "replicates"
    assert s.loc[("mod10", "label shuffle"), "selected_null_mean"] > bal["selected_null_mean"]


# ------------------------------------------------------------------------------------------------ antonyms data


def test_antonym_data():
    words = A.load_english_antonyms()
    assert len(words) >= 12 and words["word"].is_unique
    prompts = A.english_antonym_prompts(words)
    assert len(prompts) == 2 * len(words) and prompts["prompt"].str.contains('"').all()
    multi = A.load_multilingual_antonyms()
    per = multi.groupby(["language", "template"]).size()
    assert (per == 6).all() and multi["language"].nunique() >= 9
    en = multi[(multi["language"] == "English") & (multi["template"] == 0)].set_index("concept")
    assert en.loc["big", "answers"] == ["small"] and en.loc["hot", "attribute"] == "temperature"
    fr = multi[(multi["language"] == "French") & (multi["template"] == 0)].set_index("concept")
    assert fr.loc["cold", "prompt"] == 'Le contraire de "froid" est "' and fr.loc["cold", "answers"] == ["chaud"]


def test_continuation_ids(tiny_llama):
    tok = tiny_llama.tokenizer
    ids = A.continuation_ids(tok, "the keys to the", " cabinet")
    assert tok.decode(ids).strip() == "cabinet"


# ------------------------------------------------------------------------------------------------ IOI pairs


def test_ioi_pairs_per_template_and_order(tiny_llama):
    voc = A.load_ioi_vocabulary()
    assert len(voc["template"]) >= 3 and len(voc["name"]) >= 20
    pairs = A.ioi_pairs(tiny_llama.tokenizer, 60, seed=0)  # word-level tokenizer: every word is one token
    per = pairs.groupby(["template", "order"]).size()
    assert len(per) == 2 * len(voc["template"]) and (per == 60).all()  # both orders, balanced
    assert not pairs.duplicated(["template", "io", "s", "place", "object"]).any()
    for r in pairs.itertuples():
        c, p = r.clean_prefix.replace(",", " ,").split(), r.patch_prefix.replace(",", " ,").split()
        diff = [(x, y) for x, y in zip(c, p) if x != y]
        assert len(c) == len(p) and diff == [(r.s, r.io)]  # only the second clause's subject changes
        assert r.clean_answer == " " + r.io and r.patch_answer == " " + r.s and r.io != r.s
        assert c.count(r.io) == 1 and c.count(r.s) == 2  # IO once, S twice in the clean prompt
        names = [w for w in c if w in (r.io, r.s)]
        assert names[:2] == ([r.io, r.s] if r.order == "ABBA" else [r.s, r.io])  # the order is what it says
    train, test = A.split_pairs(pairs, n_train=50, seed=0)
    assert not set(train["clean_prefix"]) & set(test["clean_prefix"])
    assert (train.groupby(["template", "order"]).size() == 50).all()
    assert (test.groupby(["template", "order"]).size() == 10).all()
    with pytest.raises(ValueError, match="none left"):
        A.split_pairs(pairs, n_train=60)


def test_ioi_pairs_refuse_more_pairs_than_the_vocabulary_holds(tiny_llama):
    voc = {"template": ["when {A} and {B} went to the {place} , {B} gave a {object} to"],
           "name": ["dallas", "texas"], "place": ["city"], "object": ["key"]}
    with pytest.raises(ValueError, match="too few distinct"):
        A.ioi_pairs(tiny_llama.tokenizer, 2, vocabulary=voc)
    assert len(A.ioi_pairs(tiny_llama.tokenizer, 1, vocabulary=voc)) == 2


def test_ioi_curves_on_a_tiny_model(tiny_llama):
    voc = {"template": ["when {A} and {B} went to the {place} , {B} gave a {object} to"],
           "name": ["dallas", "texas", "austin", "boy", "girl", "chef"], "place": ["city", "state"],
           "object": ["key", "dog"]}
    pairs = A.ioi_pairs(tiny_llama.tokenizer, 8, seed=0, vocabulary=voc)
    train, test = A.split_pairs(pairs, n_train=5)
    evals, atts = A.ioi_evaluations(tiny_llama, train, test, sizes=[0, 5, 10**6])
    assert set(atts) == {(site, 0, order) for site in ("mlp_acts", "mlp_out") for order in A.IOI_ORDERS}
    assert len(evals) == 2 * 2 * 3 * 3  # sites x orders x sizes x test pairs
    curves = A.ioi_curves(evals, n_boot=50)
    assert set(curves["order"]) == {"ABBA", "BABA", "pooled"}
    full = curves[curves["size"] == 10**6].set_index(["site", "order", "measure"])["value"]
    for site in ("mlp_acts", "mlp_out"):
        for order in ("ABBA", "BABA", "pooled"):
            assert full[(site, order, "faithfulness")] == pytest.approx(1.0, abs=1e-4)  # nothing ablated
            assert full[(site, order, "completeness")] == pytest.approx(0.0, abs=1e-4)  # everything ablated
    pooled = curves[curves["order"] == "pooled"]
    assert (pooled["n_test"] == 6).all() and (pooled["n_train"] == 10).all()
    assert (curves["lo"] <= curves["value"] + 1e-9).all() and (curves["value"] <= curves["hi"] + 1e-9).all()
    sizes = A.ioi_sizes(evals, n_boot=50)
    assert len(sizes) == 2 * 3 and (sizes["size"] <= 10**6).all()  # reached at the latest with nothing ablated
    mixed, mixed_atts = A.ioi_evaluations(tiny_llama, train, test, sizes=[0, 5], sites=("mlp_acts",), by=["template"])
    assert set(mixed_atts) == {("mlp_acts", 0, "mixed")} and set(mixed["order"]) == {"mixed"}
    assert len(mixed) == 2 * 6 and (mixed["n_train"] == 10).all()  # one circuit for both orders' test pairs
    with pytest.raises(ValueError, match="by must be"):
        A.ioi_evaluations(tiny_llama, train, test, sizes=[0], by=["order"])
    top = A.ioi_top_neurons(tiny_llama, atts, train, n=3)
    assert len(top) == 3 and top["label"].str.match(r"L\d+/N\d+[+-]").all() and set(top["order"]) <= set(A.IOI_ORDERS)


def synthetic_evals(reach_at: dict) -> pd.DataFrame:
    """IOI evaluations whose faithfulness is 0 below ``reach_at[order]`` and 1 from there on (m(M) = 2, m(empty) =
    0, 10 test pairs per order)."""
    rows = []
    for order, k0 in reach_at.items():
        for k in (1, 10, 100, 1000):
            for i in range(10):
                f = 1.0 if k >= k0 else 0.0
                rows.append({"site": "mlp_acts", "template": 0, "order": order, "size": k, "pair": i,
                             "m_C": 2 * f, "m_Cbar": 2 * (1 - f), "m_M": 2.0, "m_empty": 0.0, "n_train": 50})
    return pd.DataFrame(rows)


def test_ioi_sizes_per_order_and_pooled():
    sizes = A.ioi_sizes(synthetic_evals({"ABBA": 10, "BABA": 1000}), n_boot=200).set_index("order")
    assert sizes.loc["ABBA", "size"] < 10 and sizes.loc["ABBA", "hi"] <= 10  # reached between 1 and 10
    assert 100 < sizes.loc["BABA", "size"] <= 1000
    # pooled: Σ numerators / Σ denominators reaches 0.8 only when both orders are faithful
    assert 100 < sizes.loc["pooled", "size"] <= 1000 and sizes.loc["pooled", "n_test"] == 20
    assert (sizes["reached"] == 1).all() and (sizes["denominator"] == 2).all()
    curves = A.ioi_curves(synthetic_evals({"ABBA": 10, "BABA": 1000}), n_boot=50)
    mid = curves[(curves["size"] == 100) & (curves["measure"] == "faithfulness")].set_index("order")["value"]
    assert mid["ABBA"] == 1 and mid["BABA"] == 0 and mid["pooled"] == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------------ notebook


def test_notebook_parameters_cell(caplog):
    from papermill.translators import PythonTranslator

    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert "parameters" in code[0]["metadata"].get("tags", [])
    with caplog.at_level(logging.WARNING):
        params = PythonTranslator.inspect({"source": "".join(code[0]["source"])})
    assert not [r for r in caplog.records if "Unable to parse" in r.getMessage()]
    names = {p.name for p in params}
    assert {"MODEL", "SMOKE", "FIGURES_DIR", "CACHE_DIR", "RESULTS_DIR", "REFRESH", "MULTI_MODEL", "N_PERM"} <= names
    own = [c for c in code[1:] if "injected-parameters" not in c["metadata"].get("tags", [])]
    assert "setup(" in "".join(own[0]["source"])  # (committed outputs, if any, are a full run's: test_notebooks.py)


def test_appendix_figures_draw_from_tables():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from neuronlib.paper import figures as F

    x, labels = planted_scores()
    hist = A.auroc_histogram(x, labels, ["kind", "flag"])
    grid = A.addition_table(2)
    strong = pd.DataFrame({"family": ["mod10"], "value": [2], "layer": [1], "unit": [7], "auroc_select": [0.95]})
    heat = A.heatmap_table(torch.randn(len(grid), 3, 40), grid, strong)
    assert len(heat) == 9
    layers = pd.DataFrame({"family": ["language"] * 2 + ["concept"] * 2, "layer": [0, 1] * 2,
                           "selected": [3, 1, 2, 0], "replicated": [1, 0, 1, 0]})
    curves = A.ioi_curves(synthetic_evals({"ABBA": 10, "BABA": 1000}), n_boot=20)
    df = A.addition_table(9)
    draws = A.mod_family_null(operand_scores(True), df["a"], df["b"], df["mod10"], threshold=0.8, n_draws=5)
    for fig in (F.fig_addition_auroc_histograms(hist), F.fig_addition_heatmaps(heat),
                F.fig_features_by_layer(layers), F.fig_ioi_curves(curves),
                F.fig_addition_nulls(draws.assign(token="first answer token"))):
        assert fig.axes
        plt.close(fig)
    assert {"figA1_addition_auroc_histograms", "figA4_ioi_curves", "figA5_addition_nulls"} <= set(F.figure_registry())
