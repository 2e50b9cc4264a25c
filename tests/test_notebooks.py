"""Every numbered notebook executes end to end in SMOKE mode (papermill) into a temporary directory, with figures kept
out of figures/; committed notebooks carry no outputs or the full run's, never a SMOKE run's."""
import json

import pytest

from neuronlib.paper.reproduce import merge_injected_parameters, notebooks, run_notebook

BOOKS = notebooks()


def test_there_are_notebooks():
    assert BOOKS, "notebooks/ has no numbered notebooks"


def smoke_outputs(nb: dict) -> list[str]:
    """Why ``nb`` looks like a SMOKE run's output (empty when it has no outputs or a full run's)."""
    reasons = []
    params = nb.get("metadata", {}).get("papermill", {}).get("parameters", {})
    if params.get("SMOKE") is True:
        reasons.append("papermill metadata says SMOKE=True")
    for c in nb["cells"]:
        if c["cell_type"] != "code":
            continue
        src = "".join(c["source"])
        if "injected-parameters" in c.get("metadata", {}).get("tags", []) and "SMOKE = True" in src:
            reasons.append("an injected parameters cell sets SMOKE = True")
        if not c.get("outputs"):
            continue
        for o in c["outputs"]:
            text = "".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
            if "SMOKE=True" in text or "SMOKE = True" in text:
                reasons.append("an output says SMOKE=True")
                break
    return reasons


@pytest.mark.parametrize("path", BOOKS, ids=[p.stem for p in BOOKS])
def test_notebook_is_committed_without_smoke_outputs_and_with_parameters(path):
    """Committed notebooks have either no outputs or the full run's outputs, never a SMOKE run's."""
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert "parameters" in code[0].get("metadata", {}).get("tags", []), "first code cell must be tagged parameters"
    assert "SMOKE" in "".join(code[0]["source"]) and "MODEL" in "".join(code[0]["source"])
    assert "SMOKE = False" in "".join(code[0]["source"]), "the committed default must be the full run"
    assert not smoke_outputs(nb), f"{path.name} is committed with SMOKE outputs: {smoke_outputs(nb)}"


@pytest.mark.parametrize("path", BOOKS, ids=[p.stem for p in BOOKS])
def test_committed_notebook_has_one_parameters_cell(path):
    """papermill's injected-parameters cell is folded into the parameters cell by the runner: a reader's edit of the
    parameters cell is never undone by a hidden second assignment."""
    nb = json.loads(path.read_text())
    tags = [t for c in nb["cells"] for t in c.get("metadata", {}).get("tags", [])]
    assert "injected-parameters" not in tags and tags.count("parameters") == 1


def test_injected_parameters_are_merged_into_the_parameters_cell(tmp_path):
    def cell(source, tag):
        return {"cell_type": "code", "metadata": {"tags": [tag]}, "outputs": [], "source": source}

    nb = {"cells": [cell(['MODEL = "a"\n', "SMOKE = False\n", "N = [1,\n", "     2]  # sizes\n", "K = 3\n"],
                         "parameters"),
                    cell(["# Parameters\n", 'MODEL = "a"\n', "N = [5]\n", "K = 3.0\n"], "injected-parameters"),
                    {"cell_type": "code", "metadata": {}, "outputs": [], "source": ["print(N)\n"]}],
          "metadata": {"papermill": {"parameters": {"MODEL": "a", "N": [5], "K": 3.0}}}}
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(nb))
    assert merge_injected_parameters(path) == {"N": [5], "K": 3.0}
    out = json.loads(path.read_text())
    assert len(out["cells"]) == 2 and out["metadata"] == nb["metadata"]
    assert "".join(out["cells"][0]["source"]) == 'MODEL = "a"\nSMOKE = False\nN = [5]  # sizes\nK = 3.0\n'
    assert merge_injected_parameters(path) == {}  # nothing left to merge


def test_smoke_detection():
    clean = {"cells": [{"cell_type": "code", "source": ["SMOKE = False"], "metadata": {}, "outputs": []}]}
    full = {"cells": [{"cell_type": "code", "source": ["x"], "metadata": {},
                       "outputs": [{"output_type": "stream", "text": ["MODEL=smollm2-135m SMOKE=False"]}]}]}
    smoke = {"cells": [{"cell_type": "code", "source": ["x"], "metadata": {},
                        "outputs": [{"output_type": "stream", "text": ["MODEL=smollm2-135m SMOKE=True"]}]}]}
    injected = {"cells": [{"cell_type": "code", "source": ["SMOKE = True\n"], "outputs": [],
                           "metadata": {"tags": ["injected-parameters"]}}]}
    assert not smoke_outputs(clean) and not smoke_outputs(full)
    assert smoke_outputs(smoke) and smoke_outputs(injected)


@pytest.mark.notebook
@pytest.mark.parametrize("path", BOOKS, ids=[p.stem for p in BOOKS])
def test_notebook_runs_in_smoke_mode(path, tmp_path):
    committed = path.read_bytes()
    row = run_notebook(path, smoke=True, model="smollm2-135m", out_dir=tmp_path / "executed",
                       figures=tmp_path / "figures", log=lambda *a: None)
    assert path.read_bytes() == committed, "a SMOKE run must never rewrite the committed notebook"
    executed = json.loads((tmp_path / "executed" / path.name).read_text())
    errors = [o for c in executed["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    assert row["figures"], "a smoke run should still draw its figures (into the temporary directory)"


SHARED_PARAMETERS = ("MODEL", "SMOKE", "FIGURES_DIR", "CACHE_DIR", "RESULTS_DIR", "REFRESH")


@pytest.mark.parametrize("path", BOOKS, ids=[p.stem for p in BOOKS])
def test_parameters_cell_parses_cleanly_with_the_shared_names(path, caplog):
    """papermill reads every line of the parameters cell (no "Unable to parse line"), and every notebook takes the
    same names, which it hands to neuronlib.paper.notebook.setup."""
    from papermill.translators import PythonTranslator

    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    with caplog.at_level("WARNING", logger="papermill"):
        names = {p.name for p in PythonTranslator.inspect({"source": "".join(code[0]["source"])})}
    assert not [r for r in caplog.records if "Unable to parse" in r.getMessage()], caplog.text
    assert set(SHARED_PARAMETERS) <= names, f"missing parameters: {set(SHARED_PARAMETERS) - names}"
    assert any("setup(" in "".join(c["source"]) for c in code[1:3]), "the cell after the parameters calls setup()"
