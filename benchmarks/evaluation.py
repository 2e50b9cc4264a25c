"""Circuit-evaluation throughput on the default model, as a multiple of a bare PyTorch forward of the same rows.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/evaluation.py [--pairs 40] [--batch 128] [--bases mlp_acts mlp_out]

One sweep of notebook 02 (agreement template ``nounpp``, ``--pairs`` test pairs, the 33 sizes of the neuron basis:
the notebook's log and linear sizes and the full circuit, mean ablation, logit difference) is ``2 + 2 x 33`` circuits
(full model, empty circuit, C and C-bar per size), each one block of ``--pairs`` prompt rows. Variants, timed in the
same process, in turn:

(a) floor: a bare batched ``model.hf`` forward of the same rows, ``--batch`` rows at a time, only the last position's
logits computed (``logits_to_keep=1``), no hooks, no edits;
(b) the same rows through :func:`neuronlib.tracing.run` with nothing edited (the cost of the nnsight trace alone);
(c) :func:`neuronlib.evaluate_circuit` on each basis of ``--bases`` (ablation means, masks, edits, metric included);
(d) the masks of one sweep built alone (what ``ablation_runner`` stacks and pads per batch).
Every round runs each variant once, in turn (``--repeats`` rounds, median per variant).

The machine is shared: the load average before and after is written with the table, and only ratios measured in one
run are compared (per prompt row). Writes benchmarks/results/evaluation.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch

import neuronlib
from neuronlib import tracing
from neuronlib.evaluation import evaluate_circuit, node_ranks
from neuronlib.paper.sva import LOG_SIZES, load_templates, sweep_sizes

# notebook 02's linear sizes (the neuron basis' sweep adds them for the linear-axis figures)
LINEAR_SIZES = (10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 125, 150, 175, 200, 250, 300, 350, 400)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=neuronlib.DEFAULT_MODEL)
    parser.add_argument("--template", default="nounpp")
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--bases", nargs="+", default=["mlp_acts", "mlp_out"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "evaluation.md"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = neuronlib.load_model(args.model)
    td = load_templates(model, [args.template], n_train=8, n_test=args.pairs)[args.template]
    att = neuronlib.attribute(model, td.train, method="atp", sites=tuple(args.bases), baseline="counterfactual",
                              metric="logit_diff", progress=False)
    total = {b: att[b][0].numel() for b in args.bases}
    sizes = {b: sorted({min(k, total[b]) for k in sweep_sizes(total[b], LOG_SIZES, LINEAR_SIZES)})
             for b in args.bases}
    n_sizes = len(sizes[args.bases[0]])
    C = 2 + 2 * n_sizes
    inputs = model.tokenize([d["clean_prefix"] for d in td.test])
    ids_RT, mask_RT = inputs["input_ids"].repeat(C, 1), inputs["attention_mask"].repeat(C, 1)
    R = len(ids_RT)

    def floor():
        with torch.no_grad():
            for s in range(0, R, args.batch):
                model.hf(input_ids=ids_RT[s:s + args.batch], attention_mask=mask_RT[s:s + args.batch],
                         logits_to_keep=1, use_cache=False)

    def traced():
        with torch.no_grad():
            for s in range(0, R, args.batch):
                tracing.run(model, {"input_ids": ids_RT[s:s + args.batch],
                                    "attention_mask": mask_RT[s:s + args.batch]}, metric=lambda x: x[:, 0])

    def masks(basis):
        ranks = node_ranks(att, (basis,))
        circuits = [{s: r >= k for s, r in ranks.items()} for k in sizes[basis]]
        circuits += [{s: r < k for s, r in ranks.items()} for k in sizes[basis]]
        torch.stack([c[basis] for c in circuits])

    def evaluate(basis):
        evaluate_circuit(model, att, td.test, sites=(basis,), sizes=sizes[basis], mode="mean", metric="logit_diff",
                         batch_size=args.batch, progress=False)

    variants = [("(a) floor: bare batched forward, last-position logits only", floor, R),
                ("(b) the same rows through tracing.run, nothing edited", traced, R)]
    for basis in args.bases:
        n_rows = (2 + 2 * len(sizes[basis])) * args.pairs  # a basis with fewer sizes than the floor's has fewer rows
        variants.append((f"(c) evaluate_circuit, {basis}, mean ablation ({len(sizes[basis])} sizes)",
                         lambda basis=basis: evaluate(basis), n_rows))
        variants.append((f"(d) masks of the {basis} sweep alone", lambda basis=basis: masks(basis), n_rows))
    load_before = os.getloadavg()
    floor()  # warm-up
    # interleaved: every round runs each variant once, in turn, so a change of load hits all of them alike
    times = [[] for _ in variants]
    for _ in range(args.repeats):
        for i, (_, fn, _) in enumerate(variants):
            times[i].append(timed(fn))
    load_after = os.getloadavg()
    rows = [(name, statistics.median(t), n) for (name, _, n), t in zip(variants, times)]
    per_row = rows[0][1] / R  # the floor's seconds per prompt row
    for name, sec, n in rows:
        print(f"{name}: {sec:.2f} s ({sec / n / per_row:.3f} x floor per row)", flush=True)
    threads = f" with OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}" if "OMP_NUM_THREADS" in os.environ else ""
    lines = [
        f"# Circuit-evaluation benchmark ({model.name})",
        "",
        f"One sweep of notebook 02: template `{args.template}`, {args.pairs} test pairs of {td.T} tokens, {n_sizes} "
        f"sizes -> {C} circuits (full, empty, C and C-bar per size) = {R:,} prompt rows, {args.batch} rows per "
        f"forward, float32 on CPU; median of {args.repeats} interleaved rounds (each runs every variant once, in "
        "turn) in one process.",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}. Command: `{' '.join(['.venv/bin/python', *sys.argv])}`{threads}.",
        f"Load average (1/5/15 min) before: {load_before[0]:.1f}/{load_before[1]:.1f}/{load_before[2]:.1f}, "
        f"after: {load_after[0]:.1f}/{load_after[1]:.1f}/{load_after[2]:.1f} (the machine is shared: compare the "
        "ratios, not the seconds).",
        "",
        "| variant | prompt rows | seconds | prompt rows / s | × floor (per row) |",
        "| --- | ---: | ---: | ---: | ---: |",
        *[f"| {name} | {n:,} | {sec:.2f} | {'—' if name.startswith('(d)') else f'{n / sec:,.1f}'} | "
          f"{sec / n / per_row:.3f} |" for name, sec, n in rows],
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
