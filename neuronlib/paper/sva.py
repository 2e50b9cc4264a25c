"""The subject–verb agreement benchmark (METHOD.md §4, §5; figures 1, 3, 4 and 5 of §8).

For every template of :mod:`neuronlib.data.sva`, attribute the agreement metric to every node of each basis
(``mlp_acts`` = the neurons, ``mlp_out``, ``attn_out``, ``resid``) with AtP, integrated gradients or RelP on the
training pairs, rank the nodes by |mean score|, and measure the faithfulness and completeness of the top-k circuits
on held-out pairs over a sweep of k.

Two settings:

* **paired**: counterfactual baseline (the patch prefix), metric ``logit(y) - logit(y')``, circuits evaluated under
  mean ablation (per-position mean over the test pairs' patch prompts);
* **unpaired**: zero baseline, metric ``logit(y)``, no counterfactual anywhere; evaluated under zero ablation and under
  mean ablation (per-position mean over the test prompts themselves).

Every attribution (per model, template, method, setting, sites, training data) and every evaluation (per model,
template, method, basis, setting, ablation, sizes, training and test data) is stored with :func:`neuronlib.cache.cached`
and re-used on a re-run; a changed input changes the key. The figure functions take the tidy DataFrames only.

Usage::

    model = neuronlib.load_model("smollm2-135m")
    data = load_templates(model, n_train=100, n_test=40)
    result = run_benchmark(model, data, plan=default_plan(n_ig=16))
    result.curves            # one row per (template, method, basis, setting, ablation, size)
    fig_faithfulness(result.curves)
"""
from __future__ import annotations

import logging

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

import neuronlib

from .. import cache, plotting
from ..attribution import Attribution
from ..data.sva import TEMPLATES, load_sva
from ..evaluation import evaluate_circuit

logger = logging.getLogger(__name__)

BASES = ("mlp_acts", "mlp_out", "attn_out", "resid")
SETTINGS = ("paired", "unpaired")
ABLATIONS = ("mean", "zero")
# The IG variant of the benchmark: integrated gradients on the input embeddings, every node's gradient averaged along
# that one path (10 steps, one batch). Per-site IG ("ig") costs layers x steps passes per site (measured ~75x RelP for
# the neurons alone on SmolLM2; x4 for four bases); see the notebook for the measurement and how the two variants agree.
IG_METHOD = "ig-inputs"
LOG_SIZES = (1, 3, 10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000)
LINEAR_SIZES = tuple(range(25, 401, 25))
# Part of every cache key: bump it when this module changes what it computes.
CACHE_VERSION = 1
ALL = 10**12  # "every node of the basis": the requested size of the full circuit (capped to the basis's node count)

METHOD_LABELS = {
    "atp": "AtP", "relp": "RelP", "relp-no-gate": "RelP, no gate rule", "relp-no-half": "RelP, no half rule",
    "ig": "IG-10 (per site)", "ig-inputs": "IG-10 (inputs)",
}
BASIS_LABELS = {
    "mlp_acts": "MLP activations (neurons)", "mlp_out": "MLP outputs", "attn_out": "attention outputs",
    "resid": "residual stream",
}
METHOD_STYLES = {"relp": "-", "ig-inputs": "-", "ig": "-", "atp": ":", "relp-no-gate": "-.", "relp-no-half": "--"}
COLUMNS = ["model", "template", "method", "basis", "setting", "ablation", "k", "size", "total_nodes", "faithfulness",
           "completeness", "m_C", "m_Cbar", "m_M", "m_empty", "threshold", "n_train", "n_test"]


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


def load_templates(model, templates=TEMPLATES, *, n_train: int = 300, n_test: int = 40,
                   data_dir=None) -> dict[str, TemplateData]:
    """Load ``n_train`` training and ``n_test`` test pairs per template, filtered for ``model``'s tokenizer.

    ``load_sva`` keeps single-token answers and the file's most common prefix length, so positions align; with a
    tokenizer that adds <bos> (Gemma) every prompt is one token longer, which changes nothing else.
    """
    out = {}
    for template in templates:
        train = load_sva(template, tokenizer=model.tokenizer, split="train", n=n_train, data_dir=data_dir)
        test = load_sva(template, tokenizer=model.tokenizer, split="test", n=n_test, data_dir=data_dir)
        if len(train) < n_train or len(test) < n_test:
            raise ValueError(f"{template}: asked for {n_train}/{n_test} pairs, only {len(train)}/{len(test)} usable "
                             f"for {model.name}")
        if train.length != test.length:
            raise ValueError(f"{template}: train prompts have {train.length} tokens, test prompts {test.length}")
        rows = _plain(train.dataset)
        T = model.tokenize([rows[0]["clean_prefix"]])["input_ids"].shape[1]
        out[template] = TemplateData(template, rows, _plain(test.dataset), T,
                                     {"train": dict(train.dropped), "test": dict(test.dropped)})
    return out


def unpaired(records: list[dict]) -> list[dict]:
    """The unpaired view of SVA pairs: the clean prompt and its answer only (no counterfactual anywhere)."""
    return [{"clean_prefix": r["clean_prefix"], "clean_answer": r["clean_answer"]} for r in records]


# ------------------------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Run:
    """One attribution method run on some bases, in one setting, evaluated under some ablations.

    ``n_train``: how many of the training pairs to attribute on (None: all that were loaded); IG is given fewer.
    ``linear``: the bases whose sweep also gets the linear sizes (0-400) for the linear-axis figure.
    """

    method: str
    bases: tuple[str, ...] = BASES
    setting: str = "paired"
    ablations: tuple[str, ...] = ("mean",)
    n_train: int | None = None
    linear: tuple[str, ...] = ()

    def __post_init__(self):
        from ..attribution import METHODS

        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; use one of {METHODS}")
        if self.setting not in SETTINGS:
            raise ValueError(f"unknown setting {self.setting!r}; use one of {SETTINGS}")
        bad = [a for a in self.ablations if a not in ABLATIONS]
        if bad or not self.ablations:
            raise ValueError(f"ablations must be a non-empty subset of {ABLATIONS}, got {self.ablations}")
        bad = [b for b in (*self.bases, *self.linear) if b not in BASES]
        if bad or not self.bases:
            raise ValueError(f"bases must be a non-empty subset of {BASES}, got {self.bases}")

    @property
    def metric(self) -> str:
        return "logit_diff" if self.setting == "paired" else "logit"

    @property
    def baseline(self) -> str:
        return "counterfactual" if self.setting == "paired" else "zero"


def default_plan(*, n_ig: int | None = None, bases=BASES, atp_bases=BASES, unpaired_bases=("mlp_acts", "mlp_out"),
                 unpaired_methods=("relp",), linear=("mlp_acts",)) -> list[Run]:
    """The benchmark of the notebook: RelP, IG and AtP on every basis (paired, mean ablation), the RelP ablations on the
    neurons, and unpaired runs under zero and mean ablation. The linear sizes (0-400) are added to RelP's sweep on
    the ``linear`` bases only."""
    plan = [Run("relp", tuple(bases), linear=tuple(b for b in linear if b in bases)),
            Run(IG_METHOD, tuple(bases), n_train=n_ig)]
    if atp_bases:
        plan.append(Run("atp", tuple(atp_bases)))
    plan += [Run("relp-no-gate", ("mlp_acts",)), Run("relp-no-half", ("mlp_acts",))]
    for method in unpaired_methods:
        plan.append(Run(method, tuple(unpaired_bases), setting="unpaired", ablations=("zero", "mean"),
                        n_train=n_ig if method.startswith("ig") else None))
    return plan


def sweep_sizes(total: int, log_sizes=LOG_SIZES, linear_sizes=()) -> list[int]:
    """Requested circuit sizes: the log sizes and linear sizes below ``total``, and ``ALL`` (the full circuit)."""
    sizes = {int(k) for k in (*log_sizes, *linear_sizes) if 0 < int(k) < total}
    return sorted(sizes) + [ALL]


# ------------------------------------------------------------------------------------------------------------- runner


@dataclass
class BenchmarkResult:
    """``curves``: one row per (model, template, method, basis, setting, ablation, requested size k);
    ``size`` is the actual number of nodes (``k`` capped at ``total_nodes``; ``k == ALL`` is the full circuit).
    ``attributions``: mean scores per (template, method, setting) (an :class:`Attribution` with one example).
    ``log``: what each step cost and whether it came from the cache."""

    curves: pd.DataFrame
    attributions: dict[tuple[str, str, str], Attribution]
    log: pd.DataFrame
    accuracy: pd.DataFrame


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


def cached_attribution(model, template: str, td: TemplateData, run: Run, sites, *, ig_steps: int = 10,
                       batch_size: int = 16, chunk: int = 64, directory=None, refresh: bool = False,
                       progress: bool = False):
    """The mean attribution of ``run`` on ``td``'s training pairs, from the cache or computed (and stored).

    Returns (stored dict with "mean", "metric", "baseline_metric"; the key's parts; a log row)."""
    n_train = len(td.train) if run.n_train is None else min(run.n_train, len(td.train))
    train = td.train[:n_train]
    if run.setting == "unpaired":
        train = unpaired(train)
    parts = dict(benchmark=CACHE_VERSION, model=model.name, template=template, method=run.method,
                 setting=run.setting, metric=run.metric, baseline=run.baseline, sites=tuple(sites), train=cache.data_hash(train), n_train=n_train,
                 ig_steps=ig_steps if run.method.startswith("ig") else None)
    key = cache.cache_key(**parts)
    hit = _cache_path(directory, "sva_attribution", key).exists() and not refresh
    t0 = time.perf_counter()
    stored = cache.cached("sva_attribution", key, _timed(lambda: _attribute_mean(
        model, train, run, tuple(sites), ig_steps=ig_steps, batch_size=batch_size, chunk=chunk, progress=progress)),
        refresh=refresh, directory=directory)
    step = {"model": model.name, "template": template, "step": "attribution", "method": run.method,
            "setting": run.setting, "basis": ",".join(sites), "ablation": "", "n": n_train, "cached": hit,
            "seconds": time.perf_counter() - t0, "compute_seconds": stored["seconds"]}
    return stored["value"], parts, step


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
    chunk: int = 64,
    cache_dir: str | Path | None = None,
    refresh: bool = False,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> BenchmarkResult:
    """Run ``plan`` (default: :func:`default_plan`) on every template of ``data``; see the module docstring.

    Results are cached under ``cache_dir`` (default: ``$NEURONLIB_CACHE/results``); ``refresh=True`` recomputes.
    """
    plan = default_plan() if plan is None else list(plan)
    directory = Path(cache_dir) if cache_dir is not None else None
    say = log or logger.info
    curves, steps, attributions, accuracy = [], [], {}, []
    for template, td in data.items():
        for run in plan:
            sites = tuple(sorted(run.bases, key=BASES.index))
            att, parts, step = cached_attribution(model, template, td, run, sites, ig_steps=ig_steps,
                                                  batch_size=batch_size, chunk=chunk, directory=directory,
                                                  refresh=refresh, progress=progress)
            n_train, test = parts["n_train"], td.test if run.setting == "paired" else unpaired(td.test)
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
                for ablation in run.ablations:
                    eparts = dict(parts, basis=basis, ablation=ablation, sizes=actual, test=cache.data_hash(test))
                    ekey = cache.cache_key(**eparts)
                    ehit = _cache_path(directory, "sva_eval", ekey).exists() and not refresh
                    t0 = time.perf_counter()
                    evaluated = cache.cached("sva_eval", ekey, _timed(lambda: evaluate_circuit(
                        model, mean, test, sites=(basis,), sizes=actual, mode=ablation, metric=run.metric,
                        batch_size=eval_batch_size, progress=False)), refresh=refresh, directory=directory)
                    frame = evaluated["value"]
                    steps.append({"model": model.name, "template": template, "step": "evaluation", "method": run.method,
                                  "setting": run.setting, "basis": basis, "ablation": ablation, "n": len(test),
                                  "cached": ehit,
                                  "seconds": time.perf_counter() - t0, "compute_seconds": evaluated["seconds"]})
                    say(f"{template:>9} {run.method:>12} {run.setting:>8} {basis:>8} {ablation:>4}-ablation "
                        f"{len(actual)} sizes " + ("(cached)" if ehit else f"{evaluated['seconds']:.0f} s"))
                    by_size = frame[frame.group == "all"].set_index("size")
                    for k in requested:
                        row = by_size.loc[min(k, total)]
                        curves.append({
                            "model": model.name, "template": template, "method": run.method, "basis": basis,
                            "setting": run.setting, "ablation": ablation, "k": k, "size": min(k, total),
                            "total_nodes": total, "faithfulness": row.faithfulness, "completeness": row.completeness,
                            "m_C": row.m_C, "m_Cbar": row.m_Cbar, "m_M": row.m_M, "m_empty": row.m_empty,
                            "threshold": row.threshold, "n_train": n_train, "n_test": len(test)})
    return BenchmarkResult(pd.DataFrame(curves, columns=COLUMNS), attributions, pd.DataFrame(steps),
                           pd.DataFrame(accuracy).drop_duplicates(["model", "template", "method", "setting", "n"]))


def _cache_path(directory, kind, key) -> Path:
    return (directory or cache.results_dir()) / kind / f"{key}.pt"


def _merge(old: Attribution | None, new: Attribution) -> Attribution:
    """Two runs of one (template, method, setting) on different bases: one Attribution with all their sites."""
    if old is None:
        return new
    return replace(old, scores={**old.scores, **new.scores})


def compare_methods(model, td: TemplateData, *, methods=("ig", IG_METHOD, "relp"), site: str = "mlp_acts",
                    n: int = 4, ks=(10, 100, 1000), ig_steps: int = 10, cache_dir=None, refresh: bool = False,
                    batch_size: int = 16):
    """Attribute the first ``n`` training pairs of one template with several methods on one site (paired) and
    compare the node rankings: Spearman correlation over all nodes and top-k overlap, pair by pair of methods.

    Used to check the IG variant: per-site IG ("ig", Marks et al.) against IG on the inputs ("ig-inputs") and RelP.
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


# ------------------------------------------------------------------------------------------------------------- tables


def average_curves(curves: pd.DataFrame) -> pd.DataFrame:
    """Mean over templates at each requested size ``k`` (a size above a template's node count is its full circuit).

    ``size`` becomes the mean actual size over templates (it differs only for the full circuit); only sizes that every
    template of the group has are kept.
    """
    keys = ["model", "method", "basis", "setting", "ablation"]
    n_templates = curves.groupby(keys).template.nunique().rename("n_templates")
    agg = (curves.groupby([*keys, "k"])
           .agg(size=("size", "mean"), faithfulness=("faithfulness", "mean"), completeness=("completeness", "mean"),
                faithfulness_min=("faithfulness", "min"), faithfulness_max=("faithfulness", "max"),
                completeness_min=("completeness", "min"), completeness_max=("completeness", "max"),
                templates=("template", "nunique"))
           .reset_index().join(n_templates, on=keys))
    return agg[agg.templates == agg.n_templates].drop(columns="n_templates").reset_index(drop=True)


def size_at_faithfulness(curves: pd.DataFrame, thresholds=(0.8, 0.9), *, average: bool = True) -> pd.DataFrame:
    """The smallest evaluated circuit whose faithfulness reaches each threshold, and its completeness there.

    ``average``: on the template-averaged curve (else per template). Sizes are grid points of the sweep, so the true
    crossing lies between the previous grid point and the one reported. The full circuit (k = ALL) is excluded: its
    faithfulness is 1 by construction; a threshold not reached below it is reported as NaN with ``reached=False``.
    """
    frame = average_curves(curves) if average else curves.copy()
    keys = ["model", "method", "basis", "setting", "ablation"] + ([] if average else ["template"])
    rows = []
    for group, g in frame[frame.k < ALL].groupby(keys):
        g = g.sort_values("k")
        row = dict(zip(keys, group))
        row["largest_size_tested"] = float(g["size"].max())
        for t in thresholds:
            hit = g[g.faithfulness >= t]
            row[f"size@F>={t}"] = float(hit["size"].iloc[0]) if len(hit) else math.nan
            row[f"completeness@F>={t}"] = float(hit.completeness.iloc[0]) if len(hit) else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def topk_overlap(a: Attribution, b: Attribution, site: str, k: int) -> float:
    """|top-k(a) ∩ top-k(b)| / k for one site's nodes (ranked by |mean score|)."""
    ta = set(map(tuple, a.top(k, sites=(site,))[["layer", "position", "unit"]].itertuples(index=False)))
    tb = set(map(tuple, b.top(k, sites=(site,))[["layer", "position", "unit"]].itertuples(index=False)))
    return len(ta & tb) / max(1, min(k, len(ta)))


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a.flatten().numpy(), b.flatten().numpy()).statistic)


# ------------------------------------------------------------------------------------------------------------- figures


def _label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def _save(fig, name, directory, save):
    if save:
        plotting.save_figure(fig, name, directory=directory)


def _curve(ax, g, *, color, linestyle="-", linear=False, band=False):
    """Faithfulness (filled markers) and completeness (open markers) of one method on one basis."""
    g = g.sort_values("size")
    if linear:
        g = g[g["size"] <= 400]
    ax.plot(g["size"], g.faithfulness, linestyle=linestyle, marker="o", color=color)
    ax.plot(g["size"], g.completeness, linestyle=linestyle, marker="o", mfc="white", color=color, alpha=0.85)
    if band and "faithfulness_min" in g:
        ax.fill_between(g["size"], g.faithfulness_min, g.faithfulness_max, color=color, alpha=0.10, lw=0)
        ax.fill_between(g["size"], g.completeness_min, g.completeness_max, color=color, alpha=0.05, lw=0)


def _legend(fig, entries, *, ncol=None, extra=True):
    """One legend below the panels: a line per (label, color, linestyle), plus the marker key."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, linestyle=ls, label=label) for label, c, ls in entries]
    if extra:
        handles += [Line2D([], [], color="0.25", marker="o", linestyle="none", label="faithfulness (ideal 1)"),
                    Line2D([], [], color="0.25", marker="o", mfc="white", linestyle="none",
                           label="completeness (ideal 0)")]
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol or min(len(handles), 6))


def _decorate(ax, *, linear=False, ylim=None):
    if linear:
        ax.set_xlim(0, 410)
    else:
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(left=0.8)
    ax.axhline(1, color="0.6", lw=0.7, ls=":")
    ax.axhline(0, color="0.6", lw=0.7, ls=":")
    ax.set_ylim(*(ylim or (-0.25, 1.25)))


def _ylim(frame, limit=(-1.0, 2.0)) -> tuple[float, float]:
    """Room for every point within ``limit`` (values beyond are cut at the edge of the axes)."""
    vals = pd.concat([frame.faithfulness, frame.completeness]).dropna()
    if not len(vals):
        return (-0.25, 1.25)
    return (max(limit[0], min(-0.1, float(vals.min()) - 0.05)), min(limit[1], max(1.1, float(vals.max()) + 0.05)))


def _models(frame) -> str:
    return ", ".join(sorted(set(frame.model)))


def fig_faithfulness(curves: pd.DataFrame, *, basis: str = "mlp_acts", methods=("relp", IG_METHOD),
                     setting: str = "paired", ablation: str = "mean", name: str = "fig1_sva_faithfulness",
                     directory=None, save: bool = True):
    """Figure 1: faithfulness and completeness of circuits on one basis (default: the neurons) vs circuit size, per
    template and averaged over templates; top row log axis (up to every node), bottom row linear axis 0-400."""
    import matplotlib.pyplot as plt

    sel = curves[(curves.basis == basis) & (curves.setting == setting) & (curves.ablation == ablation)
                 & curves.method.isin(methods)]
    templates = [t for t in TEMPLATES if t in set(sel.template)] + sorted(set(sel.template) - set(TEMPLATES))
    avg = average_curves(sel)
    panels = [(t, sel[sel.template == t]) for t in templates] + [("average over templates", avg)]
    ylim = _ylim(sel)
    with plotting.style():
        fig, axes = plt.subplots(2, len(panels), figsize=(3.0 * len(panels), 6.0), squeeze=False, sharey=True,
                                 layout="constrained")
        for col, (title, frame) in enumerate(panels):
            for row, linear in enumerate((False, True)):
                ax = axes[row, col]
                for method in methods:
                    g = frame[frame.method == method]
                    if len(g):
                        _curve(ax, g, color=plotting.COLORS.get(method, "0.3"), linear=linear,
                               band=col == len(panels) - 1)
                _decorate(ax, linear=linear, ylim=ylim)
                ax.set_xlabel("circuit size (nodes)")
            n_test = f" ({int(frame.n_test.iloc[0])} test pairs)" if "n_test" in frame and len(frame) else ""
            axes[0, col].set_title(title + n_test)
        axes[0, 0].set_ylabel("faithfulness / completeness\nlog axis")
        axes[1, 0].set_ylabel("faithfulness / completeness\nlinear axis, 0–400")
        _legend(fig, [(_label(m), plotting.COLORS.get(m, "0.3"), "-") for m in methods if m in set(sel.method)])
        fig.suptitle(f"SVA circuits on {BASIS_LABELS.get(basis, basis)}\n({_models(sel)}; {setting} runs, {ablation} "
                     "ablation; shaded: range over templates)")
    _save(fig, name, directory, save)
    return fig


def fig_methods_by_basis(curves: pd.DataFrame, *, bases=BASES, methods=("relp", IG_METHOD, "atp"),
                         ablation_methods=("relp", "relp-no-gate", "relp-no-half"), setting: str = "paired",
                         ablation: str = "mean", name: str = "fig3_sva_ig_vs_relp", directory=None, save: bool = True,
                         title: str | None = None):
    """Figure 3: template-averaged faithfulness / completeness vs size, one panel per basis comparing the methods,
    and (if ``ablation_methods``) a last panel with RelP and its ablated rule sets on the neurons."""
    import matplotlib.pyplot as plt

    sel = curves[(curves.setting == setting) & (curves.ablation == ablation)]
    avg = average_curves(sel)
    bases = [b for b in bases if b in set(avg.basis)]
    panels = [(BASIS_LABELS.get(b, b), avg[avg.basis == b], methods) for b in bases]
    abl = avg[(avg.basis == "mlp_acts") & avg.method.isin(ablation_methods)] if ablation_methods else avg.iloc[:0]
    if abl.method.nunique() > 1:
        panels.append(("RelP rules (neurons)", abl, ablation_methods))
    colors = {"relp-no-gate": "#8c564b", "relp-no-half": "#e377c2"}
    used = []
    with plotting.style():
        fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.9), squeeze=False, sharey=True,
                                 layout="constrained")
        ylim = _ylim(pd.concat([p[1] for p in panels])) if panels else None
        for ax, (ptitle, frame, ms) in zip(axes[0], panels):
            for method in ms:
                g = frame[frame.method == method]
                if len(g):
                    color = colors.get(method, plotting.COLORS.get(method, "0.3"))
                    _curve(ax, g, color=color, linestyle=METHOD_STYLES.get(method, "-"))
                    if method not in [u[0] for u in used]:
                        used.append((method, color))
            _decorate(ax, ylim=ylim)
            ax.set_title(ptitle)
            ax.set_xlabel("circuit size (nodes)")
        axes[0][0].set_ylabel("faithfulness / completeness")
        _legend(fig, [(_label(m), c, METHOD_STYLES.get(m, "-")) for m, c in used], ncol=len(used) + 2)
        fig.suptitle(title or f"SVA, mean over templates\n({_models(sel)}; {setting} runs, {ablation} ablation)")
    _save(fig, name, directory, save)
    return fig


def score_frame(attributions: dict, *, method: str = "relp", setting: str = "paired", bases=BASES) -> pd.DataFrame:
    """Every node's |mean score| per (template, basis), with its layer: the data of figure 4."""
    rows = []
    for (template, m, s), att in attributions.items():
        if m != method or s != setting:
            continue
        for basis in bases:
            if basis not in att.scores:
                continue
            v = att[basis][0]  # [L, T, U]
            L, T, U = v.shape
            layer = torch.arange(L)[:, None, None].expand(L, T, U)
            rows.append(pd.DataFrame({"template": template, "basis": basis, "layer": layer.flatten().numpy(),
                                      "abs_score": v.abs().flatten().numpy()}))
    if not rows:
        return pd.DataFrame(columns=["template", "basis", "layer", "abs_score"])
    return pd.concat(rows, ignore_index=True)


def concentration(scores: pd.DataFrame, ks=(10, 100, 1000)) -> pd.DataFrame:
    """Share of the total |score| held by the top-k nodes, per basis (mean over templates)."""
    rows = []
    for (basis, template), g in scores.groupby(["basis", "template"]):
        s = np.sort(g.abs_score.to_numpy())[::-1]
        rows.append({"basis": basis, "template": template, "nodes": len(s),
                     **{f"share of top {k}": s[:k].sum() / s.sum() for k in ks}})
    return pd.DataFrame(rows).groupby("basis").mean(numeric_only=True)


def fig_score_distribution(scores: pd.DataFrame, *, ks=(100, 1000, 10000), name: str = "fig4_sva_score_distribution",
                           directory=None, save: bool = True, title: str | None = None):
    """Figure 4: (a) distribution of |node score| per basis (pooled over templates); (b) share of the total |score|
    held by the top-k nodes (mean over templates); (c..) the layers of the top-k nodes of each template, per basis."""
    import matplotlib.pyplot as plt

    bases = [b for b in BASES if b in set(scores.basis)]
    with plotting.style():
        fig, axes = plt.subplots(1, 2 + len(ks), figsize=(3.1 * (2 + len(ks)), 3.5), squeeze=False,
                                 layout="constrained")
        ax_hist, ax_cum, ax_layers = axes[0][0], axes[0][1], axes[0][2:]
        positive = scores[scores.abs_score > 0]
        lo = np.log10(positive.abs_score.min()) if len(positive) else -8
        hi = np.log10(positive.abs_score.max()) if len(positive) else 1
        bins = np.linspace(max(lo, hi - 8), hi, 60)
        n_layers = int(scores.layer.max()) + 1 if len(scores) else 1
        for basis in bases:
            g = scores[scores.basis == basis]
            color = plotting.COLORS[basis]
            vals = np.log10(g.abs_score[g.abs_score > 0].to_numpy())
            ax_hist.hist(vals, bins=bins, histtype="step", density=True, color=color, lw=1.4)
            shares = []
            for _, gt in g.groupby("template"):
                s = np.sort(gt.abs_score.to_numpy())[::-1]
                shares.append(np.cumsum(s) / s.sum())
            n = min(len(s) for s in shares)
            ax_cum.plot(np.arange(1, n + 1), np.mean([s[:n] for s in shares], axis=0), color=color)
            for ax, k in zip(ax_layers, ks):
                top = pd.concat([gt.nlargest(min(k, len(gt)), "abs_score") for _, gt in g.groupby("template")])
                counts = np.bincount(top.layer.to_numpy(), minlength=n_layers) / len(top)
                ax.step(np.arange(n_layers), counts, where="mid", color=color)
        ax_hist.set_xlabel("log10 |mean attribution score|")
        ax_hist.set_ylabel("density of nodes")
        ax_hist.set_title("(a) score distribution")
        ax_cum.set_xscale("log")
        ax_cum.set_xlabel("top-k nodes")
        ax_cum.set_ylabel("share of total |score|")
        ax_cum.set_title("(b) concentration")
        for i, (ax, k) in enumerate(zip(ax_layers, ks)):
            ax.set_title(f"({chr(ord('c') + i)}) layers of the top {k:,}")
            ax.set_xlabel("layer")
            ax.set_ylabel("fraction of nodes")
        _legend(fig, [(BASIS_LABELS[b], plotting.COLORS[b], "-") for b in bases], extra=False)
        fig.suptitle(title or "SVA node attribution scores by basis (RelP, paired; every template's nodes pooled)")
    _save(fig, name, directory, save)
    return fig


def fig_unpaired(curves: pd.DataFrame, *, name: str = "fig5_sva_unpaired", directory=None, save: bool = True):
    """Figure 5: unpaired SVA (zero baseline, metric logit(y)) under zero and under mean ablation: template-averaged
    curves (markers) and each template's faithfulness (thin lines). Each panel has its own y range, since a small
    m(M) - m(∅) makes the ratios large."""
    import matplotlib.pyplot as plt

    sel = curves[curves.setting == "unpaired"]
    avg = average_curves(sel)
    ablations = [a for a in ("zero", "mean") if a in set(avg.ablation)]
    used = []
    with plotting.style():
        fig, axes = plt.subplots(1, len(ablations), figsize=(4.3 * len(ablations), 4.0), squeeze=False,
                                 layout="constrained")
        for ax, ablation in zip(axes[0], ablations):
            frame = avg[avg.ablation == ablation]
            for (method, basis), g in frame.groupby(["method", "basis"]):
                style = METHOD_STYLES.get(method, "-") if method != "relp" else "-"
                color = plotting.COLORS[basis]
                _curve(ax, g, color=color, linestyle=style)
                per = sel[(sel.ablation == ablation) & (sel.method == method) & (sel.basis == basis)]
                for _, gt in per.groupby("template"):
                    gt = gt.sort_values("size")
                    ax.plot(gt["size"], gt.faithfulness, color=color, lw=0.6, alpha=0.35)
                entry = (f"{_label(method)}, {BASIS_LABELS[basis]}", color, style)
                if entry not in used:
                    used.append(entry)
            _decorate(ax, ylim=_ylim(sel[sel.ablation == ablation], limit=(-10.0, 10.0)))
            ax.set_title(f"{ablation} ablation")
            ax.set_xlabel("circuit size (nodes)")
            ax.set_ylabel("faithfulness / completeness")
        _legend(fig, used + [("one template's faithfulness", "0.6", "-")], ncol=3)
        fig.suptitle(f"Unpaired SVA: zero baseline, metric logit(y)\n({_models(sel)}; markers: mean over templates)")
    _save(fig, name, directory, save)
    return fig
