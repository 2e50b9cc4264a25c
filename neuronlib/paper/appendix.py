"""The paper's appendix case studies: addition, antonyms (English and multilingual), and indirect-object
identification (IOI). The analysis behind ``notebooks/06_appendix_case_studies.ipynb``.

Every part states the model's accuracy first (Wilson intervals), then builds circuits with the case-study pipeline
of :mod:`neuronlib.paper.casestudy` (:func:`~neuronlib.paper.casestudy.trace_circuits`: RelP, zero baseline, metric =
sum of the top-5 next-token logits, nodes with ``|score| >= tau * metric``, tau = 0.005), and groups neurons by the
AUROC of their position-summed attribution across prompts against hypothesis labels
(:func:`~neuronlib.paper.casestudy.unit_aurocs`, one-vs-rest per label value).

Selection and evaluation use different prompts: neurons are *selected* by AUROC on one half of the prompts
(:func:`auroc_groups`), each count is compared with the count under shuffled labels
(:func:`neuronlib.stats.permutation_null_counts`), and the selected neurons are *checked* on the other half (same
side of 0.5 and past the threshold again), again against shuffled labels. The sum-mod-k families of addition are
judged against an operand-balanced null that keeps the Latin-square design of the sums (:func:`mod_family_null`),
the label shuffle beside it. IOI circuits are attributed per template and name order on training pairs and
evaluated (faithfulness, completeness, mean ablation) on that stratum's test pairs, with bootstrap intervals over
the test pairs (:func:`neuronlib.stats.bootstrap_ratio`, stratified by template and order when pooled).
"""
from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import torch

from .. import stats
from ..data import packaged
from .casestudy import TAU, last_logits, trace_circuits  # noqa: F401  (trace_circuits re-exported for notebooks)

logger = logging.getLogger(__name__)

ADDITION_QUESTION = "What is {a} + {b}?"
ADDITION_TEMPLATE = "{a} + {b} = "
ADDITION_THRESHOLD = 0.8  # the paper's AUROC threshold for addition neurons
ANTONYM_THRESHOLD = 0.9  # ... and for multilingual language / concept / attribute neurons
HANDLED = 0.5  # a language is "handled" when at least this fraction of its prompts is answered correctly


def _read_jsonl(name: str) -> list[dict]:
    return [json.loads(line) for line in packaged(name).read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------------------------
# accuracy with intervals


def accuracy_row(correct, **keys) -> dict:
    """{**keys, n, correct, accuracy, lo, hi}: a proportion with its Wilson interval."""
    correct = np.asarray(correct, dtype=bool)
    lo, hi = stats.wilson_interval(int(correct.sum()), len(correct))
    return {**keys, "n": int(len(correct)), "correct": int(correct.sum()),
            "accuracy": float(correct.mean()) if len(correct) else float("nan"), "lo": lo, "hi": hi}


def continuation_ids(tokenizer, prompt: str, answer: str) -> list[int]:
    """The token ids ``answer`` adds after ``prompt`` (tokenised together, so merges at the seam are respected;
    falls back to the answer tokenised alone when the prompt's tokens are not a prefix)."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full = tokenizer(prompt + answer, add_special_tokens=False)["input_ids"]
    if full[:len(p)] == p and len(full) > len(p):
        return full[len(p):]
    return tokenizer(answer, add_special_tokens=False)["input_ids"]


def teacher_forced_correct(model, prompt: str, answer_ids: list[int]) -> bool:
    """Does greedy decoding after ``prompt`` produce ``answer_ids`` token by token (teacher forced)?"""
    tok = model.tokenizer
    enc = tok(prompt, return_tensors="pt")
    p_ids = enc["input_ids"][0].tolist()
    ids = torch.tensor([p_ids + list(answer_ids[:-1])], device=model.device)
    with torch.no_grad():
        lg = model.hf(input_ids=ids, use_cache=False).logits[0]
    return lg[len(p_ids) - 1:].argmax(-1).tolist() == list(answer_ids)


# ---------------------------------------------------------------------------------------------------------------
# AUROC groups with a permutation null and a held-out check


def folded(auroc: np.ndarray) -> np.ndarray:
    """|AUROC - 0.5| + 0.5: how well a neuron separates a label, whichever side it takes."""
    return np.abs(np.asarray(auroc) - 0.5) + 0.5


def one_vs_rest(labels: pd.DataFrame, families) -> list[tuple[str, object, np.ndarray]]:
    """(family, value, binary labels) for every value of every family column of ``labels`` that has both classes."""
    out = []
    for fam in families:
        col = labels[fam]
        for value in sorted(col.dropna().unique().tolist(), key=str):
            y = (col == value).to_numpy()
            if 0 < y.sum() < len(y):
                out.append((fam, value, y))
    return out


def _binary_family(labels: pd.DataFrame, fam: str) -> bool:
    return labels[fam].nunique() == 2


def testable_labels(labels: pd.DataFrame, families, select, evaluate):
    """(family, value, labels of the selection prompts, labels of the evaluation prompts) for every one-vs-rest label
    that has both classes in both halves; a binary family (two values) once (its second value is the mirror image)."""
    seen_binary = set()
    for fam, value, y in one_vs_rest(labels, families):
        if _binary_family(labels, fam):
            if fam in seen_binary:
                continue
            seen_binary.add(fam)
        ys, ye = y[select], y[evaluate]
        if not (0 < ys.sum() < len(ys)) or not (0 < ye.sum() < len(ye)):
            logger.debug(f"label {fam}={value}: one class missing from a half; skipped")
            continue
        yield fam, value, ys, ye


SUMMARY_COLUMNS = ["family", "value", "n_pos_select", "n_select", "n_pos_eval", "n_eval", "n_selected", "null_mean",
                   "null_q95", "p_value", "n_replicated", "replicated_null_mean", "replicated_null_q95",
                   "replicated_p"]


def auroc_groups(summed_PLU: torch.Tensor, labels: pd.DataFrame, families, select, evaluate, *,
                 threshold: float, n_perm: int = 200, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Neuron groups by AUROC of position-summed attribution, selected on ``select`` prompts, checked on
    ``evaluate`` prompts (boolean masks or index arrays over the P prompts).

    For every (family, value) one-vs-rest label with both classes in both halves: the neurons with AUROC >=
    ``threshold`` or <= 1 - ``threshold`` on the selection prompts (count vs ``n_perm`` label shuffles), and how many
    of them pass again, on the same side, on the evaluation prompts (count vs shuffles of the evaluation labels).
    A binary family (two values) is tested once (its second value is the mirror image).

    Returns (summary, neurons): summary has one row per label (family, value, n_pos_select, n_selected,
    null_mean, null_q95, p_value, n_replicated, replicated_null_mean, replicated_null_q95, replicated_p);
    neurons one row per selected neuron (family, value, layer, unit, auroc_select, auroc_eval, replicated)."""
    from scipy.stats import rankdata

    P, L, U = summed_PLU.shape
    flat = summed_PLU.reshape(P, L * U).double().numpy()
    sel = np.asarray(select)
    ev = np.asarray(evaluate)
    if sel.dtype == bool:
        sel = np.flatnonzero(sel)
    if ev.dtype == bool:
        ev = np.flatnonzero(ev)
    if len(set(sel.tolist()) & set(ev.tolist())):
        raise ValueError("selection and evaluation prompts overlap")
    ranks_ev = None
    rng = np.random.default_rng(seed)
    rows, neuron_rows = [], []
    for fam, value, ys, ye in testable_labels(labels, families, sel, ev):
        null = stats.permutation_null_counts(flat[sel], ys, high=threshold, low=1 - threshold, n_perm=n_perm,
                                             seed=int(rng.integers(1 << 31)))
        a_sel = stats.auroc_per_unit(flat[sel], ys)
        chosen = np.flatnonzero((a_sel >= threshold) | (a_sel <= 1 - threshold))
        if ranks_ev is None:
            ranks_ev = rankdata(flat[ev], axis=0)
        high = a_sel[chosen] >= 0.5

        def n_again(lab):
            a = stats.auroc_from_ranks(ranks_ev[:, chosen], lab)
            return int(np.where(high, a >= threshold, a <= 1 - threshold).sum()), a

        n_rep, a_ev = n_again(ye)
        rep_null = np.array([n_again(rng.permutation(ye))[0] for _ in range(n_perm)]) if len(chosen) else \
            np.zeros(n_perm, dtype=int)
        rows.append({"family": fam, "value": value, "n_pos_select": int(ys.sum()), "n_select": len(ys),
                     "n_pos_eval": int(ye.sum()), "n_eval": len(ye), "n_selected": null["observed"],
                     "null_mean": null["null_mean"], "null_q95": null["null_q95"], "p_value": null["p_value"],
                     "n_replicated": n_rep,
                     "replicated_null_mean": float(rep_null.mean()) if n_perm else float("nan"),
                     "replicated_null_q95": float(np.quantile(rep_null, 0.95)) if n_perm else float("nan"),
                     "replicated_p": float((1 + (rep_null >= n_rep).sum()) / (1 + n_perm))})
        for j, idx in enumerate(chosen):
            neuron_rows.append({"family": fam, "value": value, "layer": int(idx // U), "unit": int(idx % U),
                                "auroc_select": float(a_sel[idx]), "auroc_eval": float(a_ev[j]),
                                "replicated": bool(high[j] and a_ev[j] >= threshold
                                                   or not high[j] and a_ev[j] <= 1 - threshold)})
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    neurons = pd.DataFrame(neuron_rows, columns=["family", "value", "layer", "unit", "auroc_select", "auroc_eval",
                                                 "replicated"])
    return summary, neurons


def replicated_neurons(neurons: pd.DataFrame, *, n: int = 2000) -> pd.DataFrame:
    """The selected neurons that replicate on the evaluation prompts, strongest (held-out folded AUROC) first, at
    most ``n`` (the full list of selected neurons is large and mostly chance)."""
    out = neurons[neurons["replicated"]].copy()
    out["strength"] = folded(out["auroc_eval"])
    return out.sort_values("strength", ascending=False).head(n).reset_index(drop=True)


def family_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """Pooled per family: neurons selected vs the null (sums over the family's labels) and replicated vs its null."""
    g = summary.groupby("family", sort=False)
    out = g.agg(labels=("value", "size"), n_selected=("n_selected", "sum"), null_mean=("null_mean", "sum"),
                n_replicated=("n_replicated", "sum"), replicated_null_mean=("replicated_null_mean", "sum"),
                labels_above_null=("p_value", lambda p: int((p <= 0.05).sum())),
                labels_replicated_above_null=("replicated_p", lambda p: int((p <= 0.05).sum()))).reset_index()
    out["replication_rate"] = out["n_replicated"] / out["n_selected"].where(out["n_selected"] > 0)
    return out


def auroc_histogram(summed_PLU: torch.Tensor, labels: pd.DataFrame, families, *, bins=None, seed: int = 0,
                    null_labels: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per family, the histogram over neurons of the best folded AUROC over the family's one-vs-rest labels
    (|AUROC - 0.5| + 0.5), with the real labels and with ``null_labels`` (default: the prompts' labels shuffled
    once; the whole label row moves together, so the families keep their structure). Columns family, bin_lo,
    bin_hi, real, null."""
    from scipy.stats import rankdata

    bins = np.linspace(0.5, 1.0, 51) if bins is None else np.asarray(bins)
    P, L, U = summed_PLU.shape
    ranks = rankdata(summed_PLU.reshape(P, L * U).double().numpy(), axis=0)
    if null_labels is None:
        null_labels = labels.iloc[np.random.default_rng(seed).permutation(P)]
    shuffled = null_labels.reset_index(drop=True)
    frames = []
    for fam in families:
        best = {}
        for name, lab in (("real", labels.reset_index(drop=True)), ("null", shuffled)):
            b = np.full(L * U, 0.5)
            for _, _, y in one_vs_rest(lab, [fam]):
                b = np.maximum(b, folded(stats.auroc_from_ranks(ranks, y)))
            best[name] = np.histogram(np.clip(b, bins[0], bins[-1]), bins=bins)[0]
        frames.append(pd.DataFrame({"family": fam, "bin_lo": bins[:-1], "bin_hi": bins[1:], "real": best["real"],
                                    "null": best["null"]}))
    return pd.concat(frames, ignore_index=True)


def describe_neurons(model, neurons: pd.DataFrame, *, k: int = 8) -> pd.DataFrame:
    """``neurons`` (layer, unit[, sign]) with the output-lens description of :func:`neuronlib.describe`."""
    from ..describe import describe

    cols = ["layer", "unit"] + (["sign"] if "sign" in neurons else [])
    desc = describe(model, neurons[cols].drop_duplicates(), k=k)
    keep = ["layer", "unit"] + (["sign"] if "sign" in neurons else []) + ["label", "promotes", "description"]
    out = neurons.merge(desc[keep], on=cols, how="left")
    out["promotes"] = out["promotes"].map(lambda t: " ".join(repr(x) for x in t[:6]) if isinstance(t, list) else t)
    return out


# ---------------------------------------------------------------------------------------------------------------
# 1. addition


def addition_table(max_operand: int = 9) -> pd.DataFrame:
    """All ordered pairs (a, b) with 0 <= a, b <= ``max_operand`` and their labels: sum, sum mod 10 / 2 / 5, tens
    digit of the sum."""
    rows = [{"a": a, "b": b} for a in range(max_operand + 1) for b in range(max_operand + 1)]
    df = pd.DataFrame(rows)
    df["sum"] = df["a"] + df["b"]
    df["mod10"] = df["sum"] % 10
    df["mod2"] = df["sum"] % 2
    df["mod5"] = df["sum"] % 5
    df["tens"] = df["sum"] // 10
    return df


def operand_labels(df: pd.DataFrame, n: int) -> np.ndarray:
    """"An operand is n": a == n or b == n."""
    return ((df["a"] == n) | (df["b"] == n)).to_numpy()


def addition_labels(df: pd.DataFrame) -> pd.DataFrame:
    """One column per label family (values are one-vs-rest classes): mod10, mod2, mod5, tens, and operand_n for
    each n as its own binary family."""
    out = df[["mod10", "mod2", "mod5", "tens"]].copy()
    for n in sorted(set(df["a"]) | set(df["b"])):
        out[f"operand_{n}"] = operand_labels(df, n).astype(int)
    return out


def addition_families(labels: pd.DataFrame) -> list[str]:
    return [c for c in labels.columns]


def family_group(fam: str) -> str:
    """The label family a column belongs to for pooled reporting ("operand_3" -> "operand")."""
    return "operand" if fam.startswith("operand_") else fam


def stratified_split(strata, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split examples in two halves within each stratum (e.g. sum mod 10), so every class sits in both halves.
    Returns (select, evaluate) index arrays."""
    strata = np.asarray(strata)
    rng = np.random.default_rng(seed)
    sel, ev = [], []
    for s in sorted(set(strata.tolist())):
        idx = rng.permutation(np.flatnonzero(strata == s))
        half = (len(idx) + 1) // 2
        sel += idx[:half].tolist()
        ev += idx[half:].tolist()
    return np.sort(np.array(sel, dtype=int)), np.sort(np.array(ev, dtype=int))


# The sum-mod-k families against a null that keeps the design. On the full 10 x 10 grid every class of the sum mod 10
# holds every value of a once and every value of b once (a Latin square), so a neuron that tracks one operand cannot
# separate a class. Shuffling the labels breaks that balance: operand-tuned neurons then pass by chance and inflate
# the null. The operand-balanced null relabels with (pi(a) + sigma(b)) mod 10 for random permutations pi, sigma
# (every draw is again a Latin square), derives mod 5 and mod 2 from it, and re-splits exactly as the real labels.

MOD_FAMILIES = ("mod10", "mod5", "mod2")
NULL_KINDS = ("operand-balanced", "label shuffle")


def mod_labels(sum_mod10) -> pd.DataFrame:
    """The sum-mod-k label families of a sum-mod-10 vector: mod10, mod5 and mod2 (5 and 2 divide 10)."""
    s = np.asarray(sum_mod10, dtype=int)
    return pd.DataFrame({"mod10": s, "mod5": s % 5, "mod2": s % 2})


def balanced_sum_labels(a, b, rng) -> np.ndarray:
    """(pi(a) + sigma(b)) mod 10 for random permutations pi, sigma of the digits 0-9 (``rng``: a numpy Generator).
    On the full grid of digit pairs every class holds every value of a once and every value of b once, as the real
    sum mod 10 does; on a subset of the grid, every class holds each value of a and of b at most once."""
    a, b = np.asarray(a, dtype=int), np.asarray(b, dtype=int)
    if min(a.min(), b.min()) < 0 or max(a.max(), b.max()) > 9:
        raise ValueError("operands must be digits 0-9")
    pi, sigma = rng.permutation(10), rng.permutation(10)
    return (pi[a] + sigma[b]) % 10


def null_sum_labels(kind: str, a, b, sum_mod10, rng) -> np.ndarray:
    """One null draw of the sum mod 10: ``"operand-balanced"`` (:func:`balanced_sum_labels`) or ``"label shuffle"``
    (the real labels permuted across the pairs: class sizes kept, operand balance broken)."""
    if kind == "operand-balanced":
        return balanced_sum_labels(a, b, rng)
    if kind == "label shuffle":
        return rng.permutation(np.asarray(sum_mod10, dtype=int))
    raise ValueError(f"null kind must be one of {NULL_KINDS}, got {kind!r}")


def mod_family_counts(flat_PU: np.ndarray, sum_mod10, *, threshold: float, split_seed: int = 0,
                      families=MOD_FAMILIES) -> dict[str, tuple[int, int]]:
    """Per family: (neuron-label pairs selected, of them replicated), with the rule of :func:`auroc_groups` (AUROC >=
    ``threshold`` or <= 1 - ``threshold`` on the selection half, the same side again on the evaluation half) and
    the halves made from these labels by :func:`stratified_split` (within classes of the sum mod 10)."""
    from scipy.stats import rankdata

    labels = mod_labels(sum_mod10)
    sel, ev = stratified_split(labels["mod10"], seed=split_seed)
    ranks_sel, ranks_ev = rankdata(flat_PU[sel], axis=0), rankdata(flat_PU[ev], axis=0)
    out = {fam: (0, 0) for fam in families}
    for fam, _, ys, ye in testable_labels(labels, families, sel, ev):
        a_sel = stats.auroc_from_ranks(ranks_sel, ys)
        chosen = np.flatnonzero((a_sel >= threshold) | (a_sel <= 1 - threshold))
        a_ev = stats.auroc_from_ranks(ranks_ev[:, chosen], ye)
        again = np.where(a_sel[chosen] >= 0.5, a_ev >= threshold, a_ev <= 1 - threshold)
        out[fam] = (out[fam][0] + len(chosen), out[fam][1] + int(again.sum()))
    return out


def addition_null_labels(df: pd.DataFrame, labels: pd.DataFrame, *, seed: int = 0) -> pd.DataFrame:
    """One null draw of :func:`addition_labels`' frame for the AUROC histogram: the sum-mod-k columns from one
    operand-balanced draw, every other column (tens digit, operands) from one shuffle of the pairs' label rows."""
    rng = np.random.default_rng(seed)
    out = labels.iloc[rng.permutation(len(labels))].reset_index(drop=True)
    mods = mod_labels(balanced_sum_labels(df["a"], df["b"], rng))
    for fam in MOD_FAMILIES:
        if fam in out:
            out[fam] = mods[fam].to_numpy()
    return out


def mod_family_null(summed_PLU: torch.Tensor, a, b, sum_mod10, *, threshold: float, n_draws: int = 200,
                    seed: int = 0, split_seed: int = 0, kinds=NULL_KINDS, families=MOD_FAMILIES) -> pd.DataFrame:
    """The sum-mod-k families' selected and replicated counts with the real labels (draw -1) and under ``n_draws``
    draws of each null kind (:func:`null_sum_labels`), each draw re-split by :func:`stratified_split` with
    ``split_seed`` as the real labels are. Long table: kind, draw, family, n_selected, n_replicated."""
    P = summed_PLU.shape[0]
    flat = summed_PLU.reshape(P, -1).double().numpy()
    flat = flat[:, flat.std(axis=0) > 0]  # a constant column has AUROC 0.5 under every labelling: it never passes
    rows = []

    def add(kind, draw, labels):
        for fam, (n_sel, n_rep) in mod_family_counts(flat, labels, threshold=threshold, split_seed=split_seed,
                                                     families=families).items():
            rows.append({"kind": kind, "draw": draw, "family": fam, "n_selected": n_sel, "n_replicated": n_rep})

    add("observed", -1, sum_mod10)
    for k, kind in enumerate(kinds):
        rng = np.random.default_rng([seed, k])
        for d in range(n_draws):
            add(kind, d, null_sum_labels(kind, a, b, sum_mod10, rng))
    return pd.DataFrame(rows, columns=["kind", "draw", "family", "n_selected", "n_replicated"])


def mod_null_summary(draws: pd.DataFrame, **keys) -> pd.DataFrame:
    """Per (family, null kind): the observed counts against the null's mean, 95% range (2.5-97.5%) and one-sided
    p = (1 + #{null >= observed}) / (1 + draws), for the selected and the replicated counts; ``verdict`` from the
    replicated count's p (<= 0.05: "replicates")."""
    obs = draws[draws["kind"] == "observed"].set_index("family")
    rows = []
    for (fam, kind), g in draws[draws["kind"] != "observed"].groupby(["family", "kind"], sort=False):
        row = {**keys, "family": fam, "null": kind, "draws": len(g)}
        for what in ("selected", "replicated"):
            o, null = int(obs.loc[fam, f"n_{what}"]), g[f"n_{what}"].to_numpy()
            row |= {f"{what}": o, f"{what}_null_mean": float(null.mean()),
                    f"{what}_null_lo": float(np.quantile(null, 0.025)),
                    f"{what}_null_hi": float(np.quantile(null, 0.975)),
                    f"{what}_p": float((1 + (null >= o).sum()) / (1 + len(null)))}
        row["verdict"] = "replicates" if row["replicated_p"] <= 0.05 else "does not replicate"
        rows.append(row)
    return pd.DataFrame(rows)


def addition_prompt(a: int, b: int, tokenizer=None, *, question: str = ADDITION_QUESTION,
                    prefill: str = ADDITION_TEMPLATE) -> str:
    """The paper's question "What is {a} + {b}?" in the model's chat template, the assistant turn prefilled with
    "{a} + {b} = " (so the next token is the sum's first digit; this model writes " 7" as " " + "7"). Without a
    chat template (tiny test models): the prefill alone."""
    text = prefill.format(a=a, b=b)
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": question.format(a=a, b=b)}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + text
    return text


def addition_prompts(df: pd.DataFrame, tokenizer=None, **kw) -> list[str]:
    return [addition_prompt(a, b, tokenizer, **kw) for a, b in zip(df["a"], df["b"])]


def addition_accuracy(model, df: pd.DataFrame) -> pd.DataFrame:
    """Per pair: the first answer token (the sum's first digit) correct, the whole sum correct (teacher forced),
    and, for sums >= 10, the second token (the ones digit) correct given the first."""
    tok = model.tokenizer
    prompts = addition_prompts(df, tok)
    top = last_logits(model, prompts).argmax(-1).tolist()
    out = df.copy()
    out["prompt"] = prompts
    out["top_token"] = [tok.decode([t]) for t in top]
    first, whole = [], []
    for p, s, t in zip(prompts, out["sum"], top):
        ids = continuation_ids(tok, p, str(s))
        first.append(t == ids[0])
        whole.append(t == ids[0] and (len(ids) == 1 or teacher_forced_correct(model, p, ids)))
    out["first_correct"] = first
    out["correct"] = whole
    two = out["sum"] >= 10
    second_prompts = [p + str(s)[0] for p, s in zip(out.loc[two, "prompt"], out.loc[two, "sum"])]
    out["second_correct"] = None
    if second_prompts:
        top2 = last_logits(model, second_prompts).argmax(-1).tolist()
        out.loc[two, "second_correct"] = [
            t == continuation_ids(tok, p, str(s)[1])[0] for t, p, s in zip(top2, second_prompts, out.loc[two, "sum"])]
    return out


def addition_accuracy_table(acc: pd.DataFrame) -> pd.DataFrame:
    rows = [accuracy_row(acc["correct"], task="whole sum", subset="all pairs"),
            accuracy_row(acc.loc[acc["sum"] < 10, "correct"], task="whole sum", subset="sum < 10"),
            accuracy_row(acc.loc[acc["sum"] >= 10, "correct"], task="whole sum", subset="sum >= 10"),
            accuracy_row(acc["first_correct"], task="first answer token", subset="all pairs"),
            accuracy_row(acc.loc[acc["sum"] >= 10, "second_correct"].astype(bool), task="ones digit given the tens",
                         subset="sum >= 10")]
    return pd.DataFrame(rows)


def strongest_neurons(summary_neurons: pd.DataFrame, *, family: str = "mod10", n: int = 6) -> pd.DataFrame:
    """The ``n`` strongest neurons for ``family`` (one per neuron): those that replicate on the evaluation half
    first, then by folded selection-half AUROC, then by folded evaluation-half AUROC."""
    g = summary_neurons[summary_neurons["family"] == family].copy()
    g["strength"] = folded(g["auroc_select"])
    g["held_out"] = folded(g["auroc_eval"])
    g = g.sort_values(["replicated", "strength", "held_out"], ascending=False).drop_duplicates(["layer", "unit"])
    return g.head(n).reset_index(drop=True)


def heatmap_table(summed_PLU: torch.Tensor, df: pd.DataFrame, neurons: pd.DataFrame) -> pd.DataFrame:
    """Long table (neuron label, layer, unit, value, auroc, a, b, attribution) of each neuron's position-summed
    attribution on every pair."""
    from ..neurons import neuron_label

    frames = []
    for r in neurons.itertuples():
        frames.append(pd.DataFrame({"neuron": neuron_label(r.layer, r.unit), "layer": r.layer, "unit": r.unit,
                                    "label": f"{r.family}={r.value}", "auroc_select": r.auroc_select,
                                    "a": df["a"].to_numpy(), "b": df["b"].to_numpy(),
                                    "attribution": summed_PLU[:, r.layer, r.unit].double().numpy()}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["neuron", "layer", "unit", "label", "auroc_select", "a", "b", "attribution"])


def circuit_sizes(circuits, **keys) -> dict:
    """Mean circuit size (nodes, distinct neurons) over prompts, with a bootstrap interval of the mean size."""
    sizes = circuits.sizes().to_numpy(dtype=float)
    neurons = circuits.nodes.groupby("example")[["layer", "unit"]].apply(lambda g: len(g.drop_duplicates()))
    neurons = neurons.reindex(range(len(sizes)), fill_value=0).to_numpy(dtype=float)
    boot = stats.bootstrap_ratio(sizes, np.ones_like(sizes), n_boot=1000, seed=0) if len(sizes) else None
    return {**keys, "prompts": len(sizes), "mean_nodes": float(sizes.mean()) if len(sizes) else float("nan"),
            "lo": float(boot["lo"]) if boot else float("nan"), "hi": float(boot["hi"]) if boot else float("nan"),
            "median_nodes": float(np.median(sizes)) if len(sizes) else float("nan"),
            "mean_neurons": float(neurons.mean()) if len(neurons) else float("nan"), "tau": circuits.tau}


# ---------------------------------------------------------------------------------------------------------------
# 2. antonyms


def load_english_antonyms() -> pd.DataFrame:
    """The English words (``data/appendix/antonyms_en.jsonl``) and their accepted antonyms."""
    return pd.DataFrame(_read_jsonl("appendix/antonyms_en.jsonl"))


ENGLISH_TEMPLATES = ("The opposite of \"{word}\" is \"", "\"{word}\" is the opposite of \"")


def english_antonym_prompts(words: pd.DataFrame, templates=ENGLISH_TEMPLATES) -> pd.DataFrame:
    rows = []
    for t, template in enumerate(templates):
        for r in words.itertuples():
            rows.append({"template": t, "word": r.word, "answers": list(r.answers),
                         "prompt": template.format(word=r.word)})
    return pd.DataFrame(rows)


MULTI_CONCEPTS = {"big": "size", "small": "size", "fast": "speed", "slow": "speed", "hot": "temperature",
                  "cold": "temperature"}
MULTI_OPPOSITES = {"big": "small", "small": "big", "fast": "slow", "slow": "fast", "hot": "cold", "cold": "hot"}


def load_multilingual_antonyms() -> pd.DataFrame:
    """One row per (language, template, word): the paper's six words (big, small, fast, slow, hot, cold) in each
    language of ``data/appendix/antonyms_multilingual.jsonl``, two phrasings per language. Labels: language,
    concept (the English gloss of the word: big, small, ...), attribute (the dimension: size, speed, temperature);
    ``answers``: the opposite word in the same language."""
    rows = []
    for lang in _read_jsonl("appendix/antonyms_multilingual.jsonl"):
        for t, template in enumerate(lang["templates"]):
            for concept, word in lang["words"].items():
                rows.append({"language": lang["language"], "code": lang["code"], "template": t, "concept": concept,
                             "attribute": MULTI_CONCEPTS[concept], "word": word,
                             "answers": [lang["words"][MULTI_OPPOSITES[concept]]],
                             "prompt": template.format(word=word)})
    return pd.DataFrame(rows)


def antonym_accuracy(model, prompts: pd.DataFrame) -> pd.DataFrame:
    """Per prompt: the top next token, and ``correct`` -- greedy decoding produces one of the accepted answers
    (teacher forced over all its tokens)."""
    tok = model.tokenizer
    top = last_logits(model, list(prompts["prompt"])).argmax(-1).tolist()
    out = prompts.copy()
    out["top_token"] = [tok.decode([t]) for t in top]
    correct = []
    for p, answers, t in zip(out["prompt"], out["answers"], top):
        ok = False
        for ans in answers:
            ids = continuation_ids(tok, p, ans)
            if ids and ids[0] == t and (len(ids) == 1 or teacher_forced_correct(model, p, ids)):
                ok = True
                break
        correct.append(ok)
    out["correct"] = correct
    return out


def language_accuracy(acc: pd.DataFrame, *, handled: float = HANDLED) -> pd.DataFrame:
    """Per language: accuracy with its Wilson interval, and ``handled`` (accuracy >= ``handled``)."""
    rows = [accuracy_row(g["correct"], language=lang) for lang, g in acc.groupby("language", sort=False)]
    out = pd.DataFrame(rows)
    out["handled"] = out["accuracy"] >= handled
    return out


MULTI_FAMILIES = ("language", "concept", "attribute")


def features_by_layer(neurons: pd.DataFrame, n_layers: int) -> pd.DataFrame:
    """Per (family, layer): neurons selected and neurons replicated on the held-out phrasing."""
    rows = []
    for fam in neurons["family"].unique() if len(neurons) else []:
        g = neurons[neurons["family"] == fam].drop_duplicates(["layer", "unit", "value"])
        for layer in range(n_layers):
            gl = g[g["layer"] == layer]
            rows.append({"family": fam, "layer": layer, "selected": len(gl), "replicated": int(gl["replicated"].sum())})
    return pd.DataFrame(rows, columns=["family", "layer", "selected", "replicated"])


# ---------------------------------------------------------------------------------------------------------------
# 3. indirect-object identification


def load_ioi_vocabulary() -> dict:
    """Templates, names, places and objects of ``data/appendix/ioi.jsonl``."""
    out = {"template": [], "name": [], "place": [], "object": []}
    for row in _read_jsonl("appendix/ioi.jsonl"):
        if row["kind"] == "template":
            out["template"].append(row["text"])
        else:
            out[row["kind"]] += row["values"]
    return out


def single_token_words(tokenizer, words) -> list[str]:
    """The words that are one token with a leading space."""
    return [w for w in words if len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1]


IOI_ORDERS = ("ABBA", "BABA")  # the first clause's names: IO first (ABBA) or S first (BABA)
IOI_STRATA = ["template", "order"]


def ioi_pairs(tokenizer, n_per_order: int, *, seed: int = 0, vocabulary: dict | None = None) -> pd.DataFrame:
    """``n_per_order`` IOI pairs per template and name order (community record format plus template, order, io, s,
    place, object).

    Clean: "When {A} and {B} went to the {place}, {B} gave a {object} to" -> " {A}" (the indirect object); patch:
    the same sentence with the second {B} replaced by {A} -> " {B}" (the subject of the second clause changes, so
    the indirect object does). Order ABBA: the first clause names IO first; BABA: S first. The two orders put the
    names at swapped positions, so a position's attribution has opposite signs in them: circuits are attributed
    and evaluated per (template, order). Only names, places and objects that are one token (with a leading space)
    are used, so the prompts of a template all have one token length and the clean and patch prompts of a pair
    too. No (io, s, place, object) repeats within a template."""
    voc = load_ioi_vocabulary() if vocabulary is None else vocabulary
    names = single_token_words(tokenizer, voc["name"])
    places = single_token_words(tokenizer, voc["place"])
    objects = single_token_words(tokenizer, voc["object"])
    if len(names) < 2 or not places or not objects:
        raise ValueError("the tokenizer leaves too few single-token names, places or objects")
    if n_per_order > len(names) * (len(names) - 1) * len(places) * len(objects) // len(IOI_ORDERS):
        raise ValueError(f"{n_per_order} pairs per order: the vocabulary has too few distinct fillers")
    rng = np.random.default_rng(seed)
    rows = []
    for t, template in enumerate(voc["template"]):
        seen = set()
        for order in IOI_ORDERS:
            made = 0
            while made < n_per_order:
                io, s = rng.choice(names, 2, replace=False).tolist()
                place, obj = str(rng.choice(places)), str(rng.choice(objects))
                if (io, s, place, obj) in seen:
                    continue
                seen.add((io, s, place, obj))
                first, second = (io, s) if order == "ABBA" else (s, io)
                # the template's second clause has {B} as subject; write it as s (clean) / io (patch)
                head, sep, tail = template.partition(" {B} gave")
                if not sep:
                    raise ValueError(f"template {template!r} has no ' {{B}} gave'")
                fill = dict(A=first, B=second, place=place, object=obj)
                head, tail = head.format(**fill), tail.format(**fill)
                rows.append({"template": t, "order": order, "clean_prefix": f"{head} {s} gave{tail}",
                             "patch_prefix": f"{head} {io} gave{tail}", "clean_answer": " " + io,
                             "patch_answer": " " + s, "io": io, "s": s, "place": place, "object": obj})
                made += 1
    out = pd.DataFrame(rows)
    out["case"] = out["template"].astype(str) + "/" + out["order"]
    return out


def split_pairs(pairs: pd.DataFrame, *, n_train: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``n_train`` pairs of each (template, order) for attribution (train), the rest for evaluation (test)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for _, g in pairs.groupby(IOI_STRATA, sort=True):
        if len(g) <= n_train:
            raise ValueError(f"{len(g)} pairs in a (template, order): none left for evaluation after {n_train}")
        idx = rng.permutation(g.index.to_numpy())
        train += idx[:n_train].tolist()
        test += idx[n_train:].tolist()
    return pairs.loc[sorted(train)].reset_index(drop=True), pairs.loc[sorted(test)].reset_index(drop=True)


def ioi_accuracy(model, pairs: pd.DataFrame) -> pd.DataFrame:
    """Per pair: the clean prompt's top token is the indirect object, and logit(IO) - logit(S) on the clean and the
    patch prompt."""
    tok = model.tokenizer
    lg = last_logits(model, list(pairs["clean_prefix"]))
    lg_p = last_logits(model, list(pairs["patch_prefix"]))
    io = torch.tensor([model.token_id(a) for a in pairs["clean_answer"]])
    s = torch.tensor([model.token_id(a) for a in pairs["patch_answer"]])
    out = pairs.copy()
    out["top_token"] = [tok.decode([t]) for t in lg.argmax(-1).tolist()]
    out["correct"] = (lg.argmax(-1) == io).numpy()
    out["logit_diff"] = (lg.gather(1, io[:, None]) - lg.gather(1, s[:, None]))[:, 0].numpy()
    out["logit_diff_patch"] = (lg_p.gather(1, io[:, None]) - lg_p.gather(1, s[:, None]))[:, 0].numpy()
    return out


def ioi_evaluations(model, train: pd.DataFrame, test: pd.DataFrame, *, sites=("mlp_acts", "mlp_out"), sizes,
                    by=IOI_STRATA, method: str = "relp", mode: str = "mean", batch_size: int = 16,
                    progress: bool = False) -> tuple[pd.DataFrame, dict]:
    """Top-k circuits per basis and (template, order): attribution (``method``, paired, metric logit(IO) - logit(S))
    on the stratum's training pairs, ``mode`` ablation of the top-k nodes (by |mean score|) on its test pairs.
    ``by=["template"]`` attributes each template's pairs of both orders together (order "mixed"), the design whose
    signed scores cancel between the orders.

    Returns (per-pair table, attributions {(site, template, order): Attribution}). The table has one row per (site,
    template, order, size, test pair): m_C (only the circuit kept), m_Cbar (the circuit ablated), m_M (nothing
    ablated), m_empty (everything ablated), n_train; a size beyond the basis' node count is the whole basis."""
    import neuronlib

    by = list(by)
    if by not in (IOI_STRATA, ["template"]):
        raise ValueError(f"by must be {IOI_STRATA} or ['template'], got {by}")
    records = lambda frame: frame[["clean_prefix", "patch_prefix", "clean_answer", "patch_answer", "template"]] \
        .to_dict("records")  # noqa: E731
    rows, atts = [], {}
    for key, tr in train.groupby(by, sort=True):
        t, order = (key[0], key[1]) if len(by) == 2 else (key[0], "mixed")
        te = test[(test["template"] == t) & ((test["order"] == order) if len(by) == 2 else True)]
        if not len(te):
            continue
        for site in sites:
            att = neuronlib.attribute(model, records(tr), metric="logit_diff", method=method,
                                      baseline="counterfactual", sites=(site,), batch_size=batch_size,
                                      progress=progress)
            atts[(site, int(t), order)] = att
            ev = neuronlib.evaluate_circuit(model, att, records(te), sizes=list(sizes), mode=mode, sites=(site,),
                                            metric="logit_diff", batch_size=batch_size, per_example=True,
                                            progress=progress)
            ev = ev[ev["group"] == "all"]
            for k in sizes:
                r = ev[ev["size"] == min(k, int(ev["size"].max()))].iloc[0]
                rows.append(pd.DataFrame({"site": site, "template": int(t), "order": order, "size": int(k),
                                          "pair": np.arange(len(te)), "m_C": r["m_C_ex"], "m_Cbar": r["m_Cbar_ex"],
                                          "m_M": r["m_M_ex"], "m_empty": r["m_empty_ex"], "n_train": len(tr)}))
    return pd.concat(rows, ignore_index=True), atts


def _ioi_strata(evals: pd.DataFrame):
    """(site, template, order, frame) per stratum, then (site, "pooled", "pooled", frame) per site."""
    for (site, t, order), g in evals.groupby(["site", "template", "order"], sort=True):
        yield site, str(t), order, g
    for site, g in evals.groupby("site", sort=True):
        yield site, "pooled", "pooled", g


def _ioi_arrays(g: pd.DataFrame):
    """Sizes, numerators [what][S, n], denominator [n] and strata [n] of one stratum's (or a pooled) table."""
    g = g.sort_values(["size", "template", "order", "pair"])
    sizes = np.sort(g["size"].unique())
    first = g[g["size"] == sizes[0]]
    m0, den = first["m_empty"].to_numpy(), first["m_M"].to_numpy() - first["m_empty"].to_numpy()
    nums = {what: np.stack([g.loc[g["size"] == k, col].to_numpy() - m0 for k in sizes])
            for what, col in (("faithfulness", "m_C"), ("completeness", "m_Cbar"))}
    strata = (first["template"].astype(str) + "/" + first["order"]).to_numpy()
    return sizes, nums, den, strata, first


def ioi_curves(evals: pd.DataFrame, *, n_boot: int = 1000) -> pd.DataFrame:
    """Faithfulness (m(C) - m(empty)) / (m(M) - m(empty)) and completeness (m(Cbar) - m(empty)) / (m(M) -
    m(empty)) per (site, template, order) and pooled over all of them ("pooled": Σ numerators / Σ denominators over
    every test pair), with 95% bootstrap intervals over test pairs (stratified by template and order when pooled).
    ``denominator``: the mean of m(M) - m(empty) over the stratum's test pairs."""
    rows = []
    for site, t, order, g in _ioi_strata(evals):
        sizes, nums, den, strata, first = _ioi_arrays(g)
        for what, num in nums.items():
            for i, k in enumerate(sizes):
                b = stats.bootstrap_ratio(num[i], den, n_boot=n_boot, seed=0, strata=strata)
                rows.append({"site": site, "template": t, "order": order, "size": int(k), "measure": what,
                             "value": float(b["estimate"]), "lo": float(b["lo"]), "hi": float(b["hi"]),
                             "n_test": len(den), "n_train": int(first.drop_duplicates(["template", "order"])
                                                                ["n_train"].sum()),
                             "denominator": float(den.mean())})
    return pd.DataFrame(rows)


def ioi_sizes(evals: pd.DataFrame, *, threshold: float = 0.8, n_boot: int = 1000) -> pd.DataFrame:
    """Per (site, template, order) and pooled: the circuit size at which faithfulness first reaches ``threshold``
    (log-linear between grid sizes, :func:`neuronlib.stats.bootstrap_size_at_threshold`) with a 95% bootstrap
    interval over test pairs (inf: more than 2.5% of resamples never reach it on the grid); ``reached``: the
    fraction of resamples that reach it."""
    rows = []
    for site, t, order, g in _ioi_strata(evals):
        sizes, nums, den, strata, first = _ioi_arrays(g)
        pos = sizes > 0  # log interpolation needs positive sizes
        b = stats.bootstrap_size_at_threshold(sizes[pos], nums["faithfulness"][pos], den, threshold, n_boot=n_boot,
                                              seed=0, strata=strata)
        rows.append({"site": site, "template": t, "order": order, "threshold": threshold,
                     "size": b["estimate"], "lo": b["lo"], "hi": b["hi"], "reached": b["reached"],
                     "max_size": int(sizes.max()), "n_test": len(den),
                     "n_train": int(first.drop_duplicates(["template", "order"])["n_train"].sum()),
                     "denominator": float(den.mean())})
    return pd.DataFrame(rows)


def ioi_top_neurons(model, atts: dict, train: pd.DataFrame, *, n: int = 10) -> pd.DataFrame:
    """The ``n`` neuron nodes with the largest |mean attribution| over the training pairs of a (template, order)
    (each stratum's top nodes pooled, ranked by |score|), with the position's token, the active side (sign of the mean
    activation there over the training prompts) and the :func:`neuronlib.describe` output-lens description."""
    from ..activations import read_sites

    frames = []
    for (site, t, order), att in atts.items():
        if site != "mlp_acts":
            continue
        top = att.mean().top(n)
        top["template"], top["order"] = t, order
        frames.append(top)
    if not frames:
        return pd.DataFrame()
    top = pd.concat(frames, ignore_index=True)
    top = top.reindex(top["score"].abs().sort_values(ascending=False).index).head(n).reset_index(drop=True)
    signs = []
    for r in top.itertuples():
        prompts = list(train.loc[(train["template"] == r.template) & (train["order"] == r.order), "clean_prefix"])
        vals, _ = read_sites(model, model.tokenize(prompts), ("mlp_acts",))
        signs.append("-" if float(vals["mlp_acts"][int(r.layer)][:, int(r.position), int(r.unit)].mean()) < 0 else "+")
    top["sign"] = signs
    return describe_neurons(model, top, k=8)
