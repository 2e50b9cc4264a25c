"""TopK SAEs (neuronlib.saes) and the offline text corpus (neuronlib.data.corpus)."""

import json
import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from neuronlib.saes import (
    CFG_FILENAME,
    WEIGHTS_FILENAME,
    TopKSAE,
    _sae_losses,
    evaluate_sae,
    load_sae,
    sae_site_reconstruct,
    sae_site_values,
    save_sae,
    train_topk_sae,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # the matrices here are tiny: one thread avoids OpenMP spin-waiting on a shared 2-core machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _synthetic(n_atoms=64, d=32, per_sample=3, n=400 * 512, seed=1000):
    """Known unit-norm dictionary; each sample a non-negative combination of ``per_sample`` random atoms."""
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(n_atoms, d, generator=g)
    D = D / D.norm(dim=-1, keepdim=True)
    idx = torch.rand(n, n_atoms, generator=g).argsort(-1)[:, :per_sample]
    coef = torch.rand(n, per_sample, generator=g) + 0.5
    X = torch.zeros(n, n_atoms).scatter(-1, idx, coef) @ D
    return D, X


def _recovered(D, sae, thresh=0.9):
    best = (D @ sae.W_dec.detach().T).max(dim=-1).values  # best-matching decoder row per true atom
    return (best >= thresh).float().mean().item()


# (a) dictionary recovery --------------------------------------------------------------------------------------


def test_sae_recovers_synthetic_dictionary():
    D, X = _synthetic()
    assert _recovered(D, TopKSAE(32, 128, 3, seed=0)) < 0.5  # a random SAE does not pass the criterion
    sae, stats = train_topk_sae(list(X.split(512)), d_in=32, d_sae=128, k=3, lr=1e-2, seed=0, progress=False)
    assert _recovered(D, sae) >= 0.9
    assert stats["explained_variance"] > 0.9
    assert 2.5 <= stats["l0"] <= 3.0
    assert 0.0 <= stats["dead_fraction"] <= 1.0 and stats["n_steps"] == 400 and stats["n_tokens"] == X.shape[0]
    norms = sae.W_dec.detach().norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)  # decoder rows renormalised


def test_training_folds_input_scale_back():
    # raw activations 50x larger: the returned SAE must work on raw data (scale folded into the biases)
    D, X = _synthetic(n=100 * 512)
    X = X * 50.0 + 3.0
    sae, stats = train_topk_sae(list(X.split(512)), d_in=32, d_sae=64, k=3, lr=1e-2, seed=0, progress=False)
    assert stats["input_scale"] != 1.0
    ev = evaluate_sae(sae, X[:4096].split(1024))
    assert ev["explained_variance"] > 0.8
    # stats are averaged over the last training batches: the final SAE is at least about as good
    assert ev["explained_variance"] >= stats["explained_variance"] - 0.02
    assert ev["l0"] <= 3.0
    # b_dec lives in raw units (it was initialised at the scaled data's median)
    median = X.median(0).values
    assert (sae.b_dec.detach() - median).norm() < 0.5 * median.norm()


def test_n_steps_cycles_reiterables_and_stops_iterators():
    X = torch.randn(5 * 64, 8)
    _, st = train_topk_sae(list(X.split(64)), d_in=8, d_sae=16, k=2, n_steps=12, progress=False)
    assert st["n_steps"] == 12
    _, st = train_topk_sae(iter(list(X.split(64))), d_in=8, d_sae=16, k=2, n_steps=12, progress=False)
    assert st["n_steps"] == 5
    _, st = train_topk_sae([X.reshape(5, 64, 8)], d_in=8, d_sae=16, k=2, batch_size=100, progress=False)
    assert st["n_steps"] == 3 and st["n_tokens"] == 300  # [B, T, d] flattened, re-chunked, remainder dropped


def test_outlier_weights_cap_only_rows_far_above_the_median():
    from neuronlib.saes import _outlier_weights

    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 60.0], [30.0, 0.0]])  # median norm 3
    w = _outlier_weights(x, cap=4.0)
    assert torch.allclose(w, torch.tensor([1.0, 1.0, 1.0, (12 / 60) ** 2, (12 / 30) ** 2]))


def test_outlier_cap_keeps_huge_rows_from_taking_the_dictionary():
    """A constant huge row in every 16 (an attention sink's position 0): with plain MSE it dominates the loss and the
    ordinary rows are reconstructed worse than with the capped loss; the huge rows stay well reconstructed."""
    D, X = _synthetic(n=150 * 512)
    sink = torch.zeros(32)
    sink[0] = 300.0
    X[::16] = sink + 0.01 * X[::16]
    normal = torch.ones(len(X), dtype=torch.bool)
    normal[::16] = False
    held_out = X[-8192:]

    def ev_rows(sae, rows):
        return evaluate_sae(sae, [rows])["explained_variance"]

    out = {}
    for cap in (None, 3.0):
        sae, stats = train_topk_sae(list(X[:-8192].split(512)), d_in=32, d_sae=128, k=3, lr=1e-2, seed=0,
                                    progress=False, outlier_cap=cap)
        assert stats["outlier_cap"] == cap
        out[cap] = (ev_rows(sae, held_out[normal[-8192:]]), ev_rows(sae, held_out))
    (plain_normal, _), (capped_normal, capped_all) = out[None], out[3.0]
    assert capped_normal > plain_normal + 0.05, out
    assert capped_all > 0.95, out  # the sink rows still reconstructed: they hold most of the variance


# sparse training kernel == dense autograd -----------------------------------------------------------------


def test_sparse_backward_matches_dense_autograd():
    torch.manual_seed(0)
    sae = TopKSAE(16, 40, 5, dtype=torch.float64, seed=3)
    with torch.no_grad():
        sae.b_enc.normal_()
        sae.b_dec.normal_()
    x = torch.randn(33, 16, dtype=torch.float64)
    dead = torch.zeros(40, dtype=torch.bool)
    dead[::3] = True
    fvu, aux, *_ = _sae_losses(sae, x, dead, 4)
    (fvu + 0.3 * aux).backward()
    fast = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad()

    z = sae.encode(x)
    x_hat = sae.decode(z)
    sst = (x - x.mean(0)).pow(2).sum()
    fvu_ref = (x_hat - x).pow(2).sum() / sst
    pre = sae.pre_acts(x).masked_fill(~dead, float("-inf"))
    v, i = pre.topk(4, dim=-1)
    z_aux = torch.zeros(33, 40, dtype=torch.float64).scatter(-1, i, torch.relu(v))
    aux_ref = (z_aux @ sae.W_dec - (x - x_hat).detach()).pow(2).sum() / sst
    (fvu_ref + 0.3 * aux_ref).backward()
    assert torch.allclose(fvu.detach(), fvu_ref.detach()) and torch.allclose(aux.detach(), aux_ref.detach())
    for name, p in sae.named_parameters():
        assert p.grad.abs().max() > 0, name
        assert torch.allclose(fast[name], p.grad, atol=1e-12, rtol=1e-9), name


# (d) TopK ---------------------------------------------------------------------------------------------------


def test_topk_keeps_at_most_k_nonzeros_and_is_shape_generic():
    torch.manual_seed(0)
    sae = TopKSAE(24, 96, 7, seed=1)
    with torch.no_grad():
        sae.b_enc.normal_()
    x = torch.randn(3, 11, 24)
    z = sae.encode(x)
    assert z.shape == (3, 11, 96)
    nnz = (z != 0).sum(-1)
    assert nnz.max() <= 7 and nnz.max() == 7
    assert (z >= 0).all()
    # the kept entries are the k largest pre-activations (ReLU'd)
    pre = sae.pre_acts(x)
    kth = pre.topk(7, dim=-1).values[..., -1:]
    assert ((z > 0) <= (pre >= kth)).all()
    assert torch.allclose(z[z > 0], pre[z > 0])
    assert sae(x).shape == x.shape
    # row-wise: encoding a flattened batch gives the same code
    assert torch.equal(sae.encode(x.reshape(-1, 24)).reshape(3, 11, 96), z)
    vals, idx = sae.encode_topk(x)
    assert vals.shape == idx.shape == (3, 11, 7)


# (b) latents + error node reproduce the input -------------------------------------------------------------------


def test_site_values_reproduce_input_exactly():
    torch.manual_seed(0)
    sae = TopKSAE(48, 192, 8, seed=2)
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(0, 0.1)
    x = (torch.randn(2, 9, 48) * 3).requires_grad_(True)
    latents, error = sae_site_values(sae, x)
    assert latents.shape == (2, 9, 192) and error.shape == (2, 9, 48)  # one error node per (layer, position)
    rec = sae_site_reconstruct(sae, latents, error)
    assert rec.dtype == x.dtype
    assert torch.equal(rec, x)
    rec.sum().backward()
    assert torch.allclose(x.grad, torch.ones_like(x))  # the site is the identity map of x
    # in the SAE's dtype the error is exact to rounding
    lat32, err32 = sae_site_values(sae, x.detach(), exact=False)
    assert err32.dtype == torch.float32
    assert (sae.decode(lat32) + err32 - x.detach()).abs().max() <= 1e-6 * 10
    # an ablated latent changes the output by exactly its decoder contribution
    j = int(latents[0, 0].nonzero()[0])
    lat2 = latents.detach().clone()
    lat2[0, 0, j] = 0
    delta = sae_site_reconstruct(sae, lat2, error) - rec.detach()
    assert torch.allclose(delta[0, 0], -latents[0, 0, j].detach() * sae.W_dec[j].detach(), atol=1e-5)
    assert delta[1].abs().max() == 0


# (c) save / load ----------------------------------------------------------------------------------------------


def test_save_load_round_trip_saelens_layout(tmp_path):
    torch.manual_seed(0)
    sae = TopKSAE(20, 60, 4, seed=5)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    out = tmp_path / "saes" / "layer_3_mlp_out"
    extra = {"hook_name": "model.layers.3.mlp", "model_name": "SmolLM2-135M-Instruct", "layer": 3,
             "site": "mlp_out", "explained_variance": 0.81, "l0": 4.0}
    save_sae(sae, out, cfg_extra=extra)
    assert sorted(p.name for p in out.iterdir()) == sorted([CFG_FILENAME, WEIGHTS_FILENAME, "manifest.json"])
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp dirs left behind
    assert CFG_FILENAME == "cfg.json" and WEIGHTS_FILENAME == "sae_weights.safetensors"
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["d_in"] == 20 and cfg["d_sae"] == 60 and cfg["k"] == 4
    assert cfg["architecture"] == "topk" and cfg["activation_fn_str"] == "topk"
    assert cfg["activation_fn_kwargs"] == {"k": 4} and cfg["dtype"] == "float32"
    assert cfg["hook_name"] == "model.layers.3.mlp" and cfg["model_name"] == "SmolLM2-135M-Instruct"
    assert cfg["layer"] == 3 and cfg["site"] == "mlp_out" and cfg["explained_variance"] == 0.81
    from safetensors.torch import load_file

    assert set(load_file(str(out / WEIGHTS_FILENAME))) == {"W_enc", "b_enc", "W_dec", "b_dec"}

    loaded = load_sae(out)
    assert (loaded.d_in, loaded.d_sae, loaded.k) == (20, 60, 4)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(loaded, name), getattr(sae, name)), name
    x = torch.randn(2, 5, 20)
    assert torch.equal(loaded(x), sae(x))
    assert torch.equal(loaded.encode(x), sae.encode(x))

    # overwriting replaces the directory atomically; other k is rejected on the way in
    sae2 = TopKSAE(20, 60, 4, seed=6)
    save_sae(sae2, out, cfg_extra={"site": "resid"})
    assert torch.equal(load_sae(out).W_dec, sae2.W_dec) and load_sae(out).cfg["site"] == "resid"
    assert [p.name for p in out.parent.iterdir()] == [out.name]
    with pytest.raises(ValueError):
        save_sae(sae2, tmp_path / "bad", cfg_extra={"k": 5})


def test_load_reads_saelens_v5_style_cfg(tmp_path):
    sae = TopKSAE(8, 16, 2, seed=7)
    save_sae(sae, tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    del cfg["k"]  # older SAELens files keep k only in activation_fn_kwargs (and have no manifest)
    (tmp_path / "s" / "manifest.json").unlink()
    (tmp_path / "s" / "cfg.json").write_text(json.dumps(cfg))
    assert load_sae(tmp_path / "s").k == 2
    cfg["activation_fn_kwargs"] = {}
    (tmp_path / "s" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError):
        load_sae(tmp_path / "s")


# (e) corpus ---------------------------------------------------------------------------------------------------


def test_corpus_is_deterministic_english_text_with_licence():
    from neuronlib.data.corpus import DEFAULT_SOURCES, available_sources, corpus_info, iter_corpus_texts

    info = corpus_info()
    assert info["licence"] and all(s["licence"] for s in info["sources"])
    assert info["n_chars"] > 0 and info["n_documents"] > 0
    # scripts/setup_env.sh installs every source, so the real corpus must be there (no silent fallback).
    assert set(DEFAULT_SOURCES) <= set(available_sources())
    assert not info["fallback"]
    assert info["n_chars"] > 10_000_000  # ~14 M characters, ~3.6 M SmolLM2 tokens
    assert {s["name"] for s in info["sources"]} == set(DEFAULT_SOURCES)
    assert all(s["version"] == s["pinned_version"] for s in info["sources"])

    a = list(iter_corpus_texts(max_chars=20_000, seed=0))
    b = list(iter_corpus_texts(max_chars=20_000, seed=0))
    c = list(iter_corpus_texts(max_chars=20_000, seed=1))
    assert a == b and a != c
    assert sum(map(len, a)) == 20_000
    assert all(40 <= len(t) <= 1000 for t in a[:-1]) and all(t.strip() for t in a)
    words = re.findall(r"[a-z']+", " ".join(a).lower())
    common = {"the", "and", "of", "to", "a", "in", "that", "is", "he", "it", "for", "with", "i", "his", "was"}
    assert len(words) > 2_000 and sum(w in common for w in words) / len(words) > 0.2


def test_corpus_chunking_keeps_paragraphs_and_sentence_boundaries():
    from neuronlib.data.corpus import _chunk_document

    text = "Title\n\n" + " ".join(f"Sentence number {i} ends here." for i in range(200)) + "\n\nLast one is short."
    chunks = _chunk_document(text, 300)
    assert all(len(c) <= 300 for c in chunks)
    assert chunks[0].startswith("Title\n\nSentence number 0")
    assert all(c.rstrip().endswith(".") for c in chunks)  # long paragraph split at sentence ends
    assert "".join(c.replace("\n\n", " ").replace(" ", "") for c in chunks) == text.replace("\n\n", "").replace(" ", "")


def test_from_tensors_uses_the_tensors_and_checks_shapes():
    W_enc, b_enc, W_dec, b_dec = torch.randn(20, 60), torch.randn(60), torch.randn(60, 20), torch.randn(20)
    sae = TopKSAE.from_tensors(W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, b_dec=b_dec, k=4)
    assert (sae.d_in, sae.d_sae, sae.k) == (20, 60, 4)
    assert sae.W_enc.data_ptr() == W_enc.data_ptr() and sae.W_dec.data_ptr() == W_dec.data_ptr()  # no copy
    assert [n for n, _ in sae.named_parameters()] == [n for n, _ in TopKSAE(20, 60, 4).named_parameters()]
    with pytest.raises(ValueError, match=r"W_enc has shape \(60, 20\)"):
        TopKSAE.from_tensors(W_enc=W_dec, b_enc=b_enc, W_dec=W_dec, b_dec=b_dec, k=4)
    with pytest.raises(ValueError, match="need 0 < k <= d_sae"):
        TopKSAE.from_tensors(W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, b_dec=b_dec, k=61)


def test_loaded_sae_is_independent_of_its_file(tmp_path):
    """load_sae keeps the file's tensors without a copy; editing the SAE must not write to the file, and replacing
    the file must not change an SAE already loaded."""
    sae = TopKSAE(20, 60, 4, seed=5)
    save_sae(sae, tmp_path / "s")
    loaded = load_sae(tmp_path / "s")
    with torch.no_grad():
        loaded.W_dec.add_(1.0)
    assert torch.equal(load_sae(tmp_path / "s").W_dec, sae.W_dec)
    save_sae(TopKSAE(20, 60, 4, seed=6), tmp_path / "s")
    assert torch.equal(loaded.W_dec, sae.W_dec + 1.0)
