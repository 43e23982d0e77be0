"""``covidct gradcam`` on a run folder holding the lesion model trained in the tests."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from covidct.cli import main


@pytest.fixture(scope="module")
def run_and_images(tmp_path_factory, lesion_task):
    """A run folder (config.yaml, run.json, model.keras) and phantom .npy files in <class>/ folders."""
    from covidct.config import config_from_dict, dump_config
    from covidct.data.phantom import make_slice
    from covidct.explain.gradcam import compute_heatmaps

    root = tmp_path_factory.mktemp("gradcam_cli")
    run_dir = root / "runs" / "lesion"
    run_dir.mkdir(parents=True)
    model = lesion_task["model"]
    # Explaining first leaves extra symbolic nodes on the layers: saving must still work.
    compute_heatmaps(model, lesion_task["images"][:1])
    model.save(run_dir / "model.keras")
    dump_config(config_from_dict({"data": {"stage": "original", "size": 64}, "model": {"name": "lesion_cnn"}}), run_dir / "config.yaml")
    info = {"class_names": ["Normal", "COV"], "stage": "original", "size": 64, "input_names": ["image"]}
    (run_dir / "run.json").write_text(json.dumps(info))
    images = root / "images"
    for label in ("COV", "Normal"):
        (images / label).mkdir(parents=True)
        for seed in range(4):
            slice_ = make_slice(label, size=64, seed=100 + seed)
            np.save(images / label / f"{label.lower()}_{seed}.npy", np.rint(slice_.image_hu).astype(np.int16))
    (images / "Normal" / "broken.png").write_bytes(b"not a png")
    return run_dir, images


def test_gradcam_command_writes_overlays_sheet_and_scores(run_and_images, capsys):
    from covidct.explain.gradcam import compute_heatmaps
    from covidct.train.run import load_run

    run_dir, images = run_and_images
    out = run_dir.parent / "out_default"
    code = main(["gradcam", "--run", str(run_dir), "--images", str(images / "COV"), str(images / "Normal"), "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "8 sample(s) explained with gradcam at layer relu2; 1 file(s) skipped" in printed
    assert "broken.png" in printed
    table = pd.read_csv(out / "gradcam.csv")
    assert len(table) == 8 and (out / "contact_sheet.png").stat().st_size > 10_000
    assert all((out / "overlays").joinpath(name).is_file() for name in table["overlay"].map(lambda p: p.split("/")[-1]))
    assert list(table["true_label"]) == ["COV"] * 4 + ["Normal"] * 4
    assert table["explained_class"].equals(table["predicted"])
    # The files went through the run's stage, and the heatmaps are those of the saved model on them.
    saved = np.load(out / "heatmaps.npz")
    loaded = load_run(run_dir)
    np.testing.assert_allclose(saved["heatmaps"], compute_heatmaps(loaded.model, saved["samples"]), atol=1e-5)
    probabilities = np.asarray(loaded.model.predict(saved["samples"].astype(np.float32), verbose=0))
    assert list(table["predicted"]) == [loaded.class_names[i] for i in probabilities.argmax(axis=1)]
    summary = json.loads((out / "lung_focus.json").read_text())
    assert summary["grouped_by"] == "true" and summary["layer"] == "relu2"
    assert summary["per_class"]["COV"]["median"] > summary["per_class"]["COV"]["threshold"]


@pytest.mark.filterwarnings("ignore::covidct.explain.focus.LungFocusWarning")  # COV explained on a Normal slice
def test_gradcam_command_target_class_and_refusals(run_and_images, capsys):
    run_dir, images = run_and_images
    out = run_dir.parent / "out_cov"
    args = ["gradcam", "--run", str(run_dir), "--images", str(images / "Normal" / "normal_0.npy"), "--out", str(out)]
    assert main([*args, "--class", "COV", "--method", "gradcam++"]) == 0
    assert pd.read_csv(out / "gradcam.csv")["explained_class"].tolist() == ["COV"]
    assert main([*args, "--class", "COV"]) == 2
    assert "already holds Grad-CAM results" in capsys.readouterr().err
    assert main([*args, "--class", "Covid", "--overwrite"]) == 2
    assert "Unknown class 'Covid'" in capsys.readouterr().err
    assert main([*args, "--layer", "nope", "--overwrite"]) == 2
    assert "relu2" in capsys.readouterr().err


def test_lung_focus_of_samples_matches_the_pieces(lesion_task):
    """The evaluation entry point: heatmaps, scores and summary of preprocessed samples in one call."""
    from covidct.explain import compute_heatmaps, lung_focus_scores
    from covidct.explain.runs import lung_focus_of_samples

    images = lesion_task["images"][:6].astype(np.uint8)
    masks = lesion_task["lung_labels"][:6]
    labels = np.where(lesion_task["labels"][:6] == 1, "COV", "Normal")
    focus = lung_focus_of_samples(lesion_task["model"], images, masks, labels, class_index=1, warn=False)
    heatmaps = compute_heatmaps(lesion_task["model"], images, class_index=1)
    np.testing.assert_allclose(focus.cams.heatmaps, heatmaps)
    np.testing.assert_allclose(focus.scores, lung_focus_scores(heatmaps, masks))
    np.testing.assert_allclose(focus.area_fractions, (masks > 0).mean(axis=(1, 2)))
    assert set(focus.summary["per_class"]) == set(labels) and focus.summary["layer"] == "relu2"
