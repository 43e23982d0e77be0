"""The contributor template keeps the notebook conventions and runs in smoke mode with its toy model.

The run executes ``notebooks/templates/new_model.ipynb`` with nbclient and the inline backend (no
``MPLBACKEND=Agg``) in a temporary working folder, on phantoms, and checks what a contributor would see:
every ``figure`` cell shows a PNG, every ``table`` cell an HTML table, and the comparison lists both runs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest

from covidct.notebook_templates import is_template, template_convention_problems, template_paths

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
TEMPLATE = NOTEBOOKS / "templates" / "new_model.ipynb"


def test_the_template_exists_and_follows_the_conventions():
    assert template_paths(NOTEBOOKS) == [TEMPLATE]
    assert is_template(TEMPLATE)
    assert template_convention_problems(TEMPLATE) == []
    notebook = nbformat.read(TEMPLATE, as_version=4)
    tags = [tag for cell in notebook.cells for tag in cell.get("metadata", {}).get("tags", [])]
    assert tags.count("parameters") == 1 and tags.count("figure") == 3 and tags.count("table") == 1
    sources = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    for call in ("register_model(", "train_or_reuse(", "collect_scores(", "gradcam_run("):
        assert call in sources


def test_template_rules_apply_to_templates_only(tmp_path):
    notebook = nbformat.read(TEMPLATE, as_version=4)
    folder = tmp_path / "notebooks" / "templates"
    folder.mkdir(parents=True)
    nbformat.write(notebook, folder / "New-Model.ipynb")
    assert template_convention_problems(folder / "New-Model.ipynb") == [
        "New-Model.ipynb: a template's name must look like snake_case.ipynb (no number)"
    ]
    nbformat.write(notebook, tmp_path / "notebooks" / "new_model.ipynb")
    assert not is_template(tmp_path / "notebooks" / "new_model.ipynb")
    assert "not a template" in template_convention_problems(tmp_path / "notebooks" / "new_model.ipynb")[0]
    notebook.cells.insert(4, nbformat.v4.new_code_cell("def build(shape):\n    return shape"))
    nbformat.write(notebook, folder / "with_def.ipynb")
    assert any("defines a function" in p for p in template_convention_problems(folder / "with_def.ipynb"))


def test_the_template_runs_in_smoke_mode_and_shows_its_results(tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    shutil.copy(TEMPLATE, tmp_path / TEMPLATE.name)
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the inline backend, as in Jupyter and Colab
    monkeypatch.setenv("COVIDCT_SMOKE", "1")
    monkeypatch.setenv("COVIDCT_DATA_ROOT", str(tmp_path / "no-data"))  # phantoms, whatever this machine has
    notebook = nbformat.read(tmp_path / TEMPLATE.name, as_version=4)
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()

    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    first_text = next(o["text"] for cell in code for o in cell.outputs if o.get("output_type") == "stream")
    assert first_text.startswith("Data: synthetic phantoms ('phantom'), because 'sars-cov-2-ct' was not found")
    tagged = {tag: [c for c in code if tag in c.get("metadata", {}).get("tags", [])] for tag in ("figure", "table")}
    for cell in tagged["figure"]:
        assert any("image/png" in o.get("data", {}) for o in cell.outputs), cell.source
    for cell in tagged["table"]:
        assert any("text/html" in o.get("data", {}) for o in cell.outputs), cell.source
    comparison = next(o["data"]["text/html"] for o in tagged["table"][0].outputs if "text/html" in o.get("data", {}))
    assert "<td>my_cnn-lungs-baseline</td>" in comparison and "<td>small_cnn-lungs-baseline</td>" in comparison
    runs = tmp_path / "runs" / "notebooks" / "new_model"
    assert sorted(p.name for p in runs.iterdir()) == ["my_cnn-lungs-baseline", "small_cnn-lungs-baseline"]
    for run in runs.iterdir():
        assert (run / "metrics_test.json").is_file()
    assert (runs / "my_cnn-lungs-baseline" / "gradcam" / "gradcam" / "contact_sheet.png").is_file()
