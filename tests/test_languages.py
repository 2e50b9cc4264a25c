"""The city -> country -> language study: data, the selection/evaluation split, AUROC groups with
permutation nulls, control neuron sets, patching and steering bookkeeping, on small hand-made cases."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import neuronlib
from neuronlib.data import languages as LD
from neuronlib.paper import casestudy as CS
from neuronlib.paper import languages as LG
from neuronlib.sites import Node
from neuronlib.stats import auroc_per_unit, permutation_null_counts

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "05_city_language.ipynb"
CAPITALS = {"Berlin", "Vienna", "Paris", "Madrid", "Mexico City", "Buenos Aires", "Rome", "Lisbon", "Brasilia",
            "Amsterdam", "Warsaw", "Moscow", "Tokyo", "Beijing", "Seoul", "Athens", "Ankara", "Stockholm", "Cairo",
            "Riyadh", "Bangkok", "Hanoi", "Helsinki", "Budapest", "Prague", "Tehran"}


# ---------------------------------------------------------------------------------------------------------------
# data


def test_languages_table_has_enough_countries_and_cities():
    df = LD.load_languages()
    assert list(df.columns) == ["city", "country", "language"]
    assert len(df) >= 80 and df["country"].nunique() >= 15
    assert df.groupby("country").size().min() >= 4
    assert not set(df["city"]) & CAPITALS, "cities must not be capitals"
    assert df.groupby("country")["language"].nunique().max() == 1
    shared = df.groupby("language")["country"].nunique()
    assert (shared >= 2).sum() >= 3, "several languages should be spoken in two or more countries"
    assert not df["city"].duplicated().any()


def test_loader_rejects_bad_tables(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text(json.dumps({"city": "A", "country": "B"}) + "\n")
    with pytest.raises(ValueError, match="missing columns"):
        LD.load_languages(p)
    p.write_text("".join(json.dumps({"city": "A", "country": c, "language": "L"}) + "\n" for c in ("B", "C")))
    with pytest.raises(ValueError, match="duplicate"):
        LD.load_languages(p)


def test_prompts():
    assert LD.two_hop_prompt("Munich") == "The main language spoken in the country where Munich is located is"
    assert LD.city_to_country_prompt("Munich") == "The city of Munich is located in the country of"
    assert LD.country_to_language_prompt("Germany") == "The main language spoken in Germany is"
    assert LD.city_to_country_matched_prompt("Munich").endswith("Munich is located is")
    assert LD.direct_prompt("Munich") == "The main language spoken in Munich is"  # no country step
    assert set(LG.TASKS) == {"two_hop", "two_hop_chat", "city_to_country", "city_to_country_matched",
                             "country_to_language", "direct"}


def _paired_evals(two_hop, direct, split=None):
    cities = [f"c{i}" for i in range(len(two_hop))]
    frames = [pd.DataFrame({"task": task, "city": cities, "correct": correct})
              for task, correct in (("two_hop", two_hop), ("direct", direct))]
    out = pd.concat(frames, ignore_index=True)
    if split is not None:
        out["split"] = list(split) * 2
    return out


def test_shortcut_control_pairs_the_cities():
    # right by both: 24, two-hop only: 6, direct only: 3, neither: 27
    two_hop = [True] * 30 + [False] * 30
    direct = [True] * 24 + [False] * 6 + [True] * 3 + [False] * 27
    split = ["selection", "evaluation"] * 30
    sc = LG.shortcut_control(_paired_evals(two_hop, direct, split), n_boot=200).set_index("split")
    a = sc.loc["all"]
    assert (a.n, a.two_hop_correct, a.direct_correct) == (60, 30, 27)
    assert (a.both, a.two_hop_only, a.direct_only, a.neither) == (24, 6, 3, 27)
    assert a.direct_given_two_hop == pytest.approx(0.8) and a.difference == pytest.approx(-0.05)
    assert a.difference_lo <= -0.05 <= a.difference_hi
    assert a.direct_given_two_hop_lo > 0.5 and a.shortcut  # most two-hop answers come without the country step
    assert sc.loc["selection", "n"] + sc.loc["evaluation", "n"] == 60
    text = LG.shortcut_reading(a)
    assert "27/60 = 45%" in text and "30/60 = 50%" in text and "admits a shortcut" in text
    assert "about as accurate as" in text

    none = LG.shortcut_control(_paired_evals(two_hop, [False] * 60), n_boot=200).iloc[0]
    assert not none.shortcut and none.difference_hi < 0  # the direct prompt gets nothing: no shortcut
    assert "less accurate than" in LG.shortcut_reading(none) and "admits" not in LG.shortcut_reading(none)
    shuffled = _paired_evals(two_hop, direct)
    shuffled.loc[shuffled.task == "direct", "city"] = shuffled.loc[shuffled.task == "direct", "city"].to_numpy()[::-1]
    with pytest.raises(ValueError, match="same cities"):
        LG.shortcut_control(shuffled)


@pytest.mark.real_model
def test_every_city_is_found_in_every_prompt(smollm):
    tok = smollm.tokenizer
    df = LD.load_languages()
    for task in LG.TASKS:
        if task == "country_to_language":
            continue
        for city, prompt in zip(df["city"], LG.task_prompts(df, tok, task)):
            pos = LG.city_positions(LG.prompt_tokens(tok, prompt), city)
            assert pos and pos[0] > 0, (task, city)  # never the first (attention-sink) token
    ids = LD.first_token_ids(list(df["language"]), tok)
    assert "Mandarin" not in ids.multi_token or ids.ids  # multi-token names are reported, not dropped


# ---------------------------------------------------------------------------------------------------------------
# selection / evaluation split


def test_split_by_key_rules_on_a_hand_made_table():
    keys = ["a", "a", "b", "c", "d", "e", "f", "g", "g"]
    strata = ["X", "X", "X", "X", "Y", "Y", "Z", "W", "W"]
    sel = CS.split_by_key(keys, strata, seed=3)
    by_key = {}
    for k, s in zip(keys, sel):
        by_key.setdefault(k, set()).add(bool(s))
    assert all(len(v) == 1 for v in by_key.values()), "rows of one key fall on one side"
    side = {k: v.pop() for k, v in by_key.items()}
    assert sum(side[k] for k in "abc") == 2  # ceil(3/2) of X's keys select
    assert side["d"] != side["e"]  # Y: one each
    assert side["f"] and side["g"]  # single-key strata: selection only
    assert np.array_equal(sel, CS.split_by_key(keys, strata, seed=3)), "seeded"
    assert any(not np.array_equal(sel, CS.split_by_key(keys, strata, seed=s)) for s in range(10))
    with pytest.raises(ValueError, match="several strata"):
        CS.split_by_key(["a", "a"], ["X", "Y"])
    with pytest.raises(ValueError):
        CS.split_by_key(["a"], ["X", "Y"])


def test_split_by_city_puts_every_country_on_both_sides():
    df = LD.load_languages()
    split = LG.split_by_city(df, seed=0)
    assert set(split) == {"selection", "evaluation"}
    both = pd.DataFrame({"country": df["country"], "split": split}).groupby("country")["split"].nunique()
    assert (both == 2).all()
    n_sel = (split == "selection").sum()
    assert abs(n_sel - (len(df) - n_sel)) <= df["country"].nunique()


# ---------------------------------------------------------------------------------------------------------------
# AUROC groups and permutation nulls


def test_class_aurocs_equal_the_stats_module_and_skip_small_classes():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(7, 5))
    classes = np.array(["A", "A", "B", "B", "B", "C", "A"])
    got = CS.class_aurocs(scores, classes, min_positives=2)
    assert set(got) == {"A", "B"}  # C has one prompt
    for c, a in got.items():
        assert np.allclose(a, auroc_per_unit(scores, classes == c))


def test_permutation_nulls_find_a_planted_signal_and_not_noise():
    rng = np.random.default_rng(1)
    labels = np.array([1] * 10 + [0] * 10)
    noise = rng.normal(size=(20, 200))
    planted = noise.copy()
    planted[:, :5] += 10 * labels[:, None]  # five units separate the labels perfectly
    res = permutation_null_counts(planted, labels, high=0.95, n_perm=50, seed=0)
    assert res["observed"] >= 5 and res["observed"] > res["null_q95"] and res["p_value"] < 0.05
    flat = permutation_null_counts(noise, labels, high=0.95, n_perm=50, seed=0)
    assert flat["p_value"] > 0.05
    with pytest.raises(ValueError):
        permutation_null_counts(noise, labels)
    classes = np.array(["A"] * 5 + ["B"] * 5 + ["C"] * 10)
    planted = noise.copy()
    planted[:5, :3] += 10  # three "A" units
    res = CS.class_group_null(planted, classes, high=0.99, n_perm=50, seed=0)
    assert res["n_classes"] == 3 and res["observed"] >= 3 and res["observed"] > res["null_q95"]


def test_group_counts_on_hand_made_circuits():
    torch.manual_seed(0)
    P, L, U = 8, 2, 6
    summed = torch.randn(P, L, U)
    summed[:4, 1, 2] += 20  # neuron L1/N2 marks country X (prompts 0-3)
    two_last = torch.randn(P, L, U)
    two_last[:, 0, 5] += 20  # L0/N5 fires at the last position whenever the answer is a language
    hop2 = CS.PromptCircuits(["p"] * P, pd.DataFrame(), summed, two_last, torch.ones(P), [[]] * P, 0.005)
    hop1 = CS.PromptCircuits(["q"] * P, pd.DataFrame(), torch.randn(P, L, U), torch.randn(P, L, U), torch.ones(P),
                             [[]] * P, 0.005)
    rows = pd.DataFrame({"country": ["X"] * 4 + ["Y"] * 4, "language": ["x"] * 4 + ["y"] * 4})
    counts = LG.group_counts(hop2, hop1, rows, n_perm=30, seed=0).set_index("group")
    assert counts.loc["which country", "observed"] >= 1
    assert counts.loc["say a language", "observed"] >= 1
    auc = LG.say_language_auroc(hop2, hop1)
    assert auc[0, 5] == 1.0


def test_at_city_attribution_sums_the_city_positions():
    s = [torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)]
    pc = CS.PromptCircuits(["x"], pd.DataFrame(), torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), torch.ones(1),
                           [["The", " Mar", " del", " is"]], 0.005, s)
    got = LG.at_city_attribution(pc, ["Mar del"])
    assert torch.equal(got[0], s[0][:, 1:3].sum(1))
    with pytest.raises(ValueError):
        LG.at_city_attribution(pc, ["Lyon"])


# ---------------------------------------------------------------------------------------------------------------
# control neuron sets and the country group


def test_random_and_matched_neurons():
    got = CS.random_neurons(20, (3, 10), exclude=[(0, 0), (2, 9)], seed=0)
    assert len(set(got)) == 20 and not {(0, 0), (2, 9)} & set(got)
    assert all(0 <= l < 3 and 0 <= u < 10 for l, u in got)
    assert got == CS.random_neurons(20, (3, 10), exclude=[(0, 0), (2, 9)], seed=0)
    with pytest.raises(ValueError):
        CS.random_neurons(30, (3, 10), exclude=[(0, 0)])
    strength = np.array([[1.0, 2.0, 3.0, 10.0], [2.1, 9.0, 0.5, 3.05]])
    chosen = [(0, 3), (0, 1)]  # strengths 10 and 2
    got = CS.matched_neurons(strength, chosen)
    assert got == [(1, 1), (1, 0)]  # 9 is nearest to 10; 2.1 nearest to 2
    assert CS.matched_neurons(strength, chosen, exclude=[(1, 1)])[0] == (1, 3)  # then 3.05


def test_country_group_ranks_by_both_countries():
    a = np.zeros((2, 3))
    b = np.zeros((2, 3))
    a[0, 1], b[1, 2], a[1, 0], b[1, 0] = 0.9, 0.8, 0.5, 0.5
    assert LG.country_group({"X": a, "Y": b}, "X", "Y", 3) == [(1, 0), (0, 1), (1, 2)]


def test_patch_pairs_rules(tiny_llama):
    rows = pd.DataFrame({"city": ["dallas", "austin", "texas", "state"], "country": ["A", "B", "A", "C"],
                         "language": ["x", "y", "x", "y"]})
    pairs = LG.patch_pairs(rows, tiny_llama.tokenizer)
    assert (pairs["source_country"] != pairs["target_country"]).all()
    assert len(pairs) == 12 - 2  # every ordered pair except the two inside country A
    kinds = dict(zip(zip(pairs["source"], pairs["target"]), pairs["kind"]))
    assert kinds[("austin", "state")] == "same language" and kinds[("dallas", "austin")] == "other language"
    assert len(LG.patch_pairs(rows, tiny_llama.tokenizer, n_pairs=3, seed=0)) == 3
    assert set(LG.patch_pairs(rows, tiny_llama.tokenizer, countries=["A", "C"])["target_country"]) <= {"A", "C"}


# ---------------------------------------------------------------------------------------------------------------
# patching and steering bookkeeping


def _one_pair() -> pd.DataFrame:
    """One source/target pair spelled in words the tiny tokenizer knows."""
    return pd.DataFrame([{"source": "dallas", "target": "austin", "source_country": "texas",
                          "target_country": "state", "source_language": "capital", "target_language": "city",
                          "kind": "other language"}])


def test_patch_sweep_reports_what_neuronlib_patch_gives(tiny_llama):
    model = tiny_llama
    tok = model.tokenizer
    pairs = _one_pair()
    neurons = [(0, 3), (1, 7)]
    variants = {"country group 2": LG.neuron_variant(lambda r: neurons),
                "every layer-0 neuron (dense)": LG.dense_variant(model, "mlp_acts", layers=[0]),
                "embedding (dense)": LG.dense_variant(model, "embed")}
    got = LG.patch_sweep(model, pairs, variants, progress=False)
    assert len(got) == 2 * 3
    for task, answer_src, answer_tgt in (("two_hop", "capital", "city"), ("city_to_country", "texas", "state")):
        build = LG.TASKS[task][0]
        src, tgt = build({"city": "dallas"}, tok), build({"city": "austin"}, tok)
        pos = LG.city_positions(LG.prompt_tokens(tok, src), "dallas")
        assert pos
        res = neuronlib.patch(model, [src], [tgt], CS.at_positions(neurons, pos), metric=None)
        p = res.logits.float().softmax(-1)[0]
        row = got[(got["task"] == task) & (got["variant"] == "country group 2")].iloc[0]
        assert row["p_source"] == pytest.approx(float(p[CS.name_ids(tok, answer_src)[0]]), abs=1e-6)
        assert row["p_target"] == pytest.approx(float(p[CS.name_ids(tok, answer_tgt)[0]]), abs=1e-6)
        assert row["n_neurons"] == 2
    # a dense patch of the embedding at the only token that differs reproduces the target prompt's output exactly
    emb = got[(got["variant"] == "embedding (dense)") & (got["task"] == "two_hop")].iloc[0]
    tgt_probs = neuronlib.patch(model, [LG.TASKS["two_hop"][0]({"city": "austin"}, tok)],
                                [LG.TASKS["two_hop"][0]({"city": "austin"}, tok)], [], metric=None)
    q = tgt_probs.logits.float().softmax(-1)[0]
    assert emb["p_target"] == pytest.approx(float(q[CS.name_ids(tok, "city")[0]]), abs=1e-5)


def test_patch_summary_and_verdict_on_a_hand_made_frame():
    rows = []
    cases = (("country group 10", [1] * 18 + [0] * 2), ("random 10", [0] * 20), ("matched 10", [0] * 19 + [1]))
    for variant, succ in cases:
        for task, answer in (("two_hop", "language"), ("city_to_country", "country")):
            s = succ if task == "two_hop" or variant != "country group 10" else [0] * 20
            for j, v in enumerate(s):
                rows.append({"variant": variant, "task": task, "answer": answer, "pair": j, "kind": "other language",
                             "n_neurons": 10, "p_source": 0.1, "p_target": 0.5 * v, "success": bool(v),
                             "source_kept": not v, "prefers_target": bool(v)})
    summ = LG.patch_summary(pd.DataFrame(rows))
    g = summ.set_index(["task", "variant"])
    assert g.loc[("two_hop", "country group 10"), "success"] == pytest.approx(0.9)
    grp = g.loc[("two_hop", "country group 10")]
    assert grp["success_lo"] < 0.9 < grp["success_hi"]
    assert g.loc[("two_hop", "country group 10"), "p_target"] == pytest.approx(0.45)
    v = LG.composition_verdict(summ).iloc[0]
    assert v["size"] == "10" and v["language_beyond_controls"] and not v["country_beyond_controls"]


def test_steering_controls_mark_changed_answers(tiny_llama):
    model = tiny_llama
    prompts = ["the capital of the state of texas is the city of", "dallas is a city in the state of"]
    rows = pd.DataFrame({"language": ["austin", "texas"], "country": ["texas", "state"], "city": ["dallas", "dallas"]})
    sets = {"a": [(0, 3), (1, 7)], "b": [(1, 2)]}
    sweep = LG.steering_controls(model, prompts, rows, sets, [0.0, 1.0, 8.0], progress=False)
    assert len(sweep) == 2 * 3 * 2
    assert not sweep[sweep["multiplier"] == 1.0]["changed"].any()
    one = sweep[(sweep["set"] == "a") & (sweep["multiplier"] == 8.0)].reset_index(drop=True)
    last = [len(LG.prompt_tokens(model.tokenizer, p)) - 1 for p in prompts]
    for i, p in enumerate(prompts):
        r = neuronlib.steer(model, [p], CS.at_positions(sets["a"], [last[i]]), multiplier=8.0, positions="circuit",
                            metric=None)
        q = r.logits.float().softmax(-1)[0]
        assert one["p_language"][i] == pytest.approx(float(q[CS.name_ids(model.tokenizer, rows["language"][i])[0]]),
                                                     abs=1e-6)
    summ = LG.steering_summary(sweep)
    assert set(summ["set"]) == {"a", "b"} and (summ["p_language_lo"] <= summ["p_language"] + 1e-12).all()
    for col in ("top_is_answer", "top_is_country", "top_is_city"):
        want = sweep.groupby(["set", "multiplier"], sort=False)["top_is"].apply(
            lambda t, k=col[7:]: (t == ("language" if k == "answer" else k)).mean()).to_numpy()
        assert np.allclose(summ[col].to_numpy(), want)


# ---------------------------------------------------------------------------------------------------------------
# the notebook


def test_notebook_has_a_tagged_parameters_cell_and_no_smoke_outputs():
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert "parameters" in code[0]["metadata"].get("tags", [])
    source = "".join(code[0]["source"])
    for name in ("MODEL", "SMOKE", "FIGURES_DIR", "CACHE_DIR", "RESULTS_DIR", "REFRESH", "N_PERM", "PATCH_SIZES"):
        assert f"\n{name} =" in "\n" + source, name
    assert "SMOKE = False" in source and "'" not in source  # papermill cannot parse quotes in comments
    assert any("setup(" in "".join(c["source"]) for c in code[1:3])  # after papermill's injected-parameters cell
    from test_notebooks import smoke_outputs

    assert not smoke_outputs(nb), "committed with a SMOKE run's outputs (commit none, or the full run's)"
    assert max(len("".join(c["source"]).splitlines()) for c in code) <= 30


# ---------------------------------------------------------------------------------------------------------------
# the patch dose curve


def test_rank_by_delta_and_random_nodes_on_a_hand_made_grid():
    delta = torch.zeros(2, 5, 3)
    delta[1, 3, 2], delta[0, 4, 0], delta[0, 1, 1] = -5.0, 4.0, 9.0  # position 1 is outside the set
    got = LG.rank_by_delta(delta, [3, 4], 2)
    assert got == [Node("mlp_acts", 1, 3, 2), Node("mlp_acts", 0, 4, 0)]
    assert len(LG.rank_by_delta(delta, [3, 4], 100)) == 2 * 2 * 3
    rnd = LG.random_nodes(delta.shape, [3, 4], 7, np.random.default_rng(0))
    assert len(set(rnd)) == 7 and {n.position for n in rnd} <= {3, 4}
    assert all(0 <= n.layer < 2 and 0 <= n.unit < 3 for n in rnd)
    assert LG.patch_positions(9, [4, 5]) == {"city tokens": [4, 5], "later positions": [6, 7, 8]}


def test_delta_patch_sweep_patches_the_largest_differences(tiny_llama):
    model = tiny_llama
    tok = model.tokenizer
    pairs = _one_pair()
    got = LG.delta_patch_sweep(model, pairs, [3, 40], progress=False)
    assert len(got) == 2 * 2 * 2 * 2  # tasks x where x selection x sizes
    from neuronlib.activations import read_sites

    build = LG.TASKS["two_hop"][0]
    src, tgt = build({"city": "dallas"}, tok), build({"city": "austin"}, tok)
    vals, _ = read_sites(model, model.tokenize([src, tgt]), ("mlp_acts",))
    acts = torch.stack([v.float() for v in vals["mlp_acts"]])
    delta = acts[:, 1] - acts[:, 0]
    pos = LG.patch_positions(delta.shape[1], LG.city_positions(LG.prompt_tokens(tok, src), "dallas"))
    for where in LG.WHERE:
        nodes = LG.rank_by_delta(delta, pos[where], 3)
        assert abs(float(delta[nodes[0].layer, nodes[0].position, nodes[0].unit])) == pytest.approx(
            float(delta[:, pos[where]].abs().max()))
        q = neuronlib.patch(model, [src], [tgt], nodes, metric=None).logits.float().softmax(-1)[0]
        row = got[(got["task"] == "two_hop") & (got["where"] == where) & (got["size"] == 3)
                  & (got["selection"] == "top |Δ|")].iloc[0]
        assert row["p_target"] == pytest.approx(float(q[CS.name_ids(tok, "city")[0]]), abs=1e-6)
        assert row["n_positions"] == len(pos[where]) and row["n_neurons"] == 3
    summ = LG.dose_summary(got)
    assert len(summ) == 2 * 2 * 2 and {"success", "random_success", "random_hi", "beyond_random"} <= set(summ.columns)


def test_dose_summary_calls_a_verdict_from_intervals():
    rows = []
    for sel, k in (("top |Δ|", 19), ("random", 1)):
        for n, kk in ((10, 0), (3000, k)):
            for j in range(20):
                rows.append({"task": "two_hop", "answer": "language", "kind": "other language", "where": "city tokens",
                             "size": n, "selection": sel, "variant": f"{sel} {n}", "n_neurons": n, "pair": j,
                             "p_source": 0.5, "p_target": 0.1, "success": j < kk, "source_kept": j >= kk,
                             "prefers_target": j < kk})
    d = LG.dose_summary(pd.DataFrame(rows)).set_index("size")
    assert d.loc[3000, "beyond_random"] and not d.loc[10, "beyond_random"]
    assert d.loc[3000, "success"] == pytest.approx(0.95) and d.loc[3000, "random_success"] == pytest.approx(0.05)
