"""Regression check: small_cnn on 3-class phantoms (lungs stage, 64 px) reaches test macro-F1 >= 0.95.

Phantom classes differ by what sits inside the lungs (bilateral peripheral ground glass, unilateral
consolidation, nothing), so after the ``lungs`` stage a small CNN separates them within a few epochs.
A drop below 0.95 means the training or evaluation path broke (labels shuffled, preprocessing drift,
checkpoint selection, probability conversion).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from covidct.evaluate import evaluate_run
from covidct.train import train
from covidct.train.data import data_from_arrays


def test_phantom_three_class_macro_f1(tiny_config, tmp_path):
    from covidct.data.io import CTImage
    from covidct.data.phantom import make_dataset
    from covidct.preprocess import get_stage

    phantoms = make_dataset(n=450, size=64, seed=1, slices_per_patient=1)
    stage = get_stage("lungs")
    images = np.stack([stage(CTImage(array=hu, unit="HU"), 64)[0].image for hu in phantoms.images_hu])
    rng = np.random.default_rng(0)
    split = rng.choice(["train", "val", "test"], size=len(images), p=[0.6, 0.2, 0.2])
    manifest = pd.DataFrame(
        {"path": [f"p{i}" for i in range(len(images))], "label": phantoms.labels, "group": phantoms.groups, "split": split, "source": "phantom"}
    )
    data = data_from_arrays(images, manifest)
    cfg = tiny_config(epochs=12, learning_rate=3e-3, bn_momentum=0.5, schedule="cosine", augmentation={"flip": True})
    cfg = dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, name="small_cnn"),
        data=dataclasses.replace(cfg.data, stage="lungs", size=64),
    )
    run = train(cfg, run_dir=tmp_path / "phantom", data=data, progress=False)
    result = evaluate_run(run, split="test", data=data, n_bootstrap=0, figures=False)
    assert result["evaluated_on"]["split"] == "test"
    assert result["slice"]["macro_f1"] >= 0.95, result["slice"]
