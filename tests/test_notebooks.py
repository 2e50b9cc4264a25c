"""Every numbered notebook executes end to end in SMOKE mode (papermill), with figures kept out of figures/."""
import json

import pytest

from neuronlib.paper.reproduce import notebooks, run_notebook

BOOKS = notebooks()


def test_there_are_notebooks():
    assert BOOKS, "notebooks/ has no numbered notebooks"


@pytest.mark.parametrize("path", BOOKS, ids=[p.stem for p in BOOKS])
def test_notebook_is_committed_clean_with_parameters(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert "parameters" in code[0].get("metadata", {}).get("tags", []), "first code cell must be tagged parameters"
    assert "SMOKE" in "".join(code[0]["source"]) and "MODEL" in "".join(code[0]["source"])
    assert not any(c.get("outputs") for c in code), "commit notebooks with outputs cleared"


@pytest.mark.notebook
@pytest.mark.parametrize("path", BOOKS, ids=[p.stem for p in BOOKS])
def test_notebook_runs_in_smoke_mode(path, tmp_path):
    row = run_notebook(path, smoke=True, model="smollm2-135m", out_dir=tmp_path / "executed",
                       figures=tmp_path / "figures", log=lambda *a: None)
    executed = json.loads((tmp_path / "executed" / path.name).read_text())
    errors = [o for c in executed["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    assert row["figures"], "a smoke run should still draw its figures (into the temporary directory)"
