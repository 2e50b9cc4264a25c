"""City -> state -> capital (docs/method.md §6, the paper's figures 7-8): accuracy, circuits, neuron groups,
knock-outs and steering.

The analysis behind ``notebooks/03_multihop_steering.ipynb``. Every function takes a loaded model and the capitals
table (:func:`neuronlib.data.capitals.load_capitals`) and returns DataFrames; figure functions take those
DataFrames, so figures can be restyled without recomputing. The pipeline it shares with the other prompt-set
studies (circuits, AUROC, neuron-set controls, steering) is :mod:`neuronlib.paper.casestudy`; the capitals' prompts
(:data:`TASKS`) and kinds of answer (:data:`KINDS`) are bound here.

Steps (each a function here or in :mod:`~neuronlib.paper.casestudy`):

1. :func:`evaluate_tasks` -- what the model answers to the paper's two-hop prompt and to each hop alone
   (first-token probabilities of the capital, the state and the city; top-1 category checked on the whole name).
2. :func:`neuronlib.paper.casestudy.trace_circuits` -- RelP, zero baseline, metric = sum of the top-5 next-token
   logits, nodes with ``|score| >= tau * metric`` (tau = 0.005) at every position, per prompt.
3. :class:`MixedSet` / :func:`group_circuit` -- neuron groups: "say a capital" from the AUROC of last-position
   attribution, answer-is-capital vs answer-is-state inside one frame (:data:`neuronlib.data.capitals.FRAME`,
   selection states only, a null that permutes labels within each state); the other groups are named by what
   selected them (the token they sit on, the token their output promotes).
4. :func:`steering_sweep` -- scale the strongest "say a capital" neurons at their circuit positions; x0 is a
   knock-out (necessity), not steering; :func:`flip_fraction`.
5. :func:`neuronlib.paper.casestudy.set_group_test` -- steering proper: set a group at the last position to its
   mean values on prompts with another kind of answer; does the top answer become the chosen target (the state)?
   With random and matched controls.
6. :func:`swap_matrix` -- set neurons at the state token to their values from another state's prompt; does the
   answer become the other state's capital?
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..data import capitals as cap_data
from ..graph import CircuitGraph
from ..interventions import patch
from ..sites import Node
from . import casestudy

# The shared pipeline; names the committed notebooks 03 and 05 call as ``MH.<name>`` are re-exported.
from .casestudy import (  # noqa: F401
    PromptCircuits,
    accuracy_table,
    at_positions,
    beyond_controls,
    class_aurocs,
    control_sets,
    last_activations,
    matched_neurons,
    name_ids,
    name_positions,
    random_neurons,
    select_circuit,
    set_group_summary,
    set_group_test,
    split_by_key,
    trace_circuits,
    unit_aurocs,
)

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


_name_ids = name_ids  # notebook 05 as committed calls ``MH._name_ids``; the public name is casestudy.name_ids


# ---------------------------------------------------------------------------------------------------------------
# prompts and answers of the capitals table


def task_prompts(df: pd.DataFrame, tokenizer, task: str) -> list[str]:
    """:func:`neuronlib.paper.casestudy.task_prompts` of the capitals' :data:`TASKS`."""
    return casestudy.task_prompts(df, tokenizer, task, table=TASKS)


def answer_ids(df: pd.DataFrame, tokenizer) -> pd.DataFrame:
    """:func:`neuronlib.paper.casestudy.answer_ids` of the capital, the state and the city."""
    return casestudy.answer_ids(df, tokenizer, kinds=KINDS)


def evaluate_tasks(model, df: pd.DataFrame, tasks=None, *, batch_size: int = 16) -> pd.DataFrame:
    """:func:`neuronlib.paper.casestudy.evaluate_tasks` on the capitals table: one row per (task, row) with
    first-token p(capital), p(state), p(city), their ranks, ``top_is`` (whole name checked) and ``correct``."""
    return casestudy.evaluate_tasks(model, df, tasks, table=TASKS, kinds=KINDS, batch_size=batch_size)


# ---------------------------------------------------------------------------------------------------------------
# circuits


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
    cap_id = name_ids(tok, capital)[0]
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


def steering_sweep(model, prompts: list[str], df: pd.DataFrame, nodes_per_prompt: list[list[Node]], multipliers,
                   *, batch_size: int = 16, progress: bool = True) -> pd.DataFrame:
    """:func:`neuronlib.paper.casestudy.steering_sweep` with p(capital), p(state), p(city)."""
    return casestudy.steering_sweep(model, prompts, df, nodes_per_prompt, multipliers, kinds=KINDS,
                                    batch_size=batch_size, progress=progress)


def steering_summary(sweeps: pd.DataFrame, *, by=("set", "multiplier")) -> pd.DataFrame:
    """:func:`neuronlib.paper.casestudy.steering_summary` (the answer is the capital)."""
    return casestudy.steering_summary(sweeps, kinds=KINDS, by=by)


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
    cap_id = {s: name_ids(tok, by_state.loc[s, "capital"])[0] for s in states}
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
