"""The figure registry: every file in figures/ has one recipe, `make figures` re-draws the committed files from the
committed tables byte for byte, and restyling (rc, colours, the user's own rcParams) works without editing code."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest

from neuronlib.paper import figures as F
from neuronlib.paper import style

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIGURES, RESULTS = REPO / "figures", REPO / "results"
# circuit graphs: their notebooks draw them from the model; no results/ table holds them yet
GRAPH_FIGURES = {"quickstart_circuit", "sva_edge_circuit"}


def _files():
    return sorted(p for p in FIGURES.iterdir() if p.is_file() and not p.name.startswith("."))


def test_every_committed_figure_has_exactly_one_recipe():
    registry = F.figure_registry()
    for path in _files():
        owners = [name for name, r in registry.items() if path.stem == name and path.suffix[1:] in (*r.formats, *r.kept)]
        assert len(owners) == 1, f"{path.name}: recipes {owners}"
    # and every recipe's files are committed, its tables too
    for name, recipe in registry.items():
        for ext in (*recipe.formats, *recipe.kept):
            assert (FIGURES / f"{name}.{ext}").is_file(), f"{name}.{ext} is registered but not in figures/"
        for table in (*recipe.tables, *recipe.named.values()):
            assert (RESULTS / f"{table}.csv").is_file(), f"{name} reads {table}, which is not in results/"
    assert {n for n, r in registry.items() if r.function is None} == GRAPH_FIGURES


@pytest.mark.slow  # about a minute on 2 cores: left out of `make test-fast`
def test_make_figures_reproduces_every_committed_figure(tmp_path):
    out = tmp_path / "figures"
    # a matplotlib config folder of its own: a user's matplotlibrc would (rightly) restyle the figures
    env = dict(os.environ, MPLBACKEND="Agg", MPLCONFIGDIR=str(tmp_path / "mpl"), PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "neuronlib.paper.figures", "--results", str(RESULTS), "--figures",
                           str(out)], capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    drawn = sorted(p.name for p in out.iterdir())
    registry = F.figure_registry()
    expected = sorted(p.name for p in _files() if p.stem not in GRAPH_FIGURES
                      and p.suffix[1:] not in registry.get(p.stem, F.Recipe(None)).kept)
    assert drawn == expected  # nothing missing, nothing extra (the graphs are left alone)
    differ = [name for name in drawn if (out / name).read_bytes() != (FIGURES / name).read_bytes()]
    assert not differ, f"make figures draws these differently from the committed files: {differ}"


def test_user_rcparams_survive_and_rc_overrides_win():
    user = {"axes.titlesize": 19.0, "axes.labelsize": 15.0, "font.size": 13.0}
    with plt.rc_context(user):
        fig = F.draw("fig6_edge_pruning", RESULTS)
        ax = fig.axes[0]
        assert ax.title.get_fontsize() == 19.0 and ax.xaxis.label.get_fontsize() == 15.0
        assert not ax.spines["top"].get_visible()  # what the user left at matplotlib's default gets the project's
        plt.close(fig)
        fig = F.draw("fig6_edge_pruning", RESULTS, rc={"axes.titlesize": 7.0})
        assert fig.axes[0].title.get_fontsize() == 7.0  # an explicit rc beats the user's setting
        plt.close(fig)
        assert matplotlib.rcParams["font.size"] == 13.0 and matplotlib.rcParams["axes.titlesize"] == 19.0
    assert matplotlib.rcParams["axes.spines.top"]  # nothing leaks out of a draw


def test_project_style_applies_on_matplotlib_defaults():
    with plt.rc_context(matplotlib.rcParamsDefault):
        fig = F.draw("fig6_edge_pruning", RESULTS)
        assert fig.axes[0].title.get_fontsize() == style.STYLE["axes.titlesize"]
        plt.close(fig)


def test_colour_override_and_graph_recipes():
    fig = F.draw("fig1_sva_faithfulness", RESULTS, colors={"relp": "#000000"}, title="mine")
    colours = {line.get_color() for ax in fig.axes for line in ax.get_lines()}
    assert "#000000" in colours and style.COLORS["relp"] not in colours
    assert fig.get_suptitle() == "mine"
    plt.close(fig)
    assert style.color("relp") == style.COLORS["relp"]  # the override ended with the draw
    with pytest.raises(ValueError, match="circuit graph"):
        F.draw("sva_edge_circuit", RESULTS)


def test_missing_results_folder_fails_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "neuronlib.paper.figures", "--results", str(tmp_path / "none"),
                           "--figures", str(tmp_path / "figures")], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=str(REPO)), cwd=REPO)
    assert proc.returncode != 0 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "no results folder" in proc.stderr
    assert not (tmp_path / "figures").exists()


def test_a_notebook_session_draws_by_name_the_committed_file(tmp_path):
    from neuronlib.paper.notebook import Session

    session = Session(model_name="smollm2-135m", smoke=True, figures=tmp_path, results=RESULTS, cache=None,
                      refresh=False, threads=1)
    with plt.rc_context(matplotlib.rcParamsDefault):  # as a fresh kernel starts
        paths = session.figure("fig6_edge_pruning")
    assert [p.name for p in paths] == ["fig6_edge_pruning.png", "fig6_edge_pruning.pdf"]
    for p in paths:
        assert p.read_bytes() == (FIGURES / p.name).read_bytes()


def test_font_size_scales_every_text_and_a_style_sheet_is_honoured():
    def sizes(fig):
        ax = fig.axes[0]
        return (fig._suptitle.get_fontsize(), ax.title.get_fontsize(),  # matplotlib has no public getter
                ax.xaxis.label.get_fontsize(), ax.get_xticklabels()[0].get_fontsize(),
                fig.legends[0].get_texts()[0].get_fontsize())

    with plt.rc_context(matplotlib.rcParamsDefault):
        base = sizes(F.draw("fig1_sva_faithfulness", RESULTS))
        big = sizes(F.draw("fig1_sva_faithfulness", RESULTS, rc={"font.size": 15.0}))
        with plt.rc_context({"font.size": 15.0}):  # the user's own font size, no rc=
            users = sizes(F.draw("fig1_sva_faithfulness", RESULTS))
        plt.close("all")
    assert base[1:] == (11.0, 10.0, 10.0, 8.0) and base[0] == 9.0
    assert big == users == tuple(1.5 * s for s in base)  # suptitle, titles, labels, ticks and legend alike
    with plt.style.context("ggplot"):  # a style sheet: its colours and grid stay
        fig = F.draw("fig1_sva_faithfulness", RESULTS)
        face = matplotlib.colors.to_hex(fig.axes[0].get_facecolor())
        assert face == matplotlib.colors.to_hex(matplotlib.rcParams["axes.facecolor"]) != "#ffffff"
        plt.close(fig)


def test_single_panel_figures_draw_into_your_axes_and_multi_panel_ones_refuse_them():
    from neuronlib.paper.results import read_table

    fig, (left, right) = plt.subplots(1, 2)
    drawn = F.draw("fig9a_language_accuracy", RESULTS, ax=right, colors={"all": "#000000"})
    assert drawn is fig and len(fig.axes) == 2 and not left.patches
    bars = [p for p in right.patches if matplotlib.colors.to_hex(p.get_facecolor()) == "#000000"]
    assert bars and right.get_title().startswith("city → country → language")
    assert F.draw("fig8f_composition", RESULTS, ax=left) is fig and left.get_lines()
    plt.close(fig)
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match="fig_faithfulness draws several panels"):
        F.draw("fig1_sva_faithfulness", RESULTS, ax=ax)
    with pytest.raises(ValueError, match="takes no ax="):
        F.fig_edge_pruning(read_table("edge_pruning", RESULTS), ax=ax)
    assert not ax.lines and len(plt.get_fignums()) == 1  # nothing drawn, no stray figure
    plt.close(fig)


def test_readme_restyle_snippet_runs_and_restyles(tmp_path, monkeypatch):
    import re

    text = (REPO / "README.md").read_text()
    start = text.index("## Restyle a figure\n")
    section = text[start:text.index("\n## ", start + 1)]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    (results := tmp_path / "results").symlink_to(RESULTS)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    with plt.rc_context(matplotlib.rcParamsDefault):
        exec(compile(code, "README.md (## Restyle a figure)", "exec"), namespace)
    fig = namespace["fig"]
    (size,) = re.findall(r'"font\.size": (\d+)', code)
    (colour,) = re.findall(r'colors=\{"relp": "(\w+)"\}', code)
    assert fig.axes[0].title.get_fontsize() == 11.0 * int(size) / 10
    lines = {matplotlib.colors.to_hex(line.get_color()) for ax in fig.axes for line in ax.get_lines()}
    assert matplotlib.colors.to_hex(colour) in lines and style.COLORS["relp"] not in lines
    (saved,) = re.findall(r'savefig\("([^"]+)"\)', code)
    assert (tmp_path / saved).stat().st_size > 10_000 and results.is_symlink()
    plt.close(fig)
