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
over the pairs (:mod:`neuronlib.stats`); the across-template line pools the pairs of every template whose effect
|m(M) − m(∅)| is above :data:`EFFECT_FLOOR`. Sizes at a faithfulness threshold are interpolated log-linearly on the
sweep's grid.

Every attribution and evaluation is stored with :func:`neuronlib.cache.cached` and re-used on a re-run; a changed
input (model, data, sizes, SAEs) changes the key. The tables (:func:`curve_table`, :func:`headline_table`,
:func:`score_tables`) are what ``results/`` holds and what :mod:`neuronlib.paper.figures` draws.

Usage::

    model = neuronlib.load_model("smollm2-135m")
    data = load_templates(model, n_train=300, n_test=40)
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
from ..data.sva import TEMPLATES, load_sva
from ..evaluation import evaluate_circuit
from .style import BASIS_LABELS, METHOD_LABELS, fmt_size  # noqa: F401  (notebooks read them as sva.*)

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
# Part of every cache key: bump CACHE_VERSION when the attribution changes, EVAL_VERSION when the evaluation does.
CACHE_VERSION = 1
EVAL_VERSION = 2
ALL = 10**12  # "every node of the basis": the requested size of the full circuit (capped to the basis's node count)
POOLED = "pooled"

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
                   strict: bool = True) -> dict[str, TemplateData]:
    """Load ``n_train`` training and ``n_test`` test pairs per template, filtered for ``model``'s tokenizer.

    ``load_sva`` keeps single-token answers and the file's most common prefix length, so positions align; with a
    tokenizer that adds <bos> (Gemma) every prompt is one token longer, which changes nothing else. ``data_dir``: a
    directory of community-format ``{template}_{train,test}.jsonl`` (or ``.json``) files, e.g. Marks et al.'s
    release (``templates=None``: every template found there). ``strict=False`` keeps a template with fewer usable
    pairs than asked (a warning says how many); the drops per reason are in ``TemplateData.dropped``.
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
            train = load_sva(template, split="train", n=n_train, **kw)
            test = load_sva(template, split="test", n=n_test, **kw)
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
                     "test_pairs": len(d.test), **drops,
                     "example": d.test[0]["clean_prefix"] + " →" + d.test[0]["clean_answer"]})
    return pd.DataFrame(rows)


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
    {"k", "size": [S], "m_C", "m_Cbar": [S, n], "m_M", "m_empty": [n]} the intervals resample.
    ``attributions``: mean scores per (template, method, setting) (an :class:`Attribution` with one example).
    ``log``: what each step cost and whether it came from the cache."""

    curves: pd.DataFrame
    attributions: dict[tuple[str, str, str], Attribution]
    log: pd.DataFrame
    accuracy: pd.DataFrame
    examples: dict = field(default_factory=dict)

    def __add__(self, other: "BenchmarkResult") -> "BenchmarkResult":
        atts = dict(self.attributions)
        for key, att in other.attributions.items():
            atts[key] = _merge(atts.get(key), att)
        return BenchmarkResult(pd.concat([self.curves, other.curves], ignore_index=True), atts,
                               pd.concat([self.log, other.log], ignore_index=True),
                               pd.concat([self.accuracy, other.accuracy], ignore_index=True)
                               .drop_duplicates(["model", "template", "method", "setting", "n"]),
                               {**self.examples, **other.examples})


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
    parts = dict(benchmark=CACHE_VERSION, model=model.name, template=template, method=run.method,
                 setting=run.setting, metric=run.metric, baseline=run.baseline, sites=tuple(sites),
                 train=cache.data_hash(train), n_train=n_train,
                 ig_steps=ig_steps if run.method.startswith("ig") else None)
    sae = _sae_part(model, sites)
    if sae is not None:
        parts["saes"] = sae
    key = cache.cache_key(**parts)
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
) -> BenchmarkResult:
    """Run ``plan`` (default: :func:`default_plan`) on every template of ``data``; see the module docstring.

    SAE bases need their SAEs attached to ``model`` first (:func:`neuronlib.paper.sae_baselines.attach_sae_baselines`).
    Results are cached under ``cache_dir`` (default: ``$NEURONLIB_CACHE/results``); ``refresh=True`` recomputes.
    """
    plan = default_plan() if plan is None else list(plan)
    directory = Path(cache_dir) if cache_dir is not None else None
    say = log or logger.info
    curves, steps, attributions, accuracy, examples = [], [], {}, [], {}
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
                actual = sorted({min(k, total) for k in requested})
                for eval_metric, ablation in run.evaluations():
                    test = td.test if eval_metric == "logit_diff" else unpaired(td.test)
                    eparts = dict(parts, eval_version=EVAL_VERSION, basis=basis, ablation=ablation,
                                  eval_metric=eval_metric, sizes=actual, test=cache.data_hash(test))
                    ekey = cache.cache_key(**eparts)
                    t0 = time.perf_counter()
                    evaluated, ehit = cache.cached_entry("sva_eval", ekey, _timed(lambda: _evaluate(
                        model, mean, test, basis, actual, ablation, eval_metric, eval_batch_size)),
                        refresh=refresh, directory=directory)
                    frame, ex = evaluated["value"]["frame"], evaluated["value"]["examples"]
                    steps.append({"model": model.name, "template": template, "step": "evaluation",
                                  "method": run.method, "setting": run.setting, "basis": basis, "ablation": ablation,
                                  "eval_metric": eval_metric, "n": len(test), "cached": ehit,
                                  "seconds": time.perf_counter() - t0, "compute_seconds": evaluated["seconds"]})
                    say(f"{template:>9} {run.method:>12} {run.setting:>8} {basis:>11} {eval_metric}/{ablation} "
                        f"{len(actual)} sizes " + ("(cached)" if ehit else f"{evaluated['seconds']:.0f} s"))
                    row_of = {int(s): i for i, s in enumerate(frame["size"])}
                    rows = [row_of[min(k, total)] for k in requested]
                    examples[(template, model.name, run.method, basis, run.setting, ablation, eval_metric)] = {
                        "k": np.array(requested, dtype=np.int64), "size": np.array([min(k, total) for k in requested]),
                        "m_C": ex["m_C"][rows], "m_Cbar": ex["m_Cbar"][rows], "m_M": ex["m_M"][0],
                        "m_empty": ex["m_empty"][0], "n_train": n_train, "total_nodes": total}
                    for k, i in zip(requested, rows):
                        row = frame.iloc[i]
                        curves.append({
                            "model": model.name, "template": template, "method": run.method, "basis": basis,
                            "setting": run.setting, "ablation": ablation, "eval_metric": eval_metric, "k": k,
                            "size": min(k, total), "total_nodes": total, "faithfulness": row.faithfulness,
                            "completeness": row.completeness, "m_C": row.m_C, "m_Cbar": row.m_Cbar, "m_M": row.m_M,
                            "m_empty": row.m_empty, "threshold": row.threshold, "n_train": n_train,
                            "n_test": len(test)})
    return BenchmarkResult(pd.DataFrame(curves, columns=COLUMNS), attributions,
                           pd.DataFrame(steps), pd.DataFrame(accuracy).drop_duplicates(
                               ["model", "template", "method", "setting", "n"]), examples)


def _merge(old: Attribution | None, new: Attribution) -> Attribution:
    """Two runs of one (template, method, setting) on different bases: one Attribution with all their sites."""
    if old is None:
        return new
    return replace(old, scores={**old.scores, **new.scores})


# ------------------------------------------------------------------------------------------------------------- tables


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


def _effect(e) -> float:
    return float(np.mean(e["m_M"] - e["m_empty"]))


def curve_table(result: BenchmarkResult, *, n_boot: int = N_BOOT, seed: int = SEED, floor: float = EFFECT_FLOOR,
                confidence: float = stats.CONFIDENCE) -> pd.DataFrame:
    """Faithfulness and completeness per (curve, template, size) with bootstrap intervals over the test pairs, and
    a ``template == "pooled"`` curve per curve key: the pairs of every template above the effect floor pooled,
    Σ(m(C) − m(∅)) / Σ(m(M) − m(∅)), resampled within each template. Tidy: the table of figures 1, 2, 3, 5 and A."""
    rows = []
    groups: dict[tuple, list] = {}
    for (template, *key), e in result.examples.items():
        groups.setdefault(tuple(key), []).append((template, e))
    for key, items in groups.items():
        base = dict(zip(KEYS, key))
        curves = [(t, e["k"], e["size"], e["m_C"], e["m_Cbar"], e["m_M"], e["m_empty"], None, abs(_effect(e)) < floor,
                   len(e["m_M"]), e["total_nodes"]) for t, e in items]
        kept = [e for t, e in items if abs(_effect(e)) >= floor]
        if kept:
            k, size, m_C, m_Cbar, m_M, m_0, strata = _pool(kept)
            curves.append((POOLED, k, size, m_C, m_Cbar, m_M, m_0, strata, False, len(m_M), np.nan))
        for t, k, size, m_C, m_Cbar, m_M, m_0, strata, below, n, total in curves:
            den = m_M - m_0
            f = stats.bootstrap_ratio(m_C - m_0, den, n_boot=n_boot, seed=seed, strata=strata, confidence=confidence)
            c = stats.bootstrap_ratio(m_Cbar - m_0, den, n_boot=n_boot, seed=seed, strata=strata,
                                      confidence=confidence)
            for i in range(len(k)):
                rows.append({**base, "template": t, "k": int(k[i]), "size": float(size[i]), "total_nodes": total,
                             "faithfulness": float(f["estimate"][i]), "faithfulness_lo": float(f["lo"][i]),
                             "faithfulness_hi": float(f["hi"][i]), "completeness": float(c["estimate"][i]),
                             "completeness_lo": float(c["lo"][i]), "completeness_hi": float(c["hi"][i]),
                             "effect": float(den.mean()), "below_floor": bool(below), "n_test": int(n),
                             "templates": len(set(strata.tolist())) if strata is not None else 1})
    cols = ["model", "template", "method", "basis", "setting", "ablation", "eval_metric", "k", "size", "total_nodes",
            "faithfulness", "faithfulness_lo", "faithfulness_hi", "completeness", "completeness_lo",
            "completeness_hi", "effect", "below_floor", "n_test", "templates"]
    return pd.DataFrame(rows, columns=cols)


def _at(sizes, values, size) -> float:
    """``values`` at ``size``, interpolated log-linearly between grid points (NaN outside the grid)."""
    if not np.isfinite(size):
        return float("nan")
    return float(np.interp(np.log(size), np.log(sizes), values, left=np.nan, right=np.nan))


def headline_table(result: BenchmarkResult, *, thresholds=THRESHOLDS, n_boot: int = N_BOOT, seed: int = SEED,
                   floor: float = EFFECT_FLOOR, confidence: float = stats.CONFIDENCE) -> pd.DataFrame:
    """Per (curve, template) and pooled: the effect m(M) − m(∅) with its interval, and for each threshold t the
    circuit size k at faithfulness t (log-linear interpolation on the grid, full circuit excluded) with its bootstrap
    interval, the fraction of resamples that reach t, and the completeness there (interpolated the same way, with an
    interval from the same resamples). Flags: ``below_floor`` (|effect| < ``floor``: kept out of the pooled line),
    ``faithfulness_above_1`` (some circuit below the full one has faithfulness > 1), ``completeness_below_0``,
    ``falls_back@F>=t`` (the curve drops under t again after first reaching it)."""
    rows = []
    groups: dict[tuple, list] = {}
    for (template, *key), e in result.examples.items():
        groups.setdefault(tuple(key), []).append((template, e))
    for key, items in groups.items():
        base = dict(zip(KEYS, key))
        entries = []
        for t, e in items:
            entries.append((t, e["k"], e["size"].astype(float), e["m_C"], e["m_Cbar"], e["m_M"], e["m_empty"], None,
                            abs(_effect(e)) < floor))
        kept = [e for t, e in items if abs(_effect(e)) >= floor]
        if kept:
            k, size, m_C, m_Cbar, m_M, m_0, strata = _pool(kept)
            entries.append((POOLED, k, size, m_C, m_Cbar, m_M, m_0, strata, False))
        for t, k, size, m_C, m_Cbar, m_M, m_0, strata, below in entries:
            grid = k < ALL
            sizes = size[grid]
            den = m_M - m_0
            f = stats.bootstrap_ratio(m_C[grid] - m_0, den, n_boot=n_boot, seed=seed, strata=strata,
                                      confidence=confidence)
            c = stats.bootstrap_ratio(m_Cbar[grid] - m_0, den, n_boot=n_boot, seed=seed, strata=strata,
                                      confidence=confidence)
            eff = stats.bootstrap_ratio(den, np.ones_like(den), n_boot=n_boot, seed=seed, strata=strata,
                                        confidence=confidence)
            row = {**base, "template": t, "n_test": len(m_M), "effect": float(eff["estimate"]),
                   "effect_lo": float(eff["lo"]), "effect_hi": float(eff["hi"]), "below_floor": bool(below),
                   "templates": 1 if strata is None else len(set(strata.tolist())),
                   "largest_size_tested": float(sizes.max()) if len(sizes) else np.nan,
                   "max_faithfulness": float(np.nanmax(f["estimate"])) if len(sizes) else np.nan,
                   "min_completeness": float(np.nanmin(c["estimate"])) if len(sizes) else np.nan}
            row["faithfulness_above_1"] = bool(row["max_faithfulness"] > 1)
            row["completeness_below_0"] = bool(row["min_completeness"] < 0)
            alpha = (1 - confidence) / 2
            for thr in thresholds:
                est = stats.size_at_threshold(sizes, f["estimate"], thr) if len(sizes) else np.nan
                per = np.array([stats.size_at_threshold(sizes, s, thr) for s in f["samples"]]) if len(sizes) \
                    else np.array([np.nan])
                reached = np.isfinite(per)
                per_inf = np.where(reached, per, np.inf)
                comp = np.array([_at(sizes, cs, ks) for cs, ks in zip(c["samples"], per)]) if len(sizes) else per
                row[f"k@F>={thr}"] = est
                row[f"k@F>={thr}_lo"] = float(np.quantile(per_inf, alpha, method="lower"))
                row[f"k@F>={thr}_hi"] = float(np.quantile(per_inf, 1 - alpha, method="higher"))
                row[f"reached@F>={thr}"] = float(reached.mean())
                row[f"completeness@F>={thr}"] = _at(sizes, c["estimate"], est) if len(sizes) else np.nan
                ok = comp[np.isfinite(comp)]
                row[f"completeness@F>={thr}_lo"] = float(np.quantile(ok, alpha)) if len(ok) else np.nan
                row[f"completeness@F>={thr}_hi"] = float(np.quantile(ok, 1 - alpha)) if len(ok) else np.nan
                row[f"falls_back@F>={thr}"] = stats.falls_back(f["estimate"], thr)
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
        if r.template == POOLED:
            keep = out[(out.method == r.method) & (out.setting == r.setting) & (out.basis == r.basis)
                       & (out.eval_metric == r.eval_metric) & (out.ablation == r.ablation)
                       & (out.template != POOLED) & ~out.below_floor.astype(bool)].template
            curves = [cum_errors.get((t, r.method, r.setting, r.basis)) for t in keep]
        else:
            curves = [cum_errors.get((r.template, r.method, r.setting, r.basis))]
        if not curves or any(c is None for c in curves):
            continue
        for t in thresholds:
            for suffix in ("", "_lo", "_hi"):
                out.at[i, f"latents@F>={t}{suffix}"] = float(np.mean([latents(c, r[f"k@F>={t}{suffix}"]) for c in curves]))
    return out


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
                   floor: float = EFFECT_FLOOR) -> pd.DataFrame:
    """The headline table of ``run`` (default: RelP on the neurons, paired) once per data seed: each seed is a
    different draw and noun-group split of the generator (:func:`neuronlib.data.sva.write_sva_files`), written to
    ``directory/seed{s}`` and loaded as community-format files. Returns the rows of :func:`headline_table` with a
    ``data_seed`` column; :func:`seed_summary` turns them into median [min, max] per template."""
    from ..data.sva import write_sva_files

    run = run or Run("relp", ("mlp_acts",), linear=("mlp_acts",))
    frames = []
    for s in seeds:
        folder = Path(directory) / f"seed{s}"
        if not all((folder / f"{t}_{split}.jsonl").exists() for t in templates for split in ("train", "test")):
            write_sva_files(folder, n_train=n_train, n_test=n_test, seed=int(s), tokenizer=model.tokenizer)
        data = load_templates(model, templates, n_train=n_train, n_test=n_test, data_dir=folder)
        result = run_benchmark(model, data, plan=[run], log_sizes=log_sizes, linear_sizes=linear_sizes,
                               cache_dir=cache_dir, refresh=refresh)
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


def ig_check(model, data: dict[str, TemplateData], *, templates=("nounpp", "within_rc"), n: int = 16,
             site: str = "mlp_acts", ks=(10, 100), log_sizes=LOG_SIZES, linear_sizes=LINEAR_SIZES,
             cache_dir=None, refresh: bool = False, n_boot: int = N_BOOT, seed: int = SEED,
             log=None) -> tuple[pd.DataFrame, BenchmarkResult]:
    """Per-site IG (the paper's "ig") against IG on the inputs ("ig-inputs") on ``n`` training pairs of each
    template: top-k overlap of the node rankings, Spearman over all nodes, and for each the circuit size at
    faithfulness 0.8 (with its bootstrap interval) on the template's test pairs, through :func:`run_benchmark`.
    Returns (one row per template, the benchmark result of the two runs)."""
    sub = {t: data[t] for t in templates if t in data}
    if not sub:
        raise ValueError(f"none of {templates} in the data ({list(data)})")
    plan = [Run("ig", (site,), n_train=n, linear=(site,)), Run(IG_METHOD, (site,), n_train=n, linear=(site,))]
    result = run_benchmark(model, sub, plan=plan, log_sizes=log_sizes, linear_sizes=linear_sizes,
                           cache_dir=cache_dir, refresh=refresh, log=log)
    head = headline_table(result, thresholds=(0.8,), n_boot=n_boot, seed=seed).set_index(["template", "method"])
    cost = result.log[result.log.step == "attribution"].set_index(["template", "method"])
    rows = []
    for t in sub:
        a, b = result.attributions[(t, "ig", "paired")], result.attributions[(t, IG_METHOD, "paired")]
        row = {"model": model.name, "template": t, "n_train": min(n, len(sub[t].train)), "n_test": len(sub[t].test),
               "spearman": spearman(a[site][0].abs(), b[site][0].abs())}
        for k in ks:
            row[f"top{k}_overlap"] = topk_overlap(a, b, site, k)
        for method, tag in (("ig", "per_site"), (IG_METHOD, "inputs")):
            h = head.loc[(t, method)]
            row[f"k@F>=0.8 {tag}"] = h["k@F>=0.8"]
            row[f"k@F>=0.8 {tag}_lo"] = h["k@F>=0.8_lo"]
            row[f"k@F>=0.8 {tag}_hi"] = h["k@F>=0.8_hi"]
            c = cost.loc[(t, method)]
            row[f"seconds_per_pair {tag}"] = float(c.compute_seconds / c.n)
        rows.append(row)
    return pd.DataFrame(rows), result


# ------------------------------------------------------------------------------------------------------------- results


def write_tables(result: BenchmarkResult, directory, *, prefix: str = "sva", suffix: str = "",
                 parameters: dict | None = None, score_methods=("relp",), n_boot: int = N_BOOT, seed: int = SEED,
                 floor: float = EFFECT_FLOOR) -> dict[str, pd.DataFrame]:
    """Write the study's tidy tables to ``directory`` with provenance sidecars (:func:`~neuronlib.paper.results.
    write_table`): ``{prefix}_curves{suffix}`` (figures 1, 2, 3, 5, A), ``{prefix}_headline{suffix}``, the score
    tables ``{prefix}_scores_{histogram,concentration,layers,error_share}{suffix}`` (figures 4, 2a), ``{prefix}_cost``,
    ``{prefix}_accuracy`` and ``{prefix}_steps`` (what each step cost). Returns {name: frame}."""
    from .results import write_table

    model = ", ".join(sorted(set(result.curves.model)))
    params = {"n_boot": n_boot, "seed": seed, "effect_floor": floor, **(parameters or {})}
    tables = {f"{prefix}_curves{suffix}": curve_table(result, n_boot=n_boot, seed=seed, floor=floor),
              f"{prefix}_headline{suffix}": add_latent_counts(
                  headline_table(result, n_boot=n_boot, seed=seed, floor=floor), result.attributions),
              f"{prefix}_cost{suffix}": cost_table(result), f"{prefix}_accuracy{suffix}": result.accuracy,
              f"{prefix}_steps{suffix}": result.log.drop(columns=["seconds", "cached"], errors="ignore")}
    for kind, frame in score_tables(result.attributions, methods=score_methods).items():
        tables[f"{prefix}_scores_{kind}{suffix}"] = frame
    descriptions = {
        "curves": "faithfulness / completeness per (curve, template, size) and pooled, 95% bootstrap over test pairs",
        "headline": "k at faithfulness 0.8 / 0.9 (log-linear interpolation) with bootstrap intervals, completeness "
                    "there, m(M) - m(empty), flags; template 'pooled' = pairs of templates above the effect floor; "
                    "SAE bases: latents@F>=t = that size without the error nodes among its nodes",
        "cost": "compute seconds per training pair per attribution method", "accuracy": "the model's own accuracy",
        "steps": "every attribution and evaluation step with the compute seconds it took when it was computed "
                 "(the same on a re-run that reads it from the cache)",
    }
    for name, frame in tables.items():
        kind = name[len(prefix) + 1:len(name) - len(suffix) if suffix else None]
        write_table(frame, name, directory, parameters=params, model=model,
                    description=descriptions.get(kind, f"score table: {kind}"))
    return tables


FLAG_NAMES = (("below floor", "below_floor"), ("F>1", "faithfulness_above_1"), ("C<0", "completeness_below_0"),
              ("falls back", "falls_back@F>=0.8"))


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
        row["flags"] = ", ".join(name for name, col in FLAG_NAMES if r.get(col, False))
        rows.append(row)
    if not rows:
        return pd.DataFrame(columns=["method", "basis", "template"]).set_index(["method", "basis", "template"])
    return pd.DataFrame(rows).set_index(["method", "basis", "template"])
