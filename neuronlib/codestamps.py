"""Code stamps: the one answer to "did the code that made this result change?".

A module's **stamp** is a hash of its syntax tree with the docstrings removed, so comments, docstrings and formatting
do not count, plus the definitions it imports from presentation modules (labels, number formats). Presentation
modules (:data:`PRESENTATION`: they draw, print, run notebooks or record provenance) get no stamp of their own.

The same per-module stamps serve both places that ask the question:

* **the results cache** (:func:`neuronlib.cache.cache_key`): every key holds :func:`dependency_stamp` of the modules
  that compute the entry. The rule: the declared root modules (a cache kind's module, or the modules a notebook
  step's function refers to) and every neuronlib module they import, directly or through other modules, at module
  level or inside a function. The set is read from the sources (:func:`dependencies`), never from what a process
  happens to have loaded, so a key does not depend on import order or on which earlier steps were cache hits. There
  are no hand-bumped version numbers to forget: a change to any module in that set changes the key, a docstring
  or comment change does not;
* **table provenance** (:func:`neuronlib.paper.results.provenance`): every sidecar records :func:`code_stamps` of
  the modules its process loaded, and ``neuronlib doctor`` names the tables whose modules changed since.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import json
from pathlib import Path

# Modules that cannot move a result: they draw, print, run notebooks or record provenance. A stamp
# leaves them out, except for the names a stamped module imports from them (labels and number formats), which count.
PRESENTATION = (
    "neuronlib", "neuronlib.__main__", "neuronlib.cli", "neuronlib.logs", "neuronlib.plotting", "neuronlib.codestamps",
    "neuronlib.paper", "neuronlib.paper.figures", "neuronlib.paper.readme", "neuronlib.paper.reproduce",
    "neuronlib.paper.notebook", "neuronlib.paper.results", "neuronlib.paper.runplan", "neuronlib.paper.style",
    "neuronlib.viewer",
)


def is_presentation(module: str) -> bool:
    return any(module == p or (p == "neuronlib.viewer" and module.startswith(p + ".")) for p in PRESENTATION)


def _without_docstrings(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and \
                    isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return tree


@functools.lru_cache(maxsize=1024)
def _parsed(text: str):
    """(tree without docstrings, its dump, its import statements), or (None, None, ()) for a source that does not
    parse; memoised by text (a stamp is asked for at every cache key)."""
    try:
        tree = _without_docstrings(ast.parse(text))
    except SyntaxError:
        return None, None, ()
    imports = tuple(node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom)))
    return tree, ast.dump(tree), imports


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module name of a ``from ... import`` in ``module`` (a package's own name counts as its part)."""
    if not node.level:
        return node.module or ""
    package = module.split(".")
    base = package[:len(package) - node.level]  # a module's package is its name minus the last part
    return ".".join(base + ([node.module] if node.module else []))


def _imported_presentation_names(imports, module: str) -> list[tuple[str, str]]:
    """(presentation module, name) for every ``from X import name`` among ``imports`` whose X is a presentation
    module."""
    found = []
    for node in imports:
        if isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            if target.startswith("neuronlib") and is_presentation(target):
                found.extend((target, alias.name) for alias in node.names)
    return found


def _definition(tree, name: str):
    """The top-level statement that defines ``name`` in ``tree`` (a def, class or assignment), or None."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return node
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, (ast.AnnAssign, ast.AugAssign)) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return node
    return None


def stamp_sources(sources: dict[str, str]) -> dict[str, str]:
    """Per-module stamps from ``{module name: source text}`` (see the module docstring); the definitions a module
    imports from presentation modules are looked up in ``sources`` too. Presentation modules get no stamp."""
    stamps = {}
    for name in sorted(sources):
        if is_presentation(name):
            continue
        tree, dump, imports = _parsed(sources[name])
        h = hashlib.sha256()
        if tree is None:
            h.update(sources[name].encode())
        else:
            h.update(dump.encode())
            for other, imported in _imported_presentation_names(imports, name):
                other_tree = _parsed(sources[other])[0] if other in sources else None
                node = _definition(other_tree, imported) if other_tree is not None else None
                h.update(f"{other}.{imported}:".encode() + (ast.dump(node).encode() if node is not None else b"?"))
        stamps[name] = h.hexdigest()[:16]
    return stamps


def package_modules() -> dict[str, Path]:
    """Every module of the installed neuronlib package, by name, with its file (read from the folder: importing them
    would change what a process has loaded)."""
    import neuronlib

    package = Path(neuronlib.__path__[0])
    return {".".join(("neuronlib", *f.relative_to(package).with_suffix("").parts)).removesuffix(".__init__"): f
            for f in sorted(package.rglob("*.py"))}


def _module_sources(modules) -> dict[str, str]:
    files = package_modules()
    return {name: files[name].read_text() for name in modules if name in files}


def loaded_code() -> list[str]:
    """The neuronlib modules this process has imported: the code that can have produced what it writes."""
    import sys

    return sorted(name for name in list(sys.modules) if name == "neuronlib" or name.startswith("neuronlib."))


def code_stamps(modules=None) -> dict[str, str]:
    """:func:`stamp_sources` of ``modules`` (default: :func:`loaded_code`), with the presentation modules' sources
    read too, so the names taken from them count."""
    modules = loaded_code() if modules is None else list(modules)
    presentation = [name for name in package_modules() if is_presentation(name)]
    return {name: stamp for name, stamp in stamp_sources(_module_sources({*modules, *presentation})).items()
            if name in modules}


def imports_of(module: str, text: str, known) -> set[str]:
    """The neuronlib modules that ``module`` (source ``text``) imports anywhere in its code, among ``known`` names:
    ``from .x import y`` counts ``.x.y`` when that is a module, else ``.x``; ``import neuronlib.x`` counts it; the
    package itself counts the modules of the public names it loads on first use."""
    tree, _, imports = _parsed(text)
    found = set()
    for node in imports:
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import neuronlib.x.y` of an attribute: its module
                target = target.rpartition(".")[0]
            if target.startswith("neuronlib"):
                found.add(target)
    if module == "neuronlib" and tree is not None:  # the package loads its public verbs on first use: their modules count as imported
        found |= {f"neuronlib.{m}" for m in _lazy_public(tree).values()}
    return found


def _lazy_public(tree) -> dict[str, str]:
    """The package's ``_PUBLIC`` table (public name -> submodule) from its syntax tree."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_PUBLIC" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def dependencies(roots) -> list[str]:
    """``roots`` (module names) and every neuronlib module they import, transitively (:func:`imports_of`),
    through presentation modules too (``import neuronlib`` reaches the modules of the verbs it loads on use)."""
    files = package_modules()
    roots = [roots] if isinstance(roots, str) else list(roots)
    unknown = [r for r in roots if r not in files]
    if unknown:
        raise ValueError(f"not modules of neuronlib: {unknown}")
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(imports_of(name, files[name].read_text(), files) - seen)
    return sorted(seen)


def dependency_stamp(roots) -> str:
    """One short hash of :func:`code_stamps` of :func:`dependencies` of ``roots``: what a cache key holds of the
    code that computes its entry."""
    stamps = code_stamps(dependencies(roots))
    return hashlib.sha256(json.dumps(stamps, sort_keys=True).encode()).hexdigest()[:16]
