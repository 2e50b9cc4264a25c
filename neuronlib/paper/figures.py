"""Every paper figure, drawn from the tidy tables in ``results/`` (never from a model), so ``make figures``
re-draws them all in seconds and they can be restyled without recomputing.

Each function takes DataFrames (as read by :func:`neuronlib.paper.results.read_table`) and returns a matplotlib
figure; :func:`draw_all` maps table names to figure functions. Sections below are one per study.
"""
from __future__ import annotations
