"""SAE quality as the SAE literature measures it (neuronlib.sae_eval), checked against hand-written torch forwards."""
import math

import pytest
import torch
from conftest import SVA_PAIRS, perfect_sae

import neuronlib
from neuronlib import sae_eval
from neuronlib.saes import TopKSAE

TEXTS = ["the keys to the cabinet near the dogs are", "the dog near the boys is", "a friend of the chef",
         "the managers that the girl likes have"]


def zero_sae(d_in: int) -> TopKSAE:
    sae = TopKSAE(d_in, 2 * d_in, 4, seed=1)
    with torch.no_grad():
        for p in sae.parameters():
            p.zero_()
    return sae


def imperfect_sae(d_in: int, seed: int) -> TopKSAE:
    sae = TopKSAE(d_in, 3 * d_in, 5, seed=seed)
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.5, generator=torch.Generator().manual_seed(seed))
    return sae


def hooked_logits(model, inputs, replace: dict):
    """All-position logits of a plain HF forward with hooks: ``replace[(site, layer)](value) -> value``."""
    handles = []
    for (site, layer), fn in replace.items():
        module = model.hf.model.layers[layer]
        if site == "mlp_out":
            handles.append(module.mlp.register_forward_hook(lambda m, a, out, fn=fn: fn(out)))
        else:
            handles.append(module.register_forward_hook(
                lambda m, a, out, fn=fn: (fn(out[0]), *out[1:]) if isinstance(out, tuple) else fn(out)))
    try:
        with torch.no_grad():
            return model.hf(**inputs, use_cache=False).logits
    finally:
        for h in handles:
            h.remove()


def site_rows(model, site, layer, text):
    """[T, d] values of one site at one layer for one text (no padding), read with a plain hook."""
    seen = {}

    def keep(v):
        seen["x"] = v[0].detach()
        return v

    hooked_logits(model, model.tokenize([text]), {(site, layer): keep})
    return seen["x"]


def hand_ce_kl(logits, clean, inputs):
    ids, attn = inputs["input_ids"], inputs["attention_mask"].bool()
    pairs = attn[:, :-1] & attn[:, 1:]
    logp, logq = logits[:, :-1].float().log_softmax(-1), clean[:, :-1].float().log_softmax(-1)
    ce = -logp.gather(-1, ids[:, 1:, None])[..., 0]
    kl = (logq.exp() * (logq - logp)).sum(-1)
    return float(ce[pairs].mean()), float(kl[pairs].mean())


@pytest.mark.parametrize("site", ["mlp_out", "resid"])
def test_spliced_logits_equal_a_hand_written_forward(tiny_llama, site):
    model = tiny_llama
    saes = {site: {1: imperfect_sae(model.d_model, 3)}}
    inputs = model.tokenize(TEXTS)
    assert not inputs["attention_mask"].all(), "the batch must be left-padded for this test"
    got = sae_eval.spliced_logits(model, inputs, saes)
    expected = hooked_logits(model, inputs, {(site, 1): lambda v: saes[site][1](v)})
    clean = hooked_logits(model, inputs, {})
    real = inputs["attention_mask"].bool()
    assert (got[real] - expected[real]).abs().max() <= 1e-5
    assert (got[real] - clean[real]).abs().max() > 1e-2  # the splice changed something
    zeroed = sae_eval.spliced_logits(model, inputs, saes, zero=True)
    assert (zeroed[real] - hooked_logits(model, inputs, {(site, 1): torch.zeros_like})[real]).abs().max() <= 1e-5

    # the losses: cross-entropy and KL from those logits, over predictions whose context and target are real
    table = sae_eval.splice_losses(model, saes, TEXTS, batch_size=3, progress=False).iloc[0]
    ce_clean, _ = hand_ce_kl(clean, clean, inputs)
    ce_spliced, kl_spliced = hand_ce_kl(expected, clean, inputs)
    ce_zero, kl_zero = hand_ce_kl(hooked_logits(model, inputs, {(site, 1): torch.zeros_like}), clean, inputs)
    assert table.n_predictions == int((inputs["attention_mask"].sum(1) - 1).sum())
    for name, value in [("ce_clean", ce_clean), ("ce_spliced", ce_spliced), ("ce_zero", ce_zero),
                        ("kl_spliced", kl_spliced), ("kl_zero", kl_zero)]:
        assert table[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    assert table.ce_recovered == pytest.approx((ce_zero - ce_spliced) / (ce_zero - ce_clean), rel=1e-3)
    assert table.kl_spliced > 1e-4


def test_splice_can_leave_the_excluded_positions_clean(tiny_llama):
    model = tiny_llama
    saes = {"mlp_out": {0: imperfect_sae(model.d_model, 4)}}
    windows = torch.randint(4, 40, (3, 6), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": windows, "attention_mask": torch.ones_like(windows)}
    keep = torch.ones(3, 6, dtype=torch.bool)
    keep[:, 0] = False

    def all_but_first(v):
        return torch.where(keep[..., None], saes["mlp_out"][0](v), v)

    expected = hooked_logits(model, inputs, {("mlp_out", 0): all_but_first})
    clean = hooked_logits(model, inputs, {})
    t = sae_eval.splice_losses(model, saes, windows, splice_excluded=False, progress=False).iloc[0]
    assert t.ce_spliced == pytest.approx(hand_ce_kl(expected, clean, inputs)[0], rel=1e-5)
    t_all = sae_eval.splice_losses(model, saes, windows, progress=False).iloc[0]
    assert abs(t_all.ce_spliced - t.ce_spliced) > 1e-5


def test_a_perfect_sae_scores_perfectly(tiny_llama):
    model = tiny_llama
    d, L = model.d_model, model.n_layers
    saes = {s: [perfect_sae(d) for _ in range(L)] for s in ("mlp_out", "resid")}
    t = sae_eval.sae_quality(model, saes, TEXTS, batch_size=3, progress=False)
    assert list(t.columns) == sae_eval.QUALITY_COLUMNS and len(t) == 2 * L
    assert (t.ev_all > 1 - 1e-5).all() and (t.ev > 1 - 1e-5).all()
    assert (t.ce_zero - t.ce_clean).abs().min() > 1e-3  # zero-ablation must hurt, or ce_recovered is undefined
    assert ((t.ce_recovered - 1).abs() <= 1e-3).all()
    assert (t.kl_spliced.abs() <= 1e-6).all() and (t.ce_delta.abs() <= 1e-5).all()
    assert ((t.l0 - d).abs() <= 0.5).all()  # every coordinate non-zero: one latent each
    n_real = sum(len(model.tokenizer(x)["input_ids"]) for x in TEXTS)
    assert (t.n_tokens == n_real).all() and (t.n_tokens_kept == n_real - len(TEXTS)).all()


def test_a_zero_sae_recovers_nothing(tiny_llama):
    model = tiny_llama
    saes = {"mlp_out": {0: zero_sae(model.d_model)}, "resid": {1: zero_sae(model.d_model)}}
    t = sae_eval.sae_quality(model, saes, TEXTS, progress=False).set_index("site")
    assert (t.ce_recovered.abs() <= 1e-6).all()
    assert (t.ce_spliced == t.ce_zero).all() and (t.kl_spliced == t.kl_zero).all()
    assert (t.dead_fraction == 1).all() and (t.l0 == 0).all()  # every pre-activation is 0: nothing fires
    # a zero residual stream on a bias-free model: every later layer sees zeros, the logits are 0, CE = ln(vocab)
    assert t.loc["resid", "ce_zero"] == pytest.approx(math.log(model.config.vocab_size), rel=1e-6)
    # EV of x_hat = 0 is 1 - sum ||x||^2 / sum ||x - mean x||^2, position 0 excluded
    x = torch.cat([site_rows(model, "mlp_out", 0, text)[1:] for text in TEXTS]).double()
    expected = 1 - x.pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert t.loc["mlp_out", "ev"] == pytest.approx(float(expected), rel=1e-6)
    assert t.loc["mlp_out", "ev"] < 0


def test_exclude_positions_and_dead_latents_match_a_hand_count(tiny_llama):
    model = tiny_llama
    sae = imperfect_sae(model.d_model, 5)
    dead = torch.arange(0, sae.d_sae, 4)
    with torch.no_grad():
        sae.b_enc[dead] = -1e4  # these latents can never be positive
    rows = [site_rows(model, "resid", 1, text) for text in TEXTS]

    @torch.no_grad()
    def hand(drop):
        x = torch.cat([r[[p for p in range(len(r)) if p not in drop]] for r in rows])
        z = sae.encode(x)
        err = (x - sae.decode(z)).double().pow(2).sum()
        xd = x.double()
        return float(1 - err / (xd - xd.mean(0)).pow(2).sum()), float((z > 0).sum(-1).float().mean()), z

    ev_all, _, z_all = hand(())
    ev_no0, l0_no0, _ = hand((0,))
    ev_no01, l0_no01, _ = hand((0, 1))
    fired = (z_all > 0).any(0)
    assert not fired[dead].any()
    t0 = sae_eval.reconstruction_stats(model, {"resid": {1: sae}}, TEXTS, batch_size=3, progress=False).iloc[0]
    t01 = sae_eval.reconstruction_stats(model, {"resid": {1: sae}}, TEXTS, exclude_positions=(0, 1),
                                        progress=False).iloc[0]
    none = sae_eval.reconstruction_stats(model, {"resid": {1: sae}}, TEXTS, exclude_positions=(),
                                         progress=False).iloc[0]
    assert t0.ev_all == pytest.approx(ev_all, rel=1e-5) and none.ev == pytest.approx(ev_all, rel=1e-5)
    assert t0.ev == pytest.approx(ev_no0, rel=1e-5) and t01.ev == pytest.approx(ev_no01, rel=1e-5)
    assert abs(ev_all - ev_no0) > 1e-3 and abs(ev_no0 - ev_no01) > 1e-3  # the exclusion matters on this model
    assert t0.l0 == pytest.approx(l0_no0) and t01.l0 == pytest.approx(l0_no01)
    assert t0.dead_fraction == pytest.approx(float((~fired).float().mean()))
    assert t0.dead_fraction >= len(dead) / sae.d_sae


def test_token_windows_and_strings_agree(tiny_llama):
    """A [N, T] tensor of real tokens gives the numbers of the same texts as strings (no padding then)."""
    model = tiny_llama
    texts = ["the keys to the cabinet are", "the dog near the boys is"]  # six tokens each
    ids = model.tokenize(texts)["input_ids"]
    saes = {"mlp_out": {1: imperfect_sae(model.d_model, 6)}}
    a = sae_eval.sae_quality(model, saes, texts, progress=False).iloc[0]
    b = sae_eval.sae_quality(model, saes, ids, batch_size=1, progress=False).iloc[0]
    for col in ("ev_all", "ev", "l0", "ce_clean", "ce_spliced", "ce_zero", "kl_spliced"):
        assert a[col] == pytest.approx(b[col], rel=1e-5, abs=1e-7), col


def test_logit_diff_with_every_layer_spliced(tiny_llama):
    model = tiny_llama
    d, L = model.d_model, model.n_layers
    perfect = sae_eval.spliced_logit_diff(model, SVA_PAIRS, {"resid": [perfect_sae(d) for _ in range(L)]})
    assert perfect.logit_diff_kept.iloc[0] == pytest.approx(1, abs=1e-5) and perfect.sign_kept.iloc[0] == 1
    saes = [imperfect_sae(d, 10 + l) for l in range(L)]
    t = sae_eval.spliced_logit_diff(model, SVA_PAIRS, {"sae_mlp_out": saes}).iloc[0]
    assert t.site == "mlp_out" and t.n_layers == L and t.n_examples == len(SVA_PAIRS)
    # the same as the SAE site with every error node zero-ablated, through neuronlib.ablate
    model_saes = neuronlib.load_model("tiny-llama")
    model_saes.attach_saes("sae_mlp_out", saes)
    T = max(len(model.tokenizer(p["clean_prefix"])["input_ids"]) for p in SVA_PAIRS)
    errors = [neuronlib.Node("sae_mlp_out", l, p, saes[0].d_sae) for l in range(L) for p in range(T)]
    ablated = neuronlib.ablate(model_saes, SVA_PAIRS, errors, mode="zero", metric="logit_diff").metric
    assert t.logit_diff_spliced == pytest.approx(float(ablated.mean()), rel=1e-5)
    assert abs(t.logit_diff_kept - 1) > 1e-3
    with pytest.raises(ValueError, match="every layer"):
        sae_eval.spliced_logit_diff(model, SVA_PAIRS, {"mlp_out": {0: saes[0]}})


def test_bad_inputs_are_one_line_errors(tiny_llama):
    model = tiny_llama
    sae = imperfect_sae(model.d_model, 0)
    with pytest.raises(ValueError, match="layers 0..1"):
        sae_eval.reconstruction_stats(model, {"mlp_out": {5: sae}}, TEXTS, progress=False)
    with pytest.raises(ValueError, match="d_in"):
        sae_eval.reconstruction_stats(model, {"mlp_out": [TopKSAE(8, 16, 2)] * 2}, TEXTS, progress=False)
    with pytest.raises(ValueError, match="not one of"):
        sae_eval.splice_losses(model, {"mlp_acts": [sae, sae]}, TEXTS, progress=False)
    with pytest.raises(ValueError, match=r"\[N, T\]"):
        sae_eval.sae_quality(model, {"mlp_out": [sae, sae]}, torch.arange(5), progress=False)
