"""Grid files expand to the cross product models × stages × settings with the study's names."""

from __future__ import annotations

import pytest

from covidct.errors import CovidctError
from covidct.train.grid import load_grid, run_grid

GRID = """
output_root: {root}
base:
  data: {{dataset: phantom, size: 48}}
  training: {{epochs: 30}}
models: [simple_cnn, small_cnn]
stages: [original, lungs]
settings: [baseline, classw-dataaug]
overrides: ["training.epochs=2"]
model_overrides:
  small_cnn: {{model: {{kwargs: {{dropout_rate: 0.0}}}}}}
"""


def test_grid_expansion_and_dry_run(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(GRID.format(root=tmp_path / "runs"))
    configs = load_grid(path)
    assert [c.run_name for c in configs][:4] == [
        "simple_cnn-original-baseline",
        "simple_cnn-original-classw-dataaug",
        "simple_cnn-lungs-baseline",
        "simple_cnn-lungs-classw-dataaug",
    ]
    assert len(configs) == 8 and all(c.training.epochs == 2 for c in configs)
    second = configs[1]
    assert second.training.class_weight == "balanced" and second.training.augmentation == "stage"
    assert configs[4].model.kwargs == {"dropout_rate": 0.0} and configs[0].model.kwargs == {}
    table = run_grid(path, dry_run=True)
    assert table["status"].tolist() == ["new"] * 8


def test_grid_errors(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("modles: [simple_cnn]\nstages: [original]\nsettings: [baseline]\n")
    with pytest.raises(CovidctError, match="Did you mean: models"):
        load_grid(path)
    path.write_text("models: [simple_cnn]\nstages: [original]\nsettings: [baseline, clasw]\n")
    with pytest.raises(CovidctError, match="Did you mean: classw"):
        load_grid(path)
