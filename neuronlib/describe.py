"""Key-free neuron descriptions (no LLM, no API key): what a neuron writes, and where it fires.

Two descriptions per MLP neuron (``mlp_acts`` unit ``u`` of layer ``l``):

1. **Output-token lens** ("logit lens of W_out"). The neuron adds ``a * W_down[:, u]`` to the residual stream
   (``a`` its activation). Read that direction through the rest of the model's linear read-out -- the norm weights
   on the way (Gemma's post-MLP norm, the final norm; their input-dependent scale is a positive scalar per token and
   does not change the ranking) and the unembedding -- to get one logit per vocabulary token:
   ``lens = W_U @ (W_down[:, u] * g)``. The *top* tokens are what the positive side of the neuron (a > 0) promotes,
   the *bottom* tokens what its negative side (a < 0) promotes. :func:`output_lens` does this for many neurons with
   one matrix product per chunk.

2. **Top-activating contexts.** One sweep over an offline corpus (:mod:`neuronlib.data.corpus`) records, for all
   ``n_layers x d_mlp`` neurons at once, the ``k`` largest and ``k`` smallest activations and where they occurred
   (:func:`activation_maxima`, cached on disk with :mod:`neuronlib.cache`, so later lookups are instant);
   :func:`top_contexts` turns those into text snippets.

:func:`describe` combines both into one DataFrame row per neuron (or per signed neuron, ``L23/N8079-``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm

from .architectures import get_path
from .inputs import as_int
from .neurons import Neuron, neuron_label

__all__ = [
    "ActivationMaxima", "activation_maxima", "corpus_windows", "describe", "lens_direction", "lens_logits",
    "model_fingerprint", "neuron_label", "output_lens", "top_contexts",
]


# ---------------------------------------------------------------------------------------------------------------
# neurons as (layer, unit) pairs, with an optional sign


def _as_neurons(neurons) -> list[Neuron]:
    """Neurons from (layer, unit[, sign]) tuples, "L23/N807-" strings, Nodes, Neurons or a DataFrame."""
    if hasattr(neurons, "columns"):
        if not {"layer", "unit"} <= set(neurons.columns):
            raise ValueError("a DataFrame of neurons needs columns 'layer' and 'unit'")
        signs = neurons["sign"] if "sign" in neurons.columns else [""] * len(neurons)
        return [Neuron.coerce((int(l), int(u), str(s or ""))) for l, u, s in zip(neurons["layer"], neurons["unit"], signs)]
    return [Neuron.coerce(n) for n in neurons]


def _check(model, neurons):
    for neuron in neurons:
        neuron.check(model)


def model_fingerprint(model) -> str:
    """A short, load-path-independent fingerprint of a model's weights (for cache keys): a few weight sums."""
    arch = model.arch
    layers = get_path(model.hf, arch.layers)
    parts = [getattr(getattr(layers[i], arch.mlp), arch.down_proj).weight[:, :16].double().sum().item()
             for i in (0, len(layers) - 1)]
    parts.append(get_path(model.hf, arch.unembed).weight[:16].double().sum().item())
    return ",".join(f"{p:.5e}" for p in parts)


# ---------------------------------------------------------------------------------------------------------------
# 1. output-token lens


def lens_direction(model, layer: int, units) -> torch.Tensor:
    """[d_model, n]: the neurons' output directions ``W_down[:, u]`` times the norm weights they pass on the way to
    the unembedding (post-MLP norms where the family has them, then the final norm)."""
    arch = model.arch
    hf_layer = get_path(model.hf, arch.layers)[layer]
    down = getattr(getattr(hf_layer, arch.mlp), arch.down_proj).weight  # [d_model, d_mlp]
    units = torch.as_tensor(units, dtype=torch.long, device=down.device)
    d = down[:, units].float()
    for name in arch.norms_after_mlp:
        d = d * (getattr(hf_layer, name).weight.float() + arch.norm_weight_offset)[:, None]
    final = get_path(model.hf, arch.final_norm).weight.float() + arch.norm_weight_offset
    return d * final[:, None]


def lens_logits(model, layer: int, units) -> torch.Tensor:
    """[n, V]: the logit-lens reading of each neuron's output direction (one row per unit)."""
    W_U = get_path(model.hf, model.arch.unembed).weight  # [V, d_model]
    with torch.no_grad():
        return (W_U.float() @ lens_direction(model, layer, units)).T


def output_lens(model, neurons, *, k: int = 10, chunk: int = 256) -> pd.DataFrame:
    """Top-``k`` and bottom-``k`` output tokens of each neuron (vectorised: one product per layer chunk).

    Columns: layer, unit, top_tokens, top_logits, bottom_tokens, bottom_logits (lists, strongest first).
    """
    neurons = _as_neurons(neurons)
    _check(model, neurons)
    k = as_int(k, "k", minimum=1)
    tok = model.tokenizer
    rows: dict[tuple[int, int], dict] = {}
    by_layer: dict[int, list[int]] = {}
    for layer, unit, _ in neurons:
        if unit not in by_layer.setdefault(layer, []):
            by_layer[layer].append(unit)
    for layer, units in by_layer.items():
        for start in range(0, len(units), chunk):
            part = units[start:start + chunk]
            lg = lens_logits(model, layer, part)
            top = lg.topk(k, dim=-1)
            bot = (-lg).topk(k, dim=-1)
            for i, unit in enumerate(part):
                rows[(layer, unit)] = {
                    "layer": layer, "unit": unit,
                    "top_tokens": [tok.decode([t]) for t in top.indices[i].tolist()],
                    "top_logits": [round(v, 4) for v in top.values[i].tolist()],
                    "bottom_tokens": [tok.decode([t]) for t in bot.indices[i].tolist()],
                    "bottom_logits": [round(-v, 4) for v in bot.values[i].tolist()],
                }
    return pd.DataFrame([rows[(l, u)] for l, u, _ in neurons])


# ---------------------------------------------------------------------------------------------------------------
# 2. top-activating contexts


@dataclass
class ActivationMaxima:
    """The ``k`` largest / smallest activations of every neuron over a corpus sweep, and where they occurred.

    ``top_values`` / ``bottom_values``: [L, U, k] (largest first / smallest first); ``top_index`` / ``bottom_index``:
    [L, U, k] flat token index into ``windows`` ([n_windows, window] token ids). ``mean`` / ``mean_abs``: [L, U]
    over all counted positions. Position 0 of each window is skipped (the attention sink there gives outsized
    activations that say nothing about the text).
    """

    top_values: torch.Tensor
    top_index: torch.Tensor
    bottom_values: torch.Tensor
    bottom_index: torch.Tensor
    mean: torch.Tensor
    mean_abs: torch.Tensor
    windows: torch.Tensor
    n_tokens: int
    info: dict

    def lookup(self, layer: int, unit: int, sign: str = "+") -> tuple[torch.Tensor, torch.Tensor]:
        """(values, flat token indices) of the strongest activations of one side of a neuron."""
        if sign == "-":
            return self.bottom_values[layer, unit], self.bottom_index[layer, unit]
        return self.top_values[layer, unit], self.top_index[layer, unit]


def corpus_windows(tokenizer, *, n_tokens: int, window: int = 128, seed: int = 0, sources=None) -> torch.Tensor:
    """[n_windows, window] token ids: corpus chunks tokenised, joined by EOS and cut into windows (no padding)."""
    from .data.corpus import iter_corpus_texts

    if n_tokens < window:
        raise ValueError(f"n_tokens ({n_tokens}) must be at least one window ({window})")
    n_windows = n_tokens // window
    need = n_windows * window
    sep = tokenizer.eos_token_id
    ids: list[int] = []
    for text in iter_corpus_texts(seed=seed, sources=sources):
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if sep is not None:
            ids.append(sep)
        if len(ids) >= need:
            break
    if len(ids) < need:
        n_windows = len(ids) // window
        need = n_windows * window
    return torch.tensor(ids[:need], dtype=torch.long).view(n_windows, window)


def _sweep(model, windows: torch.Tensor, k: int, batch_size: int, progress: bool) -> dict:
    from .activations import read_sites

    L, U = model.n_layers, model.d_mlp
    top_v = torch.full((L, k, U), -math.inf)
    top_i = torch.zeros((L, k, U), dtype=torch.long)
    bot_v = torch.full((L, k, U), math.inf)
    bot_i = torch.zeros((L, k, U), dtype=torch.long)
    total = torch.zeros(L, U, dtype=torch.float64)
    total_abs = torch.zeros(L, U, dtype=torch.float64)
    n_counted = 0
    W = windows.shape[1]
    t0 = time.perf_counter()
    batches = torch.arange(len(windows)).split(batch_size)
    bar = tqdm(batches, desc="neuron maxima (corpus sweep)", unit="batch", disable=not progress)
    for rows in bar:
        ids = windows[rows].to(model.device)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        values, _ = read_sites(model, inputs, ("mlp_acts",))
        flat_index = (rows[:, None] * W + torch.arange(W)[None, :])[:, 1:].reshape(-1)  # skip position 0
        for layer, v in enumerate(values["mlp_acts"]):
            a = v[:, 1:, :].reshape(-1, U).float().cpu()  # [N, U]
            total[layer] += a.sum(0, dtype=torch.float64)
            total_abs[layer] += a.abs().sum(0, dtype=torch.float64)
            kk = min(k, a.shape[0])
            bv, bi = a.topk(kk, dim=0)
            sv, si = a.topk(kk, dim=0, largest=False)
            cand_v = torch.cat([top_v[layer], bv])
            cand_i = torch.cat([top_i[layer], flat_index[bi]])
            keep = cand_v.topk(k, dim=0).indices
            top_v[layer], top_i[layer] = cand_v.gather(0, keep), cand_i.gather(0, keep)
            cand_v = torch.cat([bot_v[layer], sv])
            cand_i = torch.cat([bot_i[layer], flat_index[si]])
            keep = cand_v.topk(k, dim=0, largest=False).indices
            bot_v[layer], bot_i[layer] = cand_v.gather(0, keep), cand_i.gather(0, keep)
        n_counted += len(rows) * (W - 1)
        bar.set_postfix(tok_s=f"{n_counted / (time.perf_counter() - t0):.0f}")
    return {
        "top_values": top_v.permute(0, 2, 1).contiguous(), "top_index": top_i.permute(0, 2, 1).contiguous(),
        "bottom_values": bot_v.permute(0, 2, 1).contiguous(), "bottom_index": bot_i.permute(0, 2, 1).contiguous(),
        "mean": (total / n_counted).float(), "mean_abs": (total_abs / n_counted).float(),
        "seconds": time.perf_counter() - t0,
    }


def activation_maxima(model, *, n_tokens: int = 100_000, window: int = 128, k: int = 8, batch_size: int = 8,
                      seed: int = 0, sources=None, progress: bool = True, refresh: bool = False,
                      directory=None) -> ActivationMaxima:
    """Sweep ``n_tokens`` corpus tokens once and keep every neuron's ``k`` strongest activations of each sign.

    Cached on disk (``neuronlib.cache``, kind "neuron_maxima") under a key of the model, the corpus description and
    the sweep options, so a second call with the same arguments is a file read.
    """
    from .cache import cache_key, cached
    from .data.corpus import corpus_info

    info = corpus_info(sources=sources)
    corpus_id = {"version": info["version"], "n_chars": info["n_chars"], "fallback": info["fallback"]}
    key = cache_key(kind="neuron_maxima", model=model.name, weights=model_fingerprint(model), n_tokens=n_tokens,
                    window=window, k=k, seed=seed, sources=sources, corpus=corpus_id)

    def compute():
        windows = corpus_windows(model.tokenizer, n_tokens=n_tokens, window=window, seed=seed, sources=sources)
        result = _sweep(model, windows, k, batch_size, progress)
        result["windows"] = windows
        return result

    res = cached("neuron_maxima", key, compute, refresh=refresh, directory=directory)
    windows = res["windows"]
    return ActivationMaxima(
        top_values=res["top_values"], top_index=res["top_index"], bottom_values=res["bottom_values"],
        bottom_index=res["bottom_index"], mean=res["mean"], mean_abs=res["mean_abs"], windows=windows,
        n_tokens=int(windows.numel()),
        info={"corpus": info["version"], "window": window, "k": k, "seed": seed, "seconds": res.get("seconds"),
              "fallback": info["fallback"]},
    )


def _snippet(tokenizer, windows: torch.Tensor, flat: int, before: int, after: int) -> str:
    W = windows.shape[1]
    w, p = divmod(int(flat), W)
    ids = windows[w].tolist()
    left = tokenizer.decode(ids[max(0, p - before):p])
    mid = tokenizer.decode(ids[p:p + 1])
    right = tokenizer.decode(ids[p + 1:p + 1 + after])
    text = f"{left}[[{mid}]]{right}"
    return " ".join(text.split())  # one line


def top_contexts(model, maxima: ActivationMaxima, layer: int, unit: int, sign: str = "+", *, n: int = 3,
                 before: int = 12, after: int = 3) -> list[tuple[float, str]]:
    """The ``n`` strongest contexts of one side of a neuron as (activation, text) with the token in [[ ]]."""
    values, index = maxima.lookup(layer, unit, sign)
    out = []
    for v, i in zip(values[:n].tolist(), index[:n].tolist()):
        if not math.isfinite(v):
            break
        out.append((v, _snippet(model.tokenizer, maxima.windows, i, before, after)))
    return out


# ---------------------------------------------------------------------------------------------------------------
# 3. both together


def describe(model, neurons, *, k: int = 8, maxima: ActivationMaxima | None = None, n_contexts: int = 3) -> pd.DataFrame:
    """One row per neuron: label, the tokens its side promotes/suppresses and (with ``maxima``) its top contexts.

    ``neurons``: (layer, unit), (layer, unit, sign) or Nodes, or a DataFrame with layer, unit[, sign]. For a signed
    neuron the *promoted* tokens are those its side pushes up: the lens top for "+" (and unsigned), the bottom for
    "-". Columns: label, layer, unit, sign, promotes, suppresses, top/bottom lens lists, and (with ``maxima``)
    max_act, contexts (list of (activation, text)), description (one readable line).
    """
    items = _as_neurons(neurons)
    lens = output_lens(model, [(l, u) for l, u, _ in items], k=k)
    rows = []
    for (layer, unit, sign), lr in zip(items, lens.itertuples()):
        neg = sign == "-"
        promotes = lr.bottom_tokens if neg else lr.top_tokens
        suppresses = lr.top_tokens if neg else lr.bottom_tokens
        row = {"label": neuron_label(layer, unit, sign), "layer": layer, "unit": unit, "sign": sign,
               "promotes": promotes, "suppresses": suppresses,
               "top_tokens": lr.top_tokens, "top_logits": lr.top_logits,
               "bottom_tokens": lr.bottom_tokens, "bottom_logits": lr.bottom_logits}
        desc = "promotes " + " ".join(repr(t) for t in promotes[:5])
        if maxima is not None:
            ctx = top_contexts(model, maxima, layer, unit, "-" if neg else "+", n=n_contexts)
            row["max_act"] = ctx[0][0] if ctx else float("nan")
            row["contexts"] = ctx
            if ctx:
                desc += f" | fires on: {ctx[0][1]}"
        row["description"] = desc
        rows.append(row)
    return pd.DataFrame(rows)
