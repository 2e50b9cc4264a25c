"""Nothing lost, nothing left behind: a computed result survives a cache that cannot be written, caches shared by
processes on several machines or PID namespaces, damaged saved SAEs."""
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from neuronlib import cache, locks, models
from neuronlib.saes import TopKSAE, check_sae, load_sae, save_sae

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


# ---------------------------------------------------------------------------------------------------------------
# A results cache that cannot be written never costs the computed result.

def test_full_disk_returns_the_result(tmp_path):
    """A real size limit (RLIMIT_FSIZE: writes past 64 KiB fail as on a full disk) under torch's zip writer."""
    script = textwrap.dedent(f"""
        import logging, resource, signal, sys, torch
        from neuronlib import cache
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))
        value = cache.cached("sva_eval", "k", lambda: {{"x": torch.arange(100_000.0)}}, directory={str(tmp_path)!r})
        assert torch.equal(value["x"], torch.arange(100_000.0))
        print("RESULT", len(value["x"]))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "RESULT 100000" in out.stdout
    notices = [line for line in out.stderr.splitlines() if "not cached" in line]
    assert len(notices) == 1 and "sva_eval" in notices[0], out.stderr
    kind_dir = tmp_path / "sva_eval"
    assert not (kind_dir / "k.pt").exists() and list(kind_dir.iterdir()) == []  # no half entry, no temp file


def _read_only(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)


def test_a_file_in_the_cache_folder_s_place(tmp_path, caplog):
    (tmp_path / "file").write_text("not a folder")
    with caplog.at_level(logging.WARNING, logger="neuronlib"):
        value, hit = cache.cached_entry("sva_eval", "k", lambda: {"x": torch.ones(3)}, directory=tmp_path / "file")
    assert torch.equal(value["x"], torch.ones(3)) and hit is False
    notices = [r.getMessage() for r in caplog.records if "not cached" in r.getMessage()]
    assert len(notices) == 1 and "\n" not in notices[0]


def test_read_only_cache(tmp_path):
    """A read-only results folder: 0o555 for a normal user; as root (who writes through permissions), a read-only
    bind mount of the folder in a private mount namespace."""
    folder = tmp_path / "ro"
    _read_only(folder)
    script = textwrap.dedent(f"""
        import logging
        from neuronlib import cache
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        value = cache.cached("sva_eval", "k", lambda: 41 + 1, directory={str(folder)!r})
        print("RESULT", value)
    """)
    command = [sys.executable, "-c", script]
    if os.geteuid() == 0:
        mount = f"mount --bind {folder} {folder} && mount -o remount,bind,ro {folder} && exec \"$@\""
        command = ["unshare", "--mount", "sh", "-c", mount, "sh", *command]
        if shutil.which("unshare") is None or subprocess.run(["unshare", "--mount", "true"]).returncode:
            pytest.skip("running as root without mount namespaces: no way to make a folder read-only")
    out = subprocess.run(command, capture_output=True, text=True, timeout=120, env=ENV)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "RESULT 42" in out.stdout
    notices = [line for line in out.stderr.splitlines() if "not cached" in line]
    assert len(notices) == 1 and ("Read-only" in notices[0] or "Permission denied" in notices[0]), out.stderr


# ---------------------------------------------------------------------------------------------------------------
# Caches shared by processes on other machines or in other PID namespaces.

_HOLDER = textwrap.dedent("""
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("locked", flush=True)
    time.sleep(120)
""")


def test_a_live_writer_elsewhere_is_not_judged_by_its_pid(tmp_path):
    """Another machine's conversion in progress: its temp folder's name carries a pid that does not run here, but
    its writer holds the folder's lock. It must survive; once the writer is gone, the folder goes."""
    folder = tmp_path / "model-x.tmp-999999999-abc"  # pid 999999999 runs nowhere on this machine
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"half")
    lock = folder.with_name(folder.name + locks.LOCK_SUFFIX)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert models.stale_files(tmp_path) == []
        assert locks.remove_stale(tmp_path, "model-x.tmp-") == []
        assert folder.is_dir() and (folder / "model.safetensors").read_bytes() == b"half"
    finally:
        holder.kill()
        holder.wait()
    assert models.stale_files(tmp_path) == [folder]  # its writer died: now it is left over
    assert locks.remove_stale(tmp_path, "model-x.tmp-") == [folder]
    assert list(tmp_path.iterdir()) == []


def test_leftover_without_a_lock_goes_by_age(tmp_path):
    young, old = tmp_path / "m.tmp-1-a", tmp_path / "m.tmp-1-b"
    young.mkdir()
    old.mkdir()
    os.utime(old, (time.time() - 7 * 3600,) * 2)
    assert locks.remove_stale(tmp_path, "m.tmp-") == [old]
    assert young.is_dir()


_CONVERTER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from neuronlib import models
    spec = models.PackagedModel("fake-tiny", "torch", "torch", "x.gguf", install="pip install torch")
    models.PACKAGED["fake-tiny"] = spec
    go = Path(sys.argv[1])
    def convert(spec):
        hf, tok = models.build_tiny_model("tiny-llama", seed=5)
        real = hf.save_pretrained
        def slow(directory, **kw):
            real(directory, **kw)
            go.with_name(go.name + sys.argv[2]).write_text("in the temp folder")
            while not go.exists():  # both converters are mid-write before either goes on
                time.sleep(0.05)
        hf.save_pretrained = slow
        return hf, tok, "converted"
    models._convert = convert
    model = models.load_model("fake-tiny")
    path = models._model_cache_path(spec)
    print("OK" if models.verify_cache(path).ok else "DAMAGED", model.source, flush=True)
""")


def test_two_pid_namespaces_convert_into_one_empty_cache(tmp_path):
    """Two conversions at once into one empty cache, one of them in its own PID namespace (a container sharing the
    volume; where unshare is not allowed, both run here). Each removes the other's leftovers on start; neither
    may take the other's folder in progress, and both end with a verified model."""
    cache_root = tmp_path / "cache"
    go = tmp_path / "go"
    env = {**ENV, "NEURONLIB_CACHE": str(cache_root)}
    unshare = shutil.which("unshare")
    wrap = []
    if unshare and subprocess.run([unshare, "--pid", "--fork", "true"], capture_output=True).returncode == 0:
        wrap = [unshare, "--pid", "--fork"]
    procs = [subprocess.Popen([*pre, sys.executable, "-c", _CONVERTER, str(go), f".{i}"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, pre in enumerate(([], wrap))]
    try:
        deadline = time.time() + 240
        while not all(go.with_name(f"go.{i}").exists() for i in range(2)) and time.time() < deadline:
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.1)
        # both are mid-write; a third process starting now (another machine's load) removes nothing of theirs
        models_dir = cache_root / "models"
        assert models.stale_files(models_dir) == []
        assert locks.remove_stale(models_dir, "") == []
    finally:
        go.write_text("go")  # let both finish (or, after a failure above, end)
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and out.startswith("OK"), err[-3000:]
    final = [p for p in models_dir.iterdir()]
    assert len(final) == 1 and models.verify_cache(final[0]).ok


# ---------------------------------------------------------------------------------------------------------------
# Saved SAEs carry the model cache's sha256 manifest.

def _saved(tmp_path) -> Path:
    sae = TopKSAE(20, 60, 4, seed=5)
    return save_sae(sae, tmp_path / "layer_0")


@pytest.mark.parametrize("damage", ["truncate", "same-size"])
def test_damaged_saved_sae_is_caught(tmp_path, damage):
    path = _saved(tmp_path)
    weights = path / "sae_weights.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "truncate":
        weights.write_bytes(data[: len(data) // 2])
    else:  # flip bytes in W_dec's data: the file keeps its size and header
        data[-40:-20] = bytes(b ^ 0xFF for b in data[-40:-20])
        weights.write_bytes(bytes(data))
    check = check_sae(path)
    assert not check.ok and "sae_weights.safetensors" in check.message
    with pytest.raises(ValueError, match="damaged"):
        load_sae(path)


def test_sae_without_manifest_is_checked_and_adopted(tmp_path):
    """An SAE saved before manifests: a truncated file is caught by its header; an intact one gets a manifest."""
    path = _saved(tmp_path)
    (path / models.MANIFEST).unlink()
    assert check_sae(path, adopt=True).ok and (path / models.MANIFEST).exists()
    (path / models.MANIFEST).unlink()
    weights = path / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    check = check_sae(path)
    assert not check.ok and "truncated" in check.message


def test_damaged_baseline_sae_is_retrained(tmp_path, caplog):
    import neuronlib
    from neuronlib.paper import sae_baselines as sbl

    config = sbl.SAETrainConfig(expansion=1, k=2, n_tokens=64, n_eval_tokens=32, epochs=1, batch_size=32, seq_len=8,
                                lr=1e-2, forward_batch=8)
    model = neuronlib.load_model("tiny-llama")
    texts = [" ".join(["the keys to the cabinet are"] * 8)] * 40
    kw = dict(sites=("mlp_out",), config=config, root=tmp_path, texts=texts, workers=1, progress=False,
              log=lambda *a: None)
    sbl.train_sae_baselines(model, **kw)
    weights = sbl.sae_path(model, "mlp_out", 1, tmp_path) / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a truncated file: "trained already" said yes before
    with pytest.raises(ValueError, match="damaged"):
        sbl.load_sae_baselines(model, "mlp_out", root=tmp_path)
    with caplog.at_level(logging.WARNING, logger="neuronlib"):
        table = sbl.train_sae_baselines(model, **kw)
    assert table.set_index("layer").reused.to_dict() == {0: True, 1: False}
    assert any("damaged" in r.getMessage() for r in caplog.records)
    assert len(sbl.load_sae_baselines(model, "mlp_out", root=tmp_path)) == model.n_layers
    assert json.loads((weights.parent / models.MANIFEST).read_text())["files"]
