"""The case-study pipeline shared by the prompt-set studies: the capitals (:mod:`neuronlib.paper.multihop`), the
city -> language (:mod:`neuronlib.paper.languages`) and the appendix case studies (:mod:`neuronlib.paper.appendix`).

Each study brings its prompt table (task -> (prompt builder over a row, the expected kind of answer)) and its
``kinds`` of answer (columns of its rows, e.g. capital / state / city); everything here takes them as arguments:

* prompts and answers -- :func:`task_prompts`, :func:`evaluate_tasks` (first-token probabilities of each kind, the
  greedy answer checked on the whole name), :func:`accuracy_table` (Wilson intervals), :func:`name_ids`,
  :func:`name_positions`;
* circuits -- :func:`trace_circuits`: RelP, zero baseline, metric = sum of the top-5 next-token logits, nodes with
  ``|score| >= tau * metric`` (tau = :data:`TAU`) at every position, per prompt (:func:`select_circuit`,
  :class:`PromptCircuits`);
* selection and evaluation -- :func:`split_by_key`; AUROC of attribution against labels (:func:`unit_aurocs`,
  :func:`class_aurocs`) and counts beside a label-shuffle null (:func:`class_group_null`);
* neuron sets -- random and |attribution|-matched controls of a chosen set (:func:`control_sets`,
  :func:`random_neurons`, :func:`matched_neurons`);
* steering -- scaling neurons at chosen positions (:func:`steering_sweep`, :func:`steering_controls`,
  :func:`steering_summary`; x0 is a knock-out) and setting a group to its values on prompts with another kind of
  answer (:func:`set_group_test`, :func:`set_group_summary`), judged against the controls with
  :func:`beyond_controls`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .. import tracing
from ..sites import Node

TAU = 0.005  # the paper's circuit threshold on |score|, as a fraction of the metric


# ---------------------------------------------------------------------------------------------------------------
# prompts and answers


def task_prompts(df: pd.DataFrame, tokenizer, task: str, *, table: dict) -> list[str]:
    """The prompts of ``task`` for every row (``table``: task -> (builder(row, tokenizer), expected kind))."""
    if task not in table:
        raise ValueError(f"unknown task {task!r}; use one of {tuple(table)}")
    build = table[task][0]
    return [build(row, tokenizer) for row in df.to_dict("records")]


def name_ids(tokenizer, name: str) -> list[int]:
    """The token ids of ``name`` as it follows a prompt (with a leading space, no special tokens); the first is the
    answer's first token."""
    return tokenizer(" " + name, add_special_tokens=False)["input_ids"]


def name_positions(tokens: list[str], name: str) -> list[int]:
    """Positions of the tokens that spell ``name`` (its last occurrence) in a prompt's token list."""
    target = name.replace(" ", "")
    for end in range(len(tokens), 0, -1):
        text = ""
        for start in range(end - 1, -1, -1):
            text = tokens[start].replace(" ", "") + text
            if text == target:
                return list(range(start, end))
            if not target.endswith(text):
                break
    return []


def answer_ids(df: pd.DataFrame, tokenizer, *, kinds) -> pd.DataFrame:
    """First-token id (with a leading space) and full token ids of each row's names of ``kinds`` (columns of
    ``df``, e.g. capital, state, city)."""
    out = pd.DataFrame(index=df.index)
    for kind in kinds:
        ids = [name_ids(tokenizer, name) for name in df[kind]]
        out[f"{kind}_id"] = [i[0] for i in ids]
        out[f"{kind}_ids"] = ids
    return out


def last_logits(model, prompts: list[str], *, batch_size: int = 16) -> torch.Tensor:
    """Next-token logits [B, V] (float32, CPU), batched."""
    out = []
    for start in range(0, len(prompts), batch_size):
        enc = model.tokenize(prompts[start:start + batch_size])
        out.append(tracing.logits(model, enc).float().cpu())
    return torch.cat(out)


def greedy_continues(model, prompts: list[str], names: list[str]) -> list[bool]:
    """Does greedy decoding after each prompt produce ``" " + name`` token by token? (teacher-forced check)."""
    tok = model.tokenizer
    result = []
    for prompt, name in zip(prompts, names):
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        n_ids = name_ids(tok, name)
        ids = torch.tensor([p_ids + n_ids[:-1]], device=model.device)
        with torch.no_grad():
            lg = model.hf(input_ids=ids, use_cache=False).logits[0]
        pred = lg[len(p_ids) - 1:].argmax(-1).tolist()
        result.append(pred == n_ids)
    return result


def _categorise(model, prompts, names: dict[str, list[str]], ids: pd.DataFrame, top_ids, kinds) -> list[str]:
    """The kind (e.g. capital/state/city) whose *whole* name greedy decoding produces, else "other"."""
    cats = []
    for i, prompt in enumerate(prompts):
        found = "other"
        for kind in kinds:
            kind_ids = ids[f"{kind}_ids"].iloc[i]
            if kind_ids[0] != top_ids[i]:
                continue
            if len(kind_ids) == 1 or greedy_continues(model, [prompt], [names[kind][i]])[0]:
                found = kind
                break
        cats.append(found)
    return cats


def evaluate_tasks(model, df: pd.DataFrame, tasks=None, *, table: dict, kinds, batch_size: int = 16) -> pd.DataFrame:
    """One row per (task, row of ``df``): first-token p(kind) for each of ``kinds`` (columns of ``df``, e.g.
    capital, state, city), their ranks, the top token, and ``top_is`` -- which kind the greedy answer is (whole name
    checked), or "other". ``correct``: ``top_is`` equals the task's expected kind. ``table``: task -> (prompt
    builder, expected kind); ``tasks``: default every task of ``table``."""
    tasks = tuple(table) if tasks is None else tasks
    tok = model.tokenizer
    ids = answer_ids(df, tok, kinds=kinds)
    names = {k: list(df[k]) for k in kinds}
    frames = []
    for task in tasks:
        prompts = task_prompts(df, tok, task, table=table)
        logits = last_logits(model, prompts, batch_size=batch_size)
        probs = logits.softmax(-1)
        top_p, top_id = probs.max(-1)
        frame = df[list(kinds)].copy()
        frame.insert(0, "task", task)
        frame["prompt"] = prompts
        frame["top_token"] = [tok.decode([t]) for t in top_id.tolist()]
        frame["top_prob"] = top_p.numpy()
        for kind in kinds:
            kid = torch.tensor(ids[f"{kind}_id"].tolist())
            frame[f"p_{kind}"] = probs.gather(-1, kid[:, None])[:, 0].numpy()
            frame[f"rank_{kind}"] = (logits > logits.gather(-1, kid[:, None])).sum(-1).numpy() + 1
        frame["top_is"] = _categorise(model, prompts, names, ids, top_id.tolist(), kinds)
        expected = table[task][1]
        frame["expected"] = expected
        frame["correct"] = frame["top_is"] == expected
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _kinds_of(frame: pd.DataFrame) -> tuple[str, ...]:
    return tuple(c[2:] for c in frame.columns if c.startswith("p_"))


def accuracy_table(evals: pd.DataFrame) -> pd.DataFrame:
    """Per task: the fraction of prompts whose greedy answer is each kind (e.g. capital / state / city) or other,
    the accuracy (answer = the expected kind) with its Wilson 95% interval, and the mean first-token p(expected)."""
    from ..stats import wilson_interval

    rows = []
    for task, g in evals.groupby("task", sort=False):
        expected = g["expected"].iloc[0]
        k = int(g["correct"].sum())
        lo, hi = wilson_interval(k, len(g))
        row = {"task": task, "expected": expected, "n": len(g), "correct": k, "accuracy": k / len(g),
               "accuracy_lo": lo, "accuracy_hi": hi}
        for kind in (*_kinds_of(g), "other"):
            row[f"top_is_{kind}"] = (g["top_is"] == kind).mean()
        row["mean_p_expected"] = g[f"p_{expected}"].mean()
        row["median_rank_expected"] = g[f"rank_{expected}"].median()
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------------------
# circuits


def select_circuit(scores_BLTU: torch.Tensor, metric_B: torch.Tensor, lengths_B: torch.Tensor, *, tau: float = TAU,
                   tokens: list[list[str]] | None = None) -> pd.DataFrame:
    """Nodes with ``|score| >= tau * |metric|`` per example, at every position (docs/method.md §2, case studies).

    ``scores_BLTU`` is in the left-padded layout of :class:`neuronlib.Attribution` (position t of example b is its
    token ``t - (T - lengths[b])``). Returns example, layer, position (real), token, unit, score, largest first.
    """
    if scores_BLTU.dim() != 4:
        raise ValueError(f"scores must be [B, L, T, U], got shape {tuple(scores_BLTU.shape)}")
    if not tau >= 0:
        raise ValueError(f"tau must be >= 0, got {tau!r}")
    B, L, T, U = scores_BLTU.shape
    frames = []
    for b in range(B):
        thr = tau * abs(float(metric_B[b]))
        s = scores_BLTU[b]
        idx = (s.abs() >= thr).nonzero()  # [n, 3]: layer, padded position, unit
        pad = T - int(lengths_B[b])
        keep = idx[:, 1] >= pad  # padding positions never count
        idx = idx[keep]
        vals = s[idx[:, 0], idx[:, 1], idx[:, 2]]
        pos = (idx[:, 1] - pad).tolist()
        frame = pd.DataFrame({
            "example": b, "layer": idx[:, 0].tolist(), "position": pos,
            "token": [tokens[b][p] for p in pos] if tokens is not None else None,
            "unit": idx[:, 2].tolist(), "score": vals.tolist(),
        })
        frames.append(frame.sort_values("score", key=np.abs, ascending=False))
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["example", "layer", "position", "token", "unit", "score"])
    return out.astype({"example": int, "layer": int, "position": int, "unit": int, "score": float})


@dataclass
class PromptCircuits:
    """Per-prompt circuits of one prompt set: ``nodes`` (select_circuit's frame, ``example`` = prompt index),
    ``summed`` [P, L, U] (each neuron's attribution summed over positions) and ``last`` [P, L, U] (at the last
    position) -- the inputs to AUROC --, ``metric`` [P], ``tokens`` per prompt."""

    prompts: list[str]
    nodes: pd.DataFrame
    summed: torch.Tensor
    last: torch.Tensor
    metric: torch.Tensor
    tokens: list[list[str]]
    tau: float
    scores: list[torch.Tensor] | None = None  # with keep_scores: per prompt [L, T_b, U] (real positions, float16)

    def circuit(self, i: int) -> pd.DataFrame:
        return self.nodes[self.nodes["example"] == i].reset_index(drop=True)

    def sizes(self) -> pd.Series:
        return self.nodes.groupby("example").size().reindex(range(len(self.prompts)), fill_value=0)

    def subset(self, index) -> "PromptCircuits":
        index = list(index)
        remap = {old: new for new, old in enumerate(index)}
        nodes = self.nodes[self.nodes["example"].isin(remap)].copy()
        nodes["example"] = nodes["example"].map(remap)
        return PromptCircuits([self.prompts[i] for i in index], nodes.reset_index(drop=True), self.summed[index],
                              self.last[index], self.metric[index], [self.tokens[i] for i in index], self.tau,
                              None if self.scores is None else [self.scores[i] for i in index])


def trace_circuits(model, prompts: list[str], *, tau: float = TAU, k: int = 5, method: str = "relp",
                   chunk: int = 8, keep_scores: bool = False, progress: bool = True,
                   cache: bool = True, cache_dir=None) -> PromptCircuits:
    """RelP (zero baseline, metric = sum of the top-``k`` next-token logits) on every neuron at every position;
    the circuit of each prompt is its nodes with ``|score| >= tau * metric``. Runs ``chunk`` prompts at a time
    (the full [B, L, T, U] scores never sit in memory for all prompts) and caches the result on disk.
    ``keep_scores`` also keeps every prompt's full scores (float16; for short prompts). ``cache_dir``: where the
    cache lives (default :func:`neuronlib.cache.results_dir`)."""
    import neuronlib

    from ..cache import cache_key, cached

    def compute():
        frames, summed, last, metric, tokens, full = [], [], [], [], [], []
        starts = range(0, len(prompts), chunk)
        for start in tqdm(starts, desc=f"{method} circuits", disable=not progress or len(starts) < 2):
            part = prompts[start:start + chunk]
            att = neuronlib.attribute(model, part, metric="topk_logits", k=k, method=method, baseline="zero",
                                      sites=("mlp_acts",), batch_size=chunk, progress=False)
            s = att["mlp_acts"]
            nodes = select_circuit(s, att.metric, att.lengths, tau=tau, tokens=att.tokens)
            nodes["example"] += start
            frames.append(nodes)
            summed.append(s.sum(2))
            last.append(s[:, :, -1])  # left padding: index -1 is every prompt's last token
            if keep_scores:
                T = s.shape[2]
                full += [s[b, :, T - int(n):].half().clone() for b, n in enumerate(att.lengths)]
            metric.append(att.metric)
            tokens += att.tokens
        return {"nodes": pd.concat(frames, ignore_index=True), "summed": torch.cat(summed), "last": torch.cat(last),
                "metric": torch.cat(metric), "tokens": tokens, "scores": full if keep_scores else None}

    from ..describe import model_fingerprint

    key = cache_key(kind="prompt_circuits", format=2, model=model.name, weights=model_fingerprint(model), prompts=prompts,
                    tau=tau, k=k, method=method, keep_scores=keep_scores)
    res = cached("prompt_circuits", key, compute, refresh=not cache, directory=cache_dir)
    return PromptCircuits(list(prompts), res["nodes"], res["summed"], res["last"], res["metric"], res["tokens"], tau,
                          res["scores"])


# ---------------------------------------------------------------------------------------------------------------
# selection and evaluation halves; AUROC groups with permutation nulls


def split_by_key(keys, strata=None, *, seed: int = 0) -> np.ndarray:
    """Boolean mask, True = selection, False = evaluation; all rows sharing a key (e.g. a city) fall on one side.

    Within each stratum (e.g. a country) the distinct keys are shuffled (seeded) and the first ceil(n/2) go to
    selection, the rest to evaluation, so a stratum with two or more keys has keys on both sides and one with a
    single key is selection only."""
    keys = np.asarray(keys, dtype=object)
    strata = np.zeros(len(keys), dtype=int) if strata is None else np.asarray(strata, dtype=object)
    if len(strata) != len(keys):
        raise ValueError(f"{len(keys)} keys but {len(strata)} strata")
    owner: dict = {}
    for k, st in zip(keys.tolist(), strata.tolist()):
        if owner.setdefault(k, st) != st:
            raise ValueError(f"key {k!r} appears in several strata ({owner[k]!r}, {st!r})")
    rng = np.random.default_rng(seed)
    selected: set = set()
    for stratum in dict.fromkeys(strata.tolist()):
        uniq = list(dict.fromkeys(keys[strata == stratum].tolist()))
        order = rng.permutation(len(uniq))
        n_sel = (len(uniq) + 1) // 2
        selected.update(uniq[i] for i in order[:n_sel])
    return np.array([k in selected for k in keys.tolist()], dtype=bool)


def unit_aurocs(summed_PLU: torch.Tensor, labels) -> np.ndarray:
    """[L, U] AUROC of each neuron's position-summed attribution across prompts against binary ``labels``."""
    from ..stats import auroc_per_unit

    P, L, U = summed_PLU.shape
    return auroc_per_unit(summed_PLU.reshape(P, L * U).double().numpy(), np.asarray(labels)).reshape(L, U)


def class_aurocs(scores_PU, classes, *, min_positives: int = 2) -> dict:
    """{class: [U] AUROC} of each class against the rest (e.g. each country's prompts against all others), for
    the classes with at least ``min_positives`` prompts (and some prompts outside). Ranks computed once."""
    from scipy.stats import rankdata

    from ..stats import auroc_from_ranks

    scores = np.asarray(scores_PU, dtype=np.float64)
    classes = np.asarray(classes, dtype=object)
    ranks = rankdata(scores, axis=0)
    out = {}
    for c in dict.fromkeys(classes.tolist()):
        lab = classes == c
        if lab.sum() >= min_positives and (~lab).any():
            out[c] = auroc_from_ranks(ranks, lab)
    return out


def class_group_null(scores_PU, classes, *, high: float, min_positives: int = 2, n_perm: int = 100,
                     seed: int = 0) -> dict:
    """How many units reach AUROC >= ``high`` for at least one class (one-vs-rest, :func:`class_aurocs`), with the
    real class labels and with ``n_perm`` shuffles of the labels across prompts (class sizes kept). Returns
    {"observed", "null" [n_perm], "null_mean", "null_q95", "p_value", "n_classes"}."""
    from scipy.stats import rankdata

    from ..stats import auroc_from_ranks

    scores = np.asarray(scores_PU, dtype=np.float64)
    classes = np.asarray(classes, dtype=object)
    ranks = rankdata(scores, axis=0)
    kept = [c for c in dict.fromkeys(classes.tolist()) if (classes == c).sum() >= min_positives]

    def count(lab):
        passed = np.zeros(scores.shape[1], dtype=bool)
        for c in kept:
            m = lab == c
            if (~m).any():
                passed |= auroc_from_ranks(ranks, m) >= high
        return int(passed.sum())

    rng = np.random.default_rng(seed)
    observed = count(classes)
    null = np.array([count(rng.permutation(classes)) for _ in range(n_perm)], dtype=np.int64)
    return {"observed": observed, "null": null, "null_mean": float(null.mean()) if n_perm else float("nan"),
            "null_q95": float(np.quantile(null, 0.95)) if n_perm else float("nan"),
            "p_value": float((1 + (null >= observed).sum()) / (1 + n_perm)), "n_classes": len(kept)}


# ---------------------------------------------------------------------------------------------------------------
# neuron sets and their controls


def random_neurons(n: int, shape, *, exclude=(), seed: int = 0) -> list[tuple[int, int]]:
    """``n`` distinct (layer, unit) pairs drawn uniformly from an [L, U] grid, none in ``exclude``."""
    L, U = shape
    bad = {int(l) * U + int(u) for l, u in exclude}
    if n > L * U - len(bad):
        raise ValueError(f"cannot draw {n} neurons from {L * U - len(bad)}")
    pool = np.setdiff1d(np.arange(L * U), np.fromiter(bad, dtype=np.int64, count=len(bad)))
    out = np.random.default_rng(seed).choice(pool, size=n, replace=False)
    return [(int(i) // U, int(i) % U) for i in out]


def matched_neurons(strength_LU, chosen, *, exclude=(), seed: int = 0) -> list[tuple[int, int]]:
    """For each (layer, unit) of ``chosen`` (in order), the not-yet-used neuron outside ``chosen`` and ``exclude``
    whose ``strength`` (e.g. mean |attribution|) is nearest to it; ties broken at random (seeded)."""
    s = np.asarray(strength_LU, dtype=np.float64)
    L, U = s.shape
    flat = s.reshape(-1)
    used = np.zeros(L * U, dtype=bool)
    for l, u in list(chosen) + list(exclude):
        used[int(l) * U + int(u)] = True
    rng = np.random.default_rng(seed)
    jitter = rng.random(L * U) * 1e-12 * (np.abs(flat).max() + 1e-30)
    out = []
    for l, u in chosen:
        d = np.abs(flat + jitter - flat[int(l) * U + int(u)])
        d[used] = np.inf
        j = int(d.argmin())
        if not np.isfinite(d[j]):
            raise ValueError("no neuron left to match")
        used[j] = True
        out.append((j // U, j % U))
    return out


def control_sets(name: str, ranked, sizes, strength_LU, *, seed: int = 0) -> dict:
    """{f"{name} {n}": the top ``n`` of ``ranked`` ((layer, unit) pairs, strongest first), f"random {n}": as many
    random neurons outside them, f"matched {n}": for each, the neuron nearest in ``strength`` (e.g. mean
    |attribution|)}, for each n of ``sizes`` (capped at ``len(ranked)``)."""
    ranked = [(int(l), int(u)) for l, u in ranked]
    out = {}
    for n in dict.fromkeys(min(int(n), len(ranked)) for n in sizes):
        if n < 1:
            continue
        top = ranked[:n]
        out[f"{name} {n}"] = top
        out[f"random {n}"] = random_neurons(n, np.shape(strength_LU), exclude=top, seed=seed)
        out[f"matched {n}"] = matched_neurons(strength_LU, top, seed=seed)
    return out


def at_positions(neurons, positions) -> list[Node]:
    """Nodes of ``neurons`` ((layer, unit) pairs on mlp_acts) at each of ``positions``."""
    return [Node("mlp_acts", int(l), int(p), int(u)) for p in positions for l, u in neurons]


# ---------------------------------------------------------------------------------------------------------------
# steering: scaling neurons at chosen positions


def last_activations(model, prompts: list[str], neurons, *, batch_size: int = 16) -> np.ndarray:
    """[P, n]: each neuron's activation at each prompt's last token (its sign names the active side)."""
    from ..activations import read_sites

    out = []
    for start in range(0, len(prompts), batch_size):
        vals, _ = read_sites(model, model.tokenize(prompts[start:start + batch_size]), ("mlp_acts",))
        out.append(torch.stack([vals["mlp_acts"][int(l)][:, -1, int(u)].float().cpu() for l, u in neurons], 1))
    return torch.cat(out).numpy()


def steering_sweep(model, prompts: list[str], df: pd.DataFrame, nodes_per_prompt: list[list[Node]], multipliers,
                   *, kinds, batch_size: int = 16, progress: bool = True) -> pd.DataFrame:
    """Multiply each prompt's neurons at their circuit positions by each multiplier; one row per (multiplier,
    prompt) with first-token p(kind) for each of ``kinds`` (columns of ``df``, e.g. capital, state, city) and
    ``top_is`` (the kind whose first token is the top token, or "other"). Prompts with no node to steer keep their
    unsteered output (``n_steered`` = 0)."""
    import neuronlib

    tok = model.tokenizer
    ids = answer_ids(df, tok, kinds=kinds)
    kind_ids = {k: torch.tensor(ids[f"{k}_id"].tolist()) for k in kinds}
    have = [i for i, n in enumerate(nodes_per_prompt) if n]
    base = last_logits(model, prompts, batch_size=batch_size)
    frames = []
    for mult in tqdm(list(multipliers), desc="steering", disable=not progress):
        logits = base.clone()
        if have and mult != 1:
            res = neuronlib.steer(model, [prompts[i] for i in have], [nodes_per_prompt[i] for i in have],
                                  multiplier=float(mult), positions="circuit", metric=None, batch_size=batch_size)
            logits[have] = res.logits.float()
        frame = answer_frame(df, logits.softmax(-1), kind_ids, tok)
        frame.insert(0, "multiplier", float(mult))
        frame.insert(len(kinds) + 2, "n_steered", [len(n) for n in nodes_per_prompt])
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def answer_frame(rows: pd.DataFrame, probs: torch.Tensor, kind_ids: dict, tok) -> pd.DataFrame:
    """One row per prompt: ``example``, the names of each kind (columns of ``rows``), first-token p(kind) for each
    kind of ``kind_ids`` (kind -> [P] token ids), ``top_is`` (the kind whose first token is the top token, the
    first kind winning ties; else "other") and ``top_token``."""
    kinds = list(kind_ids)
    top = probs.argmax(-1)
    frame = rows[kinds].reset_index(drop=True).copy()
    frame.insert(0, "example", range(len(frame)))
    for k in kinds:
        frame[f"p_{k}"] = probs.gather(-1, kind_ids[k][:, None])[:, 0].numpy()
    top_is = np.full(len(frame), "other", dtype=object)
    for k in reversed(kinds):  # the first kind wins ties of first tokens
        top_is[(top == kind_ids[k]).numpy()] = k
    frame["top_is"] = top_is
    frame["top_token"] = [tok.decode([t]) for t in top.tolist()]
    return frame


def steering_controls(model, prompts: list[str], rows: pd.DataFrame, neuron_sets: dict, multipliers, *,
                      kinds, batch_size: int = 16, progress: bool = True) -> pd.DataFrame:
    """:func:`steering_sweep` at each prompt's last position for every neuron set (name -> [(layer, unit)], e.g.
    the say-an-answer neurons and their random and matched controls); one row per (set, multiplier, prompt) with
    p(kind) for each of ``kinds``, ``top_is`` and ``changed`` (top token differs from the unsteered one)."""
    tok = model.tokenizer
    tokens = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    frames = []
    for name, neurons in neuron_sets.items():
        nodes = [at_positions(neurons, [len(t) - 1]) for t in tokens]
        sweep = steering_sweep(model, prompts, rows, nodes, multipliers, batch_size=batch_size,
                               progress=progress, kinds=kinds)
        base = sweep[sweep["multiplier"] == 1.0].set_index("example")["top_token"]
        sweep["changed"] = sweep["top_token"].to_numpy() != base.reindex(sweep["example"]).to_numpy()
        sweep.insert(0, "set", name)
        sweep["n_neurons"] = len(neurons)
        frames.append(sweep)
    return pd.concat(frames, ignore_index=True)


def mean_interval(values, *, n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``values`` and its percentile bootstrap 95% interval over the examples."""
    from ..stats import bootstrap_ratio

    v = np.asarray(values, dtype=np.float64)
    if not len(v):
        return (float("nan"),) * 3
    b = bootstrap_ratio(v, np.ones_like(v), n_boot=n_boot, seed=seed)
    return float(b["estimate"]), float(b["lo"]), float(b["hi"])


def steering_summary(sweeps: pd.DataFrame, *, kinds, by=("set", "multiplier")) -> pd.DataFrame:
    """Per (set, multiplier) (or the columns ``by``): mean p(kind) for each of ``kinds`` with bootstrap intervals
    over prompts, and the fraction of prompts whose top answer changed / is the first kind (``top_is_answer``) / is
    each other kind (``top_is_{kind}``, e.g. the country when say-a-language neurons are removed), with Wilson
    intervals."""
    from ..stats import wilson_interval

    rows = []
    for key, g in sweeps.groupby(list(by), sort=False):
        row = {**dict(zip(by, key)), "n": len(g), "n_neurons": int(g["n_neurons"].iloc[0])}
        for k in kinds:
            m, lo, hi = mean_interval(g[f"p_{k}"].to_numpy())
            row.update({f"p_{k}": m, f"p_{k}_lo": lo, f"p_{k}_hi": hi})
        hits = [("changed", g["changed"]), ("top_is_answer", g["top_is"] == kinds[0])]
        hits += [(f"top_is_{k}", g["top_is"] == k) for k in kinds[1:]]  # e.g. the intermediate hop's answer
        for col, hit in hits:
            k = int(hit.sum())
            lo, hi = wilson_interval(k, len(g))
            row.update({col: k / len(g), f"{col}_lo": lo, f"{col}_hi": hi})
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------------------
# steering proper: set a group to the values it takes when the answer is of another kind


def set_at_last(model, prompts: list[str], neurons, values, *, batch_size: int = 16) -> torch.Tensor:
    """Next-token logits [P, V] (float32, CPU) with each of ``neurons`` ((layer, unit) on mlp_acts) set, at each
    prompt's last position, to ``values`` ([n] for every prompt, or [P, n])."""
    from ..inputs import prepare
    from ..interventions import run_with_edits

    neurons = [(int(l), int(u)) for l, u in neurons]
    vals = torch.as_tensor(np.asarray(values, dtype=np.float32))
    if vals.dim() == 1:
        vals = vals[None].expand(len(prompts), -1)
    if tuple(vals.shape) != (len(prompts), len(neurons)):
        raise ValueError(f"values must be [{len(neurons)}] or [{len(prompts)}, {len(neurons)}], got {tuple(vals.shape)}")
    by_layer: dict[int, tuple[list[int], list[int]]] = {}
    for j, (l, u) in enumerate(neurons):
        by_layer.setdefault(l, ([], []))[0].append(u)
        by_layer[l][1].append(j)

    def edit(site, layer, value, rows):
        if site != "mlp_acts" or layer not in by_layer:
            return None
        units, cols = by_layer[layer]
        out = value.clone()  # left padding: index -1 is every prompt's last token
        out[:, -1, units] = vals[rows][:, cols].to(out.dtype).to(out.device)
        return out

    prepared = prepare(model, prompts)
    return run_with_edits(model, prepared, edits=edit, sites=("mlp_acts",), batch_size=batch_size).logits.float()


def set_group_test(model, prompts: list[str], rows: pd.DataFrame, neuron_sets: dict, donor_prompts: list[str], *,
                   target: str, kinds, batch_size: int = 16) -> pd.DataFrame:
    """Steering toward a chosen answer: each set of ``neuron_sets`` (name -> [(layer, unit)], e.g. say-a-capital
    neurons and their random and matched controls) is set, at each prompt's last position, to its mean activation
    at the last position of ``donor_prompts`` (prompts whose answer is of the ``target`` kind, e.g. states). One
    row per (set, prompt) with p(kind) for each of ``kinds`` (first tokens), ``top_is``, ``changed`` (top token
    differs from the unsteered one) and ``success`` (the top token is the row's ``target`` name's first token)."""
    tok = model.tokenizer
    ids = answer_ids(rows, tok, kinds=kinds)
    kind_ids = {k: torch.tensor(ids[f"{k}_id"].tolist()) for k in kinds}
    base_top = last_logits(model, prompts, batch_size=batch_size).argmax(-1)
    frames = []
    for name, neurons in neuron_sets.items():
        donor = last_activations(model, donor_prompts, neurons, batch_size=batch_size).mean(0)
        probs = set_at_last(model, prompts, neurons, donor, batch_size=batch_size).softmax(-1)
        top = probs.argmax(-1)
        frame = answer_frame(rows, probs, kind_ids, tok)
        frame.insert(0, "set", name)
        frame.insert(len(kinds) + 2, "n_neurons", len(neurons))
        frame["changed"] = (top != base_top).numpy()
        frame["success"] = (top == kind_ids[target]).numpy()
        frames.append(frame)
    out = pd.concat(frames, ignore_index=True)
    out.attrs["target"] = target
    return out


def set_group_summary(tests: pd.DataFrame, *, kinds) -> pd.DataFrame:
    """Per set: :func:`steering_summary` (by set) plus ``success`` (top answer = the target) with its Wilson
    interval, and the set's ``role`` (the group, random or matched) and ``size``."""
    from ..stats import wilson_interval

    out = steering_summary(tests, kinds=kinds, by=("set",))
    rows = []
    for name, g in tests.groupby("set", sort=False):
        k = int(g["success"].sum())
        lo, hi = wilson_interval(k, len(g))
        rows.append({"success": k / len(g), "success_lo": lo, "success_hi": hi})
    out = pd.concat([out, pd.DataFrame(rows)], axis=1)
    out["size"] = [int(s.rsplit(" ", 1)[1]) for s in out["set"]]
    out["role"] = [s.rsplit(" ", 1)[0] for s in out["set"]]
    out["target"] = tests.attrs.get("target", "")
    return out


def beyond_controls(summary: pd.DataFrame, *, value: str = "success", group_of=None,
                    controls=("random", "matched")) -> pd.DataFrame:
    """Per size of a set summary with ``role`` / ``size`` columns: the group's rate and Wilson interval, the
    controls' highest upper bound, and ``beyond_controls`` (the group's lower bound above every control's upper
    bound; a verdict from intervals)."""
    rows = []
    for size, g in summary.groupby("size", sort=True):
        g = g.set_index("role")
        groups = [r for r in g.index if r not in controls] if group_of is None else [group_of]
        ctrl = [c for c in controls if c in g.index]
        for role in groups:
            hi = max(g.loc[c, f"{value}_hi"] for c in ctrl) if ctrl else float("nan")
            rows.append({"size": int(size), "group": role, value: g.loc[role, value],
                         f"{value}_lo": g.loc[role, f"{value}_lo"], f"{value}_hi": g.loc[role, f"{value}_hi"],
                         "controls_max": max(g.loc[c, value] for c in ctrl) if ctrl else float("nan"),
                         "controls_hi": hi, "beyond_controls": bool(ctrl) and g.loc[role, f"{value}_lo"] > hi})
    return pd.DataFrame(rows)
