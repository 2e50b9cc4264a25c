"""The README's case-study results, rendered from the tables in ``results/`` (never typed by hand).

``python -m neuronlib.paper.readme`` prints the Markdown block that sits between ``<!-- case-studies:start -->`` and
``<!-- case-studies:end -->`` in README.md; ``--write README.md`` replaces it in place. ``tests/test_readme.py``
checks the committed README against the tables. :func:`readme_table` renders the SVA results table, the block
between ``<!-- results-table:start -->`` and ``<!-- results-table:end -->`` (``--results-table`` prints it;
``tests/test_results.py`` checks it).
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.sva import TEMPLATES
from .style import METHOD_LABELS, fmt_size, headline_flags

START, END = "<!-- case-studies:start -->", "<!-- case-studies:end -->"


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _rate(row, value="accuracy", lo="accuracy_lo", hi="accuracy_hi", n=None, k=None) -> str:
    counts = f"{int(row[k])}/{int(row[n])} = " if n and k else ""
    return f"{counts}{_pct(row[value])} [{_pct(row[lo])}, {_pct(row[hi])}]"


def _read(results: Path, name: str) -> pd.DataFrame | None:
    path = results / f"{name}.csv"
    return pd.read_csv(path) if path.exists() else None


def _knockout_row(ko, study: str, what: str):
    ko = ko[ko.multiplier == 0.0]
    if "template" in ko.columns:
        ko = ko[ko.template == "state_to_capital"]
    group = ko[ko.set.str.startswith(study.replace("-", " "))]
    if not len(group):
        return None
    g = group.iloc[0]
    ctrl = ", ".join(f"{r['set']} {_rate(r, 'changed', 'changed_lo', 'changed_hi')}" for _, r in ko.iterrows()
                     if r["set"] != g["set"])
    return (f"knock-out (×0) of the {int(g.n_neurons)} {study} neurons, evaluation {what}: top answer changes "
            "(necessity, not steering)", _rate(g, "changed", "changed_lo", "changed_hi") + f"; controls: {ctrl}")


def _steer_row(v, study: str, target: str, what: str):
    if "template" in v.columns:
        v = v[v.template == "state_to_capital"]
    parts = [f"{int(r['size'])} neurons: {_rate(r, 'success', 'success_lo', 'success_hi')} vs controls ≤ "
             f"{_pct(r['controls_hi'])} ({'beyond' if bool(r['beyond_controls']) else 'not beyond'} controls)"
             for _, r in v.iterrows()]
    return (f"steering: {study} neurons set to their values on {what} prompts, top answer becomes {target} "
            "(evaluation prompts)", "; ".join(parts))


CAPITALS_MODELS = {"qwen": "Qwen2.5-Coder-1.5B", "smollm2": "SmolLM2-135M (appendix)"}  # table tag -> README label


def capitals_rows(results: str | Path = "results", tag: str = "qwen") -> list[tuple[str, str]]:
    """(study, result) rows of notebook 03's two-hop study on one model (tables ``capitals_{tag}_*``)."""
    results = Path(results)
    rows = []
    acc = _read(results, f"capitals_{tag}_accuracy")
    if acc is None:
        return rows
    a = acc.set_index("task")
    meta_model = CAPITALS_MODELS.get(tag, tag)
    rows.append((f"{meta_model}: city → state → capital, two-hop capital top-1",
                 "plain statement " + _rate(a.loc["two_hop_fact"], n="n", k="correct") + "; the paper's chat form, "
                 "seeded \"Answer: The capital is\" " + _rate(a.loc["two_hop_seeded"], n="n", k="correct")
                 + ", seeded \"Answer:\" " + _rate(a.loc["two_hop"], n="n", k="correct") + "; single hops: city → "
                 "state " + _rate(a.loc["city_to_state"]) + ", state → capital " + _rate(a.loc["state_to_capital"])))
    circuit = _read(results, f"capitals_{tag}_dallas_circuit")
    if circuit is not None:
        named = circuit.dropna(subset=["group"])
        rows.append((f"{meta_model}: the Dallas two-hop circuit (RelP, sum of top-5 logits, τ = 0.005; paper: 257 "
                     "neurons)", f"{len(circuit):,} nodes, {len(circuit[['layer', 'unit']].drop_duplicates()):,} "
                     "distinct neurons; named groups: " + ", ".join(f"{g} {n}" for g, n in
                                                                    named["group"].value_counts().items())))
    null = _read(results, f"capitals_{tag}_group_null")
    if null is not None:
        parts = [f"{r.group.split(' (')[0]}, {r.contrast} (null: {r.null}): {int(r.observed):,} neurons vs "
                 f"{r.null_mean:,.0f} under the null, p = {r.p_value:.3f}" for r in null.itertuples()]
        rows.append((f"{meta_model}: AUROC neuron groups beside permutation nulls (selection states)", "; ".join(parts)))
    flips = _read(results, f"capitals_{tag}_flips")
    if flips is not None:
        f0 = flips[flips.multiplier == 0.0]
        parts = [f"{r['set']}: {_rate(r, 'flip_to_state', 'flip_to_state_lo', 'flip_to_state_hi')} (no longer the "
                 f"capital {_rate(r, 'not_capital', 'not_capital_lo', 'not_capital_hi')})" for _, r in f0.iterrows()]
        n = int(f0["n"].max()) if len(f0) else 0
        rows.append((f"{meta_model}: say-a-capital neurons scaled to ×0 at their circuit positions (the paper's "
                     f"figure 8), top answer capital → state, {n} evaluation two-hop prompts", "; ".join(parts)))
    comp = _read(results, f"capitals_{tag}_composition_summary")
    if comp is not None:
        parts = [f"{r['variant']} (~{r['mean_units']:.0f} units): {int(r['successes'])}/{int(r['pairs'])} = "
                 f"{_rate(r, 'success', 'success_lo', 'success_hi')}" for _, r in comp.iterrows()]
        rows.append((f"{meta_model}: composition — units at the city token set to their values on another state's "
                     "two-hop prompt, top answer becomes that state's capital (evaluation pairs)", "; ".join(parts)))
    verdict = _read(results, f"capitals_{tag}_composition_verdict")
    if verdict is not None:
        parts = [f"top {int(r['size'])}: {_rate(r, 'success', 'success_lo', 'success_hi')} vs controls ≤ "
                 f"{_pct(r['controls_hi'])} ({'beyond' if bool(r['beyond_controls']) else 'not beyond'} controls)"
                 for _, r in verdict.iterrows()]
        rows.append((f"{meta_model}: composition, top-n neurons vs random / matched n", "; ".join(parts)))
    reading = capitals_reading(acc, flips, comp, verdict)
    if reading:
        rows.append((f"{meta_model}: what replicates", reading))
    return rows


def _positive(lower_bound) -> bool:
    """An interval's lower bound lies above 0 (the Wilson bound of 0 successes computes as ~1e-17, not 0)."""
    return float(lower_bound) > 1e-12


def capitals_reading(acc, flips=None, comp=None, verdict=None) -> str:
    """What of the paper's capitals study replicates, in words, from the two-hop study's tables (each claim decided
    by an interval: a rate whose lower bound is above 0, or a group's lower bound above its controls' upper bound)."""
    parts = []
    a = acc.set_index("task")
    if "two_hop_fact" in a.index:
        r = a.loc["two_hop_fact"]
        parts.append(("the model answers the two-hop prompt with the capital" if _positive(r["accuracy_lo"]) else
                      "the model does not answer the two-hop prompt") + f" ({_rate(r)})")
    if flips is not None and len(flips):
        f0 = flips[flips.multiplier == 0.0].set_index("set")
        groups = [s for s in f0.index if s.startswith("say a capital")]
        ctrl_hi = max((f0.loc[s, "flip_to_state_hi"] for s in f0.index if s not in groups), default=float("nan"))
        for s in groups:
            r = f0.loc[s]
            beyond = _positive(r["flip_to_state_lo"]) and r["flip_to_state_lo"] > ctrl_hi
            parts.append(f"removing {s.split(', ')[-1]} say-a-capital neuron(s) (×0) "
                         + ("flips the answer to the state, beyond its controls" if beyond else
                            "does not flip the answer to the state beyond its controls (the paper's figure-8 result "
                            "does not replicate)") + f" ({_rate(r, 'flip_to_state', 'flip_to_state_lo', 'flip_to_state_hi')}"
                         f" of {int(r['n'])} prompts)")
    if comp is not None and len(comp):
        dense = comp[comp["site"] == "resid"]
        if len(dense):
            best = dense.loc[dense["success"].idxmax()]
            parts.append(f"the dense patch of the city token ({best['variant']}) moves the answer to the other state's "
                         f"capital in {_rate(best, 'success', 'success_lo', 'success_hi')} of pairs")
    if verdict is not None and len(verdict):
        hit = verdict[verdict["beyond_controls"].astype(bool)]
        parts.append("swapping the top neurons at the city token composes beyond random and matched controls "
                     + (f"from {int(hit['size'].iloc[0]):,} neurons" if len(hit) else
                        f"at no size tested (up to {int(verdict['size'].max()):,} neurons)"))
    text = "; ".join(parts)
    return (text[0].upper() + text[1:] + ".") if text else ""


def case_study_rows(results: str | Path = "results") -> list[tuple[str, str, str]]:
    """(study, result, notebook) rows for every case-study table present in ``results``."""
    results = Path(results)
    rows = [(study, result, "03") for tag in CAPITALS_MODELS for study, result in capitals_rows(results, tag)]
    ko = _read(results, "languages_knockout_controls")
    row = _knockout_row(ko, "say-a-language", "two-hop prompts") if ko is not None else None
    if row:
        rows.append((*row, "05"))
    v = _read(results, "languages_steer_to_country_verdict")
    if v is not None:
        rows.append((*_steer_row(v, "say-a-language", "the country", "country-answer"), "05"))
    lang = _read(results, "languages_accuracy")
    if lang is not None:
        a = lang[lang.split == "all"].set_index("task") if "split" in lang.columns else lang.set_index("task")
        chat = (", chat form " + _rate(a.loc["two_hop_chat"], n="n", k="correct")) if "two_hop_chat" in a.index else ""
        rows.append(("city → country → language, two-hop prompt: language top-1",
                     "plain form " + _rate(a.loc["two_hop"], n="n", k="correct") + chat + "; city → country "
                     + _rate(a.loc["city_to_country"]) + ", country → language " + _rate(a.loc["country_to_language"])
                     + (("; direct city → language (no country step, the shortcut control) "
                         + _rate(a.loc["direct"], n="n", k="correct")) if "direct" in a.index else ""),
                     "05"))
    shortcut = _read(results, "languages_shortcut")
    if shortcut is not None:
        from .languages import shortcut_reading

        text = shortcut_reading(shortcut.set_index("split").loc["all"])
        rows.append(("shortcut control: the direct city → language prompt against the two-hop prompt, same cities",
                     text[0].upper() + text[1:], "05"))
    verdict = _read(results, "languages_composition_verdict")
    if verdict is not None:
        parts = [f"{int(r['size'])} neurons: {_rate(r, 'language_success', 'language_lo', 'language_hi')}"
                 for _, r in verdict.iterrows()]
        rows.append(("patching the country group at the city's tokens (other-language city): language follows the patch",
                     "; ".join(parts) + " (random / matched controls are listed in results/languages_patch_summary.csv)",
                     "05"))
    dose = _read(results, "languages_patch_dose")
    if dose is not None:
        from .languages import dose_reading

        d = dose[(dose.kind == "other language") & (dose.answer == "language")]
        for where, g in d.groupby("where", sort=False):
            g = g.sort_values("size")
            rows.append((f"patch dose curve at the {where}: the top-N nodes by |Δactivation| (other-language city), "
                         "language follows the patch",
                         "; ".join(f"N = {int(r['size']):,}: {_rate(r, 'success', 'success_lo', 'success_hi')}"
                                   for _, r in g.iterrows())
                         + f" (N random nodes: at most {_pct(g['random_success'].max())})", "05"))
        rows.append(("what the patching supports", dose_reading(dose, verdict), "05"))
    add = _read(results, "addition_accuracy")
    if add is not None:
        a = add.set_index(["task", "subset"])
        rows.append(("addition a + b (single digits), whole sum right",
                     _rate(a.loc[("whole sum", "all pairs")], "accuracy", "lo", "hi", n="n", k="correct"), "06"))
    nulls = _read(results, "addition_mod_null")
    if nulls is not None:
        m10 = nulls[nulls.family == "mod10"]
        for token, g in m10.groupby("token", sort=False):
            b = g[g.null == "operand-balanced"].iloc[0]
            sh = g[g.null == "label shuffle"].iloc[0]
            rows.append((f"sum-mod-10 neuron-label pairs (AUROC ≥ 0.8, summed over the 10 labels) replicated on "
                         f"held-out pairs, {token} ({int(b.pairs)} pairs): real labels vs the mean [95% range] of "
                         "the operand-balanced null (each class holds each operand at most once, as the real ones "
                         "do), the label-shuffle null beside it",
                         f"{int(b.replicated)} vs {b.replicated_null_mean:.1f} [{b.replicated_null_lo:.0f}, "
                         f"{b.replicated_null_hi:.0f}] (p = {b.replicated_p:.3f}, {int(b.draws)} draws): "
                         f"**{b.verdict}**; label shuffle {sh.replicated_null_mean:.1f} [{sh.replicated_null_lo:.0f}, "
                         f"{sh.replicated_null_hi:.0f}] (p = {sh.replicated_p:.3f})", "06"))
    ioi = _read(results, "ioi_accuracy")
    if ioi is not None and "order" in ioi.columns:
        ioi["template"] = ioi.template.astype(str)
        r = ioi[(ioi.template == "all") & (ioi.order == "all")].iloc[0]
        per = "; ".join(f"{order}: " + ", ".join(_pct(t.accuracy) for t in g.itertuples())
                        for order, g in ioi[ioi.template.str.isdigit()].groupby("order", sort=True))
        rows.append(("IOI: indirect object top-1", _rate(r, "accuracy", "lo", "hi", n="n", k="correct")
                     + f" (per template, by name order: {per})", "06"))
    sizes = _read(results, "ioi_sizes")
    if sizes is not None:
        names = {"mlp_acts": "neurons", "mlp_out": "MLP outputs"}
        per = sizes[sizes.design == "per template and order"]
        pooled = per[per.order == "pooled"].set_index("site")
        strata = per[per.order != "pooled"]
        parts = []
        for site, name in names.items():
            if site in pooled.index:
                r = pooled.loc[site]
                s = strata[strata.site == site]
                missed = int(s["size"].isna().sum())
                parts.append(f"{name} {fmt_size(r['size'], r['lo'], r['hi'])} (per stratum "
                             f"{fmt_size(s['size'].min())}–{fmt_size(s['size'].max())}"
                             + (f"; {missed} of {len(s)} strata do not reach it on the grid" if missed else "") + ")")
        if parts:
            r = pooled.iloc[0]
            rows.append((f"IOI nodes for faithfulness 0.8, attributed per template and name order, pooled over "
                         f"{len(strata.drop_duplicates(['template', 'order']))} (template, order) strata "
                         f"({int(r.n_test)} test pairs)", "; ".join(parts), "06"))
        mixed = sizes[(sizes.design == "orders mixed") & (sizes.order == "pooled")].set_index("site")
        parts = [f"{name} {fmt_size(mixed.loc[site, 'size'], mixed.loc[site, 'lo'], mixed.loc[site, 'hi'])}"
                 for site, name in names.items() if site in mixed.index]
        if parts:
            rows.append(("IOI nodes for faithfulness 0.8, both name orders attributed together (the design whose "
                         "signed scores can cancel), pooled, same test pairs", "; ".join(parts), "06"))
    reach = _read(results, "edge_reach")
    if reach is not None:
        pooled = reach[reach.template == "pooled"].set_index("weight")

        def pool(r):  # the node pool's own faithfulness: every edge kept
            if "faithfulness_all_lo" not in r:
                return ""
            return (f"; the pool of {fmt_size(r['pool_neurons'])} neurons itself: faithfulness {r.faithfulness_all:.2f} "
                    f"[{r.faithfulness_all_lo:.2f}, {r.faithfulness_all_hi:.2f}]")

        for weight, label in (("relevance", "relevance score (what the paper's released experiments prune by)"),
                              ("raw", "raw score v_s·∂v_t/∂v_s (the paper's text)")):
            if weight in pooled.index:
                r = pooled.loc[weight]
                rows.append((f"SVA edges for faithfulness 0.8, pooled over templates, {label}",
                             f"{fmt_size(r['edges@F>=0.8'], r['edges@F>=0.8_lo'], r['edges@F>=0.8_hi'])} of "
                             f"{fmt_size(r['total_edges'])} edges (the paper: about 10⁵ on Llama-3.1-8B){pool(r)}",
                             "04"))
        per = reach[reach.weight == reach.weight.iloc[0]].set_index("template")
        if "faithfulness_all_lo" in per.columns:
            source = f" over {int(per.n_train.iloc[0])} training prompts" if "n_train" in per.columns else ""
            rows.append((f"SVA edge graphs' node pool (top neurons by mean |RelP|{source} per template), every "
                         "edge kept: faithfulness on held-out prompts",
                         "; ".join(f"{t} {r.faithfulness_all:.2f} [{r.faithfulness_all_lo:.2f}, "
                                   f"{r.faithfulness_all_hi:.2f}]" for t, r in per.iterrows()), "04"))
    single = _read(results, "edge_single_prompt_check")
    if single is not None and len(single):
        r = single.iloc[0]
        rows.append((f"one prompt's drawn edge circuit ({r.template}) on every held-out prompt of its template",
                     f"{int(r.n_nodes)} neurons: faithfulness {r.faithfulness:.2f} [{r.faithfulness_lo:.2f}, "
                     f"{r.faithfulness_hi:.2f}], completeness {r.completeness:.2f} [{r.completeness_lo:.2f}, "
                     f"{r.completeness_hi:.2f}]", "04"))
    gate = _read(results, "sae_quality_gate")
    if gate is not None:
        for _, r in gate.iterrows():
            rows.append((f"SAE quality gate, {r.site} (explained variance ≥ {r.threshold:g} on the SVA prompts)",
                         f"{'passes' if bool(r.passes) else 'fails'}: min {r.ev_min:.2f}, median {r.ev_median:.2f}, "
                         f"{int(r.layers_failing)}/{int(r.layers)} layers below; without position 0: min "
                         f"{r.ev_no_pos0_min:.2f}", "01"))
    basis = _read(results, "basis_headline")
    if basis is not None:
        pooled = basis[(basis.template == "pooled") & (basis.setting == "paired") & (basis.eval_metric == "logit_diff")]
        for method, label in (("ig-inputs", "IG-10 on the inputs"), ("relp", "RelP")):
            p = pooled[pooled.method == method].set_index("basis")
            if not {"mlp_acts", "sae_mlp_out"} <= set(p.index):
                continue

            def size(b, t=0.8):
                r = p.loc[b]
                out = fmt_size(r[f"k@F>={t}"], r[f"k@F>={t}_lo"], r[f"k@F>={t}_hi"])
                if b.startswith("sae_"):
                    out += f" ({fmt_size(r[f'latents@F>={t}'])} of them latents)"
                return out

            parts = [f"{name} {size(b)}" for b, name in (("mlp_acts", "neurons"), ("sae_mlp_out", "SAE on MLP outputs"),
                                                        ("sae_resid", "SAE on the residual stream"),
                                                        ("mlp_out", "MLP outputs")) if b in p.index]
            rows.append((f"SVA nodes for faithfulness 0.8, pooled over templates, {label}: neurons vs SAE latents "
                         "(+ error nodes)", "; ".join(parts), "01"))
    return rows


def case_study_block(results: str | Path = "results") -> str:
    lines = [START, "", "| study | result (95% interval) | notebook |", "| --- | --- | --- |"]
    cell = lambda text: str(text).replace("|", "\\|")  # noqa: E731  (a literal | would end the cell)
    lines += [f"| {cell(a)} | {cell(b)} | {c} |" for a, b, c in case_study_rows(results)]
    return "\n".join(lines + ["", END])


def replace_block(text: str, block: str) -> str:
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise ValueError(f"README has no {START} ... {END} block")
    return pattern.sub(lambda _m: block, text)


# The README's results table: between <!-- results-table:start --> and <!-- results-table:end -->


def readme_table(results_dir, *, template_rows: bool = True) -> str:
    """The README's results table as Markdown, rendered from ``results/sva_headline.csv`` (and ``basis_headline``
    when present): per template and pooled, k at faithfulness 0.8 and 0.9 with 95 % bootstrap intervals, the
    completeness there and m(M) − m(∅). Numbers are formatted by :func:`readme_cells` so the test can re-derive them."""
    from .results import read_provenance, read_table

    results_dir = Path(results_dir)
    header = ["| model | method | basis | template | k @ F≥0.8 [95% CI] | completeness there | k @ F≥0.9 [95% CI] | "
              "completeness there | m(M) − m(∅) | flags |", "|---|---|---|---|---:|---:|---:|---:|---:|---|"]
    lines = []
    # notebook 02's table has the neuron bases; notebook 01's adds the SAE bases (its neuron rows are the same runs)
    for table, rows in (("sva_headline", README_ROWS), ("basis_headline", README_SAE_ROWS)):
        if not (results_dir / f"{table}.csv").exists():
            continue
        frame = read_table(table, results_dir)
        lines += header
        for row in readme_rows(frame, template_rows=template_rows, rows=rows):
            lines.append("| " + " | ".join(readme_cells(row)) + " |")
        meta = read_provenance(table, results_dir)
        lines.append("")
        lines.append(f"*`{table}`: run of {meta.get('date', '?')} at commit {meta.get('commit', '?')}, model "
                     f"{meta.get('model', '?')}.*")
        lines.append("")
        if table == "sva_headline":  # its other aggregates and crossing rules, and the IG check, right below it
            lines += aggregate_lines(frame)
            check = read_table("sva_ig_check", results_dir) if (results_dir / "sva_ig_check.csv").exists() else None
            if check is not None and "ig_variant" in check:  # (a table of the earlier, wide layout is not rendered)
                lines += ig_check_lines(check)
                meta = read_provenance("sva_ig_check", results_dir)
                lines += ["", f"*`sva_ig_check`: run of {meta.get('date', '?')} at commit {meta.get('commit', '?')}.*",
                          ""]
    if (results_dir / "sva_seed_summary.csv").exists():
        seeds = read_table("sva_seed_summary", results_dir)
        n = int(seeds.seeds.max())
        lines += [f"Across {n} data seeds (other draws and noun-group splits of the generator; RelP on the neurons, "
                  "paired): median [min, max] over the seeds, ∞ where a seed does not reach the threshold.", "",
                  "| model | template | k @ F≥0.8 | k @ F≥0.9 | m(M) − m(∅) | seeds |", "|---|---|---:|---:|---:|---|"]
        order = {t: i for i, t in enumerate((*TEMPLATES, "pooled"))}
        for _, r in seeds.sort_values("template", key=lambda c: c.map(order).fillna(9)).iterrows():
            ks = [fmt_size(r[f'k@F>={t}_median'], r[f'k@F>={t}_min'], r[f'k@F>={t}_max'])
                  for t in (0.8, 0.9)]
            lines.append(f"| {r.model} | {r.template} | {ks[0]} | {ks[1]} | {float(r.effect_median):.2f} "
                         f"[{float(r.effect_min):.2f}, {float(r.effect_max):.2f}] | {r.data_seeds} |")
        meta = read_provenance("sva_seed_summary", results_dir)
        lines += ["", f"*`sva_seed_summary`: run of {meta.get('date', '?')} at commit {meta.get('commit', '?')}.*"]
    return "\n".join(lines).rstrip() + "\n"


AGGREGATE_README_ROWS = (("relp", "mlp_acts"), ("ig-inputs", "mlp_acts"), ("relp", "mlp_out"), ("ig-inputs", "mlp_out"))


def aggregate_lines(headline, rows=AGGREGATE_README_ROWS, thresholds=(0.8, 0.9)) -> list[str]:
    """k at each threshold across templates under both aggregates (pooled: effect-weighted; template mean: the
    paper's unweighted mean of template curves) and both crossing rules (first crossing; stays at or above from
    there on), paired rows. The headline table above holds the pooled, first-crossing cell."""
    from ..stats import CROSSING_RULES
    from .sva import AGGREGATE_ROWS, HEADLINE_AGGREGATE, HEADLINE_CROSSING

    sel = headline[(headline.setting == "paired") & (headline.eval_metric == "logit_diff")
                   & (headline.ablation == "mean")]
    cols = [(a, rule) for a in AGGREGATE_ROWS for rule in CROSSING_RULES]
    names = [f"{AGGREGATE_ROWS[a]}, {rule.replace('_', ' ')}" + (" (headline)" if (a, rule) == (
        HEADLINE_AGGREGATE, HEADLINE_CROSSING) else "") for a, rule in cols]
    out = []
    for method, basis in rows:
        g = sel[(sel.method == method) & (sel.basis == basis)].set_index("template")
        if not all(AGGREGATE_ROWS[a] in g.index for a in AGGREGATE_ROWS):
            continue
        for t in thresholds:
            cells = []
            for a, rule in cols:
                r, col = g.loc[AGGREGATE_ROWS[a]], f"k@F>={t}|{rule}"
                cells.append(fmt_size(r[col], r[f"{col}_lo"], r[f"{col}_hi"]))
            model = g.iloc[0].model
            out.append(f"| {model} | {METHOD_LABELS.get(method, method)} | {basis} | F≥{t:g} | " + " | ".join(cells)
                       + " |")
    if not out:
        return []
    return ["", "Across templates, by aggregate and crossing rule (k [95% CI]; paired, mean ablation):", "",
            "| model | method | basis | threshold | " + " | ".join(names) + " |",
            "|---|---|---|---|" + "---:|" * len(cols), *out, ""]


def ig_check_lines(check) -> list[str]:
    """The per-site IG check beside the IG-on-inputs rows: per template and across templates, each variant's k at
    faithfulness 0.8 on the same few training pairs, their agreement and cost."""
    out = ["The IG rows above are IG-10 on the inputs. The paper's IG is per-site IG; both variants on the same "
           "few training pairs per template (neurons, paired; sizes compare with each other, not with the rows "
           "above):", "",
           "| model | template | IG variant | training pairs | k @ F≥0.8 [95% CI] | top-100 overlap | Spearman | "
           "s / pair |", "|---|---|---|---:|---:|---:|---:|---:|"]
    def num(v, fmt):
        return "—" if v is None or not np.isfinite(float(v)) else format(float(v), fmt)

    for r in check.to_dict("records"):
        out.append(f"| {r['model']} | {r['template']} | {r['ig_variant']} | {int(r['n_train'])} | "
                   f"{fmt_size(r['k@F>=0.8'], r['k@F>=0.8_lo'], r['k@F>=0.8_hi'])} | "
                   f"{num(r['top100_overlap'], '.2f')} | {num(r['spearman'], '.2f')} | "
                   f"{num(r['seconds_per_pair'], '.1f')} |")
    return out


README_ROWS = (("relp", "mlp_acts"), ("ig-inputs", "mlp_acts"), ("relp", "mlp_out"), ("ig-inputs", "mlp_out"),
               ("relp", "sae_mlp_out"), ("relp", "sae_resid"))
README_SAE_ROWS = tuple((m, b) for m in ("relp", "ig-inputs") for b in ("sae_mlp_out", "sae_resid"))


def readme_rows(frame, *, template_rows: bool = True, rows=None):
    sel = frame[(frame.setting == "paired") & (frame.eval_metric == "logit_diff") & (frame.ablation == "mean")]
    for method, basis in README_ROWS if rows is None else rows:
        g = sel[(sel.method == method) & (sel.basis == basis)]
        if not template_rows:
            g = g[g.template == "pooled"]
        order = {t: i for i, t in enumerate((*TEMPLATES, "pooled"))}
        yield from (r for _, r in g.sort_values("template", key=lambda s: s.map(order).fillna(9)).iterrows())


def readme_cells(row) -> list[str]:
    """The Markdown cells of one headline row (the format the README test parses back)."""
    flags = headline_flags(row)
    cells = [str(row.model), METHOD_LABELS.get(row.method, row.method), str(row.basis), str(row.template)]
    for t in (0.8, 0.9):
        cells.append(fmt_size(row[f'k@F>={t}'], row[f'k@F>={t}_lo'], row[f'k@F>={t}_hi']))
        c = float(row[f"completeness@F>={t}"])
        cells.append("—" if np.isnan(c) else f"{c:.2f}")
    cells.append(f"{float(row.effect):.2f} [{float(row.effect_lo):.2f}, {float(row.effect_hi):.2f}]")
    cells.append(", ".join(flags))
    return cells


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results")
    parser.add_argument("--write", metavar="README", help="replace the block in this file")
    parser.add_argument("--results-table", action="store_true", help="print the SVA results table and exit")
    args = parser.parse_args(argv)
    if args.results_table:
        print(readme_table(args.results), end="")
        return 0
    block = case_study_block(args.results)
    if args.write:
        path = Path(args.write)
        path.write_text(replace_block(path.read_text(), block))
    else:
        print(block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
