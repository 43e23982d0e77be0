"""API of covidct serve on a phantom-trained run: model description, slice and volume predictions."""

from __future__ import annotations

import numpy as np
import pytest

from tests.serve.conftest import THRESHOLD

pytestmark = pytest.mark.filterwarnings("ignore::covidct.explain.focus.LungFocusWarning")


def test_model_description_labels_every_score(client, serve_run):
    info = client.get("/api/model").json()
    assert info["run"] == serve_run.name and info["model"] == "small_cnn"
    assert info["classes"] == ["COV", "NonCOV"]
    assert info["decision"] == {"threshold": THRESHOLD, "positive_class": "COV",
                                "source": "the evaluation's threshold (metrics_test.json)"}
    kinds = {entry["file"]: entry["kind"] for entry in info["scores"]}
    assert kinds == {"metrics_test.json": "internal test", "metrics_external-phantom-copy.json": "external test",
                     "metrics_val.json": kinds["metrics_val.json"]}
    assert kinds["metrics_val.json"].startswith("validation")
    assert "not a diagnostic device" in info["disclaimer"]
