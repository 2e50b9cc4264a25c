"""The paper's appendix case studies (issue 16): addition, antonyms (English and multilingual), and indirect-object
identification (IOI). The analysis behind ``notebooks/06_appendix_case_studies.ipynb``.

Every part states the model's accuracy first (Wilson intervals), then builds circuits with the case-study pipeline
of :mod:`neuronlib.paper.multihop` (:func:`~neuronlib.paper.multihop.trace_circuits`: RelP, zero baseline, metric =
sum of the top-5 next-token logits, nodes with ``|score| >= tau * metric``, tau = 0.005), and groups neurons by the
AUROC of their position-summed attribution across prompts against hypothesis labels
(:func:`~neuronlib.paper.multihop.unit_aurocs`, one-vs-rest per label value).

Selection and evaluation use different prompts: neurons are *selected* by AUROC on one half of the prompts
(:func:`auroc_groups`), each count is compared with the count under shuffled labels
(:func:`neuronlib.stats.permutation_null_counts`), and the selected neurons are *checked* on the other half (same
side of 0.5 and past the threshold again), again against shuffled labels. IOI circuits are attributed on training
pairs and evaluated (faithfulness, completeness, mean ablation) on test pairs, with bootstrap intervals over the
test pairs (:func:`neuronlib.stats.bootstrap_ratio`, stratified by template).
"""
from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import torch

from .. import stats
from ..data import packaged
from .multihop import TAU, last_logits, trace_circuits  # noqa: F401  (trace_circuits re-exported for notebooks)

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
    seen_binary = set()
    for fam, value, y in one_vs_rest(labels, families):
        if _binary_family(labels, fam):
            if fam in seen_binary:
                continue
            seen_binary.add(fam)
        ys, ye = y[sel], y[ev]
        if not (0 < ys.sum() < len(ys)) or not (0 < ye.sum() < len(ye)):
            logger.info(f"label {fam}={value}: one class missing from a half; skipped")
            continue
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


def auroc_histogram(summed_PLU: torch.Tensor, labels: pd.DataFrame, families, *, bins=None, seed: int = 0
                    ) -> pd.DataFrame:
    """Per family, the histogram over neurons of the best folded AUROC over the family's one-vs-rest labels
    (|AUROC - 0.5| + 0.5), with the real labels and with the prompts' labels shuffled once (the whole label row
    moves together, so the families keep their structure). Columns family, bin_lo, bin_hi, real, null."""
    from scipy.stats import rankdata

    bins = np.linspace(0.5, 1.0, 51) if bins is None else np.asarray(bins)
    P, L, U = summed_PLU.shape
    ranks = rankdata(summed_PLU.reshape(P, L * U).double().numpy(), axis=0)
    perm = np.random.default_rng(seed).permutation(P)
    shuffled = labels.iloc[perm].reset_index(drop=True)
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


def ioi_pairs(tokenizer, n_per_template: int, *, seed: int = 0, vocabulary: dict | None = None) -> pd.DataFrame:
    """``n_per_template`` IOI pairs per template (community record format plus template, io, s, place, object).

    Clean: "When {A} and {B} went to the {place}, {B} gave a {object} to" -> " {A}" (the indirect object); patch:
    the same sentence with the second {B} replaced by {A} -> " {B}" (the subject of the second clause changes, so
    the indirect object does). The order of the two names in the first clause is random (ABBA and BABA). Only
    names, places and objects that are one token (with a leading space) are used, so the prompts of a template all
    have one token length and the clean and patch prompts of a pair too."""
    voc = load_ioi_vocabulary() if vocabulary is None else vocabulary
    names = single_token_words(tokenizer, voc["name"])
    places = single_token_words(tokenizer, voc["place"])
    objects = single_token_words(tokenizer, voc["object"])
    if len(names) < 2 or not places or not objects:
        raise ValueError("the tokenizer leaves too few single-token names, places or objects")
    rng = np.random.default_rng(seed)
    rows = []
    for t, template in enumerate(voc["template"]):
        seen = set()
        while sum(r["template"] == t for r in rows) < n_per_template:
            io, s = rng.choice(names, 2, replace=False).tolist()
            place, obj = str(rng.choice(places)), str(rng.choice(objects))
            key = (io, s, place, obj)
            if key in seen:
                continue
            seen.add(key)
            first, second = (io, s) if rng.random() < 0.5 else (s, io)
            clean = template.format(A=first, B=second, place=place, object=obj)
            # the second clause's subject is {B} in the template; write it as s (clean) / io (patch)
            head, tail = clean.rsplit(f" {second} gave", 1) if f" {second} gave" in clean else (None, None)
            if head is None:
                continue
            clean = f"{head} {s} gave{tail}"
            patch = f"{head} {io} gave{tail}"
            rows.append({"template": t, "clean_prefix": clean, "patch_prefix": patch, "clean_answer": " " + io,
                         "patch_answer": " " + s, "io": io, "s": s, "place": place, "object": obj,
                         "order": "ABBA" if first == io else "BABA"})
    out = pd.DataFrame(rows)
    out["case"] = out["template"]
    return out


def split_pairs(pairs: pd.DataFrame, *, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Half of each template's pairs for attribution (train), half for evaluation (test)."""
    sel, ev = stratified_split(pairs["template"].to_numpy(), seed=seed)
    return pairs.iloc[sel].reset_index(drop=True), pairs.iloc[ev].reset_index(drop=True)


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


def ioi_curves(model, train: pd.DataFrame, test: pd.DataFrame, *, sites=("mlp_acts", "mlp_out"), sizes,
               method: str = "relp", mode: str = "mean", batch_size: int = 16, n_boot: int = 1000,
               progress: bool = False) -> tuple[pd.DataFrame, dict]:
    """Faithfulness and completeness of the top-k circuits per basis: attribution (``method``, paired, metric
    logit(IO) - logit(S)) on each template's training pairs, evaluation (``mode`` ablation) on its test pairs;
    ratios pooled over all test pairs (Σ numerators / Σ denominators) with a bootstrap interval over the test pairs
    stratified by template. Returns (curves, attributions {(site, template): Attribution})."""
    import neuronlib

    records = lambda frame: frame[["clean_prefix", "patch_prefix", "clean_answer", "patch_answer", "template"]] \
        .to_dict("records")  # noqa: E731
    per_site: dict[str, list[pd.DataFrame]] = {s: [] for s in sites}
    atts = {}
    for t in sorted(train["template"].unique()):
        tr, te = train[train["template"] == t], test[test["template"] == t]
        if not len(te):
            continue
        for site in sites:
            att = neuronlib.attribute(model, records(tr), metric="logit_diff", method=method,
                                      baseline="counterfactual", sites=(site,), batch_size=batch_size,
                                      progress=progress)
            atts[(site, int(t))] = att
            ev = neuronlib.evaluate_circuit(model, att, records(te), sizes=list(sizes), mode=mode, sites=(site,),
                                            metric="logit_diff", batch_size=batch_size, per_example=True,
                                            progress=progress)
            ev = ev[ev["group"] == "all"].copy()
            ev["template"] = int(t)
            per_site[site].append(ev)
    rows = []
    for site, frames in per_site.items():
        if not frames:
            continue
        strata = np.concatenate([np.full(len(f["m_M_ex"].iloc[0]), f["template"].iloc[0]) for f in frames])
        for k in sizes:
            at = [f[f["size"] == min(k, int(f["size"].max()))].iloc[0] for f in frames]
            m0 = np.concatenate([r["m_empty_ex"] for r in at])
            den = np.concatenate([r["m_M_ex"] for r in at]) - m0
            for what, col in (("faithfulness", "m_C_ex"), ("completeness", "m_Cbar_ex")):
                num = np.concatenate([r[col] for r in at]) - m0
                b = stats.bootstrap_ratio(num, den, n_boot=n_boot, seed=0, strata=strata)
                rows.append({"site": site, "size": int(k), "measure": what, "value": float(b["estimate"]),
                             "lo": float(b["lo"]), "hi": float(b["hi"]), "n_test": len(num),
                             "templates": len(frames)})
    return pd.DataFrame(rows), atts


def ioi_top_neurons(model, atts: dict, train: pd.DataFrame, *, n: int = 10) -> pd.DataFrame:
    """The ``n`` neuron nodes with the largest |mean attribution| over all templates' training pairs (each
    template's top nodes pooled, ranked by |score|), with the position's token, the active side (sign of the mean
    activation there over the training prompts) and the :func:`neuronlib.describe` output-lens description."""
    from ..activations import read_sites

    frames = []
    for (site, t), att in atts.items():
        if site != "mlp_acts":
            continue
        top = att.mean().top(n)
        top["template"] = t
        frames.append(top)
    if not frames:
        return pd.DataFrame()
    top = pd.concat(frames, ignore_index=True)
    top = top.reindex(top["score"].abs().sort_values(ascending=False).index).head(n).reset_index(drop=True)
    signs = []
    for r in top.itertuples():
        prompts = list(train.loc[train["template"] == r.template, "clean_prefix"])
        vals, _ = read_sites(model, model.tokenize(prompts), ("mlp_acts",))
        signs.append("-" if float(vals["mlp_acts"][int(r.layer)][:, int(r.position), int(r.unit)].mean()) < 0 else "+")
    top["sign"] = signs
    return describe_neurons(model, top, k=8)
