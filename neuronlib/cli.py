"""Command line: ``python -m neuronlib {reproduce,trace}``."""
from __future__ import annotations

import argparse
import sys
import time


def _trace(args) -> int:
    import neuronlib

    t0 = time.perf_counter()
    model = neuronlib.load_model(args.model)
    record = {"prompt": args.prompt, "answer": args.answer}
    if args.counterfactual:
        record["patch_answer"] = args.counterfactual
    if args.patch_prompt:
        record["patch_prefix"] = args.patch_prompt
    metric = "logit_diff" if args.counterfactual else "logit"
    baseline = "counterfactual" if args.patch_prompt else "zero"
    att = neuronlib.attribute(model, [record], metric=metric, method=args.method, baseline=baseline)
    print(f"{model.name}: {metric} = {att.metric.item():+.3f} for {args.prompt!r}; {args.method}, {baseline} baseline")
    top = att.top(args.top)
    top["node"] = [f"L{r.layer}/N{r.unit}" for r in top.itertuples()]
    print(top[["node", "position", "token", "score"]].to_string(index=False))
    print(f"({time.perf_counter() - t0:.1f} s)")
    return 0


def _reproduce(args) -> int:
    # Until the notebooks land, the main job is the core demo: the top neurons of an agreement prompt.
    demo = argparse.Namespace(model=args.model, prompt="The keys to the cabinet", answer=" are", counterfactual=" is",
                              patch_prompt="The key to the cabinet", method="relp", top=15)
    return _trace(demo)


def main(argv=None) -> int:
    from .models import DEFAULT_MODEL

    parser = argparse.ArgumentParser(prog="neuronlib", description="Trace neuron circuits (Arora et al. 2026).")
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("reproduce", help="regenerate the paper's results on the embedded model")
    rep.add_argument("--model", default=DEFAULT_MODEL)
    rep.add_argument("--smoke", action="store_true")
    tr = sub.add_parser("trace", help="print the top neurons for a prompt and answer")
    tr.add_argument("prompt")
    tr.add_argument("--answer", required=True)
    tr.add_argument("--counterfactual", help="a second answer token: metric = logit(answer) - logit(counterfactual)")
    tr.add_argument("--patch-prompt", help="a counterfactual prompt of the same token length (else zero baseline)")
    tr.add_argument("--method", default="relp")
    tr.add_argument("--model", default=DEFAULT_MODEL)
    tr.add_argument("--top", type=int, default=20)
    args = parser.parse_args(argv)
    try:
        return {"trace": _trace, "reproduce": _reproduce}[args.command](args)
    except (ValueError, ModuleNotFoundError, OSError) as err:
        print(f"neuronlib: error: {err}", file=sys.stderr)
        return 2
