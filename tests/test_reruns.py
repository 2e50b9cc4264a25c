"""A rerun gives the committed bytes: notebooks fix torch's thread count (recorded in each table's sidecar) and the
exported pages and graphs round their numbers, so scores that move in their last digits write the same files."""
import json
import os
from pathlib import Path

import pytest
import torch

from neuronlib import viewer
from neuronlib.paper import notebook, reproduce, results
from neuronlib.viewer.export import attribution_graph
from neuronlib.viewer.page import render_html

REPO = Path(__file__).resolve().parents[1]


def test_notebooks_declare_a_fixed_thread_count():
    for book in reproduce.notebooks(REPO / "notebooks"):
        threads = reproduce.declared_defaults(book).get("THREADS", notebook.DEFAULT_THREADS)
        assert isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1, book.name


def test_setup_does_not_read_the_load_average(tmp_path, monkeypatch):
    """An idle machine (load 0) and a busy one get the same thread count."""
    before = torch.get_num_threads()
    try:
        counts = []
        for load in (0.0, 50.0):
            monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
            session = notebook.setup(MODEL="tiny-llama", SMOKE=True, RESULTS_DIR=tmp_path, FIGURES_DIR=tmp_path)
            counts.append((session.threads, torch.get_num_threads()))
        assert counts == [(notebook.DEFAULT_THREADS,) * 2] * 2
        notebook.setup(MODEL="tiny-llama", SMOKE=True, RESULTS_DIR=tmp_path, FIGURES_DIR=tmp_path, THREADS=2)
        assert torch.get_num_threads() == 2
        path = results.write_table(__import__("pandas").DataFrame({"a": [1]}), "t", tmp_path)
        assert json.loads(path.with_suffix(".json").read_text())["threads"] == 2
    finally:
        torch.set_num_threads(before)


def _graph(jitter: float) -> dict:
    nodes = [{"id": "L0/N1@1", "site": "mlp_acts", "layer": 0, "position": 1, "unit": 1, "score": 0.123456 + jitter,
              "value": 1.987654 - jitter},
             {"id": "L1/N2@2", "site": "mlp_acts", "layer": 1, "position": 2, "unit": 2, "score": -0.45678 + jitter,
              "value": 0.5},
             {"id": "output", "site": "output", "layer": 2, "position": 2, "unit": -1, "score": 1.0}]
    edges = [{"source": "L0/N1@1", "target": "L1/N2@2", "weight": 0.3333333 + jitter},
             {"source": "L1/N2@2", "target": "output", "weight": -0.7777777 - jitter}]
    return viewer.graph_to_json(nodes, edges, {"title": "t", "prompt": "a b c", "tokens": ["a", " b", " c"],
                                               "n_layers": 2, "metric": "logit"})


@pytest.mark.parametrize("jitter", [6e-7, -6e-7, 2e-6])
def test_exports_are_byte_identical_when_scores_move_in_the_last_digits(jitter):
    """The size of the thread-count noise: 6e-6 on scores of order 1 is 6e-7 .. 6e-6 relative."""
    assert render_html(_graph(0.0)) == render_html(_graph(jitter))
    a, b = attribution_graph(_graph(0.0)), attribution_graph(_graph(jitter))
    assert json.dumps(a) == json.dumps(b)
    assert a["links"][0]["weight"] == 0.3333 and a["nodes"][0]["activation"] == 1.988


# ---------------------------------------------------------------------------------------------------------------
# The long-prompt memory warning: calibrated on a measurement, with advice that fits the call.

def _smollm_config():
    from types import SimpleNamespace

    cfg = SimpleNamespace(num_attention_heads=9, vocab_size=49152, _attn_implementation="sdpa")
    return SimpleNamespace(config=cfg, n_layers=30, d_model=576, d_mlp=1536, dtype=torch.float32)


@pytest.mark.parametrize("tokens, measured_gib", [
    (2833, 6.45),         # benchmarks/results/memory_long_prompt.md: pass peak above the loaded model's RSS
    (3300, 8.5 - 0.95),   # the reported 3,300-token prompt: 8.5 GiB in all, less the model's resting 0.95 GiB
])
def test_memory_estimate_is_calibrated_on_the_measurements(tokens, measured_gib):
    from neuronlib.inputs import estimate_memory

    gib = estimate_memory(_smollm_config(), 1, tokens) / 2**30
    assert gib == pytest.approx(measured_gib, rel=0.1)


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if "GiB" in r.getMessage()]


def test_memory_advice_fits_the_interface(tiny_llama, caplog, monkeypatch, capsys):
    import logging

    import neuronlib
    from neuronlib import cli
    from neuronlib.inputs import estimate_memory

    prompt = "the keys to the cabinet are on the table near the door"
    one = estimate_memory(tiny_llama, 1, len(prompt.split())) / 2**30
    monkeypatch.setenv("NEURONLIB_MEMORY_WARN_GB", str(one * 4.5))  # one pass of 4 prompts fits, 16 do not
    with caplog.at_level(logging.WARNING, logger="neuronlib"):
        neuronlib.attribute(tiny_llama, [{"prompt": prompt, "answer": " the"}] * 20, metric="logit",
                            baseline="zero", method="atp")  # batch_size 16
    said = _warnings(caplog)
    assert len(said) == 1 and "16 prompt(s)" in said[0] and "pass batch_size=4" in said[0], said
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="neuronlib"):
        neuronlib.attribute(tiny_llama, [{"prompt": prompt, "answer": " the"}] * 20, metric="logit",
                            baseline="zero", method="atp", batch_size=4)
    assert _warnings(caplog) == []  # the advised batch size is quiet
    monkeypatch.setenv("NEURONLIB_MEMORY_WARN_GB", str(one / 2))  # one prompt alone is too long
    caplog.clear()
    capsys.readouterr()  # what earlier calls printed (a handler the CLI installed in another test)
    with caplog.at_level(logging.WARNING, logger="neuronlib"):
        assert cli.main(["trace", prompt, "--answer", " the", "--model", "tiny-llama", "--no-describe"]) == 0
    said = _warnings(caplog) + [line for line in capsys.readouterr().err.splitlines() if "GiB" in line]
    assert said and all("shorten the prompt" in s and "batch_size" not in s for s in said), said
