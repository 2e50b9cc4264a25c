"""CircuitGraph -> the attribution-graph JSON of circuit-tracer's local viewer and Neuronpedia (docs/graph-export.md).

The exported graphs are validated against circuit-tracer's OWN pydantic graph models: its PyPI wheel is installed
with ``pip install --no-deps --target <tmpdir>`` when the tests run (never vendored), and only its models file
(``circuit_tracer/frontend/graph_models.py``, which needs nothing but pydantic) is loaded from there by path, so
neither torch nor circuit-tracer's other dependencies are imported from it. Without access to the package registry
these tests skip, unless CI is set (then they fail).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from neuronlib import CircuitGraph, viewer
from neuronlib.edges import attribute_edges
from neuronlib.neurons import Neuron, neuron_label
from neuronlib.paper import multihop
from neuronlib.sites import Node
from neuronlib.viewer.export import cantor

CIRCUIT_TRACER = "circuit-tracer==0.5.0"  # the release whose graph models the export was written against
PAIRS = [
    {"clean_prefix": "the keys to the cabinet", "patch_prefix": "the key to the cabinet",
     "clean_answer": " are", "patch_answer": " is"},
    {"clean_prefix": "the dogs near the boy", "patch_prefix": "the dog near the boy",
     "clean_answer": " have", "patch_answer": " has"},
]


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    """circuit-tracer's graph_models module (pydantic models: Metadata, QParams, Node, Link, Model)."""
    target = tmp_path_factory.mktemp("circuit-tracer")
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "--disable-pip-version-check",
           "--quiet", "--target", str(target), CIRCUIT_TRACER]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        msg = f"could not install {CIRCUIT_TRACER} from the package registry:\n{proc.stderr[-2000:]}"
        if _in_ci():
            pytest.fail(msg)
        pytest.skip(msg + "\n(set CI=1 to make this a failure)")
    path = target / "circuit_tracer" / "frontend" / "graph_models.py"
    assert path.is_file(), f"{CIRCUIT_TRACER} has no {path.relative_to(target)}"
    spec = importlib.util.spec_from_file_location("_circuit_tracer_graph_models", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert "circuit_tracer" not in sys.modules and "torch" not in module.__dict__
    return module


@pytest.fixture(scope="module")
def graph(tiny_llama) -> CircuitGraph:
    g = attribute_edges(tiny_llama, PAIRS, k=20, progress=False, groups=lambda n: f"layer {n.layer}")
    return g.prune(30)


def _validate(ct, data: dict):
    """Round-trip through circuit-tracer's Model: it must accept the export and keep every field we wrote."""
    model = ct.Model.model_validate(data)
    dumped = json.loads(model.model_dump_json())
    for ours, theirs in zip(data["nodes"], dumped["nodes"]):
        assert {k: theirs[k] for k in ours} == ours  # no field dropped or coerced
    assert dumped["metadata"] == data["metadata"] and dumped["qParams"] == data["qParams"]
    for link in data["links"]:  # links are plain dicts in their Model; check them against their Link model
        assert ct.Link.model_validate(link).model_dump() == link
    return model


def test_export_validates_against_circuit_tracer_models(ct, graph, tiny_llama):
    data = graph.to_attribution_graph(slug="sva-tiny")
    assert set(data) == {"metadata", "qParams", "nodes", "links"}
    _validate(ct, data)
    json.dumps(data, allow_nan=False)
    assert data["metadata"]["slug"] == "sva-tiny" and data["metadata"]["scan"] == tiny_llama.name
    assert data["metadata"]["prompt_tokens"] == graph.meta["tokens"]
    # every node and every edge is there, once
    assert len(data["nodes"]) == len(graph.nodes) and len(data["links"]) == len(graph.edges)
    ids = [n["node_id"] for n in data["nodes"]]
    assert len(set(ids)) == len(ids)
    assert {e["source"] for e in data["links"]} | {e["target"] for e in data["links"]} <= set(ids)


def test_node_id_scheme(graph, tiny_llama):
    data = graph.to_attribution_graph()
    L = tiny_llama.n_layers
    by_id = {n["node_id"]: n for n in data["nodes"]}
    mapping = {}
    for row, node in zip(graph.nodes.itertuples(), data["nodes"]):
        mapping[row.id] = node["node_id"]
        if row.kind == "neuron":
            assert row.id == Node("mlp_acts", row.layer, row.position, row.unit).label()
            assert node["node_id"] == f"{row.layer}_{row.unit}_{row.position}"
            assert node["layer"] == str(row.layer) and node["ctx_idx"] == row.position
            assert node["feature"] == cantor(row.layer, row.unit) and node["feature_type"] == "mlp neuron"
            name = node["clerp"].split(":")[0]
            assert name == neuron_label(row.layer, row.unit, row.sign)
            assert Neuron.parse(name) == Neuron(row.layer, row.unit, row.sign)
            assert node["activation"] == pytest.approx(row.value, rel=1e-3)  # exports keep 4 significant digits
        elif row.kind == "embed":
            assert node["node_id"] == f"E_-1_{row.position}" and node["layer"] == "E"
            assert node["feature_type"] == "embedding" and node["feature"] == row.position
        else:
            assert node["node_id"] == f"{L + 1}_0_{row.position}" and node["feature_type"] == "logit"
            assert node["is_target_logit"] is True and node["clerp"].startswith('Output "')
            assert "(p=" in node["clerp"]  # the viewer parses the probability out of the output's text
    # links carry the graph's selected weights, endpoint for endpoint
    for e, link in zip(graph.edges.itertuples(), data["links"]):
        assert (link["source"], link["target"]) == (mapping[e.source], mapping[e.target])
        assert link["weight"] == pytest.approx(e.weight, rel=1e-3)
    # circuit-tracer's tools parse ids as LAYER_INDEX_POSITION
    for nid in by_id:
        layer, index, pos = nid.split("_")
        assert (layer == "E" or layer.isdigit()) and int(index) >= -1 and int(pos) >= 0
    # token ids, when given, go into the embedding ids
    ids = [100 + p for p in range(len(graph.meta["tokens"]))]
    with_ids = graph.to_attribution_graph(token_ids=ids)
    emb = [n["node_id"] for n in with_ids["nodes"] if n["feature_type"] == "embedding"]
    assert emb and all(nid == f"E_{100 + int(nid.split('_')[2])}_{nid.split('_')[2]}" for nid in emb)


def test_groups_become_supernodes(graph):
    data = graph.to_attribution_graph()
    neurons = graph.nodes[graph.nodes["kind"] == "neuron"]
    expected = {g: sorted(f"{r.layer}_{r.unit}_{r.position}" for r in rows.itertuples())
                for g, rows in neurons.groupby("group")}
    got = {sn[0]: sorted(sn[1:]) for sn in data["qParams"]["supernodes"]}
    assert got == expected and got
    output = next(n["node_id"] for n in data["nodes"] if n["feature_type"] == "logit")
    assert data["qParams"]["clickedId"] == output and output in data["qParams"]["pinnedIds"]


def test_the_validator_rejects_broken_graphs(ct, graph):
    """Negative control: circuit-tracer's models do reject what its viewer could not read."""
    from pydantic import ValidationError

    data = graph.to_attribution_graph()
    for breaks in (lambda d: d["nodes"][0].pop("feature"), lambda d: d["nodes"][0].update(ctx_idx="first"),
                   lambda d: d["metadata"].pop("prompt_tokens"), lambda d: d.pop("qParams")):
        broken = json.loads(json.dumps(data))
        breaks(broken)
        with pytest.raises(ValidationError):
            ct.Model.model_validate(broken)


def test_save_attribution_graph_for_the_local_server(ct, graph, tmp_path):
    path = graph.save_attribution_graph(tmp_path / "graphs", slug="sva-tiny")
    assert path == tmp_path / "graphs" / "sva-tiny.json"
    _validate(ct, json.loads(path.read_text(encoding="utf-8")))
    graph.save_attribution_graph(tmp_path / "graphs", slug="other")
    graph.prune(10).save_attribution_graph(tmp_path / "graphs", slug="sva-tiny")  # same slug: replaced
    index = json.loads((tmp_path / "graphs" / "graph-metadata.json").read_text(encoding="utf-8"))
    assert [m["slug"] for m in index["graphs"]] == ["other", "sva-tiny"]
    for meta in index["graphs"]:
        ct.Metadata.model_validate(meta)
    with pytest.raises(ValueError, match="slug"):
        graph.save_attribution_graph(tmp_path, slug="../escape")


def test_viewer_graphs_export_too(ct):
    tokens = ["<bos>", "Dallas", " is", " in"]
    nodes = [{"id": "e", "site": "embed", "layer": -1, "position": 1},
             {"id": "n", "site": "mlp_acts", "layer": 0, "position": 1, "unit": 17, "sign": "-", "group": "Texas",
              "description": "say Texas"},
             {"id": "out", "site": "logit", "layer": 2, "position": 3, "label": 'p(" Austin")'}]
    edges = [{"source": "e", "target": "n", "weight": 0.5}, {"source": "n", "target": "out", "weight": -1.0}]
    meta = {"title": "Dallas: a test", "prompt": "".join(tokens), "tokens": tokens, "n_layers": 2,
            "token_ids": [1, 400, 401, 402], "token_prob": 0.25}
    data = viewer.attribution_graph({"nodes": nodes, "edges": edges, "meta": meta})
    _validate(ct, data)
    assert data["metadata"]["slug"] == "dallas-a-test" and data["metadata"]["scan"] == "neuronlib"
    assert [n["node_id"] for n in data["nodes"]] == ["E_400_1", "0_17_1", "3_0_3"]
    assert data["nodes"][1]["clerp"] == "L0/N17-: say Texas"
    assert data["nodes"][2]["clerp"] == 'Output "p(\' Austin\')" (p=0.250)' and data["nodes"][2]["token_prob"] == 0.25
    assert data["links"] == [{"source": "E_400_1", "target": "0_17_1", "weight": 0.5},
                             {"source": "0_17_1", "target": "3_0_3", "weight": -1.0}]


def test_export_errors():
    base = {"meta": {"tokens": ["a", "b"], "n_layers": 2}, "edges": []}
    with pytest.raises(ValueError, match="site 'attn_out' is not a neuron"):
        viewer.attribution_graph({**base, "nodes": [{"id": "x", "site": "attn_out", "layer": 0, "position": 0,
                                                     "unit": 3}]})
    with pytest.raises(ValueError, match="both export as '0_3_1'"):
        viewer.attribution_graph({**base, "nodes": [
            {"id": "x", "site": "mlp_acts", "layer": 0, "position": 1, "unit": 3, "sign": "+"},
            {"id": "y", "site": "mlp_acts", "layer": 0, "position": 1, "unit": 3, "sign": "-"}]})
    with pytest.raises(ValueError, match="token_ids has 3 ids for 2 prompt tokens"):
        viewer.attribution_graph({**base, "nodes": []}, token_ids=[1, 2, 3])


def test_multihop_builds_a_circuit_graph(ct, tmp_path):
    """The multi-hop study's circuit is a CircuitGraph too (one graph type), with CircuitGraph's node ids."""
    grouped = pd.DataFrame({
        "layer": [3, 5], "unit": [807, 12], "position": [1, 4], "sign": ["-", "+"], "score": [0.7, -0.2],
        "label": ["L3/N807-", "L5/N12+"], "group": ["Texas", None], "description": ["promotes ' Texas'", ""],
        "auroc_capital": [0.4, 0.95], "auroc_state": [0.99, 0.5], "activation": [-1.5, 2.0]})
    tokens = ["<bos>", "Dallas", " is", " in", " the"]
    g = multihop.circuit_graph(grouped, tokens, title="Texas", prompt="Dallas is in the", n_layers=6)
    assert isinstance(g, CircuitGraph)
    assert list(g.nodes["id"]) == ["L3/N807@1", "L5/N12@4"] and g.n_edges == 0
    assert g.neurons() == [Node("mlp_acts", 3, 1, 807), Node("mlp_acts", 5, 4, 12)]
    js = g.to_json()
    assert [n["label"] for n in js["nodes"]] == ["L3/N807-", "L5/N12+"]
    assert viewer.save_html(g, tmp_path / "texas.html").read_text(encoding="utf-8") == viewer.render_html(js)
    data = g.to_attribution_graph()
    _validate(ct, data)
    assert [n["node_id"] for n in data["nodes"]] == ["3_807_1", "5_12_4"]
    assert data["qParams"]["supernodes"] == [["Texas", "3_807_1"]]
