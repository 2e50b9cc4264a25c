"""What each verb sends to a remote (NDIF) worker and gets back, measured through the loopback worker.

    .venv/bin/python benchmarks/remote_payload.py [--model smollm2-135m] [--template simple] [--examples 16]
                                                  [--threads 1] [--out benchmarks/results/remote_payload.md]

Every verb runs twice on ``examples`` SVA training pairs of one template: locally, then with
``remote=tracing.Remote(..., transport=tracing.Loopback(model))``, so each trace is serialized by nnsight's
``RequestModel.serialize`` (the bytes a ``remote=True`` trace POSTs), executed by a separate worker process without
neuronlib, and its saves sent back as ``torch.save`` bytes. Per verb: requests, payload bytes (largest and total),
result bytes (total), wall time local and through the loopback, and the largest |local - remote| difference of the
scores (attribution) or logits, and whether the metrics are equal. nnsight's default compression (zstd) is on, as in
a real remote call. Writes a markdown table, and at the default sizes puts it into docs/scale.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import pandas as pd
import torch

import neuronlib
from neuronlib import tracing
from neuronlib.data.sva import load_sva


def verbs(records, nodes, scores):
    prompt = ["Dallas is a city in the state of"]
    return {
        "attribute relp (mlp_acts)": lambda **kw: neuronlib.attribute(
            kw.pop("model"), records, method="relp", sites=("mlp_acts",), **kw),
        "attribute atp (mlp_acts, attn_out, resid)": lambda **kw: neuronlib.attribute(
            kw.pop("model"), records, method="atp", sites=("mlp_acts", "attn_out", "resid"), **kw),
        "attribute ig-inputs, 10 steps (mlp_acts)": lambda **kw: neuronlib.attribute(
            kw.pop("model"), records, method="ig-inputs", sites=("mlp_acts",), **kw),
        "attribute ig per site, 2 steps (mlp_out)": lambda **kw: neuronlib.attribute(
            kw.pop("model"), records[:4], method="ig", ig_steps=2, sites=("mlp_out",), **kw),
        "ablate 100 neurons (mean)": lambda **kw: neuronlib.ablate(kw.pop("model"), records, nodes, **kw),
        "patch 100 neurons": lambda **kw: neuronlib.patch(kw.pop("model"), records, nodes=nodes, **kw),
        "steer 1 neuron x3": lambda **kw: neuronlib.steer(kw.pop("model"), prompt, [(0, 813)], multiplier=3, **kw),
        "evaluate_circuit, 8 sizes (mean)": lambda **kw: neuronlib.evaluate_circuit(
            kw.pop("model"), scores, records, sizes=[0, 10, 20, 50, 100, 200, 500, 1000], **kw),
    }


def difference(local, remote) -> tuple[float, bool]:
    """(max |Δ| of scores or logits, metrics equal)."""
    if isinstance(local, pd.DataFrame):
        cols = ["m_C", "m_Cbar", "m_M", "m_empty"]
        return float((local[cols] - remote[cols]).abs().to_numpy().max()), local[cols].equals(remote[cols])
    same = (local.metric is None and remote.metric is None) or torch.equal(local.metric, remote.metric)
    if hasattr(local, "scores"):
        return max(float((local[s] - remote[s]).abs().max()) for s in local.scores), same
    return float((local.logits - remote.logits).abs().max()), same


def render(doc: Path, table: list[str]) -> None:
    """Put the table between docs/scale.md's remote-payload markers (the page's numbers come from this run)."""
    text = doc.read_text()
    start, end = "<!-- remote-payload:start -->", "<!-- remote-payload:end -->"
    head, rest = text.split(start)
    doc.write_text(head + start + "\n" + "\n".join(table) + "\n" + end + rest.split(end)[1])
    print(f"updated {doc}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--template", default="simple")
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/remote_payload.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the worker process inherits it
    model = neuronlib.load_model(args.model)
    records = load_sva(args.template, tokenizer=model.tokenizer, split="train", n=args.examples).dataset.to_list()
    scores = neuronlib.attribute(model, records, method="relp", sites=("mlp_acts",))
    nodes = scores.nodes(100)
    rows = []
    with tracing.Loopback(args.model) as worker:
        remote = tracing.Remote("loopback", transport=worker)
        for name, call in verbs(records, nodes, scores).items():
            t0 = time.perf_counter()
            local = call(model=model)
            t1 = time.perf_counter()
            before = len(worker.sizes)
            far = call(model=model, remote=remote)
            t2 = time.perf_counter()
            sent = worker.sizes[before:]
            diff, same = difference(local, far)
            rows.append({"verb": name, "requests": len(sent), "largest payload": max(p for p, _ in sent),
                         "payload total": sum(p for p, _ in sent), "result total": sum(r for _, r in sent),
                         "local s": t1 - t0, "loopback s": t2 - t1, "max abs diff": diff, "metrics equal": same})
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    lines = [
        "# Remote (NDIF) payloads per verb, measured through the loopback worker",
        "",
        f"`benchmarks/remote_payload.py --model {args.model} --template {args.template} --examples {args.examples} "
        f"--threads {args.threads}`; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"{platform.processor() or platform.machine()}, Python {sys.version.split()[0]}, torch {torch.__version__}.",
        f"{args.examples} SVA pairs of the `{args.template}` template (IG per site: 4); nodes: the top 100 neurons "
        "by RelP. Bytes as nnsight sends them (zstd-compressed, nnsight's default). Loopback time includes "
        "serializing, the worker's deserialize/execute and the transfer over a pipe; the network is not in it.",
        "",
        "| verb | requests | largest payload (bytes) | payload total (bytes) | result total (bytes) | local s | "
        "loopback s | max abs diff | metrics equal |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in table.itertuples(index=False):
        lines.append(f"| {r[0]} | {r[1]} | {r[2]:,} | {r[3]:,} | {r[4]:,} | {r[5]:.2f} | {r[6]:.2f} | {r[7]:.1e} | "
                     f"{'yes' if r[8] else 'no'} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    if args.model == "smollm2-135m" and args.examples == 16 and args.template == "simple":
        render(Path("docs/scale.md"), lines[-2 - len(table):])
    return 0 if bool(table["metrics equal"].all()) and float(table["max abs diff"].max()) <= 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
