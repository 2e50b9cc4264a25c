"""Edges (docs/method.md §3): exact against the Jacobian of a plain-torch replacement, stop-grads, pruning, JSON."""
import contextlib
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.autograd.functional import jacobian

import neuronlib
from neuronlib import viewer
from neuronlib.activations import read_sites
from neuronlib.edges import attribute_edges
from neuronlib.graph import CircuitGraph, prune_mask
from neuronlib.models import _finish, build_tiny_model
from neuronlib.paper.edges import edge_pruning_table, edges_to_reach_table
from neuronlib.pruning import edges_to_reach, evaluate_edge_pruning
from neuronlib.sites import Node

PAIRS = [
    {"clean_prefix": "the keys to the cabinet", "patch_prefix": "the key to the cabinet", "clean_answer": " are",
     "patch_answer": " is"},
    {"clean_prefix": "the dogs near the boy", "patch_prefix": "the dog near the boy", "clean_answer": " have",
     "patch_answer": " has"},
]
T = 5


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one thread avoids thread hand-off costs (large on a shared CPU); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny3():
    """A seeded 3-layer tiny Llama: one MLP strictly between layers 0 and 2."""
    hf, tok = build_tiny_model("tiny-llama", seed=1, n_layers=3)
    return _finish("tiny-llama-3", hf, tok, "test", device="cpu", dtype=torch.float32)


def all_neurons(model):
    return [Node("mlp_acts", l, p, u) for l in range(model.n_layers) for p in range(T) for u in range(model.d_mlp)]


# ---------------------------------------------------------------------------------------------------------------
# an independent reference: plain torch hooks on the HF modules (no neuronlib.tracing), the RelP rules written
# out again, and a function of ONE source tensor whose Jacobian torch.autograd.functional.jacobian computes


def _st(value, surrogate):
    return value.detach() + (surrogate - surrogate.detach())


@contextlib.contextmanager
def hooked(model, *, relp, detach=(), set_acts=None, set_embed=None, record=None):
    """RelP rules (if ``relp``) as forward hooks; MLP layers in ``detach`` pass h.detach() to down_proj; ``set_acts``
    {layer: tensor} replaces a layer's neurons, ``set_embed`` the embeddings; ``record`` collects every layer's h."""
    hf = model.hf.model
    handles, a_u = [], {}
    try:
        if set_embed is not None:
            handles.append(hf.embed_tokens.register_forward_hook(lambda m, a, o: set_embed))
        norms = [hf.norm] + [n for layer in hf.layers for n in (layer.input_layernorm, layer.post_attention_layernorm)]
        if relp:
            for norm in norms:
                def frozen(m, args, out):
                    x = args[0]
                    scale = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + m.variance_epsilon).detach()
                    return _st(out, x * scale * m.weight)
                handles.append(norm.register_forward_hook(frozen))
        for i, layer in enumerate(hf.layers):
            if relp:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                    handles.append(proj.register_forward_hook(lambda m, a, o: o.detach()))

                def act(m, args, out, i=i):
                    z = args[0]
                    a_u[(i, "a")] = _st(out, z * torch.sigmoid(z).detach())
                    return a_u[(i, "a")]

                def up(m, args, out, i=i):
                    a_u[(i, "u")] = out
                handles.append(layer.mlp.act_fn.register_forward_hook(act))
                handles.append(layer.mlp.up_proj.register_forward_hook(up))

            def pre(m, args, i=i):
                h = args[0]
                if relp:
                    a, u = a_u[(i, "a")], a_u[(i, "u")]
                    h = _st(h, 0.5 * a * u.detach() + 0.5 * a.detach() * u)
                if record is not None:
                    record[i] = h
                if set_acts is not None and i in set_acts:
                    h = set_acts[i]
                if i in detach:
                    h = h.detach()
                return (h,)
            handles.append(layer.mlp.down_proj.register_forward_pre_hook(pre))
        yield
    finally:
        for h in handles:
            h.remove()


def reference(model, inputs, answers, *, relp, source, target, detach):
    """(source value x, Jacobian d target / d x) for one example; source/target: layer (-1 = embeddings,
    n_layers = the metric logit(answer) - logit(other))."""
    values = {}
    with hooked(model, relp=relp, record=values):
        with torch.no_grad():
            model.hf(**inputs)
        emb = model.hf.model.embed_tokens(inputs["input_ids"]).detach()
    x0 = emb if source == -1 else values[source].detach()

    def f(x):
        rec = {}
        kw = dict(set_embed=x) if source == -1 else dict(set_acts={source: x})
        with hooked(model, relp=relp, detach=detach, record=rec, **kw):
            logits = model.hf(**inputs, use_cache=False).logits[:, -1]
        if target == model.n_layers:
            return logits[:, answers[0]] - logits[:, answers[1]]
        return rec[target]

    return x0[0], jacobian(f, x0, vectorize=True)


def dense_block(graph, b, source_layer, target_layer, width_s, width_t, weight="raw"):
    """Example b's edges from layer ``source_layer`` to ``target_layer`` as a dense [T, W_t, T, W_s] array (NaN where
    the graph has no edge). Layer -1 = embeddings (W = 1), n_layers = the output (T = 1, W = 1)."""
    nodes = graph.nodes.set_index("id")
    src = nodes.loc[graph.edges["source"]]
    tgt = nodes.loc[graph.edges["target"]]
    sel = ((src["layer"].to_numpy() == source_layer) & (tgt["layer"].to_numpy() == target_layer))
    out = np.full((T, width_t, T, width_s), np.nan)
    su = np.where(src["kind"].to_numpy()[sel] == "neuron", src["unit"].to_numpy()[sel], 0).astype(int)
    tu = np.where(tgt["kind"].to_numpy()[sel] == "neuron", tgt["unit"].to_numpy()[sel], 0).astype(int)
    tp = np.where(tgt["kind"].to_numpy()[sel] == "output", 0, tgt["position"].to_numpy()[sel]).astype(int)
    out[tp, tu, src["position"].to_numpy()[sel].astype(int), su] = graph.per_example[weight][b][sel]
    return out, int(sel.sum())


def assert_edges_match_reference(model, graph, b, ex, method, *, every_neuron=True):
    """Example ``b``'s edges of ``graph`` (made from the pair ``ex``) equal x_s * dv_t/dv_s of the hooked reference
    (MLPs strictly between the two layers detached), block by block. ``every_neuron``: the graph holds every neuron,
    so an edge missing from it must have a zero reference (causal attention); otherwise only the edges present are
    compared. Returns the number of edges compared."""
    inputs = model.tokenize([ex["clean_prefix"]])
    answers = (model.token_id(ex["clean_answer"]), model.token_id(ex["patch_answer"]))
    L, U = model.n_layers, model.d_mlp
    checked = 0
    for s in range(-1, L):
        for t in range(s + 1, L + 1):
            between = tuple(range(s + 1, t)) if t < L else tuple(range(s + 1, L))
            x, J = reference(model, inputs, answers, relp=method != "atp", source=s, target=t, detach=between)
            J = J.reshape(1, 1, *x.shape) if t == L else J[0, :, :, 0]  # [T_t, U_t, T, U_s]
            want = (J * x[None, None]).numpy()  # x_s * dv_t/dv_s
            if s == -1:
                want = want.sum(-1, keepdims=True)  # an embedding node is the whole vector at one position
            got, n = dense_block(graph, b, s, t, 1 if s == -1 else U, 1 if t == L else U)
            got = got[: want.shape[0]]
            missing = np.isnan(got)
            if every_neuron:
                # no edge exactly where the source comes after the target's position (causal attention: no effect)
                assert (want[missing] == 0).all()
                assert np.abs(want[~missing]).max() > 1e-3  # a non-trivial block
            if n:
                assert np.abs(got[~missing] - want[~missing]).max() <= 1e-5 * (1 + np.abs(want).max())
            checked += n
    return checked


@pytest.mark.parametrize("method", ["relp", "atp"])
def test_edges_equal_the_jacobian_of_a_hooked_replacement_model(tiny3, method):
    graph = attribute_edges(tiny3, PAIRS[1:], nodes=all_neurons(tiny3), method=method, progress=False)
    assert assert_edges_match_reference(tiny3, graph, 0, PAIRS[1], method) == graph.n_edges  # every edge compared


# ---------------------------------------------------------------------------------------------------------------
# a golden of the edge scores: written once by the code that the reference above checked, then compared with the
# current code on every run, so a refactor that moves any edge score (also where the reference cannot look: the
# counterfactual baseline, the RelP ablations, a Gemma model, the relevance column) fails

GOLDEN = Path(__file__).parent / "data" / "edges_golden.npz"
GOLDEN_CASES = {  # name: (model, edge method, edge baseline)
    "llama3-relp": ("tiny3", "relp", "zero"), "llama3-atp": ("tiny3", "atp", "zero"),
    "llama3-relp-cf": ("tiny3", "relp", "counterfactual"), "llama3-relp-no-gate": ("tiny3", "relp-no-gate", "zero"),
    "gemma-relp": ("tiny-gemma", "relp", "zero"),
}


def golden_graphs(models):
    """{case: graph} for the golden: the top 40 neurons by |RelP score| of PAIRS, every edge score."""
    out = {}
    for case, (name, method, baseline) in GOLDEN_CASES.items():
        model = models[name]
        nodes = neuronlib.attribute(model, PAIRS, method="relp", sites=("mlp_acts",)).nodes(40)
        out[case] = attribute_edges(model, PAIRS, nodes=nodes, method=method, edge_baseline=baseline, progress=False)
    return out


def golden_arrays(graphs):
    arrays = {}
    for case, g in graphs.items():
        arrays[f"{case}/source"] = g.edges["source"].to_numpy(dtype=str)
        arrays[f"{case}/target"] = g.edges["target"].to_numpy(dtype=str)
        for column in ("id", "kind"):
            arrays[f"{case}/node_{column}"] = g.nodes[column].to_numpy(dtype=str)
        for column in ("layer", "position", "unit"):
            arrays[f"{case}/node_{column}"] = g.nodes[column].to_numpy(dtype=np.int64)
        for column in ("score", "value"):
            arrays[f"{case}/node_{column}"] = g.nodes[column].to_numpy(dtype=float)
        for weight in ("raw", "relevance"):
            arrays[f"{case}/{weight}"] = g.per_example[weight]
    return arrays


def write_golden(models):
    GOLDEN.parent.mkdir(exist_ok=True)
    np.savez_compressed(GOLDEN, **golden_arrays(golden_graphs(models)))


@pytest.fixture(scope="module")
def golden():
    assert GOLDEN.exists(), f"{GOLDEN} is missing: it is written by `python tests/test_edges.py --write-golden`"
    with np.load(GOLDEN) as z:
        return dict(z)


def test_golden_edge_scores_equal_the_hooked_reference(golden, tiny3):
    """The golden is not a number nobody checked: its RelP and AtP edges equal the independent Jacobians."""
    for case, method in (("llama3-relp", "relp"), ("llama3-atp", "atp")):
        nodes = pd.DataFrame({c: golden[f"{case}/node_{c}"] for c in ("id", "kind", "layer", "position", "unit")})
        edges = pd.DataFrame({"source": golden[f"{case}/source"], "target": golden[f"{case}/target"]})
        graph = CircuitGraph(nodes, edges, {}, {"raw": golden[f"{case}/raw"]})
        for b, ex in enumerate(PAIRS):
            assert assert_edges_match_reference(tiny3, graph, b, ex, method, every_neuron=False) == len(edges)


def test_edge_scores_equal_the_golden(golden, tiny3, tiny_gemma):
    now = golden_arrays(golden_graphs({"tiny3": tiny3, "tiny-gemma": tiny_gemma}))
    assert set(now) == set(golden)
    for key, want in golden.items():
        if want.dtype.kind in "Ui":
            assert now[key].shape == want.shape and (now[key] == want).all(), key
        else:
            assert now[key].shape == want.shape and np.allclose(now[key], want, rtol=1e-5, atol=1e-6,
                                                                equal_nan=True), key


def test_stopgrad_removes_exactly_the_paths_through_the_intermediate_mlp(tiny3):
    model = tiny3
    ex = PAIRS[0]
    inputs = model.tokenize([ex["clean_prefix"]])
    ans = (model.token_id(ex["clean_answer"]), model.token_id(ex["patch_answer"]))
    x0, full = reference(model, inputs, ans, relp=True, source=0, target=2, detach=())
    _, direct02 = reference(model, inputs, ans, relp=True, source=0, target=2, detach=(1,))
    _, direct01 = reference(model, inputs, ans, relp=True, source=0, target=1, detach=())
    _, direct12 = reference(model, inputs, ans, relp=True, source=1, target=2, detach=())
    n = T * model.d_mlp
    full, direct02 = full.reshape(n, n), direct02.reshape(n, n)
    via_mlp1 = direct12.reshape(n, n) @ direct01.reshape(n, n)
    # the chain rule: full = direct + the path through MLP 1 (the only MLP strictly between)
    assert torch.allclose(full, direct02 + via_mlp1, atol=1e-5, rtol=1e-4)
    assert via_mlp1.abs().max() > 1e-2 * full.abs().max()  # the removed path is not negligible
    graph = attribute_edges(model, PAIRS[:1], nodes=all_neurons(model), progress=False)
    got, _ = dense_block(graph, 0, 0, 2, model.d_mlp, model.d_mlp)
    got = torch.from_numpy(np.nan_to_num(got, nan=0.0)).float().reshape(n, n)
    x = x0.reshape(1, n)
    assert torch.allclose(got, x * direct02, atol=1e-5, rtol=1e-4)
    assert (got - x * full).abs().max() > 1e-3  # and it is not the full Jacobian


def test_zero_baseline_relp_edges_are_conservative(tiny_llama):
    """Edges into a target from ALL its possible sources sum to its value (v_t, or m for the output)."""
    model = tiny_llama
    graph = attribute_edges(model, PAIRS, nodes=all_neurons(model), progress=False)
    nodes = graph.nodes.set_index("id")
    for b in range(len(PAIRS)):
        sums = pd.Series(graph.per_example["raw"][b]).groupby(graph.edges["target"].to_numpy()).sum()
        inputs = model.tokenize([PAIRS[b]["clean_prefix"]])
        acts = {}
        with hooked(model, relp=True, record=acts):
            with torch.no_grad():
                logits = model.hf(**inputs).logits[0, -1]
        m = logits[model.token_id(PAIRS[b]["clean_answer"])] - logits[model.token_id(PAIRS[b]["patch_answer"])]
        assert abs(sums["output"] - float(m)) <= 1e-4 * (1 + abs(float(m)))
        for tid, total in sums.items():
            if tid == "output":
                continue
            row = nodes.loc[tid]
            v = float(acts[int(row.layer)][0, int(row.position), int(row.unit)])
            assert abs(total - v) <= 1e-4 * (1 + abs(v)), tid
    # relevance weights: edges into a neuron sum to its zero-baseline relevance v * dm/dv
    rel = pd.Series(graph.per_example["relevance"][0]).groupby(graph.edges["target"].to_numpy()).sum()
    zero = neuronlib.attribute(model, PAIRS, method="relp", baseline="zero", sites=("mlp_acts",))["mlp_acts"][0]
    for tid in list(rel.index)[:50]:
        if tid == "output":
            continue
        row = nodes.loc[tid]
        want = float(zero[int(row.layer), int(row.position), int(row.unit)])
        assert abs(rel[tid] - want) <= 1e-4 * (1 + abs(want))


def test_batched_equals_one_backward_per_target(tiny3):
    nodes = neuronlib.attribute(tiny3, PAIRS, method="relp", sites=("mlp_acts",)).nodes(40)
    one = attribute_edges(tiny3, PAIRS, nodes=nodes, batched=False, progress=False)
    many = attribute_edges(tiny3, PAIRS, nodes=nodes, batched=True, max_elements=5000, progress=False)  # chunks
    assert one.n_edges == many.n_edges > 0
    assert np.abs(one.per_example["raw"] - many.per_example["raw"]).max() <= 1e-6
    assert (one.edges[["source", "target"]].to_numpy() == many.edges[["source", "target"]].to_numpy()).all()
    # the counterfactual edge baseline only rescales each source: e_cf * v = e_zero * (v - v')
    cf = attribute_edges(tiny3, PAIRS, nodes=nodes, edge_baseline="counterfactual", progress=False)
    clean, _ = read_sites(tiny3, tiny3.tokenize([p["clean_prefix"] for p in PAIRS]), ("mlp_acts",))
    patch, _ = read_sites(tiny3, tiny3.tokenize([p["patch_prefix"] for p in PAIRS]), ("mlp_acts",))
    src = one.nodes.set_index("id").loc[one.edges["source"]]
    neuron = (src["kind"] == "neuron").to_numpy()
    lay, pos, unit = (src[c].to_numpy()[neuron].astype(int) for c in ("layer", "position", "unit"))
    for b in range(len(PAIRS)):
        v = np.array([float(clean["mlp_acts"][l][b, p, u]) for l, p, u in zip(lay, pos, unit)])
        v_cf = np.array([float(patch["mlp_acts"][l][b, p, u]) for l, p, u in zip(lay, pos, unit)])
        lhs = cf.per_example["raw"][b][neuron] * v
        rhs = one.per_example["raw"][b][neuron] * (v - v_cf)
        assert np.allclose(lhs, rhs, atol=1e-6, rtol=1e-4)
        assert np.abs(rhs).max() > 1e-3


def test_default_nodes_are_the_top_k_and_bad_input_raises(tiny_llama):
    scores = neuronlib.attribute(tiny_llama, PAIRS, method="relp", sites=("mlp_acts",))
    graph = attribute_edges(tiny_llama, PAIRS, k=25, progress=False)
    assert set(graph.neurons()) == set(scores.nodes(25))
    assert len(graph.nodes) == 25 + T + 1
    with pytest.raises(ValueError, match="one length"):
        attribute_edges(tiny_llama, PAIRS + [{"clean_prefix": "the friend", "patch_prefix": "the friends",
                                              "clean_answer": " does", "patch_answer": " do"}], k=5)
    with pytest.raises(ValueError, match="neurons"):
        attribute_edges(tiny_llama, PAIRS, nodes=[Node("attn_out", 0, 0, 0)])
    with pytest.raises(ValueError, match="unknown edge method"):
        attribute_edges(tiny_llama, PAIRS, method="ig")


# ---------------------------------------------------------------------------------------------------------------
# pruning


def hand_graph():
    """E0 -> A -> B -> out is strong; A -> C (weak, C has no way out); E0 -> D -> F (F has no way out);
    G has an outgoing edge to out but no incoming one."""
    nodes = pd.DataFrame([
        {"id": "E0", "kind": "embed", "layer": -1, "position": 0},
        {"id": "A", "kind": "neuron", "layer": 0, "position": 0},
        {"id": "B", "kind": "neuron", "layer": 1, "position": 0},
        {"id": "C", "kind": "neuron", "layer": 1, "position": 0},
        {"id": "D", "kind": "neuron", "layer": 0, "position": 0},
        {"id": "F", "kind": "neuron", "layer": 1, "position": 0},
        {"id": "G", "kind": "neuron", "layer": 1, "position": 0},
        {"id": "output", "kind": "output", "layer": 2, "position": 0},
    ])
    edges = pd.DataFrame([
        ("E0", "A", 5.0), ("A", "B", -4.0), ("B", "output", 3.0),   # the strong path
        ("E0", "D", 2.5), ("D", "F", 2.0),                        # D -> F, and F leads nowhere
        ("G", "output", -1.5),                                     # G: no incoming edge
        ("A", "C", 0.5), ("C", "output", 0.1), ("D", "output", 0.05),
    ], columns=["source", "target", "weight"])
    return CircuitGraph(nodes, edges, {"tokens": ["x"], "n_layers": 2})


def survivors(graph, **kw):
    edges, nodes = prune_mask(graph, **kw)
    return set(graph.nodes["id"][nodes]), int(edges.sum())


def test_pruning_keeps_nodes_with_an_incoming_and_an_outgoing_edge():
    g = hand_graph()
    # top 3 edges: the strong path only
    assert survivors(g, n_edges=3) == ({"E0", "A", "B", "output"}, 3)
    # top 5 adds E0->D and D->F: D has no outgoing-to-kept... D has D->F (out) and E0->D (in): kept; F has no out
    nodes, n = survivors(g, n_edges=5)
    assert nodes == {"E0", "A", "B", "D", "output"} and n == 4  # D->F dropped with F
    # recursive: without F, D has no outgoing edge left, so D goes too
    assert survivors(g, n_edges=5, recursive=True) == ({"E0", "A", "B", "output"}, 3)
    # top 6 adds G->output: G has no incoming edge
    assert "G" not in survivors(g, n_edges=6)[0]
    # everything: C now has in (A->C) and out (C->output); D has D->output
    nodes, n = survivors(g, percent=100)
    assert nodes == {"E0", "A", "B", "C", "D", "output"} and n == 7  # D->F and G->output still drop
    # percent rounds up: 30% of 9 edges = 2.7 -> 3 edges
    assert survivors(g, percent=30) == survivors(g, n_edges=3)
    assert survivors(g, percent=0) == (set(), 0)
    pruned = g.prune(n_edges=3)
    assert list(pruned.nodes["id"]) == ["E0", "A", "B", "output"] and pruned.meta["n_edges_kept"] == 3
    with pytest.raises(ValueError):
        g.prune(percent=120)


def test_pruned_circuits_are_evaluated_with_ablation(tiny_llama):
    graph = attribute_edges(tiny_llama, PAIRS, nodes=all_neurons(tiny_llama), progress=False)
    frame = evaluate_edge_pruning(tiny_llama, graph, PAIRS, percents=[0, 5, 100], node_baseline=True)
    full = frame[frame["percent"] == 100].iloc[0]
    empty = frame[frame["percent"] == 0].iloc[0]
    # every neuron at every position survives at 100%: nothing is ablated
    assert full.n_nodes == tiny_llama.n_layers * T * tiny_llama.d_mlp
    assert abs(full.faithfulness - 1) <= 1e-5 and abs(full.completeness) <= 1e-5
    assert empty.n_nodes == 0 and abs(empty.faithfulness) <= 1e-5 and abs(empty.completeness - 1) <= 1e-5
    mid = frame[frame["percent"] == 5].iloc[0]
    assert 0 < mid.n_nodes < full.n_nodes and mid.n_edges == int(np.ceil(0.05 * graph.n_edges))
    by_hand = neuronlib.ablate(tiny_llama, PAIRS, graph.prune(5).neurons(), complement=True, sites=("mlp_acts",),
                               mode="mean").metric.mean()
    assert abs(float(by_hand) - mid.m_C) <= 1e-5
    assert edges_to_reach(frame, 0.5) <= graph.n_edges


def test_edge_pruning_intervals_pool_per_prompt_metrics(tiny_llama):
    graph = attribute_edges(tiny_llama, PAIRS, k=40, progress=False)
    frames = {}
    for template in ("a", "b"):  # the same prompts twice: two "templates" with identical per-prompt metrics
        for weight in ("raw", "relevance"):
            frames[(template, weight)] = evaluate_edge_pruning(tiny_llama, graph.with_weight(weight), PAIRS,
                                                               percents=[5, 50, 100], node_baseline=True,
                                                               per_example=True)
    f = frames[("a", "raw")]
    for r in f.itertuples():
        assert len(r.m_C_ex) == len(PAIRS) and abs(r.m_C_ex.mean() - r.m_C) <= 1e-5
    table = edge_pruning_table(frames, n_boot=200, model=tiny_llama.name)
    assert set(table.template) == {"a", "b", "pooled"} and set(table.weight) == {"raw", "relevance"}
    pooled = table[(table.template == "pooled") & (table.weight == "raw")].set_index("percent")
    single = table[(table.template == "a") & (table.weight == "raw")].set_index("percent")
    # pooling two copies of the same prompts gives the same ratio, which is the frame's own
    assert np.allclose(pooled.faithfulness, single.faithfulness, atol=1e-9)
    assert np.allclose(single.faithfulness, f.set_index("percent").faithfulness, atol=1e-6)
    assert (table.faithfulness_lo <= table.faithfulness + 1e-9).all()
    assert (table.faithfulness <= table.faithfulness_hi + 1e-9).all()
    assert {"faithfulness_nodes_lo", "completeness_hi"} <= set(table.columns)
    assert (pooled.n_test == 2 * len(PAIRS)).all()
    reach = edges_to_reach_table(frames, thresholds=(0.5,), n_boot=200).set_index(["template", "weight"])
    assert len(reach) == 6 and reach.loc[("a", "raw"), "faithfulness_all"] == pytest.approx(
        single.loc[100.0, "faithfulness"], abs=1e-9)
    assert reach.loc[("a", "raw"), "pool_neurons"] == graph.nodes.kind.eq("neuron").sum()  # 100 %: the whole pool
    assert (reach.faithfulness_all_lo <= reach.faithfulness_all + 1e-9).all()
    assert (reach.faithfulness_all <= reach.faithfulness_all_hi + 1e-9).all()
    assert (reach.completeness_all_hi > reach.completeness_all_lo).all()
    for key, r in reach.iterrows():
        if r["reached@F>=0.5"] == 1.0:
            assert r["edges@F>=0.5_lo"] <= r["edges@F>=0.5"] <= r["edges@F>=0.5_hi"] <= r.total_edges


def test_node_pool_table_evaluates_the_top_neurons_of_the_first_prompts(tiny_llama):
    from datasets import Dataset

    from neuronlib.paper.edges import node_pool_table

    data = Dataset.from_list(PAIRS)
    every = tiny_llama.n_layers * T * tiny_llama.d_mlp
    table = node_pool_table(tiny_llama, {"a": data, "b": data}, {"a": data, "b": data}, n_prompts=(1, 2), k=every,
                            n_boot=50)
    assert len(table) == 6 and set(table.template) == {"a", "b", "pooled"}
    assert np.allclose(table.faithfulness, 1, atol=1e-5) and np.allclose(table.completeness, 0, atol=1e-5)
    small = node_pool_table(tiny_llama, {"a": data}, {"a": data}, n_prompts=(1,), k=10, n_boot=50).iloc[0]
    scores = neuronlib.attribute(tiny_llama, data.select([0]), method="relp", baseline="counterfactual",
                                 sites=("mlp_acts",))
    by_hand = neuronlib.evaluate_circuit(tiny_llama, scores, data, sizes=[10], sites=("mlp_acts",)).iloc[0]
    assert small.pool_neurons == 10 and small.faithfulness == pytest.approx(by_hand.faithfulness, abs=1e-9)
    assert small.faithfulness_lo <= small.faithfulness <= small.faithfulness_hi
    with pytest.raises(ValueError, match="3 training prompts"):
        node_pool_table(tiny_llama, {"a": data}, {"a": data}, n_prompts=(3,), k=10)


def test_graph_descriptions_read_through_the_post_mlp_norm(tiny_gemma):
    """A graph's neuron descriptions are :func:`neuronlib.describe.describe`'s, whose lens (checked here by hand on
    the HF modules) passes Gemma's post-MLP norm as well as the final norm."""
    graph = attribute_edges(tiny_gemma, PAIRS, k=12, progress=False).describe(tiny_gemma)
    neurons = graph.nodes[graph.nodes.kind == "neuron"]
    hf = tiny_gemma.hf.model
    U = tiny_gemma.hf.lm_head.weight.detach()
    differs = 0
    for r in neurons.itertuples():
        layer = hf.layers[r.layer]
        col = layer.mlp.down_proj.weight.detach()[:, r.unit]
        sign = -1.0 if r.sign == "-" else 1.0
        lens = U @ (col * (1 + layer.post_feedforward_layernorm.weight.detach()) * (1 + hf.norm.weight.detach()))
        top = (sign * lens).topk(5).indices.tolist()
        assert r.description == "promotes " + " ".join(repr(tiny_gemma.tokenizer.decode([t])) for t in top)
        without = (sign * (U @ (col * (1 + hf.norm.weight.detach())))).topk(5).indices.tolist()
        differs += without != top
    assert differs > 0  # skipping the post-MLP norm would give other tokens


def test_public_names_stay_importable_from_the_package():
    from neuronlib.graph import CircuitGraph as graph_type
    from neuronlib.pruning import evaluate_edge_pruning as evaluate

    assert neuronlib.CircuitGraph is graph_type and neuronlib.evaluate_edge_pruning is evaluate
    assert neuronlib.attribute_edges is attribute_edges


# ---------------------------------------------------------------------------------------------------------------
# JSON / viewer


def test_json_round_trips_through_the_viewer(tiny_llama):
    graph = attribute_edges(tiny_llama, PAIRS, k=30, progress=False).prune(20)
    js = graph.to_json()
    assert viewer.graph_to_json(js) == js
    assert viewer.graph_to_json(js["nodes"], js["edges"], js["meta"]) == js
    nodes = {n["id"]: n for n in js["nodes"]}
    assert nodes["output"]["layer"] == tiny_llama.n_layers and nodes["output"]["site"] == "logit"
    neuron = next(n for n in js["nodes"] if n["kind"] == "neuron")
    assert neuron["label"].startswith(f"L{neuron['layer']}/N{neuron['unit']}") and neuron["label"][-1] in "+-"
    assert neuron["group"] in ("supports metric", "opposes metric")
    back = CircuitGraph.from_json(js)
    assert back.to_json() == js
    page = viewer.render_html(js)
    assert f'"{neuron["id"]}"' in page or neuron["id"] in page
    groups = attribute_edges(tiny_llama, PAIRS, k=10, groups=lambda n: f"layer {n.layer}", progress=False)
    assert set(groups.nodes.loc[groups.nodes["kind"] == "neuron", "group"]) <= {"layer 0", "layer 1"}


if __name__ == "__main__" and sys.argv[1:] == ["--write-golden"]:
    torch.set_num_threads(1)
    hf, tok = build_tiny_model("tiny-llama", seed=1, n_layers=3)
    write_golden({"tiny3": _finish("tiny-llama-3", hf, tok, "test", device="cpu", dtype=torch.float32),
                  "tiny-gemma": neuronlib.load_model("tiny-gemma")})
    print(f"wrote {GOLDEN}")
