"""The only module that talks to nnsight.

One function, :func:`run`, walks a model's modules in forward order inside an nnsight trace and, at each site, hands
the site's value to a caller-supplied ``edit`` (read it, add a gradient tap, replace it). The same walk applies the
RelP replacement-model rules when asked. Everything is undone when the trace ends: nothing is registered on the model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import nnsight
import torch

from .architectures import get_path
from .sites import ERROR


def wrap(hf_model):
    """nnsight's wrapper over an already-loaded HF model; users can run their own traces on it (``model.nn``)."""
    return nnsight.NNsight(hf_model)


@dataclass(frozen=True)
class RelPRules:
    """The replacement model's backward rules (docs/method.md §2). Forward values never change.

    gate: "identity" (act(z) -> z * stopgrad(act(z)/z)), "stopgrad" (the paper's "no gate rule": no gradient through
    the gate, factor 1 on up) or "none" (the true gradient of the nonlinearity).
    half: split the gradient of gate*up in half (False = "no half rule": the product rule).
    """

    norm: bool = True
    attention: bool = True
    gate: str = "identity"
    half: bool = True

    def __post_init__(self):
        if self.gate not in ("identity", "stopgrad", "none"):
            raise ValueError(f"RelPRules.gate must be 'identity', 'stopgrad' or 'none', got {self.gate!r}")


class Edit(Protocol):
    def __call__(self, site: str, layer: int, value: torch.Tensor) -> torch.Tensor | None: ...


def _straight_through(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """``value`` in the forward pass (bit-identical: s - s is exactly 0), the gradient of ``surrogate`` backward."""
    surrogate = surrogate.to(value.dtype)
    return value.detach() + (surrogate - surrogate.detach())


def _frozen_norm(envoy, model) -> None:
    """RMSNorm with its normalisation scale held constant: y = x * stopgrad(rsqrt(mean x^2 + eps)) * w."""
    x = envoy.input
    y = envoy.output
    module = envoy._module
    eps = getattr(module, model.arch.norm_eps_attr)
    xf = x.float()
    scale = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps).detach()
    weight = module.weight.float() + model.arch.norm_weight_offset
    envoy.output = _straight_through(y, xf * scale * weight)


def _apply(edit, site, layer, value):
    if edit is None:
        return value
    new = edit(site, layer, value)
    return value if new is None else new


def _visit(model, edit, sites, base: str, layer: int, value):
    """The edit of a base site, then of its SAE site (latents and error node), if requested."""
    if base in sites:
        value = _apply(edit, base, layer, value)
    sae_site = "sae_" + base
    if sae_site in sites:
        from .saes import sae_site_reconstruct, sae_site_values

        sae = model.saes[sae_site][layer]
        latents, error = sae_site_values(sae, value)
        latents = _apply(edit, sae_site, layer, latents)
        error = _apply(edit, sae_site + ERROR, layer, error)
        value = sae_site_reconstruct(sae, latents, error)  # bit-identical to ``value`` when nothing was edited
    return value


def _wants(sites, base):
    return base in sites or "sae_" + base in sites


def run(
    model,
    inputs: dict[str, torch.Tensor],
    *,
    metric: Callable[[torch.Tensor], torch.Tensor] | None = None,
    edit: Edit | None = None,
    sites: tuple[str, ...] = (),
    relp: RelPRules | None = None,
    inputs_embeds: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """One forward pass. Returns ``metric(last_logits_BV)`` (a [B] tensor that keeps its autograd graph), or None.

    ``edit(site, layer, value)`` is called for every site in ``sites`` in forward order; what it returns (if not
    None) replaces the value for the rest of the forward pass. An SAE site calls it twice: with its latents under
    the site's name and with its error vectors under ``site + "/error"``. Gradients flow only where the caller made a leaf that
    requires grad (parameters are frozen), so a caller taps a site by returning ``value + delta``.
    """
    arch = model.arch
    lm = model.nn
    sites = set(sites)
    need_layers = bool(sites - {"embed"}) or relp is not None
    visit = lambda base, layer, value: _visit(model, edit, sites, base, layer, value)  # noqa: E731
    kwargs = dict(attention_mask=inputs["attention_mask"], logits_to_keep=1, use_cache=False)
    if inputs_embeds is not None:
        kwargs["inputs_embeds"] = inputs_embeds
    else:
        kwargs["input_ids"] = inputs["input_ids"]
    gate_ratio = arch.gate_ratio(model.config) if relp is not None and relp.gate == "identity" else None
    result: list = []
    with lm.trace(**kwargs):
        if "embed" in sites:
            embed = get_path(lm, arch.embed)
            embed.output = _apply(edit, "embed", -1, embed.output)
        layers = get_path(lm, arch.layers) if need_layers else []
        for i, layer in enumerate(layers):
            if relp is not None and relp.norm:
                for name in arch.norms_before_attn:
                    _frozen_norm(getattr(layer, name), model)
            attn = getattr(layer, arch.attn)
            if relp is not None and relp.attention:
                # A constant attention pattern: q and k carry no gradient; masks and values are untouched.
                q_proj = getattr(attn, arch.q_proj)
                q_proj.output = q_proj.output.detach()
                k_proj = getattr(attn, arch.k_proj)
                k_proj.output = k_proj.output.detach()
            if _wants(sites, "attn_out"):
                o_proj = getattr(attn, arch.o_proj)
                o_proj.input = visit("attn_out", i, o_proj.input)
            if relp is not None and relp.norm:
                for name in arch.norms_after_attn:
                    _frozen_norm(getattr(layer, name), model)
            mlp = getattr(layer, arch.mlp)
            if relp is not None or "mlp_acts" in sites:
                down = getattr(mlp, arch.down_proj)
                if relp is not None and (relp.gate != "none" or relp.half):
                    act = getattr(mlp, arch.gate_act)
                    z = act.input if gate_ratio is not None else None
                    a = act.output
                    if gate_ratio is not None:
                        a = _straight_through(a, z * gate_ratio(z).detach())
                        act.output = a
                    u = getattr(mlp, arch.up_proj).output
                    h = down.input
                    if relp.gate == "stopgrad":
                        surrogate = a.detach() * u
                    elif relp.half:
                        surrogate = 0.5 * (a * u.detach()) + 0.5 * (a.detach() * u)
                    else:
                        surrogate = a * u
                    h = _straight_through(h, surrogate)
                else:
                    h = down.input
                down.input = _apply(edit, "mlp_acts", i, h) if "mlp_acts" in sites else h
            if _wants(sites, "mlp_out"):
                mlp.output = visit("mlp_out", i, mlp.output)
            if relp is not None and relp.norm:
                for name in arch.norms_after_mlp:
                    _frozen_norm(getattr(layer, name), model)
            if _wants(sites, "resid"):
                out = layer.output
                if isinstance(out, tuple):
                    layer.output = (visit("resid", i, out[0]), *out[1:])
                else:
                    layer.output = visit("resid", i, out)
        if relp is not None and relp.norm:
            _frozen_norm(get_path(lm, arch.final_norm), model)
        if metric is not None:
            logits = get_path(lm, arch.unembed).output
            result.append(metric(logits[:, -1, :]))
    return result[0] if result else None


def logits(model, inputs: dict[str, torch.Tensor], *, relp: RelPRules | None = None) -> torch.Tensor:
    """Last-position logits [B, V] (through the same walk, so RelP's forward can be compared bit for bit)."""
    with torch.no_grad() if relp is None else torch.enable_grad():
        out = run(model, inputs, metric=lambda x: x, relp=relp)
    return out.detach()
