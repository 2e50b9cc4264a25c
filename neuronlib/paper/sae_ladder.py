"""A quality ladder of SAEs: the neuron-vs-SAE comparison repeated at several SAE qualities, and its verdict.

An SAE basis can only say "neurons are sparser than SAEs" if the SAEs are good: a poor dictionary needs many latents
(and error nodes) for any circuit. So the comparison is run on a **ladder**: SAEs of one architecture (TopK, the
same width and k) trained from the offline corpus alone (no SVA prompt in their data) at budgets spanning at least
10x in unique training tokens, each rung measured the field's way (:mod:`neuronlib.sae_eval`: explained variance on
held-out text without position 0, CE loss recovered and KL with one SAE spliced in, dead latents, L0) and given the
SVA benchmark (:mod:`neuronlib.paper.sva`) on its own SAE basis. The circuit size k at faithfulness 0.8 / 0.9 is
then read against quality, with the neuron (``mlp_acts``) and MLP-output sizes of the same benchmark as reference
lines.

**Rungs** (:class:`Rung`, :data:`LADDER`). A rung is a budget of unique corpus tokens, the sites trained at that
budget (every layer), width and k. Every rung trains through
:func:`neuronlib.paper.sae_baselines.train_sae_baselines` in a root of its own (:func:`rung_root`, under the SAE
cache's ``ladder/`` folder), so rungs never overwrite each other or the notebook's baseline SAEs; a rung's
activations are computed once (float16 memmaps on disk) and shared by every SAE of the rung, and a rung whose SAEs
are saved is re-used, not trained. A rung with ``layers`` set is an **extra (width, k) setting** at those layers:
it trains from the activations of the full rung with the same tokens (kept on disk for it, then deleted).

Default ladder (SmolLM2-135M, 30 layers): 30,000 / 100,000 / 300,000 corpus tokens (10x), ``mlp_out`` at every layer
on every rung, ``resid`` on the first rung only, 8x width and k = 32 (the baselines' architecture); at layer 15 of the
top rung also 16x / k 32 and 8x / k 64. Epochs 2 / 1 / 1 (a rung's budget counts unique tokens; the first sees its
tokens twice). Cost on this 2-core machine, at the rate of the committed baseline run (60 SAEs of 361 steps of 256
rows in 27.2 min with two SAEs training at once: 13.3 steps/s together; a 16x SAE's step costs twice an 8x one's):
training about 18 / 15 / 44 min for the three rungs (the first with ``resid``, 9 min of it) and 4 min for the two
extra settings, about 81 min in all; forward passes about 35 min more at 210 tokens/s (2.5 / 8 / 24 min); float16
activations on disk 2.2 / 3.5 / 10.4 GB, each deleted when its rung is done; peak memory about 1.5 GB (two SAEs' rows
in memory, 0.35 GB each at the top rung, and the model). The training budget is 90 min, so ``resid`` stops at the
first rung (at 100,000 tokens it would add 15 min) and the larger rungs see their tokens once (epochs 3 / 2 / 1 would
take 104 min).

**Verdict** (:func:`ladder_verdict`; the rule is fixed before the run): "neurons sparser than SAEs" only if, at the
given faithfulness and method, the SAE's circuit size lies above the neuron line at **every** rung (its bootstrap
interval wholly above the neuron interval: decided from intervals, never from point estimates) and the top rung's
SAEs recover at least 90 % of the cross-entropy loss (held-out text, each layer's SAE spliced in alone; the minimum
over layers by default). Otherwise: "not decided at the SAE quality reachable here", with the trend of the SAE size
as quality rises.

Also here: the per-rung quality gate (:func:`quality_gate`: held-out EV without position 0) and notebook 01's
basis-comparison sentence (:func:`basis_verdict`).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .. import cache, sae_eval
from . import sae_baselines

__all__ = [
    "Rung", "LADDER_BASE", "LADDER", "LADDER_LAYER", "SMOKE_LADDER", "SMOKE_BASE", "make_ladder", "check_ladder",
    "rung_root", "rung_data_hash", "train_ladder", "load_rung", "heldout_windows", "measure_saes", "QUALITY_COLUMNS",
    "ladder_quality", "QUALITY_THRESHOLDS", "quality_gate", "logit_diff_kept", "HEADLINE_FILTER", "ladder_table",
    "VERDICT_SPARSER", "VERDICT_UNDECIDED", "MIN_CE_RECOVERED", "LadderVerdict", "ladder_verdict", "ladder_verdicts",
    "basis_verdict",
]

_SITES = ("mlp_out", "resid", "attn_out")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

# The baselines' training recipe (sae_baselines.DEFAULT_CONFIG: lr, batches, windows, warm-up/decay, outlier cap)
# with the rung's own tokens, width, k and epochs.
LADDER_BASE = sae_baselines.SAETrainConfig(n_tokens=30_000, epochs=1, outlier_cap=3.0)


@dataclass(frozen=True)
class Rung:
    """One rung: ``n_tokens`` unique corpus tokens per SAE (no SVA prompt), ``sites`` trained at every layer (or
    only at ``layers``: an extra width/k setting, trained from the activations of the full rung with the same
    tokens), ``expansion`` x d_model latents, top-``k``, ``epochs`` passes over the tokens. ``name`` names the
    rung's folder and its rows in every table."""

    name: str
    n_tokens: int
    sites: tuple[str, ...] = ("mlp_out",)
    expansion: int = 8
    k: int = 32
    epochs: int = 1
    layers: tuple[int, ...] | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"rung name {self.name!r}: use letters, digits, '_', '-' or '.' (it names a folder)")
        object.__setattr__(self, "sites", tuple(self.sites))
        bad = [s for s in self.sites if s not in _SITES]
        if bad or not self.sites:
            raise ValueError(f"rung {self.name}: sites must be a non-empty subset of {_SITES}, got {self.sites}")
        for field_name in ("n_tokens", "expansion", "k", "epochs"):
            value = getattr(self, field_name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"rung {self.name}: {field_name} must be a positive integer, got {value!r}")
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
            if not self.layers or min(self.layers) < 0:
                raise ValueError(f"rung {self.name}: layers must be non-negative layer indices, got {self.layers}")

    @property
    def partial(self) -> bool:
        """Trained at some layers only (an extra width/k setting)."""
        return self.layers is not None

    def config(self, base: sae_baselines.SAETrainConfig = LADDER_BASE) -> sae_baselines.SAETrainConfig:
        """The :class:`~neuronlib.paper.sae_baselines.SAETrainConfig` of this rung: ``base`` with the rung's
        tokens, width, k and epochs."""
        return dataclasses.replace(base, n_tokens=int(self.n_tokens), expansion=int(self.expansion), k=int(self.k),
                                   epochs=int(self.epochs))

    def layers_of(self, model) -> tuple[int, ...]:
        layers = tuple(range(model.n_layers)) if self.layers is None else self.layers
        if max(layers) >= model.n_layers:
            raise ValueError(f"rung {self.name}: layer {max(layers)} but the model has layers 0..{model.n_layers - 1}")
        return layers


LADDER_LAYER = 15  # the middle layer of SmolLM2-135M (30 layers) for the extra width/k settings
LADDER = (
    Rung("30k", 30_000, ("mlp_out", "resid"), epochs=2),
    Rung("100k", 100_000, ("mlp_out",), epochs=1),
    Rung("300k", 300_000, ("mlp_out",), epochs=1),
    Rung("300k-x16-k32", 300_000, ("mlp_out",), expansion=16, k=32, epochs=1, layers=(LADDER_LAYER,)),
    Rung("300k-x8-k64", 300_000, ("mlp_out",), expansion=8, k=64, epochs=1, layers=(LADDER_LAYER,)),
)
# The notebook's SMOKE ladder: the same code path on a few thousand tokens and tiny dictionaries (10x span kept).
SMOKE_LADDER = (
    Rung("smoke-1", 256, ("mlp_out", "resid"), expansion=1, k=8),
    Rung("smoke-2", 768, ("mlp_out",), expansion=1, k=8),
    Rung("smoke-3", 2_560, ("mlp_out",), expansion=1, k=8),
    Rung("smoke-3-x2-k4", 2_560, ("mlp_out",), expansion=2, k=4, layers=(1,)),
)
SMOKE_BASE = dataclasses.replace(LADDER_BASE, n_eval_tokens=256, dead_after_tokens=512)


def make_ladder(rungs=None, *, layer: int = LADDER_LAYER) -> tuple[Rung, ...]:
    """A checked ladder from ``rungs`` (None: :data:`LADDER`; else Rungs or dicts of Rung's fields, as a notebook
    parameter gives them), the extra settings moved to ``layer``."""
    rungs = LADDER if rungs is None else rungs
    out = []
    for r in rungs:
        if isinstance(r, Mapping):
            r = Rung(**{k: tuple(v) if isinstance(v, list) else v for k, v in r.items()})
        elif not isinstance(r, Rung):
            raise ValueError(f"a rung is a Rung or a dict of its fields, got {r!r}")
        out.append(dataclasses.replace(r, layers=(int(layer),)) if r.partial else r)
    return check_ladder(out)


def check_ladder(ladder: Sequence[Rung], *, min_span: float = 10.0) -> tuple[Rung, ...]:
    """``ladder`` as a tuple after checking it: Rungs with distinct names; at least 3 full rungs (every layer)
    of one architecture (expansion, k) whose unique token counts are distinct and span at least ``min_span`` x;
    every extra setting (``layers`` set) uses the tokens of a full rung with its sites. ValueError otherwise."""
    ladder = tuple(ladder)
    if not all(isinstance(r, Rung) for r in ladder):
        raise ValueError("a ladder is a sequence of Rung")
    names = [r.name for r in ladder]
    if len(set(names)) != len(names):
        raise ValueError(f"rung names must be distinct, got {names}")
    full = [r for r in ladder if not r.partial]
    if len(full) < 3:
        raise ValueError(f"a ladder needs at least 3 full rungs (every layer), got {len(full)}")
    arch = {(r.expansion, r.k) for r in full}
    if len(arch) != 1:
        raise ValueError(f"the full rungs must share one architecture (expansion, k), got {sorted(arch)}")
    tokens = [r.n_tokens for r in full]
    if len(set(tokens)) != len(tokens):
        raise ValueError(f"the full rungs need distinct token budgets, got {tokens}")
    if max(tokens) < min_span * min(tokens):
        raise ValueError(f"the full rungs span {max(tokens) / min(tokens):.1f}x in unique tokens "
                         f"({min(tokens):,} to {max(tokens):,}); at least {min_span:g}x needed")
    for r in ladder:
        if r.partial and not any(f.n_tokens == r.n_tokens and set(r.sites) <= set(f.sites) for f in full):
            raise ValueError(f"extra setting {r.name} needs a full rung with {r.n_tokens:,} tokens and sites "
                             f"{r.sites} to train from")
    return ladder


def _full_rungs(ladder) -> list[Rung]:
    return sorted((r for r in ladder if not r.partial), key=lambda r: r.n_tokens)


def rung_root(rung: Rung, root=None) -> Path:
    """Where a rung's SAEs live: ``{sae root}/ladder/{rung name}`` (``root`` as in
    :func:`neuronlib.paper.sae_baselines.sae_root`); its SAEs are under ``{model}/{site}/layer_{i}`` there."""
    return sae_baselines.sae_root(root) / "ladder" / rung.name


# -------------------------------------------------------------------------------------------------------- training


def _blocks(model, config, texts) -> list[torch.Tensor]:
    """The token blocks :func:`~neuronlib.paper.sae_baselines.train_sae_baselines` builds for ``config`` (training
    windows, then its held-out evaluation windows; no prompts)."""
    windows = sae_baselines.corpus_token_windows(model.tokenizer, config.n_train_windows + config.n_eval_windows,
                                                 config.seq_len, texts=texts, seed=config.corpus_seed,
                                                 sources=config.sources)
    n = config.n_train_windows
    return [windows[:n], windows[n:]]


def rung_data_hash(model, rung: Rung, *, base=LADDER_BASE, texts=None) -> str:
    """The hash of a rung's token data, as :func:`~neuronlib.paper.sae_baselines.train_sae_baselines` computes it
    (it names the rung's activation folder and enters every SAE's train key)."""
    return cache.data_hash([b.tolist() for b in _blocks(model, rung.config(base), texts)])


def _activation_dir(model, rung: Rung, data_hash: str, root) -> Path:
    return rung_root(rung, root) / model.name / f"_activations_{data_hash}"


def _train_partial(model, rung: Rung, source: Rung, *, base, root, texts, workers, progress, log) -> dict:
    """Train an extra setting's SAEs from the activations of its full rung ``source`` (collected again if they are
    gone); every SAE is saved under :func:`rung_root` with a train key of its own and re-used when present."""
    t0 = time.perf_counter()
    config = rung.config(base)
    blocks = _blocks(model, config, texts)
    data_hash = cache.data_hash([b.tolist() for b in blocks])
    jobs, reused = [], 0
    for site in rung.sites:
        for layer in rung.layers_of(model):
            key = sae_baselines._train_key(model, site, layer, config, data_hash)
            path = sae_baselines.sae_path(model, site, layer, rung_root(rung, root))
            if sae_baselines._saved_matches(path, key):
                reused += 1
            else:
                jobs.append({"site": site, "layer": layer, "path": str(path), "train_key": key})
    collect_seconds = train_seconds = 0.0
    if jobs:
        act_dir = _activation_dir(model, source, data_hash, root)
        n_train = config.n_train_windows * config.rows_per_window
        n_eval = config.n_eval_windows * config.rows_per_window
        files = {(j["site"], j["layer"]): sae_baselines._act_file(act_dir, j["site"], j["layer"]) for j in jobs}
        expected = (n_train + n_eval) * model.d_model * 2
        if not all(f.exists() and f.stat().st_size == expected for f in files.values()):
            log(f"ladder {rung.name}: activations of {source.name} not on disk; collecting them again")
            collect_seconds = sae_baselines._collect(model, blocks, rung.sites, source.config(base), act_dir, progress)
        for j in jobs:
            j.update(file=str(files[(j["site"], j["layer"])]), d_in=model.d_model, n_train_rows=n_train,
                     n_eval_rows=n_eval, config=config.as_dict(), model=model.name,
                     hook_name=sae_baselines._hook_name(model, j["site"], j["layer"]), data_hash=data_hash,
                     corpus={"source": "offline corpus" if texts is None else "texts given by the caller",
                             "n_windows": config.n_train_windows + config.n_eval_windows, "n_prompts": 0,
                             "n_prompt_tokens": 0, "ladder_rung": rung.name, "activations_of": source.name})
        t1 = time.perf_counter()
        threads = torch.get_num_threads()
        try:
            if workers > 1 and len(jobs) > 1:
                torch.set_num_threads(1)
                with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
                    list(pool.map(sae_baselines._train_one, jobs))
            else:
                for j in jobs:
                    sae_baselines._train_one(j)
        finally:
            torch.set_num_threads(threads)
        train_seconds = time.perf_counter() - t1
    return {"n_trained": len(jobs), "n_reused": reused, "collect_seconds": collect_seconds,
            "train_seconds": train_seconds, "total_seconds": time.perf_counter() - t0}


def train_ladder(model, ladder: Sequence[Rung] = LADDER, *, base: sae_baselines.SAETrainConfig = LADDER_BASE,
                 root=None, texts=None, workers: int = 2, progress: bool = True, log=None) -> pd.DataFrame:
    """Train (or re-use) every rung of ``ladder``, smallest first, from the offline corpus (``texts``: another text
    source, for tests); returns one row per rung: what it trained, what it re-used and what it cost
    (``collect_seconds`` forward passes, ``train_seconds``, ``total_seconds`` of this call; the per-SAE training
    seconds of the run that trained them are in each SAE's ``cfg.json`` and :func:`load_rung`'s table).

    A full rung is one :func:`~neuronlib.paper.sae_baselines.train_sae_baselines` call in :func:`rung_root`; its
    activations are kept on disk only while an extra setting of the same tokens still has to train from them."""
    import logging

    log = log or logging.getLogger(__name__).info
    ladder = check_ladder(ladder)
    rows = []
    pending = {r.name for r in ladder if r.partial}
    for rung in _full_rungs(ladder) + [r for r in ladder if r.partial]:
        t0 = time.perf_counter()
        if not rung.partial:
            extras = [p for p in ladder if p.partial and p.n_tokens == rung.n_tokens and p.name in pending
                      and set(p.sites) <= set(rung.sites)]
            keep = bool(extras) and not all(_partial_saved(model, p, base=base, root=root, texts=texts)
                                            for p in extras)
            table = sae_baselines.train_sae_baselines(model, rung.sites, rung.config(base), root=rung_root(rung, root),
                                                      texts=texts, prompts=None, workers=workers, progress=progress,
                                                      keep_activations=keep, log=log)
            a = table.attrs
            rows.append({"rung": rung.name, "n_tokens": rung.n_tokens, "sites": ",".join(rung.sites),
                         "layers": "all", "expansion": rung.expansion, "k": rung.k, "epochs": rung.epochs,
                         "n_trained": a["n_trained"], "n_reused": a["n_reused"],
                         "collect_seconds": a["collect_seconds"], "train_seconds": a["train_seconds"],
                         "total_seconds": time.perf_counter() - t0,
                         "sae_train_seconds": float(table.seconds.fillna(0).sum())})
            continue
        source = next(f for f in _full_rungs(ladder) if f.n_tokens == rung.n_tokens and set(rung.sites) <= set(f.sites))
        done = _train_partial(model, rung, source, base=base, root=root, texts=texts, workers=workers,
                              progress=progress, log=log)
        pending.discard(rung.name)
        saved = load_rung(model, rung, root=root)
        rows.append({"rung": rung.name, "n_tokens": rung.n_tokens, "sites": ",".join(rung.sites),
                     "layers": ",".join(map(str, rung.layers)), "expansion": rung.expansion, "k": rung.k,
                     "epochs": rung.epochs, **{k: done[k] for k in ("n_trained", "n_reused", "collect_seconds",
                                                                     "train_seconds", "total_seconds")},
                     "sae_train_seconds": float(saved.seconds.fillna(0).sum())})
        if not any(p.n_tokens == rung.n_tokens for p in ladder if p.name in pending):
            shutil.rmtree(_activation_dir(model, source, rung_data_hash(model, source, base=base, texts=texts), root),
                          ignore_errors=True)
    return pd.DataFrame(rows)


def _partial_saved(model, rung: Rung, *, base, root, texts) -> bool:
    config = rung.config(base)
    data_hash = rung_data_hash(model, rung, base=base, texts=texts)
    return all(sae_baselines._saved_matches(sae_baselines.sae_path(model, s, layer, rung_root(rung, root)),
                                            sae_baselines._train_key(model, s, layer, config, data_hash))
               for s in rung.sites for layer in rung.layers_of(model))


def load_rung(model, rung: Rung, *, root=None, saes: bool = False):
    """A rung's saved SAEs: their table (:func:`~neuronlib.paper.sae_baselines.sae_table`, one row per site and
    layer, with a ``rung`` column) or, with ``saes=True``, {site: {layer: TopKSAE}}."""
    from ..saes import load_sae

    where = rung_root(rung, root)
    if saes:
        out = {}
        for s in rung.sites:
            out[s] = {}
            for layer in rung.layers_of(model):
                path = sae_baselines.sae_path(model, s, layer, where)
                if not (path / "cfg.json").exists():
                    raise FileNotFoundError(f"rung {rung.name}: no {s} SAE at layer {layer} ({path}); train_ladder first")
                out[s][layer] = load_sae(path)
        return out
    table = sae_baselines.sae_table(model, rung.sites, root=where)
    table = table[table.layer.isin(rung.layers_of(model))].reset_index(drop=True)
    return table.assign(rung=rung.name)


# -------------------------------------------------------------------------------------------------------- quality


def heldout_windows(model, ladder: Sequence[Rung] = LADDER, n_tokens: int = 100_000, *, seq_len: int = 128,
                    base: sae_baselines.SAETrainConfig = LADDER_BASE) -> torch.Tensor:
    """``[ceil(n_tokens / seq_len), seq_len]`` token ids of corpus text no SAE of ``ladder`` trained on: the
    rungs read prefixes of the same shuffled corpus, so the text after the largest rung's is held out from all of
    them (and from the notebook's baselines, which read less)."""
    ladder = check_ladder(ladder)
    top = max(ladder, key=lambda r: r.n_tokens)
    return sae_baselines.heldout_token_windows(model.tokenizer, n_tokens, seq_len=seq_len, config=top.config(base))


QUALITY_COLUMNS = ["rung", "n_unique_tokens", "expansion", "text", *sae_eval.QUALITY_COLUMNS]


def _sae_id(sae) -> str:
    """An SAE's train key (a trained baseline or rung), else a digest of its weights."""
    import hashlib

    key = (getattr(sae, "cfg", None) or {}).get("train_key")
    if key:
        return key
    h = hashlib.sha256()
    for t in (sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec):
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return f"weights:{h.hexdigest()[:16]}:k{sae.k}"


def measure_saes(model, saes, tokens: torch.Tensor, *, prompts=None, splice_tokens: int = 20_000,
                 splice_layers: Sequence[int] | None = None, exclude_positions: Sequence[int] = (0,),
                 batch_size: int = 8, prompt_batch_size: int = 64, progress: bool = False, cache_dir=None,
                 refresh: bool = False) -> pd.DataFrame:
    """SAEs ({site: [SAE per layer] or {layer: SAE}}) measured with :mod:`neuronlib.sae_eval`, one row per (text,
    site, layer) with ``text`` and :data:`neuronlib.sae_eval.QUALITY_COLUMNS`.

    ``tokens``: held-out windows (:func:`heldout_windows`); explained variance (``ev``: without
    ``exclude_positions``, ``ev_all``: every position), L0 and the dead fraction come from all of them (the dead
    fraction wants >= 100,000 tokens), the splice losses (CE recovered, KL; each SAE spliced in alone) from the
    first windows holding ``splice_tokens`` tokens (one clean forward per batch, then two per SAE: the cost), at
    every layer or only at ``splice_layers`` (the other layers' loss columns are NaN); ``text == "heldout"``.
    ``prompts``: a list of strings (e.g. the SVA test prompts) measured the same way, all of them, as ``text ==
    "sva_test"``, in batches of ``prompt_batch_size`` (short prompts: a splice forward costs about the same for 8 or
    64 of them, so a bigger batch saves most of the time; ``batch_size`` bounds the held-out batches' memory, see
    :mod:`neuronlib.sae_eval`). Cached in the results cache (``cache_dir``; ``refresh=True`` recomputes) under the SAEs' train
    keys, the tokens, the prompts and the options: a rerun re-uses each rung's measures."""
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
        raise ValueError("tokens must be a [N, T] tensor of held-out token ids (heldout_windows)")
    if splice_tokens < tokens.shape[1]:
        raise ValueError(f"splice_tokens {splice_tokens} is under one window of {tokens.shape[1]} tokens")
    splice = tokens[:math.ceil(splice_tokens / tokens.shape[1])]
    per_layer = {s: dict(v) if isinstance(v, Mapping) else dict(enumerate(v)) for s, v in saes.items()}
    key = cache.cache_key(kind="sae_quality", code=("neuronlib.sae_eval", __name__), model=model.name,
                          saes={s: {str(k): _sae_id(v) for k, v in per.items()} for s, per in per_layer.items()},
                          tokens=cache.data_hash(tokens.tolist()), prompts=None if prompts is None else list(prompts),
                          splice_tokens=int(splice.numel()),
                          splice_layers=None if splice_layers is None else sorted(int(x) for x in splice_layers),
                          exclude_positions=[int(p) for p in exclude_positions], batch_size=int(batch_size),
                          prompt_batch_size=int(prompt_batch_size))
    return cache.cached("sae_quality", key, lambda: _measure(model, per_layer, tokens, splice, prompts, splice_layers,
                                                             exclude_positions, batch_size, prompt_batch_size,
                                                             progress),
                        refresh=refresh, directory=cache_dir)


def _measure(model, saes, tokens, splice, prompts, splice_layers, exclude_positions, batch_size, prompt_batch_size,
             progress):
    kw = dict(exclude_positions=exclude_positions, batch_size=batch_size, progress=progress)
    spliced = _only_layers(saes, splice_layers)
    frames = [_merge(sae_eval.reconstruction_stats(model, saes, tokens, **kw),
                     sae_eval.splice_losses(model, spliced, splice, **kw) if spliced else None).assign(text="heldout")]
    if prompts is not None:
        prompts = list(prompts)
        kw["batch_size"] = prompt_batch_size
        frames.append(_merge(sae_eval.reconstruction_stats(model, saes, prompts, **kw),
                             sae_eval.splice_losses(model, spliced, prompts, **kw) if spliced else None)
                      .assign(text="sva_test"))
    return pd.concat(frames, ignore_index=True)[["text", *sae_eval.QUALITY_COLUMNS]]


def ladder_quality(model, ladder: Sequence[Rung], tokens: torch.Tensor, *, root=None, **options) -> pd.DataFrame:
    """:func:`measure_saes` of every rung's SAEs, one row per (rung, text, site, layer) with
    :data:`QUALITY_COLUMNS` (``options``: :func:`measure_saes`'s)."""
    ladder = check_ladder(ladder)
    frames = []
    for rung in ladder:
        frame = measure_saes(model, load_rung(model, rung, root=root, saes=True), tokens, **options)
        frames.append(frame.assign(rung=rung.name, n_unique_tokens=rung.n_tokens, expansion=rung.expansion)
                      [QUALITY_COLUMNS])
    return pd.concat(frames, ignore_index=True)


def _only_layers(saes: dict, layers) -> dict:
    if layers is None:
        return saes
    keep = {int(x) for x in layers}
    out = {s: {layer: sae for layer, sae in per.items() if layer in keep} for s, per in saes.items()}
    return {s: per for s, per in out.items() if per}


def _merge(stats: pd.DataFrame, losses: pd.DataFrame | None) -> pd.DataFrame:
    if losses is None:
        return stats.reindex(columns=sae_eval.QUALITY_COLUMNS)
    return stats.merge(losses, on=["site", "layer"], how="left")[sae_eval.QUALITY_COLUMNS]


QUALITY_THRESHOLDS = {"mlp_out": 0.8, "resid": 0.9, "attn_out": 0.8}  # minimum held-out EV without position 0


def quality_gate(quality: pd.DataFrame, *, thresholds: Mapping[str, float] | None = None,
                 text: str = "heldout") -> pd.DataFrame:
    """Per (rung, site), from :func:`ladder_quality`'s rows of ``text``: the held-out explained variance
    **without position 0** (``ev``) min and median over layers, the threshold (:data:`QUALITY_THRESHOLDS` per
    site, overridable), how many layers miss it, CE loss recovered min / median, KL median, mean L0, largest dead
    fraction, and ``passes`` (every layer reaches the threshold)."""
    thresholds = {**QUALITY_THRESHOLDS, **(thresholds or {})}
    need = {"rung", "text", "site", "layer", "ev", "ce_recovered", "kl_spliced", "l0", "dead_fraction"}
    missing = need - set(quality.columns)
    if missing:
        raise ValueError(f"quality table lacks columns {sorted(missing)}; use ladder_quality's table")
    rows = quality[quality.text == text]
    if rows.empty:
        raise ValueError(f"no rows with text == {text!r}")
    unknown = sorted(set(rows.site) - set(thresholds))
    if unknown:
        raise ValueError(f"no quality threshold for sites {unknown}")
    out = []
    for (rung, site), g in rows.groupby(["rung", "site"], sort=False):
        thr = float(thresholds[site])
        failing = int((~(g.ev >= thr)).sum())
        out.append({"rung": rung, "site": site, "layers": len(g), "ev_min": g.ev.min(), "ev_median": g.ev.median(),
                    "threshold": thr, "layers_failing": failing, "ce_recovered_min": g.ce_recovered.min(),
                    "ce_recovered_median": g.ce_recovered.median(), "kl_median": g.kl_spliced.median(),
                    "l0_mean": g.l0.mean(), "dead_fraction_max": g.dead_fraction.max(), "passes": failing == 0})
    return pd.DataFrame(out)


def logit_diff_kept(model, ladder: Sequence[Rung], data, *, root=None, batch_size: int = 32) -> pd.DataFrame:
    """The SVA logit difference kept with every layer's SAE of a site spliced in at once
    (:func:`neuronlib.sae_eval.spliced_logit_diff`), one row per (rung, template, site) of the full rungs.
    ``data``: {template: records} (e.g. each template's test pairs)."""
    frames = []
    for rung in _full_rungs(check_ladder(ladder)):
        saes = load_rung(model, rung, root=root, saes=True)
        for template, records in data.items():
            frames.append(sae_eval.spliced_logit_diff(model, records, saes, batch_size=batch_size)
                          .assign(rung=rung.name, n_unique_tokens=rung.n_tokens, template=template))
    out = pd.concat(frames, ignore_index=True)
    return out[["rung", "n_unique_tokens", "template", *[c for c in out.columns
                                                           if c not in ("rung", "n_unique_tokens", "template")]]]


# -------------------------------------------------------------------------------------------------------- the ladder


# the headline rows the ladder reads: the paired benchmark, logit-difference metric, mean ablation, pooled templates
HEADLINE_FILTER = {"setting": "paired", "eval_metric": "logit_diff", "ablation": "mean"}
_THRESHOLDS = (0.8, 0.9)


def _pooled(headline: pd.DataFrame) -> pd.DataFrame:
    from .sva import POOLED

    rows = headline[headline.template == POOLED]
    for col, value in HEADLINE_FILTER.items():
        if col in rows.columns:
            rows = rows[rows[col] == value]
    return rows


def _size_columns(thresholds) -> list[str]:
    return [f"k@F>={t}{end}" for t in thresholds for end in ("", "_lo", "_hi")]


def ladder_table(quality: pd.DataFrame, headlines: Mapping[str, pd.DataFrame], reference: pd.DataFrame, *,
                 thresholds=_THRESHOLDS) -> pd.DataFrame:
    """One row per (rung, site, method) with the model's name: the rung's quality on held-out text (median and min over layers of EV
    without position 0 and of CE loss recovered, median KL, L0, largest dead fraction) beside the SVA circuit size
    at each faithfulness threshold with its bootstrap interval on the rung's SAE basis (``sae_{site}``, pooled over
    templates), the latents among those nodes, and the reference sizes of the same benchmark on neurons
    (``neurons_k@F>=t``, ``_lo``, ``_hi``: ``mlp_acts``) and MLP outputs (``mlp_out_k@F>=t``...).

    ``quality``: :func:`ladder_quality`'s table; ``headlines``: {rung name: that rung's
    :func:`neuronlib.paper.sva.headline_table` (with :func:`~neuronlib.paper.sva.add_latent_counts`)};
    ``reference``: the headline table holding ``mlp_acts`` and ``mlp_out``. Only the paired, logit-difference,
    mean-ablation rows are read (:data:`HEADLINE_FILTER`)."""
    held = quality[quality.text == "heldout"]
    if held.empty:
        raise ValueError("quality has no held-out rows (text == 'heldout')")
    missing = sorted(set(headlines) - set(held.rung))
    if missing:
        raise ValueError(f"rungs {missing} have a headline but no quality rows")
    sizes = _size_columns(thresholds)
    ref = _pooled(reference).set_index(["method", "basis"])
    lacking = [c for c in sizes if c not in ref.columns]
    if lacking:
        raise ValueError(f"reference headline lacks {lacking}")
    rows = []
    for rung, headline in headlines.items():
        q = held[held.rung == rung]
        pooled = _pooled(headline)
        for site, g in q.groupby("site", sort=False):
            summary = {"rung": rung, "n_unique_tokens": int(g.n_unique_tokens.iloc[0]),
                       "expansion": int(g.expansion.iloc[0]), "k": int(g.k.iloc[0]), "site": site,
                       "layers": int(len(g)), "ev": g.ev.median(), "ev_min": g.ev.min(),
                       "ev_all": g.ev_all.median(), "ce_recovered": g.ce_recovered.median(),
                       "ce_recovered_min": g.ce_recovered.min(), "ce_delta": g.ce_delta.median(),
                       "kl": g.kl_spliced.median(), "l0": g.l0.mean(), "dead_fraction_max": g.dead_fraction.max()}
            for method, h in pooled[pooled.basis == f"sae_{site}"].groupby("method", sort=False):
                row = {"model": h["model"].iloc[0] if "model" in h.columns else "", **summary, "method": method,
                       "basis": f"sae_{site}"}
                h = h.iloc[0]
                for c in sizes:
                    row[c] = float(h[c])
                for t in thresholds:
                    row[f"latents@F>={t}"] = float(h.get(f"latents@F>={t}", np.nan))
                for name, basis in (("neurons", "mlp_acts"), ("mlp_out", "mlp_out")):
                    for c in sizes:
                        row[f"{name}_{c}"] = float(ref[c].get((method, basis), np.nan))
                rows.append(row)
    if not rows:
        raise ValueError("no SAE headline rows matched the rungs' sites (basis sae_<site>, pooled, paired)")
    return pd.DataFrame(rows).sort_values(["method", "site", "n_unique_tokens"], kind="stable").reset_index(drop=True)


# -------------------------------------------------------------------------------------------------------- verdict

VERDICT_SPARSER = "neurons sparser than SAEs"
VERDICT_UNDECIDED = "not decided at the SAE quality reachable here"
MIN_CE_RECOVERED = 0.9


@dataclass(frozen=True)
class LadderVerdict:
    """:func:`ladder_verdict`'s answer: ``verdict`` (:data:`VERDICT_SPARSER` or :data:`VERDICT_UNDECIDED`), why
    (``reason``), the SAE size's ``trend`` as quality rises, and ``numbers`` (one row per rung, by quality: the
    quality, the SAE size with its interval, the neuron size with its interval, ``above``: the SAE interval wholly
    above the neuron interval)."""

    verdict: str
    method: str
    site: str
    threshold: float
    quality: str
    top_ce_recovered: float
    quality_ok: bool
    above_everywhere: bool
    trend: str
    reason: str
    numbers: pd.DataFrame

    @property
    def decided(self) -> bool:
        return self.verdict == VERDICT_SPARSER

    def __str__(self) -> str:
        from .style import METHOD_LABELS, fmt_size

        sizes = "; ".join(f"{r.rung} (CE recovered {r.ce_recovered:.3f}): SAE {fmt_size(r.k, r.k_lo, r.k_hi)} vs "
                          f"neurons {fmt_size(r.neurons, r.neurons_lo, r.neurons_hi)}"
                          for r in self.numbers.itertuples())
        return (f"{METHOD_LABELS.get(self.method, self.method)}, sae_{self.site}, faithfulness {self.threshold}: "
                f"**{self.verdict}** ({self.reason}; trend: {self.trend}). {sizes}.")


def _trend(numbers: pd.DataFrame) -> str:
    first, last = numbers.iloc[0], numbers.iloc[-1]
    if not (np.isfinite(first.k) and np.isfinite(last.k)):
        return "the SAE size is not reached at some rung"
    ratio = last.k / first.k
    if last.k_hi < first.k_lo:
        word = "falls"
    elif last.k_lo > first.k_hi:
        word = "rises"
    else:
        word = "stays within its intervals"
    gap = last.k / last.neurons if np.isfinite(last.neurons) and last.neurons > 0 else np.nan
    return (f"from the lowest to the highest-quality rung the SAE size {word} ({ratio:.2f}x"
            + (f"; at the top rung {gap:.2f}x the neuron size)" if np.isfinite(gap) else ")"))


def ladder_verdict(ladder: pd.DataFrame, *, method: str, site: str = "mlp_out", threshold: float = 0.8,
                   min_ce_recovered: float = MIN_CE_RECOVERED, top_quality: str = "ce_recovered_min",
                   order_by: str = "ce_recovered") -> LadderVerdict:
    """The ladder's verdict at one faithfulness ``threshold`` for one ``method`` and SAE ``site``, from
    :func:`ladder_table`'s rows (the module docstring has the rule).

    "neurons sparser than SAEs" only if the SAE size's bootstrap interval lies wholly above the neuron interval
    (``k_lo > neurons_hi``) at every rung, ordered by quality (``order_by``), and the top rung (the one with most
    unique tokens) reaches ``top_quality`` >= ``min_ce_recovered`` (default: its worst layer's CE loss
    recovered). A size not reached on the grid counts as not above. Otherwise "not decided at the SAE quality
    reachable here"."""
    col = f"k@F>={threshold}"
    need = {"rung", "method", "site", "n_unique_tokens", order_by, top_quality, col, f"{col}_lo", f"{col}_hi",
            f"neurons_{col}", f"neurons_{col}_lo", f"neurons_{col}_hi"}
    missing = need - set(ladder.columns)
    if missing:
        raise ValueError(f"ladder table lacks {sorted(missing)}; use ladder_table's table")
    rows = ladder[(ladder.method == method) & (ladder.site == site)]
    if len(rows) < 2:
        raise ValueError(f"the ladder has {len(rows)} rung(s) for method {method!r}, site {site!r}; at least 2 needed")
    numbers = pd.DataFrame({
        "rung": rows.rung.to_numpy(), "n_unique_tokens": rows.n_unique_tokens.to_numpy(),
        "ce_recovered": rows[order_by].to_numpy(float), "k": rows[col].to_numpy(float),
        "k_lo": rows[f"{col}_lo"].to_numpy(float), "k_hi": rows[f"{col}_hi"].to_numpy(float),
        "neurons": rows[f"neurons_{col}"].to_numpy(float), "neurons_lo": rows[f"neurons_{col}_lo"].to_numpy(float),
        "neurons_hi": rows[f"neurons_{col}_hi"].to_numpy(float)})
    numbers = numbers.sort_values(["ce_recovered", "n_unique_tokens"], kind="stable").reset_index(drop=True)
    # NaN anywhere (a size not reached, an unknown interval) compares False: not above
    numbers["above"] = numbers.k_lo > numbers.neurons_hi
    top = rows.loc[rows.n_unique_tokens.idxmax()]
    top_ce = float(top[top_quality])
    quality_ok = bool(top_ce >= min_ce_recovered)
    above = bool(numbers.above.all())
    if above and quality_ok:
        verdict, reason = VERDICT_SPARSER, (f"the SAE interval lies above the neuron interval at all {len(numbers)} "
                                            f"rungs and the top rung recovers {top_ce:.3f} >= {min_ce_recovered} of "
                                            "the CE loss")
    else:
        parts = []
        if not quality_ok:
            parts.append(f"the top rung recovers {top_ce:.3f} < {min_ce_recovered} of the CE loss ({top_quality})")
        if not above:
            low = ", ".join(numbers.rung[~numbers.above])
            parts.append(f"the SAE interval is not wholly above the neuron interval at {low}")
        verdict, reason = VERDICT_UNDECIDED, "; ".join(parts)
    return LadderVerdict(verdict=verdict, method=method, site=site, threshold=float(threshold), quality=top_quality,
                         top_ce_recovered=top_ce, quality_ok=quality_ok, above_everywhere=above,
                         trend=_trend(numbers), reason=reason, numbers=numbers)


def ladder_verdicts(ladder: pd.DataFrame, *, methods: Sequence[str], sites: Sequence[str] = ("mlp_out",),
                    thresholds=_THRESHOLDS, **options) -> pd.DataFrame:
    """:func:`ladder_verdict` for every (method, site, threshold), methods in the order given (lead with IG): one
    row each with the verdict, its reason and trend, and the sentence (``text``)."""
    out = []
    for method in methods:
        for site in sites:
            for t in thresholds:
                v = ladder_verdict(ladder, method=method, site=site, threshold=t, **options)
                out.append({"method": method, "site": site, "threshold": t, "verdict": v.verdict,
                            "quality_ok": v.quality_ok, "above_everywhere": v.above_everywhere,
                            "top_ce_recovered": v.top_ce_recovered, "reason": v.reason, "trend": v.trend,
                            "text": str(v)})
    return pd.DataFrame(out)


def basis_verdict(headline: pd.DataFrame, *, method: str, threshold: float = 0.8, sae: str = "sae_mlp_out",
                  templates: Sequence[str] = ()) -> str:
    """Notebook 01's sentence comparing neurons (``mlp_acts``) with one SAE basis at one faithfulness, pooled over
    templates (paired runs, logit-difference metric): both sizes with their 95 % intervals, how many of the SAE's
    nodes are latents, and the verdict by the rule stated before the numbers: "as sparse" when the intervals
    overlap, otherwise the basis whose interval lies wholly below is sparser ("not comparable" when a basis does
    not reach the threshold); then the per-template sizes of ``templates``."""
    from .style import BASIS_LABELS, METHOD_LABELS, fmt_size
    from .sva import POOLED

    rows = headline[(headline.method == method) & (headline.setting == "paired")
                    & (headline.eval_metric == "logit_diff")]
    per = rows.set_index(["basis", "template"])
    col = f"k@F>={threshold}"
    if col not in per.columns:
        raise ValueError(f"headline has no column {col!r}")
    nan = float("nan")
    n, n_lo, n_hi = (per[c].get(("mlp_acts", POOLED), nan) for c in (col, col + "_lo", col + "_hi"))
    s, s_lo, s_hi = (per[c].get((sae, POOLED), nan) for c in (col, col + "_lo", col + "_hi"))
    latents_col = f"latents@F>={threshold}"
    lat = per[latents_col].get((sae, POOLED), nan) if latents_col in per.columns else nan
    label = BASIS_LABELS.get(sae, sae)
    if not (n == n and s == s):
        word = "**not comparable** (a basis does not reach this faithfulness on the grid, or there is no pooled line)"
    elif n_hi < s_lo:
        word = f"**neurons are sparser** ({s / n:,.1f}× fewer nodes than {label})"
    elif s_hi < n_lo:
        word = f"**{label} is sparser** ({n / s:,.1f}× fewer nodes than neurons)"
    else:
        word = "**as sparse** (the intervals overlap)"
    same = [f"{t}: {fmt_size(per[col].get(('mlp_acts', t), nan))} vs {fmt_size(per[col].get((sae, t), nan))}"
            for t in templates]
    return (f"{METHOD_LABELS.get(method, method)}, faithfulness {threshold}: neurons {fmt_size(n, n_lo, n_hi)} vs "
            f"{label} {fmt_size(s, s_lo, s_hi)} nodes ({fmt_size(lat)} of them latents, the rest error nodes): "
            f"{word}." + (" Per template, neurons vs SAE: " + "; ".join(same) + "." if same else ""))
