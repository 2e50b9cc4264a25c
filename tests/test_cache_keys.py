"""Results-cache keys hold the stamp of the code that computes each entry (no version number to bump by hand)."""
import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import neuronlib
from neuronlib import cache
from neuronlib.codestamps import dependencies, package_modules
from neuronlib.paper import languages as LG
from neuronlib.paper import multihop as MH
from neuronlib.paper.notebook import step_code

REPO = Path(__file__).resolve().parents[1]

# Run against a copy of the package, whose files the test edits; prints the keys of three kinds.
_KEYS = """
import json
from neuronlib import cache
print(json.dumps({k: cache.cache_key(kind=k, x=1) for k in ("prompt_circuits", "sva_eval", "neuron_maxima")}))
"""


def _keys(root: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", _KEYS], cwd=root, env={"PYTHONPATH": str(root), "PATH": ""},
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_key_changes_with_the_code_that_computes_it_and_not_with_docstrings(tmp_path):
    shutil.copytree(Path(neuronlib.__path__[0]), tmp_path / "neuronlib", ignore=shutil.ignore_patterns("__pycache__"))
    base = _keys(tmp_path)
    stats, sva = tmp_path / "neuronlib" / "stats.py", tmp_path / "neuronlib" / "paper" / "sva.py"
    original = {p: p.read_text() for p in (stats, sva)}

    assert original[stats].startswith('"""')
    stats.write_text("# a comment\n" + original[stats].replace('"""', '"""Another sentence. ', 1))
    assert _keys(tmp_path) == base  # docstrings and comments do not move a result

    stats.write_text(original[stats] + "\n_CHANGED = 1\n")
    changed = _keys(tmp_path)
    # stats is imported (inside functions) by the circuits' and the SVA code, not by the neuron-maxima code
    assert changed["prompt_circuits"] != base["prompt_circuits"] and changed["sva_eval"] != base["sva_eval"]
    assert changed["neuron_maxima"] == base["neuron_maxima"]

    stats.write_text(original[stats])
    sva.write_text(original[sva].replace("EFFECT_FLOOR = 1.0", "EFFECT_FLOOR = 2.0"))
    changed = _keys(tmp_path)
    assert changed["sva_eval"] != base["sva_eval"] and changed["prompt_circuits"] == base["prompt_circuits"]


def test_dependencies_follow_imports_inside_functions_and_the_lazy_verbs():
    deps = dependencies("neuronlib.paper.multihop")
    assert "neuronlib.stats" in deps  # imported only inside functions
    assert "neuronlib.attribution" in deps  # reached through `import neuronlib` and neuronlib.attribute
    assert "neuronlib.paper.sva" not in deps and "neuronlib.paper.multihop" in deps
    with pytest.raises(ValueError, match="not modules"):
        dependencies("neuronlib.no_such_module")


def _cache_key_calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "cache_key":
            kw = {k.arg: k.value for k in node.keywords}
            yield (kw["kind"].value if isinstance(kw.get("kind"), ast.Constant) else None), "code" in kw


def test_every_cache_kind_in_use_declares_its_code():
    """A kind made by the package or a notebook is in KIND_CODE (or passes code=), and for the package the module
    that makes the key is among the modules its stamp covers."""
    for module, path in package_modules().items():
        for kind, has_code in _cache_key_calls(ast.parse(path.read_text())):
            assert has_code or kind in cache.KIND_CODE, (module, kind)
            if not has_code:
                assert module in dependencies(cache.KIND_CODE[kind]), (module, kind)
    for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            if cell["cell_type"] == "code":
                src = "".join(cell["source"])
                for kind, has_code in _cache_key_calls(ast.parse(src)):
                    assert has_code or kind in cache.KIND_CODE, (nb.name, kind)


def test_a_kind_without_declared_code_cannot_make_a_key():
    with pytest.raises(ValueError, match="which code computes"):
        cache.cache_key(kind="something_new", x=1)
    assert cache.cache_key(kind="something_new", code="neuronlib.stats", x=1) != \
        cache.cache_key(kind="something_new", code="neuronlib.edges", x=1)


def test_notebook_steps_are_keyed_by_the_code_they_reach():
    assert step_code(LG.evaluate) == ["neuronlib.paper.languages"]

    def in_notebook(rows):
        return MH.accuracy_table(rows)

    assert step_code(in_notebook, [1, 2]) == ["neuronlib.paper.multihop"]
    assert step_code(lambda x: x + 1) == sorted(package_modules())  # reaches no neuronlib code: every module
