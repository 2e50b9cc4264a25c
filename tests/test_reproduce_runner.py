"""`neuronlib reproduce` on small notebooks: a failing cell's message in one line, parameters and device checked
before a kernel starts, every signal cleaned up after, and what a killed run leaves removed by the next one."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_notebook

from neuronlib.paper import reproduce

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def checkout(tmp_path):
    root = tmp_path / "checkout"
    (root / "notebooks").mkdir(parents=True)
    (root / "pyproject.toml").write_text("")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp)}
    return root, tmp, env


def _start(root, env, *args):
    return subprocess.Popen([sys.executable, "-m", "neuronlib", "reproduce", "--smoke", "--model", "tiny-llama",
                             *args], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _messages(stderr: str) -> list[str]:
    """What the runner says, without papermill's progress bar."""
    return [line for line in stderr.replace("\r", "\n").splitlines()
            if line.strip() and not line.startswith("Executing")]


def test_parameters_are_checked_against_the_declared_types(tmp_path, monkeypatch):
    root = tmp_path / "checkout"
    (root / "notebooks").mkdir(parents=True)
    (root / "pyproject.toml").write_text("")
    make_notebook(root / "notebooks" / "00_a.ipynb",
              params='MODEL = "tiny-llama"\nSMOKE = True\nN_NEURONS = 20\nTAU = 0.005\nSTATES = None\nT = ["a"]')
    monkeypatch.setattr(reproduce, "run_notebook", lambda *a, **k: pytest.fail("a kernel started"))
    monkeypatch.chdir(root)
    for params, message in [({"N_NEURONS": "abc"}, "declares N_NEURONS = 20, so give an int"),
                            ({"N_NEURONS": 2.5}, "give an int"), ({"N_NEURONS": True}, "give an int"),
                            ({"TAU": "x"}, "give a number"), ({"T": "a"}, "give a list")]:
        with pytest.raises(ValueError, match=message):
            reproduce.reproduce(smoke=True, model="tiny-llama", out_dir=tmp_path / "runs", parameters=params)
    monkeypatch.setenv("NEURONLIB_DEVICE", "cuda:7")
    with pytest.raises(ValueError, match="device 'cuda:7' is not available"):
        reproduce.reproduce(smoke=True, model="tiny-llama", out_dir=tmp_path / "runs",
                            parameters={"N_NEURONS": 3, "TAU": 1, "STATES": ["Texas"], "T": ("b",)})
    assert not (tmp_path / "runs").exists()


@pytest.mark.notebook
def test_failing_cell_is_one_line_with_its_message(checkout):
    root, tmp, env = checkout
    make_notebook(root / "notebooks" / "01_fail.ipynb", "x = 1", "raise RuntimeError('the data folder is empty')")
    proc = _start(root, env)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1
    errors = [line for line in _messages(err) if line.startswith("neuronlib: error:")]
    assert len(errors) == 1, err
    assert "01_fail.ipynb failed in cell [" in errors[0] and "]: RuntimeError: the data folder is empty" in errors[0]
    assert str(root / "runs" / "smoke" / "executed" / "01_fail.failed.ipynb") in errors[0]
    assert "-----" not in err and "Traceback" not in err
    assert list(tmp.iterdir()) == []


_SLEEP = "import os, time\nopen(os.environ['PID_FILE'], 'w').write(str(os.getpid()))\ntime.sleep(120)"


def _wait_for_kernel(root, pid_file, proc):
    deadline = time.time() + 120
    while not pid_file.exists() and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    time.sleep(0.5)
    return int(pid_file.read_text())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.notebook
@pytest.mark.parametrize("sig, said", [(signal.SIGTERM, "stopped by SIGTERM"), (signal.SIGHUP, "stopped by SIGHUP"),
                                       (signal.SIGINT, "interrupted")])
def test_a_signal_is_cleaned_up_and_said_in_one_line(checkout, sig, said):
    root, tmp, env = checkout
    make_notebook(root / "notebooks" / "01_sleep.ipynb", _SLEEP)
    pid_file = root / "kernel.pid"
    proc = _start(root, {**env, "PID_FILE": str(pid_file)})
    kernel = _wait_for_kernel(root, pid_file, proc)
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)  # Ctrl-C: the terminal signals the runner and its kernel alike
    else:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    messages = _messages(err)
    said_lines = messages[next(i for i, m in enumerate(messages) if "[1/1] 01_sleep.ipynb" in m) + 1:]
    assert len(said_lines) == 1 and said in said_lines[0] and "01_sleep.ipynb" in said_lines[0], err
    assert "Traceback" not in err
    executed = root / "runs" / "smoke" / "executed"
    assert sorted(p.name for p in executed.iterdir()) == ["01_sleep.failed.ipynb", "01_sleep.kernel.log"]
    assert list(tmp.iterdir()) == []  # the runner's temporary folder is gone
    deadline = time.time() + 30
    while _alive(kernel) and time.time() < deadline:
        time.sleep(0.2)
    assert not _alive(kernel)


@pytest.mark.notebook
def test_a_killed_run_s_leftovers_go_with_the_next_run(checkout):
    root, tmp, env = checkout
    book = root / "notebooks" / "01_sleep.ipynb"
    make_notebook(book, _SLEEP)
    pid_file = root / "kernel.pid"
    proc = _start(root, {**env, "PID_FILE": str(pid_file)})
    kernel = _wait_for_kernel(root, pid_file, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # nothing can clean up after this
    proc.communicate()
    if _alive(kernel):
        os.kill(kernel, signal.SIGKILL)
    executed = root / "runs" / "smoke" / "executed"
    assert any(p.name.startswith(".01_sleep.running-") for p in executed.iterdir())
    assert any(p.name.startswith("neuronlib-reproduce-") for p in tmp.iterdir())
    make_notebook(book, "x = 1")
    proc = _start(root, env)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert sorted(p.name for p in executed.iterdir()) == ["01_sleep.ipynb", "01_sleep.kernel.log"]
    assert [p.name for p in tmp.iterdir() if p.name.startswith("neuronlib-reproduce-")] == []
