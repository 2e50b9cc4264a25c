"""Remote execution through nnsight's request protocol, checked offline by a loopback worker.

Each verb's traces are serialized by nnsight's own ``RequestModel.serialize`` (the payload a ``remote=True`` trace
POSTs to NDIF), sent to a separate Python process that built the model itself and has no neuronlib to import, rebuilt
there by ``RequestModel.deserialize``, executed, and the saved values sent back as NDIF sends them. The results must
equal the local run's: scores to 1e-6, metrics exactly.
"""
import pandas as pd
import pytest
import torch
from conftest import SVA_PAIRS

import neuronlib
from neuronlib import tracing
from neuronlib.sites import Node

SITES = ("embed", "attn_out", "mlp_acts", "mlp_out", "resid")
pytestmark = pytest.mark.slow  # worker processes: each starts Python, torch and nnsight afresh

TEST_PAIRS = [
    {"clean_prefix": "the boys near the car", "patch_prefix": "the boy near the car", "clean_answer": " are",
     "patch_answer": " is"},
    {"clean_prefix": "the keys to the door", "patch_prefix": "the key to the door", "clean_answer": " are",
     "patch_answer": " is"},
]


@pytest.fixture(scope="module")
def workers():
    with tracing.Loopback("tiny-llama") as llama, tracing.Loopback("tiny-gemma") as gemma:
        yield {"tiny-llama": llama, "tiny-gemma": gemma}


def _attribution(method, baseline="counterfactual"):
    return lambda model, **kw: neuronlib.attribute(model, SVA_PAIRS, method=method, baseline=baseline, sites=SITES,
                                                   ig_steps=3, **kw)


NODES = [Node("mlp_acts", 0, 2, 3), Node("mlp_acts", 1, 1, 5), Node("resid", 0, 1, 7), Node("attn_out", 1, 0, 2)]
VERBS = {
    "attribute-atp": _attribution("atp"),
    "attribute-relp": _attribution("relp"),
    "attribute-relp-no-gate-zero": _attribution("relp-no-gate", "zero"),
    "attribute-relp-no-half-mean": _attribution("relp-no-half", "mean"),
    "attribute-ig": _attribution("ig"),
    "attribute-ig-inputs-mean": _attribution("ig-inputs", "mean"),
    "ablate-mean": lambda model, **kw: neuronlib.ablate(model, SVA_PAIRS, NODES, mode="mean", **kw),
    "ablate-zero-complement": lambda model, **kw: neuronlib.ablate(model, SVA_PAIRS, NODES[:2], mode="zero",
                                                                   complement=True, **kw),
    "patch": lambda model, **kw: neuronlib.patch(model, SVA_PAIRS[:2], nodes=NODES, **kw),
    "steer": lambda model, **kw: neuronlib.steer(model, ["the keys to the cabinet"], [(0, 3), (1, 5)],
                                                 multiplier=3.0, **kw),
}


def assert_same(local, remote):
    """Scores and logits to 1e-6; metrics exactly."""
    if isinstance(local, pd.DataFrame):
        pd.testing.assert_frame_equal(local, remote, check_exact=True)
        return
    assert (local.metric is None) == (remote.metric is None)
    if local.metric is not None:
        assert torch.equal(local.metric, remote.metric)
    if hasattr(local, "scores"):
        assert local.scores.keys() == remote.scores.keys()
        for site in local.scores:
            assert (local.scores[site] - remote.scores[site]).abs().max() <= 1e-6, site
        assert (local.baseline_metric is None) == (remote.baseline_metric is None)
        if local.baseline_metric is not None:
            assert torch.equal(local.baseline_metric, remote.baseline_metric)
    else:
        assert (local.logits - remote.logits).abs().max() <= 1e-6


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma"])
@pytest.mark.parametrize("verb", list(VERBS))
def test_verb_runs_remotely_as_locally(workers, name, verb, request):
    model = request.getfixturevalue(name.replace("-", "_"))
    worker = workers[name]
    before = len(worker.sizes)
    local = VERBS[verb](model)
    remote = VERBS[verb](model, remote=tracing.Remote("loopback", transport=worker))
    assert len(worker.sizes) > before  # the traces went to the worker, not through a local fallback
    assert_same(local, remote)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma"])
def test_evaluate_circuit_runs_remotely_as_locally(workers, name, request):
    model = request.getfixturevalue(name.replace("-", "_"))
    scores = neuronlib.attribute(model, TEST_PAIRS, method="relp", sites=("mlp_acts",))
    before = len(workers[name].sizes)
    kw = dict(sizes=[0, 3, 10, 48], per_example=True)
    local = neuronlib.evaluate_circuit(model, scores, TEST_PAIRS, **kw)
    remote = neuronlib.evaluate_circuit(model, scores, TEST_PAIRS, remote=tracing.Remote("loopback",
                                        transport=workers[name]), **kw)
    assert len(workers[name].sizes) > before
    for col in ("m_C_ex", "m_Cbar_ex", "m_M_ex", "m_empty_ex"):
        assert all((a == b).all() for a, b in zip(local.pop(col), remote.pop(col)))
    assert_same(local, remote)


def test_worker_has_no_neuronlib(tiny_llama, workers):
    """What the payload does not carry fails on the worker, as on NDIF: code that imports neuronlib there."""
    remote_model = tracing.on_remote(tiny_llama, tracing.Remote("loopback", transport=workers["tiny-llama"]))
    inputs = tiny_llama.tokenize(["the keys to the cabinet"])
    with pytest.raises(tracing.RemoteError, match="No module named 'neuronlib'"):
        tracing.run(remote_model, inputs, metric=lambda lg: lg[:, 0], then=lambda m: __import__("neuronlib"))
    # the worker is still serving after an error
    out = tracing.run(remote_model, inputs, metric=lambda lg: lg[:, 0])
    assert torch.equal(out, tracing.run(tiny_llama, inputs, metric=lambda lg: lg[:, 0]).detach())


def test_what_cannot_go_remote_says_why(tiny_llama):
    from neuronlib.saes import TopKSAE

    model = neuronlib.load_model("tiny-llama")
    model.attach_saes("sae_mlp_out", [TopKSAE(model.d_model, 32, 4) for _ in range(model.n_layers)])
    with pytest.raises(ValueError, match="SAE sites .* cannot run remotely"):
        neuronlib.attribute(model, SVA_PAIRS, sites=("sae_mlp_out",), remote="org/some-model")
    with pytest.raises(ValueError, match="remote= must"):
        neuronlib.ablate(tiny_llama, SVA_PAIRS, NODES, remote=3)
    assert tracing.on_remote(tiny_llama, None) is tiny_llama


def test_hub_id_becomes_ndif_model_key(tiny_llama):
    bound = tracing.on_remote(tiny_llama, "meta-llama/Llama-3.1-8B")
    assert bound.remote.model_key == ('nnsight.modeling.transformers.TransformersModel:{"repo_id": '
                                      '"meta-llama/Llama-3.1-8B", "revision": "main", "task": "text-generation"}')
    assert tiny_llama.remote is None and bound.hf is tiny_llama.hf  # a copy carries the choice; the model is shared


def test_smollm_verbs_run_remotely_as_locally(smollm):
    pairs = SVA_PAIRS[:2]
    nodes = [Node("mlp_acts", 28, 3, 907), Node("mlp_acts", 0, 1, 813)]
    with tracing.Loopback("smollm2-135m") as worker:
        remote = tracing.Remote("loopback", transport=worker)
        for method in ("relp", "atp"):
            local = neuronlib.attribute(smollm, pairs, method=method, sites=("mlp_acts", "attn_out"))
            assert_same(local, neuronlib.attribute(smollm, pairs, method=method, sites=("mlp_acts", "attn_out"),
                                                   remote=remote))
        assert_same(neuronlib.ablate(smollm, pairs, nodes), neuronlib.ablate(smollm, pairs, nodes, remote=remote))
        assert_same(neuronlib.patch(smollm, pairs, nodes=nodes), neuronlib.patch(smollm, pairs, nodes=nodes,
                                                                                 remote=remote))
        prompt = ["Dallas is a city in the state of"]
        assert_same(neuronlib.steer(smollm, prompt, [(0, 813)], multiplier=3),
                    neuronlib.steer(smollm, prompt, [(0, 813)], multiplier=3, remote=remote))
        kw = dict(sizes=[10, 100], mode="zero")
        assert_same(neuronlib.evaluate_circuit(smollm, local, pairs, **kw),
                    neuronlib.evaluate_circuit(smollm, local, pairs, remote=remote, **kw))
        assert len(worker.sizes) >= 9
