"""ablate / patch / steer / evaluate_circuit (docs/method.md §4)."""
import pytest
import torch
from conftest import SVA_PAIRS, circuit_by_circuit, hooked_forward

import neuronlib
from neuronlib import tracing
from neuronlib.evaluation import evaluate_circuit
from neuronlib.interventions import ablate, patch, steer
from neuronlib.sites import Node

PAIRS = [p for p in SVA_PAIRS if len(p["clean_prefix"].split()) == 5]  # one token length


def plain_metric(model, prompts, good, bad):
    inputs = model.tokenize(prompts)
    with torch.no_grad():
        lg = tracing.logits(model, inputs)
    g = torch.tensor([model.token_id(a) for a in good])
    b = torch.tensor([model.token_id(a) for a in bad])
    return lg.gather(-1, g[:, None])[:, 0] - lg.gather(-1, b[:, None])[:, 0]


def test_ablating_nothing_reproduces_the_model(tiny):
    expected = plain_metric(tiny, [p["clean_prefix"] for p in PAIRS], [p["clean_answer"] for p in PAIRS],
                            [p["patch_answer"] for p in PAIRS])
    for mode in ("mean", "zero"):
        got = ablate(tiny, PAIRS, [], sites=("mlp_acts",), mode=mode).metric
        assert (got - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("mode", ["mean", "zero"])
def test_full_and_empty_circuits(tiny, mode):
    sites = ("mlp_acts", "attn_out")
    scores = neuronlib.attribute(tiny, PAIRS, method="atp", sites=sites)
    total = sum(scores[s][0].numel() for s in sites)
    frame = evaluate_circuit(tiny, scores, PAIRS, sizes=[0, 10, total], mode=mode)
    full = frame[frame["size"] == total].iloc[0]
    empty = frame[frame["size"] == 0].iloc[0]
    assert abs(full.faithfulness - 1) <= 1e-5 and abs(full.completeness) <= 1e-5
    assert abs(empty.faithfulness) <= 1e-5 and abs(empty.completeness - 1) <= 1e-5
    # m(∅) is "every node ablated": the same as ablating every node by hand
    all_nodes = [Node(s, l, t, u) for s in sites for l in range(tiny.n_layers) for t in range(5)
                 for u in range(tiny.site_width(s))]
    by_hand = ablate(tiny, PAIRS, all_nodes, mode=mode).metric.mean()
    assert abs(by_hand - full.m_empty) <= 1e-5
    assert abs(full.m_M - plain_metric(tiny, [p["clean_prefix"] for p in PAIRS], [p["clean_answer"] for p in PAIRS],
                                       [p["patch_answer"] for p in PAIRS]).mean()) <= 1e-5


def test_zero_ablating_one_neuron_matches_a_torch_hook(tiny):
    layer, pos, unit = 0, 3, 7  # layer 0: an earlier position reaches the last one through layer 1
    got = ablate(tiny, PAIRS, [Node("mlp_acts", layer, pos, unit)], mode="zero").metric

    def zero_it(v):
        v = v.clone()
        v[:, pos, unit] = 0
        return v

    logits, _, _ = hooked_forward(tiny, tiny.tokenize([p["clean_prefix"] for p in PAIRS]), ("mlp_acts",),
                                  replace={("mlp_acts", layer): zero_it})
    g = torch.tensor([tiny.token_id(p["clean_answer"]) for p in PAIRS])
    b = torch.tensor([tiny.token_id(p["patch_answer"]) for p in PAIRS])
    expected = (logits.gather(-1, g[:, None]) - logits.gather(-1, b[:, None]))[:, 0].detach()
    assert (got - expected).abs().max() <= 1e-5
    assert (got - ablate(tiny, PAIRS, [], sites=("mlp_acts",)).metric).abs().max() > 1e-6  # it did something


def test_mean_ablation_uses_the_counterfactual_mean(tiny_llama):
    node = Node("mlp_acts", 0, 4, 3)
    got = ablate(tiny_llama, PAIRS, [node], mode="mean").metric
    patch_inputs = tiny_llama.tokenize([p["patch_prefix"] for p in PAIRS])
    with torch.no_grad():
        _, values, _ = hooked_forward(tiny_llama, patch_inputs, ("mlp_acts",))
    mean = values["mlp_acts"][0][:, 4, 3].mean()

    def set_mean(v):
        v = v.clone()
        v[:, 4, 3] = mean
        return v

    logits, _, _ = hooked_forward(tiny_llama, tiny_llama.tokenize([p["clean_prefix"] for p in PAIRS]), ("mlp_acts",),
                                  replace={("mlp_acts", 0): set_mean})
    g = torch.tensor([tiny_llama.token_id(p["clean_answer"]) for p in PAIRS])
    b = torch.tensor([tiny_llama.token_id(p["patch_answer"]) for p in PAIRS])
    assert (got - (logits.gather(-1, g[:, None]) - logits.gather(-1, b[:, None]))[:, 0].detach()).abs().max() <= 1e-5


def test_steer_identity_and_zero(tiny):
    prompts = ["the keys to the cabinet", "the dog is"]
    neurons = [(0, 3), (1, 10), (1, 11)]
    base = ablate(tiny, prompts, [], sites=("mlp_acts",), metric=None).logits
    assert torch.equal(steer(tiny, prompts, neurons, multiplier=1.0).logits, base)
    steered0 = steer(tiny, prompts, neurons, multiplier=0.0)
    nodes = [Node("mlp_acts", l, t, u) for l, u in neurons for t in range(5)]
    zeroed = ablate(tiny, prompts, nodes, mode="zero", metric=None)
    assert torch.allclose(steered0.logits, zeroed.logits, atol=1e-6)
    assert not torch.allclose(steered0.logits, base)
    doubled = steer(tiny, prompts, neurons, multiplier=2.0).probs()
    assert torch.allclose(doubled.sum(-1), torch.ones(2))


def test_steer_scales_like_a_hook(tiny_llama):
    prompts = ["the keys to the cabinet"]
    got = steer(tiny_llama, prompts, [Node("mlp_acts", 1, 2, 5)], multiplier=-1.5, positions="circuit").logits

    def scale(v):
        v = v.clone()
        v[:, 2, 5] *= -1.5
        return v

    logits, _, _ = hooked_forward(tiny_llama, tiny_llama.tokenize(prompts), ("mlp_acts",), replace={("mlp_acts", 1): scale})
    assert (got - logits.detach()).abs().max() <= 1e-5


@pytest.mark.parametrize("mode, site", [("mean", "mlp_acts"), ("zero", "attn_out"), ("mean", "embed")])
def test_batched_sweep_equals_one_ablation_per_circuit(tiny_llama, mode, site):
    """evaluate_circuit runs every circuit as a block of rows of shared forwards (batch 3 splits blocks); each
    m(C), m(C̄) must equal ablating that circuit on its own."""
    scores = neuronlib.attribute(tiny_llama, PAIRS, method="relp", sites=(site,))
    sizes = [0, 3, 30, 10**6]
    frame = evaluate_circuit(tiny_llama, scores, PAIRS, sizes=sizes, mode=mode, batch_size=3).set_index("size")
    ref = circuit_by_circuit(tiny_llama, scores, PAIRS, site, sizes, mode)
    assert list(frame.index) == list(ref)
    for size, (m_c, m_cbar) in ref.items():
        assert abs(frame.loc[size, "m_C"] - m_c) <= 1e-5 and abs(frame.loc[size, "m_Cbar"] - m_cbar) <= 1e-5, size
    assert frame["m_C"].nunique() > 2  # the sizes make different circuits


def test_per_example_nodes_on_a_padded_batch_equal_one_prompt_at_a_time(tiny_llama):
    """One node set per example, prompts of different token lengths (left padding): node positions count from each
    prompt's first real token, so the batch must give what each prompt gives alone."""
    clean = ["the keys to the cabinet near the door", "the dog near the boy"]
    cf = ["the key to the cabinet near the door", "the dogs near the boy"]
    assert len(set(len(tiny_llama.tokenize([p])["input_ids"][0]) for p in clean)) == 2
    nodes = [[Node("mlp_acts", 0, 6, 2), Node("resid", 1, 2, 9), Node("mlp_acts", 1, 1, 3)],
             [Node("mlp_acts", 1, 0, 5), Node("resid", 0, 3, 1)]]
    patched = patch(tiny_llama, clean, cf, nodes, metric=None).logits
    ablated = ablate(tiny_llama, clean, nodes, mode="zero", metric=None).logits
    steered = steer(tiny_llama, clean, nodes, multiplier=3.0, positions="circuit", metric=None).logits
    plain = ablate(tiny_llama, clean, [], sites=("mlp_acts",), metric=None).logits
    for b in range(2):
        alone = (patch(tiny_llama, clean[b:b + 1], cf[b:b + 1], nodes[b], metric=None).logits,
                 ablate(tiny_llama, clean[b:b + 1], nodes[b], mode="zero", metric=None).logits,
                 steer(tiny_llama, clean[b:b + 1], nodes[b], multiplier=3.0, positions="circuit", metric=None).logits)
        for batched, single in zip((patched, ablated, steered), alone):
            assert torch.allclose(batched[b], single[0], atol=1e-5)
            assert not torch.allclose(batched[b], plain[b], atol=1e-4)  # the nodes matter


def test_patch_all_nodes_of_a_complete_cut_gives_the_counterfactual(tiny_llama):
    T = 5
    nodes = [Node("resid", 1, t, u) for t in range(T) for u in range(16)]
    got = patch(tiny_llama, PAIRS, nodes=nodes).metric
    expected = plain_metric(tiny_llama, [p["patch_prefix"] for p in PAIRS], [p["clean_answer"] for p in PAIRS],
                            [p["patch_answer"] for p in PAIRS])
    assert (got - expected).abs().max() <= 1e-5


def test_intervention_bad_input(tiny_llama):
    with pytest.raises(ValueError, match="out of range"):
        ablate(tiny_llama, PAIRS, [Node("mlp_acts", 0, 0, 999)])
    with pytest.raises(ValueError, match="out of range"):
        ablate(tiny_llama, PAIRS, [Node("mlp_acts", 0, 9, 0)])
    with pytest.raises(ValueError, match="unknown ablation mode"):
        ablate(tiny_llama, PAIRS, [], sites=("mlp_acts",), mode="resample")
    scores = neuronlib.attribute(tiny_llama, PAIRS, method="atp")
    with pytest.raises(ValueError, match="empty"):
        evaluate_circuit(tiny_llama, scores, [], sizes=[1])
    with pytest.raises(ValueError, match="unknown ablation mode"):
        evaluate_circuit(tiny_llama, scores, PAIRS, sizes=[1], mode="resample")
    with pytest.raises(ValueError, match="token length"):
        evaluate_circuit(tiny_llama, scores, [SVA_PAIRS[2]], sizes=[1])


@pytest.mark.real_model
def test_atp_predicts_single_neuron_ablation_effects(smollm):
    """Spearman correlation between AtP (zero baseline) and true zero-ablation effects of the top 200 neurons."""
    from scipy.stats import spearmanr

    record = {"prompt": "The keys to the cabinet", "answer": " are", "patch_answer": " is"}
    result = {}
    for method in ("atp", "relp"):
        att = neuronlib.attribute(smollm, [record], method=method, baseline="zero")
        top = att.nodes(200)
        per_example = [[n] for n in top]
        effects = att.metric[0] - steer(smollm, [record["prompt"]] * len(top), per_example, multiplier=0.0,
                                        positions="circuit", metric=lambda lg, b: _ld(smollm, lg)).metric
        predicted = torch.tensor([float(att["mlp_acts"][0, n.layer, n.position, n.unit]) for n in top])
        result[method] = spearmanr(predicted.numpy(), effects.numpy()).statistic
    print(f"Spearman(score, zero-ablation effect), top 200 neurons: {result}")
    assert result["atp"] > 0


def _ld(model, logits):
    return logits[:, model.token_id(" are")] - logits[:, model.token_id(" is")]


def test_steer_per_prompt_lists_may_be_empty(tiny_llama):
    prompts = ["the keys to the cabinet", "the dog near the boy"]
    node = Node("mlp_acts", 0, 2, 5)
    per_prompt = steer(tiny_llama, prompts, [[node], []], multiplier=0.0, positions="circuit").logits
    first = steer(tiny_llama, prompts[:1], [node], multiplier=0.0, positions="circuit").logits
    plain = ablate(tiny_llama, prompts, [], sites=("mlp_acts",), metric=None).logits
    assert torch.allclose(per_prompt[0], first[0], atol=1e-6)
    assert torch.equal(per_prompt[1], plain[1])
    with pytest.raises(ValueError, match="no neurons"):
        steer(tiny_llama, prompts, [[], []], multiplier=0.0, positions="circuit")


@pytest.mark.parametrize("mode, site", [("mean", "mlp_acts"), ("zero", "mlp_out")])
def test_smollm_sweep_equals_one_ablation_per_circuit(smollm, mode, site):
    """The real model: the batched sweep (a full circuit that repeats the full model and an empty one that repeats
    the empty circuit run once) gives every m(C), m(C̄) of ablating that circuit on its own."""
    from neuronlib.paper.sva import load_templates

    pairs = load_templates(smollm, ["nounpp"], n_train=4, n_test=4)["nounpp"].test
    scores = neuronlib.attribute(smollm, pairs, method="atp", sites=(site,), progress=False)
    sizes = [0, 10, 1000, 10**7]
    frame = evaluate_circuit(smollm, scores, pairs, sizes=sizes, mode=mode, batch_size=3).set_index("size")
    ref = circuit_by_circuit(smollm, scores, pairs, site, sizes, mode)
    assert list(frame.index) == list(ref)
    for size, (m_c, m_cbar) in ref.items():
        for got, want in ((frame.loc[size, "m_C"], m_c), (frame.loc[size, "m_Cbar"], m_cbar)):
            assert abs(got - want) <= 1e-5 * max(1.0, abs(want)), size


def test_runner_runs_repeated_circuits_once_on_a_padded_batch(tiny_llama):
    """Circuits that ablate the same nodes share one block of rows; each still gets the metric of running it alone,
    on prompts of different lengths (left-padded) and under both ablation modes."""
    from neuronlib.inputs import prepare
    from neuronlib.interventions import ablation_runner

    prepared = prepare(tiny_llama, SVA_PAIRS[:4])
    assert len(set(prepared.lengths.tolist())) > 1
    ranks = torch.arange(tiny_llama.n_layers * prepared.T * tiny_llama.d_mlp).view(tiny_llama.n_layers, prepared.T,
                                                                                  tiny_llama.d_mlp)
    a, b = {"mlp_acts": ranks % 3 == 0}, {"mlp_acts": ranks % 5 == 0}
    nothing = {"mlp_acts": torch.zeros_like(ranks, dtype=torch.bool)}
    for mode in ("mean", "zero"):
        run = ablation_runner(tiny_llama, prepared, ("mlp_acts",), mode, "logit_diff", batch_size=3)
        together = run([a, None, {"mlp_acts": a["mlp_acts"].clone()}, b, nothing])
        alone = torch.stack([run([c])[0] for c in (a, None, a, b, None)])
        assert (together - alone).abs().max() <= 1e-5
        assert not torch.allclose(together[0], together[3])  # the circuits differ
