"""Edges between neurons (docs/method.md §3): :func:`attribute_edges` scores them and returns a
:class:`neuronlib.graph.CircuitGraph` (pruning and its evaluation: :mod:`neuronlib.graph`, :mod:`neuronlib.pruning`).

Edge score
----------
For a source node ``s`` (a neuron, or the embedding vector at one position) and a target ``t`` (a neuron, or the
metric), the edge score is

    e(s -> t) = Δv_s · ∂v_t/∂v_s        (Δv_s = v_s for the zero baseline; v_s(x) - v_s(x') for "counterfactual")

computed on the RelP replacement model (frozen norm scales, frozen attention pattern, gate and half rules; see
:class:`neuronlib.RelPRules`) with every MLP *strictly between* the source's layer and the target's layer
stop-gradded: the *direct* effect of ``s`` on ``t`` through attention and the residual stream only. The target of an
output edge is the metric ``m`` (its layer is ``n_layers``). Zero-baseline RelP edges are conservative: the edges
into a target from *all* its possible sources (every embedding position, every neuron of every earlier layer) sum
to ``v_t`` (to ``m`` for the output), because the replacement model is linear once the MLPs are cut.

``weight="relevance"`` multiplies every edge into a neuron by that neuron's full RelP gradient ``∂m/∂v_t``, which
puts all edges in metric units (then the edges into ``t`` sum to ``t``'s zero-baseline relevance ``v_t ∂m/∂v_t``).
The graph keeps both columns (``raw`` and ``relevance``); ``weight`` is the one selected. Named as the paper uses
them: ``raw`` is the formula of the paper's text; ``relevance`` is the score the paper's released experiments prune
by, so comparisons with the paper's edge counts (~10^5 edges at faithfulness 0.8) use ``relevance``.

How the stop-gradient is computed exactly, for every pair of layers at once
--------------------------------------------------------------------------
One forward pass through :func:`neuronlib.tracing.run` (RelP rules on) serves every target layer:

* at ``mlp_acts`` of layer ``j`` the edit keeps the undetached value ``h_j`` as *target* (its graph goes back through
  the RelP surrogates of gate/up into the residual stream) and passes ``h_j.detach()`` on to ``down_proj``;
* at ``mlp_out`` of layer ``j`` the edit adds a zero leaf ``δ_j`` (and ``δ_emb`` on the embeddings).

So in the forward graph no MLP is traversable backwards: the only way from ``h_l`` back to ``δ_j`` (``j < l``) is
through the attention blocks and the residual stream. ``∂h_l/∂δ_j`` is therefore exactly the direct effect of MLP
``j``'s output on the target with MLPs ``j+1 .. l-1`` stop-gradded — for all ``j`` simultaneously, with no
approximation and no forward pass per layer pair — and the neuron-level gradient is ``∂h_l/∂δ_j · W_down_j[:, u]``
(``down_proj`` is linear; any bias drops out of the Jacobian). Tapping ``mlp_out`` (width ``d_model``) instead of
``mlp_acts`` (width ``d_mlp``) also spares the backward pass one ``d_model x d_mlp`` product per layer.

Many targets per backward pass: targets are grouped by layer (a group's backward pass only runs through the layers
below it) and each group, in chunks, is one batched vector–Jacobian product
(``torch.autograd.grad(..., is_grads_batched=True)``: one one-hot cotangent per target, vmapped), over all examples of
the batch at once. ``batched=False`` does one backward pass per target instead (same numbers; the benchmark).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm

from . import tracing
from .activations import read_sites
from .attribution import METHODS as NODE_METHODS
from .attribution import RELP_VARIANTS, Attribution, attribute, check_same_model
from .graph import NODE_COLUMNS, OUTPUT_ID, WEIGHTS, CircuitGraph
from .inputs import Prepared, as_int, prepare
from .metrics import make_metric
from .neurons import neuron_label
from .sites import Node, check_nodes

EDGE_METHODS = ("relp", "relp-no-gate", "relp-no-half", "atp")
EDGE_BASELINES = ("zero", "counterfactual")


@contextlib.contextmanager
def _attention(model, implementation: str | None):
    """Temporarily switch the HF attention implementation (restored afterwards). Eager attention with a frozen
    pattern backpropagates with plain batched matmuls, which vmap handles natively (sdpa's CPU backward is looped)."""
    config = model.hf.config
    old = getattr(config, "_attn_implementation", None)
    if implementation is None or old == implementation:
        yield
        return
    config._attn_implementation = implementation
    try:
        yield
    finally:
        config._attn_implementation = old


def _down_weights(model) -> list[torch.Tensor]:
    from .architectures import get_path

    layers = get_path(model.hf, model.arch.layers)
    return [getattr(getattr(layer, model.arch.mlp), model.arch.down_proj).weight for layer in layers]


def _relp_for(method: str):
    if method == "atp":
        return None
    return RELP_VARIANTS[method]


class _Layout:
    """Index bookkeeping: nodes sorted by (layer, position, unit); embeddings; the output node; valid edges."""

    def __init__(self, neurons: list[Node], T: int, n_layers: int, embeddings: bool, output: bool):
        self.neurons = sorted(set(neurons), key=lambda n: (n.layer, n.position, n.unit))
        self.T, self.n_layers = T, n_layers
        N = len(self.neurons)
        self.N = N
        self.embed_index = list(range(N, N + T)) if embeddings else []
        self.output_index = N + len(self.embed_index) if output else None
        self.size = N + len(self.embed_index) + (1 if output else 0)
        layer = torch.tensor([n.layer for n in self.neurons], dtype=torch.long)
        pos = torch.tensor([n.position for n in self.neurons], dtype=torch.long)
        unit = torch.tensor([n.unit for n in self.neurons], dtype=torch.long)
        self.layer, self.pos, self.unit = layer, pos, unit
        self.by_layer = {l: (layer == l).nonzero().flatten() for l in range(n_layers)}
        # valid (target, source) pairs -> edge id, -1 where no edge can exist
        all_layer = torch.cat([layer, torch.full((len(self.embed_index),), -1),
                               torch.full((1 if output else 0,), n_layers)])
        all_pos = torch.cat([pos, torch.arange(len(self.embed_index)), torch.full((1 if output else 0,), T - 1)])
        tl, sl = all_layer[:, None], all_layer[None, :]
        tp, sp = all_pos[:, None], all_pos[None, :]
        valid = (sl < tl) & (sp <= tp)
        if output:  # every source reaches the metric (the last position attends to all earlier ones)
            valid[self.output_index, :] = all_layer < n_layers
            valid[self.output_index, self.output_index] = False
        t_idx, s_idx = valid.nonzero(as_tuple=True)
        self.edge_target, self.edge_source = t_idx, s_idx
        self.edge_id = torch.full((self.size, self.size), -1, dtype=torch.long)
        self.edge_id[t_idx, s_idx] = torch.arange(len(t_idx))
        self.n_edges = len(t_idx)
        self.all_layer, self.all_pos = all_layer, all_pos


@dataclass(frozen=True)
class _EdgeJob:
    """What every batch of one :func:`attribute_edges` call shares."""

    model: object
    prepared: Prepared
    layout: _Layout
    down: list  # W_down of every layer, [d_model, d_mlp]
    relp: object  # the RelP rules, None for plain gradients ("atp")
    metric: object  # the metric function of ``prepared``
    counterfactual: bool  # edge baseline: Δv = v(x) - v(x') instead of v(x)
    batched: bool
    max_elements: int


@dataclass
class _EdgeTotals:
    """Per-example results, filled batch by batch (B examples)."""

    raw: torch.Tensor  # [B, n_edges] edge scores
    relevance_scale: torch.Tensor  # [B, n_nodes] ∂m/∂v_t per target (1 for the output)
    values: torch.Tensor  # [B, n_nodes] v of each neuron (Σ_d Δe·∂m/∂e for embeddings, m for the output)
    emb_scores: torch.Tensor  # [B, T] embedding node scores
    m_clean: torch.Tensor  # [B] the metric

    @classmethod
    def zeros(cls, B: int, lay: _Layout) -> "_EdgeTotals":
        return cls(torch.zeros(B, lay.n_edges), torch.zeros(B, lay.size), torch.zeros(B, lay.size),
                   torch.zeros(B, max(len(lay.embed_index), 1)), torch.zeros(B))


def attribute_edges(
    model,
    data,
    *,
    nodes=None,
    scores: Attribution | None = None,
    k: int = 1000,
    method: str = "relp",
    metric="logit_diff",
    node_baseline: str | None = None,
    edge_baseline: str = "zero",
    weight: str = "raw",
    embeddings: bool = True,
    output: bool = True,
    batch_size: int = 8,
    max_elements: int = 2 ** 25,
    batched: bool = True,
    attention: str | None = "eager",
    groups=None,
    title: str | None = None,
    progress: bool | None = None,
) -> CircuitGraph:
    """Edge scores between the top-``k`` neurons (docs/method.md §3), from the embeddings, and to the metric.

    data: examples in any form :func:`neuronlib.attribute` accepts, all of one token length (node positions must
        mean the same token in every example).
    nodes: neurons (``Node("mlp_acts", layer, position, unit)``) to connect; default: the top ``k`` by |node score|
        (averaged over the examples; for one example, that example's top ``k``), the node scores being ``scores``
        or ``attribute(model, data, method=method, baseline=node_baseline, metric=metric)``.
    method: "relp" (and its ablations "relp-no-gate", "relp-no-half") or "atp" (the model's true gradient, still with
        the intermediate MLPs stop-gradded).
    node_baseline: baseline of the node scores; default "counterfactual" when the data has patch prompts, else "zero".
    edge_baseline: "zero" (e = v_s ∂v_t/∂v_s, the paper's formula) or "counterfactual" ((v_s(x) − v_s(x')) ∂v_t/∂v_s).
    weight: which score fills ``edges["weight"]``: "raw" (above) or "relevance" (× the target's ∂m/∂v_t).
    embeddings / output: add one embedding node per position / the metric node, with their edges.
    batch_size: examples per forward pass. max_elements: memory budget (floats) of one batched vector–Jacobian
        product; sets how many targets share a backward pass. batched=False: one backward pass per target.
    attention: attention implementation used while computing (None = the model's own); "eager" vmaps cleanly.
    groups: a dict {Node or node id: group} or a callable(Node) -> group | None for the neuron nodes; default:
        "supports metric" / "opposes metric" by the sign of the node score.
    Returns a :class:`CircuitGraph` (edge weights averaged over the examples; ``per_example`` holds each example's).
    """
    if method not in EDGE_METHODS:
        raise ValueError(f"unknown edge method {method!r}; use one of {EDGE_METHODS}")
    if edge_baseline not in EDGE_BASELINES:
        raise ValueError(f"unknown edge baseline {edge_baseline!r}; use one of {EDGE_BASELINES}")
    if weight not in WEIGHTS:
        raise ValueError(f"weight must be one of {WEIGHTS}, got {weight!r}")
    batch_size = as_int(batch_size, "batch_size", minimum=1)
    prepared = data if isinstance(data, Prepared) else prepare(model, data, batch_size=batch_size, backward=True)
    if len(set(prepared.lengths.tolist())) > 1:
        raise ValueError("examples have different token lengths "
                         f"{sorted(set(prepared.lengths.tolist()))}; edges need one length so node positions align "
                         "(split the data by length)")
    if node_baseline is None:
        node_baseline = "counterfactual" if prepared.patch is not None else "zero"
    if edge_baseline == "counterfactual" and prepared.patch is None:
        raise ValueError("edge_baseline='counterfactual' needs patch prompts (patch_prefix) for every example")
    metric_fn = make_metric(metric, prepared)
    T, L = prepared.T, model.n_layers

    if scores is None:
        scores = attribute(model, prepared.examples, method=method if method in NODE_METHODS else "relp",
                           baseline=node_baseline, metric=metric, sites=("mlp_acts",), batch_size=batch_size,
                           progress=False)
    check_same_model(model, scores, "the edges are computed")
    if "mlp_acts" not in scores.scores:
        raise ValueError("scores must include the mlp_acts site")
    if scores.scores["mlp_acts"].shape[2] != T:
        raise ValueError(f"scores have {scores.scores['mlp_acts'].shape[2]} positions, the data {T}")
    if nodes is None:
        k = as_int(k, "k", minimum=1)
        nodes = scores.nodes(k, sites=("mlp_acts",))
    nodes = check_nodes(model, list(nodes))
    bad = [n for n in nodes if n.site != "mlp_acts"]
    if bad:
        raise ValueError(f"edges connect neurons (site 'mlp_acts'); got {bad[0]}")
    bad = [n for n in nodes if n.position >= T]
    if bad:
        raise ValueError(f"node {bad[0]}: position out of range for prompts of {T} tokens")
    if not nodes:
        raise ValueError("no nodes to connect")

    lay = _Layout(nodes, T, L, embeddings, output)
    B = len(prepared)
    job = _EdgeJob(model, prepared, lay, _down_weights(model), _relp_for(method), metric_fn,
                   edge_baseline == "counterfactual", batched, max_elements)
    totals = _EdgeTotals.zeros(B, lay)
    chunks = list(torch.arange(B).split(batch_size))
    n_targets = lay.N + (1 if output else 0)
    bar = tqdm(total=n_targets * len(chunks), desc="edges (targets)",
               disable=(n_targets * len(chunks) < 200) if progress is None else not progress)
    with _attention(model, attention):
        for rows in chunks:
            _edges_for_batch(job, rows, totals, bar)
    bar.close()
    return _build_graph(job, totals, scores, groups, title, meta=dict(
        method=method, node_baseline=node_baseline, edge_baseline=edge_baseline, weight=weight,
        metric=metric_fn.name, n_examples=B, k=len(lay.neurons), model=model.name))


def _edges_for_batch(job: _EdgeJob, rows: torch.Tensor, totals: _EdgeTotals, bar) -> None:
    """Fill ``totals`` for the examples ``rows``: one forward pass for the full RelP gradients, one with the MLPs
    cut, then the backward passes (the output target, then the neuron targets layer by layer)."""
    model, prepared, lay, W, relp, metric_fn = job.model, job.prepared, job.layout, job.down, job.relp, job.metric
    per_example, relevance_scale, values_out, emb_scores, m_clean = (
        totals.raw, totals.relevance_scale, totals.values, totals.emb_scores, totals.m_clean)
    batched, max_elements = job.batched, job.max_elements
    inputs = prepared.rows("clean", rows)
    b = len(rows)
    base = None
    if job.counterfactual:
        base, _ = read_sites(model, prepared.rows("patch", rows), ("embed", "mlp_acts"))

    # (1) the full RelP gradient ∂m/∂v at every neuron and embedding (for "relevance" weights and node values)
    taps = {}

    def tap(site, layer, v):
        d = torch.zeros_like(v, requires_grad=True)
        taps[(site, layer)] = (v.detach(), d)
        return v + d

    m = tracing.run(model, inputs, metric=lambda lg: metric_fn(lg, rows), edit=tap, sites=("embed", "mlp_acts"),
                    relp=relp)
    keys = list(taps)
    grads = torch.autograd.grad(m.sum(), [taps[key][1] for key in keys], allow_unused=True)
    full_grad = {key: torch.zeros_like(taps[key][1]) if g is None else g for key, g in zip(keys, grads)}
    m_clean[rows] = m.detach().float().cpu()
    del m, grads

    # (2) the cut forward pass: targets h_l undetached, the stream carries h_l.detach(); leaves on mlp_out and embed
    targets, leaves, vals = {}, {}, {}

    def cut(site, layer, v):
        if site == "mlp_acts":
            targets[layer] = v
            vals[layer] = v.detach()
            return v.detach()
        d = torch.zeros_like(v, requires_grad=True)
        leaves[layer] = d  # layer -1: the embeddings
        if site == "embed":
            vals[-1] = v.detach()
        return v + d

    m_cut = tracing.run(model, inputs, metric=lambda lg: metric_fn(lg, rows), edit=cut,
                        sites=("embed", "mlp_acts", "mlp_out"), relp=relp)

    def delta(layer):  # Δv of a site value [b, T, U]
        v = vals[layer]
        if base is None:
            return v
        return v - (base["embed"][0] if layer == -1 else base["mlp_acts"][layer])

    L = lay.n_layers
    # node values, ∂m/∂v_t, embedding node scores
    for l in range(L):
        idx = lay.by_layer[l]
        if len(idx):
            values_out[rows[:, None], idx[None, :]] = vals[l][:, lay.pos[idx], lay.unit[idx]].float().cpu()
            relevance_scale[rows[:, None], idx[None, :]] = \
                full_grad[("mlp_acts", l)][:, lay.pos[idx], lay.unit[idx]].float().cpu()
    if lay.embed_index:
        d_emb = delta(-1)
        emb_scores[rows] = (d_emb * full_grad[("embed", -1)]).sum(-1).float().cpu()
        values_out[rows[:, None], torch.tensor(lay.embed_index)[None, :]] = emb_scores[rows]
    if lay.output_index is not None:
        relevance_scale[rows, lay.output_index] = 1.0
        values_out[rows, lay.output_index] = m_cut.detach().float().cpu()

    source_layers = list(range(-1, L))
    deltas = {l: delta(l) for l in source_layers if l == -1 and lay.embed_index or l >= 0 and len(lay.by_layer[l])}
    w_sel = {j: W[j][:, lay.unit[lay.by_layer[j]]] for j in deltas if j >= 0}  # [d_model, n_j]
    dv_sel = {j: deltas[j][:, lay.pos[lay.by_layer[j]], lay.unit[lay.by_layer[j]]] for j in deltas if j >= 0}  # [b, n_j]

    def scatter(grads_by_layer, target_idx, K):
        """grads_by_layer[j]: [K, b, T, d_model] cotangents at δ_j -> edge scores into targets ``target_idx``."""
        blocks, src_idx = [], []
        for j, g in grads_by_layer.items():
            if j == -1:
                if not lay.embed_index:
                    continue
                # Σ_d Δe[b, p, d] g[k, b, p, d]
                blocks.append(torch.einsum("kbpd,bpd->kbp", g, deltas[-1]))
                src_idx.append(torch.tensor(lay.embed_index))
                continue
            idx = lay.by_layer[j]
            if not len(idx):
                continue
            # ∂v_t/∂h_j[p, u] = (∂v_t/∂δ_j)[p] · W_down_j[:, u]: one GEMM against the layer's node columns, then
            # each node's own position
            G = torch.matmul(g, w_sel[j].to(g.dtype))  # [K, b, T, n]
            G = G[:, :, lay.pos[idx], torch.arange(len(idx))]  # [K, b, n]
            blocks.append(G * dv_sel[j][None])
            src_idx.append(idx)
        if not blocks:
            return
        block = torch.cat(blocks, -1).float().cpu()  # [K, b, n_src]
        src = torch.cat(src_idx)
        ids = lay.edge_id[target_idx][:, src]  # [K, n_src]
        ok = ids >= 0
        per_example[rows[:, None], ids[ok][None, :]] = block.permute(1, 0, 2)[:, ok]

    # (3) output edges: the direct effect of every source on the metric
    if lay.output_index is not None:
        ins = [leaves[j] for j in source_layers if j in deltas]
        g = torch.autograd.grad(m_cut.sum(), ins, retain_graph=True, allow_unused=True)
        gl = {j: (torch.zeros_like(leaves[j]) if x is None else x)[None] for j, x in
              zip([j for j in source_layers if j in deltas], g)}
        scatter(gl, torch.tensor([lay.output_index]), 1)
        bar.update(1)

    # (4) neuron targets, grouped by layer; each chunk is one batched vector–Jacobian product
    T, U = prepared.T, vals[0].shape[-1]
    for l in range(L):
        idx = lay.by_layer[l]
        if not len(idx):
            continue
        src_layers = [j for j in range(-1, l) if j in deltas]
        if not src_layers:
            bar.update(len(idx))
            continue
        ins = [leaves[j] for j in src_layers]
        per_target = sum(x.numel() for x in ins) + b * T * U  # floats one target adds to the batched product
        K_max = max(1, int(max_elements // max(per_target, 1))) if batched else 1
        for chunk in idx.split(K_max):
            K = len(chunk)
            cot = torch.zeros(K, b, T, U, dtype=targets[l].dtype, device=targets[l].device)
            cot[torch.arange(K), :, lay.pos[chunk], lay.unit[chunk]] = 1.0
            if batched:
                g = torch.autograd.grad([targets[l]], ins, grad_outputs=[cot], retain_graph=True,
                                        allow_unused=True, is_grads_batched=True)
            else:
                g = [x[None] if x is not None else None for x in
                     torch.autograd.grad([targets[l]], ins, grad_outputs=[cot[0]], retain_graph=True,
                                         allow_unused=True)]
            gl = {j: (torch.zeros(K, *leaves[j].shape, dtype=leaves[j].dtype) if x is None else x)
                  for j, x in zip(src_layers, g)}
            scatter(gl, chunk, K)
            bar.update(K)


def _build_graph(job: _EdgeJob, totals: _EdgeTotals, scores, groups, title, meta) -> CircuitGraph:
    model, prepared, lay = job.model, job.prepared, job.layout
    raw = totals.raw
    rel = raw * totals.relevance_scale[:, lay.edge_target]
    values, emb_scores, m_clean = totals.values, totals.emb_scores, totals.m_clean
    raw_mean, rel_mean = raw.mean(0), rel.mean(0)
    tokens = prepared.tokens(model.tokenizer)[0]
    node_score = scores.mean().scores["mlp_acts"][0] if scores.n_examples > 1 else scores.scores["mlp_acts"][0]
    mean_vals = values.mean(0)
    rows = []
    for i, n in enumerate(lay.neurons):
        v = float(mean_vals[i])
        sign = "+" if v >= 0 else "-"
        s = float(node_score[n.layer, n.position, n.unit])
        if callable(groups):
            group = groups(n)
        elif isinstance(groups, dict):
            group = groups.get(n, groups.get(n.label()))
        else:
            group = "supports metric" if s >= 0 else "opposes metric"
        rows.append({"id": n.label(), "kind": "neuron", "site": "mlp_acts", "layer": n.layer, "position": n.position,
                     "token": tokens[n.position], "unit": n.unit, "sign": sign, "score": s, "value": v,
                     "label": neuron_label(n.layer, n.unit, sign), "group": group, "description": ""})
    emb_mean = emb_scores.mean(0)
    for p, _ in enumerate(lay.embed_index):
        rows.append({"id": f"E@{p}", "kind": "embed", "site": "embed", "layer": -1, "position": p,
                     "token": tokens[p], "unit": -1, "sign": "", "score": float(emb_mean[p]), "value": float("nan"),
                     "label": f"emb {tokens[p]!r}", "group": None, "description": ""})
    if lay.output_index is not None:
        m = float(m_clean.mean())
        rows.append({"id": OUTPUT_ID, "kind": "output", "site": "logit", "layer": lay.n_layers,
                     "position": lay.T - 1, "token": tokens[lay.T - 1], "unit": -1, "sign": "", "score": m,
                     "value": m, "label": meta["metric"], "group": None, "description": f"metric {meta['metric']}"})
    nodes = pd.DataFrame(rows, columns=list(NODE_COLUMNS))
    ids = nodes["id"].to_numpy()
    weight = raw_mean if meta["weight"] == "raw" else rel_mean
    edges = pd.DataFrame({
        "source": ids[lay.edge_source.numpy()], "target": ids[lay.edge_target.numpy()],
        "weight": weight.numpy().astype(float), "raw": raw_mean.numpy().astype(float),
        "relevance": rel_mean.numpy().astype(float),
    })
    ex = prepared.examples
    prompt = ex.clean[0] if len(ex) == 1 else f"{len(ex)} examples, e.g. {ex.clean[0]!r}"
    meta = {"title": title or f"{meta['method']} edges ({meta['weight']}), {len(lay.neurons)} neurons",
            "prompt": prompt, "tokens": tokens, "n_layers": lay.n_layers, **meta}
    return CircuitGraph(nodes, edges, meta, {"raw": raw.numpy(), "relevance": rel.numpy()})
