"""Edges between neurons (docs/method.md §3): a circuit *graph*, edge pruning and its evaluation.

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
import math
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import tracing, viewer
from .activations import read_sites
from .attribution import METHODS as NODE_METHODS
from .attribution import RELP_VARIANTS, Attribution, attribute, check_same_model
from .inputs import Prepared, as_int, prepare
from .interventions import ablation_runner
from .metrics import make_metric
from .neurons import neuron_label
from .sites import Node, check_nodes, empty_mask, node_masks

EDGE_METHODS = ("relp", "relp-no-gate", "relp-no-half", "atp")
EDGE_BASELINES = ("zero", "counterfactual")
WEIGHTS = ("raw", "relevance")
DEFAULT_PERCENTS = (0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)
OUTPUT_ID = "output"

_NODE_COLUMNS = ("id", "kind", "site", "layer", "position", "token", "unit", "sign", "score", "value", "label",
                 "group", "description")


# ---------------------------------------------------------------------------------------------------------------
# the graph object


@dataclass
class CircuitGraph:
    """Nodes and edges of a circuit, as DataFrames, in the format of :mod:`neuronlib.viewer`: the one graph type
    every study builds (edges here, the multi-hop Texas circuit in :mod:`neuronlib.paper.multihop`).

    ``nodes``: one row per node; columns ``id, kind ("embed" | "neuron" | "output"), site, layer, position, token,
    unit, sign, score, value, label, group, description``. Node ids, one scheme: a neuron is ``Node.label()``
    ("L3/N17@2": layer 3, unit 17, position 2), an embedding "E@p", the metric ``"output"`` (layer ``n_layers``).
    Labels name neurons with :func:`neuronlib.neurons.neuron_label` ("L3/N17-").
    ``edges``: ``source, target, weight`` (the selected score, mean over examples) plus ``raw`` and ``relevance``.
    ``per_example``: {"raw": [n_examples, n_edges], "relevance": ...} edge scores per example, in the row order of
    ``edges`` (or None); :meth:`weights_per_example` gives the selected one.
    ``meta``: title, prompt, tokens, n_layers, metric, and how the graph was made.
    """

    nodes: pd.DataFrame
    edges: pd.DataFrame
    meta: dict = field(default_factory=dict)
    per_example: dict | None = None

    # -- views
    @property
    def n_edges(self) -> int:
        return len(self.edges)

    def neurons(self) -> list[Node]:
        """The neuron nodes as :class:`Node` (site mlp_acts), in the graph's order."""
        rows = self.nodes[self.nodes["kind"] == "neuron"]
        return [Node("mlp_acts", int(r.layer), int(r.position), int(r.unit)) for r in rows.itertuples()]

    def to_json(self) -> dict:
        """The viewer's normalised JSON dict (labels and groups included); round-trips through graph_to_json."""
        return viewer.graph_to_json(self.nodes, self.edges, self.meta)

    @classmethod
    def from_json(cls, graph: dict) -> "CircuitGraph":
        """Back from :meth:`to_json` (or any viewer graph dict); per-example weights are not part of the JSON."""
        g = viewer.graph_to_json(graph)
        edges = pd.DataFrame(g["edges"]) if g["edges"] else pd.DataFrame(columns=["source", "target", "weight"])
        nodes = pd.DataFrame(g["nodes"])
        if "kind" not in nodes:
            nodes["kind"] = ["embed" if n["layer"] == -1 else "output" if n["layer"] == g["meta"]["n_layers"]
                             else "neuron" for n in g["nodes"]]
        return cls(nodes, edges, dict(g["meta"]))

    def with_weight(self, weight: str) -> "CircuitGraph":
        """The same graph with ``weight`` (and the per-example weights) taken from the ``raw`` or ``relevance``
        score."""
        if weight not in WEIGHTS:
            raise ValueError(f"weight must be one of {WEIGHTS}, got {weight!r}")
        edges = self.edges.copy()
        edges["weight"] = edges[weight]
        return replace(self, edges=edges, meta={**self.meta, "weight": weight})

    def _endpoints(self) -> tuple[np.ndarray, np.ndarray]:
        """Row numbers (in ``nodes``) of every edge's source and target; cached while the tables are unchanged."""
        key = (id(self.nodes), id(self.edges), len(self.nodes), len(self.edges))
        cache = self.__dict__.get("_endpoint_cache")
        if cache is not None and cache[0] == key:
            return cache[1], cache[2]
        index = pd.Index(self.nodes["id"].astype(str))
        if not index.is_unique:
            raise ValueError("graph.nodes has duplicate ids")
        src = index.get_indexer(self.edges["source"].astype(str))
        tgt = index.get_indexer(self.edges["target"].astype(str))
        if (src < 0).any() or (tgt < 0).any():
            raise ValueError("an edge names a node id that is not in graph.nodes")
        self.__dict__["_endpoint_cache"] = (key, src.astype(np.int64), tgt.astype(np.int64))
        return self.__dict__["_endpoint_cache"][1], self.__dict__["_endpoint_cache"][2]

    def weights_per_example(self) -> np.ndarray | None:
        """[n_examples, n_edges] edge scores per example for the selected weight (None if not stored)."""
        if self.per_example is None:
            return None
        return self.per_example[self.meta.get("weight", "raw")]

    def prune(self, percent: float | None = None, *, n_edges: int | None = None, recursive: bool = False
              ) -> "CircuitGraph":
        """Keep the top ``percent`` % (or ``n_edges``) edges by |weight|, then the nodes they leave connected.

        A neuron survives if it keeps at least one incoming and one outgoing edge (embeddings need one outgoing
        edge, the output one incoming edge). Kept edges with an endpoint that did not survive are dropped.
        ``recursive=True`` repeats the rule until nothing changes (every surviving neuron then lies on a path
        from an embedding to the output). ``meta["n_edges_kept"]`` records the number of top edges kept.
        """
        keep_edges, keep_nodes = prune_mask(self, percent, n_edges=n_edges, recursive=recursive)
        nodes = self.nodes[keep_nodes].reset_index(drop=True)
        edges = self.edges[keep_edges].reset_index(drop=True)
        per = None if self.per_example is None else {w: a[:, keep_edges] for w, a in self.per_example.items()}
        meta = {**self.meta, "n_edges_kept": int(_top_count(len(self.edges), percent, n_edges)),
                "pruned_percent": percent, "recursive_pruning": recursive}
        return CircuitGraph(nodes, edges, meta, per)

    # -- display and export
    def save_html(self, path, **kwargs):
        """One self-contained, CSP-locked HTML page (:func:`neuronlib.viewer.save_html`); returns the path."""
        return viewer.save_html(self.to_json(), path, **kwargs)

    def to_attribution_graph(self, **kwargs) -> dict:
        """The attribution-graph JSON (metadata / qParams / nodes / links) that circuit-tracer's local viewer and
        Neuronpedia read, neurons as features (:func:`neuronlib.viewer.attribution_graph`; its node ids:
        ``{layer}_{unit}_{position}``, ``E_{token_id}_{position}``, ``{n_layers+1}_0_{position}`` for the metric;
        docs/graph-export.md)."""
        return viewer.attribution_graph(self, **kwargs)

    def save_attribution_graph(self, directory, **kwargs):
        """Write :meth:`to_attribution_graph` to ``DIRECTORY/SLUG.json`` and index it in
        ``DIRECTORY/graph-metadata.json`` (what circuit-tracer's local server serves); returns the file's path."""
        return viewer.save_attribution_graph(self, directory, **kwargs)

    def show(self, **kwargs):
        return viewer.show(self.to_json(), **kwargs)

    def draw(self, **kwargs):
        return viewer.draw_circuit(self.to_json(), **kwargs)

    def __repr__(self) -> str:
        kinds = self.nodes["kind"].value_counts().to_dict() if len(self.nodes) else {}
        return (f"CircuitGraph({kinds.get('neuron', 0)} neurons, {kinds.get('embed', 0)} embeddings, "
                f"{'1 output, ' if kinds.get('output') else ''}{len(self.edges)} edges, "
                f"weight={self.meta.get('weight')!r})")


def _top_count(total: int, percent, n_edges) -> int:
    if (percent is None) == (n_edges is None):
        raise ValueError("give percent or n_edges (one of them)")
    if n_edges is not None:
        if not isinstance(n_edges, (int, np.integer)) or n_edges < 0:
            raise ValueError(f"n_edges must be a non-negative int, got {n_edges!r}")
        return min(int(n_edges), total)
    if not 0 <= float(percent) <= 100:
        raise ValueError(f"percent must be in [0, 100], got {percent!r}")
    return min(total, int(math.ceil(total * float(percent) / 100.0 - 1e-9)))


def prune_mask(graph: CircuitGraph, percent: float | None = None, *, n_edges: int | None = None,
               recursive: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (edges kept, nodes kept) of :meth:`CircuitGraph.prune`, aligned with the graph's rows."""
    n = _top_count(len(graph.edges), percent, n_edges)
    src, tgt = graph._endpoints()
    ids = graph.nodes["id"]
    order = np.argsort(-np.abs(graph.edges["weight"].to_numpy(dtype=float)), kind="stable")
    top = np.zeros(len(graph.edges), dtype=bool)
    top[order[:n]] = True
    if "kind" in graph.nodes:
        kind = graph.nodes["kind"].to_numpy()
    else:  # a viewer graph: embeddings at layer -1, the output at layer n_layers (or site "logit")
        n_layers = graph.meta.get("n_layers")
        kind = np.array(["embed" if r.layer == -1 else
                         "output" if r.layer == n_layers or getattr(r, "site", "") == "logit" else "neuron"
                         for r in graph.nodes.itertuples()])
    need_in = kind != "embed"
    need_out = kind != "output"
    alive_edges = top.copy()
    while True:
        n_in = np.bincount(tgt[alive_edges], minlength=len(ids))
        n_out = np.bincount(src[alive_edges], minlength=len(ids))
        alive = (~need_in | (n_in > 0)) & (~need_out | (n_out > 0))
        new_edges = alive_edges & alive[src] & alive[tgt]
        if not recursive or (new_edges == alive_edges).all():
            return new_edges, alive
        alive_edges = new_edges


# ---------------------------------------------------------------------------------------------------------------
# computing edges


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
    per_example = torch.zeros(B, lay.n_edges)
    relevance_scale = torch.zeros(B, lay.size)  # ∂m/∂v_t per example and target (1 for the output)
    values = torch.zeros(B, lay.size)  # v of each neuron (and Σ_d Δe·∂m/∂e for embeddings, m for the output)
    emb_scores = torch.zeros(B, max(len(lay.embed_index), 1))
    m_clean = torch.zeros(B)
    W = _down_weights(model)
    relp = _relp_for(method)
    chunks = list(torch.arange(B).split(batch_size))
    n_targets = lay.N + (1 if output else 0)
    bar = tqdm(total=n_targets * len(chunks), desc="edges (targets)",
               disable=(n_targets * len(chunks) < 200) if progress is None else not progress)
    with _attention(model, attention):
        for rows in chunks:
            _edges_for_batch(model, prepared, rows, lay, W, relp, metric_fn, edge_baseline, batched, max_elements,
                             per_example, relevance_scale, values, emb_scores, m_clean, bar)
    bar.close()

    raw = per_example
    rel = per_example * relevance_scale[:, lay.edge_target]
    return _build_graph(model, prepared, lay, scores, raw, rel, values, emb_scores,
                        m_clean, groups, title, meta=dict(
                            method=method, node_baseline=node_baseline, edge_baseline=edge_baseline, weight=weight,
                            metric=metric_fn.name, n_examples=B, k=len(lay.neurons), model=model.name))


def _edges_for_batch(model, prepared, rows, lay, W, relp, metric_fn, edge_baseline, batched, max_elements,
                     per_example, relevance_scale, values_out, emb_scores, m_clean, bar):
    inputs = prepared.rows("clean", rows)
    b = len(rows)
    base = None
    if edge_baseline == "counterfactual":
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


def _build_graph(model, prepared, lay, scores, raw, rel, values, emb_scores, m_clean, groups, title, meta
                 ) -> CircuitGraph:
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
    nodes = pd.DataFrame(rows, columns=list(_NODE_COLUMNS))
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


# ---------------------------------------------------------------------------------------------------------------
# descriptions (logit lens of each neuron's output direction)


def describe_neurons(model, graph: CircuitGraph, *, k: int = 5) -> CircuitGraph:
    """Fill ``description`` of the neuron nodes with the tokens each neuron's output direction promotes most
    (``W_U · (norm weight ⊙ W_down[:, u])``, sign-aware). A reading aid for the viewer, not an attribution."""
    from .architectures import get_path

    nodes = graph.nodes.copy()
    mask = (nodes["kind"] == "neuron").to_numpy()
    if not mask.any():
        return graph
    W = _down_weights(model)
    norm = get_path(model.hf, model.arch.final_norm).weight.detach().float() + model.arch.norm_weight_offset
    U = get_path(model.hf, model.arch.unembed).weight.detach().float()
    sub = nodes[mask]
    cols = torch.stack([W[int(r.layer)][:, int(r.unit)].float() for r in sub.itertuples()], 1)  # [d, n]
    signs = torch.tensor([-1.0 if s == "-" else 1.0 for s in sub["sign"]])
    with torch.no_grad():
        logits = U @ (norm[:, None] * cols) * signs[None, :]  # [V, n]
        top = logits.topk(k, dim=0).indices.T
    desc = ["promotes " + ", ".join(repr(model.tokenizer.decode([int(t)])) for t in row) for row in top]
    nodes.loc[mask, "description"] = desc
    return replace(graph, nodes=nodes)


# ---------------------------------------------------------------------------------------------------------------
# evaluation of pruned graphs


def _circuit_mask(model, neurons, T):
    return node_masks(model, neurons, T).get("mlp_acts", empty_mask(model, "mlp_acts", T))


def evaluate_edge_pruning(model, graph: CircuitGraph, test_data, *, percents=DEFAULT_PERCENTS, mode: str = "mean",
                          metric="logit_diff", recursive: bool = False, node_baseline: bool = False,
                          completeness: bool = True, batch_size: int = 32, progress: bool | None = None,
                          per_example: bool = False) -> pd.DataFrame:
    """Faithfulness and completeness of the edge-pruned circuits (docs/method.md §3–4).

    For each ``percent``: keep the top ``percent`` % edges by |weight|, keep the neurons with ≥1 incoming and ≥1
    outgoing kept edge (:meth:`CircuitGraph.prune`), then run the test prompts with every other neuron (all layers,
    all positions) ablated (m(C)) and with the surviving neurons ablated (m(C̄)); ``mode`` "mean" (per-position
    mean over the counterfactual prompts) or "zero". ``node_baseline=True`` also evaluates, at the same node count,
    the top neurons of the graph by |node score| (a node-ranking reference). ``completeness=False`` skips the m(C̄)
    runs (half the cost; completeness is then NaN). Circuits already evaluated are not run again. The test prompts
    must have the graph's token length. Returns one row per percent: percent, n_edges (top edges kept),
    n_edges_alive (kept edges between surviving nodes), n_nodes (surviving neurons), faithfulness, completeness,
    m_C, m_Cbar, m_M, m_empty (+ faithfulness_nodes, completeness_nodes). ``per_example=True`` adds ``m_C_ex``,
    ``m_Cbar_ex``, ``m_M_ex``, ``m_empty_ex`` (and ``m_C_nodes_ex``): per-test-prompt metric arrays, for intervals
    (:func:`edge_pruning_table`).
    """
    prepared = test_data if isinstance(test_data, Prepared) else prepare(model, test_data)
    T = len(graph.meta.get("tokens") or [])
    if prepared.T != T or len(set(prepared.lengths.tolist())) > 1:
        raise ValueError(f"test prompts must all have the graph's token length ({T}); got lengths "
                         f"{sorted(set(prepared.lengths.tolist()))}")
    run = ablation_runner(model, prepared, ("mlp_acts",), mode, metric, batch_size,
                          progress=(len(percents) > 1) if progress is None else progress)
    neuron_rows = graph.nodes[graph.nodes["kind"] == "neuron"]
    by_score = neuron_rows.reindex(neuron_rows["score"].abs().sort_values(ascending=False, kind="stable").index)
    ranked = [Node("mlp_acts", int(r.layer), int(r.position), int(r.unit)) for r in by_score.itertuples()]
    # Every circuit of the sweep (full model, empty circuit, then C and C̄ per distinct node set: large percents
    # often keep the same nodes) is one block of rows of the same batched forwards.
    every = torch.ones(model.n_layers, T, model.d_mlp, dtype=torch.bool)
    circuits, slots = [None, {"mlp_acts": every}], {}

    def slot(mask):
        key = mask.numpy().tobytes()
        if key not in slots:
            slots[key] = len(circuits)
            circuits.extend([{"mlp_acts": ~mask}] + ([{"mlp_acts": mask}] if completeness else []))
        return slots[key]

    plan = []
    for p in percents:
        edges_kept, nodes_kept = prune_mask(graph, p, recursive=recursive)
        kept = graph.nodes[nodes_kept]
        neurons = [Node("mlp_acts", int(r.layer), int(r.position), int(r.unit))
                   for r in kept[kept["kind"] == "neuron"].itertuples()]
        plan.append((p, int(edges_kept.sum()), len(neurons), slot(_circuit_mask(model, neurons, T)),
                     slot(_circuit_mask(model, ranked[: len(neurons)], T)) if node_baseline else None))
    per = run(circuits).detach().double().cpu()
    m = per.mean(1).tolist()
    mM, m0 = m[0], m[1]
    denom = mM - m0

    def ratios(i):
        mC, mCb = m[i], (m[i + 1] if completeness else float("nan"))
        return mC, mCb, (mC - m0) / denom if denom else float("nan"), (mCb - m0) / denom if denom else float("nan")

    out = []
    for p, alive, n_nodes, i, j in plan:
        mC, mCb, faith, comp = ratios(i)
        row = {"percent": p, "n_edges": _top_count(len(graph.edges), p, None), "n_edges_alive": alive,
               "n_nodes": n_nodes, "faithfulness": faith, "completeness": comp, "m_C": mC, "m_Cbar": mCb,
               "m_M": mM, "m_empty": m0, "n_examples": len(prepared)}
        if j is not None:
            row["faithfulness_nodes"], row["completeness_nodes"] = ratios(j)[2:]
        if per_example:
            nan = np.full(len(prepared), np.nan)
            row.update(m_C_ex=per[i].numpy(), m_Cbar_ex=per[i + 1].numpy() if completeness else nan,
                       m_M_ex=per[0].numpy(), m_empty_ex=per[1].numpy())
            if j is not None:
                row["m_C_nodes_ex"] = per[j].numpy()
        out.append(row)
    return pd.DataFrame(out)


def edges_to_reach(frame: pd.DataFrame, target: float = 0.8, column: str = "faithfulness") -> float:
    """The smallest number of edges at which ``column`` reaches ``target`` (log-linear interpolation between the
    swept points); NaN if it never does."""
    f = frame.sort_values("n_edges")
    x, y = f["n_edges"].to_numpy(dtype=float), f[column].to_numpy(dtype=float)
    for i in range(len(y)):
        if y[i] >= target:
            if i == 0 or x[i - 1] <= 0:
                return float(x[i])
            lx0, lx1 = math.log10(x[i - 1]), math.log10(x[i])
            t = (target - y[i - 1]) / (y[i] - y[i - 1]) if y[i] != y[i - 1] else 1.0
            return float(10 ** (lx0 + t * (lx1 - lx0)))
    return float("nan")


def edge_pruning_table(frames: dict, *, n_boot: int = 1000, seed: int = 0, model: str | None = None) -> pd.DataFrame:
    """The tidy table of figure 6 from :func:`evaluate_edge_pruning` frames run with ``per_example=True``.

    ``frames``: {(template, weight): frame}. One row per (template, weight, percent) and a ``template == "pooled"``
    row per (weight, percent) pooling every template's test prompts (Σ(m(C) − m(∅)) / Σ(m(M) − m(∅)); ``n_edges`` and
    ``n_nodes`` are the mean over templates there). Faithfulness, completeness and the node-ranking reference carry
    95 % bootstrap intervals over test prompts (resampled within each template when pooled)."""
    from .stats import bootstrap_ratio

    rows, by_weight = [], {}
    for (template, weight), f in frames.items():
        f = f.sort_values("percent").reset_index(drop=True)
        by_weight.setdefault(weight, []).append((template, f))
    for weight, items in by_weight.items():
        entries = []
        for template, f in items:
            entries.append((template, f, None))
        common = sorted(set.intersection(*(set(f.percent) for _, f in items)))
        pooled = pd.concat([f[f.percent.isin(common)].reset_index(drop=True)[["percent", "n_edges", "n_nodes"]]
                            for _, f in items]).groupby("percent").mean().reset_index()
        stack = {c: np.concatenate([np.stack(f[f.percent.isin(common)][c].to_list()) for _, f in items], axis=1)
                 for c in ("m_C_ex", "m_Cbar_ex", "m_M_ex", "m_empty_ex")
                 + (("m_C_nodes_ex",) if all("m_C_nodes_ex" in f for _, f in items) else ())}
        strata = np.concatenate([np.full(len(f.m_M_ex.iloc[0]), i) for i, (_, f) in enumerate(items)])
        entries.append(("pooled", pooled.assign(**{c: list(v) for c, v in stack.items()}), strata))
        for template, f, st in entries:
            m0 = np.stack(f.m_empty_ex.to_list())
            den = np.stack(f.m_M_ex.to_list()) - m0
            out = {}
            for name, col in (("faithfulness", "m_C_ex"), ("completeness", "m_Cbar_ex"),
                              ("faithfulness_nodes", "m_C_nodes_ex")):
                if col in f:
                    out[name] = bootstrap_ratio(np.stack(f[col].to_list()) - m0, den, n_boot=n_boot, seed=seed,
                                                strata=st)
            for i, r in enumerate(f.itertuples()):
                row = {"model": model, "template": template, "weight": weight, "percent": float(r.percent),
                       "n_edges": float(r.n_edges), "n_nodes": float(r.n_nodes), "n_test": int(den.shape[1]),
                       "effect": float(den[i].mean())}
                for name, b in out.items():
                    row[name] = float(b["estimate"][i])
                    row[f"{name}_lo"], row[f"{name}_hi"] = float(b["lo"][i]), float(b["hi"][i])
                rows.append(row)
    return pd.DataFrame(rows)


def edges_to_reach_table(frames: dict, *, thresholds=(0.8,), n_boot: int = 1000, seed: int = 0,
                         model: str | None = None) -> pd.DataFrame:
    """Edges needed for faithfulness ``t`` per (template, weight) and pooled, with bootstrap intervals.

    ``frames`` as for :func:`edge_pruning_table`. The crossing is interpolated log-linearly in the number of edges
    (:func:`neuronlib.stats.size_at_threshold`); the interval resamples test prompts (within each template when
    pooled; the pooled x-axis is the mean edge count over templates at each percent). Also reports the neurons left
    at the first percent that reaches t, and faithfulness / completeness with every edge kept."""
    from .stats import bootstrap_size_at_threshold, pooled_ratio

    rows, by_weight = [], {}
    for (template, weight), f in frames.items():
        by_weight.setdefault(weight, []).append((template, f.sort_values("percent").reset_index(drop=True)))
    for weight, items in by_weight.items():
        common = sorted(set.intersection(*(set(f.percent) for _, f in items)))
        parts = [(t, f, None) for t, f in items]
        sub = [f[f.percent.isin(common)].reset_index(drop=True) for _, f in items]
        pooled = pd.DataFrame({"percent": common, "n_edges": np.mean([s.n_edges for s in sub], axis=0),
                               "n_nodes": np.mean([s.n_nodes for s in sub], axis=0)})
        for c in ("m_C_ex", "m_Cbar_ex", "m_M_ex", "m_empty_ex"):
            pooled[c] = list(np.concatenate([np.stack(s[c].to_list()) for s in sub], axis=1))
        strata = np.concatenate([np.full(len(s.m_M_ex.iloc[0]), i) for i, s in enumerate(sub)])
        parts.append(("pooled", pooled, strata))
        for template, f, st in parts:
            m0 = np.stack(f.m_empty_ex.to_list())
            den = np.stack(f.m_M_ex.to_list())[0] - m0[0]
            num = np.stack(f.m_C_ex.to_list()) - m0
            faith = pooled_ratio(num, den[None])
            row = {"model": model, "template": template, "weight": weight, "total_edges": float(f.n_edges.max()),
                   "n_test": len(den), "faithfulness_all": float(faith[-1]),
                   "completeness_all": float(pooled_ratio(np.stack(f.m_Cbar_ex.to_list())[-1] - m0[-1], den))}
            for t in thresholds:
                b = bootstrap_size_at_threshold(f.n_edges.to_numpy(float), num, den, t, n_boot=n_boot, seed=seed,
                                                strata=st)
                hit = np.flatnonzero(faith >= t)
                row.update({f"edges@F>={t}": b["estimate"], f"edges@F>={t}_lo": b["lo"], f"edges@F>={t}_hi": b["hi"],
                            f"reached@F>={t}": b["reached"],
                            f"neurons@F>={t}": float(f.n_nodes.iloc[hit[0]]) if len(hit) else np.nan})
            rows.append(row)
    return pd.DataFrame(rows)
