"""TopK SAE baselines on ``mlp_out`` and ``resid`` at every layer (comparison basis: docs/method.md §1, §8 fig. 2).

Pipeline (:func:`train_sae_baselines`):

1. **Tokens.** Offline corpus chunks (:func:`neuronlib.data.corpus.iter_corpus_texts`, shuffled with a seed; each
   chunk starts at a paragraph) are tokenised without special tokens and cut into fixed-length windows of
   ``seq_len`` tokens *within* each chunk (the remainder is dropped): no padding, no artificial separator. The last
   ``n_eval_tokens`` worth of windows are held out for evaluation.
2. **Activations, cached once.** Batched no-grad forwards (:func:`neuronlib.activations.read_sites`) in this process
   read every requested site at every layer at once, **position 0 included**: SmolLM2 has no BOS token, so the first
   token of every prompt (and of every window) is an attention sink whose residual norm is tens of times the others;
   every SVA prompt starts there, so the SAEs must reconstruct it. Short windows (32 tokens) put position 0 and the
   first few positions (where the short SVA prompts live) in the training data often. Values go as float16 into one
   on-disk memmap per (site, layer): memory stays at one forward batch whatever the token count.
3. **Training.** One :func:`neuronlib.saes.train_topk_sae` per (site, layer) from its own file: float16 rows held
   in memory (``n_tokens x d_in x 2`` bytes), reshuffled every epoch, cast to float32 per batch; linear warm-up and
   linear decay of the learning rate; AuxK loss on dead latents (not fired for ``dead_after_tokens``). ``workers``
   SAEs train at once in *threads* of this process with one torch thread each (torch releases the GIL inside its
   kernels), so training adds no process and no second model copy to the memory footprint: peak extra memory is
   about ``workers x (2 n_tokens d_in + 8 batch_size d_sae x 4)`` bytes. Held-out explained variance, L0 and the
   fraction of latents that never fire on held-out tokens come from :func:`neuronlib.saes.evaluate_sae`.
4. **Storage.** Each SAE is saved in SAELens layout under ``{root}/{model}/{site}/layer_{i}/`` (``root`` defaults
   to ``cache_dir()/saes``) with the statistics, the training configuration, its hash (``train_key``) and the
   corpus description in ``cfg.json``. A re-run with the same configuration and data loads them instead of
   training (and skips the forward passes when every SAE is present). The activation cache is deleted afterwards
   unless ``keep_activations``.

**Quality gate** (:func:`sae_quality`, :func:`quality_gate`): explained variance of each SAE on the SVA prompts
themselves (clean and counterfactual prefixes of every template's test split, every position, position 0 included,
``1 - sum ||x - x_hat||^2 / sum ||x - mean x||^2`` pooled over all rows) must reach :data:`QUALITY_THRESHOLDS`
(0.8 for ``mlp_out``, 0.9 for ``resid``); the table also gives the same without position 0, L0 on the prompts and
the dead fraction on held-out corpus tokens.

**Held-out text** (:func:`heldout_corpus_texts`, :func:`heldout_token_windows`): training reads the shuffled corpus
chunks from the start; every chunk after the last one it read (less repeats of read chunks) is text none of the SAEs
saw, for :func:`neuronlib.sae_eval.sae_quality` (explained variance, CE loss recovered, KL, dead latents).

:func:`load_sae_baselines` / :func:`attach_sae_baselines` load them back and attach them as the ``sae_mlp_out`` /
``sae_resid`` sites. :func:`sae_table` reads the per-layer statistics from the saved files.

Budget and defaults (:data:`DEFAULT_CONFIG`): 8x width (4,608 latents), k = 32, 24,000 corpus tokens plus every
distinct prompt of the SVA training split (``prompts``; 6,800 tokens on SmolLM2) seen three times (Adam, batches of 256
rows, peak lr 2e-3, 5 % warm-up, linear decay over the last 30 %), ``outlier_cap`` 3. Without the prompts and the
cap (12,000 corpus tokens, 2 epochs) 21 of 30 ``mlp_out`` SAEs missed the gate, and ``mlp_out`` layer 11 explained
0.99 of the prompts' variance with position 0 but 0.01 without it (0.05 with the prompts, no cap); with both, every
SAE passes (notebook 01 and ``results/sae_quality*.csv`` have the numbers). Each training run's cost is logged (:func:`training_runs`). On a
quiet 2-core machine the forwards run at about 300 tokens/s and one single-threaded SAE step of 256 rows at 8.6/s.
These SAEs are small next to the paper's (Llama Scope, 8x, billions of tokens) and fitted to this task's prompts;
:func:`sae_quality` says how well they reconstruct the prompts that matter.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .. import cache
from ..saes import (
    CFG_FILENAME,
    WEIGHTS_FILENAME,
    TopKSAE,
    check_sae,
    evaluate_sae,
    load_cfg,
    load_sae,
    save_sae,
    train_topk_sae,
)

__all__ = [
    "SAETrainConfig", "DEFAULT_CONFIG", "SMOKE_CONFIG", "SAE_SITES_TRAINED", "TABLE_COLUMNS", "corpus_token_windows",
    "heldout_corpus_texts", "heldout_token_windows",
    "sae_root", "sae_path", "train_sae_baselines",
    "training_runs", "prompt_blocks", "sae_table", "load_sae_baselines", "attach_sae_baselines", "sae_fingerprint",
    "QUALITY_THRESHOLDS", "QUALITY_COLUMNS", "sva_prompts", "sae_quality", "quality_gate",
]

logger = logging.getLogger(__name__)

SAE_SITES_TRAINED = ("mlp_out", "resid")  # base sites; attached as "sae_mlp_out" / "sae_resid"
TABLE_COLUMNS = ["model", "site", "layer", "d_in", "d_sae", "k", "explained_variance", "l0", "dead_fraction",
                 "train_explained_variance", "train_l0", "train_dead_fraction", "n_unique_tokens", "n_tokens", "n_eval_tokens",
                 "n_steps", "seconds", "reused"]


@dataclass(frozen=True)
class SAETrainConfig:
    """Everything a baseline SAE depends on (besides the model and the token data, which are hashed separately).

    ``expansion``: d_sae = expansion x d_in.  ``n_tokens``: unique training tokens (rows) per SAE; every SAE of the
    run sees the same tokens.  ``epochs``: passes over them (reshuffled each pass).  ``lr``: None = Gao et al.'s
    ``2e-4 / sqrt(d_sae / 2**14)``.  ``warmup_frac`` / ``decay_frac``: linear warm-up over the first and linear
    decay to 0 over the last fraction of the steps.  ``skip_first``: drop position 0 of every window (False: train on
    every position).  ``dead_after_tokens``: a latent silent for this many training tokens is dead and joins the
    AuxK loss (``aux_k`` latents, default d_in / 2).  ``outlier_cap``: rows whose norm exceeds this multiple of the
    batch median count in the loss as if they had that norm (``neuronlib.saes.train_topk_sae``); None: plain MSE.
    """

    expansion: int = 8
    k: int = 32
    n_tokens: int = 12_000
    n_eval_tokens: int = 2_000
    epochs: int = 2
    batch_size: int = 256
    lr: float | None = 2e-3
    seq_len: int = 32
    skip_first: bool = False
    forward_batch: int = 16
    corpus_seed: int = 0
    sources: tuple[str, ...] | None = None
    seed: int = 0
    warmup_frac: float = 0.05
    decay_frac: float = 0.3
    dead_after_tokens: int = 8_000
    aux_k: int | None = None
    outlier_cap: float | None = None

    def __post_init__(self):
        if self.expansion < 1 or self.k < 1 or self.n_tokens < self.batch_size or self.epochs < 1:
            raise ValueError(f"bad SAETrainConfig {self}: need expansion, k, epochs >= 1 and n_tokens >= batch_size")
        if self.seq_len < 2 + int(self.skip_first):
            raise ValueError(f"seq_len {self.seq_len} too short")
        if self.n_eval_tokens < 1:
            raise ValueError("n_eval_tokens must be >= 1")
        if not (0 <= self.warmup_frac < 1 and 0 <= self.decay_frac <= 1 and self.warmup_frac + self.decay_frac <= 1):
            raise ValueError("need 0 <= warmup_frac, decay_frac and warmup_frac + decay_frac <= 1")

    @property
    def rows_per_window(self) -> int:
        return self.seq_len - int(self.skip_first)

    @property
    def n_train_windows(self) -> int:
        return math.ceil(self.n_tokens / self.rows_per_window)

    @property
    def n_eval_windows(self) -> int:
        return math.ceil(self.n_eval_tokens / self.rows_per_window)

    def steps(self) -> int:
        return self.epochs * (self.n_train_windows * self.rows_per_window // self.batch_size)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["sources"] = None if self.sources is None else list(self.sources)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SAETrainConfig":
        d = dict(d)
        d["sources"] = tuple(d["sources"]) if d.get("sources") else None
        return cls(**d)


DEFAULT_CONFIG = SAETrainConfig(n_tokens=24_000, epochs=3, outlier_cap=3.0)
# The notebook's SMOKE mode: the same code path on a few thousand tokens and tiny dictionaries.
SMOKE_CONFIG = SAETrainConfig(expansion=1, k=8, n_tokens=768, n_eval_tokens=256, epochs=1, batch_size=256,
                              seq_len=32, dead_after_tokens=512)


# -------------------------------------------------------------------------------------------------------- paths


def sae_root(root: str | os.PathLike | None = None) -> Path:
    """Where baseline SAEs live: ``root`` or ``cache_dir()/saes``."""
    if root is not None:
        return Path(root)
    from ..models import cache_dir

    return cache_dir() / "saes"


def _model_name(model) -> str:
    return model if isinstance(model, str) else model.name


def sae_path(model, site: str, layer: int, root=None) -> Path:
    """``{root}/{model}/{site}/layer_{layer}`` (``site`` is the base site, ``mlp_out`` or ``resid``)."""
    site = site[4:] if site.startswith("sae_") else site
    return sae_root(root) / _model_name(model) / site / f"layer_{int(layer)}"


# -------------------------------------------------------------------------------------------------------- tokens


def corpus_token_windows(tokenizer, n_windows: int, seq_len: int, *, texts: Iterable[str] | None = None,
                         seed: int = 0, sources=None) -> torch.Tensor:
    """``[n_windows, seq_len]`` token ids: each text is tokenised without special tokens and cut into whole windows
    (its remainder is dropped), texts in order until ``n_windows`` are filled. ``texts`` default: the offline
    corpus shuffled with ``seed``. ValueError if the texts run out."""
    return _windows(tokenizer, n_windows, seq_len, texts=texts, seed=seed, sources=sources)[0]


def _windows(tokenizer, n_windows: int, seq_len: int, *, texts, seed: int, sources) -> tuple[torch.Tensor, int]:
    """:func:`corpus_token_windows` and how many texts it read (the last one possibly in part)."""
    if texts is None:
        from ..data.corpus import iter_corpus_texts

        texts = iter_corpus_texts(seed=seed, sources=sources)
    rows: list[list[int]] = []
    for n_read, text in enumerate(texts, 1):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids) - seq_len + 1, seq_len):
            rows.append(ids[start:start + seq_len])
            if len(rows) >= n_windows:
                return torch.tensor(rows, dtype=torch.long), n_read
    raise ValueError(f"the texts gave only {len(rows)} windows of {seq_len} tokens; {n_windows} needed")


def heldout_corpus_texts(tokenizer, config: SAETrainConfig = DEFAULT_CONFIG) -> list[str]:
    """Offline-corpus chunks that no baseline SAE trained with ``config`` (on the default corpus, ``texts=None``)
    has seen, in the corpus order of ``config.corpus_seed``.

    Training reads the shuffled chunks from the start until its training and evaluation windows are filled
    (:func:`train_sae_baselines`); the held-out chunks are every later one (the chunk it stopped in, read in part,
    is left out whole), less any whose text equals a chunk it read (the corpus repeats a few short chunks)."""
    from ..data.corpus import iter_corpus_texts

    texts = list(iter_corpus_texts(seed=config.corpus_seed, sources=config.sources))
    _, n_read = _windows(tokenizer, config.n_train_windows + config.n_eval_windows, config.seq_len, texts=texts,
                         seed=config.corpus_seed, sources=config.sources)
    seen = set(texts[:n_read])
    return [t for t in texts[n_read:] if t not in seen]


def heldout_token_windows(tokenizer, n_tokens: int, *, seq_len: int = 128,
                          config: SAETrainConfig = DEFAULT_CONFIG) -> torch.Tensor:
    """``[ceil(n_tokens / seq_len), seq_len]`` token ids from :func:`heldout_corpus_texts`, cut as the training
    windows are (no special tokens, whole windows within a chunk): text none of the SAEs was trained on, for
    :func:`neuronlib.sae_eval.sae_quality`. ``seq_len`` 128 is SAEBench's context length; the SAEs were trained on
    windows of ``config.seq_len`` (32) tokens."""
    if n_tokens < 1 or seq_len < 2:
        raise ValueError(f"need n_tokens >= 1 and seq_len >= 2, got {n_tokens}, {seq_len}")
    return corpus_token_windows(tokenizer, math.ceil(n_tokens / seq_len), seq_len,
                                texts=heldout_corpus_texts(tokenizer, config))


# -------------------------------------------------------------------------------------------------------- activations


def _act_file(act_dir: Path, site: str, layer: int) -> Path:
    return act_dir / f"{site}_layer{layer}.f16"


def _blocks_rows(blocks: Sequence[torch.Tensor], skip_first: bool) -> int:
    return sum(len(b) * (b.shape[1] - int(skip_first)) for b in blocks)


def _collect(model, blocks: Sequence[torch.Tensor], sites, cfg: SAETrainConfig, act_dir: Path, progress: bool) -> float:
    """Forward every sequence once (no grad, this process); write each (site, layer)'s rows to a float16 memmap.

    ``blocks``: ``[n, length]`` token-id tensors (one length per block, so no padding), written in order."""
    from ..activations import read_sites

    act_dir.mkdir(parents=True, exist_ok=True)
    first = int(cfg.skip_first)
    n_rows = _blocks_rows(blocks, cfg.skip_first)
    maps = {(s, l): np.memmap(_act_file(act_dir, s, l), dtype=np.float16, mode="w+", shape=(n_rows, model.d_model))
            for s in sites for l in range(model.n_layers)}
    t0 = time.perf_counter()
    bar = tqdm(total=n_rows, desc="activations (tokens)", unit="tok", unit_scale=True, disable=not progress)
    lo = 0
    for block in blocks:
        per_seq = block.shape[1] - first
        # Short prompts go in bigger batches: the same number of tokens per forward as the corpus windows.
        batch = max(cfg.forward_batch, cfg.forward_batch * cfg.seq_len // block.shape[1])
        for ids in block.split(batch):
            ids = ids.to(model.device)
            values, _ = read_sites(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, tuple(sites))
            hi = lo + len(ids) * per_seq
            for s in sites:
                for l, v in enumerate(values[s]):
                    maps[(s, l)][lo:hi] = v[:, first:, :].reshape(-1, v.shape[-1]).to(torch.float16).cpu().numpy()
            del values
            bar.update(hi - lo)
            lo = hi
    bar.close()
    for m in maps.values():
        m.flush()
    del maps
    return time.perf_counter() - t0


def prompt_blocks(tokenizer, prompts: Sequence[str]) -> list[torch.Tensor]:
    """Distinct ``prompts`` tokenised as the model sees them (the tokenizer's special tokens included, as
    ``Model.tokenize``), one ``[n, length]`` block per token length, in first-seen order."""
    distinct = list(dict.fromkeys(prompts))
    by_len: dict[int, list[list[int]]] = {}
    for ids in (tokenizer(distinct)["input_ids"] if distinct else []):
        by_len.setdefault(len(ids), []).append(ids)
    return [torch.tensor(rows, dtype=torch.long) for rows in by_len.values()]


# -------------------------------------------------------------------------------------------------------- training


def _train_one(job: dict) -> dict:
    """Train, evaluate and save one SAE from its activation file (runs in a worker thread or inline)."""
    cfg = SAETrainConfig.from_dict(job["config"])
    d_in, n_train, n_eval = job["d_in"], job["n_train_rows"], job["n_eval_rows"]
    data = np.memmap(job["file"], dtype=np.float16, mode="r", shape=(n_train + n_eval, d_in))
    x_train = torch.from_numpy(np.array(data[:n_train]))            # float16 in memory
    x_eval = torch.from_numpy(np.array(data[n_train:n_train + n_eval]))
    del data
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + job["layer"])
    per_epoch = n_train // cfg.batch_size

    def batches():
        for _ in range(cfg.epochs):
            perm = torch.randperm(n_train, generator=gen)
            for b in range(per_epoch):
                yield x_train[perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]].float()

    t0 = time.perf_counter()
    sae, stats = train_topk_sae(batches(), d_in=d_in, d_sae=cfg.expansion * d_in, k=cfg.k, lr=cfg.lr,
                                n_steps=cfg.epochs * per_epoch, seed=cfg.seed, progress=False, normalize_input=True,
                                lr_warmup_frac=cfg.warmup_frac, lr_decay_frac=cfg.decay_frac,
                                dead_after_tokens=cfg.dead_after_tokens, aux_k=cfg.aux_k,
                                outlier_cap=cfg.outlier_cap)
    held_out = evaluate_sae(sae, (b.float() for b in x_eval.split(4096)))
    seconds = time.perf_counter() - t0
    extra = {
        "model_name": job["model"], "site": job["site"], "layer": job["layer"], "hook_name": job["hook_name"],
        "explained_variance": held_out["explained_variance"], "l0": held_out["l0"],
        "dead_fraction": held_out["dead_fraction"], "mse": held_out["mse"],
        "train_explained_variance": stats["explained_variance"], "train_l0": stats["l0"],
        "train_dead_fraction": stats["dead_fraction"], "n_tokens": stats["n_tokens"],
        "n_unique_tokens": n_train, "n_eval_tokens": n_eval, "n_steps": stats["n_steps"], "seconds": seconds,
        "lr": stats["lr"], "input_scale": stats["input_scale"], "k_aux": stats["k_aux"],
        "train_config": job["config"], "train_key": job["train_key"], "data_hash": job["data_hash"],
        "corpus": job["corpus"], "evaluation": "held-out tokens (not trained on); position 0 of each window skipped"
                                              if cfg.skip_first else "held-out tokens (not trained on), every position",
    }
    save_sae(sae, job["path"], cfg_extra=extra)
    return {"site": job["site"], "layer": job["layer"], "seconds": seconds}


def _hook_name(model, site: str, layer: int) -> str:
    arch = model.arch
    base = f"{arch.layers}.{layer}"
    return {"mlp_out": f"{base}.{arch.mlp}", "resid": base, "attn_out": f"{base}.{arch.attn}.{arch.o_proj}:input"}[site]


def _saved_matches(path: Path, train_key: str) -> bool:
    """Whether an intact SAE trained with ``train_key`` is saved at ``path`` (a damaged one is trained again)."""
    try:
        if not (path / WEIGHTS_FILENAME).exists() or load_cfg(path).get("train_key") != train_key:
            return False
    except (OSError, ValueError):
        return False
    check = check_sae(path, adopt=True)
    if not check.ok:
        logger.warning(f"saved SAE {path} is damaged ({check.message}); training it again")
    return check.ok


def _train_key(model, site, layer, cfg: SAETrainConfig, data_hash: str) -> str:
    return cache.cache_key(kind="sae_baseline", model=model.name, site=site, layer=int(layer), config=cfg.as_dict(),
                           data=data_hash, d_in=model.d_model)


def train_sae_baselines(
    model,
    sites: Sequence[str] = SAE_SITES_TRAINED,
    config: SAETrainConfig = DEFAULT_CONFIG,
    *,
    root=None,
    texts: Iterable[str] | None = None,
    prompts: Sequence[str] | None = None,
    workers: int = 2,
    progress: bool = True,
    keep_activations: bool = False,
    log=None,
) -> pd.DataFrame:
    """Train (or re-use) one TopK SAE per layer for each base site in ``sites``; returns :func:`sae_table`.

    ``texts``: the text source (default: the offline corpus, shuffled with ``config.corpus_seed``); the token
    windows are hashed, so a different corpus or tokenizer never re-uses a stale SAE. ``prompts``: extra training
    rows, each distinct prompt run as its own sequence from position 0 (e.g. the prefixes of ``sva_prompts(model, split="train")``, the SVA
    training split: the circuits are found on those prompts, so the SAEs should reconstruct them; the test split
    stays out and is what the quality gate measures); hashed with the windows. ``workers``: SAEs trained at
    once, each in a thread with one torch thread (1: one after another with the current torch threads). See the
    module docstring for the pipeline. ``table.attrs`` holds ``collect_seconds``, ``train_seconds``,
    ``total_seconds``, ``n_trained``, ``n_reused``.
    """
    log = log or logger.info
    sites = tuple(s[4:] if s.startswith("sae_") else s for s in sites)
    bad = [s for s in sites if s not in ("mlp_out", "resid", "attn_out")]
    if bad:
        raise ValueError(f"SAE baselines are trained on mlp_out / resid / attn_out, got {bad}")
    if "attn_out" in sites and model.site_width("attn_out") != model.d_model:
        raise ValueError("attn_out is wider than d_model on this model; not supported here")
    t_start = time.perf_counter()
    n_windows = config.n_train_windows + config.n_eval_windows
    windows = corpus_token_windows(model.tokenizer, n_windows, config.seq_len, texts=texts,
                                   seed=config.corpus_seed, sources=config.sources)
    n_train_windows = config.n_train_windows
    blocks = [windows[:n_train_windows], *prompt_blocks(model.tokenizer, prompts or []), windows[n_train_windows:]]
    data_hash = cache.data_hash([b.tolist() for b in blocks])
    n_prompt_rows = _blocks_rows(blocks[1:-1], config.skip_first)
    if texts is None:
        from ..data.corpus import corpus_info

        info = corpus_info(sources=config.sources)
        corpus = {k: info[k] for k in ("version", "source", "licence", "n_chars", "fallback")}
    else:
        corpus = {"source": "texts given by the caller"}
    corpus["n_windows"] = n_windows
    corpus["n_prompts"] = sum(len(b) for b in blocks[1:-1])
    corpus["n_prompt_tokens"] = n_prompt_rows
    L = model.n_layers
    jobs, reused = [], set()
    for s in sites:
        for l in range(L):
            key = _train_key(model, s, l, config, data_hash)
            path = sae_path(model, s, l, root)
            if _saved_matches(path, key):
                reused.add((s, l))
            else:
                jobs.append({"site": s, "layer": l, "path": str(path), "train_key": key})
    collect_seconds = train_seconds = 0.0
    if jobs:
        act_dir = sae_root(root) / model.name / f"_activations_{data_hash}"
        need_sites = tuple(dict.fromkeys(j["site"] for j in jobs))
        log(f"SAE baselines for {model.name}: training {len(jobs)} SAEs ({len(reused)} re-used); "
            f"d_sae {config.expansion * model.d_model}, k {config.k}, {config.n_train_windows * config.rows_per_window:,}"
            f" corpus + {n_prompt_rows:,} prompt training tokens x {config.epochs} epochs, {workers} worker(s)")
        try:
            collect_seconds = _collect(model, blocks, need_sites, config, act_dir, progress)
            n_train_rows = config.n_train_windows * config.rows_per_window + n_prompt_rows
            n_eval_rows = config.n_eval_windows * config.rows_per_window
            for j in jobs:
                j.update(file=str(_act_file(act_dir, j["site"], j["layer"])), d_in=model.d_model,
                         n_train_rows=n_train_rows, n_eval_rows=n_eval_rows, config=config.as_dict(),
                         model=model.name, hook_name=_hook_name(model, j["site"], j["layer"]), data_hash=data_hash,
                         corpus=corpus)
            bar = tqdm(total=len(jobs), desc="training SAEs", unit="sae", disable=not progress)
            t_train = time.perf_counter()
            threads = torch.get_num_threads()
            try:
                if workers > 1:
                    torch.set_num_threads(1)
                    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
                        for fut in concurrent.futures.as_completed([pool.submit(_train_one, j) for j in jobs]):
                            done = fut.result()
                            bar.update(1)
                            bar.set_postfix(last=f"{done['site']} L{done['layer']} {done['seconds']:.0f}s")
                else:
                    for j in jobs:
                        done = _train_one(j)
                        bar.update(1)
                        bar.set_postfix(last=f"{done['site']} L{done['layer']} {done['seconds']:.0f}s")
            finally:
                torch.set_num_threads(threads)
            train_seconds = time.perf_counter() - t_train
            bar.close()
        finally:
            if not keep_activations:
                shutil.rmtree(act_dir, ignore_errors=True)
    table = sae_table(model, sites, root=root)
    table["reused"] = [(s, l) in reused for s, l in zip(table.site, table.layer)]
    table.attrs.update(collect_seconds=collect_seconds, train_seconds=train_seconds,
                       total_seconds=time.perf_counter() - t_start, n_trained=len(jobs), n_reused=len(reused))
    if jobs:
        _log_run(model, root, {**table.attrs, "sites": list(sites), "workers": workers, "config": config.as_dict(),
                               "data_hash": data_hash, "n_prompt_tokens": n_prompt_rows,
                               "n_corpus_tokens": config.n_train_windows * config.rows_per_window})
    return table


RUNS_FILENAME = "training_runs.jsonl"


def _log_run(model, root, record: dict) -> None:
    """Append what a training run cost to ``{root}/{model}/training_runs.jsonl`` (re-used SAEs keep that record)."""
    import datetime
    import json

    path = sae_root(root) / _model_name(model) / RUNS_FILENAME
    record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **record}
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def training_runs(model, *, root=None, config: SAETrainConfig | None = None) -> pd.DataFrame:
    """The logged training runs of ``model``'s baseline SAEs (newest last), optionally only those with ``config``:
    date, sites, SAEs trained, forward / training / total seconds, workers, corpus and prompt tokens."""
    import json

    path = sae_root(root) / _model_name(model) / RUNS_FILENAME
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    if config is not None:
        rows = [r for r in rows if r.get("config") == config.as_dict()]
    cols = ["date", "sites", "n_trained", "n_reused", "collect_seconds", "train_seconds", "total_seconds", "workers",
            "n_corpus_tokens", "n_prompt_tokens", "data_hash"]
    return pd.DataFrame([{c: r.get(c) for c in cols} for r in rows], columns=cols)


# -------------------------------------------------------------------------------------------------------- loading


def sae_table(model, sites: Sequence[str] = SAE_SITES_TRAINED, *, root=None) -> pd.DataFrame:
    """One row per saved SAE (site, layer) with its held-out and training statistics (from ``cfg.json``)."""
    rows = []
    name = _model_name(model)
    for s in sites:
        s = s[4:] if s.startswith("sae_") else s
        site_dir = sae_root(root) / name / s
        layers = sorted(int(p.name.split("_")[1]) for p in site_dir.glob("layer_*") if (p / CFG_FILENAME).exists())
        for l in layers:
            cfg = load_cfg(sae_path(name, s, l, root))
            rows.append({"model": name, "site": s, "layer": l, "d_in": cfg["d_in"], "d_sae": cfg["d_sae"],
                         "k": cfg["k"], **{c: cfg.get(c) for c in TABLE_COLUMNS[6:-1]}, "reused": None})
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def load_sae_baselines(model, site: str, *, root=None, config: SAETrainConfig | None = None) -> list[TopKSAE]:
    """The saved SAEs of ``site`` ("mlp_out"/"sae_mlp_out", "resid"/"sae_resid"), one per layer in order.

    ``model``: a loaded model (its layer count is checked) or a model name. ``config``: if given, every SAE must
    have been trained with it (else ValueError). FileNotFoundError names the first missing layer."""
    base = site[4:] if site.startswith("sae_") else site
    name = _model_name(model)
    if isinstance(model, str):
        site_dir = sae_root(root) / name / base
        n_layers = len(list(site_dir.glob("layer_*")))
        if n_layers == 0:
            raise FileNotFoundError(f"no SAEs under {site_dir}; run train_sae_baselines first")
    else:
        n_layers = model.n_layers
    out = []
    for l in range(n_layers):
        path = sae_path(name, base, l, root)
        if not (path / WEIGHTS_FILENAME).exists():
            raise FileNotFoundError(f"no SAE for {name} {base} layer {l} at {path}; run train_sae_baselines first")
        sae = load_sae(path)
        if config is not None and sae.cfg.get("train_config") != config.as_dict():
            raise ValueError(f"{path} was trained with {sae.cfg.get('train_config')}, not {config.as_dict()}")
        out.append(sae)
    return out


def attach_sae_baselines(model, sites: Sequence[str] = SAE_SITES_TRAINED, *, root=None,
                         config: SAETrainConfig | None = None):
    """Load and attach the saved SAEs as sites ``sae_{site}``; returns the model (modified in place).

    SAEs already attached with the saved files' training keys (and ``config``) are kept, not loaded again: a second
    copy of 60 SAEs would cost ~1.3 GB while the first is still attached."""
    for s in sites:
        base = s[4:] if s.startswith("sae_") else s
        if not _attached_already(model, base, root, config):
            model.attach_saes("sae_" + base, load_sae_baselines(model, base, root=root, config=config))
    return model


def _attached_already(model, base: str, root, config: SAETrainConfig | None) -> bool:
    attached = model.saes.get("sae_" + base)
    if not attached or len(attached) != model.n_layers:
        return False
    for layer, sae in enumerate(attached):
        cfg = getattr(sae, "cfg", {})
        if config is not None and cfg.get("train_config") != config.as_dict():
            return False
        if not cfg.get("train_key") or not _saved_matches(sae_path(model.name, base, layer, root), cfg["train_key"]):
            return False
    return True


# -------------------------------------------------------------------------------------------------------- quality gate

QUALITY_THRESHOLDS = {"mlp_out": 0.8, "resid": 0.9, "attn_out": 0.8}  # minimum explained variance on the SVA prompts
QUALITY_COLUMNS = ["model", "site", "layer", "d_sae", "k", "n_unique_tokens", "n_tokens", "n_prompts", "n_rows",
                   "explained_variance", "explained_variance_no_pos0", "l0", "dead_fraction",
                   "heldout_explained_variance", "threshold", "passes"]


def sva_prompts(model, templates: Sequence[str] | None = None, *, split: str = "test", n: int | None = None,
                data_dir=None) -> dict[str, list[str]]:
    """The SVA prompts the circuits are found on: clean and counterfactual prefixes per template (one token length
    per template), from the packaged ``data/sva`` files."""
    from ..data.sva import TEMPLATES, load_sva

    out = {}
    templates = TEMPLATES if templates is None else templates
    for t in templates:
        rows = load_sva(t, tokenizer=model.tokenizer, split=split, n=n, data_dir=data_dir).dataset
        out[t] = [r["clean_prefix"] for r in rows] + [r["patch_prefix"] for r in rows]
    return out


@torch.no_grad()
def sae_quality(model, prompts: dict[str, list[str]] | list[str], sites: Sequence[str] = SAE_SITES_TRAINED, *,
                root=None, saes: dict[str, list[TopKSAE]] | None = None, thresholds=None,
                batch_size: int = 64) -> pd.DataFrame:
    """The quality gate's table: one row per (site, layer) with the SAE's explained variance on ``prompts``.

    ``explained_variance`` = ``1 - sum ||x - x_hat||^2 / sum ||x - mean x||^2`` over every real token of every
    prompt (position 0 included; the mean is over the same rows); ``explained_variance_no_pos0`` the same without
    position 0; ``l0`` the mean number of active latents per token on the prompts; ``dead_fraction`` the fraction
    of latents that never fire on the held-out corpus tokens and ``heldout_explained_variance`` the held-out corpus
    EV (both from the SAE's ``cfg.json``, NaN when unknown). ``passes``: EV >= :data:`QUALITY_THRESHOLDS` [site].
    ``saes``: {base site: per-layer SAEs} (default: :func:`load_sae_baselines` from ``root``). The measures the SAE
    literature reports (CE loss recovered, KL, held-out text) are :func:`neuronlib.sae_eval.sae_quality`'s.
    """
    from ..activations import read_sites

    thresholds = {**QUALITY_THRESHOLDS, **(thresholds or {})}
    sites = tuple(s[4:] if s.startswith("sae_") else s for s in sites)
    if saes is None:
        saes = {s: load_sae_baselines(model, s, root=root) for s in sites}
    groups = list(prompts.values()) if isinstance(prompts, dict) else [list(prompts)]
    rows: dict[str, list[list[torch.Tensor]]] = {s: [[] for _ in range(model.n_layers)] for s in sites}
    pos0: list[torch.Tensor] = []
    n_prompts = 0
    for group in groups:
        for start in range(0, len(group), batch_size):
            batch = group[start:start + batch_size]
            inputs = model.tokenize(batch)
            mask = inputs["attention_mask"].bool()
            first = mask.float().argmax(1)  # left padding: index of each prompt's first real token
            is_first = torch.zeros_like(mask)
            is_first[torch.arange(len(batch)), first] = True
            values, _ = read_sites(model, inputs, sites)
            for s in sites:
                for l, v in enumerate(values[s]):
                    rows[s][l].append(v[mask].float().cpu())
            pos0.append(is_first[mask].cpu())
            n_prompts += len(batch)
    pos0_mask = torch.cat(pos0)
    out = []
    for s in sites:
        for l, sae in enumerate(saes[s]):
            x = torch.cat(rows[s][l]).to(sae.W_dec.device, sae.W_dec.dtype)
            vals, idx = sae.encode_topk(x)
            x_hat = sae.decode(torch.zeros(x.shape[0], sae.d_sae, dtype=x.dtype, device=x.device).scatter(-1, idx, vals))
            err = (x - x_hat).pow(2).sum(-1)

            def ev(keep):
                xs = x[keep]
                return 1.0 - err[keep].sum().item() / max((xs - xs.mean(0)).pow(2).sum().item(), 1e-30)

            cfg = getattr(sae, "cfg", {}) or {}
            ev_all = ev(torch.ones_like(pos0_mask))
            out.append({"model": model.name, "site": s, "layer": l, "d_sae": sae.d_sae, "k": sae.k,
                        "n_unique_tokens": cfg.get("n_unique_tokens"), "n_tokens": cfg.get("n_tokens"),
                        "n_prompts": n_prompts, "n_rows": int(x.shape[0]), "explained_variance": ev_all,
                        "explained_variance_no_pos0": ev(~pos0_mask), "l0": float((vals > 0).sum(-1).float().mean()),
                        "dead_fraction": cfg.get("dead_fraction", float("nan")),
                        "heldout_explained_variance": cfg.get("explained_variance", float("nan")),
                        "threshold": thresholds[s], "passes": bool(ev_all >= thresholds[s])})
    return pd.DataFrame(out, columns=QUALITY_COLUMNS)


def quality_gate(table: pd.DataFrame) -> pd.DataFrame:
    """Per site: min / median explained variance on the prompts, the threshold, how many layers fail, mean L0 and
    dead fraction, and ``passes`` (every layer reaches the threshold)."""
    g = table.groupby("site", sort=False)
    return pd.DataFrame({
        "layers": g.layer.count(), "ev_min": g.explained_variance.min(), "ev_median": g.explained_variance.median(),
        "ev_no_pos0_min": g.explained_variance_no_pos0.min(), "threshold": g.threshold.first(),
        "layers_failing": g.passes.apply(lambda p: int((~p.astype(bool)).sum())), "l0_mean": g.l0.mean(),
        "dead_fraction_max": g.dead_fraction.max(), "passes": g.passes.all(),
    }).reset_index()


# -------------------------------------------------------------------------------------------------------- SVA on SAEs


def sae_fingerprint(model, sites: Sequence[str]) -> str:
    """A hash of the SAEs attached at ``sites`` (their weights' train keys, or their weights if untrained)."""
    parts = {}
    for s in sites:
        saes = model.saes.get(s)
        if not saes:
            raise ValueError(f"site {s!r} needs SAEs: attach them first (attach_sae_baselines)")
        keys = []
        for sae in saes:
            key = getattr(sae, "cfg", {}).get("train_key") if hasattr(sae, "cfg") else None
            keys.append(key or cache.data_hash([sae.W_enc.sum().item(), sae.W_dec.sum().item(),
                                                sae.b_enc.sum().item(), sae.b_dec.sum().item(), sae.k]))
        parts[s] = keys
    return cache.data_hash(parts)


# The SVA benchmark on SAE sites is the one runner of :mod:`neuronlib.paper.sva` (its bases include ``sae_mlp_out``,
# ``sae_resid`` and ``sae_attn_out``; its cache keys include :func:`sae_fingerprint`), and figure 2 is
# :func:`neuronlib.paper.figures.fig_basis_comparison`.
