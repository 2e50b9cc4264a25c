"""The case-study pipeline shared by the prompt-set studies: the studies reach it, and one another, through public
names only, and every module attribute the committed notebooks call still exists."""
import ast
import importlib
import inspect
import json
from pathlib import Path

import pandas as pd
import pytest

from neuronlib import cache
from neuronlib.codestamps import dependencies, package_modules
from neuronlib.paper import casestudy as CS
from neuronlib.paper import multihop as MH

REPO = Path(__file__).resolve().parents[1]
STUDIES = ("neuronlib.paper.casestudy", "neuronlib.paper.multihop", "neuronlib.paper.languages",
           "neuronlib.paper.appendix")


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` in ``module`` reads from."""
    if not node.level:
        return node.module or ""
    base = module.split(".")[:-node.level]
    return ".".join(base + ([node.module] if node.module else []))


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _module_aliases(tree, module: str, known) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """({local name: neuronlib module} bound by the imports of ``tree``, [(module, name)] of the names imported from
    other neuronlib modules)."""
    aliases, names = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            if not base.startswith("neuronlib"):
                continue
            for alias in node.names:
                if f"{base}.{alias.name}" in known:
                    aliases[alias.asname or alias.name] = f"{base}.{alias.name}"
                elif base != module:
                    names.append((base, alias.name))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("neuronlib"):
                    aliases[alias.asname or alias.name] = alias.name
    return aliases, names


def _private_uses(module: str, text: str, known) -> list[str]:
    tree = ast.parse(text)
    aliases, names = _module_aliases(tree, module, known)
    found = [f"from {base} import {name}" for base, name in names if _private(name)]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases \
                and _private(node.attr):
            found.append(f"{aliases[node.value.id]}.{node.attr}")
    return found


@pytest.mark.parametrize("module", STUDIES)
def test_a_study_uses_only_public_names_of_other_modules(module):
    files = package_modules()
    assert _private_uses(module, files[module].read_text(), files) == []


def test_the_check_sees_a_private_name_taken_through_a_module_alias():
    files = package_modules()
    old = "from . import multihop as MH\nids = MH._name_ids(tok, 'x')\nfrom .casestudy import _kinds_of\n"
    assert _private_uses("neuronlib.paper.languages", old, files) == [
        "from neuronlib.paper.casestudy import _kinds_of", "neuronlib.paper.multihop._name_ids"]


@pytest.mark.parametrize("module", ["neuronlib.paper.languages", "neuronlib.paper.appendix",
                                    "neuronlib.paper.casestudy"])
def test_the_other_studies_do_not_import_the_capitals_study(module):
    files = package_modules()
    aliases, names = _module_aliases(ast.parse(files[module].read_text()), module, files)
    assert "neuronlib.paper.multihop" not in set(aliases.values()) | {base for base, _ in names}


def test_the_circuits_cache_key_covers_the_pipeline_and_not_one_study():
    deps = dependencies(cache.KIND_CODE["prompt_circuits"])
    assert "neuronlib.paper.casestudy" in deps and "neuronlib.stats" in deps
    assert not {"neuronlib.paper.multihop", "neuronlib.paper.languages", "neuronlib.paper.appendix"} & set(deps)


def _notebook_cells():
    """(notebook, code-cell index, syntax tree, {alias: neuronlib module}) of the committed notebooks' code cells, the
    aliases being those bound by the notebook's imports so far; imported names that are not modules are listed as
    (notebook, cell, module, name) references."""
    out, refs = [], []
    for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
        cells = [c for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"]
        aliases = {}
        for i, cell in enumerate(cells):
            tree = ast.parse("".join(cell["source"]))
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("neuronlib"):
                    for alias in node.names:
                        try:
                            aliases[alias.asname or alias.name] = importlib.import_module(f"{node.module}.{alias.name}")
                        except ModuleNotFoundError:
                            refs.append((nb.name, i, node.module, alias.name))
                elif isinstance(node, ast.Import):
                    for alias in node.names:
                        if alias.name.startswith("neuronlib"):
                            aliases[alias.asname or alias.name] = importlib.import_module(alias.name)
            out.append((nb.name, i, tree, dict(aliases)))
    return out, refs


def _notebook_references():
    """(notebook, code-cell index, module, attribute) for every ``alias.attr`` of a neuronlib module alias, and every
    name imported from a neuronlib module, in the committed notebooks' code cells."""
    cells, refs = _notebook_cells()
    for nb, i, tree, aliases in cells:
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
                refs.append((nb, i, aliases[node.value.id].__name__, node.attr))
    return refs


def test_every_name_the_committed_notebooks_call_resolves():
    refs = _notebook_references()
    assert {(m, a) for _, _, m, a in refs} >= {("neuronlib.paper.multihop", "trace_circuits"),
                                               ("neuronlib.paper.languages", "evaluate")}  # the scan sees them
    missing = [r for r in refs if not hasattr(importlib.import_module(r[2]), r[3])]
    assert missing == []


def test_every_call_the_committed_notebooks_make_binds_to_the_current_signature():
    """``alias.f(...)`` and ``S.cached(step, alias.f, ...)`` in the notebooks: the positional count and keyword names
    fit ``f``'s signature (a required keyword a notebook does not pass fails here)."""
    cells, _ = _notebook_cells()
    checked, wrong = 0, []
    for nb, i, tree, aliases in cells:
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func, args = node.func, node.args
            if isinstance(func, ast.Attribute) and func.attr == "cached" and len(args) >= 2:
                func, args = args[1], args[2:]  # a notebook step: cached(step, fn, *args, **kwargs)
            if not (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in aliases):
                continue
            fn = getattr(aliases[func.value.id], func.attr, None)
            if not callable(fn) or any(isinstance(a, ast.Starred) for a in args) or \
                    any(k.arg is None for k in node.keywords):
                continue
            try:
                sig = inspect.signature(fn)
            except (TypeError, ValueError):
                continue
            checked += 1
            try:
                sig.bind(*range(len(args)), **{k.arg: None for k in node.keywords})
            except TypeError as e:
                wrong.append((nb, i, f"{func.value.id}.{func.attr}", str(e)))
    assert checked > 100
    assert wrong == []


def test_the_capitals_study_binds_its_table():
    rows = pd.DataFrame({"city": ["Dallas"], "state": ["Texas"], "capital": ["Austin"]})
    for task in ("city_to_state", "state_to_capital", "frame_capital"):  # builders that need no tokenizer
        assert MH.task_prompts(rows, None, task) == CS.task_prompts(rows, None, task, table=MH.TASKS)
    with pytest.raises(TypeError):
        CS.task_prompts(rows, None, "city_to_state")  # the pipeline holds no study's table
    with pytest.raises(ValueError, match="unknown task"):
        MH.task_prompts(rows, None, "no_such_task")
