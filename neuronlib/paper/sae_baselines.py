"""TopK SAE baselines on ``mlp_out`` and ``resid`` at every layer (the comparison basis of METHOD.md §1, §8 fig. 2).

Pipeline (:func:`train_sae_baselines`):

1. **Tokens.** Offline corpus chunks (:func:`neuronlib.data.corpus.iter_corpus_texts`, shuffled with a seed) are
   tokenised without special tokens and cut into fixed-length windows of ``seq_len`` tokens *within* each chunk
   (the remainder of a chunk is dropped), so there is no padding and no artificial separator token. The last
   ``n_eval_tokens`` worth of windows are held out for evaluation.
2. **Activations.** Batched no-grad forwards (:func:`neuronlib.activations.read_sites`) read every requested site at
   every layer at once. Position 0 of each window is skipped (``skip_first``): SmolLM2 has no BOS token, so the
   first token is an attention sink whose residual-stream norm is tens of times larger than elsewhere and would
   dominate the reconstruction loss. Values are written as float16 into one on-disk memmap per (site, layer), so
   memory stays bounded (one forward batch) whatever the token count; the files are deleted after training.
3. **Training.** One :func:`neuronlib.saes.train_topk_sae` per (site, layer) on its own rows (shuffled, ``epochs``
   passes), in ``workers`` single-threaded processes (on a busy 2-core machine two independent single-threaded
   processes get more done than one process with two OpenMP threads). Held-out explained variance, L0 and the
   fraction of latents that never fire on the held-out tokens come from :func:`neuronlib.saes.evaluate_sae`.
4. **Storage.** Each SAE is saved in SAELens layout under ``{root}/{model}/{site}/layer_{i}/`` (``root`` defaults
   to ``cache_dir()/saes``) with the statistics, the training configuration, its hash (``train_key``) and the
   corpus description in ``cfg.json``. A re-run with the same configuration and data loads them instead of
   training (and skips the forward passes when every SAE is present).

:func:`load_sae_baselines` / :func:`attach_sae_baselines` load them back and attach them as the ``sae_mlp_out`` /
``sae_resid`` sites. :func:`sae_table` reads the per-layer statistics from the saved files.

Budget and defaults (:data:`DEFAULT_CONFIG`): measured on this project's shared 2-core CPU (load 6-10), one
single-threaded SmolLM2-135M forward runs at ~50-100 tokens/s (all 30 layers are needed), and one TopK SAE step
(d_in 576, k 32) at ~4,700 tokens/s for 4x width (2,304 latents) vs ~2,400 tokens/s for 8x width (4,608). Sixty SAEs
at 8x cost twice as much training as at 4x for the same data; to keep the whole job (forwards + 60 SAEs) within
~30-40 min on this machine the default is **4x width (2,304 latents), k = 32, 40,000 training tokens per SAE seen
twice** (2 epochs, batches of 512: 156 Adam steps, lr 1e-3), 4,032 held-out tokens. A pilot on 12,000 tokens
(resid, layer 5, 200 steps) gave held-out explained variance 0.835 with Gao et al.'s lr (5.3e-4 at this width) and
0.852 with lr 1e-3. That is tiny next to the paper's SAEs (Llama Scope 8x, trained on billions of tokens);
:func:`sae_table` shows what it buys.
"""
from __future__ import annotations

import logging

import dataclasses
import math
import multiprocessing as mp
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
from ..evaluation import evaluate_circuit
from ..saes import CFG_FILENAME, WEIGHTS_FILENAME, TopKSAE, evaluate_sae, load_cfg, load_sae, save_sae, train_topk_sae

__all__ = [
    "SAETrainConfig", "DEFAULT_CONFIG", "SMOKE_CONFIG", "SAE_SITES_TRAINED", "TABLE_COLUMNS", "corpus_token_windows",
    "sae_root", "sae_path", "train_sae_baselines", "sae_table", "load_sae_baselines", "attach_sae_baselines", "sae_fingerprint",
    "run_sae_benchmark", "plot_curves",
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
    ``2e-4 / sqrt(d_sae / 2**14)``; the default 1e-3 suits the short schedule (see the module docstring).
    """

    expansion: int = 4
    k: int = 32
    n_tokens: int = 40_000
    n_eval_tokens: int = 4_000
    epochs: int = 2
    batch_size: int = 512
    lr: float | None = 1e-3
    seq_len: int = 64
    skip_first: bool = True
    forward_batch: int = 16
    corpus_seed: int = 0
    sources: tuple[str, ...] | None = None
    seed: int = 0

    def __post_init__(self):
        if self.expansion < 1 or self.k < 1 or self.n_tokens < self.batch_size or self.epochs < 1:
            raise ValueError(f"bad SAETrainConfig {self}: need expansion, k, epochs >= 1 and n_tokens >= batch_size")
        if self.seq_len < 2 + int(self.skip_first):
            raise ValueError(f"seq_len {self.seq_len} too short")
        if self.n_eval_tokens < 1:
            raise ValueError("n_eval_tokens must be >= 1")

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
        return self.epochs * (self.n_tokens // self.batch_size)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["sources"] = None if self.sources is None else list(self.sources)
        return d


DEFAULT_CONFIG = SAETrainConfig()
# The notebook's SMOKE mode: the same code path on a few thousand tokens and tiny dictionaries.
SMOKE_CONFIG = SAETrainConfig(expansion=1, k=8, n_tokens=768, n_eval_tokens=256, epochs=1, batch_size=256,
                              seq_len=32)


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
    if texts is None:
        from ..data.corpus import iter_corpus_texts

        texts = iter_corpus_texts(seed=seed, sources=sources)
    rows: list[list[int]] = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids) - seq_len + 1, seq_len):
            rows.append(ids[start:start + seq_len])
            if len(rows) >= n_windows:
                return torch.tensor(rows, dtype=torch.long)
    raise ValueError(f"the texts gave only {len(rows)} windows of {seq_len} tokens; {n_windows} needed")


# -------------------------------------------------------------------------------------------------------- activations


def _act_file(act_dir: Path, site: str, layer: int) -> Path:
    return act_dir / f"{site}_layer{layer}.f16"


def _collect_range(model, windows: torch.Tensor, start: int, stop: int, sites, cfg: SAETrainConfig, act_dir: Path,
                   n_rows: int, bar=None, queue=None) -> None:
    """Forward windows[start:stop] in batches; write their rows into the (already created) float16 memmaps."""
    from ..activations import read_sites

    maps = {(s, l): np.memmap(_act_file(act_dir, s, l), dtype=np.float16, mode="r+", shape=(n_rows, model.d_model))
            for s in sites for l in range(model.n_layers)}
    first = int(cfg.skip_first)
    for rows in torch.arange(start, stop).split(cfg.forward_batch):
        ids = windows[rows].to(model.device)
        values, _ = read_sites(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, tuple(sites))
        lo = int(rows[0]) * cfg.rows_per_window
        hi = lo + len(rows) * cfg.rows_per_window
        for s in sites:
            for l, v in enumerate(values[s]):
                maps[(s, l)][lo:hi] = v[:, first:, :].reshape(-1, v.shape[-1]).float().cpu().numpy()
        if bar is not None:
            bar.update(len(rows) * cfg.rows_per_window)
        if queue is not None:
            queue.put(len(rows) * cfg.rows_per_window)
    for m in maps.values():
        m.flush()


def _collect_worker(args) -> None:
    model_name, windows, start, stop, sites, cfg_dict, act_dir, n_rows, queue = args
    torch.set_num_threads(1)
    from ..models import load_model

    model = load_model(model_name)
    cfg = SAETrainConfig(**{**cfg_dict, "sources": tuple(cfg_dict["sources"]) if cfg_dict["sources"] else None})
    _collect_range(model, windows, start, stop, sites, cfg, Path(act_dir), n_rows, queue=queue)


def _collect(model, windows: torch.Tensor, sites, cfg: SAETrainConfig, act_dir: Path, progress: bool,
             workers: int = 1) -> float:
    """Forward every window once, write each (site, layer)'s rows (position 0 skipped) to a float16 memmap.

    ``workers > 1`` (registry models only): that many single-threaded processes, each loading the model and
    handling a contiguous share of the windows (rows are written at fixed offsets, so the result is identical)."""
    from ..models import known_models

    act_dir.mkdir(parents=True, exist_ok=True)
    n_rows = len(windows) * cfg.rows_per_window
    for s in sites:
        for l in range(model.n_layers):
            np.memmap(_act_file(act_dir, s, l), dtype=np.float16, mode="w+", shape=(n_rows, model.d_model)).flush()
    t0 = time.perf_counter()
    bar = tqdm(total=n_rows, desc="activations (tokens)", unit="tok", unit_scale=True, disable=not progress)
    if workers > 1 and model.name in known_models() and len(windows) >= 2 * workers:
        ctx = mp.get_context("spawn")
        bounds = np.linspace(0, len(windows), workers + 1).astype(int)
        with ctx.Manager() as manager, ctx.Pool(workers) as pool:
            queue = manager.Queue()
            args = [(model.name, windows, int(a), int(b), tuple(sites), cfg.as_dict(), str(act_dir), n_rows, queue)
                    for a, b in zip(bounds[:-1], bounds[1:])]
            result = pool.map_async(_collect_worker, args)
            while not result.ready() or not queue.empty():
                try:
                    bar.update(queue.get(timeout=1.0))
                except Exception:  # queue.Empty
                    pass
            result.get()
    else:
        _collect_range(model, windows, 0, len(windows), sites, cfg, act_dir, n_rows, bar=bar)
    bar.close()
    return time.perf_counter() - t0


# -------------------------------------------------------------------------------------------------------- training


def _train_one(job: dict) -> dict:
    """Train, evaluate and save one SAE from its activation file (runs in a worker process or inline)."""
    torch.set_num_threads(job.get("threads", 1))
    cfg = SAETrainConfig(**{**job["config"], "sources": tuple(job["config"]["sources"])
                            if job["config"]["sources"] else None})
    d_in, n_train, n_eval = job["d_in"], job["n_train_rows"], job["n_eval_rows"]
    data = np.memmap(job["file"], dtype=np.float16, mode="r", shape=(n_train + n_eval, d_in))
    x_train = torch.from_numpy(np.asarray(data[:n_train], dtype=np.float32))
    x_eval = torch.from_numpy(np.asarray(data[n_train:n_train + n_eval], dtype=np.float32))
    del data
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + job["layer"])
    per_epoch = n_train // cfg.batch_size

    def batches():
        for _ in range(cfg.epochs):
            perm = torch.randperm(n_train, generator=gen)
            for b in range(per_epoch):
                yield x_train[perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]]

    t0 = time.perf_counter()
    sae, stats = train_topk_sae(batches(), d_in=d_in, d_sae=cfg.expansion * d_in, k=cfg.k, lr=cfg.lr,
                                n_steps=cfg.epochs * per_epoch, seed=cfg.seed, progress=False,
                                normalize_input=True)
    held_out = evaluate_sae(sae, x_eval.split(4096))
    seconds = time.perf_counter() - t0
    extra = {
        "model_name": job["model"], "site": job["site"], "layer": job["layer"], "hook_name": job["hook_name"],
        "explained_variance": held_out["explained_variance"], "l0": held_out["l0"],
        "dead_fraction": held_out["dead_fraction"], "mse": held_out["mse"],
        "train_explained_variance": stats["explained_variance"], "train_l0": stats["l0"],
        "train_dead_fraction": stats["dead_fraction"], "n_tokens": stats["n_tokens"],
        "n_unique_tokens": n_train, "n_eval_tokens": n_eval, "n_steps": stats["n_steps"], "seconds": seconds,
        "lr": stats["lr"], "input_scale": stats["input_scale"],
        "train_config": job["config"], "train_key": job["train_key"], "data_hash": job["data_hash"],
        "corpus": job["corpus"], "evaluation": "held-out tokens (not trained on); position 0 of each window skipped"
                                              if cfg.skip_first else "held-out tokens (not trained on)",
    }
    save_sae(sae, job["path"], cfg_extra=extra)
    return {"site": job["site"], "layer": job["layer"], "seconds": seconds}


def _hook_name(model, site: str, layer: int) -> str:
    arch = model.arch
    base = f"{arch.layers}.{layer}"
    return {"mlp_out": f"{base}.{arch.mlp}", "resid": base, "attn_out": f"{base}.{arch.attn}.{arch.o_proj}:input"}[site]


def _saved_matches(path: Path, train_key: str) -> bool:
    try:
        return (path / WEIGHTS_FILENAME).exists() and load_cfg(path).get("train_key") == train_key
    except (OSError, ValueError):
        return False


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
    workers: int = 2,
    progress: bool = True,
    keep_activations: bool = False,
    log=None,
) -> pd.DataFrame:
    """Train (or re-use) one TopK SAE per layer for each base site in ``sites``; returns :func:`sae_table`.

    ``texts``: the text source (default: the offline corpus, shuffled with ``config.corpus_seed``); the token
    windows are hashed, so a different corpus or tokenizer never re-uses a stale SAE. ``workers``: training
    processes (1: train in this process). See the module docstring for the pipeline and the default budget.
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
    data_hash = cache.data_hash(windows.flatten().tolist())
    if texts is None:
        from ..data.corpus import corpus_info

        info = corpus_info(sources=config.sources)
        corpus = {k: info[k] for k in ("version", "source", "licence", "n_chars", "fallback")}
    else:
        corpus = {"source": "texts given by the caller"}
    corpus["n_windows"] = n_windows
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
    collect_seconds = 0.0
    if jobs:
        act_dir = sae_root(root) / model.name / f"_activations_{data_hash}"
        need_sites = tuple(dict.fromkeys(j["site"] for j in jobs))
        log(f"SAE baselines for {model.name}: training {len(jobs)} SAEs ({len(reused)} re-used); "
            f"d_sae {config.expansion * model.d_model}, k {config.k}, {config.n_train_windows * config.rows_per_window:,}"
            f" training tokens x {config.epochs} epochs, {workers} worker(s)")
        try:
            collect_seconds = _collect(model, windows, need_sites, config, act_dir, progress, workers=workers)
            n_train_rows = config.n_train_windows * config.rows_per_window
            n_eval_rows = config.n_eval_windows * config.rows_per_window
            for j in jobs:
                j.update(file=str(_act_file(act_dir, j["site"], j["layer"])), d_in=model.d_model,
                         n_train_rows=n_train_rows, n_eval_rows=n_eval_rows, config=config.as_dict(),
                         model=model.name, hook_name=_hook_name(model, j["site"], j["layer"]), data_hash=data_hash,
                         corpus=corpus)
            bar = tqdm(total=len(jobs), desc="training SAEs", unit="sae", disable=not progress)
            if workers > 1:
                ctx = mp.get_context("spawn")
                with ctx.Pool(workers) as pool:
                    for done in pool.imap_unordered(_train_one, jobs):
                        bar.update(1)
                        bar.set_postfix(last=f"{done['site']} L{done['layer']} {done['seconds']:.0f}s")
            else:
                threads = torch.get_num_threads()
                try:
                    for j in jobs:
                        done = _train_one({**j, "threads": threads})
                        bar.update(1)
                        bar.set_postfix(last=f"{done['site']} L{done['layer']} {done['seconds']:.0f}s")
                finally:
                    torch.set_num_threads(threads)
            bar.close()
        finally:
            if not keep_activations:
                shutil.rmtree(act_dir, ignore_errors=True)
    table = sae_table(model, sites, root=root)
    table["reused"] = [(s, l) in reused for s, l in zip(table.site, table.layer)]
    table.attrs.update(collect_seconds=collect_seconds, total_seconds=time.perf_counter() - t_start,
                       n_trained=len(jobs), n_reused=len(reused))
    return table


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
    """Load and attach the saved SAEs as sites ``sae_{site}``; returns the model (modified in place)."""
    for s in sites:
        base = s[4:] if s.startswith("sae_") else s
        model.attach_saes("sae_" + base, load_sae_baselines(model, base, root=root, config=config))
    return model


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


def run_sae_benchmark(model, data: dict, *, methods=("relp", "ig-inputs"), sae_sites=("sae_mlp_out", "sae_resid"),
                      n_train: dict | None = None, log_sizes=None, linear_sizes=(), linear_sites=(), ig_steps: int = 10,
                      batch_size: int = 16, eval_batch_size: int = 128, cache_dir=None, refresh: bool = False,
                      log=None):
    """The paired SVA benchmark (counterfactual baseline, logit difference, mean ablation) on SAE sites.

    The SAE counterpart of :func:`neuronlib.sva_benchmark.run_benchmark` (whose ``Run`` accepts only the neuron-basis
    sites): it re-uses that module's cached attribution (:func:`~neuronlib.sva_benchmark.cached_attribution`), size
    sweep and result format, and stores everything under ``{cache}/sae_{fingerprint}``, so results of different SAEs
    never mix. ``n_train``: {method: pairs} (default: all loaded pairs). Returns
    (curves in :data:`neuronlib.sva_benchmark.COLUMNS`, {(template, method, "paired"): mean Attribution}, log frame).
    """
    log = log or logger.info
    from . import sva as svab

    base = Path(cache_dir) if cache_dir is not None else cache.results_dir()
    directory = base / f"sae_{sae_fingerprint(model, sae_sites)}"
    log_sizes = svab.LOG_SIZES if log_sizes is None else log_sizes
    n_train = dict(n_train or {})
    sites = tuple(s for s in ("sae_attn_out", "sae_mlp_out", "sae_resid") if s in sae_sites)
    curves, steps, attributions = [], [], {}
    for template, td in data.items():
        for method in methods:
            # Run() only validates neuron bases; cached_attribution reads its method / setting / n_train and takes
            # the sites separately, so the SAE sites go in ``sites``.
            run = svab.Run(method, ("mlp_out",), n_train=n_train.get(method))
            att, parts, step = svab.cached_attribution(model, template, td, run, sites, ig_steps=ig_steps,
                                                       batch_size=batch_size, directory=directory, refresh=refresh)
            steps.append(step)
            log(f"{template:>9} {method:>10} SAE attribution on {parts['n_train']} pairs "
                + ("(cached)" if step["cached"] else f"{step['compute_seconds']:.0f} s"))
            mean = att["mean"]
            attributions[(template, method, "paired")] = mean
            for basis in sites:
                total = int(mean[basis][0].numel())
                requested = svab.sweep_sizes(total, log_sizes, linear_sizes if basis in linear_sites else ())
                actual = sorted({min(k, total) for k in requested})
                eparts = dict(parts, basis=basis, ablation="mean", sizes=actual, test=cache.data_hash(td.test))
                ekey = cache.cache_key(**eparts)
                hit = (directory / "sva_eval" / f"{ekey}.pt").exists() and not refresh
                t0 = time.perf_counter()
                evaluated = cache.cached("sva_eval", ekey, svab._timed(lambda: evaluate_circuit(
                    model, mean, td.test, sites=(basis,), sizes=actual, mode="mean", metric="logit_diff",
                    batch_size=eval_batch_size, progress=False)), refresh=refresh, directory=directory)
                steps.append({"model": model.name, "template": template, "step": "evaluation", "method": method,
                              "setting": "paired", "basis": basis, "ablation": "mean", "n": len(td.test),
                              "cached": hit, "seconds": time.perf_counter() - t0,
                              "compute_seconds": evaluated["seconds"]})
                log(f"{template:>9} {method:>10} {basis:>11} {len(actual)} sizes "
                    + ("(cached)" if hit else f"{evaluated['seconds']:.0f} s"))
                by_size = evaluated["value"].query("group == 'all'").set_index("size")
                for k in requested:
                    row = by_size.loc[min(k, total)]
                    curves.append({"model": model.name, "template": template, "method": method, "basis": basis,
                                   "setting": "paired", "ablation": "mean", "k": k, "size": min(k, total),
                                   "total_nodes": total, "faithfulness": row.faithfulness,
                                   "completeness": row.completeness, "m_C": row.m_C, "m_Cbar": row.m_Cbar,
                                   "m_M": row.m_M, "m_empty": row.m_empty, "threshold": row.threshold,
                                   "n_train": parts["n_train"], "n_test": len(td.test)})
    return pd.DataFrame(curves, columns=svab.COLUMNS), attributions, pd.DataFrame(steps)


# -------------------------------------------------------------------------------------------------------- figures

BASIS_LABELS = {"mlp_acts": "MLP activations (neurons)", "mlp_out": "MLP outputs", "attn_out": "attention outputs",
                "resid": "residual stream", "sae_mlp_out": "SAE latents on MLP outputs",
                "sae_resid": "SAE latents on residual stream", "sae_attn_out": "SAE latents on attention outputs"}
FIG2_BASES = ("mlp_acts", "mlp_out", "attn_out", "resid", "sae_mlp_out", "sae_resid")


def plot_curves(ax, frame: pd.DataFrame, *, color, label, linestyle="-", linear=False):
    """Faithfulness (filled circles) and completeness (open squares) against circuit size on ``ax`` (one legend
    entry, on the faithfulness line)."""
    g = frame.sort_values("size")
    if linear:
        g = g[g["size"] <= 400]
    if not len(g):
        return
    ax.plot(g["size"], g.faithfulness, linestyle=linestyle, marker="o", color=color, label=label)
    ax.plot(g["size"], g.completeness, linestyle=linestyle, marker="s", mfc="white", color=color, alpha=0.85)


def fig_basis_comparison(curves: pd.DataFrame, *, methods=("ig-inputs", "relp"), bases=FIG2_BASES,
                         linear_bases=("mlp_acts", "sae_mlp_out", "sae_resid"), name: str = "fig2_basis_comparison",
                         directory=None, save: bool = True, title: str | None = None):
    """Figure 2: template-averaged faithfulness / completeness vs circuit size, one column per method, every basis
    in each panel (neuron-basis sites solid, SAE sites dashed); top row log axis, bottom row linear 0-400."""
    import matplotlib.pyplot as plt

    from .. import plotting
    from . import sva as svab

    avg = svab.average_curves(curves[(curves.setting == "paired") & (curves.ablation == "mean")])
    vals = pd.concat([avg.faithfulness, avg.completeness]).dropna()
    lo = max(-1.0, min(-0.1, float(vals.min()) - 0.05)) if len(vals) else -0.25
    hi = min(2.0, max(1.1, float(vals.max()) + 0.05)) if len(vals) else 1.25
    methods = [m for m in methods if m in set(avg.method)]
    with plotting.style():
        fig, axes = plt.subplots(2, len(methods), figsize=(5.6 * len(methods), 8.0), squeeze=False, sharey=True)
        for col, method in enumerate(methods):
            for row, linear in enumerate((False, True)):
                ax = axes[row][col]
                for basis in bases:
                    if linear and basis not in linear_bases:
                        continue
                    g = avg[(avg.method == method) & (avg.basis == basis)]
                    plot_curves(ax, g, color=plotting.COLORS.get(basis, "0.3"), label=BASIS_LABELS.get(basis, basis),
                                linestyle="--" if basis.startswith("sae_") else "-", linear=linear)
                if linear:
                    ax.set_xlim(0, 410)
                else:
                    ax.set_xscale("symlog", linthresh=1)
                    ax.set_xlim(left=0.8)
                for y in (0, 1):
                    ax.axhline(y, color="0.6", lw=0.7, ls=":")
                ax.axhline(0.8, color="0.75", lw=0.6, ls="--")
                ax.set_ylim(lo, hi)
                ax.set_xlabel("circuit size (nodes)")
                ax.set_title(svab.METHOD_LABELS.get(method, method) + (" (linear axis, 0-400)" if linear else ""))
            axes[0][col].legend(fontsize=6.5, loc="center left")
        axes[0][0].set_ylabel("faithfulness (filled circles, ideal 1)\ncompleteness (open squares, ideal 0)")
        axes[1][0].set_ylabel("faithfulness (filled circles, ideal 1)\ncompleteness (open squares, ideal 0)")
        models = ", ".join(sorted(set(curves.model)))
        fig.suptitle(title or f"SVA circuits by basis: neurons vs SAE latents ({models}; mean over "
                              f"{curves.template.nunique()} templates; paired, mean ablation)", y=1.0)
        fig.tight_layout()
    if save:
        plotting.save_figure(fig, name, directory=directory)
    return fig
