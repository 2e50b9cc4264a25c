"""The circuit graph: nodes and edges as DataFrames (:class:`CircuitGraph`), edge pruning (:func:`prune_mask`) and
neuron descriptions for display. Edges are computed by :mod:`neuronlib.edges`; pruned graphs are evaluated by
:mod:`neuronlib.pruning`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from . import viewer
from .sites import Node

WEIGHTS = ("raw", "relevance")
OUTPUT_ID = "output"
NODE_COLUMNS = ("id", "kind", "site", "layer", "position", "token", "unit", "sign", "score", "value", "label",
                "group", "description")


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

    def describe(self, model, *, k: int = 5, maxima=None) -> "CircuitGraph":
        """The same graph with ``description`` of every neuron node filled by :func:`neuronlib.describe.describe`:
        the tokens the neuron's active side promotes through the rest of the model's read-out (post-MLP norms where
        the family has them, the final norm, the unembedding), and its top corpus contexts when ``maxima`` is given.
        A reading aid for the viewer, not an attribution."""
        from .describe import describe

        mask = (self.nodes["kind"] == "neuron").to_numpy()
        if not mask.any():
            return self
        nodes = self.nodes.copy()
        nodes.loc[mask, "description"] = describe(model, nodes[mask], k=k, maxima=maxima)["description"].to_numpy()
        return replace(self, nodes=nodes)

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
