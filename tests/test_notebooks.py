"""Committed notebooks follow the conventions: named NN_snake_case, stripped, thin, parameters + Colab badge."""

from pathlib import Path

import nbformat
import pytest

from covidct.notebook_tools import convention_problems, strip_outputs

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_follows_conventions(path):
    assert convention_problems(path) == []


def test_notebooks_exist_and_are_numbered_uniquely():
    numbers = [p.name[:2] for p in NOTEBOOKS]
    assert "00" in numbers, "notebooks/00_quickstart.ipynb is the entry point"
    assert len(numbers) == len(set(numbers)), f"duplicate notebook numbers: {numbers}"


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
