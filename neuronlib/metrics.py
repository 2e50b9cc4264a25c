"""Scalar metrics of the next-token logits (docs/method.md §2), one value per example."""
from __future__ import annotations

from typing import Callable

import torch

METRICS = ("logit_diff", "logit", "topk_logits")


class Metric:
    """``metric(logits_BV, rows)`` -> [B]; ``rows`` index the examples (so answers follow repeated rows in IG)."""

    def __init__(self, name: str, fn: Callable, needs: tuple[str, ...] = ()):
        self.name, self.fn, self.needs = name, fn, needs

    def __call__(self, logits_BV: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return self.fn(logits_BV, rows)


def make_metric(metric, prepared, *, k: int = 5) -> Metric:
    answer, patch_answer = prepared.answer_id, prepared.patch_answer_id

    def need(ids, what):
        if ids is None:
            raise ValueError(f"metric {metric!r} needs {what} for every example")
        return ids

    if callable(metric):
        def call(logits, rows):
            batch = {"answer_id": None if answer is None else answer[rows.cpu()].to(logits.device),
                     "patch_answer_id": None if patch_answer is None else patch_answer[rows.cpu()].to(logits.device)}
            value = metric(logits, batch)
            return _check_values(value, len(rows), getattr(metric, "__name__", "metric"))
        return Metric(getattr(metric, "__name__", "custom"), call)
    if metric == "logit_diff":
        a, p = need(answer, "clean_answer"), need(patch_answer, "patch_answer")
        same = (a == p).nonzero().flatten().tolist()
        if same:
            ex = prepared.examples
            raise ValueError(f"example {same[0]}: the answer {ex.answer[same[0]]!r} equals the counterfactual "
                             f"answer, so logit_diff is 0 by construction ({len(same)} such example(s)); use "
                             "metric='logit' or a different patch_answer")
        return Metric("logit_diff", lambda lg, rows: _gather(lg, a, rows) - _gather(lg, p, rows))
    if metric == "logit":
        a = need(answer, "clean_answer")
        return Metric("logit", lambda lg, rows: _gather(lg, a, rows))
    if metric == "topk_logits":
        from .inputs import as_int

        k = as_int(k, "topk_logits' k", minimum=1)
        return Metric(f"top{k}_logits", lambda lg, rows: lg.float().topk(k, dim=-1).values.sum(-1))
    raise ValueError(f"unknown metric {metric!r}; use one of {METRICS} or a callable(logits_BV, batch) -> [B]")


def _check_values(value, batch: int, name: str) -> torch.Tensor:
    """A callable metric's output must be one finite-or-not number per example: a tensor of shape [B]."""
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"metric {name!r} returned a {type(value).__name__}; it must return a tensor [B] with one "
                         f"value per example (B = {batch})")
    if value.dim() == 2 and value.shape == (batch, 1):
        value = value[:, 0]
    if tuple(value.shape) != (batch,):
        raise ValueError(f"metric {name!r} returned shape {tuple(value.shape)} for a batch of {batch}; it must return "
                         f"one value per example, shape ({batch},) (a scalar would be broadcast to every example)")
    return value


def _gather(logits_BV: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    idx = ids[rows.cpu()].to(logits_BV.device)
    return logits_BV.float().gather(-1, idx[:, None])[:, 0]
