"""Provenance for the paper's tables: every figure and headline table is a tidy CSV in ``results/`` with a JSON
sidecar saying which run made it (parameters, model, package version, commit, date, a stamp of the
result-affecting code).

Figures are drawn from these tables (:mod:`neuronlib.paper.figures`), and numbers in the notebooks' prose and the
README are rendered from them, so a number is never typed by hand.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd

logger = logging.getLogger(__name__)

# Modules whose code can move a result: the results cache keys its entries by their stamp.
RESULT_CODE = (
    "neuronlib.tracing", "neuronlib.attribution", "neuronlib.activations", "neuronlib.interventions",
    "neuronlib.evaluation", "neuronlib.metrics", "neuronlib.inputs", "neuronlib.sites", "neuronlib.edges",
    "neuronlib.graph", "neuronlib.pruning", "neuronlib.saes", "neuronlib.stats", "neuronlib.describe",
    "neuronlib.architectures", "neuronlib.models", "neuronlib.data.sva", "neuronlib.data.capitals",
    "neuronlib.paper.sva", "neuronlib.paper.sae_baselines", "neuronlib.paper.multihop", "neuronlib.paper.edges",
    "neuronlib.paper.languages", "neuronlib.paper.appendix", "neuronlib.data.languages",
)
# Modules that cannot move a table: they draw, print, run notebooks or record provenance. A table's stamp leaves
# them out, except for the names a stamped module imports from them (labels and number formats), which count.
PRESENTATION = (
    "neuronlib", "neuronlib.__main__", "neuronlib.cli", "neuronlib.logs", "neuronlib.plotting",
    "neuronlib.paper", "neuronlib.paper.figures", "neuronlib.paper.readme", "neuronlib.paper.reproduce",
    "neuronlib.paper.notebook", "neuronlib.paper.results", "neuronlib.paper.style", "neuronlib.viewer",
)
RUN_COMMIT_ENV = "NEURONLIB_RUN_COMMIT"  # the commit of the checkout when the run started (set by the runner)


def _presentation(module: str) -> bool:
    return any(module == p or (p == "neuronlib.viewer" and module.startswith(p + ".")) for p in PRESENTATION)


def _without_docstrings(tree):
    import ast

    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and \
                    isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return tree


def _imported_presentation_names(tree, module: str) -> list[tuple[str, str]]:
    """(presentation module, name) for every ``from X import name`` in ``tree`` whose X is a presentation module."""
    import ast

    package = module.split(".")
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package[:len(package) - node.level]  # a module's package is its name minus the last part
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        if target.startswith("neuronlib") and _presentation(target):
            found.extend((target, alias.name) for alias in node.names)
    return found


def _definition(tree, name: str):
    """The top-level statement that defines ``name`` in ``tree`` (a def, class or assignment), or None."""
    import ast

    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return node
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, (ast.AnnAssign, ast.AugAssign)) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return node
    return None


def stamp_sources(sources: dict[str, str]) -> dict[str, str]:
    """Per-module stamps from ``{module name: source text}``: a hash of the module's syntax tree without docstrings,
    so comments, docstrings and formatting do not count; plus the definitions it imports from presentation modules
    (found in ``sources`` too). Presentation modules get no stamp of their own."""
    import ast

    trees = {}
    for name, text in sources.items():
        try:
            trees[name] = _without_docstrings(ast.parse(text))
        except SyntaxError:
            trees[name] = None
    stamps = {}
    for name, tree in sorted(trees.items()):
        if _presentation(name):
            continue
        h = hashlib.sha256()
        if tree is None:
            h.update(sources[name].encode())
        else:
            h.update(ast.dump(tree).encode())
            for other, imported in _imported_presentation_names(tree, name):
                node = _definition(trees[other], imported) if trees.get(other) is not None else None
                h.update(f"{other}.{imported}:".encode() + (ast.dump(node).encode() if node is not None else b"?"))
        stamps[name] = h.hexdigest()[:16]
    return stamps


def _module_sources(modules) -> dict[str, str]:
    import importlib.util

    sources = {}
    for name in modules:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.origin and spec.origin.endswith(".py"):
            sources[name] = Path(spec.origin).read_text()
    return sources


def loaded_code() -> list[str]:
    """The neuronlib modules this process has imported: the code that can have produced what it writes."""
    import sys

    return sorted(name for name in list(sys.modules) if name == "neuronlib" or name.startswith("neuronlib."))


def code_stamps(modules=None) -> dict[str, str]:
    """:func:`stamp_sources` of ``modules`` (default: :func:`loaded_code`), with the presentation modules' sources
    read too, so the names taken from them count."""
    modules = loaded_code() if modules is None else list(modules)
    import neuronlib

    package = Path(neuronlib.__path__[0])  # read the files: importing them would change loaded_code()
    names = [".".join(("neuronlib", *f.relative_to(package).with_suffix("").parts)).removesuffix(".__init__")
             for f in package.rglob("*.py")]
    presentation = [name for name in names if _presentation(name)]
    return {name: stamp for name, stamp in stamp_sources(_module_sources({*modules, *presentation})).items()
            if name in modules}


def code_stamp(modules=RESULT_CODE) -> str:
    """One short hash of :func:`code_stamps` of ``modules``: the results cache's key for the result-affecting code."""
    h = hashlib.sha256(json.dumps(code_stamps(modules), sort_keys=True).encode())
    return h.hexdigest()[:16]


def git_commit(start: Path | None = None) -> str | None:
    """The checkout's HEAD commit (with ``+dirty`` when result-affecting files differ from it), or None."""
    try:
        cwd = str(start or Path.cwd())
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "neuronlib"], cwd=cwd, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def run_commit() -> str | None:
    """The commit recorded when this run started (:data:`RUN_COMMIT_ENV`, set by the runner and by a notebook's
    setup); the checkout's current commit when no run recorded one."""
    import os

    return os.environ.get(RUN_COMMIT_ENV) or git_commit()


def provenance(parameters: dict[str, Any] | None = None, *, model: str | None = None) -> dict[str, Any]:
    from .. import __version__

    return {"parameters": dict(parameters or {}), "model": model, "neuronlib": __version__,
            "commit": run_commit(), "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "code": code_stamps(), "threads": _torch_threads()}


def _torch_threads() -> int | None:
    """torch's thread count in this process (scores move in their last digits with it), or None without torch."""
    import sys

    torch = sys.modules.get("torch")
    return None if torch is None else int(torch.get_num_threads())


def write_table(frame: pd.DataFrame, name: str, directory: str | Path, *, parameters: dict | None = None,
                model: str | None = None, description: str = "") -> Path:
    """Write ``{directory}/{name}.csv`` and its sidecar ``{name}.json`` (provenance + description); returns the CSV."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.csv"
    frame.to_csv(path, index=False)
    meta = provenance(parameters, model=model)
    meta.update({"table": name, "description": description, "columns": list(map(str, frame.columns)),
                 "rows": int(len(frame))})
    (directory / f"{name}.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")
    logger.info(f"wrote {path} ({len(frame)} rows)")
    return path


def read_table(name: str, directory: str | Path) -> pd.DataFrame:
    path = Path(directory) / f"{name}.csv"
    if not path.exists():
        raise FileNotFoundError(f"no results table {path}; run the notebook that writes it (make reproduce)")
    return pd.read_csv(path)


def read_provenance(name: str, directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"no provenance sidecar {path}")
    return json.loads(path.read_text())


def stale_tables(directory: str | Path) -> dict[str, list[str]]:
    """``{table: [modules whose code changed since its run]}`` for the tables in ``directory`` that are stale.

    A sidecar records a stamp per module that its process had loaded (:func:`code_stamps`); a table is stale when one
    of those modules' stamps differs from the current code's (a module that no longer exists counts as changed). A
    sidecar without per-module stamps, or one that cannot be read, is stale with the reason in place of a module."""
    stale: dict[str, list[str]] = {}
    current: dict[str, str] = {}
    for sidecar in sorted(Path(directory).glob("*.json")):
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            stale[sidecar.stem] = ["(unreadable sidecar)"]
            continue
        recorded = meta.get("code")
        if not isinstance(recorded, dict):
            stale[sidecar.stem] = ["(no per-module code stamps)"]
            continue
        missing = [m for m in recorded if m not in current]
        if missing:
            current.update(code_stamps(missing))
        changed = sorted(m for m, stamp in recorded.items() if current.get(m) != stamp)
        if changed:
            stale[sidecar.stem] = changed
    return stale


def results_folder(directory: str | Path | None = None) -> Path | None:
    """``directory``, else ``$NEURONLIB_RESULTS``, else the checkout's ``results/`` (None outside a checkout)."""
    import os

    if directory is not None:
        return Path(directory)
    if os.environ.get("NEURONLIB_RESULTS"):
        return Path(os.environ["NEURONLIB_RESULTS"])
    from .reproduce import checkout

    try:
        return checkout() / "results"
    except ValueError:
        return None


def doctor_lines(directory: str | Path | None = None) -> list[str]:
    """What ``neuronlib doctor`` says about ``results/``: how many tables, the run that made them, and a warning
    naming the tables whose result-affecting code changed after their run (:func:`stale_tables`)."""
    folder = results_folder(directory)
    if folder is None or not folder.is_dir():
        return ["results: no results/ folder here (run `make reproduce` in the checkout)"]
    tables = sorted(p.stem for p in folder.glob("*.csv"))
    if not tables:
        return [f"results: {folder} holds no tables yet"]
    dates = set()
    for name in tables:
        try:
            meta = read_provenance(name, folder)
            dates.add(f"{meta.get('date', '?')[:10]} at {str(meta.get('commit') or '?')[:12]}")
        except (OSError, ValueError):
            dates.add("?")
    lines = [f"results: {len(tables)} tables in {folder} (runs: {', '.join(sorted(dates))})"]
    stale = stale_tables(folder)
    if stale:
        lines.append(f"  WARNING: code that can move a result changed after the run that made {len(stale)} table(s); "
                     "re-run the notebooks that write them:")
        groups: dict[tuple[str, ...], list[str]] = {}
        for name, changed in stale.items():
            groups.setdefault(tuple(changed), []).append(name)
        for changed, names in sorted(groups.items()):
            lines.append(f"    changed {', '.join(changed)}: {', '.join(sorted(names))}")
    else:
        lines.append("  code stamps match every table's run")
    return lines
