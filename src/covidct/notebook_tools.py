"""Notebook hygiene: strip outputs and check the conventions of ``notebooks/NN_snake_case.ipynb``.

Used by ``make strip-notebooks`` and by ``tests/test_notebooks.py``. Notebooks are for exploration and
communication; their logic lives in the package, and they are committed without outputs.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat

NAME_PATTERN = re.compile(r"^\d{2}_[a-z0-9]+(_[a-z0-9]+)*\.ipynb$")
REPOSITORY = "covidct/covidct"
SOURCE_URL = f"https://github.com/{REPOSITORY}"
"""Where the install cell installs from; equal to ``project.urls.Source`` in pyproject.toml (a test checks)."""
INSTALL_SOURCE = (
    "# Install covidct where it is missing (Colab): from a wheel uploaded beside this notebook, else from a\n"
    "# cloned checkout, else from the project's source. Colab's own TensorFlow / JAX stay as they are.\n"
    "import glob, importlib.util\n"
    'if importlib.util.find_spec("covidct") is None:\n'
    '    wheels = sorted(glob.glob("covidct-*.whl")) + sorted(glob.glob("/content/covidct-*.whl"))\n'
    '    source = wheels[-1] if wheels else ("./covidct" if glob.glob("covidct/pyproject.toml")\n'
    f'                                        else "git+{SOURCE_URL}.git")\n'
    "    %pip install -q {source}"
)
"""The install cell of every notebook, verbatim (NOTEBOOK conventions: the second cell)."""
#: A notebook computes no metric itself: every number comes from ``covidct.evaluate``.
METRIC_PATTERN = re.compile(
    r"\bsklearn\.metrics\b|from\s+sklearn\s+import\s+[^\n]*\bmetrics\b|\b(roc_auc_score|f1_score|accuracy_score|"
    r"precision_score|recall_score|confusion_matrix|roc_curve|auc|average_precision_score|"
    r"balanced_accuracy_score|precision_recall_curve)\s*\("
)
#: A notebook runs without any dataset: it chooses its data (phantoms as the fallback) or uses phantoms itself.
FALLBACK_PATTERN = re.compile(r"\bchoose_data\s*\(|phantom")


def colab_badge(name: str) -> str:
    """Markdown for the 'Open in Colab' badge of ``notebooks/<name>``."""
    url = f"https://colab.research.google.com/github/{REPOSITORY}/blob/main/notebooks/{name}"
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"


def add_colab_header(path: str | Path) -> bool:
    """Insert the Colab badge (into the first markdown cell) and the install cell if missing."""
    path = Path(path)
    notebook = nbformat.read(path, as_version=4)
    changed = False
    markdown = next((cell for cell in notebook.cells if cell.cell_type == "markdown"), None)
    if markdown is None:
        markdown = nbformat.v4.new_markdown_cell(f"# {path.stem}")
        notebook.cells.insert(0, markdown)
    if "colab.research.google.com" not in markdown.source:
        markdown.source = markdown.source.rstrip() + "\n\n" + colab_badge(path.name)
        changed = True
    if not any(cell.source.strip() == INSTALL_SOURCE.strip() for cell in notebook.cells if cell.cell_type == "code"):
        position = notebook.cells.index(markdown) + 1
        notebook.cells.insert(position, nbformat.v4.new_code_cell(INSTALL_SOURCE))
        changed = True
    if changed:
        nbformat.write(notebook, path)
    return changed


def strip_outputs(path: str | Path) -> bool:
    """Remove outputs and execution counts from a notebook in place; return True if it changed."""
    path = Path(path)
    notebook = nbformat.read(path, as_version=4)
    changed = False
    for cell in notebook.cells:
        if cell.cell_type == "code":
            if cell.get("outputs") or cell.get("execution_count") is not None:
                changed = True
            cell["outputs"] = []
            cell["execution_count"] = None
    if changed:
        nbformat.write(notebook, path)
    return changed


def convention_problems(path: str | Path) -> list[str]:
    """Return the convention violations of one notebook (empty list when it is clean)."""
    path = Path(path)
    problems = []
    if not NAME_PATTERN.match(path.name):
        problems.append(f"{path.name}: name must look like NN_snake_case.ipynb")
    notebook = nbformat.read(path, as_version=4)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    for index, cell in enumerate(code_cells):
        if cell.get("outputs") or cell.get("execution_count") is not None:
            problems.append(f"{path.name}: code cell {index} has outputs (run `make strip-notebooks`)")
        if re.search(r"^\s*(def|class)\s", cell.source, flags=re.MULTILINE):
            problems.append(f"{path.name}: code cell {index} defines a function/class; move it into covidct")
    parameter_cells = [cell for cell in code_cells if "parameters" in cell_tags(cell)]
    if not parameter_cells:
        problems.append(f"{path.name}: no code cell tagged 'parameters'")
    else:
        source = parameter_cells[0].source
        if "COVIDCT_SMOKE" not in source:
            problems.append(f"{path.name}: the parameters cell must read SMOKE from COVIDCT_SMOKE")
        for name in ("SMOKE", "DATA_ROOT", "OUTPUT_ROOT"):
            if not re.search(rf"^{name}\s*=", source, flags=re.MULTILINE):
                problems.append(f"{path.name}: the parameters cell must set {name}")
    first_markdown = next((cell for cell in notebook.cells if cell.cell_type == "markdown"), None)
    if first_markdown is None or "colab.research.google.com" not in first_markdown.source:
        problems.append(f"{path.name}: the first markdown cell needs the 'Open in Colab' badge")
    if not any(cell.source.strip() == INSTALL_SOURCE.strip() for cell in code_cells[:1]):
        problems.append(f"{path.name}: the first code cell must be the install cell, exactly "
                        "covidct.notebook_tools.INSTALL_SOURCE (`python -m covidct.notebook_tools strip` adds it)")
    for index, cell in enumerate(code_cells):
        match = METRIC_PATTERN.search(cell.source)
        if match:
            problems.append(f"{path.name}: code cell {index} computes a metric ({match.group(0).strip()!r}); "
                            "take every number from covidct.evaluate")
    if not any(FALLBACK_PATTERN.search(cell.source) for cell in code_cells):
        problems.append(f"{path.name}: no phantom fallback (call covidct.data.datasets.choose_data, or use phantoms)")
    if not any("figure" in cell_tags(cell) for cell in code_cells):
        problems.append(f"{path.name}: no code cell is tagged 'figure' (a notebook shows at least one figure)")
    for index, cell in enumerate(code_cells):
        if "figure" in cell_tags(cell) and "display(" not in cell.source:
            problems.append(f"{path.name}: code cell {index} is tagged 'figure' but does not display(...) its figure")
    return problems


def cell_tags(cell) -> list[str]:
    """The tags of a notebook cell (``metadata.tags``), empty when it has none."""
    return list(cell.get("metadata", {}).get("tags", []))


def rendering_problems(notebook, name: str = "notebook") -> list[str]:
    """What an EXECUTED notebook fails to show: a ``figure`` cell without an ``image/png`` output, a ``table``
    cell without ``text/html``, a cell that printed a bare ``<Figure size ...>`` text, or no ``figure`` cell.

    Args:
        notebook: an executed ``nbformat`` notebook (outputs present).
        name: how the notebook is named in the messages.

    Returns:
        One message per problem (empty when everything rendered).
    """
    problems = []
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    if not any("figure" in cell_tags(cell) for cell in code_cells):
        problems.append(f"{name}: no code cell is tagged 'figure'")
    for index, cell in enumerate(code_cells):
        outputs = cell.get("outputs", [])
        mimes = {mime for output in outputs for mime in output.get("data", {})}
        if "figure" in cell_tags(cell) and "image/png" not in mimes:
            problems.append(f"{name}: code cell {index} is tagged 'figure' but shows no image/png")
        if "table" in cell_tags(cell) and "text/html" not in mimes:
            problems.append(f"{name}: code cell {index} is tagged 'table' but shows no text/html table")
        for output in outputs:
            text = output.get("data", {}).get("text/plain", "") if "image/png" not in output.get("data", {}) else ""
            if isinstance(text, list):
                text = "".join(text)
            if text.startswith("<Figure size"):
                problems.append(f"{name}: code cell {index} printed {text.strip()!r} instead of drawing it "
                                "(display(figure) in a cell tagged 'figure')")
    return problems


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in ("strip", "check"):
        print("usage: python -m covidct.notebook_tools strip|check NOTEBOOK_DIR", file=sys.stderr)
        return 2
    paths = sorted(Path(argv[1]).glob("*.ipynb"))
    if argv[0] == "strip":
        for path in paths:
            if add_colab_header(path) | strip_outputs(path):
                print(f"normalised {path}")
        # Templates (notebooks/templates/) are committed without outputs too; their header is their own.
        for path in sorted((Path(argv[1]) / "templates").glob("*.ipynb")):
            if strip_outputs(path):
                print(f"normalised {path}")
        return 0
    problems = [problem for path in paths for problem in convention_problems(path)]
    print("\n".join(problems) if problems else f"{len(paths)} notebook(s) follow the conventions.")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
