"""SAE latents plus one error node per (layer, position) as a site of attribute / ablate / evaluate_circuit."""
import pytest
import torch
from conftest import SVA_PAIRS

import neuronlib
from neuronlib import tracing
from neuronlib.activations import read_sites
from neuronlib.saes import TopKSAE, sae_site_reconstruct, sae_site_values

PAIRS = SVA_PAIRS[:2]


@pytest.fixture(scope="module")
def with_saes():
    model = neuronlib.load_model("tiny-llama")  # our own copy: attaching SAEs changes the Model object
    for site, width in (("sae_mlp_out", 16), ("sae_resid", 16), ("sae_attn_out", 16)):
        model.attach_saes(site, [TopKSAE(width, 40, 6, seed=i) for i in range(model.n_layers)])
    return model


def test_sae_site_leaves_the_forward_pass_bit_identical(with_saes):
    inputs = with_saes.tokenize(["the keys to the cabinet", "the dog is"])
    plain = tracing.logits(with_saes, inputs)
    seen = []
    with torch.no_grad():
        via = tracing.run(with_saes, inputs, metric=lambda lg: lg, sites=("sae_mlp_out", "sae_resid", "sae_attn_out"),
                          edit=lambda k, l, v: seen.append(k))
    assert torch.equal(via, plain)
    assert {"sae_mlp_out", "sae_mlp_out/error", "sae_resid/error"} <= set(seen)


def test_sae_site_atp_equals_autograd(with_saes):
    model = with_saes
    att = neuronlib.attribute(model, PAIRS, method="atp", baseline="zero", sites=("sae_mlp_out",))
    assert att["sae_mlp_out"].shape[-1] == 41
    inputs = model.tokenize([p["clean_prefix"] for p in PAIRS])
    taps = {}

    def make(layer):
        def hook(module, args, out):
            lat, err = sae_site_values(model.saes["sae_mlp_out"][layer], out)
            d_lat, d_err = torch.zeros_like(lat, requires_grad=True), torch.zeros_like(err, requires_grad=True)
            taps[layer] = (lat, err, d_lat, d_err)
            return sae_site_reconstruct(model.saes["sae_mlp_out"][layer], lat + d_lat, err + d_err)
        return hook

    handles = [layer.mlp.register_forward_hook(make(i)) for i, layer in enumerate(model.hf.model.layers)]
    try:
        logits = model.hf(**inputs, use_cache=False).logits[:, -1]
    finally:
        for h in handles:
            h.remove()
    g = torch.tensor([model.token_id(p["clean_answer"]) for p in PAIRS])
    b = torch.tensor([model.token_id(p["patch_answer"]) for p in PAIRS])
    metric = (logits.gather(-1, g[:, None]) - logits.gather(-1, b[:, None])).sum()
    for layer, (lat, err, d_lat, d_err) in taps.items():
        g_lat, g_err = torch.autograd.grad(metric, [d_lat, d_err], retain_graph=True)
        expected_lat = lat * g_lat
        expected_err = (err * g_err).sum(-1).float()
        assert (att["sae_mlp_out"][:, layer, :, :40] - expected_lat).abs().max() <= 1e-6
        assert (att["sae_mlp_out"][:, layer, :, 40] - expected_err).abs().max() <= 1e-6
        assert expected_err.abs().max() > 0


def test_sae_relp_conserves_with_bias_free_decoders(with_saes):
    data = [{"prompt": "the keys to the cabinet", "answer": " are"}]
    att = neuronlib.attribute(with_saes, data, metric="logit", method="relp", baseline="zero", sites=("sae_resid",))
    for layer in range(with_saes.n_layers):  # b_dec = 0, so latents + error nodes at one layer are a complete cut
        assert abs(att["sae_resid"][0, layer].sum() - att.metric[0]) / att.metric[0].abs() <= 1e-4


def test_sae_circuits_full_and_empty(with_saes):
    scores = neuronlib.attribute(with_saes, PAIRS[:1], method="atp", sites=("sae_mlp_out",))
    total = scores["sae_mlp_out"][0].numel()
    frame = neuronlib.evaluate_circuit(with_saes, scores, PAIRS[:1], sizes=[0, total], mode="mean")
    full, empty = frame.iloc[1], frame.iloc[0]
    assert abs(full.faithfulness - 1) <= 1e-5 and abs(full.completeness) <= 1e-5
    assert abs(empty.faithfulness) <= 1e-5


def test_zero_ablating_error_nodes_leaves_the_reconstruction(with_saes):
    model = with_saes
    T = 5
    nodes = [neuronlib.Node("sae_mlp_out", l, t, 40) for l in range(model.n_layers) for t in range(T)]
    got = neuronlib.ablate(model, ["the keys to the cabinet"], nodes, mode="zero", metric=None).logits

    def recon(layer):
        return lambda m, a, out: model.saes["sae_mlp_out"][layer](out)

    handles = [layer.mlp.register_forward_hook(recon(i)) for i, layer in enumerate(model.hf.model.layers)]
    try:
        with torch.no_grad():
            expected = model.hf(**model.tokenize(["the keys to the cabinet"])).logits[:, -1]
    finally:
        for h in handles:
            h.remove()
    assert (got - expected).abs().max() <= 1e-5


def test_sae_site_without_saes_is_an_error(tiny_llama):
    with pytest.raises(ValueError, match="attach_saes"):
        neuronlib.attribute(tiny_llama, PAIRS, sites=("sae_mlp_out",))


def _saes_with_biases(model, seed):
    """One TopK SAE per layer with non-zero encoder and decoder biases (trained SAEs have both)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for layer in range(model.n_layers):
        sae = TopKSAE(model.d_model, 40, 6, seed=seed + layer)
        with torch.no_grad():
            sae.b_dec.normal_(0, 1.0, generator=gen)
            sae.b_enc.normal_(0, 0.5, generator=gen)
        out.append(sae)
    return out


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma"])
def test_relp_through_sae_sites_conserves_up_to_the_decoder_bias(name):
    """RelP through an SAE site: the splice x -> decode(latents) + error passes the gradient through unchanged
    (TopK's selection a fixed mask, the error node linear), so the embeddings' relevance still sums to the metric with
    both SAE sites in the walk; at the site, latents + error node carry the base site's relevance less
    b_dec . dm/dx, the decoder bias's share (a constant, no node's), and exactly the base site's with a
    counterfactual baseline, where b_dec cancels."""
    model = neuronlib.load_model(name)  # our own copy: attaching SAEs changes the Model object
    model.attach_saes("sae_mlp_out", _saes_with_biases(model, 0))
    model.attach_saes("sae_resid", _saes_with_biases(model, 100))
    data = [{"prompt": "the keys to the cabinet", "answer": " are"}, {"prompt": "the dog near the boys", "answer": " is"}]
    sites = ("embed", "mlp_acts", "mlp_out", "sae_mlp_out", "resid", "sae_resid")
    att = neuronlib.attribute(model, data, metric="logit", method="relp", baseline="zero", sites=sites)
    m = att.metric
    assert m.abs().min() > 1e-2
    tol = 1e-4 * m.abs().max()
    assert (att["embed"].sum((1, 2, 3)) - m).abs().max() <= tol
    values, _ = read_sites(model, model.tokenize([d["prompt"] for d in data]), ("mlp_out", "resid"))
    for base in ("mlp_out", "resid"):
        for layer in range(model.n_layers):
            r_base = att[base][:, layer].sum((1, 2))
            r_sae = att["sae_" + base][:, layer].sum((1, 2))
            x = values[base][layer].float()
            assert x.abs().min() > 1e-6
            grad = att[base][:, layer] / x  # dm/dx at the site: a zero-baseline score is x * dm/dx
            bias_share = (grad * model.saes["sae_" + base][layer].b_dec).sum((1, 2))
            assert (r_sae + bias_share - r_base).abs().max() <= tol, (base, layer)
            assert bias_share.abs().max() > 1e-2 * m.abs().max()  # the bias's share is not negligible here
            if base == "resid":  # a complete cut
                assert (r_base - m).abs().max() <= tol
            else:  # the neurons carry the MLP output's relevance (bias-free down projection)
                assert (att["mlp_acts"][:, layer].sum((1, 2)) - r_base).abs().max() <= tol

    pairs = [p for p in SVA_PAIRS if len(p["clean_prefix"].split()) == len(p["patch_prefix"].split())]
    cf = neuronlib.attribute(model, pairs, method="relp", baseline="counterfactual",
                             sites=("mlp_out", "sae_mlp_out", "resid", "sae_resid"))
    change = cf.metric - cf.baseline_metric
    assert change.abs().min() > 1e-2
    for base in ("mlp_out", "resid"):
        for layer in range(model.n_layers):
            r_base = cf[base][:, layer].sum((1, 2))
            assert (cf["sae_" + base][:, layer].sum((1, 2)) - r_base).abs().max() <= 1e-4 * change.abs().max()
