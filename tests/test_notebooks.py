"""Committed notebooks follow the conventions: named NN_snake_case, stripped, thin, parameters + Colab badge,
the install cell verbatim, no metric computed in a notebook, a phantom fallback, figures displayed."""

import re
from pathlib import Path

import nbformat
import pytest

from covidct.notebook_tools import (
    INSTALL_SOURCE,
    SOURCE_URL,
    colab_badge,
    convention_problems,
    rendering_problems,
    strip_outputs,
)

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))

PARAMETERS = '''# parameters
import os
SMOKE = os.environ.get("COVIDCT_SMOKE", "0") == "1"
DATASET = "sars-cov-2-ct"
DATA_ROOT = os.environ.get("COVIDCT_DATA_ROOT", "data")
OUTPUT_ROOT = "runs/notebooks"'''


def cell(kind: str, source: str, *tags: str):
    made = nbformat.v4.new_markdown_cell(source) if kind == "md" else nbformat.v4.new_code_cell(source)
    if tags:
        made.metadata["tags"] = list(tags)
    return made


def good_cells() -> list:
    return [
        cell("md", "# 98 · Good\n\n" + colab_badge("98_good.ipynb")),
        cell("code", INSTALL_SOURCE),
        cell("code", PARAMETERS, "parameters"),
        cell("code", "from covidct.data.datasets import choose_data\nDATA = choose_data(DATASET, DATA_ROOT)\nprint(DATA)"),
        cell("code", "from covidct.evaluate.metrics import binary_auc\nprint(binary_auc([0, 1], [0.2, 0.9]))"),
        cell("code", "display(plot_roc_curves(y, probs, names))", "figure"),
    ]


def write(tmp_path, cells, name="98_good.ipynb") -> Path:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = cells
    path = tmp_path / name
    nbformat.write(notebook, path)
    return path


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_follows_conventions(path):
    assert convention_problems(path) == []


def test_notebooks_exist_and_are_numbered_uniquely():
    numbers = [p.name[:2] for p in NOTEBOOKS]
    assert "00" in numbers, "notebooks/00_quickstart.ipynb is the entry point"
    assert len(numbers) == len(set(numbers)), f"duplicate notebook numbers: {numbers}"


def test_install_cell_installs_from_the_projects_source_url():
    urls = (REPO / "pyproject.toml").read_text().split("[project.urls]")[1].split("\n[")[0]
    source = re.search(r'^Source\s*=\s*"([^"]+)"', urls, flags=re.MULTILINE).group(1)
    assert SOURCE_URL == source
    assert f'"git+{source}.git"' in INSTALL_SOURCE


def test_checker_catches_outputs_and_logic(tmp_path):
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_markdown_cell("# t"),
        nbformat.v4.new_code_cell("def f():\n    return 1", execution_count=3),
    ]
    notebook.cells[1].outputs = [nbformat.v4.new_output("stream", text="1")]
    path = tmp_path / "bad name.ipynb"
    nbformat.write(notebook, path)
    problems = convention_problems(path)
    joined = "\n".join(problems)
    for expected in ("NN_snake_case", "has outputs", "defines a function", "parameters", "Colab"):
        assert expected in joined
    assert strip_outputs(path) is True
    assert strip_outputs(path) is False
    assert not any("has outputs" in p for p in convention_problems(path))


def test_a_notebook_that_follows_every_convention_passes(tmp_path):
    assert convention_problems(write(tmp_path, good_cells())) == []


@pytest.mark.parametrize("source", [
    "from sklearn.metrics import roc_auc_score",
    "import sklearn.metrics as skm",
    "from sklearn import metrics",
    "score = f1_score(y, predicted, average='macro')",
    "print(roc_auc_score(truth, scores))",
])
def test_checker_catches_a_metric_computed_in_the_notebook(tmp_path, source):
    cells = good_cells()
    cells.append(cell("code", source))
    problems = convention_problems(write(tmp_path, cells))
    assert len(problems) == 1 and "computes a metric" in problems[0] and "code cell 5" in problems[0]


def test_checker_catches_a_notebook_without_phantom_fallback(tmp_path):
    cells = good_cells()
    cells[3] = cell("code", "from covidct.data.datasets import load_dataset\nmanifest = load_dataset('sars-cov-2-ct')")
    problems = convention_problems(write(tmp_path, cells))
    assert problems == ["98_good.ipynb: no phantom fallback (call covidct.data.datasets.choose_data, or use phantoms)"]


def test_checker_catches_an_install_cell_that_differs_from_the_conventions(tmp_path):
    cells = good_cells()
    cells[1] = cell("code", "import sys\nif 'google.colab' in sys.modules:\n    %pip install -q covidct")
    problems = convention_problems(write(tmp_path, cells))
    assert len(problems) == 1 and "must be the install cell" in problems[0]


@pytest.mark.parametrize("missing", ["SMOKE", "DATA_ROOT", "OUTPUT_ROOT"])
def test_checker_catches_a_parameters_cell_without_its_settings(tmp_path, missing):
    cells = good_cells()
    source = "\n".join(line for line in PARAMETERS.splitlines() if not line.startswith(f"{missing} ="))
    cells[2] = cell("code", source + ("\n# reads COVIDCT_SMOKE" if missing == "SMOKE" else ""), "parameters")
    problems = convention_problems(write(tmp_path, cells))
    assert problems == [f"98_good.ipynb: the parameters cell must set {missing}"]


def test_checker_catches_missing_and_undisplayed_figure_cells(tmp_path):
    cells = good_cells()
    cells[5] = cell("code", "plot_roc_curves(y, probs, names);")
    assert convention_problems(write(tmp_path, cells)) == [
        "98_good.ipynb: no code cell is tagged 'figure' (a notebook shows at least one figure)"]
    cells[5] = cell("code", "plot_roc_curves(y, probs, names);", "figure")
    assert convention_problems(write(tmp_path, cells)) == [
        "98_good.ipynb: code cell 4 is tagged 'figure' but does not display(...) its figure"]


def executed(outputs_by_cell: list) -> nbformat.NotebookNode:
    notebook = nbformat.v4.new_notebook()
    for tags, outputs in outputs_by_cell:
        made = cell("code", "x", *tags)
        made.outputs = outputs
        notebook.cells.append(made)
    return notebook


def test_rendering_check_accepts_drawn_figures_and_html_tables():
    png = nbformat.v4.new_output("display_data", data={"image/png": "iVBOR", "text/plain": "<Figure size 640x480 with 1 Axes>"})
    html = nbformat.v4.new_output("execute_result", data={"text/html": "<table/>", "text/plain": "df"}, execution_count=1)
    assert rendering_problems(executed([(["figure"], [png]), (["table"], [html]), ([], [])]), "n.ipynb") == []


def test_rendering_check_catches_what_the_reader_would_not_see():
    figure_text = nbformat.v4.new_output("execute_result", data={"text/plain": "<Figure size 1000x400 with 2 Axes>"},
                                         execution_count=1)
    plain_table = nbformat.v4.new_output("stream", text="   a  b\n0  1  2\n")
    problems = rendering_problems(executed([(["figure"], [figure_text]), (["table"], [plain_table])]), "n.ipynb")
    assert problems == [
        "n.ipynb: code cell 0 is tagged 'figure' but shows no image/png",
        "n.ipynb: code cell 0 printed '<Figure size 1000x400 with 2 Axes>' instead of drawing it "
        "(display(figure) in a cell tagged 'figure')",
        "n.ipynb: code cell 1 is tagged 'table' but shows no text/html table",
    ]
    assert rendering_problems(executed([([], [])]), "n.ipynb") == ["n.ipynb: no code cell is tagged 'figure'"]
