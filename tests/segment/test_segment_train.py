"""Segmentation through train(cfg): run folder, learning, selection, CV, resume, lung input, predict, loaders."""

import json

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml

from covidct.cli import main
from covidct.errors import CovidctError
from covidct.segment.data import load_pairs
from covidct.segment.predict import overlay_masks, plot_overlays, predict_files
from covidct.segment.train import segmentation_config, train_segmenter
from covidct.train import folds as folds_module
from covidct.train import train
from covidct.train import trainer as trainer_module
from covidct.train.losses import dice_bce_loss
from covidct.train.segmentation import (
    dice_bce_numpy,
    grouped_folds,
    mask_validation_scores,
    predict_mask_logits,
)


def test_dice_bce_loss_by_hand():
    y = np.array([[[[1.0], [0.0]]]], np.float32)  # one 1x2 image
    logits = np.array([[[[0.0], [0.0]]]], np.float32)
    # BCE of p=0.5 is log 2; soft Dice = (2*0.5 + 1) / (1 + 1 + 1) = 2/3.
    assert float(np.mean(dice_bce_loss(y, logits))) == pytest.approx(np.log(2) + 1 / 3, rel=1e-5)
    assert dice_bce_numpy(y[..., 0], logits[..., 0]) == pytest.approx(np.log(2) + 1 / 3, rel=1e-9)
    rng = np.random.default_rng(0)
    masks = (rng.random((3, 8, 8, 1)) > 0.7).astype(np.float32)
    logits = rng.normal(0, 3, (3, 8, 8, 1)).astype(np.float32)
    # The validation loss (NumPy) is the training loss (keras.ops), averaged over images.
    assert dice_bce_numpy(masks, logits) == pytest.approx(
        float(np.mean(dice_bce_loss(masks, logits))), rel=1e-5
    )
    scores = mask_validation_scores(masks[..., 0], logits[..., 0])
    hard = logits[..., 0] >= 0
    expected = [2 * (h & (m > 0)).sum() / (h.sum() + (m > 0).sum()) for h, m in zip(hard, masks[..., 0])]
    assert scores["val_dice"] == pytest.approx(np.mean(expected))


def _val_dice_of_saved_model(run, pairs):
    import keras

    split = pd.read_csv(run / "split.csv", dtype=str)
    rows = np.array([pairs.names.index(name) for name in split.loc[split["split"] == "val", "name"]])
    model = keras.saving.load_model(run / "model.keras", compile=False)
    return mask_validation_scores(pairs.masks[rows], predict_mask_logits(model, pairs.images, rows))[
        "val_dice"
    ]


def test_train_writes_a_run_folder_and_learns(discs, tmp_path, tiny_segmenter):
    run = train_segmenter(
        tiny_segmenter,
        dataset="kaggle-lungs",
        size=32,
        epochs=10,
        batch_size=4,
        learning_rate=1e-2,
        run_dir=tmp_path / "run",
        pairs=discs,
    )
    for name in (
        "config.yaml",
        "model.keras",
        "history.csv",
        "run.json",
        "split.csv",
        "metrics_test.json",
        "per_image_test.csv",
        "run_report.md",
    ):
        assert (run / name).is_file(), name
    assert not (run / "train_state.npz").exists()
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["name"] == "tiny_unet" and config["task"] == "segmentation"
    assert config["training"]["loss"] == "dice_bce" and config["training"]["monitor"] == "val_dice"
    # Validation selects, test reports, and the JSON says so.
    info = json.loads((run / "run.json").read_text())
    assert (
        info["status"] == "finished" and info["selection_split"] == "val" and info["report_split"] == "test"
    )
    metrics = json.loads((run / "metrics_test.json").read_text())
    assert metrics["split"] == "test" and metrics["selection"]["split"] == "val"
    assert metrics["n_images"] == 6 and metrics["n_train"] + metrics["n_val"] == 18
    assert metrics["dice"]["mean"] > 0.8, metrics["dice"]
    assert metrics["dice"]["low"] <= metrics["dice"]["mean"] <= metrics["dice"]["high"]
    split = pd.read_csv(run / "split.csv", dtype=str)
    assert set(split.loc[split["split"] == "test", "name"]) == {f"disc_{i}.png" for i in range(18, 24)}
    assert not set(split.loc[split["split"] == "val", "group"]) & set(
        split.loc[split["split"] == "train", "group"]
    )
    # model.keras is the epoch with the best validation Dice, not the last one.
    history = pd.read_csv(run / "history.csv")
    assert info["best_score"] == pytest.approx(history["val_dice"].max())
    assert info["best_epoch"] == int(history["val_dice"].idxmax()) + 1
    assert _val_dice_of_saved_model(run, discs) == pytest.approx(info["best_score"], abs=1e-6)
    with pytest.raises(CovidctError, match="overwrite"):
        train_segmenter(tiny_segmenter, size=32, epochs=1, run_dir=run, pairs=discs)

    out = tmp_path / "pred"
    paths = []
    for index in (18, 19):
        path = tmp_path / f"img{index}.png"
        cv2.imwrite(str(path), discs.images[index, ..., 0])
        paths.append(path)
    assert (
        main(["segment", "predict", "--model", str(run), "--images", *map(str, paths), "--out", str(out)])
        == 0
    )
    mask = cv2.imread(str(out / "img18_mask.png"), cv2.IMREAD_GRAYSCALE)
    overlay = cv2.imread(str(out / "img18_overlay.png"))
    assert mask.shape == (32, 32) and overlay.shape == (32, 32, 3)
    assert ((mask > 0) == (discs.masks[18] > 0)).mean() > 0.9
    results = predict_files(run, [tmp_path / "missing.png"], out)
    assert "error" in results[0]


def test_resume_after_a_crash_gives_the_uninterrupted_result(discs, tmp_path, tiny_segmenter, crash_after_epoch):

    cfg = segmentation_config(
        tiny_segmenter,
        dataset="medseg",
        size=32,
        epochs=2,
        batch_size=4,
        learning_rate=1e-2,
        folds=2,
        rotation_deg=10,
    )
    reference = train(cfg, run_dir=tmp_path / "reference", data=discs, progress=False)

    with crash_after_epoch(0, unit="fold_1"):  # in the second fold
        train(cfg, run_dir=tmp_path / "resumed", data=discs, progress=False)
    resumed = tmp_path / "resumed"
    assert trainer_module.run_status(resumed) == "interrupted"
    assert (resumed / "fold_1" / "train_state.npz").is_file()
    with pytest.raises(CovidctError, match="--resume"):
        train(cfg, run_dir=resumed, data=discs, progress=False)
    finished_fold = (resumed / "fold_0" / "model.keras").stat().st_mtime_ns
    train(cfg, run_dir=resumed, data=discs, progress=False, resume=True)
    assert (resumed / "fold_0" / "model.keras").stat().st_mtime_ns == finished_fold  # not refitted
    assert json.loads((resumed / "run.json").read_text())["status"] == "finished"
    assert_same_folds(reference, resumed, 2)
    assert not list(resumed.rglob("train_state.npz"))


def assert_same_folds(run_a, run_b, folds: int) -> None:
    """The two CV run folders hold the same fold histories (but their timings) and checkpoint weights."""
    import keras

    for k in range(folds):
        history = [pd.read_csv(run / f"fold_{k}" / "history.csv").drop(columns=["seconds"]) for run in (run_a, run_b)]
        pd.testing.assert_frame_equal(*history, rtol=1e-5)
        weights = [
            keras.saving.load_model(run / f"fold_{k}" / "model.keras", compile=False).get_weights()
            for run in (run_a, run_b)
        ]
        for x, y in zip(*weights):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_folds_fitted_one_by_one_equal_the_sequential_cross_validation(discs, tmp_path, tiny_segmenter):
    """``fold=k`` (one process per fold on one run folder) then a finishing call == one sequential run."""
    settings = dict(dataset="medseg", size=32, epochs=2, batch_size=4, learning_rate=1e-2, folds=2, rotation_deg=10)
    reference = train_segmenter(tiny_segmenter, run_dir=tmp_path / "reference", pairs=discs, **settings)
    parallel = tmp_path / "parallel"
    # fold 1 first: the order of the processes does not matter
    train_segmenter(tiny_segmenter, run_dir=parallel, pairs=discs, fold=1, **settings)
    assert trainer_module.run_status(parallel) == "interrupted"  # unfinished until every fold is
    assert trainer_module.run_status(parallel / "fold_1") == "finished" and not (parallel / "fold_0").exists()
    assert not (parallel / "metrics_cv.json").exists()  # nothing evaluated yet
    fitted = (parallel / "fold_1" / "model.keras").stat().st_mtime_ns
    train_segmenter(tiny_segmenter, run_dir=parallel, pairs=discs, fold=0, **settings)
    train_segmenter(tiny_segmenter, run_dir=parallel, pairs=discs, fold=1, **settings)  # again: kept, not refitted
    assert (parallel / "fold_1" / "model.keras").stat().st_mtime_ns == fitted
    with pytest.raises(CovidctError, match="would delete the other folds"):
        train_segmenter(tiny_segmenter, run_dir=parallel, pairs=discs, fold=0, overwrite=True, **settings)
    with pytest.raises(CovidctError, match="another config"):  # a process with other settings cannot join
        train_segmenter(tiny_segmenter, run_dir=parallel, pairs=discs, fold=0, **{**settings, "epochs": 3})
    train_segmenter(tiny_segmenter, run_dir=parallel, pairs=discs, resume=True, **settings)  # finishes, evaluates
    assert (parallel / "fold_1" / "model.keras").stat().st_mtime_ns == fitted
    runs = [json.loads((run / "run.json").read_text()) for run in (reference, parallel)]
    assert runs[1]["status"] == "finished"
    assert [f["best_epoch"] for f in runs[0]["fold_results"]] == [f["best_epoch"] for f in runs[1]["fold_results"]]
    assert_same_folds(reference, parallel, 2)
    metrics = [json.loads((run / "metrics_cv.json").read_text()) for run in (reference, parallel)]
    assert metrics[1]["dice"]["mean"] == pytest.approx(metrics[0]["dice"]["mean"], abs=1e-6)
    assert metrics[1]["fold_dice"] == pytest.approx(metrics[0]["fold_dice"], abs=1e-6)
    # bad fold numbers and runs without folds are refused by name
    for bad in (2, -1, "0"):
        with pytest.raises(CovidctError, match=r"fold must be an integer in 0\.\.1"):
            train_segmenter(tiny_segmenter, run_dir=tmp_path / "bad", pairs=discs, fold=bad, **settings)
    with pytest.raises(CovidctError, match="segmentation.folds >= 2"):
        train_segmenter(tiny_segmenter, run_dir=tmp_path / "bad", pairs=discs, fold=0, **{**settings, "folds": 0})
    cfg = segmentation_config(tiny_segmenter, **settings)
    from dataclasses import replace

    with pytest.raises(CovidctError, match="applies to task segmentation, not pretrain"):
        train(replace(cfg, task="pretrain"), run_dir=tmp_path / "bad", fold=0)


def test_a_fold_is_fitted_by_one_process_at_a_time(discs, tmp_path, tiny_segmenter, caplog):
    """A fold's lock names a live owner (error) and is taken over from a process that no longer runs."""
    import logging
    import os
    import socket
    import subprocess
    import sys

    settings = dict(dataset="medseg", size=32, epochs=1, batch_size=4, folds=2)
    run = tmp_path / "locked"
    run.mkdir()
    lock = run / ".fold_0.lock"
    lock.write_text(f"{socket.gethostname()} {os.getpid()}\n")  # this test's own process: alive
    with pytest.raises(CovidctError, match=rf"fold_0 of .* is being fitted by process {os.getpid()} on .*delete the lock"):
        train_segmenter(tiny_segmenter, run_dir=run, pairs=discs, fold=0, **settings)
    assert not (run / "fold_0" / "model.keras").exists()  # nothing written beside the owner
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(f"{socket.gethostname()} {ended.stdout.strip()}\n")  # a process that has ended
    with caplog.at_level(logging.WARNING):
        train_segmenter(tiny_segmenter, run_dir=run, pairs=discs, fold=0, **settings)
    assert "taking its lock over" in caplog.text
    assert trainer_module.run_status(run / "fold_0") == "finished" and not lock.exists()  # released when done


@pytest.mark.slow  # worker processes; make test-slow
def test_folds_in_parallel_processes_equal_the_sequential_run(tmp_path, capsys):
    """``jobs=2`` on 3 folds (one process waits for a free slot; a fresh process per fold, registered models
    only), then finished here == ``jobs=1``."""
    from covidct.segment.data import phantom_pairs

    pairs = phantom_pairs(24, 32, "lesion")
    settings = dict(dataset="phantom", size=32, epochs=2, batch_size=4, learning_rate=1e-2, folds=3,
                    model_kwargs={"base_filters": 4})
    reference = train_segmenter("unet", run_dir=tmp_path / "reference", pairs=pairs, **settings)
    parallel = train_segmenter("unet", run_dir=tmp_path / "parallel", pairs=pairs, jobs=2, **settings)
    assert_same_folds(reference, parallel, 3)
    metrics = [json.loads((run / "metrics_cv.json").read_text()) for run in (reference, parallel)]
    assert metrics[1]["fold_dice"] == pytest.approx(metrics[0]["fold_dice"], abs=1e-6)
    assert json.loads((parallel / "run.json").read_text())["status"] == "finished"
    import re
    import sys

    processes = set()
    for k in range(3):  # each process logged its fold to its own file
        processes.update(re.findall(rf"fold_{k} in process (\d+)", (parallel / f"fold_{k}.log").read_text()))
    # a fresh process per fold (max_tasks_per_child, Python >= 3.11); two workers at least before that
    assert len(processes) == 3 if sys.version_info >= (3, 11) else len(processes) >= 2
    for bad, message in ((dict(jobs=0), "positive integer"), (dict(jobs=2, folds=0), "segmentation.folds >= 2"),
                         (dict(jobs=2, fold=0), "no fold argument")):
        with pytest.raises(CovidctError, match=message):
            train_segmenter("unet", run_dir=tmp_path / "bad", pairs=pairs, **{**settings, **bad})
    assert main(["segment", "train", "--run-dir", str(tmp_path / "cli"), "--jobs", "2"]) != 0  # no --folds
    assert "parallel folds need a cross-validation" in capsys.readouterr().err
    # a fold that fails in its process is named with its log
    with pytest.raises(CovidctError, match=r"fold_\d of .* failed \(and 2 other fold\(s\)\).*fold_\d\.log"):
        train_segmenter("unet", run_dir=tmp_path / "failing", pairs=pairs, jobs=2,
                        **{**settings, "weights": str(tmp_path / "missing.keras")})


PLUGIN = """
from covidct.models import registry
from covidct.models.unet import build_unet


def build_plugin_unet(input_shape, num_classes=1, weights=None, **kwargs):
    return build_unet(input_shape, num_classes, weights=weights, base_filters=4, **kwargs)


registry.register_model(registry.ModelSpec(name="plugin_unet", builder=build_plugin_unet, task="segmentation",
                                           family="test", input_shape=(32, 32, 1)))
"""


@pytest.mark.slow  # worker processes; make test-slow
def test_parallel_folds_import_the_module_that_registered_the_model(tmp_path, monkeypatch):
    """A model registered by a module outside covidct is imported by each fold process; one registered in an
    interactive session (no file behind ``__main__``) is refused before any process starts."""
    import sys
    import types

    from covidct.models import registry
    from covidct.segment.data import phantom_pairs

    (tmp_path / "covidct_plugin_for_tests.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned processes get the parent's sys.path
    monkeypatch.delitem(sys.modules, "covidct_plugin_for_tests", raising=False)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # the plugin's entry ends with the test
    import covidct_plugin_for_tests  # noqa: F401  (registers plugin_unet here)

    assert folds_module.model_module("unet") is None and folds_module.model_module(
        "plugin_unet") == "covidct_plugin_for_tests"
    pairs = phantom_pairs(24, 32, "lesion")
    settings = dict(dataset="phantom", size=32, epochs=1, batch_size=4, folds=2)
    run = train_segmenter("plugin_unet", run_dir=tmp_path / "plugin", pairs=pairs, jobs=2, **settings)
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    assert all(f"fold_{k} in process" in (run / f"fold_{k}.log").read_text() for k in range(2))

    def notebook_builder(input_shape, num_classes=1, weights=None):
        return registry.get_spec("plugin_unet").builder(input_shape, num_classes, weights)

    notebook_builder.__module__ = "__main__"  # what a function defined in a notebook cell carries
    registry._REGISTRY["notebook_unet"] = registry.ModelSpec(
        name="notebook_unet", builder=notebook_builder, task="segmentation", family="test", input_shape=(32, 32, 1))
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))  # an interactive session: no __file__
    with pytest.raises(CovidctError, match="registered in this interactive session.*jobs=1"):
        train_segmenter("notebook_unet", run_dir=tmp_path / "notebook", pairs=pairs, jobs=2, **settings)
    assert not list((tmp_path / "notebook").glob("fold_*.log"))  # refused before any process started


def test_lung_input_auto_chooses_on_validation(discs, tmp_path, tiny_segmenter):
    # A "lung mask" that hides everything: the masked variant cannot find the discs, so validation
    # must pick the plain images.
    discs.lungs = np.zeros_like(discs.masks)
    run = train_segmenter(
        tiny_segmenter,
        size=32,
        epochs=6,
        batch_size=4,
        learning_rate=1e-2,
        run_dir=tmp_path / "auto",
        pairs=discs,
        lung_input="auto",
    )
    metrics = json.loads((run / "metrics_test.json").read_text())
    assert metrics["lung_input"] == "none"
    by_input = metrics["val_dice_by_input"]
    assert by_input["none"] > by_input["masked"] and by_input["none"] == metrics["val_dice"]
    for variant in ("none", "masked"):
        assert (run / f"input_{variant}" / "history.csv").is_file()
        assert (run / f"input_{variant}" / "model.keras").is_file()
    assert (run / "model.keras").read_bytes() == (run / "input_none" / "model.keras").read_bytes()
    # Prediction feeds a saved model what it was trained on.
    from covidct.segment.predict import lung_input_of

    assert lung_input_of(run / "model.keras") == "none"
    (tmp_path / "masked_run").mkdir()
    (tmp_path / "masked_run" / "run.json").write_text(
        json.dumps({"task": "segmentation", "lung_input": "masked"})
    )
    assert lung_input_of(tmp_path / "masked_run" / "model.keras") == "masked"
    with pytest.raises(CovidctError, match="with_lungs"):
        discs.lungs = None
        train_segmenter(
            tiny_segmenter, size=32, epochs=1, run_dir=tmp_path / "m", pairs=discs, lung_input="masked"
        )
    with pytest.raises(CovidctError, match="Did you mean: masked"):
        train_segmenter(
            tiny_segmenter, size=32, epochs=1, run_dir=tmp_path / "x", pairs=discs, lung_input="mask"
        )


def test_cross_validation_from_a_yaml_config_is_grouped_and_reports_every_image_once(
    tmp_path, tiny_segmenter, capsys
):
    """The one training path from a config file (`covidct train`), then `covidct segment evaluate`."""
    from covidct.segment.data import phantom_pairs

    pairs = phantom_pairs(24, 32, "lesion")
    groups = pairs.groups
    folds = grouped_folds(groups, 3)
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(groups)))
    for test in folds:
        assert not set(groups[test]) & set(np.delete(groups, test))
    with pytest.raises(CovidctError, match="folds"):
        grouped_folds(groups, 100)

    config = tmp_path / "segment.yaml"
    config.write_text(
        "task: segmentation\n"
        "data: {dataset: phantom, size: 32, options: {n: 24, target: lesion}}\n"
        f"model: {{name: {tiny_segmenter}}}\n"
        "training: {epochs: 1, batch_size: 4, mixed_precision: 'off'}\n"
        "segmentation: {folds: 2}\n"
    )
    run = tmp_path / "cv"
    assert main(["train", "--config", str(config), "--run-dir", str(run), "--evaluate"]) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["task"] == "segmentation" and info["folds"] == 2 and info["selection_split"] == "val"
    first = json.loads((run / "metrics_cv.json").read_text())  # written by `covidct train --evaluate`
    # The classification evaluator refuses and points to the segmentation one.
    assert main(["evaluate", "--run", str(run)]) != 0
    assert "covidct segment evaluate --run" in capsys.readouterr().err
    assert main(["segment", "evaluate", "--run", str(run)]) == 0
    summary = json.loads((run / "metrics_cv.json").read_text())
    assert summary["dice"] == first["dice"]  # evaluation is deterministic
    per_image = pd.read_csv(run / "per_image_cv.csv")
    assert summary["n_images"] == 24 and sorted(per_image["name"]) == sorted(pairs.names)
    assert len(summary["fold_dice"]) == 2 and summary["fold_lung_input"] == ["none", "none"]
    assert summary["selection"]["split"] == "val" and summary["fold_epochs_run"] == [1, 1]
    # Normal phantoms have no lesion: the Dice on slices with infection leaves them out.
    assert summary["n_slices_with_infection"] == int(pairs.masks.any(axis=(1, 2)).sum()) == 15
    expected = per_image.loc[per_image["true_fraction"] > 0, "dice"].mean()
    assert summary["dice_slices_with_infection"]["mean"] == pytest.approx(expected)
    assert summary["dice"]["mean"] == pytest.approx(per_image["dice"].mean())
    # `covidct report`: one row for the CV run (not one per fold), its Dice with the CI, no F1/AUC.
    from covidct.evaluate.report import collect_results

    table = collect_results(tmp_path)
    assert list(table["run"]) == ["cv"] and table["macro-F1 [95% CI]"].iloc[0] == ""
    dice = summary["dice"]
    assert table["Dice [95% CI]"].iloc[0] == f"{dice['mean']:.3f} [{dice['low']:.3f}, {dice['high']:.3f}]"
    for k in range(2):
        fold = run / f"fold_{k}"
        assert (fold / "model.keras").is_file() and json.loads((fold / "run.json").read_text())[
            "status"
        ] == "finished"
        split = pd.read_csv(fold / "split.csv", dtype=str)
        parts = {part: set(split.loc[split["split"] == part, "group"]) for part in ("train", "val", "test")}
        assert (
            parts["val"]
            and parts["train"]
            and not parts["train"] & parts["test"]
            and not parts["val"] & parts["test"]
        )
        fold_metrics = json.loads((fold / "metrics_test.json").read_text())
        assert fold_metrics["dice"]["mean"] == pytest.approx(summary["fold_dice"][k])
        assert fold_metrics["split"] == "test" and fold_metrics["n_images"] == (per_image["fold"] == k).sum()


def test_overlay_colours_and_figure():
    image = np.full((8, 8), 100, np.uint8)
    pred = np.zeros((8, 8), bool)
    pred[2:6, 2:6] = True
    rgb = overlay_masks(image, pred, pred, alpha=0.5)
    assert tuple(rgb[3, 3]) == (165, 70, 70)  # 0.5 * 100 + 0.5 * (230, 40, 40)
    assert tuple(rgb[2, 2]) == (0, 200, 0)  # the true mask's outline
    figure = plot_overlays(np.stack([image, image]), np.stack([pred, pred]), titles=["a", "b"], columns=2)
    assert len(figure.axes) == 2


def test_load_pairs_from_folder_layouts(tmp_path):
    for split in ("train", "test"):
        for kind in ("images", "masks"):
            (tmp_path / "kaggle-lungs-ct-64px" / split / kind).mkdir(parents=True)
        for i in range(2):
            cv2.imwrite(
                str(tmp_path / "kaggle-lungs-ct-64px" / split / "images" / f"{split}_{i}.png"),
                np.full((64, 64), 100, np.uint8),
            )
            cv2.imwrite(
                str(tmp_path / "kaggle-lungs-ct-64px" / split / "masks" / f"{split}_{i}.png"),
                np.pad(np.full((32, 32), 255, np.uint8), 16),
            )
    pairs = load_pairs("kaggle-lungs", tmp_path, size=32)
    assert pairs.images.shape == (4, 32, 32, 1) and pairs.masks.shape == (4, 32, 32)
    assert sorted(pairs.splits.tolist()) == ["test", "test", "train", "train"]
    assert pairs.masks[0].sum() == 16 * 16
    (tmp_path / "medseg-covid19-100" / "images").mkdir(parents=True)
    (tmp_path / "medseg-covid19-100" / "masks").mkdir(parents=True)
    for i in range(1, 8):
        cv2.imwrite(
            str(tmp_path / "medseg-covid19-100" / "images" / f"tr_im_z{i:03d}.png"),
            np.zeros((16, 16), np.uint8),
        )
        cv2.imwrite(
            str(tmp_path / "medseg-covid19-100" / "masks" / f"tr_mask_z{i:03d}.png"),
            np.full((16, 16), 85, np.uint8),
        )
    medseg = load_pairs("medseg", tmp_path, size=16)
    assert medseg.masks.all() and len(set(medseg.groups)) == 2  # blocks of 5 consecutive slices
    with pytest.raises(CovidctError, match="Did you mean"):
        load_pairs("kaggle-lung", tmp_path)


@pytest.mark.realdata
def test_real_segmentation_sets_load(data_root):
    lungs = load_pairs("kaggle-lungs", data_root, size=64)
    assert (lungs.splits == "train").sum() == 213 and (lungs.splits == "test").sum() == 54
    medseg = load_pairs("medseg", data_root, size=64)
    assert len(medseg) == 100 and (medseg.masks.reshape(100, -1).max(axis=1) > 0).sum() >= 97


def test_phantom_pairs_hold_the_exact_masks():
    from covidct.data.phantom import make_dataset
    from covidct.segment.data import phantom_pairs

    pairs = phantom_pairs(10, 32, "lesion", seed=3)
    truth = make_dataset(n=10, size=32, seed=3)
    np.testing.assert_array_equal(pairs.masks, truth.lesion_masks.astype(np.uint8))
    assert pairs.images.shape == (10, 32, 32, 1) and pairs.images.dtype == np.uint8
    train_groups = set(pairs.groups[pairs.splits == "train"])
    assert train_groups and not train_groups & set(pairs.groups[pairs.splits == "test"])
    lungs = phantom_pairs(10, 32, "lungs", seed=3)
    np.testing.assert_array_equal(lungs.masks, (truth.lung_labels > 0).astype(np.uint8))


def test_align_mask_orientation_turns_a_quarter_turned_mask_back():
    from covidct.data.phantom import make_slice
    from covidct.preprocess.body import to_display_u8
    from covidct.segment.data import align_mask_orientation

    phantom = make_slice("COV", size=128, seed=0)
    image, lesion = to_display_u8(phantom.image_hu), phantom.lesion.astype(np.uint8)
    aligned, turns = align_mask_orientation(image, np.rot90(lesion, 1))
    assert turns == -1 and np.array_equal(aligned, lesion)
    # A lesion in the right lung only: unturned it lies in the lungs, turned it would not.
    right = (lesion * (phantom.lung_labels == 1)).astype(np.uint8)
    same, turns = align_mask_orientation(image, right)
    assert turns == 0 and np.array_equal(same, right)


@pytest.mark.realdata
def test_medseg_masks_are_aligned_with_their_images(data_root):
    from covidct.preprocess.lungs import lung_mask

    medseg = load_pairs("medseg", data_root, size=128)
    inside = [
        (lung_mask(image[..., 0], warn=False)[mask > 0] > 0).mean()
        for image, mask in zip(medseg.images[::5], medseg.masks[::5])
        if mask.any()
    ]
    assert np.mean(inside) >= 0.8


def test_augment_batch_moves_images_and_masks_together():
    from covidct.train.segmentation import augment_batch

    rng = np.random.default_rng(0)
    masks = np.zeros((16, 32, 32, 1), np.float32)
    masks[:, 4:20, 6:14] = 1.0  # off-centre, so a flip or turn moves it
    images = masks * 200.0
    flipped, flipped_masks = augment_batch(images, masks, np.random.default_rng(1), rotation_deg=0.0)
    moved = [not np.array_equal(m, masks[0]) for m in flipped_masks]
    assert 0 < sum(moved) < 16  # about half mirrored
    for image, mask in zip(flipped, flipped_masks):
        assert np.array_equal(image, mask * 200.0)
        assert np.array_equal(mask, masks[0]) or np.array_equal(mask, masks[0, :, ::-1])
    turned, turned_masks = augment_batch(images, masks, rng, rotation_deg=10.0)
    assert set(np.unique(turned_masks)) <= {0.0, 1.0}
    # Linear vs nearest interpolation differ only at the edge of the rectangle.
    assert ((turned > 100) == (turned_masks > 0)).mean() > 0.97
    areas = turned_masks.sum(axis=(1, 2, 3))
    assert np.all(np.abs(areas - masks[0].sum()) <= 0.15 * masks[0].sum())
    assert images.max() == 200.0 and masks.sum() == 16 * 16 * 8  # inputs untouched
    unflipped, _ = augment_batch(images, masks, np.random.default_rng(1), rotation_deg=0.0, flip=False)
    assert np.array_equal(unflipped, images)


def test_mask_batches_are_a_function_of_seed_epoch_and_batch(discs):
    """A resumed run must draw the batches an uninterrupted one would: same (seed, epoch, batch), same pairs."""
    from covidct.train.segmentation import MaskSequence

    def batches(epoch):
        sequence = MaskSequence(
            discs.images,
            discs.masks,
            np.arange(18),
            batch_size=4,
            seed=3,
            augmentation={"flip": True, "rotation_deg": 10.0},
        )
        sequence.set_epoch(epoch)
        return [sequence[i] for i in range(len(sequence))]

    first, again, other = batches(1), batches(1), batches(2)
    assert len(first) == 5 and first[-1][0].shape == (2, 32, 32, 1) and first[0][1].shape == (4, 32, 32, 1)
    for (x, y), (x2, y2) in zip(first, again):
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(y, y2)
    assert not all(np.array_equal(x, x2) for (x, _), (x2, _) in zip(first, other))
    # Every training pair appears once per epoch, and masks stay binary.
    assert sum(len(x) for x, _ in first) == 18
    assert set(np.unique(np.concatenate([y for _, y in first]))) <= {0.0, 1.0}


def test_medseg_pairs_follow_the_data_layer_orientation(tmp_path, monkeypatch):
    """load_pairs turns each mask by the manifest's ``mask_rot90`` and groups blocks of 5 slices."""
    from covidct.data.datasets import load_dataset
    from covidct.data.phantom import make_slice
    from covidct.preprocess.body import to_display_u8

    monkeypatch.setenv("COVIDCT_CACHE", str(tmp_path / "cache"))
    phantom = make_slice("COV", size=128, seed=1)
    image, lesion = to_display_u8(phantom.image_hu), phantom.lesion.astype(np.uint8)
    folder = tmp_path / "medseg-covid19-100"
    for kind in ("images", "masks"):
        (folder / kind).mkdir(parents=True)
    for k in range(1, 7):
        cv2.imwrite(str(folder / "images" / f"tr_im_z{k:03d}.png"), image)
        cv2.imwrite(
            str(folder / "masks" / f"tr_mask_z{k:03d}.png"), np.ascontiguousarray(np.rot90(lesion, 1)) * 255
        )
    manifest = load_dataset("medseg", folder)
    pairs = load_pairs("medseg", tmp_path, size=64)
    assert (manifest["mask_rot90"] == -1).all()
    # Area-averaged and cut at 0.5: the mask stays centred on its image (INTER_NEAREST would shift it).
    expected = (cv2.resize(lesion.astype(np.float32), (64, 64), interpolation=cv2.INTER_AREA) >= 0.5).astype(np.uint8)
    for mask in pairs.masks:
        np.testing.assert_array_equal(mask, expected)
    assert pairs.groups.tolist() == manifest["group"].tolist() == ["medseg_block00"] * 5 + ["medseg_block01"]
    assert "5 consecutive slice numbers" in pairs.group_proxy
    with_lungs = load_pairs("medseg", tmp_path, size=64, with_lungs=True)
    assert with_lungs.lungs.shape == (6, 64, 64) and set(np.unique(with_lungs.lungs)) <= {0, 1}
    # The dilated lung mask holds the whole lesion of this phantom.
    assert (with_lungs.lungs[0][expected > 0] > 0).mean() == 1.0


def test_bn_momentum_reaches_every_batch_norm_layer():
    import keras

    from covidct.train.batchnorm import set_batch_norm_momentum

    def two_bn(input_shape):
        inputs = keras.Input(input_shape, name="image")
        x = keras.layers.BatchNormalization(name="bn_outer")(inputs)
        inner = keras.Sequential([keras.layers.BatchNormalization(name="bn_inner")], name="inner")
        return keras.Model(inputs, keras.layers.Conv2D(1, 1, name="logits")(inner(x)), name="two_bn")

    model = two_bn((16, 16, 1))
    assert model.get_layer("bn_outer").momentum == 0.99
    assert set_batch_norm_momentum(model, 0.9) == 2
    assert model.get_layer("bn_outer").momentum == 0.9
    assert model.get_layer("inner").get_layer("bn_inner").momentum == 0.9


def test_fixed_budget_fits_every_training_group_and_selects_nothing(tmp_path, tiny_segmenter, capsys):
    """monitor last + val_fraction 0: the final epoch of each fold is kept, trained on all non-test groups."""
    from covidct.segment.data import phantom_pairs

    pairs = phantom_pairs(24, 32, "lesion")
    for bad in ({"monitor": "val_dice"}, {"monitor": "last", "lung_input": "auto"}):
        with pytest.raises(CovidctError, match="val_fraction=0"):
            segmentation_config(model=tiny_segmenter, dataset="phantom", folds=2, val_fraction=0, **bad)
    run = train_segmenter(
        model=tiny_segmenter, dataset="phantom", size=32, epochs=2, batch_size=4, folds=2, pairs=pairs,
        monitor="last", schedule="cosine", val_fraction=0, run_dir=tmp_path / "fixed",
    )
    info = json.loads((run / "run.json").read_text())
    assert info["selection_split"] == "none" and "no validation part" in info["selection"]
    assert "Selection: nothing" in (run / "run_report.md").read_text()
    for k, fold in enumerate(info["fold_results"]):
        split = pd.read_csv(run / f"fold_{k}" / "split.csv", dtype=str)
        counts = split["split"].value_counts().to_dict()
        assert "val" not in counts and counts["train"] + counts["test"] == 24
        assert fold["split_counts"]["val"]["images"] == 0
        assert fold["best_epoch"] == fold["epochs_run"] == 2 and fold["val_dice"] is None
        history = pd.read_csv(run / f"fold_{k}" / "history.csv")
        assert len(history) == 2 and "val_dice" not in history.columns
        # cosine decay over both epochs' steps, read at each epoch's end: 1e-3 * (1 + cos(pi / 2)) / 2, then 0
        assert history["learning_rate"].tolist() == pytest.approx([5e-4, 0.0], abs=1e-9)
    summary = json.loads((run / "metrics_cv.json").read_text())
    assert summary["n_images"] == 24 and summary["fold_val_dice"] == [None, None]
    assert summary["selection"]["monitor"] == "last" and summary["selection"]["split"] == "none"
    capsys.readouterr()
    assert main(["segment", "evaluate", "--run", str(run)]) == 0
    assert "nothing selected: fixed epoch budget" in capsys.readouterr().out


def test_mirror_tta_averages_the_two_probability_maps_by_hand():
    """A 1x3 kernel reading the left neighbour: with TTA the mirrored pass reads the right one."""
    import keras

    from covidct.segment.data import SegmentationPairs
    from covidct.segment.evaluate import predict_test_masks

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 8, 8, 1)).astype(np.uint8)
    inputs = keras.Input((8, 8, 1))
    conv = keras.layers.Conv2D(1, (1, 3), padding="same")
    model = keras.Model(inputs, conv(inputs))
    conv.set_weights([np.array([0.05, 0.0, 0.0], np.float32).reshape(1, 3, 1, 1), np.array([-6.0], np.float32)])
    pairs = SegmentationPairs(images, np.zeros((3, 8, 8), np.uint8), ["a", "b", "c"], np.array([""] * 3), np.array(["g"] * 3))
    x = np.pad(images[..., 0].astype(np.float64), ((0, 0), (0, 0), (1, 1)))  # zero padding of 'same'
    left, right = 0.05 * x[:, :, :-2] - 6.0, 0.05 * x[:, :, 2:] - 6.0  # logit from x[j-1] / mirrored: x[j+1]
    sigmoid = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    plain, _ = predict_test_masks(model, pairs, "none")
    averaged, _ = predict_test_masks(model, pairs, "none", tta=True)
    np.testing.assert_array_equal(plain, sigmoid(left) >= 0.5)
    np.testing.assert_array_equal(averaged, (sigmoid(left) + sigmoid(right)) / 2 >= 0.5)
    assert (averaged != plain).any()  # the case is not trivial
