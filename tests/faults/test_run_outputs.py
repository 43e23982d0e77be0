"""Outputs written beside a run: ``gradcam --overwrite`` replaces exactly what the earlier call wrote."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from covidct.cli import main
from covidct.train import train


@pytest.fixture(scope="module")
def run_and_images(tmp_path_factory, phantom_data, tiny_config):
    """A finished tiny run and phantom slices saved as .npy files under <class>/ folders."""
    from covidct.data.phantom import make_slice

    root = tmp_path_factory.mktemp("outputs")
    run = train(tiny_config(epochs=1, max_steps_per_epoch=1), run_dir=root / "run", data=phantom_data, progress=False)
    images = root / "images"
    for label in ("COV", "Normal"):
        (images / label).mkdir(parents=True)
        for seed in range(2):
            slice_ = make_slice(label, size=48, seed=10 + seed)
            np.save(images / label / f"{label.lower()}_{seed}.npy", np.rint(slice_.image_hu).astype(np.int16))
    return run, images


def test_gradcam_overwrite_removes_the_earlier_overlays_and_nothing_else(run_and_images, tmp_path, capsys):
    run, images = run_and_images
    out = tmp_path / "cams"
    base = ["gradcam", "--run", str(run), "--out", str(out)]
    assert main([*base, "--images", str(images / "COV"), str(images / "Normal")]) == 0
    first = pd.read_csv(out / "gradcam.csv")["overlay"].tolist()
    assert len(first) == 4 and all(path.startswith(str(out / "overlays")) for path in first)
    (out / "notes.txt").write_text("mine")
    (out / "overlays" / "drawn-by-hand.png").write_bytes(b"mine")
    assert main([*base, "--images", str(images / "COV" / "cov_1.npy")]) == 2  # results there: refused
    assert "already holds Grad-CAM results" in capsys.readouterr().err
    assert main([*base, "--images", str(images / "COV" / "cov_1.npy"), "--overwrite"]) == 0
    table = pd.read_csv(out / "gradcam.csv")
    assert len(table) == 1 and table["path"].tolist() == [str(images / "COV" / "cov_1.npy")]
    overlays = sorted(p.name for p in (out / "overlays").iterdir())
    assert overlays == sorted([table["overlay"][0].split("/")[-1], "drawn-by-hand.png"])
    assert (out / "notes.txt").read_text() == "mine"
    assert len(np.load(out / "heatmaps.npz")["heatmaps"]) == 1
