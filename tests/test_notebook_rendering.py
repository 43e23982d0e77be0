"""Every notebook runs in smoke mode under Jupyter's inline backend and shows what it promises.

Each notebook is executed once with nbclient, as a reader's kernel would run it: working directory
``notebooks/``, ``COVIDCT_SMOKE=1``, and no ``MPLBACKEND`` (so IPython's inline backend draws). Their
``OUTPUT_ROOT`` is injected as a temporary folder shared by this file's notebooks, so the tests never write into
``notebooks/runs/`` where a reader's full-mode runs live. A cell
tagged ``figure`` must then have an ``image/png`` output, a cell tagged ``table`` a ``text/html`` output,
and no cell may print a bare ``<Figure size ...>`` instead of the figure. ``make test-notebooks`` runs this
file on its own; the other test streams skip it (marker ``notebooks``).
"""

import time
from pathlib import Path

import nbformat
import pytest

from covidct.notebook_run import inject_parameters
from covidct.notebook_tools import rendering_problems

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))

pytestmark = pytest.mark.notebooks


@pytest.fixture(scope="module")
def output_root(tmp_path_factory) -> Path:
    """One run folder for the smoke runs of every notebook (later notebooks may reuse earlier runs)."""
    return tmp_path_factory.mktemp("notebook-runs")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_renders_its_figures_and_tables(path, monkeypatch, output_root):
    from nbclient import NotebookClient

    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel must use the inline backend, as Jupyter does
    monkeypatch.setenv("COVIDCT_SMOKE", "1")
    notebook = nbformat.read(path, as_version=4)
    assert inject_parameters(notebook, {"OUTPUT_ROOT": str(output_root)}) == []
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    started = time.time()
    client.execute()
    assert rendering_problems(notebook, path.name) == []
    runs = NOTEBOOK_DIR / "runs"
    written = [p for p in runs.rglob("*") if p.stat().st_mtime >= started] if runs.is_dir() else []
    assert written == [], f"{path.name} wrote into {runs} in smoke mode: {written[:3]}"
