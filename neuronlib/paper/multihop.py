"""City -> state -> capital (docs/method.md §6, the paper's figures 7-8): accuracy, circuits, neuron groups,
knock-outs and steering.

The analysis behind ``notebooks/03_multihop_steering.ipynb``. Every function takes a loaded model and the capitals
table (:func:`neuronlib.data.capitals.load_capitals`) and returns DataFrames; figure functions take those
DataFrames, so figures can be restyled without recomputing.

Steps (each a function here):

1. :func:`evaluate_tasks` -- what the model answers to the paper's two-hop prompt and to each hop alone
   (first-token probabilities of the capital, the state and the city; top-1 category checked on the whole name).
2. :func:`trace_circuits` -- RelP, zero baseline, metric = sum of the top-5 next-token logits, nodes with
   ``|score| >= tau * metric`` (tau = 0.005) at every position, per prompt (:func:`select_circuit`).
3. :func:`unit_aurocs` / :func:`group_circuit` -- neuron groups: "say a capital" from the AUROC of last-position
   attribution, answer-is-capital vs answer-is-state inside one frame (:data:`neuronlib.data.capitals.FRAME`,
   selection states only, a null that permutes labels within each state); the other groups are named by what
   selected them (the token they sit on, the token their output promotes).
4. :func:`steering_sweep` -- scale the strongest "say a capital" neurons at their circuit positions; x0 is a
   knock-out (necessity), not steering; :func:`flip_fraction`.
5. :func:`set_group_test` -- steering proper: set a group at the last position to its mean values on prompts with
   another kind of answer; does the top answer become the chosen target (the state)? With random and matched
   controls.
6. :func:`swap_matrix` -- set neurons at the state token to their values from another state's prompt; does the
   answer become the other state's capital?
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .. import tracing
from ..data import capitals as cap_data
from ..graph import CircuitGraph
from ..interventions import patch
from ..sites import Node

KINDS = ("capital", "state", "city")
TASKS = {  # task -> (prompt builder over a row, the expected kind of answer)
    "two_hop": (lambda row, tok: cap_data.two_hop_prompt(row["city"], tok), "capital"),
    "two_hop_seeded": (lambda row, tok: cap_data.two_hop_seeded_prompt(row["city"], tok), "capital"),
    "two_hop_fact": (lambda row, tok: cap_data.two_hop_fact_prompt(row["city"]), "capital"),
    "city_to_state": (lambda row, tok: cap_data.city_to_state_prompt(row["city"]), "state"),
    "state_to_capital": (lambda row, tok: cap_data.state_to_capital_prompt(row["state"]), "capital"),
    "state_to_capital_plain": (lambda row, tok: state_to_capital_plain_prompt(row["state"]), "capital"),
    "frame_capital": (lambda row, tok: cap_data.frame_capital_prompt(row["state"]), "capital"),
    "frame_state": (lambda row, tok: cap_data.frame_state_prompt(row["city"]), "state"),
}
TAU = 0.005


# ---------------------------------------------------------------------------------------------------------------
# prompts and answers


def task_prompts(df: pd.DataFrame, tokenizer, task: str, *, table: dict | None = None) -> list[str]:
    """The prompts of ``task`` for every row (``table``: task -> (builder(row, tokenizer), expected kind);
    default the capitals' :data:`TASKS`)."""
    table = TASKS if table is None else table
    if task not in table:
        raise ValueError(f"unknown task {task!r}; use one of {tuple(table)}")
    build = table[task][0]
    return [build(row, tokenizer) for row in df.to_dict("records")]


def _name_ids(tokenizer, name: str) -> list[int]:
    return tokenizer(" " + name, add_special_tokens=False)["input_ids"]


def answer_ids(df: pd.DataFrame, tokenizer, kinds=KINDS) -> pd.DataFrame:
    """First-token id (with a leading space) and full token ids of each row's names of ``kinds`` (columns of
    ``df``; default capital, state, city)."""
    out = pd.DataFrame(index=df.index)
    for kind in kinds:
        ids = [_name_ids(tokenizer, name) for name in df[kind]]
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
        n_ids = _name_ids(tok, name)
        ids = torch.tensor([p_ids + n_ids[:-1]], device=model.device)
        with torch.no_grad():
            lg = model.hf(input_ids=ids, use_cache=False).logits[0]
        pred = lg[len(p_ids) - 1:].argmax(-1).tolist()
        result.append(pred == n_ids)
    return result


def _categorise(model, prompts, names: dict[str, list[str]], ids: pd.DataFrame, top_ids, kinds=KINDS) -> list[str]:
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


def evaluate_tasks(model, df: pd.DataFrame, tasks=None, *, batch_size: int = 16, table: dict | None = None,
                   kinds=KINDS) -> pd.DataFrame:
    """One row per (task, row of ``df``): first-token p(kind) for each of ``kinds`` (default capital, state, city),
    their ranks, the top token, and ``top_is`` -- which kind the greedy answer is (whole name checked), or "other".
    ``correct``: ``top_is`` equals the task's expected kind. ``table``: task -> (prompt builder, expected kind),
    default the capitals' :data:`TASKS`."""
    table = TASKS if table is None else table
    tasks = tuple(table) if tasks is None else tasks
    tok = model.tokenizer
    ids = answer_ids(df, tok, kinds)
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


def circuit_summary(circuit: pd.DataFrame, tokens: list[str] | None = None) -> dict:
    """Size, distinct neurons, layer range and histogram, and nodes per position of one prompt's circuit."""
    by_pos = circuit.groupby("position").size()
    return {
        "n_nodes": len(circuit),
        "n_neurons": circuit[["layer", "unit"]].drop_duplicates().shape[0],
        "layers": (int(circuit["layer"].min()), int(circuit["layer"].max())) if len(circuit) else None,
        "nodes_per_layer": circuit.groupby("layer").size().to_dict(),
        "nodes_per_position": {
            (f"{p}:{tokens[p]!r}" if tokens is not None else p): int(n) for p, n in by_pos.items()},
        "positive_share": float((circuit["score"] > 0).mean()) if len(circuit) else float("nan"),
    }


def node_activations(model, prompt: str, circuit: pd.DataFrame) -> np.ndarray:
    """The activation value of each circuit node on ``prompt`` (its sign names the neuron's side)."""
    from ..activations import read_sites

    vals, _ = read_sites(model, model.tokenize([prompt]), ("mlp_acts",))
    acts = torch.stack([v[0] for v in vals["mlp_acts"]]).cpu()  # [L, T, U]
    return acts[circuit["layer"].to_numpy(), circuit["position"].to_numpy(), circuit["unit"].to_numpy()].numpy()


# ---------------------------------------------------------------------------------------------------------------
# neuron groups


def unit_aurocs(summed_PLU: torch.Tensor, labels) -> np.ndarray:
    """[L, U] AUROC of each neuron's position-summed attribution across prompts against binary ``labels``."""
    from ..stats import auroc_per_unit

    P, L, U = summed_PLU.shape
    return auroc_per_unit(summed_PLU.reshape(P, L * U).double().numpy(), np.asarray(labels)).reshape(L, U)


@dataclass
class MixedSet:
    """The city->state prompts and the state->capital prompts of the same rows as one AUROC population
    (hop-1 rows first): ``summed`` and ``last`` [2n, L, U], ``answer_is_capital`` labels, ``states`` per prompt.

    The two templates differ in more than the kind of answer, so an AUROC of attribution at earlier positions also
    picks up template differences; answer-kind AUROCs therefore use the last position only (where the answer is
    produced), and which-state AUROCs the position-summed attribution (the state can be read anywhere)."""

    summed: torch.Tensor
    last: torch.Tensor
    answer_is_capital: np.ndarray
    states: list[str]

    @classmethod
    def from_circuits(cls, hop1: PromptCircuits, hop2: PromptCircuits, states: list[str], *, keep1=None,
                      keep2=None) -> "MixedSet":
        """``keep1`` / ``keep2``: boolean masks of the rows to use from each hop (e.g. the prompts the model gets
        right, so that the label "the answer is a capital" is what the model actually does)."""
        n1, n2 = len(hop1.prompts), len(hop2.prompts)
        if n1 != len(states) or n2 != len(states):
            raise ValueError("hop1, hop2 and states must cover the same rows")
        k1 = np.ones(n1, dtype=bool) if keep1 is None else np.asarray(keep1, dtype=bool)
        k2 = np.ones(n2, dtype=bool) if keep2 is None else np.asarray(keep2, dtype=bool)
        i1, i2 = np.flatnonzero(k1), np.flatnonzero(k2)
        labels = np.r_[np.zeros(len(i1), dtype=int), np.ones(len(i2), dtype=int)]
        return cls(torch.cat([hop1.summed[i1], hop2.summed[i2]]), torch.cat([hop1.last[i1], hop2.last[i2]]), labels,
                   [states[i] for i in i1] + [states[i] for i in i2])

    def auroc_capital(self) -> np.ndarray:
        """[L, U], at the last position. High: the neuron matters more when the answer is a capital ("say a
        capital"); low: when it is a state ("say a state")."""
        return unit_aurocs(self.last, self.answer_is_capital)

    def auroc_capital_summed(self) -> np.ndarray:
        """[L, U], summed over positions (confounded with the template at earlier positions)."""
        return unit_aurocs(self.summed, self.answer_is_capital)

    def auroc_state(self, state: str, *, missing: str = "raise") -> np.ndarray:
        """[L, U]. High: the neuron matters more on the two prompts about ``state`` (its city->state and its
        state->capital prompt) than on the prompts about every other state. (Mann-Whitney from ranks computed
        once per population, so all 50 states cost one ranking; equal to :func:`neuronlib.stats.auroc_per_unit`.)"""
        labels = np.array([s == state for s in self.states], dtype=bool)
        if labels.all() or not labels.any():
            if missing == "nan":  # e.g. a state none of whose prompts the model gets right
                return np.full(tuple(self.summed.shape[1:]), np.nan)
            raise ValueError(f"state {state!r}: AUROC needs prompts about it and about other states "
                             "(pass missing='nan' to get NaN instead)")
        if getattr(self, "_ranks", None) is None:
            from scipy.stats import rankdata

            P, L, U = self.summed.shape
            self._ranks = rankdata(self.summed.reshape(P, L * U).double().numpy(), axis=0)
        n_pos = int(labels.sum())
        n_neg = len(labels) - n_pos
        u = self._ranks[labels].sum(0) - n_pos * (n_pos + 1) / 2
        return (u / (n_pos * n_neg)).reshape(self.summed.shape[1:])


@dataclass(frozen=True)
class GroupRules:
    """Thresholds of :func:`group_circuit` (documented in the notebook)."""

    auroc_high: float = 0.9  # answer-is-capital AUROC (last position) for "say a capital"
    auroc_low: float = 0.1  # ... and at most this for "say a state"
    lens_k: int = 10  # look for the answer among this many promoted tokens


def at_token(token: str) -> str:
    """The label of a group selected by the token it sits on: ``at ' Texas'``."""
    return f"at {token!r}"


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


def group_circuit(model, circuit: pd.DataFrame, tokens: list[str], *, activations, auc_capital: np.ndarray,
                  auc_state: np.ndarray, state: str, capital: str, city: str | None = None,
                  rules: GroupRules = GroupRules()) -> pd.DataFrame:
    """Label each node of one prompt's circuit with a group (or None), named by what selected it; first match wins:

    1. ``first token``: position 0 (attention-sink position; large scores that carry no content);
    2. ``promotes ' Austin'``: the active side of the neuron promotes the capital's first token (lens top
       ``lens_k``);
    3. ``at ' Texas'``: the node sits on the state's name (a which-state AUROC is not used: with at most two
       prompts per state it does not beat its permutation null);
    4. at the last position: ``say a capital (AUROC)`` if the answer-is-capital AUROC (last position) >=
       ``auroc_high``, ``say a state (AUROC)`` if <= ``auroc_low``;
    5. earlier positions, by the token the node sits on: ``at ' Dallas'`` (the city's tokens), ``at ' state'``,
       ``at ' capital'``.

    Adds columns activation, sign (of the activation: the neuron's active side), label (``L23/N8079-``),
    auroc_capital, auroc_state (descriptive only), promotes (lens top tokens of the active side), description,
    group.
    """
    from ..neurons import neuron_label

    out = circuit.copy().reset_index(drop=True)
    out["activation"] = np.asarray(activations, dtype=float)
    out["sign"] = np.where(out["activation"] < 0, "-", "+")
    out["label"] = [neuron_label(l, u, s) for l, u, s in zip(out["layer"], out["unit"], out["sign"])]
    L, U = out["layer"].to_numpy(), out["unit"].to_numpy()
    out["auroc_capital"] = auc_capital[L, U]
    out["auroc_state"] = auc_state[L, U]
    tok = model.tokenizer
    promoted_ids = promoted_tokens(model, out["layer"], out["unit"], out["sign"], k=rules.lens_k)
    out["promotes"] = [[tok.decode([i]) for i in ids] for ids in promoted_ids]
    out["description"] = ["promotes " + " ".join(repr(t) for t in p[:5]) for p in out["promotes"]]
    cap_id = _name_ids(tok, capital)[0]
    last = len(tokens) - 1
    city_pos = set(name_positions(tokens, city)) if city else set()
    state_pos = set(name_positions(tokens, state))
    groups = []
    for i, row in out.iterrows():
        word = tokens[row.position].strip().lower()
        g = None
        if row.position == 0:
            g = "first token"
        elif cap_id in promoted_ids[i]:
            g = f"promotes {' ' + capital!r}"
        elif row.position in state_pos:
            g = at_token(" " + state)
        elif row.position == last:
            if row.auroc_capital >= rules.auroc_high:
                g = "say a capital (AUROC)"
            elif row.auroc_capital <= rules.auroc_low:
                g = "say a state (AUROC)"
        elif row.position in city_pos:
            g = at_token(" " + city)
        elif word in ("state", "capital"):
            g = at_token(" " + word)
        groups.append(g)
    out["group"] = groups
    return out


def promoted_tokens(model, layers, units, signs, *, k: int = 10) -> list[list[int]]:
    """Per neuron, the ids of the ``k`` tokens its active side promotes (lens top for "+", bottom for "-")."""
    from ..describe import lens_logits

    layers, units, signs = list(layers), list(units), list(signs)
    out: list[list[int]] = [[] for _ in layers]
    for layer in sorted(set(layers)):
        idx = [i for i, l in enumerate(layers) if l == layer]
        lg = lens_logits(model, int(layer), [int(units[i]) for i in idx])
        for row, i in enumerate(idx):
            v = lg[row] if signs[i] != "-" else -lg[row]
            out[i] = v.topk(k).indices.tolist()
    return out


def circuit_graph(grouped: pd.DataFrame, tokens: list[str], *, title: str, prompt: str, n_layers: int,
                  metric: str = "sum of top-5 logits") -> CircuitGraph:
    """A :class:`neuronlib.CircuitGraph` (neuron nodes only, no edges) from :func:`group_circuit`'s frame."""
    nodes = []
    for r in grouped.itertuples():
        nodes.append({
            "id": Node("mlp_acts", int(r.layer), int(r.position), int(r.unit)).label(), "kind": "neuron",
            "site": "mlp_acts", "layer": int(r.layer), "position": int(r.position), "token": tokens[int(r.position)],
            "unit": int(r.unit), "sign": r.sign, "score": float(r.score), "value": float(r.activation),
            "label": r.label, "group": r.group,
            "description": (f"{r.description}; AUROC(answer is a capital) {r.auroc_capital:.2f}, "
                            f"AUROC(this state) {r.auroc_state:.2f}; activation {r.activation:+.2f}"),
        })
    return CircuitGraph(pd.DataFrame(nodes), pd.DataFrame(columns=["source", "target", "weight"]),
                        {"title": title, "prompt": prompt, "tokens": list(tokens), "n_layers": n_layers,
                         "metric": metric})


# ---------------------------------------------------------------------------------------------------------------
# steering


def say_capital_neurons(hop2: PromptCircuits, auc_capital: np.ndarray, *, rows=None, n: int = 5,
                        min_auroc: float = 0.9) -> pd.DataFrame:
    """The strongest "say a capital" neurons: answer-is-capital AUROC >= ``min_auroc``, in the circuits of the
    state->capital prompts ``rows`` (default all) at their last position, ranked by mean attribution there."""
    rows = list(range(len(hop2.prompts))) if rows is None else list(rows)
    nodes = hop2.nodes[hop2.nodes["example"].isin(rows)]
    last = {i: len(hop2.tokens[i]) - 1 for i in rows}
    at_last = nodes[nodes["position"] == nodes["example"].map(last)]
    stats = at_last.groupby(["layer", "unit"]).agg(n_prompts=("example", "nunique"), mean_score=("score", "mean"))
    stats = stats.reset_index()
    stats["auroc_capital"] = auc_capital[stats["layer"].to_numpy(), stats["unit"].to_numpy()]
    stats = stats[stats["auroc_capital"] >= min_auroc]
    stats["total"] = stats["mean_score"] * stats["n_prompts"] / len(rows)  # mean over all rows (absent = 0)
    return stats.sort_values("total", ascending=False).head(n).reset_index(drop=True)


def circuit_positions(circuits: PromptCircuits, neurons) -> list[list[Node]]:
    """Per prompt, the Nodes of ``neurons`` ((layer, unit) pairs) at the positions where they are in its circuit."""
    wanted = {(int(l), int(u)) for l, u in neurons}
    out = []
    for i in range(len(circuits.prompts)):
        c = circuits.circuit(i)
        sel = [(l, u) in wanted for l, u in zip(c["layer"], c["unit"])]
        c = c[sel]
        out.append([Node("mlp_acts", int(l), int(p), int(u)) for l, p, u in zip(c["layer"], c["position"], c["unit"])])
    return out


def last_activations(model, prompts: list[str], neurons, *, batch_size: int = 16) -> np.ndarray:
    """[P, n]: each neuron's activation at each prompt's last token (its sign names the active side)."""
    from ..activations import read_sites

    out = []
    for start in range(0, len(prompts), batch_size):
        vals, _ = read_sites(model, model.tokenize(prompts[start:start + batch_size]), ("mlp_acts",))
        out.append(torch.stack([vals["mlp_acts"][int(l)][:, -1, int(u)].float().cpu() for l, u in neurons], 1))
    return torch.cat(out).numpy()


def steering_sweep(model, prompts: list[str], df: pd.DataFrame, nodes_per_prompt: list[list[Node]], multipliers,
                   *, batch_size: int = 16, progress: bool = True, kinds=KINDS) -> pd.DataFrame:
    """Multiply each prompt's neurons at their circuit positions by each multiplier; one row per (multiplier,
    prompt) with first-token p(capital), p(state), p(city) and ``top_is`` (the top token is the capital's / the
    state's / the city's first token, or "other"). Prompts with no node to steer keep their unsteered output
    (``n_steered`` = 0)."""
    import neuronlib

    tok = model.tokenizer
    ids = answer_ids(df, tok, kinds)
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


def flip_fraction(sweep: pd.DataFrame, *, source: str = "capital", target: str = "state") -> pd.DataFrame:
    """Per multiplier: among prompts whose unsteered (x1) top answer is ``source``, the fraction whose top answer
    is ``target`` (and the fraction no longer ``source``), each with its Wilson 95% interval."""
    from ..stats import wilson_interval

    base = sweep[sweep["multiplier"] == 1.0].set_index("example")["top_is"]
    eligible = base[base == source].index
    rows = []
    for mult, g in sweep.groupby("multiplier"):
        g = g.set_index("example").loc[eligible]
        row = {"multiplier": mult, "n": len(eligible)}
        for name, hit in ((f"flip_to_{target}", g["top_is"] == target), (f"not_{source}", g["top_is"] != source)):
            k = int(hit.sum())
            row[name] = k / len(eligible) if len(eligible) else float("nan")
            row[f"{name}_lo"], row[f"{name}_hi"] = wilson_interval(k, len(eligible))
        rows.append(row)
    out = pd.DataFrame(rows)
    out.attrs["source"] = source
    return out


STATE_TO_CAPITAL_PLAIN = "The capital of {state} is"


def state_to_capital_plain_prompt(state: str) -> str:
    """A second state -> capital template without "the city of" (so an answer-is-capital contrast is not only a
    contrast of templates)."""
    return STATE_TO_CAPITAL_PLAIN.format(state=state)


# ---------------------------------------------------------------------------------------------------------------
# swapping the state


def state_token_nodes(hop2: PromptCircuits, df: pd.DataFrame, rows) -> dict[str, list[Node]]:
    """Per state (rows of ``df``): the nodes of its state->capital circuit that sit on the state's name (the
    ``at ' Texas'`` group of :func:`group_circuit`)."""
    out = {}
    for i in rows:
        state = df["state"].iloc[i]
        c = hop2.circuit(i)
        c = c[c["position"].isin(name_positions(hop2.tokens[i], state)).to_numpy() & (c["position"].to_numpy() > 0)]
        out[state] = [Node("mlp_acts", int(l), int(p), int(u)) for l, p, u in zip(c["layer"], c["position"], c["unit"])]
    return out


def union_of_groups(groups: dict[str, list[Node]]):
    """A swap variant: the nodes of the source's and the target's groups (set to the target's values)."""
    return lambda a, b: list(dict.fromkeys(groups[a] + groups[b]))


def top_at_position(strength_LU, position: int, n: int):
    """A swap variant: the same ``n`` neurons for every pair, those with the largest ``strength`` (e.g. mean
    |attribution| at the state token over the *selection* states' prompts, so the pairs that evaluate them did not
    choose them), at ``position``."""
    s = torch.as_tensor(np.asarray(strength_LU, dtype=np.float64))
    idx = s.flatten().topk(n).indices
    U = s.shape[1]
    nodes = [Node("mlp_acts", int(i) // U, position, int(i) % U) for i in idx]
    return lambda a, b: nodes


def random_at_position(shape, position: int, n: int, *, seed: int = 0):
    """A swap control: ``n`` random neurons (:func:`random_neurons`) at ``position``, the same for every pair."""
    nodes = at_positions(random_neurons(n, shape, seed=seed), [position])
    return lambda a, b: nodes


def every_neuron(model, position: int, layers):
    """A swap variant: every neuron of ``layers`` at ``position`` (a dense reference, not a circuit)."""
    nodes = [Node("mlp_acts", l, position, u) for l in layers for u in range(model.d_mlp)]
    return lambda a, b: nodes


def swap_matrix(model, df: pd.DataFrame, states: list[str], variants: dict, *, pairs=None, batch_size: int = 32,
                progress: bool = True) -> pd.DataFrame:
    """For every ordered pair (source A, target B) of ``states`` (or the given ``pairs``) and every variant
    (name -> ``f(A, B) -> nodes``): run A's state->capital prompt with those nodes set to their values on B's prompt
    (:func:`neuronlib.patch` with one node set per pair; A's and B's prompts must have equal token lengths). One row per (variant, pair):
    p(A's capital), p(B's capital) (first tokens), the top token, ``success`` (top token = B's capital's first
    token) and ``prefers_target`` (p(B's capital) > p(A's capital))."""
    tok = model.tokenizer
    by_state = df.set_index("state")
    prompts = {s: cap_data.state_to_capital_prompt(s) for s in states}
    cap_id = {s: _name_ids(tok, by_state.loc[s, "capital"])[0] for s in states}
    if pairs is None:
        pairs = [(a, b) for a in states for b in states if a != b]
    rows = []
    for variant, make_nodes in variants.items():
        chunks = [pairs[i:i + batch_size] for i in range(0, len(pairs), batch_size)]
        for chunk in tqdm(chunks, desc=f"swap ({variant})", disable=not progress):
            node_sets = [make_nodes(a, b) for a, b in chunk]
            logits = patch(model, [prompts[a] for a, _ in chunk], [prompts[b] for _, b in chunk],
                           [list(nodes) for nodes in node_sets], metric=None, batch_size=batch_size).logits
            probs = logits.softmax(-1)
            for j, (a, b) in enumerate(chunk):
                top = int(probs[j].argmax())
                rows.append({"variant": variant, "source": a, "target": b, "n_nodes": len(node_sets[j]),
                             "p_source_capital": float(probs[j, cap_id[a]]),
                             "p_target_capital": float(probs[j, cap_id[b]]),
                             "top_token": tok.decode([top]), "success": top == cap_id[b],
                             "prefers_target": bool(probs[j, cap_id[b]] > probs[j, cap_id[a]])})
    return pd.DataFrame(rows)


def swap_summary(swaps: pd.DataFrame) -> pd.DataFrame:
    return swaps.groupby("variant", sort=False).agg(pairs=("success", "size"), success_rate=("success", "mean"),
                                        prefers_target=("prefers_target", "mean"),
                                        mean_p_target=("p_target_capital", "mean"),
                                        mean_p_source=("p_source_capital", "mean"),
                                        mean_nodes=("n_nodes", "mean")).reset_index()


# ---------------------------------------------------------------------------------------------------------------
# shared with the languages study (neuronlib.paper.languages): selection/evaluation split, many-class AUROC groups
# with a permutation null, and the control neuron sets of steering and patching


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


def at_positions(neurons, positions) -> list[Node]:
    """Nodes of ``neurons`` ((layer, unit) pairs on mlp_acts) at each of ``positions``."""
    return [Node("mlp_acts", int(l), int(p), int(u)) for p in positions for l, u in neurons]


def mean_interval(values, *, n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``values`` and its percentile bootstrap 95% interval over the examples."""
    from ..stats import bootstrap_ratio

    v = np.asarray(values, dtype=np.float64)
    if not len(v):
        return (float("nan"),) * 3
    b = bootstrap_ratio(v, np.ones_like(v), n_boot=n_boot, seed=seed)
    return float(b["estimate"]), float(b["lo"]), float(b["hi"])


def steering_controls(model, prompts: list[str], rows: pd.DataFrame, neuron_sets: dict, multipliers, *,
                      batch_size: int = 16, progress: bool = True, kinds=KINDS) -> pd.DataFrame:
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


def steering_summary(sweeps: pd.DataFrame, kinds=KINDS, *, by=("set", "multiplier")) -> pd.DataFrame:
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
                   target: str, kinds=KINDS, batch_size: int = 16) -> pd.DataFrame:
    """Steering toward a chosen answer: each set of ``neuron_sets`` (name -> [(layer, unit)], e.g. say-a-capital
    neurons and their random and matched controls) is set, at each prompt's last position, to its mean activation
    at the last position of ``donor_prompts`` (prompts whose answer is of the ``target`` kind, e.g. states). One
    row per (set, prompt) with p(kind) for each of ``kinds`` (first tokens), ``top_is``, ``changed`` (top token
    differs from the unsteered one) and ``success`` (the top token is the row's ``target`` name's first token)."""
    tok = model.tokenizer
    ids = answer_ids(rows, tok, kinds)
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


def set_group_summary(tests: pd.DataFrame, kinds=KINDS) -> pd.DataFrame:
    """Per set: :func:`steering_summary` (by set) plus ``success`` (top answer = the target) with its Wilson
    interval, and the set's ``role`` (the group, random or matched) and ``size``."""
    from ..stats import wilson_interval

    out = steering_summary(tests, kinds, by=("set",))
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


# ---------------------------------------------------------------------------------------------------------------
# composition (Lindsey et al. 2025): replace what the two-hop prompt holds at the city token by its value on a prompt
# about a city of another state; does the answer become that state's capital?


def values_at(model, prompts: list[str], site: str, *, offset: int = -1, batch_size: int = 16) -> torch.Tensor:
    """[P, L, U] (float32, CPU): ``site`` at position ``offset`` counted from each prompt's end (left padding lines
    the ends up, so ``-2`` is the token before the last one in every prompt)."""
    from ..activations import read_sites

    out = []
    for start in range(0, len(prompts), batch_size):
        vals, _ = read_sites(model, model.tokenize(prompts[start:start + batch_size]), (site,))
        out.append(torch.stack([v[:, offset].float().cpu() for v in vals[site]], 1))
    return torch.cat(out)


def set_from_donors(model, prompts: list[str], site: str, donor_PLU: torch.Tensor, mask_PLU: torch.Tensor, *,
                    offset: int = -1, batch_size: int = 16) -> torch.Tensor:
    """Next-token logits [P, V] (float32, CPU) with the units of ``site`` where ``mask_PLU`` (bool [P, L, U]) is
    true set, at position ``offset`` from each prompt's end, to ``donor_PLU`` (e.g. their values on another prompt)."""
    from ..inputs import prepare
    from ..interventions import run_with_edits

    if donor_PLU.shape != mask_PLU.shape or donor_PLU.shape[0] != len(prompts):
        raise ValueError(f"donor {tuple(donor_PLU.shape)} and mask {tuple(mask_PLU.shape)} must be [P={len(prompts)}, "
                         "L, U]")
    layers = {int(l) for l in mask_PLU.any(2).any(0).nonzero()[:, 0]}

    def edit(s, layer, value, rows):
        if s != site or layer not in layers:
            return None
        m = mask_PLU[rows, layer].to(value.device)
        if not m.any():
            return None
        out = value.clone()
        out[:, offset] = torch.where(m, donor_PLU[rows, layer].to(value.device, value.dtype), out[:, offset])
        return out

    return run_with_edits(model, prepare(model, prompts), edits=edit, sites=(site,), batch_size=batch_size).logits.float()


def composition_swaps(model, prompts: dict, answer_ids: dict, variants: dict, pairs, *, offset: int,
                      donors: dict, batch_size: int = 16) -> pd.DataFrame:
    """For each pair (source A, target B) of keys of ``prompts`` and each variant (name -> (site, units)), run A's
    prompt with ``units`` of ``site`` at position ``offset`` set to their values on B's prompt. ``units``: a bool
    [L, U] mask (the same for every pair) or ``f(A, B) -> mask``; ``donors``: site -> {key: [L, U] values at
    ``offset``} (:func:`values_at`). One row per (variant, pair): n_units, p(A's answer), p(B's answer) (first
    tokens of ``answer_ids``), the top token, ``success`` (top = B's answer), ``kept`` (top = A's answer) and
    ``prefers_target`` (p(B's answer) > p(A's answer))."""
    tok = model.tokenizer
    pairs = list(pairs)
    rows = []
    for variant, (site, units) in variants.items():
        masks = torch.stack([torch.as_tensor(units(a, b) if callable(units) else units, dtype=torch.bool)
                             for a, b in pairs])
        donor = torch.stack([donors[site][b] for _, b in pairs])
        probs = set_from_donors(model, [prompts[a] for a, _ in pairs], site, donor, masks, offset=offset,
                                batch_size=batch_size).softmax(-1)
        for j, (a, b) in enumerate(pairs):
            top = int(probs[j].argmax())
            pa, pb = float(probs[j, answer_ids[a]]), float(probs[j, answer_ids[b]])
            rows.append({"variant": variant, "site": site, "source": a, "target": b, "n_units": int(masks[j].sum()),
                         "p_source_answer": pa, "p_target_answer": pb, "top_token": tok.decode([top]),
                         "success": top == answer_ids[b], "kept": top == answer_ids[a], "prefers_target": pb > pa})
    return pd.DataFrame(rows)


def composition_summary(swaps: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per variant: pairs, mean units, the success rate (top answer = the target's) with a Wilson interval over pairs
    and a bootstrap interval over distinct source prompts (pairs sharing a source are not independent), the rate at
    which the source's answer is kept, and ``role`` / ``size`` for variants named "<role> <size>" that set exactly
    <size> units in every pair (others: role = the variant, size = -1)."""
    from ..stats import bootstrap_ratio, wilson_interval

    out = []
    for variant, g in swaps.groupby("variant", sort=False):
        k, n = int(g["success"].sum()), len(g)
        lo, hi = wilson_interval(k, n)
        by_source = g.groupby("source")["success"].agg(["sum", "size"])
        boot = bootstrap_ratio(by_source["sum"].to_numpy(), by_source["size"].to_numpy(), n_boot=n_boot, seed=seed)
        kept = int(g["kept"].sum())
        head, _, tail = variant.rpartition(" ")
        # "<role> <n>" names a dose-curve set only when it sets exactly n units ("resid after layer 7" sets 1,536)
        dose = tail.isdigit() and g["n_units"].nunique() == 1 and int(tail) == int(g["n_units"].iloc[0])
        out.append({"variant": variant, "site": g["site"].iloc[0], "pairs": n, "sources": len(by_source),
                    "mean_units": g["n_units"].mean(), "successes": k, "success": k / n, "success_lo": lo,
                    "success_hi": hi, "success_boot_lo": float(boot["lo"]), "success_boot_hi": float(boot["hi"]),
                    "kept": kept / n, "prefers_target": g["prefers_target"].mean(),
                    "mean_p_target": g["p_target_answer"].mean(), "mean_p_source": g["p_source_answer"].mean(),
                    "role": head if dose else variant, "size": int(tail) if dose else -1})
    return pd.DataFrame(out)


def unit_mask(neurons, shape) -> torch.Tensor:
    """A bool [L, U] mask with ``neurons`` ((layer, unit) pairs) set."""
    mask = torch.zeros(shape, dtype=torch.bool)
    for l, u in neurons:
        mask[int(l), int(u)] = True
    return mask


def scale_groups(model, prompt: str, grouped: pd.DataFrame, multipliers, *, answers: dict) -> pd.DataFrame:
    """Each group of one prompt's grouped circuit (:func:`group_circuit`) multiplied at its nodes' positions by each
    multiplier; one row per (group, multiplier): n_nodes, p(name) of each ``answers`` (kind -> first token id),
    the top token and which kind it is."""
    import neuronlib

    tok = model.tokenizer
    ids = torch.tensor(list(answers.values()))
    rows = []
    for group, g in grouped.dropna(subset=["group"]).groupby("group", sort=False):
        nodes = [Node("mlp_acts", int(r.layer), int(r.position), int(r.unit)) for r in g.itertuples()]
        for mult in multipliers:
            res = neuronlib.steer(model, [prompt], nodes, multiplier=float(mult), positions="circuit", metric=None)
            probs = res.logits.float().softmax(-1)[0]
            top = int(probs.argmax())
            kind = next((k for k, i in answers.items() if i == top), "other")
            rows.append({"group": group, "n_nodes": len(nodes), "multiplier": float(mult),
                         **{f"p_{k}": float(probs[i]) for k, i in zip(answers, ids.tolist())},
                         "top_token": tok.decode([top]), "top_is": kind})
    return pd.DataFrame(rows)
