"""Run every numbered notebook in order with papermill: the package's main job.

Executed copies go to ``runs/`` (outside git); figures go to ``figures/`` (a smoke run writes them under
``runs/smoke/figures`` instead, so it never overwrites the committed full-run figures). The model name is checked
before any notebook starts; a notebook that fails leaves the previous executed copy in place (the failed run is kept
as ``NAME.failed.ipynb`` and the error is :class:`NotebookFailed`: one line with the cell's exception type and
message and that path); the notebooks' SMOKE scratch folders go into one temporary folder that is removed after the
run. Parameters are checked against the types of the notebooks' defaults, and the device, before a kernel starts.

Before the first notebook starts it prints a plan (:mod:`neuronlib.paper.runplan`): each notebook's estimated wall
time on this machine and how many cached results it re-uses; each notebook starts with the estimated time left, and
its kernel's running progress bar (or last log message) is shown under papermill's cell bar.

SIGTERM and SIGHUP stop a run as Ctrl-C does (:class:`Interrupted`): the running notebook's partial copy is kept as
``NAME.failed.ipynb`` and the temporary folder removed. The in-progress copy and the temporary folder are held
under a lock (:mod:`neuronlib.locks`), so what a killed run (SIGKILL) leaves is removed by the next run.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..registry import DEFAULT_MODEL
from . import runplan

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)


class NotebookFailed(RuntimeError):
    """A notebook's cell raised: ``str()`` is one line (notebook, cell, exception type and message, partial run)."""


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal (SIGINT, SIGTERM, SIGHUP); ``str()`` names it."""


def checkout(start: Path | None = None) -> Path:
    """The repository checkout that holds ``notebooks/``: ``start`` (default: the working directory) or a parent.

    The notebooks are not part of the installed package; ``make reproduce`` runs from the checkout."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "notebooks").is_dir() and (folder / "pyproject.toml").is_file():
            return folder
    raise ValueError(f"no neuron-circuits checkout (a folder with notebooks/ and pyproject.toml) at or above {here}; "
                     "run from the repository")


def check_model(model: str) -> None:
    """ValueError (or ModuleNotFoundError with the pip command) before any notebook runs, if ``model`` cannot load:
    not a registry name, a local directory or a hub id, or its package is missing."""
    from ..registry import PACKAGED, _package_version, check_model_name

    check_model_name(model)
    if model in PACKAGED:
        _package_version(PACKAGED[model])


def declared_parameters(path: Path) -> set[str]:
    """Names assigned at the top level of a notebook's papermill ``parameters`` cell."""
    return set(declared_defaults(path))


_UNKNOWN = object()  # a default that is not a literal (an expression): any value is accepted


def declared_defaults(path: Path) -> dict[str, object]:
    """{name: default} of a notebook's ``parameters`` cell (a default that is not a Python literal is unknown)."""
    import ast
    import json

    for cell in json.loads(Path(path).read_text())["cells"]:
        if cell["cell_type"] == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            out = {}
            for node in ast.parse("".join(cell["source"])).body:
                if isinstance(node, ast.Assign):
                    try:
                        value = ast.literal_eval(node.value)
                    except (ValueError, SyntaxError, TypeError):
                        value = _UNKNOWN
                    out.update({t.id: value for t in node.targets if isinstance(t, ast.Name)})
            return out
    return {}


def check_parameter(name: str, value, default, notebook: str) -> None:
    """ValueError unless ``value`` has the type of the notebook's default (an int where it declares ``20``; an int
    or a float where ``0.5``; a list where ``[...]``); a ``None`` or non-literal default accepts anything."""
    kinds = ((bool, (bool,), "True or False"), (int, (int,), "an int"), (float, (int, float), "a number"),
             (str, (str,), "a string"), ((list, tuple), (list, tuple), "a list"), (dict, (dict,), "a dict"))
    if default is None or default is _UNKNOWN:
        return
    for declared, accepted, words in kinds:
        if isinstance(default, declared):
            if not isinstance(value, accepted) or (isinstance(value, bool) and declared is not bool):
                raise ValueError(f"-p {name}={value!r}: {notebook} declares {name} = {default!r}, so give "
                                 f"{words}")
            return


def check_device_here() -> None:
    """ValueError before any kernel starts if $NEURONLIB_DEVICE names a device this machine's torch cannot use.
    Checked in a child process, so the runner itself never holds torch."""
    import subprocess
    import sys

    device = os.environ.get("NEURONLIB_DEVICE")
    if not device or device == "cpu":
        return
    code = ("import sys\nfrom neuronlib.models import check_device\ntry:\n    check_device(sys.argv[1])\n"
            "except ValueError as err:\n    print(err); sys.exit(3)")
    out = subprocess.run([sys.executable, "-c", code, device], capture_output=True, text=True, timeout=300)
    if out.returncode == 3:
        raise ValueError(out.stdout.strip())


def parse_parameter(text: str) -> tuple[str, object]:
    """``NAME=VALUE`` -> (NAME, value); VALUE is read as a Python literal (``32``, ``['nounpp']``, ``None``), else kept
    as a string."""
    import ast

    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        raise ValueError(f"--param {text!r}: use NAME=VALUE, e.g. N_TRAIN=32")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, value


def merge_injected_parameters(path: Path) -> dict:
    """Fold papermill's ``injected-parameters`` cell of the executed notebook at ``path`` into its ``parameters``
    cell, in place; returns the parameters that differed from the cell's defaults.

    A committed notebook then shows one parameters cell whose values are the ones its outputs were made with, and a
    reader's edit of that cell is not undone by a hidden second assignment. papermill already records every
    parameter in the notebook's metadata (``metadata.papermill.parameters``)."""
    import ast
    import json

    nb = json.loads(Path(path).read_text())
    cells = nb["cells"]
    tagged = [i for i, c in enumerate(cells) if "injected-parameters" in c.get("metadata", {}).get("tags", [])]
    if not tagged:
        return {}
    injected = {}
    for i in tagged:
        for node in ast.parse("".join(cells[i]["source"])).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                injected[node.targets[0].id] = ast.literal_eval(node.value)
    params = next((c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    changed = {}
    if params is not None:
        lines = "".join(params["source"]).splitlines(keepends=True)
        for node in reversed(ast.parse("".join(lines)).body):  # bottom-up: earlier line numbers stay valid
            if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
                continue
            name = node.targets[0].id
            if name not in injected:
                continue
            try:
                default = ast.literal_eval(node.value)
            except ValueError:
                default = object()  # an expression: always replaced by the run's value
            if default == injected[name] and type(default) is type(injected[name]):
                continue
            changed[name] = injected[name]
            first, last = node.lineno - 1, node.end_lineno - 1
            tail = lines[last][node.end_col_offset:].rstrip("\n")
            comment = tail.strip() if tail.strip().startswith("#") else ""
            lines[first:last + 1] = [f"{name} = {injected[name]!r}{'  ' + comment if comment else ''}\n"]
        params["source"] = lines
    nb["cells"] = [c for i, c in enumerate(cells) if i not in tagged]
    Path(path).write_text(json.dumps(nb, indent=1, ensure_ascii=False))  # as papermill writes it
    return changed


def notebooks(directory: Path | None = None) -> list[Path]:
    directory = Path(directory) if directory is not None else checkout() / "notebooks"
    return sorted(p for p in directory.glob("[0-9][0-9]_*.ipynb"))


def _figure_state(directory: Path) -> dict[str, float]:
    if not directory.exists():
        return {}
    return {p.name: p.stat().st_mtime for p in directory.iterdir() if p.is_file()}


def run_notebook(path: Path, *, smoke: bool, model: str | None, out_dir: Path, figures: Path, log=None,
                 parameters: dict | None = None, report: Path | None = None) -> dict:
    """Execute one notebook with papermill; ``model`` None keeps the notebook's own MODEL default.

    ``report``: a folder where the kernel logs its running progress bars, shown on the terminal under papermill's
    cell bar, and (not SMOKE) the results-cache entries it uses, returned as ``entries``."""
    log = log or logger.info
    import papermill

    from .runplan import CACHE_LOG_ENV, PROGRESS_ENV, read_cache_log

    out_dir.mkdir(parents=True, exist_ok=True)
    figures.mkdir(parents=True, exist_ok=True)
    before = _figure_state(figures)
    reports = {}
    if report is not None:
        report.mkdir(parents=True, exist_ok=True)
        reports = {PROGRESS_ENV: report / f"{path.stem}.progress"}
        if not smoke:  # a SMOKE run's cache is temporary: nothing to count next time
            reports[CACHE_LOG_ENV] = report / f"{path.stem}.cache.jsonl"
        for file in reports.values():
            file.unlink(missing_ok=True)
    old_env = {name: os.environ.get(name) for name in ("NEURONLIB_FIGURES", *reports)}
    os.environ["NEURONLIB_FIGURES"] = str(figures)  # the kernel inherits them
    os.environ.update({name: str(file) for name, file in reports.items()})
    mirror = _ShowProgress(reports[PROGRESS_ENV]) if reports else contextlib.nullcontext()
    t0 = time.perf_counter()
    target = out_dir / path.name
    failed = out_dir / f"{path.stem}.failed.ipynb"
    from ..locks import remove_stale, temporary

    remove_stale(out_dir, f".{path.stem}.running-", max_age_s=0)  # left by a killed run (its lock is free)
    try:
        with temporary(out_dir, f".{path.stem}.running-", suffix=".ipynb") as running, mirror:
            try:
                papermill.execute_notebook(
                    str(path), str(running), parameters={**({} if model is None else {"MODEL": model}), "SMOKE": smoke,
                                                         **(parameters or {})},
                    cwd=str(path.parent), progress_bar=True, kernel_name="python3",
                    kernel_manager_class=_kernel_manager(out_dir / f"{path.stem}.kernel.log"),
                )
                merge_injected_parameters(running)
                os.replace(running, target)  # only a finished run replaces the executed copy
            except BaseException:
                if running.exists() and running.stat().st_size:
                    os.replace(running, failed)
                raise
    except papermill.PapermillExecutionError as err:
        if err.ename == "KeyboardInterrupt":  # Ctrl-C reaches the kernel too: the cell stops with this
            raise Interrupted(f"interrupted while running {path.name}; partial run: {failed}") from None
        message = " ".join(str(err.evalue).split()) or "(no message)"
        message = message if len(message) <= 300 else message[:297] + "..."
        raise NotebookFailed(f"{path.name} failed in cell [{err.exec_count}]: {err.ename}: {message} (partial run: "
                             f"{failed}; {target.name} left as it was)") from None
    except KeyboardInterrupt as err:
        kept = f"; partial run: {failed}" if failed.exists() and failed.stat().st_mtime >= time.time() - \
            (time.perf_counter() - t0) - 1 else ""
        raise Interrupted(f"{str(err) or 'interrupted'} while running {path.name}{kept}") from None
    finally:
        for name, old in old_env.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old
    seconds = time.perf_counter() - t0
    after = _figure_state(figures)
    made = sorted(name for name, mtime in after.items() if before.get(name) != mtime)
    entries = read_cache_log(reports[CACHE_LOG_ENV]) if CACHE_LOG_ENV in reports else []
    looked_up = [e for e in entries if e["hit"] is not None]  # trained SAEs are counted by their own log line
    hits = f", {sum(e['hit'] for e in looked_up)} of {len(looked_up)} cached results re-used" if looked_up else ""
    log(f"  {path.name}: {seconds / 60:.1f} min, {len(made)} figure files{hits}")
    return {"notebook": path.name, "seconds": seconds, "figures": made, "executed": str(out_dir / path.name),
            "entries": entries}


class _ShowProgress:
    """While a notebook runs: a thread that shows the outermost running progress bar of its kernel, else the last
    message it logged (as the kernel writes them to ``path``, :func:`neuronlib.paper.notebook.mirror_progress`), as
    one line under papermill's bar."""

    def __init__(self, path: Path, every_s: float = 1.0):
        import threading

        self.path, self.every_s, self.stop = path, every_s, threading.Event()
        self.thread = threading.Thread(target=self._loop, name="neuronlib-show-progress", daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=5)

    def _loop(self):
        import json
        import shutil

        from tqdm import tqdm

        bar, shown = None, ""
        while not self.stop.wait(self.every_s):
            try:
                state = json.loads(self.path.read_text())
                bars, message = state["bars"], state["log"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            line = f"  {bars[0]}" if bars else f"  last: {message}" if message else ""
            width = shutil.get_terminal_size().columns - 1  # a wrapped line would not be redrawn in place
            line = line if len(line) <= width else line[:width - 3] + "..."
            if line == shown:
                continue
            if bar is None:
                bar = tqdm(total=None, bar_format="{desc}", leave=False)
            bar.set_description_str(line, refresh=True)
            shown = line
        if bar is not None:
            bar.close()


def _kernel_manager(log: Path):
    """A kernel manager whose kernel writes its own stderr (ipykernel's log: warnings, and the traceback it prints
    when it is shut down mid-cell) to ``log`` instead of the terminal; the cells' output stays in the notebook."""
    from jupyter_client.manager import AsyncKernelManager

    class KernelLoggingToFile(AsyncKernelManager):
        async def _async_launch_kernel(self, kernel_cmd, **kw):  # the documented hook for launching differently
            with open(log, "ab") as stream:
                kw.setdefault("stderr", stream)
                return await super()._async_launch_kernel(kernel_cmd, **kw)

    return KernelLoggingToFile


def reproduce(*, smoke: bool = False, model: str | None = None, only: list[str] | None = None,
              out_dir: Path | None = None, log=None, sva_data: str | Path | None = None,
              parameters: dict | None = None) -> pd.DataFrame:
    """Execute the notebooks; returns one row per notebook (seconds, figures written, executed copy).

    ``model``: run every notebook on it; None (default) runs each on its own MODEL default (the package default
    :data:`neuronlib.registry.DEFAULT_MODEL`, except the multi-hop notebook's two-hop model). Every model is checked
    before any notebook runs.
    ``sva_data``: a directory of community-format SVA files; notebook 02 then runs on them (parameter SVA_DATA).
    ``parameters``: papermill parameters, each passed to the notebooks whose parameters cell declares it (an
    unknown name is an error before anything runs)."""
    if sva_data is not None and not Path(sva_data).is_dir():
        raise ValueError(f"--sva-data {sva_data}: not a directory")
    parameters = dict(parameters or {})
    log = log or logger.info
    if model is not None:
        check_model(model)
    root = checkout()
    base = Path(out_dir) if out_dir is not None else root / "runs" / ("smoke" if smoke else "full")
    figures = base / "figures" if smoke else Path(os.environ.get("NEURONLIB_FIGURES", root / "figures"))
    books = notebooks()
    if only:
        books = [b for b in books if any(key in b.name for key in only)]
    if not books:
        raise ValueError("no notebooks to run" + (f" matching {only}" if only else ""))
    declared = {book: declared_defaults(book) for book in books}
    unknown = sorted(set(parameters) - set().union(*declared.values()))
    if unknown:
        raise ValueError(f"parameter(s) {unknown} declared by none of {[b.name for b in books]}")
    for book, defaults in declared.items():
        for name, value in parameters.items():
            if name in defaults:
                check_parameter(name, value, defaults[name], book.name)
    if model is None:
        for defaults in declared.values():
            default = defaults.get("MODEL", DEFAULT_MODEL)
            check_model(default if isinstance(default, str) else DEFAULT_MODEL)
    check_device_here()
    log(f"neuronlib reproduce: {len(books)} notebooks, model {model or 'each notebook default'}, "
        f"{'SMOKE' if smoke else 'full'} mode")
    executed = base / "executed"
    params_of = {book: _notebook_parameters(book, declared[book], parameters, sva_data, smoke, model)
                 for book in books}
    factor, basis = (None, "") if smoke else calibrate(threads=_threads(parameters))
    estimates, lines = runplan.plan(books, parameters_of=params_of, executed=executed, smoke=smoke, factor=factor,
                                    basis=basis, paper_sizes=model is None and sva_data is None and
                                    not set(parameters) - {"THREADS", "REFRESH"})
    for line in lines:
        log(line)
    t0 = time.perf_counter()
    rows = []
    from ..locks import remove_stale, temporary

    remove_stale(Path(tempfile.gettempdir()), "neuronlib-reproduce-")  # left by a killed run
    old_smoke = os.environ.get("NEURONLIB_SMOKE_DIR")
    from .results import RUN_COMMIT_ENV, git_commit

    old_commit = os.environ.get(RUN_COMMIT_ENV)
    with temporary(Path(tempfile.gettempdir()), "neuronlib-reproduce-", folder=True) as scratch, _stop_on_signals():
        os.environ["NEURONLIB_SMOKE_DIR"] = str(scratch)  # the kernels put their SMOKE folders here
        os.environ[RUN_COMMIT_ENV] = git_commit(root) or ""  # every table of this run names the commit it started from
        try:
            _run_all(books, params_of, estimates, smoke, model, executed, figures, log, rows, scratch)
        finally:
            for name, old in (("NEURONLIB_SMOKE_DIR", old_smoke), (RUN_COMMIT_ENV, old_commit)):
                if old is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = old
    total = time.perf_counter() - t0
    log(f"done in {total / 60:.1f} min; executed notebooks in {base / 'executed'}; figures in {figures}")
    for row in rows:
        for fig in row["figures"]:
            log(f"  {fig:40s} <- {row['notebook']}")
    import pandas as pd  # here, not at the top: the runner's process stays light (it only waits on papermill)

    return pd.DataFrame(rows)


def _notebook_parameters(book, declared, parameters, sva_data, smoke, model) -> dict:
    """What papermill hands ``book``: MODEL (when given), SMOKE, and the parameters it declares."""
    extra = {k: v for k, v in parameters.items() if k in declared}
    if sva_data and book.name.startswith("02_"):
        extra["SVA_DATA"] = str(Path(sva_data).resolve())
    return {**({} if model is None else {"MODEL": model}), "SMOKE": smoke, **extra}


def _threads(parameters: dict) -> int | None:
    """The torch threads of the kernels: their THREADS parameter, else None (the notebooks' default)."""
    threads = parameters.get("THREADS")
    return threads if isinstance(threads, int) and not isinstance(threads, bool) and threads > 0 else None


def calibrate(*, threads: int | None):
    """:func:`neuronlib.paper.runplan.calibrate` (a name here, so tests can give the runner a known factor)."""
    return runplan.calibrate(threads=threads)


def _run_all(books, params_of, estimates, smoke, model, executed, figures, log, rows, scratch) -> None:
    for i, (book, est) in enumerate(zip(books, estimates), 1):
        ahead = [e.minutes for e in estimates[i - 1:] if e.minutes is not None]
        eta = ""
        if est.minutes is not None:
            done = time.strftime("%H:%M", time.localtime(time.time() + 60 * sum(ahead)))
            eta = f" (est. {runplan.minutes_text(est.minutes)}; all {len(books) - i + 1} left est. " \
                  f"{runplan.minutes_text(sum(ahead))}, done ~{done})"
        log(f"[{i}/{len(books)}] {book.name}{eta}")
        extra = {k: v for k, v in params_of[book].items() if k not in ("MODEL", "SMOKE")}
        row = run_notebook(book, smoke=smoke, model=model, out_dir=executed, figures=figures, log=log,
                           parameters=extra, report=Path(scratch) / "reports")
        if not smoke:  # a SMOKE run's cache is its temporary folder: nothing of it is there next time
            runplan.write_record(runplan.record_path(executed, book), book=book, parameters=params_of[book],
                                 seconds=row["seconds"], entries=row["entries"])
        rows.append(row)


@contextlib.contextmanager
def _stop_on_signals():
    """SIGTERM and SIGHUP raise :class:`Interrupted` in the main thread, as Ctrl-C raises KeyboardInterrupt, so the
    run's clean-up (kernel shut down, partial copy kept, temporary folder removed) happens for them too."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Interrupted(f"stopped by {signal.Signals(signum).name}")

    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
