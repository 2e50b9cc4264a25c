"""The subject–verb agreement benchmark (docs/method.md §4, §5; figures 1, 2, 3, 4, 5 and A of the paper's §8).

For every template of :mod:`neuronlib.data.sva`, attribute the agreement metric to every node of each basis
(``mlp_acts`` = the neurons, ``mlp_out``, ``attn_out``, ``resid``, and SAE latents ``sae_mlp_out`` / ``sae_resid``
/ ``sae_attn_out`` once SAEs are attached) with AtP, integrated gradients or RelP on the training pairs, rank the
nodes by |mean score|, and measure the faithfulness and completeness of the top-k circuits on held-out pairs over a
sweep of k. One runner (:func:`run_benchmark`) serves every basis.

Two settings for *finding* a circuit:

* **paired**: counterfactual baseline (the patch prefix), metric ``logit(y) - logit(y')``;
* **unpaired**: zero baseline, metric ``logit(y)`` (no counterfactual in the attribution).

Circuits of both settings are *evaluated* as the paper does, on the test pairs' logit difference under mean
ablation (per-position mean over the test pairs' patch prompts): ``eval_metric == "logit_diff"``. The unpaired runs
add, as a labelled extra, the single-answer evaluation (``eval_metric == "logit"``: ``logit(y)`` on the clean
prompts, zero ablation or the mean over the clean test prompts).

Every ratio is a pooled ratio over test pairs, Σ(m(C) − m(∅)) / Σ(m(M) − m(∅)), with a seeded bootstrap interval
that resamples clean prefixes (:data:`BOOTSTRAP_UNIT`; :mod:`neuronlib.stats`); the across-template lines take the
templates whose effect |m(M) − m(∅)| is above :data:`EFFECT_FLOOR`, pooled (effect-weighted, the headline) and as the
unweighted mean of their curves. Sizes at a faithfulness threshold are interpolated log-linearly on the sweep's grid,
at the first crossing (the headline) and where the curve stays above the threshold.

Every attribution and evaluation is stored with :func:`neuronlib.cache.cached` and re-used on a re-run; a changed
input (model, data, sizes, SAEs) or a change to the code that computes it (:func:`neuronlib.cache.cache_key`)
changes the key. The tables (:func:`curve_table`, :func:`headline_table`,
:func:`score_tables`) are what ``results/`` holds and what :mod:`neuronlib.paper.figures` draws.

Usage::

    model = neuronlib.load_model("smollm2-135m")
    data = load_templates(model, n_train=300, n_test=40)   # split_rule="prefixes": 40 distinct test prefixes
    result = run_benchmark(model, data, plan=default_plan())
    curves = curve_table(result)          # per template and pooled, with bootstrap intervals
    headline = headline_table(result)     # k at faithfulness 0.8 / 0.9 per template, with intervals and flags
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

import neuronlib

from .. import cache, stats
from ..attribution import Attribution
from ..data import packaged
from ..data.sva import DEFAULT_SPLIT_RULE, MIN_TEST_PREFIXES, TEMPLATES, load_sva, split_directory
from ..evaluation import evaluate_circuit
from .style import BASIS_LABELS, METHOD_LABELS, fmt_size, headline_flags  # noqa: F401  (notebooks read sva.*)

logger = logging.getLogger(__name__)

BASES = ("mlp_acts", "mlp_out", "attn_out", "resid")
SAE_BASES = ("sae_attn_out", "sae_mlp_out", "sae_resid")
ALL_BASES = BASES + SAE_BASES
SETTINGS = ("paired", "unpaired")
ABLATIONS = ("mean", "zero")
EVAL_METRICS = ("logit_diff", "logit")
# The IG variant of the benchmark: integrated gradients on the input embeddings, every node's gradient averaged along
# that one path (10 steps, one batch). Per-site IG ("ig") costs layers x steps passes per site (measured ~75x RelP for
# the neurons alone on SmolLM2); :func:`ig_check` compares the two.
IG_METHOD = "ig-inputs"
LOG_SIZES = (1, 2, 3, 5, 10, 20, 30, 50, 100, 200, 300, 500, 1000, 2000, 3000, 5000, 10000, 20000, 30000, 50000,
             100000)
LINEAR_SIZES = tuple(range(10, 401, 10))
THRESHOLDS = (0.8, 0.9)
# A template whose |m(M) − m(∅)| (mean over its test pairs, logit units) is below this floor has ratios dominated by
# noise: it is flagged in the per-template tables and kept out of the pooled line.
EFFECT_FLOOR = 1.0
N_BOOT = 1000
SEED = 0
ALL = 10**12  # "every node of the basis": the requested size of the full circuit (capped to the basis's node count)
POOLED = "pooled"
# The across-template rows of the headline table, one per aggregate (neuronlib.stats.AGGREGATES): "pooled" sums the
# pairs of every template (each template weighted by its effect), "template mean" averages the templates' curves
# unweighted (the paper's aggregate). The headline (README, pooled_summary) is HEADLINE_AGGREGATE at
# HEADLINE_CROSSING: the first size at which the pooled curve reaches the threshold.
TEMPLATE_MEAN = "template mean"
AGGREGATE_ROWS = {"pooled": POOLED, "mean": TEMPLATE_MEAN}
HEADLINE_AGGREGATE = "pooled"
HEADLINE_CROSSING = "first"
# The independent unit every interval of the tables resamples (pairs that share a clean prefix move together).
BOOTSTRAP_UNIT = "clean prefix"

KEYS = ["model", "method", "basis", "setting", "ablation", "eval_metric"]
COLUMNS = ["model", "template", "method", "basis", "setting", "ablation", "eval_metric", "k", "size", "total_nodes",
           "faithfulness", "completeness", "m_C", "m_Cbar", "m_M", "m_empty", "threshold", "n_train", "n_test"]


# ------------------------------------------------------------------------------------------------------------- data


@dataclass
class TemplateData:
    """One template's training and test pairs (community format), all of one token length ``T``."""

    template: str
    train: list[dict]
    test: list[dict]
    T: int = 0  # prompt length in tokens as the model sees it (special tokens included)
    dropped: dict = field(default_factory=dict)


KEEP_KEYS = ("clean_prefix", "patch_prefix", "clean_answer", "patch_answer", "case")


def _plain(rows) -> list[dict]:
    return [{k: r[k] for k in KEEP_KEYS if k in r} for r in rows]


def sva_files(data_dir, split: str = "train") -> dict[str, Path]:
    """{template: file} for the community-format ``{template}_{split}.jsonl`` or ``.json`` files in ``data_dir``."""
    out = {}
    for path in sorted(Path(data_dir).glob(f"*_{split}.json*")):
        if path.suffix in (".json", ".jsonl"):
            out.setdefault(path.name[: -len(f"_{split}{path.suffix}")], path)
    return out


def load_templates(model, templates=TEMPLATES, *, n_train: int = 300, n_test: int = 40, data_dir=None,
                   strict: bool = True, split_rule: str = DEFAULT_SPLIT_RULE) -> dict[str, TemplateData]:
    """Load ``n_train`` training and ``n_test`` test pairs per template, filtered for ``model``'s tokenizer.

    ``load_sva`` keeps single-token answers and the file's most common prefix length, so positions align; with a
    tokenizer that adds <bos> (Gemma) every prompt is one token longer, which changes nothing else. ``split_rule``
    picks the packaged files (:data:`neuronlib.data.sva.SPLIT_RULES`): "prefixes" (default; every test pair its own
    clean prefix, at least :data:`~neuronlib.data.sva.MIN_TEST_PREFIXES` of them at the paper's 40 test pairs) or
    "skeleton" (the first committed run's files, ``data/sva``). Under "prefixes" a test split with fewer than
    min(``n_test``, MIN_TEST_PREFIXES) distinct clean prefixes is an error. ``data_dir``: a directory of
    community-format ``{template}_{train,test}.jsonl`` (or ``.json``) files instead, e.g. Marks et al.'s release
    (``templates=None``: every template found there; ``split_rule`` is then not used, and the clean prefixes are
    counted in :func:`data_table`). ``strict=False`` keeps a template with fewer usable pairs than asked (a warning
    says how many); the drops per reason are in ``TemplateData.dropped``.
    """
    if templates is None:
        if data_dir is None:
            templates = TEMPLATES
        else:
            templates = sorted(set(sva_files(data_dir, "train")) & set(sva_files(data_dir, "test")))
            if not templates:
                raise FileNotFoundError(f"no {{template}}_train/test.json(l) files in {data_dir}")
    out = {}
    for template in templates:
        kw = dict(tokenizer=model.tokenizer)
        if data_dir is None:
            base = packaged(split_directory(split_rule))
            train = load_sva(template, split="train", n=n_train, data_dir=base, **kw)
            test = load_sva(template, split="test", n=n_test, data_dir=base, **kw)
            need = min(n_test, MIN_TEST_PREFIXES)
            distinct = len(set(test.dataset["clean_prefix"]))
            if split_rule == "prefixes" and distinct < need:
                raise ValueError(f"{template}: the test split holds {distinct} distinct clean prefixes, fewer than "
                                 f"{need}")
        else:
            train = load_sva(sva_files(data_dir, "train")[template], n=n_train, **kw)
            test = load_sva(sva_files(data_dir, "test")[template], n=n_test, **kw)
        if len(train) < n_train or len(test) < n_test:
            msg = (f"{template}: asked for {n_train}/{n_test} pairs, only {len(train)}/{len(test)} usable for "
                   f"{model.name}")
            if strict:
                raise ValueError(msg)
            logger.warning(msg)
        if train.length != test.length:
            raise ValueError(f"{template}: train prompts have {train.length} tokens, test prompts {test.length}")
        rows = _plain(train.dataset)
        T = model.tokenize([rows[0]["clean_prefix"]])["input_ids"].shape[1]
        out[template] = TemplateData(template, rows, _plain(test.dataset), T,
                                     {"train": dict(train.dropped), "test": dict(test.dropped)})
    return out


def data_table(model, data: dict[str, TemplateData]) -> pd.DataFrame:
    """One row per template: token length, pairs used, rows dropped per reason (train + test), an example."""
    rows = []
    for t, d in data.items():
        drops = {}
        for split in ("train", "test"):
            for reason, n in d.dropped.get(split, {}).items():
                drops[f"dropped: {reason}"] = drops.get(f"dropped: {reason}", 0) + int(n)
        rows.append({"model": model.name, "template": t, "T": d.T, "train_pairs": len(d.train),
                     "test_pairs": len(d.test), "test_prefixes": len(set(clusters(d.test))), **drops,
                     "example": d.test[0]["clean_prefix"] + " →" + d.test[0]["clean_answer"]})
    return pd.DataFrame(rows)


def clusters(records: list[dict]) -> np.ndarray:
    """The bootstrap's cluster of each test pair: its clean prefix (pairs that share one are not independent)."""
    return np.array([r["clean_prefix"] for r in records], dtype=object)


def unpaired(records: list[dict]) -> list[dict]:
    """The unpaired view of SVA pairs: the clean prompt and its answer only (no counterfactual anywhere)."""
    return [{"clean_prefix": r["clean_prefix"], "clean_answer": r["clean_answer"]} for r in records]


# ------------------------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Run:
    """One attribution method run on some bases, in one setting, evaluated under some ablations and metrics.

    ``n_train``: how many of the training pairs to attribute on (None: all that were loaded).
    ``linear``: the bases whose sweep also gets the linear sizes (0-400) for the linear-axis figures.
    ``eval_metrics``: "logit_diff" (the test pairs, as the paper evaluates every circuit) and/or "logit" (the clean
    prompts' ``logit(y)``, the single-answer extra; unpaired runs only). Default: "logit_diff" for paired runs,
    both for unpaired runs. "logit_diff" is evaluated under mean ablation only (means over the patch prompts).
    """

    method: str
    bases: tuple[str, ...] = BASES
    setting: str = "paired"
    ablations: tuple[str, ...] = ("mean",)
    n_train: int | None = None
    linear: tuple[str, ...] = ()
    eval_metrics: tuple[str, ...] | None = None

    def __post_init__(self):
        from ..attribution import METHODS

        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; use one of {METHODS}")
        if self.setting not in SETTINGS:
            raise ValueError(f"unknown setting {self.setting!r}; use one of {SETTINGS}")
        bad = [a for a in self.ablations if a not in ABLATIONS]
        if bad or not self.ablations:
            raise ValueError(f"ablations must be a non-empty subset of {ABLATIONS}, got {self.ablations}")
        bad = [b for b in (*self.bases, *self.linear) if b not in ALL_BASES]
        if bad or not self.bases:
            raise ValueError(f"bases must be a non-empty subset of {ALL_BASES}, got {self.bases}")
        if self.eval_metrics is None:
            object.__setattr__(self, "eval_metrics", ("logit_diff",) if self.setting == "paired"
                               else ("logit_diff", "logit"))
        bad = [m for m in self.eval_metrics if m not in EVAL_METRICS]
        if bad or not self.eval_metrics:
            raise ValueError(f"eval_metrics must be a non-empty subset of {EVAL_METRICS}, got {self.eval_metrics}")
        if self.setting == "paired" and "logit" in self.eval_metrics:
            raise ValueError("the single-answer evaluation ('logit') is for unpaired runs")

    @property
    def metric(self) -> str:
        return "logit_diff" if self.setting == "paired" else "logit"

    @property
    def baseline(self) -> str:
        return "counterfactual" if self.setting == "paired" else "zero"

    def evaluations(self) -> list[tuple[str, str]]:
        """(eval_metric, ablation) pairs: the paired logit difference under mean ablation; the single-answer
        metric under every ablation of the run."""
        out = [("logit_diff", "mean")] if "logit_diff" in self.eval_metrics else []
        if "logit" in self.eval_metrics:
            out += [("logit", a) for a in self.ablations]
        return out


def default_plan(*, n_ig: int | None = None, bases=BASES, atp_bases=BASES, unpaired_bases=("mlp_acts", "mlp_out"),
                 unpaired_methods=("relp",), unpaired_ablations=("zero", "mean"), linear=("mlp_acts",),
                 ablation_bases=("mlp_acts",)) -> list[Run]:
    """The benchmark of notebook 02: RelP, IG-inputs and AtP on every basis (paired), the RelP ablations (no gate
    rule, no half rule) on the same grid, and unpaired runs (evaluated on the pairs, plus the single-answer extra
    under each of ``unpaired_ablations``). The linear sizes are added on the ``linear`` bases."""
    lin = tuple(b for b in linear if b in bases)
    plan = [Run("relp", tuple(bases), linear=lin), Run(IG_METHOD, tuple(bases), n_train=n_ig, linear=lin)]
    if atp_bases:
        plan.append(Run("atp", tuple(atp_bases)))
    if ablation_bases:
        plan += [Run("relp-no-gate", tuple(ablation_bases), linear=lin),
                 Run("relp-no-half", tuple(ablation_bases), linear=lin)]
    for method in unpaired_methods:
        plan.append(Run(method, tuple(unpaired_bases), setting="unpaired", ablations=tuple(unpaired_ablations),
                        n_train=n_ig if method.startswith("ig") else None))
    return plan


def sweep_sizes(total: int, log_sizes=LOG_SIZES, linear_sizes=()) -> list[int]:
    """Requested circuit sizes: the log sizes and linear sizes below ``total``, and ``ALL`` (the full circuit)."""
    sizes = {int(k) for k in (*log_sizes, *linear_sizes) if 0 < int(k) < total}
    return sorted(sizes) + [ALL]


# ------------------------------------------------------------------------------------------------------------- runner


@dataclass
class BenchmarkResult:
    """``curves``: one row per (model, template, method, basis, setting, ablation, eval_metric, requested size k);
    ``size`` is the actual number of nodes (``k`` capped at ``total_nodes``; ``k == ALL`` is the full circuit).
    ``examples``: per curve (the same keys without k, template first), the per-test-pair metrics
    {"k", "size": [S], "m_C", "m_Cbar": [S, n], "m_M", "m_empty": [n], "clusters": [n]} the intervals resample
    (``clusters``: each test pair's clean prefix, the unit the bootstrap draws).
    ``attributions``: mean scores per (template, method, setting) (an :class:`Attribution` with one example).
    ``log``: what each step cost and whether it came from the cache."""

    curves: pd.DataFrame
    attributions: dict[tuple[str, str, str], Attribution]
    log: pd.DataFrame
    accuracy: pd.DataFrame
    examples: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)  # how the sweep was run, when not the default (recorded in sidecars)

    def __add__(self, other: "BenchmarkResult") -> "BenchmarkResult":
        atts = dict(self.attributions)
        for key, att in other.attributions.items():
            atts[key] = _merge(atts.get(key), att)
        return BenchmarkResult(pd.concat([self.curves, other.curves], ignore_index=True), atts,
                               pd.concat([self.log, other.log], ignore_index=True),
                               pd.concat([self.accuracy, other.accuracy], ignore_index=True)
                               .drop_duplicates(["model", "template", "method", "setting", "n"]),
                               {**self.examples, **other.examples}, {**self.options, **other.options})


def _attribute_mean(model, records, run: Run, sites, *, ig_steps, batch_size, chunk, progress):
    """Mean attribution over ``records``, computed ``chunk`` records at a time (memory stays small)."""
    total, n, metrics, base_metrics = None, 0, [], []
    for start in range(0, len(records), chunk):
        part = records[start:start + chunk]
        att = neuronlib.attribute(model, part, method=run.method, metric=run.metric, baseline=run.baseline,
                                  sites=sites, ig_steps=ig_steps, batch_size=batch_size, progress=progress)
        sums = {s: att[s].sum(0, keepdim=True) for s in att.sites}
        total = sums if total is None else {s: total[s] + sums[s] for s in sums}
        n += att.n_examples
        metrics.append(att.metric)
        if att.baseline_metric is not None:
            base_metrics.append(att.baseline_metric)
        first = att
    mean = replace(first, scores={s: v / n for s, v in total.items()}, tokens=first.tokens[:1],
                   lengths=first.lengths[:1], metric=torch.cat(metrics).mean(0, keepdim=True),
                   baseline_metric=torch.cat(base_metrics).mean(0, keepdim=True) if base_metrics else None,
                   meta={**first.meta, "averaged_over": n})
    return {"mean": mean, "metric": torch.cat(metrics),
            "baseline_metric": torch.cat(base_metrics) if base_metrics else None}


def _timed(fn):
    def wrapped():
        t0 = time.perf_counter()
        value = fn()
        return {"value": value, "seconds": time.perf_counter() - t0}
    return wrapped


def _sae_part(model, sites) -> str | None:
    """The SAEs' fingerprint when ``sites`` has SAE sites (so results of different SAEs never share a key)."""
    sae_sites = [s for s in sites if s in SAE_BASES]
    if not sae_sites:
        return None
    from .sae_baselines import sae_fingerprint

    return sae_fingerprint(model, sae_sites)


def cached_attribution(model, template: str, td: TemplateData, run: Run, sites, *, ig_steps: int = 10,
                       batch_size: int = 16, chunk: int = 16, directory=None, refresh: bool = False,
                       progress: bool = False):
    """The mean attribution of ``run`` on ``td``'s training pairs, from the cache or computed (and stored).

    Returns (stored dict with "mean", "metric", "baseline_metric"; the key's parts; a log row)."""
    n_train = len(td.train) if run.n_train is None else min(run.n_train, len(td.train))
    train = td.train[:n_train]
    if run.setting == "unpaired":
        train = unpaired(train)
    parts = dict(model=model.name, template=template, method=run.method,
                 setting=run.setting, metric=run.metric, baseline=run.baseline, sites=tuple(sites),
                 train=cache.data_hash(train), n_train=n_train,
                 ig_steps=ig_steps if run.method.startswith("ig") else None)
    sae = _sae_part(model, sites)
    if sae is not None:
        parts["saes"] = sae
    key = cache.cache_key(kind="sva_attribution", **parts)
    t0 = time.perf_counter()
    stored, hit = cache.cached_entry("sva_attribution", key, _timed(lambda: _attribute_mean(
        model, train, run, tuple(sites), ig_steps=ig_steps, batch_size=batch_size, chunk=chunk, progress=progress)),
        refresh=refresh, directory=directory)
    step = {"model": model.name, "template": template, "step": "attribution", "method": run.method,
            "setting": run.setting, "basis": ",".join(sites), "ablation": "", "eval_metric": "", "n": n_train,
            "cached": hit, "seconds": time.perf_counter() - t0, "compute_seconds": stored["seconds"]}
    return stored["value"], parts, step


def _evaluate(model, mean, test, basis, sizes, ablation, metric, batch_size):
    frame = evaluate_circuit(model, mean, test, sites=(basis,), sizes=sizes, mode=ablation, metric=metric,
                             batch_size=batch_size, progress=False, per_example=True)
    frame = frame[frame.group == "all"].reset_index(drop=True)
    ex_cols = ["m_C_ex", "m_Cbar_ex", "m_M_ex", "m_empty_ex"]
    examples = {c[:-3]: np.stack(frame[c].to_list()) for c in ex_cols}
    return {"frame": frame.drop(columns=ex_cols), "examples": examples}


def run_benchmark(
    model,
    data: dict[str, TemplateData],
    *,
    plan: list[Run] | None = None,
    log_sizes=LOG_SIZES,
    linear_sizes=LINEAR_SIZES,
    ig_steps: int = 10,
    batch_size: int = 16,
    eval_batch_size: int = 128,
    chunk: int = 16,
    cache_dir: str | Path | None = None,
    refresh: bool = False,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    refine: Refine | None = None,
) -> BenchmarkResult:
    """Run ``plan`` (default: :func:`default_plan`) on every template of ``data``; see the module docstring.

    ``refine``: sweep the curves it names coarse-to-fine (:class:`Refine`; default None: every curve on the full
    grid); its parameters are in ``result.options`` and in the sidecars :func:`write_tables` writes.

    SAE bases need their SAEs attached to ``model`` first (:func:`neuronlib.paper.sae_baselines.attach_sae_baselines`).
    Results are cached under ``cache_dir`` (default: ``$NEURONLIB_CACHE/results``); ``refresh=True`` recomputes.
    """
    plan = default_plan() if plan is None else list(plan)
    directory = Path(cache_dir) if cache_dir is not None else None
    say = log or logger.info
    steps, attributions, accuracy, done, pending = [], {}, [], [], []

    def evaluate(item, sizes):
        """Evaluate ``item``'s circuit at ``sizes`` (cached), leaving its frame and per-pair metrics in it."""
        run, basis, ablation, eval_metric, test = (item[k] for k in ("run", "basis", "ablation", "eval_metric",
                                                                      "test"))
        actual = sorted({min(k, item["total"]) for k in sizes})
        eparts = dict(item["parts"], basis=basis, ablation=ablation,
                      eval_metric=eval_metric, sizes=actual, test=cache.data_hash(test))
        t0 = time.perf_counter()
        evaluated, ehit = cache.cached_entry("sva_eval", cache.cache_key(kind="sva_eval", **eparts), _timed(lambda: _evaluate(
            model, item["mean"], test, basis, actual, ablation, eval_metric, eval_batch_size)),
            refresh=refresh, directory=directory)
        item["frame"], item["examples"] = evaluated["value"]["frame"], evaluated["value"]["examples"]
        steps.append({"model": model.name, "template": item["template"], "step": "evaluation",
                      "method": run.method, "setting": run.setting, "basis": basis, "ablation": ablation,
                      "eval_metric": eval_metric, "n": len(test), "cached": ehit,
                      "seconds": time.perf_counter() - t0, "compute_seconds": evaluated["seconds"]})
        say(f"{item['template']:>9} {run.method:>12} {run.setting:>8} {basis:>11} {eval_metric}/{ablation} "
            f"{len(actual)} sizes " + ("(cached)" if ehit else f"{evaluated['seconds']:.0f} s"))

    for template, td in data.items():
        for run in plan:
            sites = tuple(sorted(run.bases, key=ALL_BASES.index))
            att, parts, step = cached_attribution(model, template, td, run, sites, ig_steps=ig_steps,
                                                  batch_size=batch_size, chunk=chunk, directory=directory,
                                                  refresh=refresh, progress=progress)
            n_train = parts["n_train"]
            steps.append(step)
            say(f"{template:>9} {run.method:>12} {run.setting:>8} attribution on {n_train} pairs "
                + ("(cached)" if step["cached"] else f"{step['compute_seconds']:.0f} s"))
            mean = att["mean"]
            key = (template, run.method, run.setting)
            attributions[key] = _merge(attributions.get(key), mean)
            m = att["metric"]
            accuracy.append({"model": model.name, "template": template, "method": run.method, "setting": run.setting,
                             "n": len(m), "metric": run.metric, "mean_metric": float(m.mean()),
                             "frac_positive": float((m > 0).float().mean()),
                             "mean_baseline_metric": (None if att["baseline_metric"] is None
                                                      else float(att["baseline_metric"].mean()))})
            for basis in sites:
                total = int(mean[basis][0].numel())
                requested = sweep_sizes(total, log_sizes, linear_sizes if basis in run.linear else ())
                coarse = refine is not None and (run.method, basis) in refine.curves
                for eval_metric, ablation in run.evaluations():
                    test = td.test if eval_metric == "logit_diff" else unpaired(td.test)
                    item = {"template": template, "run": run, "basis": basis, "ablation": ablation,
                            "eval_metric": eval_metric, "test": test, "parts": parts, "mean": mean, "total": total,
                            "grid": requested, "requested": refine.coarse_grid(requested) if coarse else requested}
                    evaluate(item, item["requested"])
                    (pending if coarse else done).append(item)
    if pending:
        _refine(pending, refine, evaluate)
    curves, examples = [], {}
    for item in done + pending:
        _record(item, model.name, curves, examples)
    return BenchmarkResult(pd.DataFrame(curves, columns=COLUMNS), attributions,
                           pd.DataFrame(steps), pd.DataFrame(accuracy).drop_duplicates(
                               ["model", "template", "method", "setting", "n"]), examples,
                           {} if refine is None else {"refine": refine.parameters()})


def _record(item, model_name, curves, examples):
    """One evaluated curve as its examples entry and its rows of the curve table."""
    run, total, requested, frame, ex = item["run"], item["total"], item["requested"], item["frame"], item["examples"]
    row_of = {int(s): i for i, s in enumerate(frame["size"])}
    rows = [row_of[min(k, total)] for k in requested]
    n_train = item["parts"]["n_train"]
    examples[(item["template"], model_name, run.method, item["basis"], run.setting, item["ablation"],
              item["eval_metric"])] = {
        "k": np.array(requested, dtype=np.int64), "size": np.array([min(k, total) for k in requested]),
        "m_C": ex["m_C"][rows], "m_Cbar": ex["m_Cbar"][rows], "m_M": ex["m_M"][0],
        "m_empty": ex["m_empty"][0], "n_train": n_train, "total_nodes": total, "clusters": clusters(item["test"])}
    for k, i in zip(requested, rows):
        row = frame.iloc[i]
        curves.append({
            "model": model_name, "template": item["template"], "method": run.method, "basis": item["basis"],
            "setting": run.setting, "ablation": item["ablation"], "eval_metric": item["eval_metric"], "k": k,
            "size": min(k, total), "total_nodes": total, "faithfulness": row.faithfulness,
            "completeness": row.completeness, "m_C": row.m_C, "m_Cbar": row.m_Cbar, "m_M": row.m_M,
            "m_empty": row.m_empty, "threshold": row.threshold, "n_train": n_train, "n_test": len(item["test"])})


@dataclass(frozen=True)
class Refine:
    """Coarse-to-fine sweeps for curves that feed only the k@F headline, not a drawn curve.

    ``curves``: the (method, basis) pairs swept coarsely; every other curve keeps the full grid. Their sweep is
    first ``coarse`` (the sizes of the full grid among them, plus the grid's smallest and largest size and the
    full circuit), then, across the templates of one curve together, the full grid's sizes inside every segment
    between coarse neighbours where the faithfulness curve comes within ``margin`` of a threshold of ``thresholds``
    (:func:`neuronlib.stats.crossing_brackets`): of every template, of every across-template aggregate (templates
    above ``floor``) and of each of their ``n_boot`` bootstrap resamples (``seed``; :func:`headline_table`'s
    defaults), so the headline's sizes and intervals under both crossing rules are interpolated between the same grid
    points as on the full grid (on notebook 02's saved curves, margin 0.1 and decades: all 400 point estimates the
    same, 62 % of the sizes evaluated; with the 95 % bands in place of the resamples, about 77 %). What it gives
    up: a dip or a spike of more than ``margin`` that the coarse grid steps over is not seen, so ``falls_back``,
    ``max_faithfulness`` and ``min_completeness`` are read on the refined grid only."""

    curves: tuple[tuple[str, str], ...]
    coarse: tuple[int, ...] = (1, 10, 100, 1000, 10000, 100000)
    margin: float = 0.1
    thresholds: tuple[float, ...] = THRESHOLDS
    n_boot: int = N_BOOT
    seed: int = SEED
    floor: float = EFFECT_FLOOR

    def coarse_grid(self, requested) -> list[int]:
        grid = [k for k in requested if k < ALL]
        keep = set(self.coarse) | ({grid[0], grid[-1]} if grid else set())
        return [k for k in requested if k >= ALL or k in keep]

    def parameters(self) -> dict:
        return {"curves": [list(c) for c in self.curves], "coarse": list(self.coarse), "margin": self.margin,
                "thresholds": list(self.thresholds), "n_boot": self.n_boot, "seed": self.seed, "floor": self.floor}


def _refine(pending, refine: Refine, evaluate) -> None:
    """Add to every coarse sweep of ``pending`` the grid sizes inside the crossing brackets of its curve (all
    templates of one curve get the same sizes, so the across-template rows keep them)."""
    groups: dict[tuple, list] = {}
    for item in pending:
        groups.setdefault((item["run"], item["basis"], item["ablation"], item["eval_metric"]), []).append(item)
    for items in groups.values():
        entries = {}
        for item in items:
            _record(item, "", [], entries)
        brackets = set()
        # the lines headline_table draws its sizes from: every template and every aggregate, with their resamples
        for cv in _curves([(key[0], e) for key, e in entries.items()], refine.floor, stats.AGGREGATES):
            grid = cv.k < ALL
            f = stats.bootstrap_ratio(cv.m_C[grid] - cv.m_0, cv.m_M - cv.m_0, n_boot=refine.n_boot, seed=refine.seed,
                                      strata=cv.strata, clusters=cv.clusters, aggregate=cv.aggregate)
            brackets |= stats.crossing_brackets(cv.k[grid], np.vstack([f["estimate"][None], f["samples"]]),
                                                refine.thresholds, margin=refine.margin)
        for item in items:
            extra = stats.refined_sizes(item["grid"], item["requested"], brackets)
            if not extra:
                continue
            first = {"frame": item["frame"], "examples": item["examples"]}
            evaluate(item, extra)
            frame = pd.concat([first["frame"], item["frame"]], ignore_index=True)
            order = np.argsort(frame["size"].to_numpy(), kind="stable")
            item["frame"] = frame.iloc[order].reset_index(drop=True)
            item["examples"] = {c: (np.concatenate([first["examples"][c], item["examples"][c]])[order]
                                    if c in ("m_C", "m_Cbar") else first["examples"][c])
                                for c in first["examples"]}
            item["requested"] = sorted({*item["requested"], *extra})




def _merge(old: Attribution | None, new: Attribution) -> Attribution:
    """Two runs of one (template, method, setting) on different bases: one Attribution with all their sites."""
    if old is None:
        return new
    return replace(old, scores={**old.scores, **new.scores})


# ------------------------------------------------------------------------------------------------------------- tables


def _clusters_of(e) -> np.ndarray:
    """A curve's cluster labels; a curve stored without them resamples pairs (each its own cluster)."""
    c = e.get("clusters")
    return np.arange(len(e["m_M"])).astype(str).astype(object) if c is None else np.asarray(c, dtype=object)


def bootstrap_unit(result: BenchmarkResult) -> str:
    """What the intervals of ``result``'s tables resample: "clean prefix" when every curve carries its pairs' clean
    prefixes (:func:`clusters`), else "test pair"."""
    return BOOTSTRAP_UNIT if all(e.get("clusters") is not None for e in result.examples.values()) else "test pair"


def _pool(entries: list[dict]):
    """Stack the test pairs of several templates' curves on their common requested sizes k."""
    common = sorted(set.intersection(*(set(e["k"].tolist()) for e in entries)))
    pick = [np.searchsorted(e["k"], common) for e in entries]
    m_C = np.concatenate([e["m_C"][p] for e, p in zip(entries, pick)], axis=1)
    m_Cbar = np.concatenate([e["m_Cbar"][p] for e, p in zip(entries, pick)], axis=1)
    m_M = np.concatenate([e["m_M"] for e in entries])
    m_0 = np.concatenate([e["m_empty"] for e in entries])
    size = np.mean([e["size"][p] for e, p in zip(entries, pick)], axis=0)
    strata = np.concatenate([np.full(len(e["m_M"]), i) for i, e in enumerate(entries)])
    return np.array(common), size, m_C, m_Cbar, m_M, m_0, strata


@dataclass
class _Curve:
    """One line of the tables: a template's test pairs, or several templates' pooled (``strata`` = template)."""

    template: str
    k: np.ndarray
    size: np.ndarray
    m_C: np.ndarray
    m_Cbar: np.ndarray
    m_M: np.ndarray
    m_0: np.ndarray
    strata: np.ndarray | None
    clusters: np.ndarray
    below: bool
    total: float
    aggregate: str = "pooled"


def _curves(items, floor: float, aggregates) -> list[_Curve]:
    """Every template's curve, then one line per aggregate over the templates above the effect floor."""
    out = [_Curve(t, e["k"], e["size"].astype(float), e["m_C"], e["m_Cbar"], e["m_M"], e["m_empty"], None,
                  _clusters_of(e), abs(_effect(e)) < floor, e["total_nodes"]) for t, e in items]
    kept = [e for t, e in items if abs(_effect(e)) >= floor]
    if kept:
        k, size, m_C, m_Cbar, m_M, m_0, strata = _pool(kept)
        cl = np.concatenate([_clusters_of(e) for e in kept])  # in _pool's order of pairs
        for agg in aggregates:
            out.append(_Curve(AGGREGATE_ROWS[agg], k, size, m_C, m_Cbar, m_M, m_0, strata, cl, False, np.nan, agg))
    return out


def _groups(result: BenchmarkResult) -> dict[tuple, list]:
    groups: dict[tuple, list] = {}
    for (template, *key), e in result.examples.items():
        groups.setdefault(tuple(key), []).append((template, e))
    return groups


def _effect(e) -> float:
    return float(np.mean(e["m_M"] - e["m_empty"]))


def curve_table(result: BenchmarkResult, *, n_boot: int = N_BOOT, seed: int = SEED, floor: float = EFFECT_FLOOR,
                confidence: float = stats.CONFIDENCE) -> pd.DataFrame:
    """Faithfulness and completeness per (curve, template, size) with bootstrap intervals, and a ``template ==
    "pooled"`` curve per curve key: the pairs of every template above the effect floor pooled,
    Σ(m(C) − m(∅)) / Σ(m(M) − m(∅)), resampled within each template. The bootstrap draws clean prefixes (clusters of
    test pairs, :func:`bootstrap_unit`). Tidy: the table of figures 1, 2, 3, 5 and A."""
    rows = []
    for key, items in _groups(result).items():
        base = dict(zip(KEYS, key))
        for cv in _curves(items, floor, ("pooled",)):
            den = cv.m_M - cv.m_0
            kw = dict(n_boot=n_boot, seed=seed, strata=cv.strata, clusters=cv.clusters, confidence=confidence)
            f = stats.bootstrap_ratio(cv.m_C - cv.m_0, den, **kw)
            c = stats.bootstrap_ratio(cv.m_Cbar - cv.m_0, den, **kw)
            for i in range(len(cv.k)):
                rows.append({**base, "template": cv.template, "k": int(cv.k[i]), "size": float(cv.size[i]),
                             "total_nodes": cv.total, "faithfulness": float(f["estimate"][i]),
                             "faithfulness_lo": float(f["lo"][i]), "faithfulness_hi": float(f["hi"][i]),
                             "completeness": float(c["estimate"][i]), "completeness_lo": float(c["lo"][i]),
                             "completeness_hi": float(c["hi"][i]), "effect": float(den.mean()),
                             "below_floor": bool(cv.below), "n_test": len(cv.m_M),
                             "n_clusters": _n_clusters(cv),
                             "templates": len(set(cv.strata.tolist())) if cv.strata is not None else 1})
    cols = ["model", "template", "method", "basis", "setting", "ablation", "eval_metric", "k", "size", "total_nodes",
            "faithfulness", "faithfulness_lo", "faithfulness_hi", "completeness", "completeness_lo",
            "completeness_hi", "effect", "below_floor", "n_test", "n_clusters", "templates"]
    return pd.DataFrame(rows, columns=cols)


def _n_clusters(cv: _Curve) -> int:
    strata = np.zeros(len(cv.clusters), dtype=np.int64) if cv.strata is None else cv.strata
    return len(set(zip(strata.tolist(), cv.clusters.tolist())))


def _at(sizes, values, size) -> float:
    """``values`` at ``size``, interpolated log-linearly between grid points (NaN outside the grid)."""
    if not np.isfinite(size):
        return float("nan")
    return float(np.interp(np.log(size), np.log(sizes), values, left=np.nan, right=np.nan))


def headline_table(result: BenchmarkResult, *, thresholds=THRESHOLDS, n_boot: int = N_BOOT, seed: int = SEED,
                   floor: float = EFFECT_FLOOR, confidence: float = stats.CONFIDENCE,
                   aggregates=stats.AGGREGATES) -> pd.DataFrame:
    """Per (curve, template) and across templates: the effect m(M) − m(∅) with its interval, and for each threshold
    t and each crossing rule (:data:`neuronlib.stats.CROSSING_RULES`: ``first`` = where the curve first reaches t,
    ``stays_above`` = from where it stays at or above t up to the largest size tested) the circuit size k at faithfulness
    t (log-linear interpolation on the grid, full circuit excluded) with its bootstrap interval, the fraction of
    resamples that reach t, and the completeness there (interpolated the same way, with an interval from the same
    resamples): columns ``k@F>=t|rule`` etc.; the bare ``k@F>=t`` columns are the headline rule
    (:data:`HEADLINE_CROSSING`). Across templates (those above the effect floor), one row per aggregate:
    ``template == "pooled"`` (Σ num / Σ den over every pair: templates weighted by their effect; the headline,
    :data:`HEADLINE_AGGREGATE`) and ``template == "template mean"`` (the unweighted mean of the templates' curves, the
    paper's aggregate). Intervals resample clean prefixes within each template (:func:`bootstrap_unit`).

    Flags: ``below_floor`` (|effect| < ``floor``: kept out of the across-template rows), ``faithfulness_above_1``
    (at some size below the full circuit the faithfulness interval lies wholly above 1), ``completeness_below_0``
    (the completeness interval wholly below 0 at some size), ``falls_back@F>=t`` (the curve drops under t again
    after first reaching it: the two crossing rules differ)."""
    rows = []
    alpha = (1 - confidence) / 2
    for key, items in _groups(result).items():
        base = dict(zip(KEYS, key))
        for cv in _curves(items, floor, aggregates):
            grid = cv.k < ALL
            sizes = cv.size[grid]
            den = cv.m_M - cv.m_0
            kw = dict(n_boot=n_boot, seed=seed, strata=cv.strata, clusters=cv.clusters, aggregate=cv.aggregate,
                      confidence=confidence)
            f = stats.bootstrap_ratio(cv.m_C[grid] - cv.m_0, den, **kw)
            c = stats.bootstrap_ratio(cv.m_Cbar[grid] - cv.m_0, den, **kw)
            eff = stats.bootstrap_ratio(den, np.ones_like(den), **kw)
            any_size = bool(len(sizes))
            row = {**base, "template": cv.template, "n_test": len(cv.m_M), "n_clusters": _n_clusters(cv),
                   "effect": float(eff["estimate"]), "effect_lo": float(eff["lo"]), "effect_hi": float(eff["hi"]),
                   "below_floor": bool(cv.below), "templates": 1 if cv.strata is None else len(set(cv.strata.tolist())),
                   "largest_size_tested": float(sizes.max()) if any_size else np.nan,
                   "max_faithfulness": float(np.nanmax(f["estimate"])) if any_size else np.nan,
                   "max_faithfulness_lo": float(np.nanmax(f["lo"])) if any_size else np.nan,
                   "min_completeness": float(np.nanmin(c["estimate"])) if any_size else np.nan,
                   "min_completeness_hi": float(np.nanmin(c["hi"])) if any_size else np.nan,
                   "faithfulness_above_1": any_size and stats.interval_beyond(f["lo"], f["hi"], above=1.0),
                   "completeness_below_0": any_size and stats.interval_beyond(c["lo"], c["hi"], below=0.0)}
            for thr in thresholds:
                for rule in stats.CROSSING_RULES:
                    col = f"@F>={thr}|{rule}"
                    if any_size:
                        s = stats.sizes_at_threshold(sizes, f, thr, rule=rule, confidence=confidence)
                        comp = np.array([_at(sizes, cs, ks) for cs, ks in zip(c["samples"], s["per"])])
                        ok = comp[np.isfinite(comp)]
                        vals = {f"k{col}": s["estimate"], f"k{col}_lo": s["lo"], f"k{col}_hi": s["hi"],
                                f"reached{col}": s["reached"],
                                f"completeness{col}": _at(sizes, c["estimate"], s["estimate"]),
                                f"completeness{col}_lo": float(np.quantile(ok, alpha)) if len(ok) else np.nan,
                                f"completeness{col}_hi": float(np.quantile(ok, 1 - alpha)) if len(ok) else np.nan}
                    else:
                        vals = {f"{name}{col}{end}": np.nan for name, ends in (("k", ("", "_lo", "_hi")), (
                            "reached", ("",)), ("completeness", ("", "_lo", "_hi"))) for end in ends}
                    row.update(vals)
                    if rule == HEADLINE_CROSSING:
                        row.update({name.replace(f"|{rule}", ""): v for name, v in vals.items()})
                row[f"falls_back@F>={thr}"] = stats.falls_back(f["estimate"], thr) if any_size else False
            rows.append(row)
    return pd.DataFrame(rows)


def add_latent_counts(headline: pd.DataFrame, attributions: dict, *, thresholds=THRESHOLDS) -> pd.DataFrame:
    """For SAE bases, how many of a circuit's nodes are latents rather than error nodes: ``latents@F>=t`` (with
    ``_lo`` / ``_hi``) is the size at faithfulness t minus the error nodes among that many top-ranked nodes (each
    template's own ranking; the pooled line averages the templates it pools). NaN for the other bases."""
    out = headline.copy()
    for t in thresholds:
        for suffix in ("", "_lo", "_hi"):
            out[f"latents@F>={t}{suffix}"] = np.nan
    cum_errors: dict[tuple, np.ndarray] = {}  # (template, method, setting, basis) -> errors among the top k, k = 1..
    for (template, method, setting), att in attributions.items():
        for basis in att.scores:
            if basis.startswith("sae_"):
                v = att[basis][0].abs()
                order = np.argsort(-v.flatten().double().numpy(), kind="stable")
                cum_errors[(template, method, setting, basis)] = np.cumsum(order % v.shape[-1] == v.shape[-1] - 1)

    def latents(cum, k):
        if not np.isfinite(k):
            return k
        n = int(min(max(round(k), 1), len(cum)))
        return float(n - cum[n - 1])

    for i, r in out.iterrows():
        if not str(r.basis).startswith("sae_"):
            continue
        if r.template in AGGREGATE_ROWS.values():
            keep = out[(out.method == r.method) & (out.setting == r.setting) & (out.basis == r.basis)
                       & (out.eval_metric == r.eval_metric) & (out.ablation == r.ablation)
                       & ~out.template.isin(list(AGGREGATE_ROWS.values())) & ~out.below_floor.astype(bool)].template
            curves = [cum_errors.get((t, r.method, r.setting, r.basis)) for t in keep]
        else:
            curves = [cum_errors.get((r.template, r.method, r.setting, r.basis))]
        if not curves or any(c is None for c in curves):
            continue
        for t in thresholds:
            for suffix in ("", "_lo", "_hi"):
                out.at[i, f"latents@F>={t}{suffix}"] = float(np.mean([latents(c, r[f"k@F>={t}{suffix}"]) for c in curves]))
    return out


def aggregate_view(headline: pd.DataFrame, *, method: str = "relp", basis: str = "mlp_acts", setting: str = "paired",
                   eval_metric: str = "logit_diff", thresholds=THRESHOLDS) -> pd.DataFrame:
    """k at each threshold across templates, by aggregate (rows: "pooled", "template mean") and crossing rule
    (columns), as "k [lo, hi]"; the headline cell (:data:`HEADLINE_AGGREGATE`, :data:`HEADLINE_CROSSING`) is marked
    with "(headline)"."""
    sel = headline[(headline.method == method) & (headline.basis == basis) & (headline.setting == setting)
                   & (headline.eval_metric == eval_metric)]
    rows = []
    for aggregate, template in AGGREGATE_ROWS.items():
        r = sel[sel.template == template]
        if not len(r):
            continue
        r = r.iloc[0]
        row = {"aggregate": template, "templates": int(r.templates), "n_clusters": int(r.n_clusters)}
        for t in thresholds:
            for rule in stats.CROSSING_RULES:
                col = f"k@F>={t}|{rule}"
                cell = fmt_size(r[col], r[f"{col}_lo"], r[f"{col}_hi"])
                headline_cell = aggregate == HEADLINE_AGGREGATE and rule == HEADLINE_CROSSING
                row[f"k@F≥{t:g} ({rule})"] = cell + (" (headline)" if headline_cell else "")
        rows.append(row)
    return pd.DataFrame(rows)


def pooled_summary(headline: pd.DataFrame, *, method: str = "relp", basis: str = "mlp_acts",
                   setting: str = "paired", thresholds=THRESHOLDS) -> str:
    """One Markdown sentence from the pooled line of ``headline`` (numbers rendered from the table)."""
    sel = headline[(headline.method == method) & (headline.basis == basis) & (headline.setting == setting)
                   & (headline.eval_metric == "logit_diff") & (headline.template == POOLED)]
    if not len(sel):
        return f"No pooled line for {method} on {basis} ({setting})."
    r = sel.iloc[0]
    out = (f"Pooled over {int(r.templates)} templates ({int(r.n_test)} test pairs; templates with |m(M) − m(∅)| < "
           f"{EFFECT_FLOOR:g} left out), {METHOD_LABELS.get(method, method)} circuits on "
           f"{BASIS_LABELS.get(basis, basis)} reach")
    parts = []
    for t in thresholds:
        parts.append(f"faithfulness {t} at {fmt_size(r[f'k@F>={t}'], r[f'k@F>={t}_lo'], r[f'k@F>={t}_hi'])} nodes "
                     f"(completeness {fmt_num(r[f'completeness@F>={t}'])})")
    return out + " " + " and ".join(parts) + "."


def fmt_num(v, digits: int = 2) -> str:
    return "—" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def cost_table(result: BenchmarkResult) -> pd.DataFrame:
    """Compute seconds per training pair of each attribution method (as measured when computed), and × RelP."""
    att = result.log[result.log.step == "attribution"].copy()
    att["seconds_per_pair"] = att.compute_seconds / att.n
    cost = att.groupby(["model", "method", "setting", "basis"]).seconds_per_pair.mean().reset_index()
    relp = cost[cost.method == "relp"].set_index(["model", "setting", "basis"]).seconds_per_pair
    cost["x_relp"] = [r.seconds_per_pair / relp.get((r.model, r.setting, r.basis), np.nan)
                      for r in cost.itertuples()]
    return cost


def score_tables(attributions: dict, *, methods=("relp",), setting: str = "paired", bases=ALL_BASES,
                 ks=(100, 1000, 10000), bins: int = 60) -> dict[str, pd.DataFrame]:
    """The data of the score-distribution figures, small enough for results/:

    ``histogram``: density of log10 |mean score| per (method, basis), every template's nodes pooled;
    ``concentration``: share of the total |score| held by the top-k nodes, per (method, basis, template) at log-spaced
    k; ``layers``: per (method, basis, k) the fraction of each template's top-k nodes in each layer (pooled over
    templates); ``error_share``: for SAE bases, the share of |score| on error nodes (the last unit)."""
    hist, conc, layers, errors = [], [], [], []
    for method in methods:
        per_basis: dict[str, list] = {}
        for (template, m, s), att in attributions.items():
            if m != method or s != setting:
                continue
            for basis in bases:
                if basis in att.scores:
                    per_basis.setdefault(basis, []).append((template, att[basis][0].abs()))
        for basis, items in per_basis.items():
            allv = torch.cat([v.flatten() for _, v in items]).double().numpy()
            pos = allv[allv > 0]
            if len(pos):
                hi = np.log10(pos.max())
                edges = np.linspace(max(np.log10(pos.min()), hi - 9), hi, bins + 1)
                dens, _ = np.histogram(np.log10(pos), bins=edges, density=True)
                hist += [{"method": method, "basis": basis, "bin_lo": a, "bin_hi": b, "density": d}
                         for a, b, d in zip(edges[:-1], edges[1:], dens)]
            counts = {}
            for template, v in items:
                L, T, U = v.shape
                flat = v.flatten().double().numpy()
                order = np.argsort(-flat, kind="stable")
                cum = np.cumsum(flat[order]) / max(flat.sum(), 1e-300)
                grid = np.unique(np.round(np.logspace(0, np.log10(len(flat)), 60)).astype(int))
                conc += [{"method": method, "basis": basis, "template": template, "k": int(k),
                          "share": float(cum[k - 1])} for k in grid]
                for k in ks:
                    top = order[:min(k, len(order))] // (T * U)
                    c = counts.setdefault(k, np.zeros(L))
                    c += np.bincount(top, minlength=L)[:L]
                if basis.startswith("sae_"):
                    errors.append({"method": method, "basis": basis, "template": template,
                                   "error_share": float(v[..., -1].sum() / max(float(v.sum()), 1e-300))})
            for k, c in counts.items():
                layers += [{"method": method, "basis": basis, "k": k, "layer": i, "fraction": float(x / c.sum())}
                           for i, x in enumerate(c)]
    return {"histogram": pd.DataFrame(hist, columns=["method", "basis", "bin_lo", "bin_hi", "density"]),
            "concentration": pd.DataFrame(conc, columns=["method", "basis", "template", "k", "share"]),
            "layers": pd.DataFrame(layers, columns=["method", "basis", "k", "layer", "fraction"]),
            "error_share": pd.DataFrame(errors, columns=["method", "basis", "template", "error_share"])}


def concentration_summary(concentration: pd.DataFrame, ks=(10, 100, 1000)) -> pd.DataFrame:
    """Share of the total |score| held by the top-k nodes per (method, basis): the median over templates."""
    rows = []
    for (method, basis), g in concentration.groupby(["method", "basis"]):
        row = {"method": method, "basis": basis}
        for k in ks:
            row[f"top {k}"] = float(np.median([np.interp(k, gt.k, gt.share) for _, gt in g.groupby("template")]))
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------------------- data seeds


SEED_COLUMNS = ("k@F>=0.8", "k@F>=0.9", "completeness@F>=0.8", "completeness@F>=0.9", "effect")


def seed_headlines(model, seeds, *, directory, templates=TEMPLATES, n_train: int = 300, n_test: int = 40,
                   run: Run | None = None, log_sizes=LOG_SIZES, linear_sizes=LINEAR_SIZES, cache_dir=None,
                   refresh: bool = False, n_boot: int = N_BOOT, seed: int = SEED,
                   floor: float = EFFECT_FLOOR, split_rule: str = DEFAULT_SPLIT_RULE,
                   refine: Refine | None = None) -> pd.DataFrame:
    """The headline table of ``run`` (default: RelP on the neurons, paired) once per data seed: each seed is a
    different draw and noun-group split of the generator (:func:`neuronlib.data.sva.write_sva_files` under
    ``split_rule``), written to ``directory/seed{s}`` and loaded as community-format files. Returns the rows of
    :func:`headline_table` with a ``data_seed`` column; :func:`seed_summary` turns them into median [min, max] per
    template. Below :data:`~neuronlib.data.sva.MIN_TEST_PREFIXES` test pairs (a smoke run) the files are written with
    ``n_test`` distinct prefixes, the most there can be. ``refine``: as in :func:`run_benchmark` (these curves feed
    only the seed table, so a coarse-to-fine sweep loses nothing drawn)."""
    from ..data.sva import write_sva_files

    if n_test < MIN_TEST_PREFIXES:
        logger.warning("n_test = %d: the data seeds' test splits hold fewer than %d clean prefixes", n_test,
                       MIN_TEST_PREFIXES)

    run = run or Run("relp", ("mlp_acts",), linear=("mlp_acts",))
    frames = []
    for s in seeds:
        folder = Path(directory) / f"seed{s}"
        if not all((folder / f"{t}_{split}.jsonl").exists() for t in templates for split in ("train", "test")):
            write_sva_files(folder, n_train=n_train, n_test=n_test, seed=int(s), tokenizer=model.tokenizer,
                            split_rule=split_rule, min_test_prefixes=min(n_test, MIN_TEST_PREFIXES))
        data = load_templates(model, templates, n_train=n_train, n_test=n_test, data_dir=folder)
        result = run_benchmark(model, data, plan=[run], log_sizes=log_sizes, linear_sizes=linear_sizes,
                               cache_dir=cache_dir, refresh=refresh, refine=refine)
        frames.append(headline_table(result, n_boot=n_boot, seed=seed, floor=floor).assign(data_seed=int(s)))
    return pd.concat(frames, ignore_index=True)


def seed_summary(per_seed: pd.DataFrame, columns=SEED_COLUMNS) -> pd.DataFrame:
    """Median [min, max] over data seeds of each headline column, per (method, basis, setting, eval_metric,
    template). A seed where the threshold is not reached counts as +inf for the k columns (so the median can be
    "not reached"); ``seeds_reached@F>=t`` says in how many it was."""
    keys = ["model", "method", "basis", "setting", "ablation", "eval_metric", "template"]
    rows = []
    for key, g in per_seed.groupby(keys, sort=False):
        row = dict(zip(keys, key), seeds=int(g.data_seed.nunique()),
                   data_seeds=",".join(str(x) for x in sorted(g.data_seed.unique())))
        for col in columns:
            v = g[col].to_numpy(dtype=float)
            if col.startswith("k@"):
                row[f"seeds_reached@{col[2:]}"] = int(np.isfinite(v).sum())
                v = np.where(np.isfinite(v), v, np.inf)
            else:
                v = v[np.isfinite(v)]
            row[f"{col}_median"] = float(np.median(v)) if len(v) else np.nan
            row[f"{col}_min"] = float(np.min(v)) if len(v) else np.nan
            row[f"{col}_max"] = float(np.max(v)) if len(v) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def seed_view(summary: pd.DataFrame, thresholds=THRESHOLDS) -> pd.DataFrame:
    """:func:`seed_summary` for reading: per template, k at each threshold as "median [min, max]" over the seeds."""
    rows = []
    for r in summary.to_dict("records"):
        row = {"method": METHOD_LABELS.get(r["method"], r["method"]), "basis": r["basis"], "template": r["template"],
               "seeds": r["seeds"]}
        for t in thresholds:
            row[f"k @ F≥{t}: median [min, max]"] = fmt_size(r[f"k@F>={t}_median"], r[f"k@F>={t}_min"],
                                                              r[f"k@F>={t}_max"])
            row[f"seeds reaching {t}"] = r[f"seeds_reached@F>={t}"]
        row["m(M) − m(∅): median [min, max]"] = (f"{fmt_num(r['effect_median'])} [{fmt_num(r['effect_min'])}, "
                                                 f"{fmt_num(r['effect_max'])}]")
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------------------- IG check


def topk_overlap(a: Attribution, b: Attribution, site: str, k: int) -> float:
    """|top-k(a) ∩ top-k(b)| / k for one site's nodes (ranked by |mean score|)."""
    ta = set(map(tuple, a.top(k, sites=(site,))[["layer", "position", "unit"]].itertuples(index=False)))
    tb = set(map(tuple, b.top(k, sites=(site,))[["layer", "position", "unit"]].itertuples(index=False)))
    return len(ta & tb) / max(1, min(k, len(ta)))


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a.flatten().numpy(), b.flatten().numpy()).statistic)


def compare_methods(model, td: TemplateData, *, methods=("ig", IG_METHOD, "relp"), site: str = "mlp_acts",
                    n: int = 4, ks=(10, 100, 1000), ig_steps: int = 10, cache_dir=None, refresh: bool = False,
                    batch_size: int = 16):
    """Attribute the first ``n`` training pairs of one template with several methods on one site (paired) and
    compare the node rankings: Spearman correlation over all nodes and top-k overlap, pair by pair of methods.
    Returns (comparison frame, cost frame with seconds per pair, {method: mean Attribution})."""
    directory = Path(cache_dir) if cache_dir is not None else None
    atts, costs = {}, []
    for method in methods:
        stored, parts, step = cached_attribution(model, td.template, td, Run(method, (site,), n_train=n), (site,),
                                                 ig_steps=ig_steps, batch_size=batch_size, directory=directory,
                                                 refresh=refresh)
        atts[method] = stored["mean"]
        costs.append({"method": method, "n": parts["n_train"], "cached": step["cached"],
                      "seconds_per_pair": step["compute_seconds"] / parts["n_train"]})
    rows = []
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            row = {"a": a, "b": b, "spearman": spearman(atts[a][site][0].abs(), atts[b][site][0].abs())}
            for k in ks:
                row[f"top{k}_overlap"] = topk_overlap(atts[a], atts[b], site, k)
            rows.append(row)
    return pd.DataFrame(rows), pd.DataFrame(costs), atts


IG_VARIANTS = {"ig": "per-site IG", IG_METHOD: "IG on inputs"}


def ig_check(model, data: dict[str, TemplateData], *, templates=TEMPLATES, n: int = 16, site: str = "mlp_acts",
             ks=(10, 100), thresholds=(0.8,), log_sizes=LOG_SIZES, linear_sizes=LINEAR_SIZES, cache_dir=None,
             refresh: bool = False, n_boot: int = N_BOOT, seed: int = SEED, floor: float = EFFECT_FLOOR,
             log=None, refine: Refine | None = None) -> tuple[pd.DataFrame, BenchmarkResult]:
    """Per-site IG (the paper's "ig") against IG on the inputs ("ig-inputs", the benchmark's IG rows) on the first
    ``n`` training pairs of each template, evaluated through :func:`run_benchmark` on the template's test pairs.

    Returns (a tidy table, the benchmark result of the two runs). The table has one row per (template, IG variant),
    the templates' rows followed by the across-template rows of :func:`headline_table` ("pooled", "template mean"):
    ``ig_variant`` names the variant ("per-site IG" / "IG on inputs", :data:`IG_VARIANTS`), ``method`` its method
    name; k at each faithfulness threshold (headline crossing rule) with its interval (clusters = clean prefixes),
    the seconds per training pair, and the two variants' agreement on the template (the same in both rows): Spearman
    over all nodes and top-k overlap of the rankings (NaN on the across-template rows). ``refine``: as in
    :func:`run_benchmark` (no curve of this check is drawn)."""
    sub = {t: data[t] for t in templates if t in data}
    if not sub:
        raise ValueError(f"none of {templates} in the data ({list(data)})")
    plan = [Run(method, (site,), n_train=n, linear=(site,)) for method in IG_VARIANTS]
    result = run_benchmark(model, sub, plan=plan, log_sizes=log_sizes, linear_sizes=linear_sizes,
                           cache_dir=cache_dir, refresh=refresh, log=log, refine=refine)
    head = headline_table(result, thresholds=thresholds, n_boot=n_boot, seed=seed, floor=floor)
    cost = result.log[result.log.step == "attribution"].set_index(["template", "method"])
    agree = {}
    for t in sub:
        a, b = result.attributions[(t, "ig", "paired")], result.attributions[(t, IG_METHOD, "paired")]
        agree[t] = {"spearman": spearman(a[site][0].abs(), b[site][0].abs()),
                    **{f"top{k}_overlap": topk_overlap(a, b, site, k) for k in ks}}
    rows = []
    order = {t: i for i, t in enumerate((*sub, *AGGREGATE_ROWS.values()))}
    n_train = {t: min(n, len(d.train)) for t, d in sub.items()}
    for r in head.sort_values("template", key=lambda c: c.map(order), kind="stable").to_dict("records"):
        t, method = r["template"], r["method"]
        row = {"model": model.name, "template": t, "ig_variant": IG_VARIANTS[method], "method": method, "site": site,
               "n_train": n_train.get(t, min(n_train.values())),
               "n_test": r["n_test"], "n_clusters": r["n_clusters"], "effect": r["effect"],
               "below_floor": r["below_floor"]}
        for thr in thresholds:
            for end in ("", "_lo", "_hi"):
                row[f"k@F>={thr}{end}"] = r[f"k@F>={thr}{end}"]
            row[f"reached@F>={thr}"] = r[f"reached@F>={thr}"]
        row["seconds_per_pair"] = (float(cost.loc[(t, method)].compute_seconds / cost.loc[(t, method)].n)
                                   if t in sub else np.nan)
        row.update(agree.get(t, {"spearman": np.nan, **{f"top{k}_overlap": np.nan for k in ks}}))
        rows.append(row)
    return pd.DataFrame(rows), result


# ------------------------------------------------------------------------------------------------------------- results


def statistics_parameters(result: BenchmarkResult, *, n_boot: int = N_BOOT, seed: int = SEED,
                          floor: float = EFFECT_FLOOR) -> dict:
    """What a table's intervals and headline choices were made with, for its sidecar: resamples, seed, effect floor,
    ``bootstrap_unit`` (:func:`bootstrap_unit`), the across-template rows per aggregate and the crossing rules, and
    which of them the headline columns hold. :func:`write_tables` records it; a notebook writing another table of
    ``result`` (e.g. :func:`ig_check`'s, the data seeds') passes it too."""
    return {"n_boot": n_boot, "seed": seed, "effect_floor": floor, "bootstrap_unit": bootstrap_unit(result),
            "aggregates": dict(AGGREGATE_ROWS), "headline_aggregate": HEADLINE_AGGREGATE,
            "crossing_rules": list(stats.CROSSING_RULES), "headline_crossing": HEADLINE_CROSSING}


def write_tables(result: BenchmarkResult, directory, *, prefix: str = "sva", suffix: str = "",
                 parameters: dict | None = None, score_methods=("relp",), n_boot: int = N_BOOT, seed: int = SEED,
                 floor: float = EFFECT_FLOOR) -> dict[str, pd.DataFrame]:
    """Write the study's tidy tables to ``directory`` with provenance sidecars (:func:`~neuronlib.paper.results.
    write_table`): ``{prefix}_curves{suffix}`` (figures 1, 2, 3, 5, A), ``{prefix}_headline{suffix}``, the score
    tables ``{prefix}_scores_{histogram,concentration,layers,error_share}{suffix}`` (figures 4, 2a), ``{prefix}_cost``,
    ``{prefix}_accuracy`` and ``{prefix}_steps`` (what each step cost). Returns {name: frame}."""
    from .results import write_table

    model = ", ".join(sorted(set(result.curves.model)))
    params = {**statistics_parameters(result, n_boot=n_boot, seed=seed, floor=floor), **result.options,
              **(parameters or {})}
    tables = {f"{prefix}_curves{suffix}": curve_table(result, n_boot=n_boot, seed=seed, floor=floor),
              f"{prefix}_headline{suffix}": add_latent_counts(
                  headline_table(result, n_boot=n_boot, seed=seed, floor=floor), result.attributions),
              f"{prefix}_cost{suffix}": cost_table(result), f"{prefix}_accuracy{suffix}": result.accuracy,
              f"{prefix}_steps{suffix}": result.log.drop(columns=["seconds", "cached"], errors="ignore")}
    for kind, frame in score_tables(result.attributions, methods=score_methods).items():
        tables[f"{prefix}_scores_{kind}{suffix}"] = frame
    descriptions = {
        "curves": "faithfulness / completeness per (curve, template, size) and pooled, 95% bootstrap over clean "
                  "prefixes (bootstrap_unit) within each template",
        "headline": "k at faithfulness 0.8 / 0.9 (log-linear interpolation) with bootstrap intervals, completeness "
                    "there, m(M) - m(empty), flags; k@F>=t|first = first crossing, k@F>=t|stays_above = stays at or above "
                    "t from there on, bare k@F>=t = headline_crossing; template 'pooled' = pairs of templates above the "
                    "effect floor summed (effect-weighted), 'template mean' = unweighted mean of their curves; "
                    "F>1 / C<0 flags from intervals wholly beyond 1 / 0; SAE bases: latents@F>=t = that size without "
                    "the error nodes among its nodes",
        "cost": "compute seconds per training pair per attribution method", "accuracy": "the model's own accuracy",
        "steps": "every attribution and evaluation step with the compute seconds it took when it was computed "
                 "(the same on a re-run that reads it from the cache)",
    }
    for name, frame in tables.items():
        kind = name[len(prefix) + 1:len(name) - len(suffix) if suffix else None]
        write_table(frame, name, directory, parameters=params, model=model,
                    description=descriptions.get(kind, f"score table: {kind}"))
    return tables


def headline_view(headline: pd.DataFrame, *, methods=None, bases=None, setting: str = "paired",
                  eval_metric: str = "logit_diff", templates=None) -> pd.DataFrame:
    """The headline table for reading: k at each threshold as "k [lo, hi]", completeness there, the effect with its
    interval and the flags, indexed by (method, basis, template)."""
    sel = headline[(headline.setting == setting) & (headline.eval_metric == eval_metric)]
    if methods is not None:
        sel = sel[sel.method.isin(methods)]
    if bases is not None:
        sel = sel[sel.basis.isin(bases)]
    if templates is not None:
        sel = sel[sel.template.isin(templates)]
    thresholds = sorted(float(c[5:]) for c in sel.columns if c.startswith("k@F>=") and c[5:].replace(".", "").isdigit())
    rows = []
    for r in sel.to_dict("records"):
        row = {"method": METHOD_LABELS.get(r["method"], r["method"]), "basis": r["basis"], "template": r["template"]}
        for t in thresholds:
            row[f"k@F≥{t:g}"] = fmt_size(r[f"k@F>={t:g}"], r[f"k@F>={t:g}_lo"], r[f"k@F>={t:g}_hi"])
            row[f"C@F≥{t:g}"] = fmt_num(r[f"completeness@F>={t:g}"])
        if any(str(b).startswith("sae_") for b in sel.basis):  # SAE bases: the same circuits without error nodes
            for t in thresholds:
                col = f"latents@F>={t:g}"
                row[f"latents@F≥{t:g}"] = fmt_size(r[col], r[f"{col}_lo"], r[f"{col}_hi"]) if col in r else "—"
        row["m(M)−m(∅)"] = f"{r['effect']:.2f} [{r['effect_lo']:.2f}, {r['effect_hi']:.2f}]"
        row["flags"] = ", ".join(headline_flags(r, thresholds))
        rows.append(row)
    if not rows:
        return pd.DataFrame(columns=["method", "basis", "template"]).set_index(["method", "basis", "template"])
    return pd.DataFrame(rows).set_index(["method", "basis", "template"])
