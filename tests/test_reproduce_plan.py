"""`neuronlib reproduce` says what is coming: a plan with one estimate per notebook before the first one starts,
scaled by the machine's calibration; a second run counts the cached results it re-uses, a changed parameter or
changed code does not count; the kernels' progress bars reach the terminal."""
import json
import re
import time
from pathlib import Path

import pytest
from conftest import make_notebook

from neuronlib.paper import reproduce, runplan

PARAMS = "MODEL = 'tiny-llama'\nSMOKE = False\nN = 3"

REPO = Path(__file__).resolve().parents[1]

_SETUP = ("from neuronlib.paper.notebook import setup\n"
          "session = setup(MODEL=MODEL, SMOKE=SMOKE, name='t')\n"
          "import neuronlib.stats as st\n"
          "rows = session.cached('resamples', st.bootstrap_indices, N, 5)")


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    root = tmp_path / "checkout"
    (root / "notebooks").mkdir(parents=True)
    (root / "pyproject.toml").write_text("")
    monkeypatch.chdir(root)
    monkeypatch.setenv("NEURONLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the kernels import this neuronlib
    monkeypatch.setattr(reproduce, "calibrate", lambda threads: (2.0, "a test's factor"))
    return root


def _run(log, **kw):
    lines = []
    reproduce.reproduce(log=lines.append, **kw)
    log.extend(lines)
    return lines


def test_estimates_scale_with_the_calibration_factor(tmp_path):
    book = tmp_path / "01_x.ipynb"
    make_notebook(book, params=PARAMS)
    cold, warm, _ = runplan.REFERENCE["01"]
    for factor in (0.5, 1.0, 3.0):
        est = runplan.estimate(book, factor=factor, state=None, smoke=False, paper_sizes=True)
        assert est.minutes == pytest.approx(cold * factor)
        assert runplan.minutes_text(cold * factor) in est.line
    full = runplan.Reuse(reused=4, total=4, last_seconds=60.0)
    est = runplan.estimate(book, factor=3.0, state=full, smoke=False, paper_sizes=True)
    assert est.minutes == pytest.approx(warm * 3.0)
    assert est.line.startswith(f"01_x.ipynb: re-uses 4 cached results, est. {runplan.minutes_text(warm * 3)} "
                               f"instead of {runplan.minutes_text(cold * 3)}")
    smoke = runplan.estimate(book, factor=3.0, state=None, smoke=True, paper_sizes=True)
    assert smoke.minutes is None and "estimates are for full runs only" in smoke.line


def test_the_calibration_times_the_workload_in_a_child(monkeypatch):
    monkeypatch.delenv("NEURONLIB_DEVICE", raising=False)
    factor, basis = runplan.calibrate(threads=1)
    assert factor is not None and 0.01 < factor < 100, basis
    assert f"x{factor:.2f}" in basis and "(1 thread)" in basis


@pytest.mark.notebook
def test_the_plan_comes_first_and_a_second_run_says_what_it_re_uses(checkout):
    root = checkout
    for name in ("01_a.ipynb", "02_b.ipynb"):
        make_notebook(root / "notebooks" / name, _SETUP, params=PARAMS)
    log = []
    first = _run(log)
    start = next(i for i, line in enumerate(first) if line.startswith("[1/2]"))
    plan = first[:start]
    assert plan[1] == "plan (estimated wall time on this machine):"
    for line, name in zip(plan[2:4], ("01_a.ipynb", "02_b.ipynb")):
        cold = runplan.REFERENCE[name[:2]][0] * 2.0
        assert line == f"  {name}: nothing counted as re-used (no record of an earlier run), est. up to " \
                       f"{runplan.minutes_text(cold)} as a first run"
    assert "scaled by a test's factor" in plan[4] and len(plan) == 5
    executed = root / "runs" / "full" / "executed"
    record = json.loads((executed / "01_a.cache.json").read_text())
    assert [(e["kind"], e["hit"], e["code"]) for e in record["entries"]] == \
        [("notebook_step", False, ["neuronlib.stats"])]
    assert Path(record["entries"][0]["path"]).is_file()
    assert any("01_a.ipynb" in line and "0 of 1 cached results re-used" in line for line in first)

    second = _run(log)
    warm = runplan.minutes_text(runplan.REFERENCE["01"][1] * 2.0)
    assert second[2].startswith(f"  01_a.ipynb: re-uses 1 cached results, est. {warm} instead of"), second
    assert any("01_a.ipynb" in line and "1 of 1 cached results re-used" in line for line in second), "\n".join(second)

    changed = _run(log, only=["01_"], parameters={"N": 4})
    assert changed[2].startswith("  01_a.ipynb: nothing counted as re-used (changed since the last run: parameter "
                                 "N), est. up to"), changed
    assert "at the paper's sizes; your parameters differ" in changed[2]
    assert any("0 of 1 cached results re-used" in line for line in changed)  # the cache agrees: N=4 was computed


def test_changed_code_or_a_missing_entry_is_not_re_used(tmp_path):
    book = tmp_path / "03_c.ipynb"
    make_notebook(book, params=PARAMS)
    from neuronlib.codestamps import dependency_stamp

    stamp = dependency_stamp(["neuronlib.stats"])
    there = tmp_path / "there.pt"
    there.write_bytes(b"x")
    entry = {"kind": "k", "path": str(there), "hit": True, "readable": True, "code": ["neuronlib.stats"],
             "stamp": stamp}
    entries = [entry, {**entry, "stamp": "0" * 16}, {**entry, "path": str(tmp_path / "gone.pt")},
               {**entry, "hit": False, "readable": False}]
    saes = tmp_path / "saes"
    (saes / "m" / "resid" / "layer_0").mkdir(parents=True)
    (saes / "m" / "resid" / "layer_0" / "cfg.json").write_text(json.dumps({"train_key": "k0"}))
    sae = {**entry, "kind": "sae_baseline", "path": str(saes), "hit": None}
    entries += [{**sae, "key": "k0"}, {**sae, "key": "k1"}]  # a saved SAE, and one that is not there
    params = {"SMOKE": False}
    record = tmp_path / "03_c.cache.json"
    runplan.write_record(record, book=book, parameters=params, seconds=90, entries=entries)
    state = runplan.reuse(book, params, record)
    assert (state.reused, state.total) == (2, 6)
    assert state.why_not == "1 with changed code, 1 the cache could not read back, 2 missing"
    line = runplan.estimate(book, factor=1.0, state=state, smoke=False, paper_sizes=True).line
    assert f"re-uses 2 of 6 cached results (4 recompute: {state.why_not})" in line
    refresh = runplan.reuse(book, {**params, "REFRESH": True}, record)
    assert (refresh.reused, refresh.why_not) == (0, "REFRESH=True recomputes every step")
    make_notebook(book, "x = 1", params=PARAMS)  # the notebook's code changed
    assert runplan.reuse(book, params, record).why_not == "changed since the last run: notebook"


@pytest.mark.notebook
def test_a_kernel_s_progress_bar_and_last_message_reach_the_terminal(checkout, capfd):
    make_notebook(checkout / "notebooks" / "05_p.ipynb", "from neuronlib.paper.notebook import setup\n"
              "session = setup(MODEL=MODEL, SMOKE=SMOKE, name='p')\nimport time\nfrom tqdm.auto import tqdm\n"
              "for _ in tqdm(range(4), desc='slow step'):\n    time.sleep(1.5)\n"
              "import logging\nlogging.getLogger('neuronlib.x').info('step one:   done')\ntime.sleep(2.5)", params=PARAMS)
    t0 = time.perf_counter()
    _run([])
    err = capfd.readouterr().err
    meters = re.findall(r"slow step: +\d+% \d/4 \[[0-9:]+<[0-9:?]+", err.replace("\r", "\n"))
    assert meters, err[-2000:]
    assert "  last: step one: done" in err  # a step without a bar: what the kernel last logged
    assert time.perf_counter() - t0 < 120


def test_the_kernel_logs_each_cache_entry_and_saved_sae_it_uses(tmp_path, monkeypatch, tiny_llama):
    from neuronlib import cache
    from neuronlib.paper import notebook
    from neuronlib.paper import sae_baselines as sbl

    for name in ("cache_key", "cached_entry"):  # restored after the test
        monkeypatch.setattr(cache, name, getattr(cache, name))
    monkeypatch.setenv("NEURONLIB_CACHE", str(tmp_path / "cache"))
    log = tmp_path / "cache.jsonl"
    notebook.record_cache_use(log)
    notebook.record_cache_use(log)  # a second setup() in the same kernel wraps nothing twice
    key = cache.cache_key(kind="edges", x=1)
    for _ in range(2):
        assert cache.cached("edges", key, lambda: {"a": [1, 2]}) == {"a": [1, 2]}
    sbl._train_key(tiny_llama, "resid", 0, sbl.DEFAULT_CONFIG, "data")
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    stamp = lines[1]["stamp"]
    assert [(e["kind"], e["hit"], e["readable"], e["code"]) for e in lines] == \
        [("edges", False, True, ["neuronlib.edges"]), ("edges", True, True, ["neuronlib.edges"]),
         ("sae_baseline", None, True, ["neuronlib.paper.sae_baselines"])]
    from neuronlib.codestamps import dependency_stamp

    assert stamp == dependency_stamp(["neuronlib.edges"])
    assert lines[0]["path"] == str(cache.entry_path("edges", key).resolve())
    assert lines[2]["path"] == str((tmp_path / "cache" / "saes").resolve())
    assert len(runplan.read_cache_log(log)) == 2  # one per entry: the first line says whether it was computed
