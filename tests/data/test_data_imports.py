"""The data layer imports only itself, ``covidct.config``, ``covidct.errors`` (and the package's
``__version__``) and third-party modules, at module level only, and its modules import each other
without cycles."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "src" / "covidct" / "data"
ALLOWED = ("covidct.data", "covidct.config", "covidct.errors")


def _covidct_imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported covidct module, line, at module level) of every import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module == "covidct.data":  # from covidct.data import phantom
                names = [f"covidct.data.{alias.name}" for alias in node.names]
        else:
            continue
        found += [(name, node.lineno, id(node) in top) for name in names if name.split(".")[0] == "covidct"]
    return found


def _modules() -> list[Path]:
    return sorted(DATA.rglob("*.py"))


def _key(path: Path) -> str:
    """``cache``, ``phantom`` (a package's ``__init__``), ``phantom.render``, ..."""
    parts = path.relative_to(DATA).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_data_imports_only_data_config_errors_and_third_party_modules():
    wrong = [
        f"{_key(path)}:{line} imports {name}"
        for path in _modules()
        for name, line, _ in _covidct_imports(path)
        if name != "covidct" and not name.startswith(ALLOWED)
    ]
    assert wrong == []


def test_data_has_no_function_level_covidct_imports():
    hidden = [
        f"{_key(path)}:{line} imports {name} inside a function"
        for path in _modules()
        for name, line, at_top in _covidct_imports(path)
        if not at_top
    ]
    assert hidden == []


def test_the_data_modules_import_each_other_without_cycles():
    graph = {
        _key(path): sorted({name[len("covidct.data."):] for name, _, _ in _covidct_imports(path)
                            if name.startswith("covidct.data.")} - {_key(path)})
        for path in _modules()
    }
    graph.pop("")  # covidct/data/__init__.py
    assert graph["phantom.render"] == ["phantom.anatomy", "phantom.containers", "phantom.geometry"]
    order, state = [], {}

    def visit(module, trail):
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", f"import cycle: {' -> '.join(trail + [module])}"
        state[module] = "open"
        for target in graph.get(module, []):
            visit(target, trail + [module])
        state[module] = "done"
        order.append(module)

    for module in graph:
        visit(module, [])
    assert len(order) == len(graph)


def test_the_checker_sees_a_hidden_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import numpy\n\ndef f():\n    from covidct.preprocess import get_stage\n    return get_stage\n")
    assert _covidct_imports(sample) == [("covidct.preprocess", 4, False)]


def test_the_cache_imports_first_in_a_fresh_interpreter_without_the_layer_above():
    code = "import covidct.data.cache, sys; print(any(m.startswith('covidct.preprocess') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # and nothing of the layer above was pulled in
