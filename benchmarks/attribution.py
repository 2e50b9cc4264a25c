"""Attribution cost on the default model, as multiples of a bare PyTorch forward+backward (the floor).

    .venv/bin/python benchmarks/attribution.py [--model smollm2-135m] [--batch 16] [--repeats 5]

(a) floor: plain torch hooks add a zero leaf to every down_proj input, one forward + one backward of the metric;
(a') paired floor: (a) plus one bare no-grad forward of the counterfactual prompts (what a paired attribution needs
at least); (b) AtP and (c) RelP through neuronlib (zero baseline = the same single forward + backward; the
counterfactual baseline adds one no-grad forward and is reported too); (d) IG-10 per site (30 layers x 10 steps)
and IG-10 on the inputs (10 steps), both batched. Parameters are frozen in every variant.

The cheap variants are timed *interleaved*: each repeat runs every variant once, in turn, so a change of machine
load hits all of them alike; the table gives the median per variant and the ratio of medians. The 1-minute load
average before and after the run is written with the table (the machine is shared). Writes
benchmarks/results/attribution.md.
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

NOUNS = [("key", "keys"), ("dog", "dogs"), ("friend", "friends"), ("teacher", "teachers"), ("car", "cars"),
         ("book", "books"), ("girl", "girls"), ("boy", "boys")]
PLACES = ["cabinet", "house"]


def pairs(n: int) -> list[dict]:
    out = []
    for i in range(n):
        sing, plur = NOUNS[i % len(NOUNS)]
        place = PLACES[(i // len(NOUNS)) % len(PLACES)]
        plural_clean = i % 2 == 0
        a, b = (plur, sing) if plural_clean else (sing, plur)
        out.append({"clean_prefix": f"The {a} near the {place}", "patch_prefix": f"The {b} near the {place}",
                    "clean_answer": " are" if plural_clean else " is", "patch_answer": " is" if plural_clean else " are"})
    return out


def floor(model, data) -> None:
    """Bare PyTorch: hooks tap every down_proj input; forward + backward of the logit difference."""
    inputs = model.tokenize([d["clean_prefix"] for d in data])
    good = torch.tensor([model.token_id(d["clean_answer"]) for d in data])
    bad = torch.tensor([model.token_id(d["patch_answer"]) for d in data])
    deltas, handles = [], []

    def tap(module, args):
        d = torch.zeros_like(args[0], requires_grad=True)
        deltas.append(d)
        return (args[0] + d,)

    for layer in model.hf.model.layers:
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(tap))
    try:
        logits = model.hf(**inputs, logits_to_keep=1, use_cache=False).logits[:, -1]
        metric = logits.gather(-1, good[:, None]) - logits.gather(-1, bad[:, None])
        grads = torch.autograd.grad(metric.sum(), deltas)
        _ = [d * g for d, g in zip(deltas, grads)]
    finally:
        for h in handles:
            h.remove()


def bare_forward(model, data) -> None:
    """One plain no-grad forward of the counterfactual prompts (last-position logits only)."""
    inputs = model.tokenize([d["patch_prefix"] for d in data])
    with torch.no_grad():
        model.hf(**inputs, logits_to_keep=1, use_cache=False)


def interleaved(variants, repeats: int) -> list[float]:
    """Median seconds per variant; every repeat runs each variant once, in turn (after one warm-up round)."""
    for _, fn in variants:
        fn()
    times = [[] for _ in variants]
    for _ in range(repeats):
        for i, (_, fn) in enumerate(variants):
            t0 = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def timed(fn, repeats: int) -> float:
    if repeats > 1:
        fn()  # warm-up (skipped for single, long runs)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=neuronlib.DEFAULT_MODEL)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ig-repeats", type=int, default=1)
    parser.add_argument("--skip-ig", action="store_true", help="leave out the two IG variants")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "attribution.md"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = neuronlib.load_model(args.model)
    data = pairs(args.batch)
    T = model.tokenize([data[0]["clean_prefix"]])["input_ids"].shape[1]

    def att(method, baseline="zero", metric="logit_diff"):
        return lambda: neuronlib.attribute(model, data, method=method, baseline=baseline, metric=metric,
                                           batch_size=args.batch, progress=False)

    load_before = os.getloadavg()
    cheap = [
        ("(a) floor: torch forward+backward to all down_proj inputs", lambda: floor(model, data)),
        ("(a') paired floor: (a) + one bare no-grad forward of the counterfactual prompts",
         lambda: (floor(model, data), bare_forward(model, data))),
        ("(b) AtP, zero baseline", att("atp")),
        ("(c) RelP, zero baseline", att("relp")),
        ("AtP, counterfactual baseline (paired)", att("atp", "counterfactual")),
        ("RelP, counterfactual baseline (paired)", att("relp", "counterfactual")),
    ]
    rows = list(zip([n for n, _ in cheap], interleaved(cheap, args.repeats)))
    for name, sec in rows:
        print(f"{name}: {sec:.3f} s ({sec / rows[0][1]:.2f} x floor)", flush=True)
    if not args.skip_ig:
        for name, fn in [("(d') IG-10 on inputs (10 steps, batched)", att("ig-inputs", "counterfactual")),
                         ("(d) IG-10 per site (30 layers x 10 steps, batched)", att("ig", "counterfactual"))]:
            rows.append((name, timed(fn, args.ig_repeats)))
            print(f"{name}: {rows[-1][1]:.3f} s ({rows[-1][1] / rows[0][1]:.2f} x floor)", flush=True)
    load_after = os.getloadavg()
    base, paired, relp = rows[0][1], rows[1][1], rows[3][1]
    lines = [
        f"# Attribution benchmark ({model.name})",
        "",
        f"Batch of {args.batch} agreement prompts ({T} tokens), all {model.n_layers * model.d_mlp:,} neurons at every "
        f"position, float32 on CPU; median of {args.repeats} interleaved repeats (IG: {args.ig_repeats}).",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}. Command: `{' '.join(['.venv/bin/python', *sys.argv])}`"
        + (f" with OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}" if "OMP_NUM_THREADS" in os.environ else "") + ".",
        f"Load average (1/5/15 min) before: {load_before[0]:.1f}/{load_before[1]:.1f}/{load_before[2]:.1f}, "
        f"after: {load_after[0]:.1f}/{load_after[1]:.1f}/{load_after[2]:.1f}.",
        "",
        "| variant | seconds | × floor | × paired floor | × RelP |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    lines += [f"| {name} | {sec:.3f} | {sec / base:.2f} | {sec / paired:.2f} | {sec / relp:.1f} |" for name, sec in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
