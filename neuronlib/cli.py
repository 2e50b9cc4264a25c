"""Command line: ``python -m neuronlib {reproduce,trace,steer,doctor}`` (also the ``neuronlib`` console script).

Bad input gives a one-line error and exit status 2, no traceback: options are checked before any model loads
(model name, device, method, sizes, neurons, multipliers, answers). An unexpected failure prints one line and exits 1
(set NEURONLIB_DEBUG=1 for the traceback).
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time

from .neurons import neuron_label


def _describe(model, top):
    try:
        from .describe import describe
    except ImportError:
        return None
    try:
        frame = describe(model, [(int(r.layer), int(r.unit)) for r in top.itertuples()])
    except Exception:  # descriptions are a courtesy; tracing must not fail because of them
        return None
    for column in ("description", "logit_lens", "top_tokens"):
        if column in frame.columns:
            return list(frame[column])
    return None


def _check_common(args) -> None:
    """Checks that need no model: model name, device, --top."""
    from .models import check_device
    from .registry import check_model_name

    check_model_name(args.model)
    check_device(os.environ.get("NEURONLIB_DEVICE", "cpu"))
    if getattr(args, "top", 1) < 1:
        raise ValueError(f"--top must be at least 1, got {args.top}")


def _trace(args) -> int:
    import neuronlib

    from .attribution import METHODS

    _check_common(args)
    if args.method not in METHODS:
        raise ValueError(f"unknown method {args.method!r}; use one of {list(METHODS)}")
    if not args.prompt.strip():
        raise ValueError("the prompt is empty")
    if args.counterfactual is not None and args.counterfactual == args.answer:
        raise ValueError(f"--counterfactual {args.counterfactual!r} equals --answer: logit_diff would be 0 by "
                         "construction")
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
    print(f"{model.name}: {metric} = {att.metric.item():+.3f} for {args.prompt!r} ({args.method}, {baseline} baseline)")
    top = att.top(args.top)
    top["neuron"] = [neuron_label(r.layer, r.unit) for r in top.itertuples()]
    columns = ["neuron", "position", "token", "score"]
    descriptions = _describe(model, top) if args.describe else None
    if descriptions is not None:
        top["description"] = descriptions
        columns.append("description")
    print(top[columns].to_string(index=False))
    print(f"({time.perf_counter() - t0:.1f} s)")
    return 0


def _steer(args) -> int:
    import neuronlib

    from .neurons import Neuron

    neurons = [Neuron.parse(text) for text in args.neuron]
    signed = [str(n) for n in neurons if n.sign]
    if signed:  # checked before the model loads (steer() refuses it too)
        raise ValueError(f"--neuron {signed[0]}: steer scales the neuron's whole activation, so a sign has no "
                         f"meaning here (it is not ignored either); drop it: --neuron {signed[0][:-1]}")
    _check_common(args)
    bad = [m for m in args.multiplier if not math.isfinite(m)]
    if bad:
        raise ValueError(f"--multiplier must be finite, got {bad[0]}")
    model = neuronlib.load_model(args.model)
    for neuron in neurons:
        neuron.check(model)
    vocab = len(model.tokenizer)
    if args.top > vocab:
        raise ValueError(f"--top {args.top} is more than {model.name}'s vocabulary of {vocab:,} tokens")
    for multiplier in args.multiplier:
        out = neuronlib.steer(model, [args.prompt], neurons, multiplier=multiplier, metric=None)
        probs = out.probs()[0]
        top_p, top_i = probs.topk(args.top)
        shown = ", ".join(f"{model.tokenizer.decode([i])!r} {p:.3f}" for p, i in zip(top_p.tolist(), top_i.tolist()))
        print(f"x{multiplier:<5g} {shown}")
    return 0


def _doctor(args) -> int:
    import importlib.metadata as md
    import os
    import platform

    import torch

    from .models import PACKAGED, _model_cache_path, cache_dir, stale_files, verify_cache

    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores")
    for pkg in ("torch", "transformers", "nnsight", "gguf", "papermill", "neuronlib"):
        try:
            print(f"  {pkg:14s} {md.version(pkg)}")
        except md.PackageNotFoundError:
            print(f"  {pkg:14s} MISSING")
    print(f"device: cuda available = {torch.cuda.is_available()}" +
          (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
    root = cache_dir()
    writable = os.access(root if root.exists() else root.parent if root.parent.exists() else "/", os.W_OK)
    print(f"cache: {root} ({'writable' if writable else 'NOT writable'})")
    for name, spec in PACKAGED.items():
        try:
            path = _model_cache_path(spec)
        except ModuleNotFoundError:
            what = "optional, not installed" if spec.optional else "package MISSING"
            print(f"  model {name:14s} {what}: {spec.install}")
            continue
        check = verify_cache(path)
        if check.ok:
            state = f"cached, {check.message} ({check.seconds:.1f} s)"
        elif not path.exists():
            state = "not cached yet (first load converts the GGUF)"
        else:
            state = f"cache DAMAGED: {check.message}; the next load rebuilds it"
        print(f"  model {name:14s} package {spec.package} installed; {state}")
    stale = [p for d in (root / "models", root / "gguf") for p in stale_files(d)]
    if stale:
        print(f"  {len(stale)} temp file(s) left by interrupted runs (removed by the next load): "
              + ", ".join(p.name for p in stale[:3]))
    results = root / "results"
    entries = list(results.glob("*/*.pt")) if results.is_dir() else []
    size = sum(p.stat().st_size for p in entries) / 2**20
    print(f"  results cache: {len(entries)} entries, {size:.0f} MiB (each checked when read; unreadable ones are "
          "recomputed)")
    from .paper.results import doctor_lines

    for line in doctor_lines():
        print(line)
    return 0


class _DeadKernelNoise(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" for a kernel that a signal stopped: the runner has said
    what happened in one line, and the collected task of the dead kernel would add a traceback after it."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return type(exc).__name__ != "DeadKernelError"


def _reproduce(args) -> int:
    from .paper.reproduce import parse_parameter, reproduce

    logging.getLogger("asyncio").addFilter(_DeadKernelNoise())  # this process is the CLI's own

    parameters = dict(parse_parameter(p) for p in args.param)
    reproduce(smoke=args.smoke, model=args.model, only=args.only, sva_data=args.sva_data, parameters=parameters)
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line too."""

    def error(self, message):
        print(f"neuronlib: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser (every option has a help text)."""
    from .registry import DEFAULT_MODEL

    parser = _Parser(prog="neuronlib", description="Trace neuron circuits (Arora et al. 2026).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    model_help = f"registry name, local Hugging Face directory or hub id (default {DEFAULT_MODEL})"
    rep = sub.add_parser("reproduce", help="run every notebook (papermill) and regenerate the figures")
    rep.add_argument("--smoke", action="store_true", help="small sizes; figures go to runs/smoke/figures")
    rep.add_argument("--model", default=None, help=model_help.replace(f"(default {DEFAULT_MODEL})", "(default: each "
                     f"notebook's own MODEL, {DEFAULT_MODEL} except notebook 03's two-hop model)"))
    rep.add_argument("--only", nargs="*", help="run only notebooks whose name contains one of these")
    rep.add_argument("--sva-data", metavar="DIR", help="a directory of community-format {template}_{train,test}"
                     ".json(l) SVA files for notebook 02 (results go to results/sva_data_<DIR name>/)")
    rep.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                     help="a notebook parameter (a Python literal), given to every notebook that declares it; "
                     "repeatable, e.g. -p N_TRAIN=32 -p \"TEMPLATES=['nounpp']\"")
    tr = sub.add_parser("trace", help="print the top neurons for a prompt and answer")
    tr.add_argument("prompt", help="the prompt whose next token is scored")
    tr.add_argument("--answer", required=True, help="the answer token, e.g. ' are' (mind the leading space)")
    tr.add_argument("--counterfactual", help="a second answer: metric = logit(answer) - logit(counterfactual)")
    tr.add_argument("--patch-prompt", help="a counterfactual prompt of the same token length (else zero baseline)")
    tr.add_argument("--method", default="relp", help="attribution method: relp (default), atp, ig, ig-inputs, "
                    "relp-no-gate, relp-no-half")
    tr.add_argument("--model", default=DEFAULT_MODEL, help=model_help)
    tr.add_argument("--top", type=int, default=20, help="how many neurons to print (default 20)")
    tr.add_argument("--no-describe", dest="describe", action="store_false", help="skip key-free descriptions")
    st = sub.add_parser("steer", help="scale neurons and print the next-token distribution")
    st.add_argument("prompt", help="the prompt whose next token is shown")
    st.add_argument("--neuron", action="append", required=True, help="L<layer>/N<unit>, e.g. L0/N813; repeatable")
    st.add_argument("--multiplier", type=float, nargs="+", default=[0.0, 1.0, 2.0],
                    help="factors the neurons' activations are multiplied by, one run each (default 0 1 2)")
    st.add_argument("--model", default=DEFAULT_MODEL, help=model_help)
    st.add_argument("--top", type=int, default=5, help="how many next tokens to print (default 5)")
    sub.add_parser("doctor", help="versions, model packages, cache state, device")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .logs import show_logs
    from .paper.reproduce import NotebookFailed

    show_logs("INFO")
    try:
        return {"trace": _trace, "reproduce": _reproduce, "steer": _steer, "doctor": _doctor}[args.command](args)
    except NotebookFailed as err:  # its message is the line: notebook, cell, exception, partial run
        print(f"neuronlib: error: {_one_line(err)}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `neuronlib doctor | head -1`: the reader has gone, which is no error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not complain either
        return 0
    except (ValueError, ModuleNotFoundError, OSError) as err:
        print(f"neuronlib: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM / SIGHUP during `reproduce` (cleaned up by then)
        print(f"neuronlib: {str(err) or 'interrupted'}", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the promise is one line; the traceback is one variable away
        if os.environ.get("NEURONLIB_DEBUG"):
            raise
        print(f"neuronlib: error: {type(err).__name__}: {_one_line(err)} (set NEURONLIB_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 1


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 400 else text[:397] + "..."
