"""Peak memory of one attribution pass on a long prompt, against :func:`neuronlib.inputs.estimate_memory`.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/memory_long_prompt.py [--words 2000] [--method relp]

What ``neuronlib trace PROMPT --answer X`` runs (RelP on the neurons, logit metric, zero baseline) on a prompt of
``--words`` words of the packaged corpus. The peak resident set (VmHWM, reset after the model is loaded and the
prompt is tokenised) minus the resting RSS is the pass's own memory; it is what the estimate must cover. Appends a
line to benchmarks/results/memory_long_prompt.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--words", type=int, default=2000)
    parser.add_argument("--method", default="relp")
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()
    import torch

    import neuronlib
    from neuronlib.data.corpus import iter_corpus_texts
    from neuronlib.inputs import estimate_memory

    model = neuronlib.load_model(args.model)
    words: list[str] = []
    for text in iter_corpus_texts(seed=0):
        words += text.split()
        if len(words) >= args.words:
            break
    prompt = " ".join(words[: args.words])
    T = len(model.tokenizer(prompt)["input_ids"])
    estimate = estimate_memory(model, 1, T, backward=True)
    import gc

    gc.collect()
    resting = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    t0 = time.perf_counter()
    att = neuronlib.attribute(model, [{"prompt": prompt, "answer": " the"}], metric="logit", baseline="zero",
                              method=args.method)
    seconds = time.perf_counter() - t0
    peak = _status("VmHWM")
    del att
    line = (f"| {datetime.date.today()} | {args.model} | {args.method} | {args.words} | {T} | "
            f"{resting / 2**30:.2f} | {(peak - resting) / 2**30:.2f} | {estimate / 2**30:.2f} | {seconds:.0f} | "
            f"{torch.get_num_threads()} |")
    print(line)
    out = Path(__file__).parent / "results" / "memory_long_prompt.md"
    if not out.exists():
        out.write_text("# Peak memory of one attribution pass on a long prompt (benchmarks/memory_long_prompt.py)\n\n"
                       "| date | model | method | words | tokens | resting RSS GiB | pass peak above resting GiB | "
                       "estimate GiB (code of the run) | seconds | threads |\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
    with out.open("a") as f:
        f.write(line + "\n")


if __name__ == "__main__":
    main()
