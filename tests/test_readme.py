"""Every command in the README's "## Use" section runs, and does what the text says it does (numbers included)."""
import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
pytestmark = pytest.mark.real_model


def use_section() -> str:
    text = README.read_text()
    start = text.index("## Use\n")
    return text[start:text.index("\n## ", start + 1)]


def python_block() -> str:
    blocks = re.findall(r"```python\n(.*?)```", use_section(), re.S)
    assert len(blocks) == 1
    return blocks[0]


def cli_lines() -> list[str]:
    return [c for c in re.findall(r"`(neuronlib [^`]+)`", use_section())]


def numbers(pattern: str, text: str) -> list[float]:
    match = re.search(pattern, text)
    assert match, f"README no longer states {pattern!r}"
    return [float(x) for x in match.groups()]


def run_cli(line: str):
    args = shlex.split(line)
    assert args[0] == "neuronlib"
    return subprocess.run([sys.executable, "-m", "neuronlib", *args[1:]], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def snippet():
    import torch

    torch.set_num_threads(1)
    code = python_block()
    namespace: dict = {}
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):
        exec(compile(code, "README.md (## Use)", "exec"), namespace)
    return code, namespace, shown.getvalue()


def test_attribution_lines(snippet):
    code, ns, _ = snippet
    att = ns["att"]
    (metric,) = numbers(r"logit\(\" are\"\) - logit\(\" is\"\) = ([\d.]+)", code)
    assert abs(float(att.metric[0]) - metric) < 0.01
    assert tuple(att["mlp_acts"].shape) == tuple(int(x) for x in numbers(r"# \((\d+), (\d+), (\d+), (\d+)\)", code))
    layer, unit = numbers(r"first L(\d+)/N(\d+) at", code)
    top = att.top(10).iloc[0]
    assert (top.layer, top.unit) == (layer, unit) and top.token.strip() == "cabinet"
    assert len(ns["circuit"]) == 100


def test_evaluation_lines(snippet):
    code, ns, _ = snippet
    curve = ns["curve"]
    faith = numbers(r"faithfulness ([\d.-]+) / ([\d.-]+) / ([\d.-]+)", code)
    complete = numbers(r"completeness ([\d.-]+) / ([\d.-]+) / ([\d.-]+)", code)
    assert list(curve["size"]) == [10, 100, 1000]
    assert np_close(curve["faithfulness"], faith) and np_close(curve["completeness"], complete)
    import neuronlib

    (only_circuit,) = numbers(r"\.metric\.mean\(\)  # ([\d.-]+): only the circuit", code)
    got = neuronlib.ablate(ns["model"], ns["test_pairs"], ns["circuit"], mode="mean", complement=True).metric.mean()
    assert abs(float(got) - only_circuit) < 0.01
    patched, before = numbers(r"# ([\d.-]+): the circuit's values from \"The key ...\" flip ([\d.-]+)", code)
    assert abs(float(neuronlib.patch(ns["model"], ns["pairs"], nodes=ns["circuit"]).metric[0]) - patched) < 0.01
    assert abs(float(ns["att"].metric[0]) - before) < 0.01


def np_close(values, stated, tol=0.01):
    return all(abs(float(v) - s) <= tol for v, s in zip(values, stated)) and len(list(values)) == len(stated)


def test_steering_visibly_steers(snippet):
    code, _, shown = snippet
    stated = numbers(r"p\(\" Texas\"\) ([\d.]+) / ([\d.]+) / ([\d.]+)", code)
    measured = [float(x) for x in re.findall(r"\s([01]\.\d+)\s*$", shown, re.M)]  # the p( Texas) column
    assert len(measured) == 3 and np_close(measured, stated)
    assert measured[0] < measured[1] / 3 and measured[2] > measured[1] + 0.1  # visibly: down at x0, up at x3
    assert "Arizona" in shown.splitlines()[1]  # at x0 the top answer changes


def test_cli_lines():
    lines = cli_lines()
    assert [line.split()[1] for line in lines] == ["trace", "steer", "doctor"]
    text = use_section()
    for line in lines:
        out = run_cli(line)
        assert out.returncode == 0, out.stderr
        if line.startswith("neuronlib trace"):
            (stated,) = numbers(r"\(logit_diff\s+\+([\d.]+)", text)
            first = out.stdout.splitlines()[0]
            assert f"logit_diff = +{stated:.2f}" in first
            assert len([l for l in out.stdout.splitlines() if l.strip().startswith("L")]) == 20
        elif line.startswith("neuronlib steer"):
            rows = out.stdout.strip().splitlines()
            assert [r.split()[0] for r in rows] == ["x0", "x1", "x3"]
            assert "' Arizona'" in rows[0].split(",")[0]  # the top token at x0
            assert "' Texas'" in rows[1].split(",")[0] and "' Texas'" in rows[2].split(",")[0]
        else:
            assert "sha256 verified" in out.stdout


def test_case_study_block_is_rendered_from_results():
    """The README's case-study numbers are exactly what neuronlib.paper.readme renders from results/."""
    from neuronlib.paper.readme import case_study_block, case_study_rows

    readme = (REPO / "README.md").read_text()
    assert case_study_rows(REPO / "results"), "results/ has no case-study tables"
    assert case_study_block(REPO / "results") in readme, (
        "README's case-study block differs from results/: run `python -m neuronlib.paper.readme --write README.md`")


def test_case_study_block_follows_the_tables(tmp_path):
    """Changing a table changes the rendered block (the block is not a typed copy)."""
    import shutil

    from neuronlib.paper.readme import case_study_block

    shutil.copytree(REPO / "results", tmp_path / "results")
    before = case_study_block(tmp_path / "results")
    path = tmp_path / "results" / "addition_accuracy.csv"
    text = path.read_text().replace(",100,83,0.83,", ",100,84,0.84,")
    assert text != path.read_text()
    path.write_text(text)
    assert case_study_block(tmp_path / "results") != before


def test_edge_rows_are_rendered_from_the_edge_tables(tmp_path):
    import pandas as pd

    from neuronlib.paper.readme import case_study_rows

    pool = {"pool_neurons": 1000.0, "n_train": 32, "faithfulness_all": 0.875, "faithfulness_all_lo": 0.625,
            "faithfulness_all_hi": 1.125}
    pd.DataFrame([{"weight": w, "template": t, "edges@F>=0.8": e, "edges@F>=0.8_lo": e / 2,
                   "edges@F>=0.8_hi": float("inf"), "total_edges": 123456, **pool}
                  for w, e in (("relevance", 4321.0), ("raw", 98765.0)) for t in ("within_rc", "pooled")]
                 ).to_csv(tmp_path / "edge_reach.csv", index=False)
    pd.DataFrame([{"template": "nounpp", "n_nodes": 42, "faithfulness": 0.5, "faithfulness_lo": 0.25,
                   "faithfulness_hi": 0.75, "completeness": 0.1, "completeness_lo": 0.0, "completeness_hi": 0.2}]
                 ).to_csv(tmp_path / "edge_single_prompt_check.csv", index=False)
    rows = {a: b for a, b, c in case_study_rows(tmp_path) if c == "04"}
    relevance = next(b for a, b in rows.items() if "relevance" in a)
    raw = next(b for a, b in rows.items() if "raw" in a)
    assert relevance == ("4,321 [2,160, ∞] of 123,456 edges (the paper: about 10⁵ on Llama-3.1-8B); the pool of "
                         "1,000 neurons itself: faithfulness 0.88 [0.62, 1.12]") and raw.startswith("98,765 [")
    pool_row = next(a for a in rows if "node pool" in a)
    assert "over 32 training prompts" in pool_row
    assert rows[pool_row] == "within_rc 0.88 [0.62, 1.12]; pooled 0.88 [0.62, 1.12]"
    single = next(b for a, b in rows.items() if "nounpp" in a)
    assert single == "42 neurons: faithfulness 0.50 [0.25, 0.75], completeness 0.10 [0.00, 0.20]"


def test_multihop_rows_are_rendered_from_their_tables(tmp_path):
    import pandas as pd

    from neuronlib.paper.readme import case_study_rows

    acc = [{"task": t, "split": "all", "n": 117, "correct": k, "accuracy": k / 117, "accuracy_lo": 0.1,
            "accuracy_hi": 0.9} for t, k in (("two_hop", 75), ("two_hop_chat", 13), ("city_to_country", 84),
                                             ("country_to_language", 95))]
    acc.append({"task": "direct", "split": "all", "n": 117, "correct": 69, "accuracy": 69 / 117, "accuracy_lo": 0.5,
                "accuracy_hi": 0.67})
    pd.DataFrame(acc).to_csv(tmp_path / "languages_accuracy.csv", index=False)
    pd.DataFrame([{"split": "all", "n": 117, "two_hop_correct": 75, "two_hop_accuracy": 75 / 117, "two_hop_lo": 0.55,
                   "two_hop_hi": 0.72, "direct_correct": 69, "direct_accuracy": 69 / 117, "direct_lo": 0.5,
                   "direct_hi": 0.67, "both": 65, "two_hop_only": 10, "direct_only": 4, "neither": 38,
                   "direct_given_two_hop": 65 / 75, "direct_given_two_hop_lo": 0.77, "direct_given_two_hop_hi": 0.93,
                   "difference": -0.05, "difference_lo": -0.12, "difference_hi": 0.01, "shortcut": True}]
                 ).to_csv(tmp_path / "languages_shortcut.csv", index=False)
    pd.DataFrame([{"size": 5, "group": "say a language", "success": 0.6, "success_lo": 0.4, "success_hi": 0.75,
                   "controls_max": 0.0, "controls_hi": 0.1, "beyond_controls": True}]
                 ).to_csv(tmp_path / "languages_steer_to_country_verdict.csv", index=False)
    dose = [{"task": "two_hop", "answer": "language", "kind": "other language", "where": w, "size": n, "pairs": 37,
             "success": s, "success_lo": max(s - 0.1, 0), "success_hi": min(s + 0.1, 1), "random_success": 0.0,
             "random_hi": 0.09, "beyond_random": s - 0.1 > 0.09}
            for w, ss in (("city tokens", (0.0, 0.5)), ("later positions", (0.0, 0.0))) for n, s in zip((10, 3000), ss)]
    pd.DataFrame(dose).to_csv(tmp_path / "languages_patch_dose.csv", index=False)
    rows = {a: b for a, b, c in case_study_rows(tmp_path)}
    acc_row = next(b for a, b in rows.items() if a.startswith("city → country → language"))
    assert "plain form 75/117 = 64%" in acc_row and "chat form 13/117 = 11%" in acc_row
    assert "direct city → language (no country step, the shortcut control) 69/117 = 59% [50%, 67%]" in acc_row
    shortcut = next(b for a, b in rows.items() if a.startswith("shortcut control"))
    assert shortcut.startswith("The direct prompt") and "65 (87% [77%, 93%])" in shortcut
    assert "The task admits a shortcut" in shortcut and "-5 points [-12, +1]" in shortcut
    steer = next(b for a, b in rows.items() if a.startswith("steering: say-a-language"))
    assert steer == "5 neurons: 60% [40%, 75%] vs controls ≤ 10% (beyond controls)"
    city = next(b for a, b in rows.items() if "dose curve at the city tokens" in a)
    assert city.startswith("N = 10: 0% [0%, 10%]; N = 3,000: 50% [40%, 60%]")
    reading = rows["what the patching supports"]
    assert reading.startswith("The top 3,000 nodes by |Δactivation| at the city tokens move it beyond random")
    assert "no set of up to 3,000 nodes at the later positions" in reading


def test_two_hop_capitals_rows_are_rendered_from_their_tables(tmp_path):
    import pandas as pd

    from neuronlib.paper.readme import case_study_rows

    acc = [{"task": t, "n": 50, "correct": k, "accuracy": k / 50, "accuracy_lo": 0.1, "accuracy_hi": 0.9}
           for t, k in (("two_hop", 7), ("two_hop_seeded", 16), ("two_hop_fact", 18), ("city_to_state", 40),
                        ("state_to_capital", 20))]
    pd.DataFrame(acc).to_csv(tmp_path / "capitals_qwen_accuracy.csv", index=False)
    pd.DataFrame([{"variant": "top 30", "site": "mlp_acts", "mean_units": 30.0, "successes": 3, "pairs": 40,
                   "success": 0.075, "success_lo": 0.02, "success_hi": 0.2},
                  {"variant": "resid after layer 7", "site": "resid", "mean_units": 1536.0, "successes": 30, "pairs": 40,
                   "success": 0.75, "success_lo": 0.6, "success_hi": 0.86}]
                 ).to_csv(tmp_path / "capitals_qwen_composition_summary.csv", index=False)
    pd.DataFrame([{"set": s, "multiplier": 0.0, "n": 9, "flip_to_state": f, "flip_to_state_lo": lo,
                   "flip_to_state_hi": hi, "not_capital": f, "not_capital_lo": lo, "not_capital_hi": hi}
                  for s, f, lo, hi in (("say a capital, top 5", 0.0, 0.0, 0.3), ("random 5", 0.0, 0.0, 0.3))]
                 ).to_csv(tmp_path / "capitals_qwen_flips.csv", index=False)
    pd.DataFrame([{"size": 30, "group": "top", "success": 0.075, "success_lo": 0.02, "success_hi": 0.2,
                   "controls_max": 0.0, "controls_hi": 0.09, "beyond_controls": False}]
                 ).to_csv(tmp_path / "capitals_qwen_composition_verdict.csv", index=False)
    rows = {a: b for a, b, c in case_study_rows(tmp_path)}
    acc_row = next(b for a, b in rows.items() if a.startswith("Qwen2.5-Coder-1.5B: city → state → capital"))
    assert acc_row.startswith("plain statement 18/50 = 36%") and "seeded \"Answer:\" 7/50 = 14%" in acc_row
    comp = next(b for a, b in rows.items() if a.startswith("Qwen2.5-Coder-1.5B: composition —"))
    assert comp.startswith("top 30 (~30 units): 3/40 = 8% [2%, 20%]; resid after layer 7 (~1536 units): 30/40")
    verdict = next(b for a, b in rows.items() if a.startswith("Qwen2.5-Coder-1.5B: composition, top-n"))
    assert verdict == "top 30: 8% [2%, 20%] vs controls ≤ 9% (not beyond controls)"
    assert not any(a.startswith("SmolLM2") for a in rows)  # no SmolLM2 tables here
    reading = rows["Qwen2.5-Coder-1.5B: what replicates"]
    assert reading.startswith("The model answers the two-hop prompt with the capital (36% [10%, 90%])")
    assert "top 5 say-a-capital neuron(s) (×0) does not flip the answer to the state beyond its controls" in reading
    assert "dense patch of the city token (resid after layer 7) moves the answer" in reading
    assert reading.endswith("at no size tested (up to 30 neurons).")


def test_smollm2_capitals_rows_come_from_its_tagged_tables_and_zero_successes_read_as_no(tmp_path):
    import pandas as pd

    from neuronlib.paper.readme import case_study_rows
    from neuronlib.stats import wilson_interval

    acc = []
    for t, k in (("two_hop", 0), ("two_hop_seeded", 2), ("two_hop_fact", 0), ("city_to_state", 14),
                 ("state_to_capital", 19)):
        lo, hi = wilson_interval(k, 50)
        acc.append({"task": t, "n": 50, "correct": k, "accuracy": k / 50, "accuracy_lo": lo, "accuracy_hi": hi})
    pd.DataFrame(acc).to_csv(tmp_path / "capitals_smollm2_accuracy.csv", index=False)
    rows = {a: b for a, b, c in case_study_rows(tmp_path)}
    assert not any(a.startswith("Qwen") for a in rows)
    acc_row = rows["SmolLM2-135M (appendix): city → state → capital, two-hop capital top-1"]
    assert acc_row.startswith("plain statement 0/50 = 0% [0%, 7%]")
    # Wilson's lower bound of 0 of 50 computes as ~1e-17: read as "does not answer", not as a positive bound
    assert rows["SmolLM2-135M (appendix): what replicates"].startswith(
        "The model does not answer the two-hop prompt (0% [0%, 7%])")
