"""Scalar metrics of the next-token logits (METHOD.md §2), one value per example."""
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
            return metric(logits, batch)
        return Metric(getattr(metric, "__name__", "custom"), call)
    if metric == "logit_diff":
        a, p = need(answer, "clean_answer"), need(patch_answer, "patch_answer")
        return Metric("logit_diff", lambda lg, rows: _gather(lg, a, rows) - _gather(lg, p, rows))
    if metric == "logit":
        a = need(answer, "clean_answer")
        return Metric("logit", lambda lg, rows: _gather(lg, a, rows))
    if metric == "topk_logits":
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"topk_logits needs k >= 1, got {k!r}")
        return Metric(f"top{k}_logits", lambda lg, rows: lg.float().topk(k, dim=-1).values.sum(-1))
    raise ValueError(f"unknown metric {metric!r}; use one of {METRICS} or a callable(logits_BV, batch) -> [B]")


def _gather(logits_BV: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    idx = ids[rows.cpu()].to(logits_BV.device)
    return logits_BV.float().gather(-1, idx[:, None])[:, 0]
