"""Nothing silent, nothing stuck: fault injection on the caches, strict inputs, strict interventions.

Every fault is injected on a copy (a tmp dir through NEURONLIB_CACHE or ``directory=``), never on the user's cache.
"""
import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import SVA_PAIRS

import neuronlib
from neuronlib import cache, models
from neuronlib.inputs import as_examples
from neuronlib.interventions import ablate, steer
from neuronlib.sites import Node

PAIRS = [p for p in SVA_PAIRS if len(p["clean_prefix"].split()) == 5]
REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------------
# The results cache: safe serialisation, damaged entries recomputed, code versions, hits and misses.

def _value(tiny_llama):
    att = neuronlib.attribute(tiny_llama, PAIRS, method="relp")
    frame = neuronlib.evaluate_circuit(tiny_llama, att, PAIRS, sizes=[1, 5])
    return {"value": {"mean": att.mean(), "metric": torch.arange(3.0), "baseline_metric": None},
            "seconds": 0.5, "frame": frame, "nodes": att.nodes(3), "pair": (1, "a"), "ints": {0: [1, 2]}}


def test_round_trip_of_every_cached_type(tiny_llama, tmp_path):
    value = _value(tiny_llama)
    cache.cached("sva_eval", "k", lambda: value, directory=tmp_path)
    got = cache.cached("sva_eval", "k", lambda: pytest.fail("recomputed a good entry"), directory=tmp_path)
    att, want = got["value"]["mean"], value["value"]["mean"]
    assert type(att) is type(want) and att.method == want.method and att.tokens == want.tokens
    assert all(torch.equal(att[s], want[s]) for s in want.sites)
    assert att.model_name == "tiny-llama"
    pd.testing.assert_frame_equal(got["frame"], value["frame"])
    assert got["nodes"] == value["nodes"] and isinstance(got["nodes"][0], Node)
    assert got["pair"] == (1, "a") and got["ints"] == {0: [1, 2]} and got["seconds"] == 0.5
    # the stored file is read without unpickling arbitrary objects
    torch.load(cache.entry_path("sva_eval", "k", tmp_path), weights_only=True)


@pytest.mark.parametrize("damage", ["garbage", "truncate", "empty"])
def test_damaged_results_entry_is_recomputed(tmp_path, damage, caplog):
    cache.cached("sva_eval", "k", lambda: {"x": torch.ones(1000)}, directory=tmp_path)
    path = cache.entry_path("sva_eval", "k", tmp_path)
    data = path.read_bytes()
    path.write_bytes({"garbage": os.urandom(512), "truncate": data[: len(data) // 2], "empty": b""}[damage])
    with caplog.at_level(logging.WARNING, logger="neuronlib"):
        got, hit = cache.cached_entry("sva_eval", "k", lambda: {"x": torch.zeros(3)}, directory=tmp_path)
    assert torch.equal(got["x"], torch.zeros(3)) and hit is False  # a damaged entry is a miss, not a "cached" step
    assert any("recomputing" in r.getMessage() for r in caplog.records)
    again, hit = cache.cached_entry("sva_eval", "k", lambda: None, directory=tmp_path)
    assert torch.equal(again["x"], torch.zeros(3)) and hit is True


class _Boom:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this creates a file: code run from a cache entry
        return (open, (self.marker, "w"))


def test_entries_are_not_unpickled_as_arbitrary_objects(tmp_path):
    marker = tmp_path / "code-ran"
    path = cache.entry_path("sva_eval", "k", tmp_path)
    path.parent.mkdir(parents=True)
    torch.save({"value": _Boom(str(marker))}, path)  # an old-style pickled entry that runs code when loaded
    got = cache.cached("sva_eval", "k", lambda: 7, directory=tmp_path)
    assert got == 7 and not marker.exists()


def test_hit_miss_counts_and_kind_check(tmp_path):
    cache.reset_stats()
    assert cache.cached("sva_eval", "k", lambda: 1, directory=tmp_path) == 1
    assert cache.cached("sva_eval", "k", lambda: 2, directory=tmp_path) == 1
    assert cache.stats()["sva_eval"] == {"hits": 1, "misses": 1}
    with pytest.raises(ValueError, match="kind 'sva_eval'"):  # an entry read as another kind is refused
        cache.read_entry(cache.entry_path("sva_eval", "k", tmp_path), "edges")


def test_unstorable_value_is_returned_with_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="neuronlib"):
        assert cache.cached("sva_eval", "k", lambda: {"f": len}, directory=tmp_path) == {"f": len}
    assert any("not stored" in r.getMessage() for r in caplog.records)
    assert not cache.entry_path("sva_eval", "k", tmp_path).exists()


def test_results_entry_killed_mid_write(tmp_path):
    script = textwrap.dedent(f"""
        import time, torch
        from neuronlib import cache
        real = torch.save
        def slow(obj, f):
            open(f, "wb").write(b"half an entry")
            time.sleep(60)
        torch.save = slow
        cache.cached("sva_eval", "k", lambda: 1, directory={str(tmp_path)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    kind_dir = tmp_path / "sva_eval"
    deadline = time.time() + 120
    while not (kind_dir.is_dir() and any(kind_dir.iterdir())) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = sorted(p.name for p in kind_dir.iterdir())  # the kill left a temp file and its (released) lock
    assert len(left) == 2 and all(n.startswith(".k.pt.tmp-") for n in left) and left[1].endswith(".lock")
    assert cache.cached("sva_eval", "k", lambda: 2, directory=tmp_path) == 2
    assert sorted(p.name for p in kind_dir.iterdir()) == ["k.pt"]  # temp file of the dead writer removed


# ---------------------------------------------------------------------------------------------------------------
# The model cache: a packaged model whose "conversion" builds a tiny model, so every path runs in seconds.

@pytest.fixture
def fake_packaged(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURONLIB_CACHE", str(tmp_path / "cache"))
    spec = models.PackagedModel("fake-tiny", "torch", "torch", "x.gguf", install="pip install torch")
    monkeypatch.setitem(models.PACKAGED, "fake-tiny", spec)
    calls = []

    def convert(spec):
        calls.append(1)
        hf, tok = models.build_tiny_model("tiny-llama", seed=5)
        return hf, tok, "converted"

    monkeypatch.setattr(models, "_convert", convert)
    neuronlib.load_model("fake-tiny")
    path = models._model_cache_path(spec)
    assert models.verify_cache(path).ok and calls == [1]
    return path, calls


def _embedding(model):
    return model.hf.get_input_embeddings().weight.detach().clone()


def _zero_embedding_row(path: Path, row: int) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(path / "model.safetensors")
    name = next(k for k in tensors if "embed_tokens" in k)
    tensors[name][row] = 0
    raw = (path / "model.safetensors").stat().st_size
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    assert (path / "model.safetensors").stat().st_size == raw  # same size: only the content hash can tell


@pytest.mark.parametrize("damage", ["truncate", "zero-bytes", "zero-row", "manifest-missing", "file-missing"])
def test_damaged_model_cache_is_rebuilt(fake_packaged, damage, caplog):
    path, calls = fake_packaged
    good = _embedding(neuronlib.load_model("fake-tiny"))
    assert calls == [1]  # the second load read the cache
    weights = path / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "zero-bytes":
        weights.write_bytes(b"")
    elif damage == "zero-row":
        row = models.build_tiny_tokenizer().convert_tokens_to_ids("texas")  # not in the reference prompt
        _zero_embedding_row(path, row)
    elif damage == "manifest-missing":
        (path / models.MANIFEST).unlink()
    else:
        (path / "tokenizer.json").unlink()
    assert not models.verify_cache(path).ok
    with caplog.at_level(logging.WARNING, logger="neuronlib"):
        model = neuronlib.load_model("fake-tiny")
    notices = [r.getMessage() for r in caplog.records if "rebuilding" in r.getMessage()]
    assert len(notices) == 1 and "\n" not in notices[0]
    assert calls == [1, 1]  # converted again
    assert torch.equal(_embedding(model), good)
    assert models.verify_cache(path).ok


@pytest.mark.slow  # slow on 2 cores: left out of `make test-fast`
def test_model_conversion_killed_mid_write(tmp_path, monkeypatch):
    cache_root = tmp_path / "cache"
    script = textwrap.dedent("""
        import time
        from neuronlib import models
        spec = models.PackagedModel("fake-tiny", "torch", "torch", "x.gguf", install="pip install torch")
        models.PACKAGED["fake-tiny"] = spec
        def convert(spec):
            hf, tok = models.build_tiny_model("tiny-llama", seed=5)
            real = hf.save_pretrained
            def slow(directory, **kw):
                real(directory, **kw)
                time.sleep(60)  # killed here: the temp folder holds a half-written cache
            hf.save_pretrained = slow
            return hf, tok, "converted"
        models._convert = convert
        models.load_model("fake-tiny")
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "NEURONLIB_CACHE": str(cache_root)})
    models_dir = cache_root / "models"
    deadline = time.time() + 120
    while time.time() < deadline:
        tmps = [p for p in models_dir.glob("*.tmp-*")] if models_dir.is_dir() else []
        if tmps and any((t / "model.safetensors").exists() for t in tmps):
            break
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len([p for p in models_dir.glob("*.tmp-*") if p.is_dir()]) == 1  # what a killed conversion leaves behind

    monkeypatch.setenv("NEURONLIB_CACHE", str(cache_root))
    spec = models.PackagedModel("fake-tiny", "torch", "torch", "x.gguf", "-")
    monkeypatch.setitem(models.PACKAGED, "fake-tiny", spec)
    monkeypatch.setattr(models, "_convert", lambda spec: (*models.build_tiny_model("tiny-llama", seed=5), "converted"))
    neuronlib.load_model("fake-tiny")
    assert list(models_dir.glob("*.tmp-*")) == []  # removed by the next load
    assert models.verify_cache(next(models_dir.iterdir())).ok


GEMMA = models.PACKAGED["gemma3-270m"]


@pytest.mark.skipif(importlib.util.find_spec(GEMMA.module) is None, reason="gemma package not installed")
def test_partial_gemma_assembly_is_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURONLIB_CACHE", str(tmp_path))
    target = tmp_path / "gguf" / GEMMA.gguf_file
    target.parent.mkdir(parents=True)
    module = importlib.import_module(GEMMA.module)
    target.write_bytes(module.chunk_paths()[0].read_bytes()[: 5 << 20])  # killed after 5 MB
    stale = target.with_name(f"{target.name}.partial-999999999-1")  # a killed run's partial file, lock released
    stale.write_bytes(b"x" * 1000)
    stale.with_name(stale.name + ".lock").write_text("{}")
    assert models._gguf_path(GEMMA) == target
    assert models.file_sha256(target) == module.EXPECTED_SHA256
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]


@pytest.mark.real_model
def test_zeroed_row_in_real_cache_is_detected(tmp_path, monkeypatch):
    """A zeroed embedding row of SmolLM2 once passed the reference-logit check. Checked on a copy."""
    spec = models.PACKAGED["smollm2-135m"]
    real = models._model_cache_path(spec)
    neuronlib.load_model("smollm2-135m")  # make sure the real cache exists (and is verified)
    monkeypatch.setenv("NEURONLIB_CACHE", str(tmp_path))
    copy = models._model_cache_path(spec)
    shutil.copytree(real, copy)
    assert models.verify_cache(copy).ok
    from transformers import AutoTokenizer

    row = AutoTokenizer.from_pretrained(copy)(" Texas", add_special_tokens=False)["input_ids"][0]
    _zero_embedding_row(copy, row)
    check = models.verify_cache(copy)
    assert not check.ok and "model.safetensors" in check.message
    assert models._load_cached(copy) is None  # refused before loading: the caller rebuilds
    out = subprocess.run([sys.executable, "-m", "neuronlib", "doctor"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "NEURONLIB_CACHE": str(tmp_path)})
    assert out.returncode == 0 and "DAMAGED" in out.stdout and "model.safetensors" in out.stdout


# ---------------------------------------------------------------------------------------------------------------
# Strict data.

def test_one_normaliser_for_every_container(tiny_llama):
    import datasets

    columns = {k: [p[k] for p in PAIRS] for k in PAIRS[0]}
    want = neuronlib.attribute(tiny_llama, PAIRS, method="atp")["mlp_acts"]
    for data in (columns, pd.DataFrame(PAIRS), datasets.Dataset.from_list(PAIRS), tuple(PAIRS)):
        assert torch.equal(neuronlib.attribute(tiny_llama, data, method="atp")["mlp_acts"], want)


@pytest.mark.parametrize("data, message", [
    (SVA_PAIRS[0], "are not lists"),  # one record: used to be iterated as its keys
    ({"prompt": "the keys to the"}, "are not lists"),
    ({"clean_prefix": ["a", "b"], "clean_answer": [" is"]}, "equal lengths"),
    ({"the keys"}, "set is not supported"),
    ((p for p in PAIRS), "generator is not supported"),
    (torch.zeros(3), "Tensor is not supported"),
    ([PAIRS[0], "the keys"], "not both"),
    ([1, 2], "not int"),
])
def test_other_containers_are_rejected_by_name(data, message):
    with pytest.raises(ValueError, match=message):
        as_examples(data)


def test_steer_on_a_record_is_rejected(tiny_llama):
    with pytest.raises(ValueError, match="are not lists"):
        steer(tiny_llama, {"prompt": "the keys to the"}, [(0, 1)], multiplier=0.0)


def test_callable_metric_must_return_one_value_per_example(tiny_llama):
    with pytest.raises(ValueError, match=r"returned shape \(\) for a batch of 2"):
        neuronlib.attribute(tiny_llama, PAIRS, method="atp", metric=lambda logits, batch: logits[:, 0].sum())
    with pytest.raises(ValueError, match="returned a float"):
        neuronlib.attribute(tiny_llama, PAIRS, method="atp", metric=lambda logits, batch: 1.0)
    ok = neuronlib.attribute(tiny_llama, PAIRS, method="atp", metric=lambda logits, batch: logits[:, 5])
    assert ok.metric.shape == (2,)


def test_scores_of_another_model_are_rejected(tiny_llama, tiny_gemma):
    scores = neuronlib.attribute(tiny_gemma, PAIRS, method="atp")
    with pytest.raises(ValueError, match="computed on model 'tiny-gemma'.*'tiny-llama'"):
        neuronlib.evaluate_circuit(tiny_llama, scores, PAIRS, sizes=[1])


def test_answer_equal_to_counterfactual(tiny_llama):
    pair = dict(PAIRS[0], patch_answer=PAIRS[0]["clean_answer"])
    with pytest.raises(ValueError, match="equals the counterfactual answer"):
        neuronlib.attribute(tiny_llama, [pair], method="atp")


def test_answer_without_leading_space_warns(tiny_llama, caplog):
    pair = dict(PAIRS[0], clean_answer="are")
    with caplog.at_level(logging.WARNING, logger="neuronlib"):
        neuronlib.attribute(tiny_llama, [pair], method="atp")
    assert any("no leading space" in r.getMessage() and "' are'" in r.getMessage() for r in caplog.records)


def test_prompt_longer_than_context(tiny_llama):
    context = tiny_llama.config.max_position_embeddings
    with pytest.raises(ValueError, match=f"longer than tiny-llama's context of {context}"):
        steer(tiny_llama, ["the " * (context + 5)], [(0, 1)], multiplier=0.0)


def test_long_prompt_warns_about_memory(tiny_llama, caplog, monkeypatch):
    monkeypatch.setenv("NEURONLIB_MEMORY_WARN_GB", "0.0000001")  # a forward of 5 tokens of the tiny model: ~6 kB
    with caplog.at_level(logging.WARNING, logger="neuronlib"):
        steer(tiny_llama, ["the keys to the cabinet"], [(0, 1)], multiplier=0.0)
    assert any("GiB" in r.getMessage() for r in caplog.records)


def test_memory_estimate_matches_the_measured_long_prompt():
    """A 5,000-word prompt (~6,000 tokens) on SmolLM2-135M was measured at 12.5 GB."""
    from types import SimpleNamespace

    from neuronlib.inputs import estimate_memory

    cfg = SimpleNamespace(num_attention_heads=9, vocab_size=49152, _attn_implementation="sdpa")
    fake = SimpleNamespace(config=cfg, n_layers=30, d_model=576, d_mlp=1536, dtype=torch.float32)
    gb = estimate_memory(fake, 1, 6000) / 2**30
    assert 6 < gb < 25
    assert estimate_memory(fake, 1, 20) / 2**30 < 0.1


# ---------------------------------------------------------------------------------------------------------------
# Strict interventions.

def test_complement_with_nodes_outside_the_sites(tiny_llama):
    nodes = [Node("attn_out", 0, 1, 2), Node("mlp_acts", 1, 1, 3)]
    with pytest.raises(ValueError, match=r"some nodes are on \['attn_out'\]"):
        ablate(tiny_llama, PAIRS, nodes, complement=True, sites=("mlp_acts",))
    ablate(tiny_llama, PAIRS, nodes, complement=True, sites=("mlp_acts", "attn_out"))  # fine


@pytest.mark.parametrize("multiplier", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_multiplier(tiny_llama, multiplier):
    with pytest.raises(ValueError, match="finite"):
        steer(tiny_llama, ["the keys to the"], [(0, 1)], multiplier=multiplier)


def test_to_frame_rejects_multi_token_strings(tiny_llama):
    out = steer(tiny_llama, ["the keys to the"], [(0, 1)], multiplier=0.0)
    with pytest.raises(ValueError, match="is 2 tokens"):
        out.to_frame([" dallas texas"])
    assert "p( texas)" in out.to_frame([" texas"]).columns


def test_chunked_model_is_concatenated_and_checked(tmp_path, monkeypatch):
    """A model shipped as part packages (each module's get_part_path()): assembled in order, checked against the
    registry's sha256; a damaged file and a killed run's partial file are replaced; a wrong hash refuses."""
    import hashlib

    pkg_root = tmp_path / "site"
    chunks = [os.urandom(3000 + 7 * i) for i in range(3)]
    for i, data in enumerate(chunks, 1):
        d = pkg_root / f"nlpart_test{i}"
        (d / "data").mkdir(parents=True)
        (d / "data" / f"part{i}.bin").write_bytes(data)
        (d / "__init__.py").write_text("import os\ndef get_part_path():\n    return os.path.join(os.path.dirname("
                                       f"os.path.abspath(__file__)), 'data', 'part{i}.bin')\n")
    monkeypatch.syspath_prepend(str(pkg_root))
    monkeypatch.setenv("NEURONLIB_CACHE", str(tmp_path / "cache"))
    whole = b"".join(chunks)
    parts = tuple(f"nlpart_test{i}" for i in range(1, 4))
    spec = models.PackagedModel("chunked", "torch", "nlpart_test1", "m.gguf", "-", parts=parts,
                                sha256=hashlib.sha256(whole).hexdigest())
    target = tmp_path / "cache" / "gguf" / "m.gguf"
    target.parent.mkdir(parents=True)
    target.write_bytes(whole[:100])  # an interrupted assembly
    stale = target.parent / "m.gguf.partial-999999999-1"  # a killed run's partial file, its lock released
    stale.write_bytes(b"x")
    stale.with_name(stale.name + ".lock").write_text("{}")
    assert models._gguf_path(spec) == target
    assert target.read_bytes() == whole
    assert sorted(p.name for p in target.parent.iterdir()) == ["m.gguf"]
    reordered = models.PackagedModel("chunked", "torch", "nlpart_test1", "r.gguf", "-", parts=parts[::-1],
                                     sha256=spec.sha256)
    with pytest.raises(OSError, match="sha256"):
        models._gguf_path(reordered)
    assert sorted(p.name for p in target.parent.iterdir()) == ["m.gguf"]  # nothing half-written left


@pytest.mark.skipif(not models.is_installed("qwen2.5-coder-1.5b"),
                    reason="the optional Qwen2.5-Coder-1.5B packages are not installed (bash scripts/setup_env.sh --qwen)")
@pytest.mark.slow
def test_qwen_gguf_assembles_to_its_registered_sha256():
    spec = models.PACKAGED["qwen2.5-coder-1.5b"]
    path = models._gguf_path(spec)
    assert path.stat().st_size == 1_117_320_768 and models.file_sha256(path) == spec.sha256


@pytest.mark.skipif(not models.is_installed("qwen2.5-coder-1.5b"),
                    reason="the optional Qwen2.5-Coder-1.5B packages are not installed (bash scripts/setup_env.sh --qwen)")
@pytest.mark.slow
@pytest.mark.real_model
def test_qwen_loads_as_a_qwen2_model_that_answers_the_two_hop_prompt():
    """The registry entry end to end (cache or conversion): the Qwen2 architecture entry, 28 x 8,960 neurons, and the
    two-hop answer the multi-hop notebook relies on."""
    from neuronlib.data.capitals import two_hop_fact_prompt

    model = neuronlib.load_model("qwen2.5-coder-1.5b")
    assert model.config.model_type == "qwen2" and model.arch.family == "llama"
    assert (model.n_layers, model.d_mlp) == (28, 8960)
    logits = model.hf(**model.tokenize([two_hop_fact_prompt("Dallas")])).logits[0, -1]
    assert int(logits.argmax()) == model.token_id(" Austin")
