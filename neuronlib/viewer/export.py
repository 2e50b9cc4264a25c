"""Export a neuron circuit to the attribution-graph JSON read by circuit-tracer's local viewer and Neuronpedia.

The format (learned from circuit-tracer's ``frontend/graph_models.py`` and its viewer; see docs/graph-export.md)
is one JSON object with four keys:

``metadata``
    ``slug`` (the file name, ``SLUG.json``), ``scan`` (which model; Neuronpedia reads it as the model id),
    ``transcoder_list`` (``[]``: there is no transcoder), ``prompt_tokens``, ``prompt``, ``node_threshold``
    (``None``: nothing was pruned by influence here), ``schema_version`` (1).
``qParams``
    the viewer's state: ``pinnedIds`` (the grouped neurons and the output), ``supernodes`` (one
    ``[group name, node_id, ...]`` list per neuron group), ``linkType`` ("both"), ``clickedId`` (the output),
    ``sg_pos`` ("").
``nodes``
    one object per node: ``node_id``, ``feature`` (int), ``layer`` (str), ``ctx_idx`` (token position),
    ``feature_type``, ``jsNodeId`` (= ``node_id``), ``clerp`` (the text the viewer shows), ``activation``,
    ``influence``, ``token_prob``, ``is_target_logit``.
``links``
    ``{"source": node_id, "target": node_id, "weight": float}``: the graph's edges and their selected weight.

Node-id scheme (the one scheme; every id is ``LAYER_INDEX_POSITION``, the convention circuit-tracer's tools parse)
----------------------------------------------------------------------------------------------------------------

* neuron (``mlp_acts``): ``{layer}_{unit}_{position}``, e.g. ``23_807_5``; ``layer`` = ``"23"``, ``feature`` =
  cantor(layer, unit), ``feature_type`` = ``"mlp neuron"``, ``clerp`` = the neuron's name from
  :func:`neuronlib.neurons.neuron_label` (``L23/N807-``) followed by its description, ``activation`` = its value.
* embedding: ``E_{token_id}_{position}``, e.g. ``E_504_1``; ``layer`` = ``"E"``, ``feature`` = the position,
  ``feature_type`` = ``"embedding"``. ``token_id`` is -1 when the prompt's token ids are not known.
* output (the metric): ``{n_layers + 1}_{k}_{position}``, e.g. ``31_0_7``; ``layer`` = ``"{n_layers + 1}"``,
  ``feature`` = ``k``, ``feature_type`` = ``"logit"``, ``clerp`` = ``Output "NAME" (p=P)``. ``k`` is the node's
  ``unit`` when that is a vocabulary id, else 0, 1, ... in node order (the metric node of a CircuitGraph is 0).

``cantor(a, b) = (a + b)(a + b + 1)/2 + b`` gives every (layer, unit) its own integer, as circuit-tracer numbers
per-layer features. The mapping from :class:`neuronlib.CircuitGraph` ids (``L23/N807@5``, ``E@5``, ``output``) is a
function of each node's kind, layer, unit and position only, so it is the same in every export; a neuron keeps its
sign in its name (``clerp``) and its activation in ``activation``, not in its id. Only neurons, embeddings and
output nodes export (other sites raise ValueError).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from .graph import _normalise, round_floats

FEATURE_TYPES = {"neuron": "mlp neuron", "embed": "embedding", "output": "logit"}
GRAPH_SCHEMA_VERSION = 1
_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def cantor(a: int, b: int) -> int:
    """The Cantor pairing of two non-negative integers: a distinct ``feature`` number per (layer, unit)."""
    return (a + b) * (a + b + 1) // 2 + b


def node_kind(node: dict, n_layers: int) -> str:
    """"neuron", "embed" or "output" for a normalised viewer node; ValueError for any other site."""
    kind = node.get("kind")
    if kind in FEATURE_TYPES:
        return kind
    if node["layer"] == -1 or node["site"] == "embed":
        return "embed"
    if node["site"] in ("logit", "metric", "output") or node["layer"] == n_layers:
        return "output"
    if node["site"] == "mlp_acts" and node["unit"] >= 0:
        return "neuron"
    raise ValueError(f"node {node['id']!r}: site {node['site']!r} is not a neuron (mlp_acts), an embedding or an "
                     "output; only neuron circuits export to the attribution-graph format")


def slugify(text: str) -> str:
    """A file-name-safe slug from a title (``"Texas circuit, SmolLM2"`` -> ``"texas-circuit-smollm2"``)."""
    s = re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")
    return s[:80].strip("-") or "circuit"


def _finite_or_none(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def attribution_graph(graph: Any, *, slug: str | None = None, scan: str | None = None,
                      token_ids: list[int] | None = None, output_name: str | None = None,
                      output_prob: float | None = None) -> dict:
    """The circuit as circuit-tracer / Neuronpedia attribution-graph JSON (a plain dict; see the module docstring).

    ``graph``: a :class:`neuronlib.CircuitGraph` or any viewer graph. ``slug``: file name (default: from the
    title). ``scan``: the model (default ``meta["model"]``, else "neuronlib"). ``token_ids``: the prompt's token
    ids (default ``meta["token_ids"]``; used in the embedding ids). ``output_name`` / ``output_prob``: what the
    output node's text shows (default: the metric and ``meta["token_prob"]`` or 0). Neuron groups become
    supernodes. Numbers are rounded to :data:`~neuronlib.viewer.graph.EXPORT_DIGITS` significant digits.
    Raises ValueError for a node that is not a neuron, an embedding or an output, or two nodes that
    would get the same id.
    """
    g = round_floats(_normalise(graph))  # to EXPORT_DIGITS significant digits: a rerun writes the same file
    nodes, edges, meta = g["nodes"], g["edges"], g["meta"]
    n_layers, tokens = int(meta["n_layers"]), list(meta["tokens"])
    slug = slugify(meta["title"]) if slug is None else str(slug)
    if not _SLUG.match(slug):
        raise ValueError(f"slug {slug!r} must be a file name: letters, digits, '.', '_' and '-'")
    ids = token_ids if token_ids is not None else meta.get("token_ids")
    if ids is not None:
        ids = [int(t) for t in ids]
        if len(ids) != len(tokens):
            raise ValueError(f"token_ids has {len(ids)} ids for {len(tokens)} prompt tokens")
    prob = output_prob if output_prob is not None else meta.get("token_prob")
    prob = _finite_or_none(prob) or 0.0

    out_nodes, id_map, n_outputs = [], {}, 0
    for n in nodes:
        kind = node_kind(n, n_layers)
        layer, pos, unit = int(n["layer"]), int(n["position"]), int(n["unit"])
        rec: dict[str, Any] = {"ctx_idx": pos, "feature_type": FEATURE_TYPES[kind], "token_prob": 0.0,
                               "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0,
                               "influence": None, "activation": None}
        if kind == "neuron":
            nid = f"{layer}_{unit}_{pos}"
            text = n["label"] + (f": {n['description']}" if n["description"] else "")
            rec.update(feature=cantor(layer, unit), layer=str(layer), clerp=text,
                       activation=_finite_or_none(n.get("value")))
        elif kind == "embed":
            tid = ids[pos] if ids is not None else -1
            nid = f"E_{tid}_{pos}"
            rec.update(feature=pos, layer="E", clerp="")
        else:
            k = unit if unit >= 0 else n_outputs
            nid = f"{n_layers + 1}_{k}_{pos}"
            name = output_name or meta.get("metric") or n["label"]
            name = str(name).replace('"', "'")
            rec.update(feature=k, layer=str(n_layers + 1), clerp=f'Output "{name}" (p={prob:.3f})',
                       token_prob=prob, is_target_logit=n_outputs == 0)
            n_outputs += 1
        if nid in id_map.values():
            other = next(k for k, v in id_map.items() if v == nid)
            raise ValueError(f"nodes {other!r} and {n['id']!r} both export as {nid!r}")
        id_map[n["id"]] = nid
        rec["node_id"] = nid
        rec["jsNodeId"] = nid
        out_nodes.append(rec)

    links = [{"source": id_map[e["source"]], "target": id_map[e["target"]], "weight": float(e["weight"])}
             for e in edges]
    groups: dict[str, list[str]] = {}
    for n in nodes:
        if n["group"] is not None and node_kind(n, n_layers) == "neuron":
            groups.setdefault(n["group"], []).append(id_map[n["id"]])
    outputs = [r["node_id"] for r in out_nodes if r["feature_type"] == "logit"]
    pinned = [i for members in groups.values() for i in members] + outputs if groups else []
    return {
        "metadata": {
            "slug": slug,
            "scan": str(scan or meta.get("model") or "neuronlib"),
            "transcoder_list": [],
            "prompt_tokens": tokens,
            "prompt": meta["prompt"],
            "node_threshold": None,
            "schema_version": GRAPH_SCHEMA_VERSION,
        },
        "qParams": {
            "pinnedIds": pinned,
            "supernodes": [[name, *members] for name, members in groups.items()],
            "linkType": "both",
            "clickedId": outputs[0] if outputs else "",
            "sg_pos": "",
        },
        "nodes": out_nodes,
        "links": links,
    }


def save_attribution_graph(graph: Any, directory: str | Path, **kwargs: Any) -> Path:
    """Write :func:`attribution_graph` to ``DIRECTORY/SLUG.json`` and list it in ``DIRECTORY/graph-metadata.json``
    (the index circuit-tracer's local server reads; an entry with the same slug is replaced). Returns the path of
    the graph file. Serve the folder with circuit-tracer's local server, or upload the file to Neuronpedia."""
    data = attribution_graph(graph, **kwargs)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{data['metadata']['slug']}.json"
    path.write_text(json.dumps(data, allow_nan=False, ensure_ascii=False), encoding="utf-8")
    index_path = directory / "graph-metadata.json"
    index = {"graphs": []}
    if index_path.exists():
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{index_path} is not valid JSON ({err}); move it away or delete it") from None
        if not isinstance(index, dict) or not isinstance(index.get("graphs"), list):
            raise ValueError(f"{index_path} does not hold {{'graphs': [...]}}; move it away or delete it")
    index["graphs"] = [m for m in index["graphs"] if not (isinstance(m, dict) and m.get("slug") ==
                                                          data["metadata"]["slug"])]
    index["graphs"].append(data["metadata"])
    index_path.write_text(json.dumps(index, indent=1, allow_nan=False, ensure_ascii=False), encoding="utf-8")
    return path
