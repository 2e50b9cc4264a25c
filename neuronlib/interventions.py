"""Interventions on nodes (METHOD.md §4): ablate (mean or zero), patch from a counterfactual, steer neurons.

Every function runs batched forwards through :func:`neuronlib.tracing.run` and returns an :class:`Intervened`
result holding the last-position logits, the metric per example and a pandas view.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from . import tracing
from .activations import mean_values, read_sites
from .inputs import Prepared, prepare
from .metrics import make_metric
from .sites import SAE_SITES, Node, check_sites, empty_mask, node_masks, split_key

MODES = ("mean", "zero")


@dataclass
class Intervened:
    """Last-position logits [B, V] after an intervention, and the metric per example (None if not computable)."""

    logits: torch.Tensor
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
        """One row per example: the metric, the top next token and its probability, and p(token) for ``tokens``."""
        probs = self.probs()
        top_p, top_id = probs.max(-1)
        frame = pd.DataFrame({"example": range(len(probs)), "top_token": [self.tokenizer.decode([i]) for i in top_id.tolist()],
                              "top_prob": top_p.numpy()})
        if self.metric is not None:
            frame.insert(1, self.metric_name, self.metric.numpy())
        for text in tokens or []:
            tid = self.tokenizer(text, add_special_tokens=False)["input_ids"][0]
            frame[f"p({text})"] = probs[:, tid].numpy()
        return frame


def _real_to_padded(mask_LTU: torch.Tensor, pad_b: torch.Tensor) -> torch.Tensor:
    """[L, T, U] mask in real positions -> [B, L, T, U] in each example's left-padded layout."""
    L, T, U = mask_LTU.shape
    t = torch.arange(T)
    src = t[None, :] - pad_b[:, None]  # [B, T]: real position at padded index t
    valid = src >= 0
    out = mask_LTU[:, src.clamp(min=0)]  # [L, B, T, U]
    return (out & valid[None, :, :, None]).permute(1, 0, 2, 3)


def run_with_edits(model, prepared: Prepared, *, edits, metric=None, sites, batch_size: int = 32, which="clean",
                   before=None):
    """Batched forwards where ``edits(site, layer, value, rows) -> value`` rewrites sites; returns Intervened.

    ``before(rows)``, if given, runs before each batch's trace (traces cannot nest, so reads happen there)."""
    metric_fn = None if metric is None else make_metric(metric, prepared)
    logits, values = [], []
    for rows in torch.arange(len(prepared)).split(batch_size):
        inputs = prepared.rows(which, rows)
        if before is not None:
            before(rows)
        with torch.no_grad():
            lg = tracing.run(model, inputs, metric=lambda x: x, sites=sites,
                             edit=lambda s, l, v, rows=rows: edits(s, l, v, rows))
        logits.append(lg.float().cpu())
        if metric_fn is not None:
            values.append(metric_fn(lg, rows).float().cpu())
    return Intervened(torch.cat(logits), torch.cat(values) if values else None,
                      None if metric_fn is None else metric_fn.name, model.tokenizer)


def _masked_edit(model, prepared, masks, replacement):
    """An edit that replaces masked units by ``replacement(site, layer, value, rows)``."""
    pads = (prepared.T - prepared.lengths)
    padded = {s: _real_to_padded(m, pads) for s, m in masks.items()}

    def edit(key, layer, value, rows):
        site, is_error = split_key(key)
        if site not in padded:
            return None
        mask = padded[site][rows, 0 if site == "embed" else layer].to(value.device)
        if site in SAE_SITES:  # the last unit is the error node: it gates the whole error vector
            mask = mask[..., -1:] if is_error else mask[..., :-1]
        if not mask.any():
            return None
        return torch.where(mask, replacement(key, layer, value, rows), value)

    return edit


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


def ablation_runner(model, prepared: Prepared, sites, mode: str, metric, batch_size: int = 32):
    """``run(masks)`` -> metric per example with the masked nodes of ``sites`` ablated (``None``: the full model).

    The ablation values are computed once, so a sweep of circuits shares them."""
    means = ablation_values(model, prepared, sites, mode, batch_size)

    def zero_or_mean(key, layer, value, rows):
        if mode == "zero":
            return torch.zeros((), dtype=value.dtype, device=value.device)
        return means[key][max(layer, 0)].to(value.dtype)

    def run(masks):
        edit = _masked_edit(model, prepared, masks, zero_or_mean) if masks else (lambda *a: None)
        return run_with_edits(model, prepared, edits=edit, metric=metric, sites=sites if masks else (),
                              batch_size=batch_size).metric

    return run


def ablate(model, data, nodes, *, mode: str = "mean", complement: bool = False, sites=None, metric="auto",
           batch_size: int = 32, means=None) -> Intervened:
    """Ablate ``nodes`` (or, with ``complement=True``, every node of ``sites`` except them).

    mode "mean": the per-position mean over the data's counterfactual prompts (METHOD.md §4); "zero": 0.
    ``sites`` defaults to the sites of ``nodes``; with ``complement`` it names the basis whose other nodes go.
    """
    if mode not in MODES:
        raise ValueError(f"unknown ablation mode {mode!r}; use one of {MODES}")
    prepared = data if isinstance(data, Prepared) else prepare(model, data)
    nodes = list(nodes)
    masks = node_masks(model, nodes, prepared.T)
    sites = check_sites(sites) if sites is not None else tuple(masks) or ("mlp_acts",)
    for site in sites:
        masks.setdefault(site, empty_mask(model, site, prepared.T))
    if complement:
        masks = {s: ~m for s, m in masks.items() if s in sites}
    if means is None and mode == "mean":
        means = ablation_values(model, prepared, tuple(masks), mode, batch_size)

    def replacement(site, layer, value, rows):
        if mode == "zero":
            return torch.zeros((), dtype=value.dtype, device=value.device)
        return means[site][max(layer, 0)].to(value.dtype)

    edit = _masked_edit(model, prepared, masks, replacement)
    return run_with_edits(model, prepared, edits=edit, metric=_metric_arg(metric, prepared), sites=tuple(masks),
                          batch_size=batch_size)


def patch(model, clean, counterfactual=None, nodes=(), *, metric="auto", batch_size: int = 32) -> Intervened:
    """Run the clean prompts with ``nodes`` set to their values on the counterfactual prompts (example by example).

    ``clean`` may be records in the community format (then ``counterfactual`` is taken from ``patch_prefix``) or a
    list of prompts with ``counterfactual`` a list of prompts of the same token lengths.
    """
    if counterfactual is not None:
        from .inputs import as_examples

        ex = as_examples(clean)
        cf = as_examples(counterfactual).clean
        if len(cf) != len(ex):
            raise ValueError(f"{len(ex)} clean prompts but {len(cf)} counterfactual prompts")
        ex.patch = cf
        clean = ex
    prepared = prepare(model, clean, need_patch=True)
    masks = node_masks(model, list(nodes), prepared.T)
    sites = tuple(masks)
    patch_vals = {}

    def read_counterfactual(rows):
        patch_vals.update(read_sites(model, prepared.rows("patch", rows), sites)[0])

    def replacement(site, layer, value, rows):
        return patch_vals[site][max(layer, 0)]

    edit = _masked_edit(model, prepared, masks, replacement)
    return run_with_edits(model, prepared, edits=edit, metric=_metric_arg(metric, prepared), sites=sites,
                          batch_size=batch_size, before=read_counterfactual)


def steer(model, prompts, neurons, *, multiplier: float, positions="all", metric="auto", batch_size: int = 32) -> Intervened:
    """Multiply neurons' activations by ``multiplier``.

    neurons: (layer, unit) pairs on ``mlp_acts`` or Nodes (any site); or one list of Nodes per prompt.
    positions: "all" (every position), "circuit" (only the Nodes' own positions) or a list of positions.
    ``multiplier=1`` is a no-op and ``multiplier=0`` zero-ablates them.
    """
    prepared = prompts if isinstance(prompts, Prepared) else prepare(model, prompts)
    neurons = list(neurons)
    # One list of Nodes per prompt (an empty list leaves that prompt unchanged), or one shared list.
    per_example = (len(neurons) == len(prepared) and len(neurons) > 0
                   and all(isinstance(n, list) and all(isinstance(x, (list, tuple)) for x in n) for n in neurons))
    groups = neurons if per_example else [neurons]
    T = prepared.T
    if positions == "all":
        pos_list = None
    elif positions == "circuit":
        pos_list = "circuit"
    else:
        pos_list = list(positions)
        if any(not 0 <= p < T for p in pos_list):
            raise ValueError(f"positions {pos_list} out of range for prompts of {T} tokens")
    masks_per_group = []
    for group in groups:
        nodes = []
        for n in group:
            if len(n) == 2:
                if pos_list == "circuit":
                    raise ValueError("positions='circuit' needs Nodes (site, layer, position, unit), not (layer, unit)")
                nodes += [Node("mlp_acts", n[0], p, n[1]) for p in (pos_list or range(T))]
            else:
                node = Node(*n)
                if pos_list == "circuit":
                    nodes.append(node)
                else:
                    nodes += [node._replace(position=p) for p in (pos_list or range(T))]
        masks_per_group.append(node_masks(model, nodes, T))
    if not any(masks_per_group):
        raise ValueError("no neurons to steer")
    sites = tuple(dict.fromkeys(s for m in masks_per_group for s in m))
    pads = T - prepared.lengths
    stacked = {}
    for site in sites:  # [B, L, T, U] per example (one shared group broadcasts)
        per = [m.get(site, empty_mask(model, site, T)) for m in masks_per_group]
        if per_example:
            stacked[site] = torch.stack([_real_to_padded(m, pads[b:b + 1])[0] for b, m in enumerate(per)])
        else:
            stacked[site] = _real_to_padded(per[0], pads)

    def edit(key, layer, value, rows):
        site, is_error = split_key(key)
        if site not in stacked:
            return None
        mask = stacked[site][rows, 0 if site == "embed" else layer].to(value.device)
        if site in SAE_SITES:
            mask = mask[..., -1:] if is_error else mask[..., :-1]
        return torch.where(mask, value * multiplier, value)

    return run_with_edits(model, prepared, edits=edit, metric=_metric_arg(metric, prepared), sites=sites,
                          batch_size=batch_size)
