"""The data flow keeps one direction (DESIGN.md): every module imports only its own layer and the layers below.

The layers, top to bottom (a module belongs to the layer of its longest matching prefix):

    cli → workflows (grid, demo, train-or-reuse for notebooks, evaluate after training, segment training,
    feature baselines, notebook tools) → serve / experiments / lesion evidence → explain and the evaluation of run folders
    (``evaluate.evaluator``, ``segment.evaluate``, ...) → train → evaluate (metrics, bootstrap, reports)
    → runs → config → preprocess → models → data → errors

Preprocessing sits above the models because the lung crop runs a trained segmenter
(``covidct.models.inference``). The whole graph has no cycle, and an import inside a function is allowed
only for the optional heavy dependencies named in ``HEAVY`` (anything else is imported at the top of the
module, where the layer check sees it), apart from the few named edges below, each with its reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "covidct"

LAYERS = [
    ("cli", ("covidct.cli", "covidct.commands", "covidct.__main__")),
    ("workflows", ("covidct.demo", "covidct.train.grid", "covidct.train.grid_tasks", "covidct.predict", "covidct.train.workflow", "covidct.train.notebook_runs",
                   "covidct.segment.train", "covidct.features", "covidct.notebook_run", "covidct.notebook_tools",
                   "covidct.notebook_templates")),
    ("serve/experiments", ("covidct.serve", "covidct.experiments", "covidct.evidence")),
    ("explain, evaluation of runs", ("covidct.explain", "covidct.evaluate.evaluator", "covidct.evaluate.volume_predict",
                                     "covidct.evaluate.compare", "covidct.segment.evaluate", "covidct.segment.predict")),
    ("train", ("covidct.train",)),
    ("evaluate", ("covidct.evaluate", "covidct.segment.metrics", "covidct.segment")),
    ("runs", ("covidct.runs",)),
    ("config", ("covidct.config",)),
    ("preprocess", ("covidct.preprocess", "covidct.segment.data")),
    ("models", ("covidct.models",)),
    ("data", ("covidct.data",)),
    ("errors", ("covidct.errors", "covidct")),
]

#: Optional heavy dependencies: the only imports allowed inside a function.
HEAVY = ("tensorflow", "torch", "jax", "jaxlib", "pydicom", "nibabel")

#: Function-level imports of covidct modules that stay, with the reason: (importing module, imported module).
LAZY_ALLOWED = {
    # ``covidct --help`` and the argument errors of every command must not wait for Keras: each subcommand
    # imports the package function it runs when it runs (nothing imports the cli, so no cycle hides here).
    ("covidct.cli", "*"): "startup",
    ("covidct.commands.training", "*"): "startup",
    ("covidct.serve.cli", "*"): "startup",
    ("covidct.evidence.cli", "*"): "startup",
    ("covidct.experiments.cli", "*"): "startup",
    ("covidct.predict.command", "*"): "startup",
    # The model registry imports every architecture and Keras; reading, listing and copying configs must not.
    ("covidct.config.checks", "covidct.models"): "Keras on first use",
    # ``from covidct.evaluate import evaluate_run`` (notebooks, README) without making every metric module
    # import the evaluator, which sits above training.
    ("covidct.evaluate", "covidct.evaluate.evaluator"): "package re-export",
    # The model registry package imports its architectures, which import covidct.models.inference.
    ("covidct.models.inference", "covidct.models"): "registry on first use",
}

#: Edges against the layer order that the allowed lazy imports above make (and only those).
UPWARD_ALLOWED = {
    ("covidct.evaluate", "covidct.evaluate.evaluator"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in SRC.rglob("*.py")}


def resolve(name: str) -> str | None:
    """The covidct module an imported name belongs to (``covidct.train.trainer.train`` -> ``covidct.train.trainer``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(path: Path, module: str | None = None) -> list[tuple[int, str, bool]]:
    """(line, imported module or name, inside a function) of every import of a file, but ``TYPE_CHECKING`` ones.

    ``module``: the file's module name (default: from its path under ``src``), for relative imports.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped, in_function = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(sub) for sub in ast.walk(node)}
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function |= {id(sub) for sub in ast.walk(node) if sub is not node}
    module = module or module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package
                for _ in range(node.level - 1):
                    parent = parent.rpartition(".")[0]
                base = f"{parent}.{base}" if base else parent
            found += [(node.lineno, f"{base}.{alias.name}", id(node) in in_function) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, id(node) in in_function) for alias in node.names]
    return found


def graph() -> dict[str, set[str]]:
    """covidct module -> the covidct modules it imports (anywhere in the file)."""
    edges = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for _, imported, _ in imports(path):
            target = resolve(imported) if imported.startswith("covidct") else None
            if target and target != name:
                edges[name].add(target)
    return edges


def layer_of(module: str) -> int:
    best = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best[0]


def lazy_allowed(module: str, target: str) -> bool:
    return (module, target) in LAZY_ALLOWED or (module, "*") in LAZY_ALLOWED


def test_the_import_scan_sees_lazy_relative_and_type_checking_imports(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os\nfrom typing import TYPE_CHECKING\nfrom . import loop\nif TYPE_CHECKING:\n    import covidct.cli\n\n"
                      "def f():\n    from covidct.train import trainer\n    import covidct.evaluate.plots\n")
    assert imports(sample, module="covidct.train.sample") == [(1, "os", False), (2, "typing.TYPE_CHECKING", False), (3, "covidct.train.loop", False),
                               (8, "covidct.train.trainer", True), (9, "covidct.evaluate.plots", True)]


def test_a_lazy_import_of_a_covidct_module_is_refused_unless_named():
    assert not lazy_allowed("covidct.train.trainer", "covidct.evaluate.evaluator")
    assert not lazy_allowed("covidct.config", "covidct.models")
    assert lazy_allowed("covidct.config.checks", "covidct.models") and lazy_allowed("covidct.cli", "covidct.train")


def test_every_module_has_a_layer():
    assert len(MODULES) > 100
    for name in MODULES:
        layer_of(name)
    assert LAYERS[layer_of("covidct.train.tasks.segmentation")][0] == "train"
    assert LAYERS[layer_of("covidct.segment.data")][0] == "preprocess"
    assert LAYERS[layer_of("covidct.evaluate.metrics")][0] == "evaluate"


def test_imports_point_down_the_layers():
    wrong = [
        f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for module, targets in sorted(graph().items())
        for target in sorted(targets)
        if layer_of(target) < layer_of(module) and (module, target) not in UPWARD_ALLOWED
    ]
    assert not wrong, "\n".join(wrong)


def test_imports_inside_functions_are_only_heavy_optional_dependencies():
    wrong = []
    for module, path in sorted(MODULES.items()):
        for line, imported, inside in imports(path):
            if not inside:
                continue
            if imported.startswith("covidct"):
                target = resolve(imported)
                if not lazy_allowed(module, target):
                    wrong.append(f"{path.relative_to(SRC)}:{line} imports {imported} inside a function")
    assert not wrong, "\n".join(wrong)


#: Packages whose function-level imports are all of ``HEAVY`` (or of covidct modules named above); the data and
#: model layers, the feature baselines and the notebook runner still import some libraries on use.
NO_LAZY_LIBRARIES = ("covidct.train", "covidct.evaluate", "covidct.explain", "covidct.segment.evaluate",
                     "covidct.segment.predict", "covidct.segment.train", "covidct.segment.metrics", "covidct.config",
                     "covidct.runs", "covidct.preprocess", "covidct.demo", "covidct.cli", "covidct.commands")


def test_libraries_are_imported_inside_functions_only_when_heavy_and_optional():
    wrong = [
        f"{path.relative_to(SRC)}:{line} imports {imported} inside a function"
        for module, path in sorted(MODULES.items())
        if module.startswith(NO_LAZY_LIBRARIES)
        for line, imported, inside in imports(path)
        if inside and not imported.startswith("covidct") and imported.split(".")[0] not in HEAVY
    ]
    assert not wrong, "\n".join(wrong)


def test_the_allowances_are_still_needed():
    """Each named exception still happens (remove an entry once its import is gone)."""
    edges = graph()
    stale = sorted(edge for edge in UPWARD_ALLOWED if edge[1] not in edges.get(edge[0], set()))
    assert not stale, f"no longer imported, remove from the allow-lists: {stale}"


def test_no_import_cycles_but_the_named_ones():
    """Strongly connected components of the module graph, without the allowed upward edges: none."""
    edges = {m: {t for t in ts if (m, t) not in UPWARD_ALLOWED} for m, ts in graph().items()}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    assert cycles == []


@pytest.mark.parametrize("heavy", HEAVY)
def test_heavy_dependencies_are_never_imported_at_module_level_of_the_lower_layers(heavy):
    """The optional heavy dependencies stay out of the module level of data, preprocessing and config."""
    wrong = [f"{path.relative_to(SRC)}:{line}" for module, path in MODULES.items()
             if layer_of(module) >= layer_of("covidct.config")
             for line, imported, inside in imports(path) if not inside and imported.split(".")[0] == heavy]
    assert not wrong, "\n".join(wrong)


def test_run_folders_sit_below_training_and_evaluation():
    """``covidct.runs`` (run folders: marker, lock, atomic files) is used by train and evaluate, never the reverse."""
    edges = graph()
    assert all(layer_of(target) >= layer_of("covidct.runs") for target in edges["covidct.runs"])
    users = {module for module, targets in edges.items() if "covidct.runs" in targets}
    assert {"covidct.train.trainer", "covidct.train.loop", "covidct.evaluate.evaluator"} <= users
