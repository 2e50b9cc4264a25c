"""Normalising user data into examples: prompts, optional counterfactuals and answers, tokenised once."""
from __future__ import annotations

from dataclasses import dataclass

import torch

_CLEAN_KEYS = ("clean_prefix", "prompt", "clean")
_PATCH_KEYS = ("patch_prefix", "counterfactual", "patch")
_ANSWER_KEYS = ("clean_answer", "answer")
_PATCH_ANSWER_KEYS = ("patch_answer", "counterfactual_answer")


@dataclass
class Examples:
    clean: list[str]
    patch: list[str] | None = None
    answer: list[str] | None = None
    patch_answer: list[str] | None = None

    def __len__(self) -> int:
        return len(self.clean)


def _pick(row: dict, keys: tuple[str, ...]):
    for key in keys:
        if key in row and row[key] is not None:
            return row[key]
    return None


def records(data) -> list:
    """The one input normaliser: ``data`` as a list of rows (records or prompts).

    Accepts a list (or tuple) of records (dicts) or prompts (strings), a pandas DataFrame, a ``datasets.Dataset``,
    or a dict of equal-length columns ({"clean_prefix": [...], "clean_answer": [...]}); anything else (a single
    record, a set, a generator, a tensor, ...) is rejected by name with a ValueError."""
    kind = type(data).__name__
    if hasattr(data, "to_dict") and hasattr(data, "columns") and hasattr(data, "iloc"):  # pandas DataFrame
        return data.to_dict("records")
    if hasattr(data, "column_names") and hasattr(data, "features"):  # datasets.Dataset
        return [dict(r) for r in data]
    if isinstance(data, dict):
        columns = {k: v for k, v in data.items()}
        if not columns or not all(isinstance(v, (list, tuple)) for v in columns.values()):
            scalar = [k for k, v in columns.items() if not isinstance(v, (list, tuple))]
            raise ValueError(f"a dict is read as columns of equal length, but the values of {scalar[:3]} are not "
                             "lists; pass one record as [record] (a list of records)")
        lengths = {k: len(v) for k, v in columns.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"dict columns must have equal lengths, got {lengths}")
        n = next(iter(lengths.values()))
        return [{k: v[i] for k, v in columns.items()} for i in range(n)]
    if isinstance(data, (list, tuple)):
        rows = list(data)
        bad = sorted({type(r).__name__ for r in rows if not isinstance(r, (str, dict))})
        if bad:
            raise ValueError(f"a list of data must hold records (dicts) or prompts (strings), not {', '.join(bad)}")
        if any(isinstance(r, str) for r in rows) and any(isinstance(r, dict) for r in rows):
            raise ValueError("a list of data must hold only records (dicts) or only prompts (strings), not both")
        return rows
    raise ValueError(f"data of type {kind} is not supported: pass a list of records (dicts), a list of prompts, a "
                     "pandas DataFrame, a datasets.Dataset or a dict of equal-length columns")


def as_examples(data) -> Examples:
    """Accept a prompt, a list of prompts, a list of records (the community SVA format or {prompt, answer, ...}),
    a ``datasets.Dataset``, a pandas DataFrame, a dict of equal-length columns, or an :class:`Examples`
    (see :func:`records`)."""
    if isinstance(data, Examples):
        examples = data
    elif isinstance(data, str):
        examples = Examples(clean=[data])
    else:
        rows = records(data)
        if rows and all(isinstance(r, str) for r in rows):
            examples = Examples(clean=list(rows))
        elif rows:
            fields = [[_pick(r, keys) for r in rows]
                      for keys in (_CLEAN_KEYS, _PATCH_KEYS, _ANSWER_KEYS, _PATCH_ANSWER_KEYS)]
            if any(c is None for c in fields[0]):
                raise ValueError(f"every record needs a prompt under one of {_CLEAN_KEYS}; got keys {sorted(rows[0])}")
            clean, patch, answer, patch_answer = (
                None if all(v is None for v in col) else col for col in fields
            )
            for name, col in (("patch_prefix", patch), ("clean_answer", answer), ("patch_answer", patch_answer)):
                if col is not None and any(v is None for v in col):
                    raise ValueError(f"some records have {name} and some do not")
            examples = Examples(clean=clean, patch=patch, answer=answer, patch_answer=patch_answer)
        else:
            examples = Examples(clean=[])
    if len(examples) == 0:
        raise ValueError("the dataset is empty: nothing to attribute or evaluate")
    return examples


def as_int(value, what: str, *, minimum: int | None = None) -> int:
    """``value`` as an int: a Python or numpy integer (not a bool, a float or a string); ValueError naming ``what``
    and, with ``minimum``, the bound otherwise."""
    import operator

    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{what} must be an int, got {value!r} ({type(value).__name__})") from None
    if minimum is not None and number < minimum:
        raise ValueError(f"{what} must be {'positive' if minimum == 1 else f'>= {minimum}'}, got {number}")
    return number


# A warning above this estimate (GiB); $NEURONLIB_MEMORY_WARN_GB overrides it.
MEMORY_WARN_GB = 4.0
# Calibration (benchmarks/memory_long_prompt.py, benchmarks/results/memory_long_prompt.md): RelP on SmolLM2-135M's
# neurons, one prompt of 2,833 tokens (2,000 corpus words), 1 thread: the pass peaked 6.45 GiB above the resting RSS
# of the loaded model, where the uncalibrated count of tensors below gave 4.96 GiB (what torch and nnsight keep
# besides: saved intermediates of the backward, the gradient of the full logits, allocator slack). The count is scaled
# by that measured ratio. It also matches the reported 3,300-token prompt: 7.6 GiB + 0.95 resting = 8.5 GiB measured.
MEASURED_OVER_COUNTED = 6.45 / 4.96


def estimate_memory(model, batch: int, T: int, *, backward: bool = True) -> float:
    """Bytes one pass over ``batch`` prompts of ``T`` tokens needs beyond the loaded model, calibrated on a
    measurement (:data:`MEASURED_OVER_COUNTED`). ``backward=True``: an attribution pass (activations kept for the
    backward pass, per-node scores, the logits and their gradient, eager attention's [heads, T, T] per layer);
    ``backward=False``: a forward without gradients (ablate, patch, steer: the logits and one layer's values at a
    time; derived from the same count, not measured separately)."""
    cfg = model.config
    L, d, m = model.n_layers, model.d_model, model.d_mlp
    heads = getattr(cfg, "num_attention_heads", 1)
    elem = torch.finfo(model.dtype).bits // 8
    eager = getattr(cfg, "_attn_implementation", None) == "eager"
    logits = T * getattr(cfg, "vocab_size", 0) * 4
    if backward:
        per_token = L * (4 * m + 8 * d) * elem + L * (m + 3 * d) * 4  # activations + float32 scores
        attention = L * heads * T * T * elem * 3 if eager else 0
    else:
        per_token = (4 * m + 8 * d) * elem
        attention = heads * T * T * elem if eager else 0
    return float(batch * (T * per_token + attention + logits) * MEASURED_OVER_COUNTED)


def check_lengths(model, prepared_T: int, batch: int, prompts: list[str], *, backward: bool = True,
                  batch_option: bool = True) -> None:
    """ValueError if a prompt is longer than the model's context; a one-line warning if one pass (``batch``
    prompts of ``prepared_T`` tokens) needs more than $NEURONLIB_MEMORY_WARN_GB, with advice that fits the call:
    a smaller ``batch_size=`` (saying which fits) where one is in use and can be given, else a shorter prompt
    (saying how many tokens fit)."""
    import logging
    import os

    log = logging.getLogger(__name__)
    context = getattr(model.config, "max_position_embeddings", None)
    if context and prepared_T > context:
        raise ValueError(f"a prompt of {prepared_T} tokens is longer than {model.name}'s context of {context} tokens")
    need = estimate_memory(model, batch, prepared_T, backward=backward) / 2**30
    limit = float(os.environ.get("NEURONLIB_MEMORY_WARN_GB", MEMORY_WARN_GB))
    if need <= limit:
        return
    one = estimate_memory(model, 1, prepared_T, backward=backward) / 2**30
    what = "an attribution pass" if backward else "a forward pass"
    if batch > 1 and batch_option and one <= limit:
        advice = f"pass batch_size={max(1, int(limit // one))} (one prompt needs about {one:.1f} GiB)"
    else:
        fits = prepared_T
        while fits > 1 and estimate_memory(model, 1, fits, backward=backward) / 2**30 > limit:
            fits = int(fits * 0.9)
        advice = f"shorten the prompt (about {fits:,} tokens fit in {limit:g} GiB)"
    log.warning(f"{batch} prompt(s) of up to {prepared_T:,} tokens: {what} needs about {need:.1f} GiB beyond the "
                f"model; {advice}, or set NEURONLIB_MEMORY_WARN_GB to silence this")


def check_answers(examples: Examples) -> None:
    """Warn about answers that are probably not what the user means (no leading space after a word)."""
    import logging

    log = logging.getLogger(__name__)
    for col in (examples.answer, examples.patch_answer):
        if col is None:
            continue
        for i, (prompt, ans) in enumerate(zip(examples.clean, col)):
            if (isinstance(ans, str) and ans[:1].isalnum() and prompt and not prompt[-1].isspace()):
                log.warning(f"answer {ans!r} (example {i}) has no leading space: after {prompt[-12:]!r} the next "
                            f"word is usually the token {' ' + ans!r}")
                return


@dataclass
class Prepared:
    """Tokenised examples, all left-padded to one length T so positions line up across batches."""

    examples: Examples
    clean: dict[str, torch.Tensor]
    patch: dict[str, torch.Tensor] | None
    answer_id: torch.Tensor | None  # [B]
    patch_answer_id: torch.Tensor | None
    lengths: torch.Tensor  # [B] real token counts

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def T(self) -> int:
        return self.clean["input_ids"].shape[1]

    def rows(self, which: str, index: torch.Tensor) -> dict[str, torch.Tensor]:
        inputs = self.clean if which == "clean" else self.patch
        return {k: v[index] for k, v in inputs.items()}

    def repeat(self, times: int) -> "Prepared":
        """The examples ``times`` over (copy i is rows i*B .. (i+1)*B - 1): several circuits in one batched run."""
        def rep(x):
            if x is None:
                return None
            return x * times if isinstance(x, list) else x.repeat(times, *([1] * (x.dim() - 1)))

        ex = self.examples
        return Prepared(Examples(rep(ex.clean), rep(ex.patch), rep(ex.answer), rep(ex.patch_answer)),
                        {k: rep(v) for k, v in self.clean.items()},
                        None if self.patch is None else {k: rep(v) for k, v in self.patch.items()},
                        rep(self.answer_id), rep(self.patch_answer_id), rep(self.lengths))

    def tokens(self, tokenizer) -> list[list[str]]:
        ids = self.clean["input_ids"]
        return [[tokenizer.decode([t]) for t in ids[b, ids.shape[1] - int(n):].tolist()]
                for b, n in enumerate(self.lengths)]


def prepare(model, data, *, need_patch: bool = False, batch_size: int | None = None,
            backward: bool = False) -> Prepared:
    """Tokenise ``data`` (see :func:`as_examples`); ``batch_size`` and ``backward`` describe the passes that will
    run (for the memory warning of :func:`check_lengths`; ``batch_size=None``: every example in one pass, and no
    ``batch_size=`` option to advise)."""
    examples = as_examples(data)
    if need_patch and examples.patch is None:
        raise ValueError("this run needs counterfactual prompts (patch_prefix) for every example")
    prompts = examples.clean + (examples.patch or [])
    if any(not isinstance(p, str) or not p for p in prompts):
        raise ValueError("every prompt must be a non-empty string")
    for i, p in enumerate(prompts):
        try:
            p.encode("utf-8")
        except UnicodeEncodeError as err:  # lone surrogates: bytes that were not UTF-8 (e.g. a shell argument)
            raise ValueError(f"prompt {i} is not valid text: {p[max(0, err.start - 10):err.start]!r} is followed by "
                             "bytes that are not UTF-8; re-encode the prompt as UTF-8") from None
    check_answers(examples)
    enc = model.tokenize(prompts)
    n = len(examples)
    lengths = enc["attention_mask"].sum(1)
    check_lengths(model, int(enc["input_ids"].shape[1]), n if batch_size is None else min(n, batch_size), prompts,
                  backward=backward, batch_option=batch_size is not None)
    clean = {k: v[:n] for k, v in enc.items()}
    patch = None
    if examples.patch is not None:
        patch = {k: v[n:] for k, v in enc.items()}
        bad = (lengths[:n] != lengths[n:]).nonzero().flatten().tolist()
        if bad:
            i = bad[0]
            raise ValueError(
                f"clean and patch prompts must have the same token length for paired runs; example {i}: "
                f"{examples.clean[i]!r} has {int(lengths[i])} tokens, {examples.patch[i]!r} has {int(lengths[n + i])}"
                + (f" ({len(bad)} such examples)" if len(bad) > 1 else "")
            )
    answer_id = None if examples.answer is None else torch.tensor([model.token_id(a) for a in examples.answer])
    patch_answer_id = (
        None if examples.patch_answer is None else torch.tensor([model.token_id(a) for a in examples.patch_answer])
    )
    return Prepared(examples, clean, patch, answer_id, patch_answer_id, lengths[:n].cpu())
