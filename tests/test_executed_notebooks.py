"""docs/notebooks/ holds a fresh executed copy of every notebook, within the size caps (`make notebooks-executed`).

A copy is fresh when the SHA-256 it recorded of its source notebook (outputs stripped) equals the source's
hash now: change a notebook and this test fails until its copy is refreshed with
`make notebooks-executed ONLY=<name>` (full mode, real data under $COVIDCT_DATA_ROOT).
"""

from __future__ import annotations

from pathlib import Path

from covidct.notebook_run import (
    NOTEBOOK_CAP_BYTES,
    TOTAL_CAP_BYTES,
    check_executed,
    notice_problems,
    source_notebooks,
)

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
EXECUTED = ROOT / "docs" / "notebooks"

#: Notebooks (relative to notebooks/) allowed to have NO executed copy yet. This list only shrinks: a name
#: leaves it when its copy is committed (the second test fails until it does), and it is empty once
#: `make notebooks-executed` has been run on the real data. A notebook added later needs its copy, not an entry.
NOT_YET_EXECUTED: frozenset[str] = frozenset()


def test_every_notebook_has_a_fresh_executed_copy_within_the_caps():
    problems = check_executed(NOTEBOOKS, EXECUTED, allow_missing=NOT_YET_EXECUTED)
    assert not problems, "\n".join(problems)


def test_the_allow_list_names_only_notebooks_still_without_a_copy():
    for name in sorted(NOT_YET_EXECUTED):
        assert (NOTEBOOKS / name).is_file(), f"{name} is not a notebook; remove it from NOT_YET_EXECUTED"
        assert not (EXECUTED / name).exists(), f"{name} has its executed copy now; remove it from NOT_YET_EXECUTED"


def test_every_executed_copy_shows_a_figure():
    import nbformat

    for copy in sorted(EXECUTED.rglob("*.ipynb")):
        notebook = nbformat.read(copy, as_version=4)
        images = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])
                  if "image/png" in o.get("data", {})]
        assert images, f"{copy.name}: no figure in its executed copy"


def test_the_caps_are_the_documented_ones():
    assert (NOTEBOOK_CAP_BYTES, TOTAL_CAP_BYTES) == (3_000_000, 30_000_000)
    assert source_notebooks(NOTEBOOKS), "no notebooks found"


def test_the_notice_names_every_real_dataset_an_executed_copy_used():
    problems = notice_problems(EXECUTED)
    assert not problems, "\n".join(problems)
    notice = (EXECUTED / "NOTICE.md").read_text()
    for dataset, licence in (("sars-cov-2-ct", "CC BY-NC-SA 4.0"), ("covid-ct-md", "CC BY 4.0")):
        assert any(f"`{dataset}`" in line and licence in line for line in notice.splitlines()), dataset
