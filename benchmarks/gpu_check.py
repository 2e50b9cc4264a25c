"""The CUDA path on tiny models: exactness in float32 on the GPU against the CPU, and bfloat16 sanity.

    python benchmarks/gpu_check.py [--out FILE]

Needs a CUDA device; the tiny models are built in code (no download). Checks, per family (tiny Llama, tiny Gemma-3):
AtP and RelP scores on CUDA float32 equal the CPU's (max |delta|), RelP's forward is bit-identical to the plain
forward on a left-padded batch, RelP conservation at the embeddings, mean ablation of nothing reproduces the model,
and in bfloat16 (the CUDA default) attribution runs, gives finite scores and ranks the top neurons like float32.
Prints one line per check and exits 1 if any check fails.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import neuronlib  # noqa: E402
from neuronlib import tracing  # noqa: E402

PAIRS = [
    {"clean_prefix": "the keys to the cabinet", "patch_prefix": "the key to the cabinet", "clean_answer": " are",
     "patch_answer": " is"},
    {"clean_prefix": "the dogs near the boy", "patch_prefix": "the dog near the boy", "clean_answer": " have",
     "patch_answer": " has"},
    {"clean_prefix": "the friend", "patch_prefix": "the friends", "clean_answer": " does", "patch_answer": " do"},
]
SITES = ("embed", "mlp_acts", "attn_out", "resid")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the script's own code")
    args = parser.parse_args()
    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():
        print("no CUDA device")
        return 2
    rows, ok = [], True

    def check(name, passed, value):
        nonlocal ok
        ok &= bool(passed)
        rows.append({"check": name, "passed": bool(passed), "value": value})
        print(f"{'PASS' if passed else 'FAIL'}  {name}: {value}")

    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0) if dev == 'cuda' else dev}, neuronlib {neuronlib.__version__}")
    for family in ("tiny-llama", "tiny-gemma"):
        cpu = neuronlib.load_model(family, device="cpu", dtype=torch.float32)
        gpu = neuronlib.load_model(family, device=dev, dtype=torch.float32)
        for method in ("atp", "relp"):
            a = neuronlib.attribute(cpu, PAIRS, method=method, baseline="counterfactual", sites=SITES)
            b = neuronlib.attribute(gpu, PAIRS, method=method, baseline="counterfactual", sites=SITES)
            delta = max(float((a[s].float() - b[s].float().cpu()).abs().max()) for s in SITES)
            scale = max(float(a[s].abs().max()) for s in SITES)
            check(f"{family} {method} fp32 cuda == cpu (max |delta| / max |score|)", delta <= 1e-4 * max(scale, 1e-6),
                  f"{delta:.2e} / {scale:.2e}")
        enc = gpu.tokenize([p["clean_prefix"] for p in PAIRS])
        plain = tracing.logits(gpu, enc)
        relp = tracing.logits(gpu, enc, relp=tracing.RelPRules())
        check(f"{family} RelP forward bit-identical on CUDA (padded batch)", torch.equal(plain, relp),
              f"max |delta| {float((plain - relp).abs().max()):.1e}")
        z = neuronlib.attribute(gpu, PAIRS, method="relp", baseline="zero", metric="logit", sites=("embed",))
        total = z["embed"].sum(dim=tuple(range(1, z["embed"].dim()))).cpu()
        metric = z.metric.cpu()
        rel = float(((total - metric).abs() / metric.abs().clamp_min(1e-6)).max())
        check(f"{family} RelP conservation at the embeddings on CUDA (relative error)", rel <= 1e-4, f"{rel:.1e}")
        out = neuronlib.ablate(gpu, PAIRS, [], mode="mean")
        ref = neuronlib.ablate(cpu, PAIRS, [], mode="mean")
        d = float((out.metric.cpu() - ref.metric).abs().max())
        check(f"{family} ablating nothing on CUDA == CPU model (metric |delta|)", d <= 1e-4, f"{d:.1e}")
        bf = neuronlib.load_model(family, device=dev)
        check(f"{family} CUDA default dtype is bfloat16", bf.dtype == torch.bfloat16, str(bf.dtype))
        a32 = neuronlib.attribute(gpu, PAIRS, method="relp", baseline="counterfactual", sites=("mlp_acts",))
        a16 = neuronlib.attribute(bf, PAIRS, method="relp", baseline="counterfactual", sites=("mlp_acts",))
        s16 = a16["mlp_acts"].float()
        check(f"{family} bf16 RelP scores finite", bool(torch.isfinite(s16).all()), "")
        k = 10
        top32 = set(a32["mlp_acts"].float().abs().flatten().topk(k).indices.tolist())
        top16 = set(s16.abs().flatten().topk(k).indices.tolist())
        check(f"{family} bf16 vs fp32 top-{k} neuron overlap >= 0.5", len(top32 & top16) / k >= 0.5,
              f"{len(top32 & top16)}/{k}")
    if args.out:
        with open(args.out, "w") as fh:
            device = torch.cuda.get_device_name(0) if dev == "cuda" else dev
            json.dump({"device": device, "torch": torch.__version__, "checks": rows}, fh, indent=1)
    print("all passed" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
