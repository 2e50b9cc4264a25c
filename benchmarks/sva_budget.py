"""What the SVA study costs at the paper's sizes, step by step, from the full run's own record.

    .venv/bin/python benchmarks/sva_budget.py [--results results] [--out benchmarks/results/sva_budget.md]

Notebook 02 writes ``results/sva_steps.csv`` (and ``sva_steps_gemma.csv``): one row per attribution and evaluation
step with the compute seconds it took when it was computed (a cached re-run keeps the original timing). This script
sums them per method, setting and step, and sets the total against the cold-run budget of 75 minutes, so the table
says how far the plan is from the budget and which part to trade. It reads tables only (no model); the seconds are
what the run measured on its machine, including any other jobs sharing the cores at the time.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

BUDGET_MIN = 75.0


def budget_table(results: Path) -> tuple[pd.DataFrame, dict]:
    frames, meta = [], {}
    for name in ("sva_steps", "sva_steps_gemma"):
        path = results / f"{name}.csv"
        if path.exists():
            frames.append(pd.read_csv(path))
            side = results / f"{name}.json"
            if side.exists():
                meta[name] = json.loads(side.read_text())
    if not frames:
        raise SystemExit(f"no sva_steps tables in {results}: run notebook 02 first")
    steps = pd.concat(frames, ignore_index=True)
    table = (steps.groupby(["model", "method", "setting", "step"]).compute_seconds.agg(["count", "sum"])
             .reset_index().rename(columns={"count": "steps", "sum": "seconds"}))
    table["minutes"] = table.seconds / 60
    return table, meta


def render(table: pd.DataFrame, meta: dict) -> str:
    total = table.minutes.sum()
    lines = ["# SVA study at the paper's sizes: compute per step (notebook 02)", "",
             "`.venv/bin/python benchmarks/sva_budget.py` (from `results/sva_steps*.csv`; the seconds are what each "
             "step took when it was computed).", ""]
    for name, m in meta.items():
        lines.append(f"- `{name}`: run of {m.get('date', '?')} at commit {str(m.get('commit', '?'))[:12]}, "
                     f"parameters {json.dumps(m.get('parameters', {}), sort_keys=True)[:400]}")
    lines += ["", "| model | method | setting | step | steps | minutes |", "|---|---|---|---|---:|---:|"]
    for r in table.itertuples():
        lines.append(f"| {r.model} | {r.method} | {r.setting} | {r.step} | {r.steps} | {r.minutes:.1f} |")
    lines += ["", f"**Total: {total:.1f} min** of attribution and evaluation compute, against a cold-run budget of "
              f"{BUDGET_MIN:.0f} min for the whole reproduction ({total / BUDGET_MIN:.1f}× the budget for this "
              "study alone)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results")
    parser.add_argument("--out", default="benchmarks/results/sva_budget.md")
    args = parser.parse_args(argv)
    table, meta = budget_table(Path(args.results))
    text = render(table, meta)
    Path(args.out).write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
