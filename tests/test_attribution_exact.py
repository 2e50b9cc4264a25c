"""Exactness of AtP, RelP and IG against plain torch autograd (docs/method.md §2)."""
import pytest
import torch
from conftest import SVA_PAIRS, hooked_forward

import neuronlib
from neuronlib import attribution, tracing
from neuronlib.attribution import _ig_rows
from neuronlib.sites import BASE_SITES

ALL = BASE_SITES


def _ids(model, key):
    return torch.tensor([model.token_id(r[key]) for r in SVA_PAIRS])


def _logit_diff(model, logits):
    return logits.gather(-1, _ids(model, "clean_answer")[:, None])[:, 0] - logits.gather(-1, _ids(model, "patch_answer")[:, None])[:, 0]


@pytest.mark.parametrize("baseline", ["zero", "counterfactual"])
def test_atp_equals_torch_autograd_at_every_site(tiny, baseline):
    att = neuronlib.attribute(tiny, SVA_PAIRS, method="atp", baseline=baseline, sites=ALL)
    inputs = tiny.tokenize([r["clean_prefix"] for r in SVA_PAIRS])
    logits, values, deltas = hooked_forward(tiny, inputs, ALL)
    metric = _logit_diff(tiny, logits)
    flat = [d for s in ALL for d in deltas[s]]
    grads = torch.autograd.grad(metric.sum(), flat)
    if baseline == "counterfactual":
        patch = tiny.tokenize([r["patch_prefix"] for r in SVA_PAIRS])
        with torch.no_grad():
            _, base_values, _ = hooked_forward(tiny, patch, ALL)
    i = 0
    for s in ALL:
        for layer, v in enumerate(values[s]):
            diff = v if baseline == "zero" else v - base_values[s][layer]
            expected = diff * grads[i] * inputs["attention_mask"][..., None]
            got = att[s][:, layer]
            assert got.shape == expected.shape
            assert (got - expected).abs().max() <= 1e-6, (s, layer)
            i += 1
    assert torch.allclose(att.metric, metric.detach(), atol=1e-6)


def test_relp_forward_is_bit_identical_on_a_padded_batch(tiny):
    prompts = ["the keys to the cabinet near the dogs", "the dog is", "a friend"]
    inputs = tiny.tokenize(prompts)
    assert (inputs["attention_mask"] == 0).any(), "the batch must be left-padded for this test"
    with torch.no_grad():
        plain = tiny.hf(**inputs, logits_to_keep=1, use_cache=False).logits[:, -1]
    for rules in [tracing.RelPRules(), tracing.RelPRules(gate="stopgrad"), tracing.RelPRules(half=False)]:
        relp = tracing.logits(tiny, inputs, relp=rules)
        assert torch.equal(relp, plain)
    # Site values seen under RelP equal the plain ones too.
    seen = {}
    tracing.run(tiny, inputs, metric=lambda lg: lg[:, 0], edit=lambda s, l, v: seen.setdefault((s, l), v.detach()),
                sites=ALL, relp=tracing.RelPRules())
    _, values, _ = hooked_forward(tiny, inputs, ALL)
    for (s, l), v in seen.items():
        assert torch.equal(v, values[s][max(l, 0)])


def test_relp_leaves_the_model_unchanged(tiny):
    inputs = tiny.tokenize(["the keys to the cabinet", "the dog is"])
    before = neuronlib.attribute(tiny, SVA_PAIRS, method="atp", sites=ALL)
    with torch.no_grad():
        logits_before = tiny.hf(**inputs).logits
    neuronlib.attribute(tiny, SVA_PAIRS, method="relp", sites=ALL)
    with torch.no_grad():
        logits_after = tiny.hf(**inputs).logits
    assert torch.equal(logits_before, logits_after)
    after = neuronlib.attribute(tiny, SVA_PAIRS, method="atp", sites=ALL)
    for s in ALL:
        assert torch.equal(before[s], after[s])
    for module in tiny.hf.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
    assert not any(p.requires_grad for p in tiny.hf.parameters())


def test_relp_gives_query_and_key_zero_gradient(tiny):
    inputs = tiny.tokenize(["the keys to the cabinet", "the dog is"])
    attn = [layer.self_attn for layer in tiny.hf.model.layers]
    params = [p for a in attn for p in (a.q_proj.weight, a.k_proj.weight, a.v_proj.weight)]
    try:
        for p in params:
            p.requires_grad_(True)
        grads = {}
        for name, rules in [("plain", None), ("relp", tracing.RelPRules())]:
            m = tracing.run(tiny, inputs, metric=lambda lg: lg[:, 5], relp=rules)
            g = torch.autograd.grad(m.sum(), params, allow_unused=True)
            grads[name] = [torch.zeros_like(p) if x is None else x for p, x in zip(params, g)]
    finally:
        for p in params:
            p.requires_grad_(False)
    q_k = [i for i in range(len(params)) if i % 3 != 2]
    v = [i for i in range(len(params)) if i % 3 == 2]
    assert all(grads["plain"][i].abs().max() > 0 for i in q_k), "the plain model must give q/k a gradient"
    assert all(torch.count_nonzero(grads["relp"][i]) == 0 for i in q_k)
    assert all(grads["relp"][i].abs().max() > 0 for i in v), "values must still carry gradient"


def _qwen2_without_value_bias():
    """tiny-qwen2 with its value biases zeroed (its q/k biases kept). A value bias is a constant source of
    relevance that no input carries, so only without it must the inputs' relevance sum to the metric."""
    model = neuronlib.load_model("tiny-qwen2")  # a fresh instance: the session fixture stays as built
    with torch.no_grad():
        for layer in model.hf.model.layers:
            layer.self_attn.v_proj.bias.zero_()
            assert layer.self_attn.q_proj.bias.abs().max() > 0
    return model


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma", "tiny-qwen2"])
def test_relp_relevance_is_conserved(name, tiny_llama, tiny_gemma):
    model = {"tiny-llama": tiny_llama, "tiny-gemma": tiny_gemma}.get(name) or _qwen2_without_value_bias()
    data = [{"prompt": "the keys to the cabinet", "answer": " are"}, {"prompt": "the dog near the boys", "answer": " is"}]
    att = neuronlib.attribute(model, data, metric="logit", method="relp", baseline="zero", sites=ALL)
    m = att.metric
    assert m.abs().min() > 1e-2
    for b in range(2):
        total = att["embed"][b].sum()
        assert abs(total - m[b]) / abs(m[b]) <= 1e-4
        for layer in range(model.n_layers):  # the residual stream after any layer is a complete cut too
            assert abs(att["resid"][b, layer].sum() - m[b]) / abs(m[b]) <= 1e-4
    # The half rule is what makes it conserve: without it the embeddings carry more than m.
    no_half = neuronlib.attribute(model, data, metric="logit", method="relp-no-half", baseline="zero", sites=("embed",))
    assert (no_half["embed"].sum((1, 2, 3)) - m).abs().max() / m.abs().min() > 1e-2


def test_value_bias_is_what_breaks_conservation_on_qwen2(tiny_qwen2):
    """With its value biases, tiny-qwen2's input relevance misses the metric (the biases' share): the conservation
    test above is not passing by accident of the tiny model."""
    data = [{"prompt": "the keys to the cabinet", "answer": " are"}]
    att = neuronlib.attribute(tiny_qwen2, data, metric="logit", method="relp", baseline="zero", sites=("embed",))
    assert abs(float(att["embed"][0].sum() - att.metric[0])) / abs(float(att.metric[0])) > 1e-2


def test_ig_converges_to_the_metric_change(tiny):
    for method, sites in [("ig", ("embed", "resid")), ("ig-inputs", ("embed",))]:
        att = neuronlib.attribute(tiny, SVA_PAIRS, method=method, ig_steps=64, sites=sites)
        change = att.metric - att.baseline_metric
        assert change.abs().min() > 1e-2
        for s in sites:
            for layer in range(att[s].shape[1]):
                total = att[s][:, layer].sum((1, 2))
                assert ((total - change).abs() / change.abs()).max() <= 1e-2, (method, s, layer)


def test_batched_ig_equals_step_by_step(tiny_llama):
    model, steps, site = tiny_llama, 5, "mlp_acts"
    att = neuronlib.attribute(model, SVA_PAIRS, method="ig", ig_steps=steps, sites=(site,))
    clean = model.tokenize([r["clean_prefix"] for r in SVA_PAIRS])
    patch = model.tokenize([r["patch_prefix"] for r in SVA_PAIRS])
    with torch.no_grad():
        _, v_clean, _ = hooked_forward(model, clean, (site,))
        _, v_patch, _ = hooked_forward(model, patch, (site,))
    for layer in range(model.n_layers):
        grad_sum = 0
        for k in range(steps):
            alpha = (k + 0.5) / steps
            point = v_patch[site][layer] + alpha * (v_clean[site][layer] - v_patch[site][layer])
            logits, _, deltas = hooked_forward(model, clean, (site,), replace={(site, layer): lambda v, p=point: p})
            grad_sum = grad_sum + torch.autograd.grad(_logit_diff(model, logits).sum(), deltas[site][layer])[0]
        expected = (v_clean[site][layer] - v_patch[site][layer]) * grad_sum / steps
        assert (att[site][:, layer] - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("method", ["ig", "ig-inputs"])
def test_ig_in_step_groups_equals_all_steps_at_once(tiny_llama, method, monkeypatch):
    """ig_max_rows only bounds memory: steps split into groups (here 1, 2 and an uneven 3 per forward), or pairs into
    smaller batches when one step is over the cap, give the scores and metrics of one batch of every step."""
    sites, b = ("mlp_acts", "resid"), len(SVA_PAIRS)
    whole = neuronlib.attribute(tiny_llama, SVA_PAIRS, method=method, ig_steps=7, ig_max_rows=10**6, sites=sites)
    run, widths = attribution.tracing.run, []
    monkeypatch.setattr(attribution.tracing, "run",
                        lambda m, inputs, **kw: widths.append(len(inputs["input_ids"])) or run(m, inputs, **kw))
    for rows in (1, b - 1, b, 2 * b, 3 * b + 1):  # under b: fewer pairs per batch, one step per forward
        widths.clear()
        grouped = neuronlib.attribute(tiny_llama, SVA_PAIRS, method=method, ig_steps=7, ig_max_rows=rows, sites=sites)
        assert max(widths) <= rows, (rows, widths)  # every forward within the cap
        for s in sites:
            assert (grouped[s] - whole[s]).abs().max() <= 1e-6 * whole[s].abs().max(), (rows, s)
        if rows >= b:
            assert torch.equal(grouped.metric, whole.metric)
        else:  # another batch size may round differently
            torch.testing.assert_close(grouped.metric, whole.metric, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="ig_max_rows"):
        neuronlib.attribute(tiny_llama, SVA_PAIRS, method=method, ig_max_rows=0)


def test_ig_rows_follow_the_memory_budget(tiny_llama):
    model, T = tiny_llama, 6
    units = model.n_layers * model.site_width("mlp_acts")
    per_row = attribution.IG_COPIES * 4 * T * units
    assert _ig_rows(model, ("mlp_acts",), T, budget=5 * per_row) == 5
    assert _ig_rows(model, ("mlp_acts",), T, budget=per_row // 2) == 1  # never zero
    assert _ig_rows(model, ("mlp_acts", "resid"), T, budget=5 * per_row) < 5  # more tapped units, fewer rows
