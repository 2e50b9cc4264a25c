"""Give sidecars of the old format (one ``code_stamp`` over a fixed module list) per-module stamps.

A sidecar records the commit its run started from. This reads that commit's sources from git, stamps them the way
:func:`neuronlib.paper.results.stamp_sources` stamps a run's loaded code, and keeps the modules the old stamp covered
(that commit's ``RESULT_CODE``), so ``neuronlib doctor`` names the modules that changed since. A sidecar whose
commit is missing or was dirty is left as it is (doctor keeps calling it stale).

    .venv/bin/python scripts/backfill_code_stamps.py [results]
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from neuronlib.paper.results import stamp_sources


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def sources_at(commit: str) -> dict[str, str]:
    files = [f for f in _git("ls-tree", "-r", "--name-only", commit, "--", "neuronlib").split() if f.endswith(".py")]
    return {".".join(Path(f).with_suffix("").parts).removesuffix(".__init__"): _git("show", f"{commit}:{f}")
            for f in files}


def result_code_at(sources: dict[str, str]) -> tuple[str, ...]:
    for node in ast.parse(sources["neuronlib.paper.results"]).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "RESULT_CODE" for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    raise ValueError("no RESULT_CODE at that commit")


def main(directory: str = "results") -> None:
    by_commit: dict[str, dict[str, str]] = {}
    for sidecar in sorted(Path(directory).glob("*.json")):
        meta = json.loads(sidecar.read_text())
        commit = str(meta.get("commit") or "")
        if "code" in meta or not commit or commit.endswith("+dirty"):
            continue
        if commit not in by_commit:
            sources = sources_at(commit)
            stamps = stamp_sources(sources)
            by_commit[commit] = {m: stamps[m] for m in result_code_at(sources) if m in stamps}
        meta.pop("code_stamp", None)
        meta["code"] = by_commit[commit]
        meta["code_note"] = "per-module stamps computed afterwards from this commit's sources (the old stamp's modules)"
        sidecar.write_text(json.dumps(meta, indent=1, default=str) + "\n")
        print(f"{sidecar.name}: {len(meta['code'])} modules at {commit[:12]}")


if __name__ == "__main__":
    main(*sys.argv[1:])
