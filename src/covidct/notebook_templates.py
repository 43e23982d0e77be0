"""Contributor templates: ``notebooks/templates/<snake_case>.ipynb`` and the conventions they keep.

A template (``notebooks/templates/new_model.ipynb``) is a notebook a contributor copies to start their own
work. It keeps every convention of the numbered notebooks (``covidct.notebook_tools.convention_problems``:
stripped, no ``def``/``class``, a ``parameters`` cell reading ``COVIDCT_SMOKE``, the Colab badge) except the
numbered name: a template is named ``snake_case.ipynb``, without a number, and lives in
``notebooks/templates/`` only. A template defines its model without ``def`` too
(``functools.partial`` over a registered builder), so no other exemption exists.
"""

from __future__ import annotations

import re
from pathlib import Path

from covidct.notebook_tools import convention_problems

TEMPLATES_FOLDER = "templates"
TEMPLATE_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*\.ipynb$")
#: The problem text of the numbered-name rule in ``convention_problems``, which templates are exempt from.
NUMBERED_NAME_RULE = "NN_snake_case"


def is_template(path: str | Path) -> bool:
    """Whether ``path`` is a notebook directly inside a ``notebooks/templates/`` folder."""
    path = Path(path)
    return (
        path.suffix == ".ipynb"
        and path.parent.name == TEMPLATES_FOLDER
        and path.parent.parent.name == "notebooks"
    )


def template_paths(notebooks_dir: str | Path) -> list[Path]:
    """The templates of a ``notebooks/`` folder (``notebooks/templates/*.ipynb``), sorted; empty when none."""
    return sorted((Path(notebooks_dir) / TEMPLATES_FOLDER).glob("*.ipynb"))


def template_convention_problems(path: str | Path) -> list[str]:
    """The convention violations of a template: the numbered notebooks' rules, its own name rule instead.

    Args:
        path: a notebook under ``notebooks/templates/``.

    Returns:
        Problems, one line each (empty when the template is clean). A notebook outside
        ``notebooks/templates/`` is one problem: the exemption applies to templates only.
    """
    path = Path(path)
    if not is_template(path):
        return [f"{path}: not a template (templates live in notebooks/{TEMPLATES_FOLDER}/); "
                "check it with convention_problems"]
    problems = [p for p in convention_problems(path) if NUMBERED_NAME_RULE not in p]
    if not TEMPLATE_NAME_PATTERN.match(path.name):
        problems.append(f"{path.name}: a template's name must look like snake_case.ipynb (no number)")
    return problems
