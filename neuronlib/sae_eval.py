"""How good an SAE is, measured the way the SAE literature measures it, on a model's own text.

Two kinds of measure, per SAE (one site, one layer):

**Reconstruction** (:func:`reconstruction_stats`, one no-grad forward per batch reads every site at once):

- ``ev_all``: explained variance ``1 - sum ||x - x_hat||^2 / sum ||x - mean x||^2`` pooled over every real token
  (the mean over the same rows); ``ev``: the same without the positions in ``exclude_positions`` (default position
  0: on a model without a BOS token the first token is an attention sink whose residual norm is tens of times the
  others', so it can dominate both sums). Sums are kept in float64, so any number of tokens streams through.
- ``l0``: mean number of active latents per kept token; ``dead_fraction``: the fraction of latents that fire on
  none of the real tokens given (count over >= 100,000 tokens for a meaningful number).

**Splicing** (:func:`splice_losses`): the SAE's reconstruction ``x_hat`` replaces the site's value at that one
layer (every other layer untouched; this is the SAE site with its error node removed), through
:func:`neuronlib.tracing.run`'s edits, and the next-token losses of the whole text are compared with the clean
forward:

- ``ce_clean`` / ``ce_spliced`` / ``ce_zero``: mean next-token cross-entropy (nats) over every prediction whose
  context and target are real tokens, clean, with ``x_hat`` spliced in, and with the site replaced by zeros;
- ``ce_recovered = (ce_zero - ce_spliced) / (ce_zero - ce_clean)``: 1 for a perfect reconstruction, 0 for one no
  better than deleting the site; ``ce_delta = ce_spliced - ce_clean`` (Gao et al.'s "delta loss", which needs no
  baseline);
- ``kl_spliced`` / ``kl_zero``: mean ``KL(p_clean || p_edited)`` of the next-token distributions (nats).

The baseline is **zero ablation at every site**, as SAELens and SAEBench compute "CE loss recovered": the site's
value (MLP output, or the whole residual stream after the layer) is replaced by zeros at every position where the
SAE is spliced. For the residual stream that deletes everything the model has computed up to that layer; on a
bias-free model (SmolLM2) every later layer then sees zeros, the logits are all 0 and ``ce_zero`` is ``ln(vocab)``
(10.80 nats) at every layer. So ``ce_zero`` is far above ``ce_clean`` and ``ce_recovered`` is close to 1 even for a
mediocre SAE: read ``ce_delta`` and ``kl_spliced`` beside it. On short prompts zero-ablating an MLP output can lower
the cross-entropy (``ce_zero < ce_clean``), and ``ce_recovered`` then means nothing.

``exclude_positions`` leaves its positions out of ``ev`` and ``l0``; with ``splice_excluded=False`` they also keep
their clean value in the spliced and zero-ablated forwards (SAEBench's treatment of a BOS token). By default every
position is spliced, as the SVA circuits use the SAE at every position.

:func:`spliced_logit_diff` is the task-level counterpart: the SVA logit difference kept when *every* layer's SAE of
one site is spliced in at once.

Token input: a ``[N, T]`` tensor of token ids (every token real, e.g. :func:`neuronlib.paper.sae_baselines.heldout_token_windows`),
or a list of strings (tokenised with ``Model.tokenize``, left-padded; padding counts nowhere). Positions are counted
from each text's first real token. Memory: a batch's logits are held up to six times at once (clean log-probabilities,
edited logits, their log-softmax and the KL's temporaries), ``6 x batch_size x T x vocab x 4`` bytes (1.2 GB for
8 x 128 tokens of SmolLM2); ``batch_size`` bounds it.
"""
from __future__ import annotations

from typing import Iterator, Mapping, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from . import tracing
from .activations import read_sites
from .saes import TopKSAE

__all__ = ["QUALITY_COLUMNS", "reconstruction_stats", "splice_losses", "sae_quality", "spliced_logits",
           "spliced_logit_diff"]

STATS_COLUMNS = ["site", "layer", "d_sae", "k", "n_tokens", "n_tokens_kept", "ev_all", "ev", "l0", "dead_fraction"]
LOSS_COLUMNS = ["site", "layer", "n_predictions", "ce_clean", "ce_spliced", "ce_zero", "ce_recovered", "ce_delta",
                "kl_spliced", "kl_zero"]
QUALITY_COLUMNS = STATS_COLUMNS + LOSS_COLUMNS[2:]
_BASE = ("mlp_out", "resid", "attn_out")


# ------------------------------------------------------------------------------------------------------ inputs


def _as_saes(saes) -> dict[str, dict[int, TopKSAE]]:
    """{base site: {layer: SAE}} from {site or "sae_"+site: list per layer, or {layer: SAE}}."""
    if not isinstance(saes, Mapping) or not saes:
        raise ValueError("saes must be a non-empty dict {site: [SAE per layer] or {layer: SAE}}")
    out: dict[str, dict[int, TopKSAE]] = {}
    for site, per_layer in saes.items():
        base = site[4:] if isinstance(site, str) and site.startswith("sae_") else site
        if base not in _BASE:
            raise ValueError(f"SAE site {site!r} is not one of {_BASE} (or their 'sae_' names)")
        layers = dict(per_layer) if isinstance(per_layer, Mapping) else dict(enumerate(per_layer))
        bad = [l for l, s in layers.items() if not isinstance(s, TopKSAE)]
        if bad:
            raise ValueError(f"saes[{site!r}] at layers {bad} are not TopKSAE")
        out[base] = {int(l): s for l, s in sorted(layers.items())}
    return out


def _check_layers(model, saes: dict[str, dict[int, TopKSAE]]) -> None:
    for site, layers in saes.items():
        width = model.site_width(site)
        for l, sae in layers.items():
            if not 0 <= l < model.n_layers:
                raise ValueError(f"{site} SAE at layer {l}: the model has layers 0..{model.n_layers - 1}")
            if sae.d_in != width:
                raise ValueError(f"{site} SAE at layer {l} has d_in {sae.d_in}; the site is {width} wide")


def _batches(model, tokens, batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Inputs dicts of at most ``batch_size`` texts: windows as given, strings tokenised and left-padded."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(tokens, torch.Tensor):
        if tokens.dim() != 2 or tokens.dtype not in (torch.long, torch.int32, torch.int64) or tokens.shape[1] < 2:
            raise ValueError(f"tokens must be an integer tensor [N, T] with T >= 2, got {tuple(tokens.shape)} "
                             f"{tokens.dtype}")
        return [{"input_ids": ids.long().to(model.device), "attention_mask": torch.ones_like(ids).to(model.device)}
                for ids in tokens.split(batch_size)]
    texts = list(tokens)
    if not texts or not all(isinstance(t, str) and t for t in texts):
        raise ValueError("tokens must be a [N, T] id tensor or a non-empty list of non-empty strings")
    return [model.tokenize(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]


def _positions(mask_BT: torch.Tensor) -> torch.Tensor:
    """Each token's position counted from its text's first real token (left padding: -1 on padding)."""
    return mask_BT.long().cumsum(1) - 1


def _kept(mask_BT: torch.Tensor, exclude_positions: Sequence[int]) -> torch.Tensor:
    keep = mask_BT.bool().clone()
    pos = _positions(mask_BT)
    for p in exclude_positions:
        keep &= pos != int(p)
    return keep


def _reconstruct(sae: TopKSAE, x: torch.Tensor) -> torch.Tensor:
    """``decode(encode(x))`` in the SAE's dtype and device, returned in ``x``'s."""
    xs = x.to(sae.W_dec.device, sae.W_dec.dtype)
    return sae.decode(sae.encode(xs)).to(x.device, x.dtype)


# ------------------------------------------------------------------------------------------------ reconstruction


class _Moments:
    """Streaming float64 sums for explained variance over a row subset."""

    def __init__(self, d: int):
        self.n, self.sse, self.sumsq, self.sum = 0, 0.0, 0.0, torch.zeros(d, dtype=torch.float64)

    def add(self, x: torch.Tensor, err_rows: torch.Tensor) -> None:
        x = x.double()
        self.n += x.shape[0]
        self.sse += float(err_rows.sum())
        self.sumsq += float(x.pow(2).sum())
        self.sum += x.sum(0).cpu()

    def ev(self) -> float:
        if self.n == 0:
            return float("nan")
        sst = self.sumsq - float(self.sum.pow(2).sum()) / self.n
        return 1.0 - self.sse / max(sst, 1e-300)


@torch.no_grad()
def reconstruction_stats(model, saes, tokens, *, exclude_positions: Sequence[int] = (0,), batch_size: int = 8,
                         progress: bool = True) -> pd.DataFrame:
    """Explained variance (every position, and without ``exclude_positions``), L0 and dead-latent fraction of
    every SAE in ``saes`` ({site: [SAE per layer] or {layer: SAE}}) on ``tokens``; one row per (site, layer).
    One forward per batch serves every SAE. See the module docstring for the definitions."""
    saes = _as_saes(saes)
    _check_layers(model, saes)
    batches = _batches(model, tokens, batch_size)
    acc = {(s, l): {"all": _Moments(sae.d_in), "kept": _Moments(sae.d_in), "l0": 0.0,
                    "fired": torch.zeros(sae.d_sae, dtype=torch.bool, device=sae.W_dec.device)}
           for s, layers in saes.items() for l, sae in layers.items()}
    for inputs in tqdm(batches, desc="SAE reconstruction", unit="batch", disable=not progress):
        mask = inputs["attention_mask"].bool()
        keep = _kept(inputs["attention_mask"], exclude_positions)[mask]  # over the real tokens, in order
        values, _ = read_sites(model, inputs, tuple(saes))
        for s, layers in saes.items():
            for l, sae in layers.items():
                x = values[s][l][mask].to(sae.W_dec.device, sae.W_dec.dtype)
                vals, idx = sae.encode_topk(x)
                x_hat = sae.decode(torch.zeros(x.shape[0], sae.d_sae, dtype=x.dtype, device=x.device)
                                   .scatter(-1, idx, vals))
                err = (x - x_hat).double().pow(2).sum(-1)
                a = acc[(s, l)]
                k = keep.to(x.device)
                a["all"].add(x, err)
                a["kept"].add(x[k], err[k])
                active = vals > 0
                a["l0"] += float(active[k].sum())
                a["fired"][idx[active]] = True
        del values
    rows = []
    for (s, l), a in acc.items():
        sae = saes[s][l]
        n_kept = a["kept"].n
        rows.append({"site": s, "layer": l, "d_sae": sae.d_sae, "k": sae.k, "n_tokens": a["all"].n,
                     "n_tokens_kept": n_kept, "ev_all": a["all"].ev(), "ev": a["kept"].ev(),
                     "l0": a["l0"] / n_kept if n_kept else float("nan"),
                     "dead_fraction": float((~a["fired"]).float().mean())})
    out = pd.DataFrame(rows, columns=STATS_COLUMNS)
    out.attrs["exclude_positions"] = tuple(int(p) for p in exclude_positions)
    return out


# ------------------------------------------------------------------------------------------------------ splicing


def _splice_edit(replacements: dict[tuple[str, int], object], where_BT: torch.Tensor | None):
    """An edit replacing (site, layer)'s value by ``fn(value)`` at the positions ``where_BT`` (None: everywhere)."""

    def edit(site, layer, value):
        fn = replacements.get((site, layer))
        if fn is None:
            return None
        new = fn(value)
        if where_BT is None:
            return new
        return torch.where(where_BT[..., None].to(value.device), new, value)

    return edit


def spliced_logits(model, inputs: dict[str, torch.Tensor], saes, *, where_BT: torch.Tensor | None = None,
                   zero: bool = False) -> torch.Tensor:
    """Every position's logits ``[B, T, V]`` with each given SAE's reconstruction (``zero=True``: zeros) in place of
    its site at its layer, at the positions ``where_BT`` (default every position). ``saes``: {site: [SAE per layer]
    or {layer: SAE}}; all of them are spliced in the same forward."""
    saes = _as_saes(saes)
    _check_layers(model, saes)
    repl = {(s, l): (torch.zeros_like if zero else (lambda v, sae=sae: _reconstruct(sae, v)))
            for s, layers in saes.items() for l, sae in layers.items()}
    with torch.no_grad():
        return tracing.run(model, inputs, metric=lambda lg: lg, edit=_splice_edit(repl, where_BT), sites=tuple(saes),
                           all_positions=True)


def _next_token_losses(logits_BTV: torch.Tensor, ids_BT: torch.Tensor, clean_logp: torch.Tensor | None):
    """Per-prediction cross-entropy [B, T-1] and, given the clean log-probabilities, KL(clean || this) [B, T-1]."""
    logp = logits_BTV[:, :-1].float().log_softmax(-1)
    ce = -logp.gather(-1, ids_BT[:, 1:, None])[..., 0]
    if clean_logp is None:
        return ce, None, logp
    kl = (clean_logp.exp() * (clean_logp - logp)).sum(-1)
    return ce, kl, None


def _jobs(saes) -> Iterator[tuple[str, int, TopKSAE]]:
    for s, layers in saes.items():
        for l, sae in layers.items():
            yield s, l, sae


@torch.no_grad()
def splice_losses(model, saes, tokens, *, exclude_positions: Sequence[int] = (0,), splice_excluded: bool = True,
                  batch_size: int = 8, progress: bool = True) -> pd.DataFrame:
    """Cross-entropy loss recovered and KL to the clean model when one SAE at a time is spliced in; one row per
    (site, layer) of ``saes``. Per batch: one clean forward, then per SAE one spliced and one zero-ablated
    forward. See the module docstring for the definitions and the zero-ablation baseline."""
    saes = _as_saes(saes)
    _check_layers(model, saes)
    batches = _batches(model, tokens, batch_size)
    jobs = list(_jobs(saes))
    sums = {(s, l): {"ce_spliced": 0.0, "ce_zero": 0.0, "kl_spliced": 0.0, "kl_zero": 0.0} for s, l, _ in jobs}
    ce_clean_sum, n_pred = 0.0, 0
    bar = tqdm(total=len(batches) * (1 + 2 * len(jobs)), desc="SAE splice forwards", unit="fwd",
               disable=not progress)
    for inputs in batches:
        ids, attn = inputs["input_ids"], inputs["attention_mask"].bool()
        pairs = (attn[:, :-1] & attn[:, 1:]).float()  # context and target both real
        where = None if splice_excluded else _kept(inputs["attention_mask"], exclude_positions)
        clean = tracing.run(model, inputs, metric=lambda lg: lg, all_positions=True)
        ce, _, clean_logp = _next_token_losses(clean, ids, None)
        del clean
        ce_clean_sum += float((ce * pairs).sum())
        n_pred += int(pairs.sum())
        bar.update(1)
        for s, l, sae in jobs:
            for kind, fn in (("spliced", lambda v, sae=sae: _reconstruct(sae, v)), ("zero", torch.zeros_like)):
                edit = _splice_edit({(s, l): fn}, where)
                # the losses are taken inside the trace: only [B, T-1] numbers leave it, not the logits
                ce, kl = tracing.run(model, inputs, edit=edit, sites=(s,), all_positions=True,
                                     metric=lambda lg: _next_token_losses(lg, ids, clean_logp)[:2])
                sums[(s, l)][f"ce_{kind}"] += float((ce * pairs).sum())
                sums[(s, l)][f"kl_{kind}"] += float((kl * pairs).sum())
                bar.update(1)
    bar.close()
    if n_pred == 0:
        raise ValueError("no next-token predictions: every text needs at least two real tokens")
    ce_clean = ce_clean_sum / n_pred
    rows = []
    for s, l, _ in jobs:
        m = {k: v / n_pred for k, v in sums[(s, l)].items()}
        gap = m["ce_zero"] - ce_clean
        rows.append({"site": s, "layer": l, "n_predictions": n_pred, "ce_clean": ce_clean,
                     "ce_spliced": m["ce_spliced"], "ce_zero": m["ce_zero"],
                     "ce_recovered": (m["ce_zero"] - m["ce_spliced"]) / gap if gap != 0 else float("nan"),
                     "ce_delta": m["ce_spliced"] - ce_clean, "kl_spliced": m["kl_spliced"], "kl_zero": m["kl_zero"]})
    out = pd.DataFrame(rows, columns=LOSS_COLUMNS)
    out.attrs.update(exclude_positions=tuple(int(p) for p in exclude_positions), splice_excluded=splice_excluded,
                     baseline="zero")
    return out


def sae_quality(model, saes, tokens, *, exclude_positions: Sequence[int] = (0,), splice_excluded: bool = True,
                batch_size: int = 8, progress: bool = True) -> pd.DataFrame:
    """:func:`reconstruction_stats` and :func:`splice_losses` of every SAE in ``saes`` on the same ``tokens``, one
    row per (site, layer) with :data:`QUALITY_COLUMNS`. ``attrs``: ``exclude_positions``, ``splice_excluded``,
    ``baseline`` ("zero")."""
    stats = reconstruction_stats(model, saes, tokens, exclude_positions=exclude_positions, batch_size=batch_size,
                                 progress=progress)
    losses = splice_losses(model, saes, tokens, exclude_positions=exclude_positions,
                           splice_excluded=splice_excluded, batch_size=batch_size, progress=progress)
    out = stats.merge(losses, on=["site", "layer"], how="left")[QUALITY_COLUMNS]
    out.attrs.update(losses.attrs)
    return out


# ------------------------------------------------------------------------------------------------------ SVA


@torch.no_grad()
def spliced_logit_diff(model, data, saes, *, batch_size: int = 32, progress: bool = False) -> pd.DataFrame:
    """The task's logit difference (clean answer minus counterfactual answer, last position) clean and with
    **every** layer's SAE of a site spliced in at once (the SAE site with every error node removed), one row per
    site of ``saes``: ``logit_diff_clean`` and ``logit_diff_spliced`` (means over the examples of ``data``),
    ``logit_diff_kept`` (their ratio) and ``sign_kept`` (fraction of examples whose difference keeps its sign).
    ``saes``: {site: [SAE per layer]}; every layer must have one."""
    from .inputs import prepare
    from .interventions import run_with_edits

    saes = _as_saes(saes)
    _check_layers(model, saes)
    prepared = prepare(model, data, batch_size=batch_size)
    clean = run_with_edits(model, prepared, edits=lambda s, l, v, rows: None, metric="logit_diff", sites=(),
                           batch_size=batch_size, keep_logits=False).metric
    rows = []
    for s, layers in saes.items():
        missing = sorted(set(range(model.n_layers)) - set(layers))
        if missing:
            raise ValueError(f"spliced_logit_diff needs an SAE at every layer; {s} lacks layers {missing}")
        edit = _splice_edit({(s, l): (lambda v, sae=sae: _reconstruct(sae, v)) for l, sae in layers.items()}, None)
        spliced = run_with_edits(model, prepared, edits=lambda site, l, v, rows, edit=edit: edit(site, l, v),
                                 metric="logit_diff", sites=(s,), batch_size=batch_size, keep_logits=False,
                                 progress=progress).metric
        mean_clean, mean_spliced = float(clean.mean()), float(spliced.mean())
        rows.append({"site": s, "n_layers": len(layers), "n_examples": len(prepared), "logit_diff_clean": mean_clean,
                     "logit_diff_spliced": mean_spliced, "logit_diff_kept": mean_spliced / mean_clean,
                     "sign_kept": float(((clean > 0) == (spliced > 0)).float().mean())})
    return pd.DataFrame(rows, columns=["site", "n_layers", "n_examples", "logit_diff_clean", "logit_diff_spliced",
                                       "logit_diff_kept", "sign_kept"])
