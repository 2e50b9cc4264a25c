"""Sites: where a node's value is read (docs/method.md §1). ``mlp_acts`` is the neuron basis."""
from __future__ import annotations

from typing import NamedTuple

import torch

# In forward order within a layer; ``embed`` comes before layer 0. ``sae_*`` sites are an SAE's latents on the
# named site plus one error node per (layer, position): unit ``d_sae`` of the site (the last one).
SITES: tuple[str, ...] = ("embed", "attn_out", "sae_attn_out", "mlp_acts", "mlp_out", "sae_mlp_out", "resid", "sae_resid")
LAYER_SITES: tuple[str, ...] = tuple(s for s in SITES if s != "embed")
BASE_SITES: tuple[str, ...] = tuple(s for s in SITES if not s.startswith("sae_"))
SAE_SITES: dict[str, str] = {"sae_attn_out": "attn_out", "sae_mlp_out": "mlp_out", "sae_resid": "resid"}
ERROR = "/error"  # suffix of the key under which an SAE site's error vectors travel through edits

SITE_DOC = {
    "embed": "output of the token embedding (one 'layer', numbered -1)",
    "attn_out": "input of self_attn.o_proj (concatenated heads)",
    "mlp_acts": "input of mlp.down_proj = act(gate_proj(x)) * up_proj(x): the MLP neurons",
    "mlp_out": "output of the MLP (what it writes towards the residual stream)",
    "resid": "output of the decoder layer (the residual stream)",
    "sae_attn_out": "SAE latents on attn_out + one error node per (layer, position)",
    "sae_mlp_out": "SAE latents on mlp_out + one error node per (layer, position)",
    "sae_resid": "SAE latents on resid + one error node per (layer, position)",
}


class Node(NamedTuple):
    """A node: the value of one unit of one site at one layer and token position."""

    site: str
    layer: int
    position: int
    unit: int

    def label(self) -> str:
        prefix = {"mlp_acts": "N", "mlp_out": "M", "attn_out": "A", "resid": "R", "embed": "E"}.get(self.site, "S")
        return f"L{self.layer}/{prefix}{self.unit}@{self.position}"


def check_sites(sites) -> tuple[str, ...]:
    if isinstance(sites, str):
        sites = (sites,)
    sites = tuple(sites)
    if not sites:
        raise ValueError("sites is empty; choose from " + ", ".join(SITES))
    bad = [s for s in sites if s not in SITES]
    if bad:
        raise ValueError(f"unknown site(s) {bad}; choose from {', '.join(SITES)}")
    return tuple(s for s in SITES if s in sites)  # forward order, no duplicates


def site_layers(model, site: str) -> list[int]:
    return [-1] if site == "embed" else list(range(model.n_layers))


def site_width(model, site: str) -> int:
    check_sites(site)
    if site in SAE_SITES:
        saes = model.saes.get(site)
        if not saes:
            raise ValueError(f"site {site!r} needs SAEs: attach them first with model.attach_saes({site!r}, saes)")
        return saes[0].d_sae + 1
    if site == "mlp_acts":
        return model.d_mlp
    if site == "attn_out":  # heads x head_dim, which need not equal d_model (Gemma-3-270M: 4 x 256 vs 640)
        cfg = model.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return cfg.num_attention_heads * head_dim
    return model.d_model


def check_nodes(model, nodes) -> list[Node]:
    """Validate nodes against the model; ValueError naming the first bad one."""
    from .inputs import as_int

    if nodes is None:
        raise ValueError("nodes is None: pass a list of Nodes (site, layer, position, unit), e.g. attribution.nodes(20)")
    out = []
    for node in nodes:
        if isinstance(node, (str, bytes)) or not hasattr(node, "__len__") or len(node) != 4:
            raise ValueError(f"a node is (site, layer, position, unit), got {node!r}")
        site, layer, position, unit = node
        check_sites(site)
        where = f"node {site} layer {layer!r} position {position!r} unit {unit!r}"
        node = Node(site, *(as_int(v, f"{where}: {name}") for v, name in
                            ((layer, "layer"), (position, "position"), (unit, "unit"))))
        where = f"node {node.label()} ({site})"
        layers = site_layers(model, node.site)
        if node.layer not in layers:
            raise ValueError(f"{where}: layer {node.layer} out of range (layers {layers[0]}..{layers[-1]})")
        width = site_width(model, node.site)
        if not 0 <= node.unit < width:
            raise ValueError(f"{where}: unit {node.unit} out of range (width {width})")
        if node.position < 0:
            raise ValueError(f"{where}: position must be >= 0")
        out.append(node)
    return out


def node_masks(model, nodes, T: int) -> dict[str, torch.Tensor]:
    """Boolean masks {site: [L, T, U]} marking ``nodes`` (positions counted from the first real token)."""
    masks: dict[str, torch.Tensor] = {}
    for node in check_nodes(model, nodes):
        if node.position >= T:
            raise ValueError(f"node {node.label()} ({node.site}): position {node.position} out of range for prompts of {T} tokens")
        if node.site not in masks:
            masks[node.site] = empty_mask(model, node.site, T)
        masks[node.site][0 if node.site == "embed" else node.layer, node.position, node.unit] = True
    return masks


def empty_mask(model, site: str, T: int) -> torch.Tensor:
    return torch.zeros(len(site_layers(model, site)), T, site_width(model, site), dtype=torch.bool)


def split_key(key: str) -> tuple[str, bool]:
    """An edit key -> (site, is the SAE error part)."""
    return (key[: -len(ERROR)], True) if key.endswith(ERROR) else (key, False)


def value_keys(sites) -> tuple[str, ...]:
    """The keys under which the sites' values travel: an SAE site has its latents and its error vectors."""
    return tuple(k for s in sites for k in ((s, s + ERROR) if s in SAE_SITES else (s,)))
