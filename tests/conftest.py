"""Shared fixtures. KERAS_BACKEND defaults to tensorflow; real-data tests skip with a reason."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def _data_root() -> Path:
    return Path(os.environ.get("COVIDCT_DATA_ROOT", REPO_ROOT.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real CT data folder (COVIDCT_DATA_ROOT, default ../shared/data); skips when missing."""
    root = _data_root()
    if not root.is_dir():
        pytest.skip(f"real CT data not found at {root} (set COVIDCT_DATA_ROOT)")
    return root


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT
