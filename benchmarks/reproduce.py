"""Wall time and peak memory of the full reproduction (`make reproduce`), notebook by notebook.

    .venv/bin/python benchmarks/reproduce.py --label cold --cache /tmp/nl-bench-cache [--smoke] [--only 01 02]
    .venv/bin/python benchmarks/reproduce.py --label warm --cache /tmp/nl-bench-cache
    .venv/bin/python benchmarks/reproduce.py --label small --cache DIR --only 01 02 --param N_TRAIN=32

Runs ``python -m neuronlib reproduce --only <notebook>`` once per notebook (the same code path as ``make reproduce``)
with ``NEURONLIB_CACHE`` pointed at ``--cache``: an empty directory gives the first run on a fresh machine (the GGUF
conversion, SAE training, corpus sweep and every attribution are computed), the same directory again gives the
second run (everything cached is re-used). Figures and tables go to ``runs/bench-<label>/figures`` and ``/results``
so the committed ones are not touched; compare them with ``figures/`` and ``results/`` afterwards. ``--param NAME=VALUE``
sets a notebook parameter (``neuronlib reproduce --param``) in the notebooks that declare it, e.g. fewer pairs for a
memory check: attribution runs in fixed-size chunks, so its peak does not grow with the number of pairs.

Memory is sampled every 0.5 s over the whole process tree (papermill, the kernel, the SAE worker processes): "peak
tree RSS" is the largest sum of resident sets seen (shared pages are counted once per process, so it is an upper
bound), "peak process RSS" the largest single process. One row per notebook is appended to
``benchmarks/results/reproduce.jsonl`` as soon as it finishes (so an interrupted run keeps what it measured), and
``benchmarks/results/reproduce.md`` is rewritten from that file.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return (f"{cpu}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, no GPU used, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


class TreeSampler(threading.Thread):
    """Largest summed RSS of a process and its descendants, and the largest single RSS, sampled every 0.5 s."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.peak_tree = self.peak_one = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            rss = []
            for proc in procs:
                try:
                    rss.append(proc.memory_info().rss)
                except psutil.Error:
                    pass
            self.peak_tree = max(self.peak_tree, sum(rss))
            self.peak_one = max(self.peak_one, max(rss, default=0))
            self.stop.wait(0.5)


def run_one(notebook: str, *, label: str, cache: Path, smoke: bool, params: list[str] = ()) -> dict:
    out = REPO / "runs" / f"bench-{label}"
    env = dict(os.environ, NEURONLIB_CACHE=str(cache), NEURONLIB_FIGURES=str(out / "figures"),
               NEURONLIB_RESULTS=str(out / "results"),
               HF_HUB_OFFLINE="1", MPLBACKEND="Agg", OMP_WAIT_POLICY="PASSIVE")
    cmd = [sys.executable, "-m", "neuronlib", "reproduce", "--only", notebook, *(["--smoke"] if smoke else []),
           *[a for p in params for a in ("--param", p)]]
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    rc = proc.wait()
    seconds = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    return {"label": label, "notebook": notebook, "smoke": smoke, "params": list(params), "rc": rc, "seconds": round(seconds, 1),
            "peak_tree_gib": round(sampler.peak_tree / 2**30, 2), "peak_process_gib": round(sampler.peak_one / 2**30, 2),
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
            "cache_gib_after": round(sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) / 2**30, 2),
            "finished": time.strftime("%Y-%m-%d %H:%M"), "machine": machine()}


def write_markdown(rows: list[dict], path: Path) -> None:
    lines = ["# Full reproduction: wall time and peak memory", "",
             "`.venv/bin/python benchmarks/reproduce.py --label <cold|warm> --cache <dir>` (see the docstring). "
             "cold = empty `NEURONLIB_CACHE` (model conversion, SAE training, corpus sweep and all attributions "
             "computed); warm = the same cache again. Load = 1-minute load average before/after (2 cores).", ""]
    machines = sorted({r["machine"] for r in rows})
    lines += [f"Machine: {m}" for m in machines] + [""]
    lines += ["| run | notebook | exit | wall time | peak tree RSS | peak process RSS | load before/after | cache after | finished |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mode = (" (smoke)" if r["smoke"] else "") + (f" ({', '.join(r['params'])})" if r.get("params") else "")
        lines.append(f"| {r['label']}{mode} | {r['notebook']} | {r['rc']} | {r['seconds'] / 60:.1f} min | "
                     f"{r['peak_tree_gib']:.2f} GiB | {r['peak_process_gib']:.2f} GiB | "
                     f"{r['load_before']:.1f}/{r['load_after']:.1f} | {r['cache_gib_after']:.2f} GiB | {r['finished']} |")
    totals: dict[tuple, list[dict]] = {}
    for r in rows:
        totals.setdefault((r["label"], r["smoke"]), []).append(r)
    lines += ["", "| run | notebooks | total wall time | peak tree RSS |", "|---|---|---|---|"]
    for (label, smoke), group in totals.items():
        lines.append(f"| {label}{' (smoke)' if smoke else ''} | {len(group)} | "
                     f"{sum(r['seconds'] for r in group) / 60:.1f} min | "
                     f"{max(r['peak_tree_gib'] for r in group):.2f} GiB |")
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True, help="name of this run in the table, e.g. cold or warm")
    parser.add_argument("--cache", required=True, type=Path, help="NEURONLIB_CACHE for the run")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--only", nargs="*", help="notebook name fragments (default: all numbered notebooks)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="passed to `neuronlib reproduce --param` (only to the notebooks that declare NAME)")
    parser.add_argument("--jsonl", type=Path, default=RESULTS / "reproduce.jsonl")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from neuronlib.paper.reproduce import declared_parameters, notebooks

    books = [b for b in notebooks() if not args.only or any(k in b.name for k in args.only)]
    if not books:
        parser.error("no notebook matches --only")
    args.cache.mkdir(parents=True, exist_ok=True)
    args.jsonl.parent.mkdir(parents=True, exist_ok=True)
    status = 0
    for book in books:
        row = run_one(book.name, label=args.label, cache=args.cache, smoke=args.smoke,
                      params=[p for p in args.param if p.partition("=")[0] in declared_parameters(book)])
        print(json.dumps(row), flush=True)
        with args.jsonl.open("a") as f:
            f.write(json.dumps(row) + "\n")
        rows = [json.loads(line) for line in args.jsonl.read_text().splitlines() if line.strip()]
        write_markdown(rows, args.jsonl.with_suffix(".md"))
        status = status or row["rc"]
    return status


if __name__ == "__main__":
    raise SystemExit(main())
