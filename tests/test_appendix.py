"""The appendix case studies (issue 16): labels, splits, AUROC groups with nulls, IOI pairs, and notebook 06's
parameters cell. Tiny models and synthetic scores only (the notebook runs on the real models in SMOKE mode)."""
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


def test_ioi_pairs_from_the_data(tiny_llama):
    voc = A.load_ioi_vocabulary()
    assert len(voc["template"]) >= 3 and len(voc["name"]) >= 20
    pairs = A.ioi_pairs(tiny_llama.tokenizer, 30, seed=0)  # word-level tokenizer: every word is one token
    assert len(pairs) == 30 * len(voc["template"]) >= 100
    for r in pairs.itertuples():
        c, p = r.clean_prefix.split(), r.patch_prefix.split()
        diff = [(x, y) for x, y in zip(c, p) if x != y]
        assert len(c) == len(p) and diff == [(r.s, r.io)]  # only the second clause's subject changes
        assert r.clean_answer == " " + r.io and r.patch_answer == " " + r.s and r.io != r.s
        assert c.count(r.io.strip()) == 1 and c.count(r.s) == 2  # IO once, S twice in the clean prompt
    assert set(pairs["order"]) == {"ABBA", "BABA"}
    train, test = A.split_pairs(pairs)
    assert not set(train["clean_prefix"]) & set(test["clean_prefix"])
    assert (train.groupby("template").size() == 15).all()


def test_ioi_curves_on_a_tiny_model(tiny_llama):
    voc = {"template": ["when {A} and {B} went to the {place} , {B} gave a {object} to"],
           "name": ["dallas", "texas", "austin", "boy", "girl", "chef"], "place": ["city", "state"],
           "object": ["key", "dog"]}
    pairs = A.ioi_pairs(tiny_llama.tokenizer, 8, seed=0, vocabulary=voc)
    train, test = A.split_pairs(pairs)
    curves, atts = A.ioi_curves(tiny_llama, train, test, sizes=[0, 5, 10**6], n_boot=50)
    assert set(curves["site"]) == {"mlp_acts", "mlp_out"} and len(atts) == 2
    full = curves[curves["size"] == 10**6].set_index(["site", "measure"])["value"]
    for site in ("mlp_acts", "mlp_out"):
        assert full[(site, "faithfulness")] == pytest.approx(1.0, abs=1e-4)  # nothing ablated
        assert full[(site, "completeness")] == pytest.approx(0.0, abs=1e-4)  # everything ablated
    assert (curves["lo"] <= curves["value"] + 1e-9).all() and (curves["value"] <= curves["hi"] + 1e-9).all()
    top = A.ioi_top_neurons(tiny_llama, atts, train, n=3)
    assert len(top) == 3 and top["label"].str.match(r"L\d+/N\d+[+-]").all()


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
    curves = pd.DataFrame({"site": ["mlp_acts"] * 4, "size": [0, 0, 10, 10],
                           "measure": ["faithfulness", "completeness"] * 2, "value": [0, 1, 0.9, 0.1],
                           "lo": [0, 1, 0.8, 0.0], "hi": [0, 1, 1.0, 0.2], "n_test": 20, "templates": 1})
    for fig in (F.fig_addition_auroc_histograms(hist), F.fig_addition_heatmaps(heat),
                F.fig_features_by_layer(layers), F.fig_ioi_curves(curves)):
        assert fig.axes
        plt.close(fig)
    assert {"figA1_addition_auroc_histograms", "figA4_ioi_curves"} <= set(F.figure_registry())
