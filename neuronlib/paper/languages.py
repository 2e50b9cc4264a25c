"""City -> country -> language: the paper's case-study pipeline on a two-hop task the default model does.

The analysis behind ``notebooks/05_city_language.ipynb``; it reuses the case-study pipeline of
:mod:`neuronlib.paper.casestudy` (prompt evaluation, RelP circuits, AUROC, steering) and adds what a referee would
ask for:

1. :func:`evaluate` -- accuracy of the two-hop prompt (plain and chat form), of each hop alone and of the direct
   city -> language prompt (the shortcut control), per split, with Wilson intervals (:func:`accuracy_by_split`);
   :func:`shortcut_control` -- the two-hop and direct prompts compared city by city: where the direct prompt does
   as well, the task admits a shortcut and its accuracy cannot show composition (:func:`shortcut_reading`).
2. :func:`split_by_city` -- selection and evaluation halves, split by city within each country: neurons are
   chosen on selection prompts only, every rate is measured on evaluation prompts.
3. :func:`group_counts` -- neuron groups from AUROC of attribution (which country, which language, say a
   language vs say a country), each count beside a permutation null.
4. :func:`patch_pairs` / :func:`patch_sweep` -- the intermediate hop: patch a country group at the city's tokens
   from a city of another country and measure p(target language) vs p(source language), and the country answer on
   the city -> country prompt, against random, |attribution|-matched and dense controls; :func:`delta_patch_sweep`
   -- a dose curve: the top-N nodes by |activation difference| between the two prompts, at the city's tokens and
   at the later positions, against N random nodes at the same positions.
5. :func:`steering_controls` -- scaling say-a-language neurons (and random and matched controls) at the last
   position (x0 is a knock-out: necessity); :func:`neuronlib.paper.casestudy.set_group_test` -- steering proper:
   set them to their values on prompts whose answer is a country; does the top answer become the city's country?

Every function returns a tidy DataFrame; the notebook writes them to ``results/`` and the figures in
:mod:`neuronlib.paper.figures` draw from those tables.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..data import languages as lang_data
from ..interventions import patch
from ..sites import Node
from . import casestudy

logger = logging.getLogger(__name__)

KINDS = ("language", "country", "city")
TASKS = {  # task -> (prompt builder over a row, the expected kind of answer)
    "two_hop": (lambda row, tok: lang_data.two_hop_prompt(row["city"]), "language"),
    "two_hop_chat": (lambda row, tok: lang_data.two_hop_chat_prompt(row["city"], tok), "language"),
    "city_to_country": (lambda row, tok: lang_data.city_to_country_prompt(row["city"]), "country"),
    "city_to_country_matched": (lambda row, tok: lang_data.city_to_country_matched_prompt(row["city"]), "country"),
    "country_to_language": (lambda row, tok: lang_data.country_to_language_prompt(row["country"]), "language"),
    "direct": (lambda row, tok: lang_data.direct_prompt(row["city"]), "language"),  # the shortcut control
}


# ---------------------------------------------------------------------------------------------------------------
# split and accuracy


def split_by_city(df: pd.DataFrame, *, seed: int = 0) -> np.ndarray:
    """``"selection"`` / ``"evaluation"`` per row: half the cities of each country (rounded up) select neurons,
    the other half evaluate them (:func:`neuronlib.paper.casestudy.split_by_key`)."""
    sel = casestudy.split_by_key(df["city"], df["country"], seed=seed)
    return np.where(sel, "selection", "evaluation")


def task_prompts(df: pd.DataFrame, tokenizer, task: str) -> list[str]:
    return casestudy.task_prompts(df, tokenizer, task, table=TASKS)


def evaluate(model, df: pd.DataFrame, tasks=None, *, split=None, batch_size: int = 16) -> pd.DataFrame:
    """:func:`neuronlib.paper.casestudy.evaluate_tasks` on the languages table: one row per (task, city) with
    first-token p(language), p(country), p(city), ``top_is`` (whole name checked) and ``correct``; ``split``
    (one label per row of ``df``) is copied into a ``split`` column."""
    out = casestudy.evaluate_tasks(model, df, tasks, table=TASKS, kinds=KINDS, batch_size=batch_size)
    if split is not None:
        split = np.asarray(split)
        out["split"] = np.tile(split, len(out) // len(df))
    return out


def accuracy_by_split(evals: pd.DataFrame) -> pd.DataFrame:
    """:func:`neuronlib.paper.casestudy.accuracy_table` for all prompts and for each split (``split`` column:
    "all", "selection", "evaluation"), with Wilson intervals."""
    frames = [casestudy.accuracy_table(evals).assign(split="all")]
    if "split" in evals:
        for name, g in evals.groupby("split", sort=False):
            frames.append(casestudy.accuracy_table(g).assign(split=name))
    return pd.concat(frames, ignore_index=True)


def shortcut_control(evals: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """The two-hop prompt against the direct city -> language prompt over the same cities (``evals`` of both
    tasks, rows in the same city order), for all cities and each split: both accuracies with Wilson intervals,
    the paired counts (both right, two-hop only, direct only, neither), the share of the two-hop prompt's right
    answers that the direct prompt also gets (Wilson), and the paired difference direct - two-hop with a
    percentile bootstrap interval over cities. ``shortcut``: the direct prompt gets most of the cities the two-hop
    prompt gets (the Wilson lower bound of that share above one half) -- the task can mostly be solved without
    the country step, so the two-hop prompt's accuracy cannot show composition."""
    from ..stats import bootstrap_indices, wilson_interval

    two = evals[evals["task"] == "two_hop"].reset_index(drop=True)
    direct = evals[evals["task"] == "direct"].reset_index(drop=True)
    if len(two) != len(direct) or not (two["city"].to_numpy() == direct["city"].to_numpy()).all():
        raise ValueError("the two-hop and direct evaluations must cover the same cities in the same order")
    splits = [("all", np.ones(len(two), dtype=bool))]
    if "split" in two:
        splits += [(name, (two["split"] == name).to_numpy()) for name in dict.fromkeys(two["split"])]
    rows = []
    for name, m in splits:
        a, b = two["correct"].to_numpy(bool)[m], direct["correct"].to_numpy(bool)[m]
        n = len(a)
        row = {"split": name, "n": n}
        for label, x in (("two_hop", a), ("direct", b)):
            lo, hi = wilson_interval(int(x.sum()), n)
            row.update({f"{label}_correct": int(x.sum()), f"{label}_accuracy": x.mean(), f"{label}_lo": lo,
                        f"{label}_hi": hi})
        row.update({"both": int((a & b).sum()), "two_hop_only": int((a & ~b).sum()),
                    "direct_only": int((~a & b).sum()), "neither": int((~a & ~b).sum())})
        lo, hi = wilson_interval(row["both"], int(a.sum()))
        row.update({"direct_given_two_hop": row["both"] / a.sum() if a.sum() else np.nan,
                    "direct_given_two_hop_lo": lo, "direct_given_two_hop_hi": hi})
        idx = bootstrap_indices(n, n_boot, seed=seed)
        diffs = b[idx].mean(1) - a[idx].mean(1)
        row.update({"difference": b.mean() - a.mean(), "difference_lo": float(np.quantile(diffs, 0.025)),
                    "difference_hi": float(np.quantile(diffs, 0.975))})
        row["shortcut"] = bool(row["direct_given_two_hop_lo"] > 0.5)
        rows.append(row)
    return pd.DataFrame(rows)


def shortcut_reading(row) -> str:
    """The shortcut control in words, from one row of :func:`shortcut_control` (every number from the row)."""
    pct = lambda x: f"{100 * x:.0f}%"  # noqa: E731
    rate = lambda k, lo, hi: f"{pct(row[k])} [{pct(row[lo])}, {pct(row[hi])}]"  # noqa: E731
    lo, hi = row["difference_lo"], row["difference_hi"]
    compare = ("about as accurate as" if lo <= 0 <= hi else "less accurate than" if hi < 0 else "more accurate than")
    text = (f"the direct prompt (\"{lang_data.DIRECT}\", no country step) is right for "
            f"{int(row['direct_correct'])}/{int(row['n'])} = {rate('direct_accuracy', 'direct_lo', 'direct_hi')} of "
            f"the cities, the two-hop prompt for {int(row['two_hop_correct'])}/{int(row['n'])} = "
            f"{rate('two_hop_accuracy', 'two_hop_lo', 'two_hop_hi')}: {compare} the two-hop prompt (paired "
            f"difference direct − two-hop {100 * row['difference']:+.0f} points [{100 * lo:+.0f}, {100 * hi:+.0f}]); "
            f"of the two-hop prompt's {int(row['two_hop_correct'])} right answers the direct prompt also gets "
            f"{int(row['both'])} ({rate('direct_given_two_hop', 'direct_given_two_hop_lo', 'direct_given_two_hop_hi')}). ")
    if row["shortcut"]:
        return (text + "The task admits a shortcut: for most cities the model names the language without being "
                "asked for the country, so the two-hop prompt's accuracy cannot show that it composes the hops.")
    return (text + "The direct prompt misses too many of the two-hop prompt's answers to call the task a shortcut "
            "(the share's lower bound is not above one half); this alone does not show how the hops are composed.")


def prompt_tokens(tokenizer, prompt: str) -> list[str]:
    """The prompt's tokens as decoded strings (as :class:`neuronlib.Attribution` lists them)."""
    return [tokenizer.decode([t]) for t in tokenizer(prompt, add_special_tokens=False)["input_ids"]]


def city_positions(tokens: list[str], city: str) -> list[int]:
    """Positions of the city's tokens in a prompt's token list (its last occurrence)."""
    return casestudy.name_positions(tokens, city)


# ---------------------------------------------------------------------------------------------------------------
# AUROC groups with permutation nulls


class GroupRules:
    """Thresholds of the groups (documented in the notebook)."""

    auroc_class = 0.95  # which country / which language (one against the rest), position-summed attribution
    auroc_high = 0.9  # say a language: AUROC(answer is a language) at the last position
    auroc_low = 0.1  # say a country
    min_positives = 2  # a class needs this many selection prompts to get an AUROC


def at_city_attribution(circuits: casestudy.PromptCircuits, cities: list[str]) -> torch.Tensor:
    """[P, L, U]: each neuron's attribution summed over the city's token positions (needs ``keep_scores``)."""
    if circuits.scores is None:
        raise ValueError("trace the circuits with keep_scores=True")
    out = []
    for s, tokens, city in zip(circuits.scores, circuits.tokens, cities):
        pos = city_positions(tokens, city)
        if not pos:
            raise ValueError(f"city {city!r} not found in {tokens}")
        out.append(s[:, pos].float().sum(1))
    return torch.stack(out)


def group_counts(two_hop: casestudy.PromptCircuits, hop1: casestudy.PromptCircuits, rows2: pd.DataFrame, *,
                 rules=GroupRules, n_perm: int = 100, seed: int = 0) -> pd.DataFrame:
    """Counts of neurons in each AUROC group on the (selection) prompts, beside permutation nulls:

    * ``which country``: AUROC >= ``auroc_class`` for at least one country (its two-hop prompts against the other
      countries'), position-summed attribution; null: country labels shuffled across prompts;
    * ``which language``: the same with languages;
    * ``say a language`` / ``say a country``: last-position attribution of the two-hop prompts (answer: a
      language) against ``hop1``, city -> country prompts in the same frame (answer: a country; the
      ``city_to_country_matched`` task), AUROC >= ``auroc_high`` / <= ``auroc_low``; null: the prompt-kind labels
      shuffled.
    """
    from ..stats import permutation_null_counts

    P, L, U = two_hop.summed.shape
    summed = two_hop.summed.reshape(P, L * U).double().numpy()
    rows = []
    for group, col in (("which country", "country"), ("which language", "language")):
        res = casestudy.class_group_null(summed, rows2[col].to_numpy(), high=rules.auroc_class,
                                         min_positives=rules.min_positives, n_perm=n_perm, seed=seed)
        rows.append({"group": group, "rule": f"AUROC >= {rules.auroc_class} for one {col}", "n_prompts": P,
                     "n_classes": res["n_classes"], **{k: v for k, v in res.items() if k not in ("null", "n_classes")}})
    last = torch.cat([hop1.last, two_hop.last])
    labels = np.r_[np.zeros(len(hop1.prompts), dtype=int), np.ones(P, dtype=int)]
    flat = last.reshape(len(labels), L * U).double().numpy()
    for group, kw, rule in (("say a language", {"high": rules.auroc_high}, f"AUROC >= {rules.auroc_high}"),
                            ("say a country", {"low": rules.auroc_low}, f"AUROC <= {rules.auroc_low}")):
        res = permutation_null_counts(flat, labels, n_perm=n_perm, seed=seed, **kw)
        rows.append({"group": group, "rule": rule + " (answer is a language), last position",
                     "n_prompts": len(labels), "n_classes": 2,
                     **{k: v for k, v in res.items() if k != "null"}})
    out = pd.DataFrame(rows)
    out["passes_null"] = out["observed"] > out["null_q95"]
    return out


def say_language_auroc(two_hop: casestudy.PromptCircuits, hop1: casestudy.PromptCircuits) -> np.ndarray:
    """[L, U] AUROC (answer is a language) of last-position attribution: two-hop prompts vs city -> country."""
    last = torch.cat([hop1.last, two_hop.last])
    labels = np.r_[np.zeros(len(hop1.prompts), dtype=int), np.ones(len(two_hop.prompts), dtype=int)]
    return casestudy.unit_aurocs(last, labels)


# ---------------------------------------------------------------------------------------------------------------
# the intermediate hop: patching the country group


def patch_pairs(rows: pd.DataFrame, tokenizer, *, n_pairs: int | None = None, seed: int = 0,
                countries=None) -> pd.DataFrame:
    """Ordered (source, target) city pairs from ``rows`` (evaluation cities) with different countries and cities
    of the same token length (so the prompts align position by position); ``kind`` = "other language" or "same
    language" (two countries sharing a language). ``countries``: only cities of these (e.g. those with a country
    group). At most ``n_pairs`` (seeded sample, both kinds kept in proportion)."""
    rows = rows.reset_index(drop=True)
    if countries is not None:
        rows = rows[rows["country"].isin(set(countries))].reset_index(drop=True)
    n_tok = [len(tokenizer(" " + c, add_special_tokens=False)["input_ids"]) for c in rows["city"]]
    out = []
    for a in range(len(rows)):
        for b in range(len(rows)):
            if a == b or rows["country"][a] == rows["country"][b] or n_tok[a] != n_tok[b]:
                continue
            out.append({"source": rows["city"][a], "target": rows["city"][b],
                        "source_country": rows["country"][a], "target_country": rows["country"][b],
                        "source_language": rows["language"][a], "target_language": rows["language"][b],
                        "kind": "same language" if rows["language"][a] == rows["language"][b] else "other language"})
    pairs = pd.DataFrame(out, columns=["source", "target", "source_country", "target_country", "source_language",
                                       "target_language", "kind"])
    if n_pairs is not None and len(pairs) > n_pairs:
        pairs = pairs.sample(n=n_pairs, random_state=seed).sort_index()
    return pairs.reset_index(drop=True)


def country_group(auc_country: dict, a: str, b: str, n: int) -> list[tuple[int, int]]:
    """The ``n`` neurons with the largest AUROC(country a) + AUROC(country b) (each [L, U]): the neurons that
    matter specifically for the source's or the target's country."""
    s = auc_country[a] + auc_country[b]
    U = s.shape[1]
    idx = np.argsort(-s.reshape(-1), kind="stable")[:n]
    return [(int(i) // U, int(i) % U) for i in idx]


def patch_sweep(model, pairs: pd.DataFrame, variants: dict, *, batch_size: int = 16,
                progress: bool = True) -> pd.DataFrame:
    """Run each pair's source prompt with nodes set to their values on the target's prompt, for both tasks:
    ``two_hop`` (answer: the language) and ``city_to_country`` (answer: the country).

    ``variants``: name -> ``f(pair_row) -> (n_neurons, nodes_at(positions) -> list[Node])``; the nodes are placed
    at the source city's token positions in each task's prompt. One row per (variant, task, pair): p(source
    answer), p(target answer) (first tokens), ``success`` (top token = the target's answer's first token),
    ``prefers_target`` and ``source_kept`` (top token still the source's answer)."""
    rows = []
    for task, kind, src_prompts, tgt_prompts, pos in _pair_prompts(model.tokenizer, pairs):
        for variant, make in tqdm(list(variants.items()), desc=f"patch ({task})", disable=not progress):
            made = [make(r) for r in pairs.to_dict("records")]
            nodes = [f(p) for (_, f), p in zip(made, pos)]
            rows += _patch_rows(model, pairs, task, kind, src_prompts, tgt_prompts, nodes,
                                {"variant": variant}, n_neurons=[m[0] for m in made],
                                n_positions=[len(p) for p in pos], batch_size=batch_size)
    return pd.DataFrame(rows)


PATCH_TASKS = (("two_hop", "language"), ("city_to_country", "country"))


def _pair_prompts(tok, pairs: pd.DataFrame):
    """Per patched task: (task, answer kind, source prompts, target prompts, the source city's positions)."""
    for task, kind in PATCH_TASKS:
        build = TASKS[task][0]
        src_prompts = [build({"city": c}, tok) for c in pairs["source"]]
        tgt_prompts = [build({"city": c}, tok) for c in pairs["target"]]
        pos = [city_positions(prompt_tokens(tok, p), c) for p, c in zip(src_prompts, pairs["source"])]
        yield task, kind, src_prompts, tgt_prompts, pos


def _patch_rows(model, pairs, task, kind, src_prompts, tgt_prompts, nodes, labels: dict, *, n_neurons, n_positions,
                batch_size) -> list[dict]:
    """Patch each pair's ``nodes`` and describe the answers: one record per pair."""
    tok = model.tokenizer
    src_id = [casestudy.name_ids(tok, x)[0] for x in pairs[f"source_{kind}"]]
    tgt_id = [casestudy.name_ids(tok, x)[0] for x in pairs[f"target_{kind}"]]
    probs = patch(model, src_prompts, tgt_prompts, nodes, metric=None, batch_size=batch_size).logits.float().softmax(-1)
    top = probs.argmax(-1).tolist()
    rows = []
    for j, r in enumerate(pairs.itertuples()):
        rows.append({**labels, "task": task, "answer": kind, "pair": j, "kind": r.kind,
                     "source": r.source, "target": r.target, "n_neurons": n_neurons[j], "n_positions": n_positions[j],
                     "p_source": float(probs[j, src_id[j]]), "p_target": float(probs[j, tgt_id[j]]),
                     "top_token": tok.decode([top[j]]),
                     "success": top[j] == tgt_id[j] and tgt_id[j] != src_id[j],
                     "source_kept": top[j] == src_id[j],
                     "prefers_target": bool(probs[j, tgt_id[j]] > probs[j, src_id[j]])})
    return rows


WHERE = ("city tokens", "later positions")


def patch_positions(n_tokens: int, city_pos: list[int]) -> dict[str, list[int]]:
    """The position sets of the dose curve: the city's tokens, and every position after them (to the last)."""
    return {"city tokens": list(city_pos), "later positions": list(range(max(city_pos) + 1, n_tokens))}


def _flat_nodes(flat, positions: list[int], U: int) -> list[Node]:
    """Nodes of flat indices into an [L, len(positions), U] grid."""
    P = len(positions)
    return [Node("mlp_acts", int(i) // (P * U), int(positions[(int(i) // U) % P]), int(i) % U) for i in flat]


def rank_by_delta(delta_LTU: torch.Tensor, positions: list[int], n: int) -> list[Node]:
    """The ``n`` mlp_acts Nodes at ``positions`` with the largest |activation difference| (``delta_LTU``: target
    minus source, [L, T, U]), largest first (ties: lower flat index first)."""
    d = delta_LTU[:, positions, :].abs().reshape(-1).double().numpy()
    order = np.argsort(-d, kind="stable")[:n]
    return _flat_nodes(order, positions, delta_LTU.shape[2])


def random_nodes(shape_LTU, positions: list[int], n: int, rng) -> list[Node]:
    """``n`` distinct mlp_acts Nodes drawn uniformly at ``positions`` of an [L, T, U] grid."""
    L, _, U = shape_LTU
    size = L * len(positions) * U
    return _flat_nodes(rng.choice(size, size=min(n, size), replace=False), positions, U)


def delta_patch_sweep(model, pairs: pd.DataFrame, sizes, *, where=WHERE, seed: int = 0, batch_size: int = 16,
                      progress: bool = True) -> pd.DataFrame:
    """The patch dose curve. For each pair and task (two-hop: the language; city -> country: the country), the
    N nodes (layer, position, neuron) with the largest |activation(target prompt) - activation(source prompt)| at
    the positions ``where`` (the city's tokens, the later positions) are set to their values on the target's
    prompt, for each N of ``sizes``; control: N nodes drawn at random (seeded per pair) from the same positions.
    The ranking reads only the two prompts' activations, never the answer. One row per (where, selection, N,
    task, pair), with :func:`patch_sweep`'s columns plus ``where``, ``selection`` ("top |Δ|" or "random"),
    ``size``."""
    from ..activations import read_sites

    sizes = sorted(int(n) for n in sizes)
    rows = []
    for task, kind, src_prompts, tgt_prompts, pos in _pair_prompts(model.tokenizer, pairs):
        ranked: dict[tuple[str, str], list[list[Node]]] = {(w, s): [] for w in where for s in ("top |Δ|", "random")}
        n_pos: dict[str, list[int]] = {w: [] for w in where}
        for j in tqdm(range(len(pairs)), desc=f"activation differences ({task})", disable=not progress):
            vals, _ = read_sites(model, model.tokenize([src_prompts[j], tgt_prompts[j]]), ("mlp_acts",))
            acts = torch.stack([v.float().cpu() for v in vals["mlp_acts"]])  # [L, 2, T, U]; equal lengths: no padding
            delta = acts[:, 1] - acts[:, 0]
            sets = patch_positions(delta.shape[1], pos[j])
            rng = np.random.default_rng(seed + j)
            for w in where:
                ranked[(w, "top |Δ|")].append(rank_by_delta(delta, sets[w], sizes[-1]))
                ranked[(w, "random")].append(random_nodes(delta.shape, sets[w], sizes[-1], rng))
                n_pos[w].append(len(sets[w]))
        for (w, sel), lists in ranked.items():
            for n in tqdm(sizes, desc=f"patch {sel} at {w} ({task})", disable=not progress):
                nodes = [nl[:n] for nl in lists]
                rows += _patch_rows(model, pairs, task, kind, src_prompts, tgt_prompts, nodes,
                                    {"variant": f"{sel} {n} at {w}", "where": w, "selection": sel, "size": n},
                                    n_neurons=[len(x) for x in nodes], n_positions=n_pos[w], batch_size=batch_size)
    return pd.DataFrame(rows)


def dose_summary(patches: pd.DataFrame) -> pd.DataFrame:
    """Per (task, pair kind, where, N): the top-|Δ| nodes' success rate (top answer = the target's) with its Wilson
    interval beside the random nodes', and ``beyond_random`` (the top-|Δ| lower bound above the random upper
    bound)."""
    summ = patch_summary(patches, by=("task", "kind", "where", "size", "selection"))
    out = []
    for (task, kind, where), g in summ.groupby(["task", "kind", "where"], sort=False):
        v = casestudy.beyond_controls(g.rename(columns={"selection": "role"}), group_of="top |Δ|",
                                      controls=("random",))
        out.append(v.drop(columns="group").rename(columns={"controls_max": "random_success",
                                                           "controls_hi": "random_hi",
                                                           "beyond_controls": "beyond_random"})
                   .assign(task=task, answer=g["answer"].iloc[0], kind=kind, where=where,
                           pairs=int(g["pairs"].max())))
    cols = ["task", "answer", "kind", "where", "size", "pairs"]
    out = pd.concat(out, ignore_index=True)
    return out[cols + [c for c in out.columns if c not in cols]]


def neuron_variant(neurons_of_pair, label=None):
    """A patch variant from ``f(pair_row) -> [(layer, unit)]`` (mlp_acts neurons at the city's positions)."""
    def make(r):
        neurons = neurons_of_pair(r)
        return len(neurons), lambda positions: casestudy.at_positions(neurons, positions)
    return make


def dense_variant(model, site: str, layers=None):
    """A dense reference: every unit of ``site`` (``"embed"``: the token embedding; ``"mlp_acts"``: every neuron of
    ``layers``) at the city's positions."""
    if site == "embed":
        width = model.hf.config.hidden_size
        return lambda r: (width, lambda positions: [Node("embed", -1, int(p), u) for p in positions
                                                   for u in range(width)])
    layers = list(range(model.n_layers)) if layers is None else list(layers)
    return lambda r: (len(layers) * model.d_mlp, lambda positions: [
        Node("mlp_acts", l, int(p), u) for p in positions for l in layers for u in range(model.d_mlp)])


def patch_summary(patches: pd.DataFrame, *, by=("task", "kind", "variant")) -> pd.DataFrame:
    """Per (task, pair kind, variant) (or the columns ``by``): pairs, success rate (top answer = the target's) with
    its Wilson interval, the rate at which the source's answer survives, p(target) > p(source), and mean
    p(target), p(source) with bootstrap intervals over pairs."""
    from ..stats import wilson_interval

    rows = []
    for key, g in patches.groupby(list(by), sort=False):
        n = len(g)
        row = {**dict(zip(by, key)), "answer": g["answer"].iloc[0], "pairs": n,
               "n_neurons": float(g["n_neurons"].mean())}
        for col in ("success", "source_kept", "prefers_target"):
            k = int(g[col].sum())
            lo, hi = wilson_interval(k, n)
            row.update({col: k / n, f"{col}_lo": lo, f"{col}_hi": hi})
        for col in ("p_target", "p_source"):
            m, lo, hi = casestudy.mean_interval(g[col].to_numpy())
            row.update({col: m, f"{col}_lo": lo, f"{col}_hi": hi})
        rows.append(row)
    return pd.DataFrame(rows)


def composition_verdict(summary: pd.DataFrame, *, group_prefix: str = "country group",
                        controls=("random", "matched")) -> pd.DataFrame:
    """Per neuron count of the country group, on "other language" pairs: does patching it move the language
    answer (two-hop) and the country answer (city -> country) to the target's, beyond the random and matched
    controls of the same size (Wilson intervals that do not overlap)? One row per size with both success rates,
    the controls' upper bounds and ``language_beyond_controls`` / ``country_beyond_controls``."""
    s = summary[summary["kind"] == "other language"]
    rows = []
    for variant in s["variant"].unique():
        if not variant.startswith(group_prefix):
            continue
        n = variant[len(group_prefix):].strip()
        row = {"size": n}
        for task, name in (("two_hop", "language"), ("city_to_country", "country")):
            g = s[(s["task"] == task)].set_index("variant")
            if variant not in g.index:
                continue
            row[f"{name}_success"] = g.loc[variant, "success"]
            row[f"{name}_lo"] = g.loc[variant, "success_lo"]
            row[f"{name}_hi"] = g.loc[variant, "success_hi"]
            ctrl_hi = [g.loc[f"{c} {n}", "success_hi"] for c in controls if f"{c} {n}" in g.index]
            row[f"{name}_controls_hi"] = max(ctrl_hi) if ctrl_hi else float("nan")
            row[f"{name}_beyond_controls"] = bool(ctrl_hi) and row[f"{name}_lo"] > max(ctrl_hi)
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------------------
# steering say-a-language neurons


def last_position_nodes(prompts_tokens: list[list[str]], neurons) -> list[list[Node]]:
    """Per prompt, ``neurons`` at its last position."""
    return [casestudy.at_positions(neurons, [len(t) - 1]) for t in prompts_tokens]


def steering_controls(model, prompts: list[str], rows: pd.DataFrame, neuron_sets: dict, multipliers, *,
                      batch_size: int = 16, progress: bool = True) -> pd.DataFrame:
    """:func:`neuronlib.paper.casestudy.steering_controls` with p(language), p(country), p(city)."""
    return casestudy.steering_controls(model, prompts, rows, neuron_sets, multipliers, batch_size=batch_size,
                                       progress=progress, kinds=KINDS)


def steering_summary(sweeps: pd.DataFrame) -> pd.DataFrame:
    """:func:`neuronlib.paper.casestudy.steering_summary` (the answer is the language)."""
    return casestudy.steering_summary(sweeps, kinds=KINDS)


def dose_findings(dose: pd.DataFrame, *, kind: str = "other language") -> pd.DataFrame:
    """Per (answer, where) of :func:`dose_summary` on ``kind`` pairs: the smallest N whose top-|Δ| success rate is
    beyond the random nodes' (``first_size``, with its rate, Wilson interval and the random upper bound; ``beyond``
    False and NaN when no N is), and the rate at the largest N."""
    rows = []
    for (answer, where), g in dose[dose["kind"] == kind].groupby(["answer", "where"], sort=False):
        g = g.sort_values("size")
        top = g.iloc[-1]
        hit = g[g["beyond_random"].astype(bool)]
        first = hit.iloc[0] if len(hit) else None
        rows.append({"answer": answer, "where": where, "pairs": int(g["pairs"].max()), "beyond": first is not None,
                     "first_size": int(first["size"]) if first is not None else np.nan,
                     "success": first["success"] if first is not None else np.nan,
                     "success_lo": first["success_lo"] if first is not None else np.nan,
                     "success_hi": first["success_hi"] if first is not None else np.nan,
                     "random_hi": first["random_hi"] if first is not None else np.nan,
                     "max_size": int(top["size"]), "success_at_max": top["success"], "lo_at_max": top["success_lo"],
                     "hi_at_max": top["success_hi"], "random_at_max": top["random_success"]})
    out = pd.DataFrame(rows)
    if len(out):
        out["first_size"] = out["first_size"].astype("Int64")  # a size, or <NA> where none is beyond random
    return out


def dose_reading(dose: pd.DataFrame | None, verdict: pd.DataFrame | None = None) -> str:
    """The conclusion the patching supports, in words, from the dose curve (:func:`dose_summary`) and the country
    group's verdict (:func:`composition_verdict`); every number in it comes from those tables."""
    parts = []
    if verdict is not None and len(verdict):
        hit = verdict[verdict["language_beyond_controls"].astype(bool)]
        parts.append("the AUROC-selected country group, patched at the city's tokens only, moves the language answer "
                     "beyond its random and matched controls "
                     + (f"from {hit['size'].iloc[0]} neurons" if len(hit) else
                        f"at no size tested (up to {verdict['size'].iloc[-1]} neurons)"))
    if dose is not None and len(dose):
        f = dose_findings(dose)
        for r in f[f["answer"] == "language"].itertuples():
            parts.append(f"the top {int(r.first_size):,} nodes by |Δactivation| at the {r.where} move it beyond random "
                         f"nodes ({r.success:.0%} [{r.success_lo:.0%}, {r.success_hi:.0%}] of {r.pairs} pairs)" if r.beyond
                         else f"no set of up to {r.max_size:,} nodes at the {r.where} moves it beyond random nodes "
                         f"({r.success_at_max:.0%} [{r.lo_at_max:.0%}, {r.hi_at_max:.0%}] at {r.max_size:,})")
    if not parts:
        return "no patching was run."
    text = "; ".join(parts) + ". "
    return (text[0].upper() + text[1:] + "Patching the city's tokens moves the city itself (its country and whatever "
            "else the language is read from), so a success there does not separate composition through the country "
            "from a direct city → language route; a failure of a small set says the information is spread over more "
            "nodes than that, not that no country representation exists.")
