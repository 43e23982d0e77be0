"""A task in a fresh Python process (``covidct.executor.run_in_fresh_process``): arguments in, status line out."""

from __future__ import annotations

import os

import pytest

from covidct.errors import CovidctError
from covidct.executor import run_in_fresh_process

CHILD = '''
import sys
from covidct.executor import read_task_arguments

first, second = read_task_arguments(sys.argv)
if first < 0:
    sys.stderr.write("negative input\\n")
    sys.exit(3)
print("working")
print(f"finished {first + second}")
'''


@pytest.fixture
def child_module(tmp_path, monkeypatch):
    (tmp_path / "covidct_test_child.py").write_text(CHILD)
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:" + os.environ.get("PYTHONPATH", ""))
    return "covidct_test_child"


def test_the_child_gets_the_arguments_and_its_last_line_is_returned(child_module):
    assert run_in_fresh_process(child_module, (2, 40), "task A") == "finished 42"


def test_a_failing_child_names_the_task_its_exit_code_and_its_error(child_module):
    with pytest.raises(CovidctError, match=r"^task B: its process ended with exit code 3: negative input$"):
        run_in_fresh_process(child_module, (-1, 0), "task B")
