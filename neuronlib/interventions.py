"""Interventions on nodes (docs/method.md §4): ablate (mean or zero), patch from a counterfactual, steer neurons.

Every function runs batched forwards through :func:`neuronlib.tracing.run` and returns an :class:`Intervened`
result holding the last-position logits, the metric per example and a pandas view.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import pandas as pd
import torch
from tqdm.auto import tqdm

from . import tracing
from .activations import mean_values, read_sites
from .inputs import Prepared, prepare
from .metrics import make_metric
from .neurons import Neuron
from .sites import SAE_SITES, Node, check_sites, empty_mask, node_masks, split_key

if TYPE_CHECKING:
    from .models import Model

AblationMode = Literal["mean", "zero"]
MODES: tuple[str, ...] = ("mean", "zero")


@dataclass
class Intervened:
    """Last-position logits [B, V] after an intervention (None if not kept), and the metric per example (None if
    not computable)."""

    logits: torch.Tensor | None
    metric: torch.Tensor | None
    metric_name: str | None
    tokenizer: object

    def probs(self) -> torch.Tensor:
        return self.logits.float().softmax(-1)

    def prob_of(self, token_ids) -> torch.Tensor:
        """p(token) per example; ``token_ids`` is one id, or one id per example."""
        ids = torch.as_tensor(token_ids).reshape(-1)
        ids = ids.expand(self.logits.shape[0]) if ids.numel() == 1 else ids
        return self.probs().gather(-1, ids[:, None])[:, 0]

    def to_frame(self, tokens: list[str] | None = None) -> pd.DataFrame:
        """One row per example: the metric, the top next token and its probability, and p(token) for ``tokens``.

        Each of ``tokens`` must be one token of the model's vocabulary (e.g. " Texas"): only the next token's
        distribution is kept, so a multi-token string (" New Mexico") raises a ValueError naming its pieces rather
        than reporting its first token's probability."""
        probs = self.probs()
        top_p, top_id = probs.max(-1)
        frame = pd.DataFrame({"example": range(len(probs)),
                              "top_token": [self.tokenizer.decode([i]) for i in top_id.tolist()],
                              "top_prob": top_p.numpy()})
        if self.metric is not None:
            frame.insert(1, self.metric_name, self.metric.numpy())
        if isinstance(tokens, str):
            tokens = [tokens]
        for text in tokens or []:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                pieces = self.tokenizer.convert_ids_to_tokens(ids)
                raise ValueError(f"{text!r} is {len(ids)} tokens {pieces}; to_frame reports next-token probabilities, "
                                 "so give single tokens (e.g. its first piece, knowing that is what you measure)")
            tid = ids[0]
            frame[f"p({text})"] = probs[:, tid].numpy()
        return frame


def _to_padded(mask_BTU: torch.Tensor, pad_B: torch.Tensor) -> torch.Tensor:
    """Masks in real positions (position 0 = first real token) -> each row's left-padded layout."""
    if not bool(pad_B.any()):
        return mask_BTU
    T, U = mask_BTU.shape[1:]
    src_BT = torch.arange(T)[None, :] - pad_B[:, None]  # real position at padded index t
    out = mask_BTU.gather(1, src_BT.clamp(min=0)[..., None].expand(-1, -1, U))
    return out & (src_BT >= 0)[..., None]


def run_with_edits(model, prepared: Prepared, *, edits, metric=None, sites, batch_size: int = 32, which="clean",
                   before=None, progress: bool = False, keep_logits: bool = True):
    """Batched forwards where ``edits(site, layer, value, rows) -> value`` rewrites sites; returns Intervened.

    ``before(rows)``, if given, runs before each batch's trace (traces cannot nest, so reads happen there).
    ``keep_logits=False`` keeps only the metric (a sweep of many circuits would otherwise hold rows x vocab floats)."""
    metric_fn = None if metric is None else make_metric(metric, prepared)
    logits, values = [], []
    batches = torch.arange(len(prepared)).split(batch_size)
    for rows in tqdm(batches, desc="forwards", disable=not progress or len(batches) < 2):
        inputs = prepared.rows(which, rows)
        if before is not None:
            before(rows)
        # without keep_logits only the metric leaves the trace (from a remote worker: B floats, not B x vocab)
        in_trace = metric_fn is not None and not keep_logits
        with torch.no_grad():
            lg = tracing.run(model, inputs, metric=(lambda x, rows=rows: metric_fn(x, rows)) if in_trace else
                             (lambda x: x), sites=sites, edit=lambda s, l, v, rows=rows: edits(s, l, v, rows))
        if keep_logits:
            logits.append(lg.float().cpu())
        if metric_fn is not None:
            values.append((lg if in_trace else metric_fn(lg, rows)).float().cpu())
    return Intervened(torch.cat(logits) if keep_logits else None, torch.cat(values) if values else None,
                      None if metric_fn is None else metric_fn.name, model.tokenizer)


def _masked_edit(prepared, masks, replacement, mask_of_row=None):
    """An edit that sets the masked units to ``replacement(key, layer, value, rows)``.

    ``masks``: {site: [C, L, T, U]} boolean, in real positions; row r of ``prepared`` uses mask
    ``mask_of_row[r]`` (default: mask 0 for every row), so one batch can hold several circuits or one node set per
    example. An SAE site's last unit is its error node: it gates the whole error vector (key ``site/error``)."""
    pads_B = prepared.T - prepared.lengths
    mask_of_row = torch.zeros(len(prepared), dtype=torch.long) if mask_of_row is None else mask_of_row

    def edit(key, layer, value, rows):
        site, is_error = split_key(key)
        if site not in masks:
            return None
        mask = _to_padded(masks[site][mask_of_row[rows], max(layer, 0)], pads_B[rows]).to(value.device)
        if site in SAE_SITES:
            mask = mask[..., -1:] if is_error else mask[..., :-1]
        if not mask.any():
            return None
        return torch.where(mask, replacement(key, layer, value, rows), value)

    return edit


def _per_example(nodes, n_examples: int):
    """(groups, mask of each row): one node list shared by every example, or one list per example."""
    if nodes is None or isinstance(nodes, (str, Node)):
        raise ValueError(f"nodes must be a list of Nodes (or one list per example), got {nodes!r}")
    nodes = list(nodes)
    per_example = (len(nodes) == n_examples and n_examples > 0
                   and all(isinstance(g, list) and all(isinstance(x, (list, tuple)) for x in g) for g in nodes))
    if per_example:
        return [list(g) for g in nodes], torch.arange(n_examples)
    return [nodes], None


def _unsigned(item) -> Neuron:
    """A :class:`Neuron` (or ``"L0/N813"``) as an unsigned Neuron; a signed one is refused, never ignored: these
    interventions act on the neuron's whole activation."""
    neuron = Neuron.coerce(item)
    if neuron.sign:
        raise ValueError(f"neuron {neuron}: ablate, patch and steer act on the neuron's whole activation, so its sign "
                         f"has no meaning here (it is not ignored either); drop it: {neuron._replace(sign='')}")
    return neuron


def _as_nodes(item, T: int) -> list:
    """A Node as itself; a Neuron or ``"L0/N813"`` string as its mlp_acts node at every position."""
    if isinstance(item, (str, Neuron)):
        neuron = _unsigned(item)
        return [Node("mlp_acts", neuron.layer, p, neuron.unit) for p in range(T)]
    return [item]


def _group_masks(model, groups, T: int) -> dict[str, torch.Tensor]:
    """{site: [G, L, T, U]}: the nodes of each group (Neurons: at every position), in real positions."""
    per_group = [node_masks(model, [x for n in g for x in _as_nodes(n, T)], T) for g in groups]
    sites = tuple(dict.fromkeys(s for m in per_group for s in m))
    return {s: torch.stack([m.get(s, empty_mask(model, s, T)) for m in per_group]) for s in sites}


def _metric_arg(metric, prepared):
    if metric != "auto":
        return metric
    if prepared.answer_id is not None and prepared.patch_answer_id is not None:
        return "logit_diff"
    return "logit" if prepared.answer_id is not None else None


def ablation_values(model, prepared: Prepared, sites, mode: str, batch_size: int = 32):
    """What an ablated node is set to: 0, or its per-position mean over the counterfactual (patch) prompts
    (the clean prompts when the data has none), in ``prepared``'s padded layout."""
    if mode not in MODES:
        raise ValueError(f"unknown ablation mode {mode!r}; use one of {MODES}")
    if mode == "zero":
        return None
    which = "patch" if prepared.patch is not None else "clean"
    return mean_values(model, prepared, sites, which=which, batch_size=batch_size)


def _ablated_value(mode, means):
    def replacement(key, layer, value, rows):
        if mode == "zero":
            return torch.zeros((), dtype=value.dtype, device=value.device)
        return means[key][max(layer, 0)].to(value.dtype)
    return replacement


def ablation_runner(model, prepared: Prepared, sites, mode: str, metric, batch_size: int = 32, *,
                    progress: bool = False):
    """``run(circuits)`` -> the metric [C, B] with, for each circuit, the masked nodes of ``sites`` ablated.

    ``circuits``: a list of {site: [L, T, U] mask in real positions} (True = ablate; a site left out, or ``None`` for
    the whole circuit, ablates nothing there). All circuits run as blocks of rows of the same batched forwards, and
    the ablation values are computed once, so a sweep of circuits costs a few large forwards."""
    if metric is None:
        raise ValueError("a circuit sweep needs a metric (e.g. 'logit_diff')")
    replacement = _ablated_value(mode, ablation_values(model, prepared, sites, mode, batch_size))
    n = len(prepared)

    def run(circuits):
        circuits = [c or {} for c in circuits]
        C = len(circuits)
        stacked = prepared.repeat(C)
        masks = {s: torch.stack([c[s] if s in c else empty_mask(model, s, prepared.T) for c in circuits])
                 for s in sites if any(s in c for c in circuits)}
        edit = _masked_edit(stacked, masks, replacement, torch.arange(C).repeat_interleave(n))
        out = run_with_edits(model, stacked, edits=edit, metric=metric, sites=tuple(masks),
                             batch_size=batch_size, progress=progress, keep_logits=False)
        return out.metric.view(C, n)

    return run


def ablate(model: Model, data, nodes, *, mode: AblationMode = "mean", complement: bool = False, sites=None,
           metric="auto", batch_size: int = 32, means=None, remote=None) -> Intervened:
    """Ablate ``nodes`` (or, with ``complement=True``, every node of ``sites`` except them).

    mode "mean": the per-position mean over the data's counterfactual prompts (docs/method.md §4); "zero": 0.
    ``sites`` defaults to the sites of ``nodes``; with ``complement`` it names the basis whose other nodes go.
    ``nodes`` is one node list for every example, or one list per example; a :class:`~neuronlib.Neuron` or an
    ``"L0/N813"`` string in it stands for that neuron at every position.
    ``remote``: run the traces through nnsight's remote (NDIF) backend (see :func:`neuronlib.tracing.on_remote`).
    """
    model = tracing.on_remote(model, remote)
    if mode not in MODES:
        raise ValueError(f"unknown ablation mode {mode!r}; use one of {MODES}")
    prepared = data if isinstance(data, Prepared) else prepare(model, data, batch_size=batch_size)
    groups, mask_of_row = _per_example(nodes, len(prepared))
    masks = _group_masks(model, groups, prepared.T)
    sites = check_sites(sites) if sites is not None else tuple(masks) or ("mlp_acts",)
    C = len(groups)
    for site in sites:
        masks.setdefault(site, empty_mask(model, site, prepared.T).expand(C, -1, -1, -1))
    outside = sorted(set(masks) - set(sites))
    if outside and complement:
        raise ValueError(f"complement=True keeps only the nodes of sites {list(sites)}, but some nodes are on "
                         f"{outside}; add those sites to sites= or drop the nodes")
    if outside:
        raise ValueError(f"sites={list(sites)} but some nodes are on {outside}, which would be ablated too; add "
                         "those sites to sites= or drop the nodes")
    if complement:
        masks = {s: ~m for s, m in masks.items() if s in sites}
    if means is None and mode == "mean":
        means = ablation_values(model, prepared, tuple(masks), mode, batch_size)
    edit = _masked_edit(prepared, masks, _ablated_value(mode, means), mask_of_row)
    return run_with_edits(model, prepared, edits=edit, metric=_metric_arg(metric, prepared), sites=tuple(masks),
                          batch_size=batch_size)


def patch(model: Model, clean, counterfactual=None, nodes=(), *, metric="auto", batch_size: int = 32,
          remote=None) -> Intervened:
    """Run the clean prompts with ``nodes`` set to their values on the counterfactual prompts (example by example).

    ``clean`` may be records in the community format (then ``counterfactual`` is taken from ``patch_prefix``) or a
    list of prompts with ``counterfactual`` a list of prompts of the same token lengths. ``nodes`` is one node list
    for every example, or one list per example; a Neuron or ``"L0/N813"`` string stands for that neuron at every
    position. ``remote``: as in :func:`ablate`.
    """
    model = tracing.on_remote(model, remote)
    if counterfactual is not None:
        from .inputs import as_examples

        ex = as_examples(clean)
        cf = as_examples(counterfactual).clean
        if len(cf) != len(ex):
            raise ValueError(f"{len(ex)} clean prompts but {len(cf)} counterfactual prompts")
        ex.patch = cf
        clean = ex
    prepared = prepare(model, clean, need_patch=True, batch_size=batch_size)
    groups, mask_of_row = _per_example(nodes, len(prepared))
    masks = _group_masks(model, groups, prepared.T)
    sites = tuple(masks)
    patch_vals = {}

    def read_counterfactual(rows):
        patch_vals.update(read_sites(model, prepared.rows("patch", rows), sites)[0])

    def replacement(key, layer, value, rows):
        return patch_vals[key][max(layer, 0)]

    edit = _masked_edit(prepared, masks, replacement, mask_of_row)
    return run_with_edits(model, prepared, edits=edit, metric=_metric_arg(metric, prepared), sites=sites,
                          batch_size=batch_size, before=read_counterfactual)


def steer(model: Model, prompts, neurons, *, multiplier: float,
          positions: Literal["all", "circuit"] | list[int] = "all", metric="auto", batch_size: int = 32,
          remote=None) -> Intervened:
    """Multiply neurons' activations by ``multiplier``.

    neurons: :class:`~neuronlib.Neuron` objects, ``"L0/N813"`` strings or (layer, unit) pairs on ``mlp_acts``
    (a signed neuron, ``L0/N813-``, is refused: scaling acts on both sides), or Nodes (any site); or one list of
    Nodes per prompt.
    positions: "all" (every position), "circuit" (only the Nodes' own positions) or a list of positions.
    ``multiplier=1`` is a no-op and ``multiplier=0`` zero-ablates them. ``remote``: as in :func:`ablate`.
    """
    import math

    model = tracing.on_remote(model, remote)
    try:
        multiplier = float(multiplier)
    except (TypeError, ValueError):
        raise ValueError(f"multiplier must be a number, got {multiplier!r}") from None
    if not math.isfinite(multiplier):
        raise ValueError(f"multiplier must be finite, got {multiplier}")
    prepared = prompts if isinstance(prompts, Prepared) else prepare(model, prompts, batch_size=batch_size)
    T = prepared.T
    if positions not in ("all", "circuit"):
        positions = list(positions)
        if any(not 0 <= p < T for p in positions):
            raise ValueError(f"positions {positions} out of range for prompts of {T} tokens")
    groups, mask_of_row = _per_example(neurons, len(prepared))

    def expand(n):
        at = range(T) if positions in ("all", "circuit") else positions
        if isinstance(n, (str, Neuron)):
            n = tuple(_unsigned(n)[:2])
        if len(n) == 2:
            if positions == "circuit":
                raise ValueError("positions='circuit' needs Nodes (site, layer, position, unit), not (layer, unit)")
            return [Node("mlp_acts", n[0], p, n[1]) for p in at]
        node = Node(*n)
        return [node] if positions == "circuit" else [node._replace(position=p) for p in at]

    masks = _group_masks(model, [[x for n in g for x in expand(n)] for g in groups], T)
    if not masks:
        raise ValueError("no neurons to steer")
    edit = _masked_edit(prepared, masks, lambda key, layer, value, rows: value * multiplier, mask_of_row)
    return run_with_edits(model, prepared, edits=edit, metric=_metric_arg(metric, prepared), sites=tuple(masks),
                          batch_size=batch_size)
