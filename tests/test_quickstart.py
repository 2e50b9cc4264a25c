"""The course quickstart (notebooks/00_quickstart.ipynb): its parameters, its use of the public verbs, and the answers
to its three exercises (notebooks/00_quickstart_answers.py), run here on the tiny Llama.

The notebook itself runs in SMOKE mode in tests/test_notebooks.py, like every numbered notebook."""
import importlib.util
import json
import logging
import math
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOK = NOTEBOOKS / "00_quickstart.ipynb"
ANSWERS = NOTEBOOKS / "00_quickstart_answers.py"

# one tokenised length (5 words) in the tiny model's vocabulary, so positions align across pairs
TINY_TRAIN = [
    {"clean_prefix": "the keys to the cabinet", "patch_prefix": "the key to the cabinet",
     "clean_answer": " are", "patch_answer": " is"},
    {"clean_prefix": "the dogs near the boy", "patch_prefix": "the dog near the boy",
     "clean_answer": " have", "patch_answer": " has"},
    {"clean_prefix": "the friends behind the girl", "patch_prefix": "the friend behind the girl",
     "clean_answer": " do", "patch_answer": " does"},
]
TINY_TEST = [
    {"clean_prefix": "the uncles near the city", "patch_prefix": "the uncle near the city",
     "clean_answer": " are", "patch_answer": " is"},
    {"clean_prefix": "the chefs behind the dogs", "patch_prefix": "the chef behind the dogs",
     "clean_answer": " go", "patch_answer": " goes"},
    {"clean_prefix": "the managers of the state", "patch_prefix": "the manager of the state",
     "clean_answer": " have", "patch_answer": " has"},
]


def load_answers():
    spec = importlib.util.spec_from_file_location("quickstart_answers", ANSWERS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def notebook_code() -> list[str]:
    """The code cells as written (without the cell papermill injects when the committed full run was executed)."""
    nb = json.loads(NOTEBOOK.read_text())
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"
            and "injected-parameters" not in c.get("metadata", {}).get("tags", [])]


def test_files_exist_and_notebook_points_to_the_answers():
    assert NOTEBOOK.is_file() and ANSWERS.is_file()
    nb = json.loads(NOTEBOOK.read_text())
    markdown = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    exercises = markdown[markdown.index("## Exercises"):]
    assert "notebooks/00_quickstart_answers.py" in exercises
    for n in (1, 2, 3):
        assert f"\n{n}. **" in exercises, f"exercise {n} missing from the notebook"
    assert "\n4. **" not in exercises


def test_parameters_first_then_setup_and_papermill_parses_them(caplog):
    import papermill

    code = notebook_code()
    for name in ("MODEL", "SMOKE", "FIGURES_DIR", "CACHE_DIR", "RESULTS_DIR", "REFRESH"):
        assert f"{name} = " in code[0]
    assert "neuronlib.paper.notebook" in code[1] and "setup(" in code[1]
    with caplog.at_level(logging.WARNING):
        params = papermill.inspect_notebook(str(NOTEBOOK))
    assert not [r for r in caplog.records if "Unable to parse" in r.getMessage()]
    assert params["MODEL"]["default"] == '"smollm2-135m"' and params["SMOKE"]["default"] == "False"


def test_each_step_uses_the_public_verbs():
    code = "\n".join(notebook_code())
    for verb in ("neuronlib.load_model(", "neuronlib.attribute(", "describe(", "neuronlib.ablate(",
                 "neuronlib.patch(", "neuronlib.steer(", "neuronlib.attribute_edges(", ".save_html(", ".show()"):
        assert verb in code, verb
    assert all(len(cell.splitlines()) <= 25 for cell in notebook_code()), "code cells stay short"


@pytest.fixture(scope="module")
def answers():
    return load_answers()


def test_exercise_1_held_out_evaluation_with_intervals(answers, tiny_llama):
    import neuronlib

    sizes = (1, 5, 20)
    frame = answers.exercise_1(tiny_llama, TINY_TRAIN, TINY_TEST, sizes=sizes)
    assert list(frame["size"]) == list(sizes)
    # the pooled estimates are evaluate_circuit's own ratios (selected on TINY_TRAIN, measured on TINY_TEST)
    direct = neuronlib.evaluate_circuit(tiny_llama, neuronlib.attribute(tiny_llama, TINY_TRAIN, method="relp"),
                                        TINY_TEST, sizes=list(sizes), mode="mean")
    for name in ("faithfulness", "completeness"):
        assert frame[name].to_numpy() == pytest.approx(direct[name].to_numpy(), rel=1e-5, abs=1e-6)
        for est, lo, hi in zip(frame[name], frame[f"{name}_lo"], frame[f"{name}_hi"]):
            assert math.isfinite(est) and lo <= hi


def test_exercise_2_signs_are_the_active_side(answers, tiny_llama):
    frame = answers.exercise_2(tiny_llama, TINY_TRAIN[0], n=4)
    assert len(frame) == 4
    for label, activation in zip(frame["label"], frame["activation"]):
        assert label.endswith("-") == (activation < 0), (label, activation)
    assert all(len(p) == 5 for p in frame["promotes"])


def test_exercise_3_steering_by_one_changes_nothing(answers, tiny_llama):
    import neuronlib

    pair = TINY_TRAIN[0]
    frame = answers.exercise_3(tiny_llama, pair, n=3, multipliers=(0.0, 1.0, 4.0))
    assert set(frame["neurons"]) == {"supporting neurons", "random control"}
    plain = neuronlib.steer(tiny_llama, [pair["clean_prefix"]], [(0, 0)], multiplier=1.0).to_frame([" are", " is"])
    for _, row in frame[frame["multiplier"] == 1.0].iterrows():
        assert row["p( are)"] == pytest.approx(plain["p( are)"].iloc[0], abs=1e-6)
        assert row["p( is)"] == pytest.approx(plain["p( is)"].iloc[0], abs=1e-6)
    zeroed = frame[(frame["neurons"] == "supporting neurons") & (frame["multiplier"] == 0.0)]
    assert len(zeroed) == 1
