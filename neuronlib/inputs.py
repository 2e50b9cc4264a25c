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


def as_examples(data) -> Examples:
    """Accept a prompt, a list of prompts, a list of records (the community SVA format or {prompt, answer, ...}),
    a ``datasets.Dataset`` or a pandas DataFrame, or an :class:`Examples`."""
    if isinstance(data, Examples):
        examples = data
    elif isinstance(data, str):
        examples = Examples(clean=[data])
    else:
        if hasattr(data, "to_dict") and hasattr(data, "columns"):  # pandas
            rows = data.to_dict("records")
        elif hasattr(data, "column_names"):  # datasets.Dataset
            rows = [dict(r) for r in data]
        else:
            rows = list(data)
        if rows and all(isinstance(r, str) for r in rows):
            examples = Examples(clean=list(rows))
        elif rows and all(isinstance(r, dict) for r in rows):
            fields = [[_pick(r, keys) for r in rows] for keys in (_CLEAN_KEYS, _PATCH_KEYS, _ANSWER_KEYS, _PATCH_ANSWER_KEYS)]
            if any(c is None for c in fields[0]):
                raise ValueError(f"every record needs a prompt under one of {_CLEAN_KEYS}")
            clean, patch, answer, patch_answer = (
                None if all(v is None for v in col) else col for col in fields
            )
            for name, col in (("patch_prefix", patch), ("clean_answer", answer), ("patch_answer", patch_answer)):
                if col is not None and any(v is None for v in col):
                    raise ValueError(f"some records have {name} and some do not")
            examples = Examples(clean=clean, patch=patch, answer=answer, patch_answer=patch_answer)
        elif not rows:
            examples = Examples(clean=[])
        else:
            raise ValueError("data must be a prompt, a list of prompts or a list of records (dicts)")
    if len(examples) == 0:
        raise ValueError("the dataset is empty: nothing to attribute or evaluate")
    return examples


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
        return [[tokenizer.decode([t]) for t in ids[b, ids.shape[1] - int(n):].tolist()] for b, n in enumerate(self.lengths)]


def prepare(model, data, *, need_patch: bool = False) -> Prepared:
    examples = as_examples(data)
    if need_patch and examples.patch is None:
        raise ValueError("this run needs counterfactual prompts (patch_prefix) for every example")
    prompts = examples.clean + (examples.patch or [])
    if any(not isinstance(p, str) or not p for p in prompts):
        raise ValueError("every prompt must be a non-empty string")
    enc = model.tokenize(prompts)
    n = len(examples)
    lengths = enc["attention_mask"].sum(1)
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
