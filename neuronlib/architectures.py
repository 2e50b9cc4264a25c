"""Architecture facts as data: one entry per model family.

Every other module asks an :class:`Architecture` where a site, norm or gate lives instead of testing model names.
Paths are attribute paths relative to the Hugging Face ``*ForCausalLM`` module (or to one decoder layer).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

# The identity rule replaces act(z) by z * stopgrad(act(z) / z). We declare act(z)/z in closed form per activation
# (finite at z = 0, unlike a division) so the rule is exact and cheap.
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _silu_ratio(z: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(z)


def _gelu_tanh_ratio(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(_SQRT_2_OVER_PI * (z + 0.044715 * z.pow(3))))


def _gelu_erf_ratio(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))


GATE_RATIOS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": _silu_ratio,
    "swish": _silu_ratio,
    "gelu_pytorch_tanh": _gelu_tanh_ratio,
    "gelu_new": _gelu_tanh_ratio,
    "gelu": _gelu_erf_ratio,
}


@dataclass(frozen=True)
class Architecture:
    """Where the parts of one model family live. Norm lists are in forward order within a layer."""

    family: str
    model_types: tuple[str, ...]
    activation_config_keys: tuple[str, ...]  # config attribute(s) naming the gate nonlinearity
    layers: str = "model.layers"
    embed: str = "model.embed_tokens"
    final_norm: str = "model.norm"
    unembed: str = "lm_head"
    attn: str = "self_attn"
    q_proj: str = "q_proj"
    k_proj: str = "k_proj"
    o_proj: str = "o_proj"
    mlp: str = "mlp"
    gate_act: str = "act_fn"
    up_proj: str = "up_proj"
    down_proj: str = "down_proj"
    norms_before_attn: tuple[str, ...] = ("input_layernorm",)
    norms_after_attn: tuple[str, ...] = ("post_attention_layernorm",)  # run after o_proj, before the MLP
    norms_after_mlp: tuple[str, ...] = ()
    norm_eps_attr: str = "variance_epsilon"
    norm_weight_offset: float = 0.0  # Gemma scales by (1 + weight)

    def activation_name(self, config) -> str:
        for key in self.activation_config_keys:
            name = getattr(config, key, None)
            if name:
                return name
        raise ValueError(f"{self.family}: config names no gate activation ({self.activation_config_keys})")

    def gate_ratio(self, config) -> Callable[[torch.Tensor], torch.Tensor]:
        name = self.activation_name(config)
        if name not in GATE_RATIOS:
            raise ValueError(f"RelP's identity rule has no entry for activation {name!r}; known: {sorted(GATE_RATIOS)}")
        return GATE_RATIOS[name]


LLAMA = Architecture(family="llama", model_types=("llama", "mistral", "qwen2", "qwen3"), activation_config_keys=("hidden_act",))
GEMMA3 = Architecture(
    family="gemma3",
    model_types=("gemma3_text", "gemma3", "gemma2"),
    activation_config_keys=("hidden_activation", "hidden_act"),
    norms_after_attn=("post_attention_layernorm", "pre_feedforward_layernorm"),
    norms_after_mlp=("post_feedforward_layernorm",),
    norm_eps_attr="eps",
    norm_weight_offset=1.0,
)

ARCHITECTURES: tuple[Architecture, ...] = (LLAMA, GEMMA3)


def architecture_for(config) -> Architecture:
    model_type = getattr(config, "model_type", None)
    for arch in ARCHITECTURES:
        if model_type in arch.model_types:
            return arch
    known = sorted(t for a in ARCHITECTURES for t in a.model_types)
    raise ValueError(f"no architecture entry for model_type {model_type!r}; known: {known}")


def get_path(root, path: str):
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj
