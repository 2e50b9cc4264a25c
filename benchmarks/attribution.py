"""Attribution cost on the default model, as multiples of a bare PyTorch forward+backward (the floor).

    .venv/bin/python benchmarks/attribution.py [--model smollm2-135m] [--batch 16] [--repeats 5]

(a) floor: plain torch hooks add a zero leaf to every down_proj input, one forward + one backward of the metric;
(b) AtP and (c) RelP through neuronlib (zero baseline = the same single forward + backward; the counterfactual
baseline adds one no-grad forward and is reported too); (d) IG-10 per site (30 layers x 10 steps) and IG-10 on the
inputs (10 steps), both batched. Parameters are frozen in every variant. Writes benchmarks/results/attribution.md.
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
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "attribution.md"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = neuronlib.load_model(args.model)
    data = pairs(args.batch)
    T = model.tokenize([data[0]["clean_prefix"]])["input_ids"].shape[1]

    def att(method, baseline="zero", metric="logit_diff"):
        return lambda: neuronlib.attribute(model, data, method=method, baseline=baseline, metric=metric,
                                           batch_size=args.batch, progress=False)

    variants = [
        ("(a) floor: torch forward+backward to all down_proj inputs", lambda: floor(model, data), args.repeats),
        ("(b) AtP, zero baseline", att("atp"), args.repeats),
        ("(c) RelP, zero baseline", att("relp"), args.repeats),
        ("AtP, counterfactual baseline (+1 no-grad forward)", att("atp", "counterfactual"), args.repeats),
        ("RelP, counterfactual baseline (+1 no-grad forward)", att("relp", "counterfactual"), args.repeats),
        ("(d') IG-10 on inputs (10 steps, batched)", att("ig-inputs", "counterfactual"), args.ig_repeats),
        ("(d) IG-10 per site (30 layers x 10 steps, batched)", att("ig", "counterfactual"), args.ig_repeats),
    ]
    rows = []
    for name, fn, repeats in variants:
        rows.append((name, timed(fn, repeats)))
        print(f"{name}: {rows[-1][1]:.3f} s ({rows[-1][1] / rows[0][1]:.2f} x floor)", flush=True)
    base, relp = rows[0][1], rows[2][1]
    lines = [
        f"# Attribution benchmark ({model.name})",
        "",
        f"Batch of {args.batch} agreement prompts ({T} tokens), all {model.n_layers * model.d_mlp:,} neurons at every "
        f"position, float32 on CPU; median of {args.repeats} runs (IG: {args.ig_repeats}).",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}. Command: `{' '.join(['.venv/bin/python', *sys.argv])}`"
        + (f" with OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}" if "OMP_NUM_THREADS" in os.environ else "") + ".",
        "",
        "| variant | seconds | × floor | × RelP |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [f"| {name} | {sec:.3f} | {sec / base:.2f} | {sec / relp:.1f} |" for name, sec in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
