"""Edge attribution cost on the default model: batched vector–Jacobian products vs one backward pass per target.

    .venv/bin/python benchmarks/edges.py [--model smollm2-135m] [--template nounpp] [--examples 4] [--k 300]
                                         [--threads 1] [--repeats 1]

Same node set (the top ``k`` neurons by |RelP score| on ``examples`` SVA training prompts), same forward passes; the
only difference is how the target neurons' rows of the Jacobian are obtained: ``batched=True`` (targets grouped by
layer, each group one ``torch.autograd.grad(..., is_grads_batched=True)`` call) or ``batched=False`` (one
``torch.autograd.grad`` per target). Checks that both give the same edges, prints the ratio and writes
benchmarks/results/edges.md.
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
import numpy as np
import torch

import neuronlib
from neuronlib.data.sva import load_sva
from neuronlib.edges import attribute_edges


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=neuronlib.DEFAULT_MODEL)
    parser.add_argument("--template", default="nounpp")
    parser.add_argument("--examples", type=int, default=4)
    parser.add_argument("--k", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is fastest on a CPU shared with other jobs)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "edges.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = neuronlib.load_model(args.model)
    data = load_sva(args.template, tokenizer=model.tokenizer, split="train", n=args.examples).dataset
    scores = neuronlib.attribute(model, data, method="relp", sites=("mlp_acts",), progress=False)
    nodes = scores.nodes(args.k)
    T = scores["mlp_acts"].shape[2]

    def run(batched):
        return attribute_edges(model, data, nodes=nodes, scores=scores, batched=batched, batch_size=args.examples,
                               progress=False)

    run(True)  # warm-up (first trace, allocator)
    t_batched, g_batched = timed(lambda: run(True), args.repeats)
    t_loop, g_loop = timed(lambda: run(False), args.repeats)
    diff = float(np.abs(g_batched.per_example["raw"] - g_loop.per_example["raw"]).max())
    scale = float(np.abs(g_loop.per_example["raw"]).max())
    n_targets = len(nodes) + 1
    ratio = t_loop / t_batched
    lines = [
        f"# Edge benchmark ({model.name})",
        "",
        f"{args.examples} SVA `{args.template}` prompts ({T} tokens) in one batch; the top {len(nodes)} neurons by "
        f"|RelP score| plus {T} embedding nodes and the metric: {g_batched.n_edges:,} edges, {n_targets} targets "
        f"(each a row of the Jacobian). RelP replacement model, MLPs strictly between source and target "
        f"stop-gradded; float32 on CPU; median of {args.repeats} run(s) after a warm-up.",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared), torch "
        f"{torch.__version__}, {torch.get_num_threads()} thread(s). Command: "
        f"`.venv/bin/python benchmarks/edges.py --template {args.template} --examples {args.examples} --k {args.k} "
        f"--threads {args.threads}`.",
        "",
        "| variant | seconds | per target (ms) |",
        "| --- | ---: | ---: |",
        f"| one backward pass per target (`batched=False`) | {t_loop:.2f} | {1000 * t_loop / n_targets:.1f} |",
        f"| batched vector–Jacobian products (`batched=True`) | {t_batched:.2f} | {1000 * t_batched / n_targets:.1f} |",
        "",
        f"**Speed-up of batching: {ratio:.2f}x.** Largest difference between the two edge sets: {diff:.2e} "
        f"(largest |edge| {scale:.2f}).",
        "",
        "Both variants run the same two forward passes per batch (one for the targets' full RelP gradients, one with "
        "the MLPs cut); only the backward passes differ.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    if diff > 1e-4 * max(scale, 1.0):
        print("ERROR: batched and per-target edges differ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
