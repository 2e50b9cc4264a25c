"""Reading site values without gradients: one batch, or the per-position mean over a dataset."""
from __future__ import annotations

from collections import defaultdict

import torch

from . import tracing


def read_sites(model, inputs, sites, metric=None):
    """Site values per (site, layer) as lists of [B, T, U] tensors, and ``metric(logits)`` (or None).

    SAE sites also give their error vectors under ``site + "/error"``."""
    values = defaultdict(list)

    def record(site, layer, v):
        values[site].append(v.detach())

    with torch.no_grad():
        return tracing.run(model, inputs, metric=metric, edit=record, sites=sites,
                           then=lambda m: (dict(values), None if m is None else m.detach().float().cpu()))


def mean_values(model, prepared, sites, *, which: str = "clean", batch_size: int = 32):
    """Per-position mean of each site over the prompts ``which`` ("clean" or "patch"), real tokens only.

    Returns {site: [per layer [T, U]]} in the left-padded layout of ``prepared``.
    """
    sums, count = None, torch.zeros(prepared.T)
    for rows in torch.arange(len(prepared)).split(batch_size):
        inputs = prepared.rows(which, rows)
        vals, _ = read_sites(model, inputs, sites)
        mask = inputs["attention_mask"].to(vals[sites[0]][0].dtype)[..., None]
        batch_sums = {s: [(v * mask.to(v.dtype)).sum(0) for v in vals[s]] for s in vals}
        sums = batch_sums if sums is None else {s: [a + b for a, b in zip(sums[s], batch_sums[s])] for s in vals}
        count += inputs["attention_mask"].sum(0).cpu()
    denom = count.clamp(min=1).to(model.device)[:, None]
    return {s: [v / denom.to(v.dtype) for v in sums[s]] for s in sums}
