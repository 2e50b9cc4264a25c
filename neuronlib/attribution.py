"""Node attribution (docs/method.md §2): AtP, integrated gradients and RelP on every site at once.

Sign convention: a node's score is ``(v(x) - v_baseline) * dm/dv``, its estimated contribution to ``m(x) - m(baseline)``
(for a zero baseline, ``v * dm/dv``: RelP's relevance). Selecting nodes by ``|score|`` is unaffected by the sign.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

import pandas as pd
import torch
from tqdm.auto import tqdm

from . import tracing
from .activations import mean_values, read_sites
from .inputs import as_int, prepare
from .metrics import make_metric
from .sites import ERROR, SAE_SITES, Node, check_sites, site_layers, value_keys

if TYPE_CHECKING:
    from .models import Model

METHODS = ("atp", "relp", "relp-no-gate", "relp-no-half", "ig", "ig-inputs")
BASELINES = ("counterfactual", "zero", "mean")
IG_MEMORY = 2**30  # bytes one IG forward aims at (see ``attribute``'s ig_max_rows)
# Measured, not derived: IG-10 on both SAE bases of SmolLM2 (311,040 tapped units per token), 16 pairs x 6 tokens per
# forward, peaked 1.53 GiB over the resting RSS: 16 MB per token-row, 13 float32 values per tapped unit.
IG_COPIES = 13
RELP_VARIANTS = {
    "relp": tracing.RelPRules(),
    "relp-no-gate": tracing.RelPRules(gate="stopgrad"),
    "relp-no-half": tracing.RelPRules(half=False),
}


@dataclass
class Attribution:
    """Scores per (site, layer, position, unit) per example.

    ``scores[site]`` is a float32 tensor [B, L, T, U] in the left-padded layout (position t of example b is its token
    ``t - (T - lengths[b])``; for datasets of one tokenised length, padded and real positions coincide). Padding
    positions score 0.
    """

    scores: dict[str, torch.Tensor]
    tokens: list[list[str]]
    lengths: torch.Tensor
    metric: torch.Tensor  # m(x) per example
    baseline_metric: torch.Tensor | None  # m(x') per example (counterfactual baseline only)
    method: str
    baseline: str
    metric_name: str
    model_name: str = ""
    meta: dict = field(default_factory=dict)
    model_fingerprint: str = ""  # Model.fingerprint() of the model scored ("" for scores made before it was kept)

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(self.scores)

    @property
    def n_examples(self) -> int:
        return len(self.tokens)

    def __getitem__(self, site: str) -> torch.Tensor:
        return self.scores[site]

    def layers(self, site: str) -> list[int]:
        return [-1] if site == "embed" else list(range(self.scores[site].shape[1]))

    def mean(self) -> "Attribution":
        """Average over examples (one example left). Needs one tokenised length, so positions mean the same token."""
        if len(set(self.lengths.tolist())) > 1:
            raise ValueError("examples have different token lengths; a position-wise mean over them is undefined")
        return replace(
            self,
            scores={s: v.mean(0, keepdim=True) for s, v in self.scores.items()},
            tokens=self.tokens[:1],
            lengths=self.lengths[:1],
            metric=self.metric.mean(0, keepdim=True),
            baseline_metric=None if self.baseline_metric is None else self.baseline_metric.mean(0, keepdim=True),
            meta={**self.meta, "averaged_over": self.n_examples},
        )

    def _single(self) -> "Attribution":
        return self if self.n_examples == 1 else self.mean()

    def nodes(self, k: int | None = None, *, threshold: float | None = None, sites=None) -> list[Node]:
        """Top nodes by |score| (mean over examples): the k largest, and/or all with |score| >= threshold."""
        frame = self.top(k, threshold=threshold, sites=sites)
        return [Node(r.site, int(r.layer), int(r.position), int(r.unit)) for r in frame.itertuples()]

    def top(self, k: int | None = 20, *, threshold: float | None = None, sites=None) -> pd.DataFrame:
        """The nodes with the largest |score| (averaged over examples), as a DataFrame, largest first."""
        k = None if k is None else as_int(k, "k", minimum=0)
        one = self._single()
        sites = check_sites(sites) if sites is not None else self.sites
        flat = torch.cat([one.scores[s][0].flatten() for s in sites])
        order = flat.abs().argsort(descending=True)
        if threshold is not None:
            order = order[flat[order].abs() >= threshold]
        if k is not None:
            order = order[:k]
        return one._frame_from_flat(order, flat, sites, example=0)

    def to_frame(self, *, sites=None, min_abs: float = 0.0) -> pd.DataFrame:
        """Long format, one row per (example, node) with |score| > min_abs (real token positions)."""
        sites = check_sites(sites) if sites is not None else self.sites
        frames = []
        for b in range(self.n_examples):
            flat = torch.cat([self.scores[s][b].flatten() for s in sites])
            idx = (flat.abs() > min_abs).nonzero().flatten()
            frames.append(self._frame_from_flat(idx, flat, sites, example=b))
        return pd.concat(frames, ignore_index=True)

    def _frame_from_flat(self, idx: torch.Tensor, flat: torch.Tensor, sites, *, example: int) -> pd.DataFrame:
        rows = {"example": [], "site": [], "layer": [], "position": [], "token": [], "unit": [], "score": []}
        T = self.scores[sites[0]].shape[2]
        pad = T - int(self.lengths[example])
        offsets, start = [], 0
        for s in sites:
            offsets.append(start)
            start += self.scores[s][example].numel()
        bounds = torch.tensor(offsets[1:] + [start])
        which = torch.bucketize(idx, bounds, right=True)
        for i, w in zip(idx.tolist(), which.tolist()):
            s = sites[w]
            L, T_, U = self.scores[s].shape[1:]
            local = i - offsets[w]
            layer, rest = divmod(local, T_ * U)
            pos, unit = divmod(rest, U)
            rows["example"].append(example)
            rows["site"].append(s)
            rows["layer"].append(self.layers(s)[layer])
            rows["position"].append(pos - pad)
            rows["token"].append(self.tokens[example][pos - pad] if pos >= pad else "<pad>")
            rows["unit"].append(unit)
            rows["score"].append(float(flat[i]))
        return pd.DataFrame(rows)


def check_same_model(model, scores: "Attribution", what: str) -> None:
    """ValueError unless ``scores`` were computed on ``model``: same name and, where both are known, same weights
    (:meth:`neuronlib.Model.fingerprint`; two seeds or checkpoints under one name differ there)."""
    if not isinstance(scores, Attribution):
        raise ValueError(f"scores must be an Attribution (from neuronlib.attribute), got {type(scores).__name__}")
    name = getattr(model, "name", None)
    if scores.model_name and name and scores.model_name != name:
        raise ValueError(f"the scores were computed on model {scores.model_name!r} but {what} on {name!r}; "
                         "attribute on the same model")
    if scores.model_fingerprint and hasattr(model, "fingerprint") and scores.model_fingerprint != model.fingerprint():
        raise ValueError(f"the scores were computed on another model named {name!r} (weights fingerprint "
                         f"{scores.model_fingerprint} vs {model.fingerprint()}: another seed or checkpoint) but "
                         f"{what} on this one; attribute on the same model")


Method = Literal["atp", "relp", "relp-no-gate", "relp-no-half", "ig", "ig-inputs"]
Baseline = Literal["counterfactual", "zero", "mean"]


def attribute(
    model: Model,
    data,
    *,
    metric="logit_diff",
    method: Method = "relp",
    baseline: Baseline = "counterfactual",
    sites=("mlp_acts",),
    ig_steps: int = 10,
    ig_max_rows: int | None = None,
    batch_size: int = 16,
    k: int = 5,
    progress: bool | None = None,
    remote=None,
) -> Attribution:
    """Attribute ``metric`` to every node of ``sites``.

    method: "atp" (gradient x activation), "relp" (AtP on the replacement model; "relp-no-gate" and "relp-no-half" are
    the paper's ablations), "ig" (per-site integrated gradients: each layer of each site interpolated on its own, the
    rest recomputed; layers x steps passes) or "ig-inputs" (interpolate the input embeddings, average every node's
    gradient; steps passes). IG uses the midpoint rule; its steps run batched, at most ``ig_max_rows`` rows (pairs x
    steps) per forward, whole steps per group, fewer pairs per batch where one step of ``batch_size`` pairs is over
    the cap (None: as many rows as keep one forward near ``IG_MEMORY`` bytes, by ``_ig_rows``).
    Groups give the same scores as one batch, with less memory: every tapped layer holds a rows x tokens x units
    tensor several times over (an SAE site: 4,608 latents per layer).
    baseline: "counterfactual" (the patch prompts), "zero", or "mean" (per-position mean over ``data``).
    metric: "logit_diff", "logit", "topk_logits" (sum of the top ``k`` next-token logits) or a callable.
    remote: run every trace through nnsight's remote (NDIF) backend: an NDIF model key, a hub id or a
    :class:`neuronlib.tracing.Remote` (docs/scale.md); gradients are taken on the worker, scores here.
    """
    model = tracing.on_remote(model, remote)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {METHODS}")
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; use one of {BASELINES}")
    ig_steps = as_int(ig_steps, "ig_steps", minimum=1)
    batch_size = as_int(batch_size, "batch_size", minimum=1)
    ig_max_rows = None if ig_max_rows is None else as_int(ig_max_rows, "ig_max_rows", minimum=1)
    sites = check_sites(sites)
    prepared = prepare(model, data, need_patch=baseline == "counterfactual", batch_size=batch_size, backward=True)
    metric_fn = make_metric(metric, prepared, k=k)
    B, T = len(prepared), prepared.T
    if baseline == "mean" and B < 2:
        raise ValueError("baseline='mean' is the per-position mean over the data's examples; over one example it is "
                         "that example, so every score would be 0. Give more examples, or baseline='zero'")
    widths = {s: model.site_width(s) for s in sites}
    out = {s: torch.zeros(B, len(site_layers(model, s)), T, widths[s]) for s in sites}
    m_clean = torch.zeros(B)
    m_base = torch.zeros(B) if baseline == "counterfactual" else None
    means = mean_values(model, prepared, sites, batch_size=batch_size) if baseline == "mean" else None
    max_rows = ig_max_rows if ig_max_rows is not None else _ig_rows(model, sites, T)
    # IG also splits the pairs when one step of a batch is over the cap (rows are independent, so scores are equal)
    chunks = torch.arange(B).split(min(batch_size, max_rows) if method.startswith("ig") else batch_size)
    for rows in tqdm(chunks, desc=f"{method} attribution", disable=_quiet(progress, len(chunks))):
        clean = prepared.rows("clean", rows)
        if baseline == "counterfactual":
            base_vals, mb = _read_sites(model, prepared.rows("patch", rows), sites, metric_fn, rows)
            m_base[rows] = mb
        elif baseline == "zero":
            base_vals = None
        else:
            base_vals = {k: [v.expand(len(rows), *v.shape) for v in means[k]] for k in means}
        if method in ("atp", *RELP_VARIANTS):
            scores, m = _atp(model, clean, rows, sites, metric_fn, base_vals, RELP_VARIANTS.get(method))
        elif method == "ig":
            scores, m = _ig_per_site(model, clean, rows, sites, metric_fn, base_vals, ig_steps, max_rows,
                                     progress)
        else:
            base_embed = None if baseline == "zero" else _embed_values(model, prepared, rows, baseline, means)
            scores, m = _ig_inputs(model, clean, rows, sites, metric_fn, base_vals, base_embed, ig_steps, max_rows)
        m_clean[rows] = m
        pad_mask = clean["attention_mask"].bool().cpu()[:, None, :, None]  # [b, 1, T, 1]
        for s in sites:
            out[s][rows] = scores[s].float().cpu() * pad_mask
    _check_finite(m_clean, m_base, out, metric_fn.name)
    return Attribution(
        scores=out, tokens=prepared.tokens(model.tokenizer), lengths=prepared.lengths, metric=m_clean,
        baseline_metric=m_base, method=method, baseline=baseline, metric_name=metric_fn.name, model_name=model.name,
        meta={"ig_steps": ig_steps} if method.startswith("ig") else {},
        model_fingerprint=model.fingerprint() if hasattr(model, "fingerprint") else "",
    )


def _check_finite(m_clean, m_base, scores, metric_name) -> None:
    """ValueError naming the examples where the metric or a score is NaN or infinite (NaN would rank first)."""
    for what, values in (("metric", m_clean), ("metric on the counterfactual prompts", m_base)):
        if values is not None and not torch.isfinite(values).all():
            bad = (~torch.isfinite(values)).nonzero().flatten().tolist()
            raise ValueError(f"the {what} ({metric_name}) is not finite on example(s) {bad[:5]} "
                             f"({values[bad[0]].item()}); scores would be NaN and rank first")
    for site, s in scores.items():
        if not torch.isfinite(s).all():
            bad = (~torch.isfinite(s)).flatten(1).any(1).nonzero().flatten().tolist()
            raise ValueError(f"scores on {site} are not finite on example(s) {bad[:5]} (the metric's gradient is "
                             "NaN or infinite); they would rank first")


def _quiet(progress, n):
    return (n < 2) if progress is None else not progress


def _read_sites(model, inputs, sites, metric_fn, rows):
    return read_sites(model, inputs, sites, metric=lambda lg: metric_fn(lg, rows))


def _diff(vals, base_vals, key, layer):
    v = vals[key][layer]
    return v if base_vals is None else v - base_vals[key][layer]


def _merge_error_nodes(scores: dict, sites) -> dict:
    """Per-key scores [b, L, T, U] -> per-site; an SAE site's error node (summed over its vector) is the last unit."""
    out = {}
    for s in sites:
        if s in SAE_SITES:
            out[s] = torch.cat([scores[s], scores[s + ERROR].sum(-1, keepdim=True).to(scores[s].dtype)], -1)
        else:
            out[s] = scores[s]
    return out


def _tap_all(keys):
    values, deltas = {k: [] for k in keys}, {k: [] for k in keys}

    def tap(key, layer, v):
        if key not in deltas:
            return None
        d = torch.zeros_like(v, requires_grad=True)
        values[key].append(v.detach())
        deltas[key].append(d)
        return v + d

    return tap, values, deltas


def _grads(out, deltas, keys):
    flat = [d for k in keys for d in deltas[k]]
    grads = torch.autograd.grad(out.sum(), flat, allow_unused=True)
    grads = [torch.zeros_like(d) if g is None else g for d, g in zip(flat, grads)]
    per_key, i = {}, 0
    for k in keys:
        per_key[k] = grads[i:i + len(deltas[k])]
        i += len(deltas[k])
    return per_key


def _atp(model, inputs, rows, sites, metric_fn, base_vals, relp):
    keys = value_keys(sites)
    tap, values, deltas = _tap_all(keys)
    # the gradients are taken inside the trace, where the graph is (so the same call can run remotely)
    m, values, grads = tracing.run(model, inputs, metric=lambda lg: metric_fn(lg, rows), edit=tap, sites=sites,
                                   relp=relp, then=lambda m: (m.detach(), values, _grads(m, deltas, keys)))
    scores = {k: torch.stack([_diff(values, base_vals, k, l) * g for l, g in enumerate(grads[k])], 1) for k in keys}
    return _merge_error_nodes(scores, sites), m.float().cpu()


def _alphas(n_steps, device, dtype):
    return ((torch.arange(n_steps, device=device, dtype=torch.float64) + 0.5) / n_steps).to(dtype)


def _repeat(inputs, n):
    return {k: v.repeat(n, *([1] * (v.dim() - 1))) for k, v in inputs.items()}


def _ig_rows(model, sites, T: int, budget: int | None = None) -> int:
    """Rows per IG forward that keep its memory near ``budget`` bytes (default ``IG_MEMORY``): ``IG_COPIES`` float32
    values per tapped unit and token (value, delta, path, gradient, sums, and what the forward keeps for backward)."""
    units = 0
    for s in sites:
        width = model.site_width(s) + (model.site_width(SAE_SITES[s]) if s in SAE_SITES else 0)  # + error vector
        units += len(site_layers(model, s)) * width
    per_row = IG_COPIES * 4 * T * max(units, 1)
    return max(1, (IG_MEMORY if budget is None else budget) // per_row)


def _step_groups(n_steps: int, b: int, max_rows: int) -> list[torch.Tensor]:
    """IG's step indices split so that one forward holds at most ``max_rows`` rows (at least one step each)."""
    per = max(1, min(n_steps, max_rows // b))
    return list(torch.arange(n_steps).split(per))


def _ig_per_site(model, inputs, rows, sites, metric_fn, base_vals, n_steps, max_rows, progress):
    """Marks et al.'s IG: each (site, layer) interpolated on its own from baseline to clean, downstream recomputed.
    An SAE site's latents and error node are interpolated together."""
    clean_vals, m = _read_sites(model, inputs, sites, metric_fn, rows)
    b = len(rows)
    alphas = _alphas(n_steps, m.device, torch.float64)
    scores = {}
    jobs = [(s, layer) for s in sites for layer in range(len(clean_vals[s]))]
    for site, layer in tqdm(jobs, desc="IG per site", leave=False, disable=_quiet(progress, len(jobs) * 2)):
        lid = -1 if site == "embed" else layer
        keys = value_keys((site,))
        grad_sums = {}
        for steps in _step_groups(n_steps, b, max_rows):
            g = len(steps)
            paths, deltas = {}, {}
            for key in keys:
                v = clean_vals[key][layer]
                base = torch.zeros_like(v) if base_vals is None else base_vals[key][layer]
                alpha = alphas[steps].to(v.dtype).repeat_interleave(b)[:, None, None]
                paths[key] = base.repeat(g, 1, 1) + alpha * (v - base).repeat(g, 1, 1)
                deltas[key] = torch.zeros_like(paths[key], requires_grad=True)

            def interpolate(key, l, value, paths=paths, deltas=deltas):
                return paths[key] + deltas[key] if l == lid and key in paths else None

            rep_rows = rows.repeat(g)
            grads = tracing.run(model, _repeat(inputs, g), metric=lambda lg, r=rep_rows: metric_fn(lg, r),
                                edit=interpolate, sites=(site,),
                                then=lambda out, d=deltas: torch.autograd.grad(out.sum(), list(d.values())))
            for key, grad in zip(deltas, grads):
                summed = grad.view(g, b, *grad.shape[1:]).sum(0)
                grad_sums[key] = summed if key not in grad_sums else grad_sums[key] + summed
        for key in keys:
            scores.setdefault(key, []).append(_diff(clean_vals, base_vals, key, layer) * (grad_sums[key] / n_steps))
    return _merge_error_nodes({k: torch.stack(v, 1) for k, v in scores.items()}, sites), m


def _embed_values(model, prepared, rows, baseline, means):
    if baseline == "counterfactual":
        vals, _ = read_sites(model, prepared.rows("patch", rows), ("embed",))
        return vals["embed"][0]
    if means is None or "embed" not in means:
        means = mean_values(model, prepared, ("embed",), batch_size=len(rows))
    return means["embed"][0].expand(len(rows), *means["embed"][0].shape)


def _ig_inputs(model, inputs, rows, sites, metric_fn, base_vals, base_embed, n_steps, max_rows):
    """IG on the input embeddings; every node's gradient averaged along that one path."""
    read = tuple(dict.fromkeys(("embed", *sites)))
    clean_vals, m = _read_sites(model, inputs, read, metric_fn, rows)
    e = clean_vals["embed"][0]
    e0 = torch.zeros_like(e) if base_embed is None else base_embed
    b = len(rows)
    alphas = _alphas(n_steps, e.device, torch.float64)
    keys = value_keys(sites)
    grad_sums = {}
    for steps in _step_groups(n_steps, b, max_rows):
        g = len(steps)
        alpha = alphas[steps].to(e.dtype).repeat_interleave(b)[:, None, None]
        path = e0.repeat(g, 1, 1) + alpha * (e - e0).repeat(g, 1, 1)
        tap_site, _, deltas = _tap_all(keys)

        def tap(key, layer, value, path=path, tap_site=tap_site):
            if key == "embed":
                value = path
                tapped = tap_site(key, layer, value)
                return value if tapped is None else tapped
            return tap_site(key, layer, value)

        rep_rows = rows.repeat(g)
        grads = tracing.run(model, _repeat(inputs, g), metric=lambda lg, r=rep_rows: metric_fn(lg, r), edit=tap,
                            sites=read, then=lambda out, d=deltas: _grads(out, d, keys))
        for k, per_layer in grads.items():
            summed = [gr.view(g, b, *gr.shape[1:]).sum(0) for gr in per_layer]
            grad_sums[k] = summed if k not in grad_sums else [a + c for a, c in zip(grad_sums[k], summed)]
    scores = {k: torch.stack([_diff(clean_vals, base_vals, k, layer) * (gs / n_steps)
                              for layer, gs in enumerate(grad_sums[k])], 1) for k in keys}
    return _merge_error_nodes(scores, sites), m
