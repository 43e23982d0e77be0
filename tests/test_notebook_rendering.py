"""Every notebook runs in smoke mode under Jupyter's inline backend and shows what it promises.

Each notebook is executed once with nbclient, as a reader's kernel would run it: working directory
``notebooks/``, ``COVIDCT_SMOKE=1``, and no ``MPLBACKEND`` (so IPython's inline backend draws). A cell
tagged ``figure`` must then have an ``image/png`` output, a cell tagged ``table`` a ``text/html`` output,
and no cell may print a bare ``<Figure size ...>`` instead of the figure. ``make test-notebooks`` runs this
file on its own; the other test streams skip it (marker ``notebooks``).
"""

from pathlib import Path

import nbformat
import pytest

from covidct.notebook_tools import rendering_problems

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))

pytestmark = pytest.mark.notebooks


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_renders_its_figures_and_tables(path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel must use the inline backend, as Jupyter does
    monkeypatch.setenv("COVIDCT_SMOKE", "1")
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    client.execute()
    assert rendering_problems(notebook, path.name) == []
