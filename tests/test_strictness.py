"""No silent wrong answers, and one-line errors where one line is promised (library and command line)."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import SVA_PAIRS

import neuronlib
from neuronlib import cli
from neuronlib.sites import Node

PAIRS = [p for p in SVA_PAIRS if len(p["clean_prefix"].split()) == 5]


# ---------------------------------------------------------------------------------------------------------------
# Silent wrong answers become errors.

def test_mean_baseline_over_one_example(tiny_llama):
    with pytest.raises(ValueError, match="over one example.*every score would be 0"):
        neuronlib.attribute(tiny_llama, PAIRS[:1], baseline="mean", method="atp")
    att = neuronlib.attribute(tiny_llama, PAIRS[:2], baseline="mean", method="atp")
    assert att["mlp_acts"].abs().sum() > 0


def test_nan_metric_is_refused(tiny_llama):
    def metric(logits, batch):  # NaN on the last example of the batch (e.g. a log of a zero probability)
        out = logits[:, 3].float()
        return torch.cat([out[:-1], out[-1:] * torch.nan])

    with pytest.raises(ValueError, match=r"metric \(metric\) is not finite on example"):
        neuronlib.attribute(tiny_llama, PAIRS[:3], metric=metric, method="relp", baseline="zero")


def test_ablate_sites_without_complement_ablates_only_those_sites(tiny_llama):
    nodes = [Node("attn_out", 0, 1, 2), Node("mlp_acts", 1, 1, 3)]
    with pytest.raises(ValueError, match=r"sites=\['mlp_acts'\] but some nodes are on \['attn_out'\]"):
        neuronlib.ablate(tiny_llama, PAIRS, nodes, sites=("mlp_acts",))
    both = neuronlib.ablate(tiny_llama, PAIRS, nodes, sites=("attn_out", "mlp_acts"), mode="zero").metric
    assert torch.equal(both, neuronlib.ablate(tiny_llama, PAIRS, nodes, mode="zero").metric)


def test_edges_refuse_scores_of_another_model_of_the_same_name(tiny_llama):
    from neuronlib.edges import attribute_edges

    other = neuronlib.load_model("tiny-llama", seed=1)  # same name, other weights
    assert other.name == tiny_llama.name and other.fingerprint() != tiny_llama.fingerprint()
    att = neuronlib.attribute(other, PAIRS[:2], method="relp")
    with pytest.raises(ValueError, match="another model named 'tiny-llama'"):
        attribute_edges(tiny_llama, PAIRS[:2], scores=att, k=5)
    with pytest.raises(ValueError, match="another model named 'tiny-llama'"):
        neuronlib.evaluate_circuit(tiny_llama, att, PAIRS[:2], sizes=[1])
    gemma = neuronlib.load_model("tiny-gemma")
    with pytest.raises(ValueError, match="computed on model 'tiny-llama'"):
        attribute_edges(gemma, PAIRS[:2], scores=att, k=5)
    assert neuronlib.load_model("tiny-llama", seed=1).fingerprint() == other.fingerprint()  # a reload matches


def test_steer_cli_refuses_a_signed_neuron(capsys):
    assert cli.main(["steer", "the keys", "--neuron", "L0/N3-", "--model", "tiny-llama"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "L0/N3-" in err[0] and "sign" in err[0]


# ---------------------------------------------------------------------------------------------------------------
# One line, naming the problem, not the library's internals.

def test_mistyped_local_model_path(tmp_path):
    for name in ("./models/smol", str(tmp_path / "nope"), "~/no/such/model", "models/smol/"):
        with pytest.raises(ValueError, match="does not exist"):
            neuronlib.load_model(name)


def test_numpy_integers_are_ints(tiny_llama):
    att = neuronlib.attribute(tiny_llama, PAIRS[:2], method="ig", ig_steps=np.int64(2), batch_size=np.int32(2))
    assert len(att.top(np.int64(3))) == 3 and len(att.nodes(np.int64(2))) == 2
    frame = neuronlib.evaluate_circuit(tiny_llama, att, PAIRS[:2], sizes=np.array([1, 5]))
    assert frame["size"].tolist() == [1, 5]
    with pytest.raises(ValueError, match="ig_steps must be an int, got 2.0"):
        neuronlib.attribute(tiny_llama, PAIRS[:2], method="ig", ig_steps=2.0)


def test_empty_sizes(tiny_llama):
    att = neuronlib.attribute(tiny_llama, PAIRS[:2], method="atp")
    with pytest.raises(ValueError, match="sizes is empty"):
        neuronlib.evaluate_circuit(tiny_llama, att, PAIRS[:2], sizes=[])
    with pytest.raises(ValueError, match="thresholds is empty"):
        neuronlib.evaluate_circuit(tiny_llama, att, PAIRS[:2], thresholds=[])


def test_nodes_none_and_string_layers(tiny_llama):
    with pytest.raises(ValueError, match="nodes must be a list of Nodes"):
        neuronlib.ablate(tiny_llama, PAIRS, None)
    with pytest.raises(ValueError, match=r"layer must be an int, got '1' \(str\)"):
        neuronlib.ablate(tiny_llama, PAIRS, [Node("mlp_acts", "1", 0, 2)])
    with pytest.raises(ValueError, match=r"node L9/N2@0 \(mlp_acts\): layer 9 out of range"):
        neuronlib.ablate(tiny_llama, PAIRS, [Node("mlp_acts", 9, 0, 2)])
    out = neuronlib.ablate(tiny_llama, PAIRS, [Node("mlp_acts", np.int64(1), np.int64(0), np.int64(2))])
    assert out.metric.shape == (len(PAIRS),)


def test_invalid_utf8_prompt(tiny_llama):
    prompt = b"the keys \xff\xfe to".decode("utf-8", "surrogateescape")  # how a shell argument arrives
    with pytest.raises(ValueError, match="not UTF-8"):
        neuronlib.steer(tiny_llama, [prompt], [(0, 1)], multiplier=0.0)


def test_cli_errors_are_one_line_without_internals(capsys):
    for args, message in [
        (["steer", "the keys", "--neuron", "L0/N1", "--top", "100000", "--model", "tiny-llama"], "vocabulary"),
        (["steer", "the keys", "--neuron", "L9/N1", "--model", "tiny-llama"], "L9/N1: layer 9 out of range"),
        (["trace", "the keys", "--answer", " are", "--model", "./no/such/dir"], "does not exist"),
    ]:
        assert cli.main(args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and "Node(" not in err[0], err


def test_cli_invalid_utf8_argument():
    out = subprocess.run([sys.executable, "-m", "neuronlib", "steer", b"the keys \xff to", "--neuron", "L0/N1",
                          "--model", "tiny-llama"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("neuronlib: error:") and "UTF-8" in out.stderr


def test_every_cli_option_has_help():
    parser = cli.build_parser()
    missing = []
    for sub in parser._subparsers._group_actions[0].choices.values():
        missing += [f"{sub.prog} {a.dest}" for a in sub._actions if a.help is None]
    assert missing == []


def test_doctor_into_a_closed_pipe():
    out = subprocess.run(f"{sys.executable} -m neuronlib doctor | head -1", shell=True, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "NEURONLIB_CACHE": "/nonexistent-cache"})
    assert out.stdout.startswith("python ") and len(out.stdout.splitlines()) == 1
    assert "Broken pipe" not in out.stderr and "BrokenPipeError" not in out.stderr, out.stderr


# ---------------------------------------------------------------------------------------------------------------
# The verbs speak the project's vocabulary.

def test_verbs_take_neurons_and_their_names(tiny_llama):
    from neuronlib import Neuron

    T = len(PAIRS[0]["clean_prefix"].split())
    at_every_position = [Node("mlp_acts", 1, p, 3) for p in range(T)]
    want = neuronlib.ablate(tiny_llama, PAIRS, at_every_position, mode="zero").metric
    for nodes in ([Neuron(1, 3)], ["L1/N3"], [Neuron(1, 3, "")]):
        assert torch.equal(neuronlib.ablate(tiny_llama, PAIRS, nodes, mode="zero").metric, want)
    assert torch.equal(neuronlib.patch(tiny_llama, PAIRS, nodes=["L1/N3"]).metric,
                       neuronlib.patch(tiny_llama, PAIRS, nodes=at_every_position).metric)
    prompts = ["the keys to the cabinet"]
    pair = neuronlib.steer(tiny_llama, prompts, [(1, 3)], multiplier=2.0).logits
    for neurons in ([Neuron(1, 3)], ["L1/N3"], [(np.int64(1), np.int64(3))]):
        assert torch.equal(neuronlib.steer(tiny_llama, prompts, neurons, multiplier=2.0).logits, pair)
    for verb in (lambda n: neuronlib.ablate(tiny_llama, PAIRS, n), lambda n: neuronlib.patch(tiny_llama, PAIRS, nodes=n),
                 lambda n: neuronlib.steer(tiny_llama, prompts, n, multiplier=2.0)):
        for signed in (["L1/N3-"], [Neuron(1, 3, "+")]):
            with pytest.raises(ValueError, match="sign has no meaning here"):
                verb(signed)


def test_modes_are_literal_types():
    import typing

    from neuronlib import attribution, interventions

    assert typing.get_args(attribution.Method) == attribution.METHODS
    assert typing.get_args(attribution.Baseline) == attribution.BASELINES
    assert typing.get_args(interventions.AblationMode) == interventions.MODES
    for verb in (neuronlib.attribute, neuronlib.ablate, neuronlib.patch, neuronlib.steer, neuronlib.evaluate_circuit):
        assert verb.__annotations__["model"] == "Model", verb.__name__
