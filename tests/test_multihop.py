"""neuronlib.describe and neuronlib.multihop on the tiny models, plus the notebook's parameters cell."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import hooked_forward

import neuronlib
from neuronlib import describe as D
from neuronlib import tracing
from neuronlib.paper import casestudy as CS
from neuronlib.paper import multihop as MH
from neuronlib.sites import Node
from neuronlib.stats import auroc_per_unit

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "03_multihop_steering.ipynb"
PROMPTS = ["the capital of the state of texas is the city of", "dallas is a city in the state of texas and the"]


# ---------------------------------------------------------------------------------------------------------------
# descriptions


def _hand_lens(model, layer, unit):
    """W_U @ (W_down[:, u] * norm weights), written out from the HF modules."""
    hf = model.hf
    lyr = hf.model.layers[layer]
    d = lyr.mlp.down_proj.weight[:, unit].double()
    if hasattr(lyr, "post_feedforward_layernorm"):  # Gemma-3: the MLP output is normed before the residual
        d = d * (1.0 + lyr.post_feedforward_layernorm.weight.double())
    final = hf.model.norm.weight.double() + (1.0 if "gemma" in model.name else 0.0)
    return hf.lm_head.weight.double() @ (d * final)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma"])
def test_output_lens_matches_a_hand_computation(name, tiny_llama, tiny_gemma):
    model = {"tiny-llama": tiny_llama, "tiny-gemma": tiny_gemma}[name]
    neurons = [(0, 3), (1, 0), (1, 23), (0, 3)]  # a repeat keeps its row
    frame = D.output_lens(model, neurons, k=4, chunk=2)
    assert list(zip(frame["layer"], frame["unit"])) == neurons
    for row in frame.itertuples():
        hand = _hand_lens(model, row.layer, row.unit)
        top = hand.topk(4)
        bot = (-hand).topk(4)
        assert row.top_tokens == [model.tokenizer.decode([i]) for i in top.indices.tolist()]
        assert row.bottom_tokens == [model.tokenizer.decode([i]) for i in bot.indices.tolist()]
        assert np.allclose(row.top_logits, top.values.numpy(), atol=1e-4)
        assert np.allclose(row.bottom_logits, (-bot.values).numpy(), atol=1e-4)
    lens = D.lens_logits(model, 1, [0, 23])
    assert torch.allclose(lens[1].double(), _hand_lens(model, 1, 23), atol=1e-5)


def test_describe_uses_the_active_side(tiny_llama):
    frame = D.describe(tiny_llama, [(1, 4, "+"), (1, 4, "-"), Node("mlp_acts", 1, 0, 4)], k=3)
    assert frame["label"].tolist() == ["L1/N4+", "L1/N4-", "L1/N4"]
    assert frame["promotes"][0] == frame["top_tokens"][0] == frame["suppresses"][1]
    assert frame["promotes"][1] == frame["bottom_tokens"][1]
    assert frame["promotes"][2] == frame["top_tokens"][2]
    with pytest.raises(ValueError, match="out of range"):
        D.describe(tiny_llama, [(5, 0)])


def test_activation_maxima_sweep_matches_brute_force(tiny_llama):
    model = tiny_llama
    torch.manual_seed(0)
    windows = torch.randint(4, len(model.tokenizer), (6, 9))
    res = D._sweep(model, windows, k=3, batch_size=4, progress=False)
    inputs = {"input_ids": windows, "attention_mask": torch.ones_like(windows)}
    _, values, _ = hooked_forward(model, inputs, ("mlp_acts",))
    for layer, v in enumerate(values["mlp_acts"]):
        a = v[:, 1:, :].reshape(-1, model.d_mlp)  # position 0 of each window is skipped
        flat = (torch.arange(6)[:, None] * 9 + torch.arange(9)[None, :])[:, 1:].reshape(-1)
        top = a.topk(3, dim=0)
        bot = a.topk(3, dim=0, largest=False)
        assert torch.allclose(res["top_values"][layer], top.values.T, atol=1e-5)
        assert torch.allclose(res["bottom_values"][layer], bot.values.T, atol=1e-5)
        assert torch.equal(res["top_index"][layer], flat[top.indices].T)
        assert torch.allclose(res["mean"][layer], a.mean(0), atol=1e-5)
    maxima = D.ActivationMaxima(res["top_values"], res["top_index"], res["bottom_values"], res["bottom_index"],
                                res["mean"], res["mean_abs"], windows, windows.numel(), {})
    (value, text), = D.top_contexts(model, maxima, 1, 2, "-", n=1, before=2, after=1)
    assert value == float(res["bottom_values"][1, 2, 0])
    w, p = divmod(int(res["bottom_index"][1, 2, 0]), 9)
    assert f"[[{model.tokenizer.decode([int(windows[w, p])])}]]" in text


# ---------------------------------------------------------------------------------------------------------------
# circuits


def _hand_attribution():
    """B=2, L=2, T=3, U=2; example 1 has 2 real tokens (left-padded: padded index 0 is padding)."""
    s = torch.zeros(2, 2, 3, 2)
    s[0, 0, 0, 1] = 2.0      # >= 1.0 (tau * |m| = 0.01 * 100)
    s[0, 1, 2, 0] = -1.5     # negative scores count by |score|
    s[0, 1, 1, 1] = 0.99     # just below
    s[1, 0, 0, 0] = 5.0      # a padding position: never selected
    s[1, 0, 1, 1] = 0.1      # = tau * |m| = 0.01 * |-10|: selected (>=)
    s[1, 1, 2, 0] = -0.3
    s[1, 1, 2, 1] = 0.05
    return s, torch.tensor([100.0, -10.0]), torch.tensor([3, 2])


def test_select_circuit_threshold_on_a_hand_made_case():
    s, metric, lengths = _hand_attribution()
    tokens = [["a", "b", "c"], ["x", "y"]]
    got = CS.select_circuit(s, metric, lengths, tau=0.01, tokens=tokens)
    rows = {(e, l, p, u, round(sc, 5), t) for e, l, p, u, sc, t in
            got[["example", "layer", "position", "unit", "score", "token"]].itertuples(index=False)}
    assert rows == {(0, 0, 0, 1, 2.0, "a"), (0, 1, 2, 0, -1.5, "c"), (1, 0, 0, 1, 0.1, "x"), (1, 1, 1, 0, -0.3, "y")}
    assert got[got["example"] == 0]["score"].abs().is_monotonic_decreasing
    assert len(CS.select_circuit(s, metric, lengths, tau=0.0)) == 2 * 2 * 3 * 2 - 2 * 2  # all real positions
    with pytest.raises(ValueError):
        CS.select_circuit(s[0], metric, lengths)


def test_trace_circuits_is_select_circuit_of_relp(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("NEURONLIB_CACHE", str(tmp_path))
    prompts = PROMPTS + ["the city of austin"]
    pc = CS.trace_circuits(tiny_llama, prompts, tau=0.02, chunk=2, keep_scores=True, progress=False)
    att = neuronlib.attribute(tiny_llama, prompts, metric="topk_logits", k=5, method="relp", baseline="zero")
    want = CS.select_circuit(att["mlp_acts"], att.metric, att.lengths, tau=0.02, tokens=att.tokens)
    key = ["example", "layer", "position", "unit"]
    a = pc.nodes.sort_values(key).reset_index(drop=True)
    b = want.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a[key + ["token"]], b[key + ["token"]])
    assert np.allclose(a["score"], b["score"], atol=1e-5)
    assert torch.allclose(pc.summed, att["mlp_acts"].sum(2), atol=1e-5)
    assert torch.allclose(pc.last, att["mlp_acts"][:, :, -1], atol=1e-5)
    T = att["mlp_acts"].shape[2]
    assert torch.allclose(pc.scores[2].float(), att["mlp_acts"][2, :, T - 4:], atol=1e-2)  # 4 real tokens
    again = CS.trace_circuits(tiny_llama, prompts, tau=0.02, chunk=2, keep_scores=True, progress=False)  # cached
    pd.testing.assert_frame_equal(again.nodes, pc.nodes)
    sub = pc.subset([2, 0])
    assert sub.prompts == [prompts[2], prompts[0]] and set(sub.nodes["example"]) <= {0, 1}
    assert len(sub.circuit(0)) == len(pc.circuit(2))


def test_name_positions():
    tokens = ["The", " capital", " of", " New", " York", " is", " New"]
    assert CS.name_positions(tokens, "New York") == [3, 4]
    assert CS.name_positions(tokens, "Texas") == []
    assert CS.name_positions(["Los", " Angeles", " is"], "Los Angeles") == [0, 1]


# ---------------------------------------------------------------------------------------------------------------
# AUROC groups


def test_mixed_set_aurocs_equal_the_stats_module():
    torch.manual_seed(1)
    summed = torch.randn(6, 2, 5)
    last = torch.randn(6, 2, 5)
    hop1 = CS.PromptCircuits(["p"] * 3, pd.DataFrame(), summed[:3], last[:3], torch.ones(3), [[]] * 3, 0.005)
    hop2 = CS.PromptCircuits(["p"] * 3, pd.DataFrame(), summed[3:], last[3:], torch.ones(3), [[]] * 3, 0.005)
    mixed = MH.MixedSet.from_circuits(hop1, hop2, ["Texas", "Ohio", "Iowa"], keep1=[True, True, False])
    assert mixed.states == ["Texas", "Ohio", "Texas", "Ohio", "Iowa"]
    keep = [0, 1, 3, 4, 5]
    labels = np.array([0, 0, 1, 1, 1])
    assert np.allclose(mixed.auroc_capital(), auroc_per_unit(last[keep].reshape(5, 10).numpy(), labels).reshape(2, 5))
    tx = np.array([1, 0, 1, 0, 0])
    assert np.allclose(mixed.auroc_state("Texas"), auroc_per_unit(summed[keep].reshape(5, 10).numpy(), tx).reshape(2, 5))
    with pytest.raises(ValueError):
        mixed.auroc_state("Utah")


# ---------------------------------------------------------------------------------------------------------------
# steering and patching


def _hook_probs(model, prompts, scale_at):
    """Softmax of the last logits with neurons scaled by a plain torch hook: ``scale_at[(layer)] = [(b, pos, unit,
    mult)]`` in padded positions."""
    inputs = model.tokenize(prompts)
    replace = {}
    for layer, items in scale_at.items():
        def f(v, items=items):
            v = v.clone()
            for b, pos, unit, mult in items:
                v[b, pos, unit] = v[b, pos, unit] * mult
            return v
        replace[("mlp_acts", layer)] = f
    logits, _, _ = hooked_forward(model, inputs, ("mlp_acts",), replace=replace)
    return logits.detach().float().softmax(-1)


@pytest.mark.parametrize("mult", [0.0, 0.5, 2.0, -1.0])
def test_steering_matches_a_torch_hook(tiny_llama, mult):
    model = tiny_llama
    prompts = ["the capital of the state of texas is the city of", "dallas is in texas and the capital is"]
    lengths = [len(p.split()) for p in prompts]
    T = max(lengths)
    nodes = [[Node("mlp_acts", 0, 2, 7), Node("mlp_acts", 1, 10, 3)], [Node("mlp_acts", 0, 4, 7)]]
    got = neuronlib.steer(model, prompts, nodes, multiplier=mult, positions="circuit", metric=None).probs()
    want = _hook_probs(model, prompts, {0: [(0, 2 + T - lengths[0], 7, mult), (1, 4 + T - lengths[1], 7, mult)],
                                        1: [(0, 10 + T - lengths[0], 3, mult)]})
    assert torch.allclose(got, want, atol=1e-6)
    if mult != 1.0:
        plain = torch.softmax(tracing.logits(model, model.tokenize(prompts)).float(), -1)
        assert (got - plain).abs().max() > 1e-4  # the neurons matter, so the test can fail

    # steering_sweep reports exactly those probabilities (and leaves a prompt without nodes unsteered)
    df = pd.DataFrame({"city": ["dallas"] * 3, "state": ["texas"] * 3, "capital": ["austin"] * 3})
    three = prompts + ["what is the capital of the state"]
    sweep = MH.steering_sweep(model, three, df, nodes + [[]], [mult, 1.0], progress=False)
    s = sweep[sweep["multiplier"] == mult].reset_index(drop=True)
    austin, texas = model.token_id(" austin"), model.token_id(" texas")
    assert np.allclose(s["p_capital"][:2], want[:, austin].numpy(), atol=1e-6)
    assert np.allclose(s["p_state"][:2], want[:, texas].numpy(), atol=1e-6)
    one = sweep[sweep["multiplier"] == 1.0].reset_index(drop=True)
    assert s["p_capital"][2] == pytest.approx(one["p_capital"][2], abs=1e-7) and s["n_steered"][2] == 0


def test_flip_fraction_on_a_hand_made_sweep():
    sweep = pd.DataFrame({"multiplier": [1.0] * 3 + [0.0] * 3, "example": [0, 1, 2] * 2,
                          "top_is": ["capital", "capital", "city", "state", "capital", "state"]})
    fl = MH.flip_fraction(sweep).set_index("multiplier")
    assert fl.loc[0.0, "n"] == 2 and fl.loc[0.0, "flip_to_state"] == 0.5 and fl.loc[1.0, "flip_to_state"] == 0.0
    from neuronlib.stats import wilson_interval

    assert (fl.loc[0.0, "flip_to_state_lo"], fl.loc[0.0, "flip_to_state_hi"]) == pytest.approx(wilson_interval(1, 2))
    assert fl.loc[1.0, "flip_to_state_lo"] == 0.0 and fl.loc[1.0, "flip_to_state_hi"] > 0.5  # 0 of 2: wide


def test_accuracy_table_pools_and_carries_wilson_intervals():
    evals = pd.DataFrame({"task": ["a"] * 4 + ["b"] * 3, "expected": ["capital"] * 4 + ["state"] * 3,
                          "correct": [True, True, False, True, False, False, True],
                          "top_is": ["capital", "capital", "city", "capital", "city", "other", "state"],
                          "p_capital": [0.5] * 7, "p_state": [0.2] * 7, "p_city": [0.1] * 7,
                          "rank_capital": [1] * 7, "rank_state": [2] * 7, "rank_city": [3] * 7})
    acc = CS.accuracy_table(evals).set_index("task")
    assert acc.loc["a", "correct"] == 3 and acc.loc["a", "accuracy"] == 0.75
    assert acc.loc["a", "top_is_city"] == 0.25 and acc.loc["b", "top_is_other"] == pytest.approx(1 / 3)
    assert acc.loc["a", "accuracy_lo"] < 0.75 < acc.loc["a", "accuracy_hi"]


# ---------------------------------------------------------------------------------------------------------------
# the notebook


def test_notebook_has_a_tagged_parameters_cell_and_no_smoke_outputs():
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    first = code[0]
    assert "parameters" in first["metadata"].get("tags", [])
    source = "".join(first["source"])
    for name in ("MODEL", "SMOKE", "STATES", "CORPUS_TOKENS", "MULTIPLIERS", "FIGURES_DIR", "CACHE_DIR", "RESULTS_DIR",
                 "REFRESH", "N_PERM", "TWO_HOP", "GROUP_MULTIPLIERS", "DOSE_SIZES", "DENSE_LAYERS", "MAX_PAIRS"):
        assert f"\n{name} =" in "\n" + source, name
    assert "SMOKE = False" in source
    from test_notebooks import smoke_outputs

    assert not smoke_outputs(nb), "committed with a SMOKE run's outputs (commit none, or the full run's)"
    text = "".join("".join(c["source"]) for c in code)
    for fig in ("fig7_dallas_circuit", "fig8_capital_scaling", "fig8e_dallas_group_scaling", "fig8f_composition"):
        assert fig in text
    assert 'MODEL = "qwen2.5-coder-1.5b"' in source  # the two-hop study runs on the model that does two hops
    # setup() follows the parameters (after papermill's injected-parameters cell in an executed copy)
    assert any("setup(" in "".join(c["source"]) for c in code[1:3])
    assert "'" not in source  # papermill cannot parse quotes in comments
    assert "MH.plot_" not in text and "S.save(" in text  # figures come from paper/figures.py, tables from results


# ---------------------------------------------------------------------------------------------------------------
# one-frame contrast, its null, steering toward a target, controls


def test_permute_within_keeps_each_stratum_and_the_paired_null_sees_a_confound():
    from neuronlib.stats import permutation_null_counts, permute_within

    rng = np.random.default_rng(0)
    labels = np.array([0, 1, 0, 1, 1, 1, 0])
    strata = np.array(["a", "a", "b", "b", "c", "c", "d"])
    for _ in range(20):
        p = permute_within(labels, strata, rng)
        for s in set(strata):
            assert sorted(p[strata == s]) == sorted(labels[strata == s])
    assert sorted(permute_within(labels, None, rng)) == sorted(labels)
    with pytest.raises(ValueError):
        permute_within(labels, strata[:3], rng)
    # states whose prompts all carry label 1 score high: a state effect, not a label effect. A free shuffle calls
    # it signal; a shuffle inside each state keeps every label where it is, so the null equals the observed count.
    n = 20
    strata = np.repeat(np.arange(n), 2)
    labels = np.repeat(np.arange(n) % 2, 2)
    scores = (labels[:, None] + 0.01 * rng.standard_normal((2 * n, 5))).astype(float)
    free = permutation_null_counts(scores, labels, high=0.9, n_perm=50, seed=0)
    paired = permutation_null_counts(scores, labels, high=0.9, n_perm=50, seed=0, strata=strata)
    assert free["observed"] == paired["observed"] == 5
    assert free["p_value"] < 0.05 and paired["p_value"] == 1.0
    # a label effect inside each state: one prompt of each label per state, the label-1 prompt scores higher
    labels = np.tile([0, 1], n)
    scores = (labels[:, None] + 0.01 * rng.standard_normal((2 * n, 5))).astype(float)
    assert permutation_null_counts(scores, labels, high=0.9, n_perm=50, seed=0, strata=strata)["p_value"] < 0.05


def test_frame_tasks_share_one_frame(tiny_llama):
    from neuronlib.data.capitals import FRAME

    df = pd.DataFrame({"city": ["dallas"], "state": ["texas"], "capital": ["austin"]})
    cap = MH.task_prompts(df, tiny_llama.tokenizer, "frame_capital")[0]
    st = MH.task_prompts(df, tiny_llama.tokenizer, "frame_state")[0]
    assert cap == FRAME.format(relation="capital", name="texas", kind="city")
    assert st == FRAME.format(relation="city", name="dallas", kind="state")
    assert MH.TASKS["frame_capital"][1] == "capital" and MH.TASKS["frame_state"][1] == "state"


@pytest.mark.parametrize("per_prompt", [False, True])
def test_set_at_last_matches_a_torch_hook(tiny_llama, per_prompt):
    model = tiny_llama
    prompts = ["the capital of the state of texas is the city of", "dallas is in texas and the"]
    neurons = [(0, 3), (1, 7), (0, 5)]
    values = np.array([[2.0, -1.0, 0.5], [-3.0, 4.0, 1.5]]) if per_prompt else np.array([2.0, -1.0, 0.5])
    got = CS.set_at_last(model, prompts, neurons, values).softmax(-1)
    inputs = model.tokenize(prompts)
    vals = values if per_prompt else np.stack([values] * 2)

    def setter(layer):
        def f(v):
            v = v.clone()
            for j, (l, u) in enumerate(neurons):
                if l == layer:
                    v[:, -1, u] = torch.tensor(vals[:, j], dtype=v.dtype)
            return v
        return f

    logits, _, _ = hooked_forward(model, inputs, ("mlp_acts",), replace={("mlp_acts", 0): setter(0),
                                                                        ("mlp_acts", 1): setter(1)})
    want = logits.detach().float().softmax(-1)
    assert torch.allclose(got, want, atol=1e-6)
    plain = CS.last_logits(model, prompts).softmax(-1)
    assert (got - plain).abs().max() > 1e-4  # the neurons matter, so the test can fail
    with pytest.raises(ValueError):
        CS.set_at_last(model, prompts, neurons, np.zeros(2))


def test_set_group_test_sets_the_donor_mean_and_scores_the_target(tiny_llama):
    model = tiny_llama
    prompts = ["the capital of the state of texas is the city of", "dallas is in texas and the"]
    donors = ["dallas is a city in the state of", "the city of austin is in the state of texas and"]
    rows = pd.DataFrame({"capital": ["austin", "city"], "state": ["texas", "state"], "city": ["dallas", "dallas"]})
    sets = {"g 2": [(0, 3), (1, 7)], "random 2": [(1, 1), (0, 9)]}
    got = CS.set_group_test(model, prompts, rows, sets, donors, target="state", kinds=MH.KINDS)
    assert len(got) == 4 and got.attrs["target"] == "state"
    g = got[got["set"] == "g 2"].reset_index(drop=True)
    mean = CS.last_activations(model, donors, sets["g 2"]).mean(0)
    q = CS.set_at_last(model, prompts, sets["g 2"], mean).softmax(-1)
    tok = model.tokenizer
    for i in range(2):
        sid = CS.name_ids(tok, rows["state"][i])[0]
        assert g["p_state"][i] == pytest.approx(float(q[i, sid]), abs=1e-6)
        assert g["success"][i] == (int(q[i].argmax()) == sid)
    summ = CS.set_group_summary(got, kinds=MH.KINDS)
    assert list(summ["role"]) == ["g", "random"] and list(summ["size"]) == [2, 2]
    assert summ["success"].tolist() == got.groupby("set", sort=False)["success"].mean().tolist()


def test_control_sets_and_beyond_controls():
    strength = np.arange(12, dtype=float).reshape(3, 4)
    ranked = [(2, 3), (2, 2), (0, 0)]
    sets = CS.control_sets("say a capital", ranked, [1, 3, 10], strength, seed=0)
    assert list(sets) == ["say a capital 1", "random 1", "matched 1", "say a capital 3", "random 3", "matched 3"]
    assert sets["say a capital 3"] == ranked
    assert not set(sets["random 3"]) & set(ranked)
    assert sets["matched 1"] == [(2, 2)]  # nearest strength to 11 (itself excluded)
    from neuronlib.stats import wilson_interval

    rows = []
    for role, k in (("say a capital", 18), ("random", 1), ("matched", 3)):
        lo, hi = wilson_interval(k, 20)
        rows.append({"role": role, "size": 5, "success": k / 20, "success_lo": lo, "success_hi": hi})
        lo, hi = wilson_interval(4, 20)
        rows.append({"role": role, "size": 50, "success": 0.2, "success_lo": lo, "success_hi": hi})
    v = CS.beyond_controls(pd.DataFrame(rows)).set_index("size")
    assert v.loc[5, "beyond_controls"] and not v.loc[50, "beyond_controls"]
    assert v.loc[5, "controls_max"] == pytest.approx(0.15)


def test_swap_variants_are_fixed_neuron_sets():
    strength = np.zeros((2, 5))
    strength[1, 4], strength[0, 2] = 3.0, 2.0
    pick = MH.top_at_position(strength, 6, 2)
    assert pick("a", "b") == pick("c", "d") == [Node("mlp_acts", 1, 6, 4), Node("mlp_acts", 0, 6, 2)]
    rnd = MH.random_at_position((2, 5), 6, 3, seed=1)("a", "b")
    assert len(set(rnd)) == 3 and all(n.position == 6 for n in rnd)


def test_group_circuit_names_groups_by_what_selected_them(tiny_llama):
    model = tiny_llama
    tokens = ["the", " capital", " of", " texas", " is", " dallas", " of"]
    circuit = pd.DataFrame({"layer": [0, 1, 0, 1, 1, 0], "position": [0, 3, 1, 6, 5, 6],
                            "unit": [1, 2, 3, 4, 5, 6], "score": [1.0] * 6})
    auc = np.full((model.n_layers, model.d_mlp), 0.5)
    auc[1, 4] = 0.95
    auc_state = np.full_like(auc, 0.99)  # a which-state AUROC no longer makes a group
    # the capital's first token must not be among the promoted tokens of these neurons
    cap = next(t for t in ("austin", "city", "state") if all(
        CS.name_ids(model.tokenizer, t)[0] not in ids for ids in MH.promoted_tokens(
            model, circuit["layer"], circuit["unit"], ["+"] * 6, k=MH.GroupRules.lens_k)))
    g = MH.group_circuit(model, circuit, tokens, activations=np.ones(6), auc_capital=auc, auc_state=auc_state,
                         state="texas", capital=cap, city="dallas")
    assert g["group"].fillna("-").tolist() == ["first token", "at ' texas'", "at ' capital'", "say a capital (AUROC)",
                                               "at ' dallas'", "-"]


# ---------------------------------------------------------------------------------------------------------------
# composition: set units at one position to their values on another prompt


@pytest.mark.parametrize("site", ["mlp_acts", "resid"])
def test_set_from_donors_matches_a_torch_hook(tiny_llama, site):
    model = tiny_llama
    prompts = ["the capital of the state of texas is the city of", "dallas is in texas and the"]
    width = model.d_mlp if site == "mlp_acts" else model.d_model
    gen = torch.Generator().manual_seed(0)
    donor = torch.randn(2, model.n_layers, width, generator=gen) * 3
    mask = torch.zeros(2, model.n_layers, width, dtype=torch.bool)
    mask[0, 0, [1, 4]] = True
    mask[1, 1, [0, 2, 5]] = True
    got = MH.set_from_donors(model, prompts, site, donor, mask, offset=-2).softmax(-1)

    def setter(layer):
        def f(v):
            v = v.clone()
            m = mask[:, layer]
            v[:, -2] = torch.where(m, donor[:, layer].to(v.dtype), v[:, -2])
            return v
        return f

    logits, _, _ = hooked_forward(model, model.tokenize(prompts), (site,),
                                  replace={(site, 0): setter(0), (site, 1): setter(1)})
    assert torch.allclose(got, logits.detach().float().softmax(-1), atol=1e-6)
    assert (got - CS.last_logits(model, prompts).softmax(-1)).abs().max() > 1e-4  # the edit matters
    with pytest.raises(ValueError):
        MH.set_from_donors(model, prompts, site, donor[:1], mask[:1])


def test_values_at_reads_the_position_from_the_end(tiny_llama):
    model = tiny_llama
    prompts = ["the capital of the state of texas is the city of", "dallas is in texas and the"]
    got = MH.values_at(model, prompts, "mlp_acts", offset=-2)
    _, values, _ = hooked_forward(model, model.tokenize(prompts), ("mlp_acts",))
    for layer in range(model.n_layers):
        assert torch.equal(got[:, layer], values["mlp_acts"][layer][:, -2].float())


def test_composition_swap_of_the_last_residual_gives_the_target_output(tiny_llama):
    """Setting the whole residual stream after the last layer at the last position to the target prompt's makes the
    source prompt's output the target's: p(target answer) and success follow the target prompt exactly."""
    model = tiny_llama
    prompts = {"a": "the capital of the state of texas is the city of", "b": "dallas is in texas and the",
               "c": "the keys to the cabinet"}
    tok = model.tokenizer
    plain = CS.last_logits(model, list(prompts.values())).softmax(-1)
    answers = {k: int(plain[i].argmax()) for i, k in enumerate(prompts)}
    answers["c"] = int(plain[2].argsort()[-2])  # not its top: success must be False for targets c
    donors = {s: dict(zip(prompts, MH.values_at(model, list(prompts.values()), s, offset=-1)))
              for s in ("resid", "mlp_acts")}
    last = torch.zeros(model.n_layers, model.d_model, dtype=torch.bool)
    last[-1] = True
    variants = {"resid after layer 1": ("resid", last),
                "none 0": ("mlp_acts", torch.zeros(model.n_layers, model.d_mlp, dtype=torch.bool))}
    pairs = [("a", "b"), ("b", "a"), ("a", "c"), ("c", "b")]
    got = MH.composition_swaps(model, prompts, answers, variants, pairs, offset=-1, donors=donors)
    full = got[got["variant"] == "resid after layer 1"].reset_index(drop=True)
    idx = {k: i for i, k in enumerate(prompts)}
    for j, (a, b) in enumerate(pairs):
        assert full["p_target_answer"][j] == pytest.approx(float(plain[idx[b], answers[b]]), abs=1e-5)
        assert full["success"][j] == (b != "c")
        assert full["top_token"][j] == tok.decode([int(plain[idx[b]].argmax())])
    none = got[got["variant"] == "none 0"].reset_index(drop=True)
    assert none["kept"][:2].all() and not none["success"].any() and (none["n_units"] == 0).all()
    summ = MH.composition_summary(got, n_boot=200)
    s = summ.set_index("variant")
    # "layer 1" is no dose size: the variant sets d_model units, not 1
    assert s.loc["resid after layer 1", "success"] == 0.75 and s.loc["resid after layer 1", "size"] == -1
    assert s.loc["resid after layer 1", "role"] == "resid after layer 1"
    assert s.loc["none 0", "role"] == "none" and s.loc["none 0", "size"] == 0
    assert s.loc["resid after layer 1", "sources"] == 3
    lo, hi = s.loc["resid after layer 1", ["success_lo", "success_hi"]]
    assert lo < 0.75 < hi


def test_scale_groups_at_one_is_the_plain_model_and_at_zero_removes_the_group(tiny_llama):
    model = tiny_llama
    prompt = "the capital of the state of texas is the city of"
    grouped = pd.DataFrame({"layer": [0, 1, 1], "position": [9, 9, 3], "unit": [3, 7, 2],
                            "group": ["g", "g", None]})
    answers = {"capital": 5, "state": 6}
    got = MH.scale_groups(model, prompt, grouped, [0, 1], answers=answers)
    assert list(got["group"]) == ["g", "g"] and (got["n_nodes"] == 2).all()
    plain = CS.last_logits(model, [prompt]).softmax(-1)[0]
    one = got[got["multiplier"] == 1].iloc[0]
    assert one["p_capital"] == pytest.approx(float(plain[5]), abs=1e-6)
    nodes = [Node("mlp_acts", 0, 9, 3), Node("mlp_acts", 1, 9, 7)]
    zero = neuronlib.ablate(model, [prompt], nodes, mode="zero", metric=None).logits.float().softmax(-1)[0]
    assert got[got["multiplier"] == 0].iloc[0]["p_state"] == pytest.approx(float(zero[6]), abs=1e-6)
    assert abs(float(zero[6]) - float(plain[6])) > 1e-5


def test_capitals_figures_redraw_from_the_committed_tables(tmp_path):
    """`make figures` draws figures 7 and 8 of the two-hop study from results/ alone (no model)."""
    import shutil

    from neuronlib.paper import figures as F

    names = ["fig7_dallas_circuit", "fig8_capital_scaling", "fig8e_dallas_group_scaling", "fig8f_composition"]
    registry = F.figure_registry()
    assert set(names) <= set(registry)
    repo = Path(__file__).resolve().parents[1] / "results"
    tables = {t for n in names for t in (*registry[n].tables, *registry[n].named.values())}
    for t in tables:
        for ext in ("csv", "json"):
            shutil.copy(repo / f"{t}.{ext}", tmp_path / f"{t}.{ext}")
    out = F.draw_all(tmp_path, tmp_path / "figures", names=names)
    for name in names:
        assert (tmp_path / "figures" / f"{name}.png").stat().st_size > 1000, out[name]
