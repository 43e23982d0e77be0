"""The out-of-distribution reference: found from run.json's cache path, built from the training split only."""

from __future__ import annotations

import numpy as np
import pandas as pd

from covidct.data.cache import build_cache
from covidct.data.phantom import make_dataset
from covidct.preprocess import get_stage
from covidct.serve.served_run import SPREAD_FLOOR, image_features, load_reference


def test_reference_comes_from_the_training_rows_of_the_runs_cache(tmp_path):

    project = tmp_path / "project"
    (project / "slices").mkdir(parents=True)
    phantoms = make_dataset(n=12, size=32, seed=1, slices_per_patient=1)
    paths = []
    for i, image in enumerate(phantoms.images_hu):
        paths.append(project / "slices" / f"{i}.npy")
        np.save(paths[-1], image.astype(np.int16))
    manifest = pd.DataFrame({"path": [str(p) for p in paths], "label": phantoms.labels, "group": [f"p{i}" for i in range(12)],
                             "split": ["train"] * 8 + ["test"] * 4, "source": "phantom"})
    cache = build_cache(manifest, get_stage("original"), 32, project / ".cache", workers=1, progress=False)
    run_dir = project / "runs" / "r"
    run_dir.mkdir(parents=True)
    recorded = str(cache.path.relative_to(project))  # relative to the folder training ran in

    reference = load_reference(run_dir, {"cache": recorded})
    train = np.asarray(cache.images[cache.indices("train")])
    features = image_features(train)
    assert reference.n_images == 8 and reference.unavailable == ""
    np.testing.assert_allclose(reference.median, np.median(features, axis=0))
    mad = 1.4826 * np.median(np.abs(features - np.median(features, axis=0)), axis=0)
    np.testing.assert_allclose(reference.spread, np.maximum(mad, SPREAD_FLOOR))
    assert reference.check(train[:1])["available"]

    missing = load_reference(run_dir, {"cache": ".cache/elsewhere"})
    assert missing.median is None and "is not on this machine" in missing.unavailable
    verdict = missing.check(train[:1])
    assert verdict == {"available": False, "reason": missing.unavailable, "warning": False}
    assert "records no preprocessed cache" in load_reference(run_dir, {"cache": ""}).unavailable


def test_image_features_by_hand():
    sample = np.array([[[0, 0], [100, 200]]], np.uint8)
    np.testing.assert_allclose(image_features(sample), [[75.0, np.std([0, 0, 100, 200]), 0.5]])
