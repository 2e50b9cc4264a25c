import contextlib
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: spinning OpenMP threads starve a shared CPU

import pytest
import torch

import neuronlib

SVA_PAIRS = [
    {"clean_prefix": "the keys to the cabinet", "patch_prefix": "the key to the cabinet", "clean_answer": " are", "patch_answer": " is"},
    {"clean_prefix": "the dogs near the boy", "patch_prefix": "the dog near the boy", "clean_answer": " have", "patch_answer": " has"},
    {"clean_prefix": "the friend", "patch_prefix": "the friends", "clean_answer": " does", "patch_answer": " do"},
]


def pytest_collection_modifyitems(items):
    """Every test that uses the real model (the ``smollm`` fixture, directly or through another fixture) is marked
    ``real_model``, so ``make test-fast`` (``-m "not real_model and not notebook"``) leaves it out."""
    for item in items:
        if "smollm" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.real_model)


@pytest.fixture(scope="session")
def tiny_llama():
    return neuronlib.load_model("tiny-llama")


@pytest.fixture(scope="session")
def tiny_gemma():
    return neuronlib.load_model("tiny-gemma")


@pytest.fixture(scope="session")
def tiny_qwen2():
    return neuronlib.load_model("tiny-qwen2")


@pytest.fixture(params=["tiny-llama", "tiny-gemma", "tiny-qwen2"])
def tiny(request, tiny_llama, tiny_gemma, tiny_qwen2):
    return {"tiny-llama": tiny_llama, "tiny-gemma": tiny_gemma, "tiny-qwen2": tiny_qwen2}[request.param]


@pytest.fixture(scope="session")
def smollm():
    return neuronlib.load_model("smollm2-135m")


def site_modules(model, site):
    """(module, kind) per layer for a site, found independently of neuronlib.tracing."""
    base = model.hf.model
    if site == "embed":
        return [(base.embed_tokens, "out")]
    if site == "attn_out":
        return [(layer.self_attn.o_proj, "in") for layer in base.layers]
    if site == "mlp_acts":
        return [(layer.mlp.down_proj, "in") for layer in base.layers]
    if site == "mlp_out":
        return [(layer.mlp, "out") for layer in base.layers]
    if site == "resid":
        return [(layer, "out") for layer in base.layers]
    raise ValueError(site)


def hooked_forward(model, inputs, sites, replace=None):
    """Plain torch hooks: tap every site with a zero leaf (or replace one via ``replace[(site, i)](value)``).

    Returns (last-position logits, {site: [values]}, {site: [deltas]}); all hooks are removed afterwards.
    """
    values, deltas, handles = {s: [] for s in sites}, {s: [] for s in sites}, []
    replace = replace or {}

    def make(site, i):
        def tap(v):
            v = replace[(site, i)](v) if (site, i) in replace else v
            d = torch.zeros_like(v, requires_grad=True)
            values[site].append(v.detach())
            deltas[site].append(d)
            return v + d

        return tap

    for site in sites:
        for i, (module, kind) in enumerate(site_modules(model, site)):
            tap = make(site, i)
            if kind == "in":
                handles.append(module.register_forward_pre_hook(lambda m, args, tap=tap: (tap(args[0]), *args[1:])))
            else:
                def post(m, args, out, tap=tap):
                    return (tap(out[0]), *out[1:]) if isinstance(out, tuple) else tap(out)
                handles.append(module.register_forward_hook(post))
    try:
        logits = model.hf(**inputs, use_cache=False).logits[:, -1]
    finally:
        for h in handles:
            h.remove()
    return logits, values, deltas


def circuit_by_circuit(model, scores, pairs, site, sizes, mode):
    """{size: (m(C), m(C̄))} from two ablate() calls per circuit: the reference for evaluate_circuit's batched sweep."""
    from neuronlib.evaluation import node_ranks
    from neuronlib.interventions import ablate
    from neuronlib.sites import Node, site_layers

    rank = node_ranks(scores, (site,))[site]
    layers = site_layers(model, site)
    out = {}
    for k in sizes:
        nodes = [Node(site, layers[int(l)], int(t), int(u)) for l, t, u in (rank < k).nonzero()]
        m_c = ablate(model, pairs, nodes, mode=mode, complement=True, sites=(site,)).metric.mean()
        m_cbar = ablate(model, pairs, nodes, mode=mode, sites=(site,)).metric.mean()
        out[min(k, rank.numel())] = (float(m_c), float(m_cbar))
    return out


def perfect_sae(d_in: int):
    """W_dec = [I; -I], k = d_in: exactly one of +-(x - b_dec)_i is positive, so TopK keeps those and x_hat = x."""
    from neuronlib.saes import TopKSAE

    sae = TopKSAE(d_in, 2 * d_in, d_in, seed=0)
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.W_dec.copy_(torch.cat([eye, -eye]))
        sae.W_enc.copy_(sae.W_dec.t())
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def make_notebook(path, *cells, params='MODEL = "tiny-llama"\nSMOKE = True'):
    """A notebook file: a tagged parameters cell (``params``), then ``cells``."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    first = nbformat.v4.new_code_cell(params)
    first.metadata["tags"] = ["parameters"]
    nb.cells = [first, *[nbformat.v4.new_code_cell(c) for c in cells]]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))


def tiny_texts(n=200, seed=0):
    """``n`` seeded sentences of tiny-llama's words: a corpus for training tiny SAEs."""
    import random

    from neuronlib.models import TINY_WORDS

    rng = random.Random(seed)
    words = [w for w in TINY_WORDS if w.isalpha()]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(20, 60))) for _ in range(n)]


@contextlib.contextmanager
def one_torch_thread():
    """Torch at one thread inside the block (SAE training threads reproduce only at a fixed count), restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
