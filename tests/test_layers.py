"""The data flow keeps one direction (DESIGN.md): the lower layers never import the layers built on them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "covidct"
#: What data, preprocessing and models may not import: training, evaluation and everything on top of them.
UPPER = ("covidct.train", "covidct.evaluate", "covidct.segment", "covidct.explain", "covidct.cli", "covidct.features",
         "covidct.demo", "covidct.notebook_tools")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, function-level (lazy) imports included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return found


def test_the_import_scan_sees_lazy_imports(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os\n\ndef f():\n    from covidct.train import trainer\n    import covidct.evaluate.plots\n")
    assert imported_modules(sample) == [(1, "os"), (4, "covidct.train"), (4, "covidct.train.trainer"),
                                        (5, "covidct.evaluate.plots")]


@pytest.mark.parametrize("layer", ["data", "preprocess", "models"])
def test_lower_layers_never_import_the_layers_above(layer):
    files = sorted((SRC / layer).rglob("*.py"))
    assert files
    wrong = [
        f"{path.relative_to(SRC)}:{line} imports {module}"
        for path in files
        for line, module in imported_modules(path)
        if module.startswith(UPPER)
    ]
    assert not wrong, "\n".join(wrong)


def test_run_folders_sit_below_training_and_evaluation():
    """``covidct.runs`` (run folders: marker, lock, atomic files) is used by train and evaluate, never the reverse."""
    upper = (*UPPER, "covidct.runs.")  # nothing above, and no sub-module of its own
    wrong = [f"runs.py:{line} imports {module}" for line, module in imported_modules(SRC / "runs.py")
             if module.startswith(upper) or module.startswith(("covidct.models", "covidct.preprocess"))]
    assert not wrong, "\n".join(wrong)
    users = [path.relative_to(SRC).as_posix() for path in SRC.rglob("*.py")
             if any(module == "covidct.runs" for _, module in imported_modules(path))]
    assert {"train/state.py", "train/trainer.py", "evaluate/evaluator.py"} <= set(users)
