"""task: pretrain (covidct.train.restoration): the Models Genesis distortions, batches, loss, the run, the hand-over."""

import json

import cv2
import numpy as np
import pytest

from covidct.config import PretrainConfig, config_from_dict, load_config, validate_config
from covidct.errors import CovidctError
from covidct.train import restoration, train
from covidct.train.losses import make_loss


def _cfg(**sections):
    tree = {
        "task": "pretrain",
        "name": "pt",
        "data": {"dataset": "phantom", "size": 32, "options": {"n": 30}},
        "model": {"name": "unet", "kwargs": {"base_filters": 4, "batch_norm": True}},
        "training": {"epochs": 3, "batch_size": 8, "learning_rate": 0.003, "bn_recalibration": 0},
        "segmentation": {"val_fraction": 0.3},
    }
    for key, value in sections.items():
        if value is None:
            tree.pop(key, None)
        else:
            tree[key] = {**tree.get(key, {}), **value} if isinstance(value, dict) else value
    return validate_config(config_from_dict(tree))


# ---------------------------------------------------------------------------------------------- distortions


def test_bezier_curve_by_hand():
    xs, ys = restoration.bezier_curve(np.array([[0, 0], [0, 1], [1, 0], [1, 1]]), n=3)
    # t = 1/2: 1/8 (0,0) + 3/8 (0,1) + 3/8 (1,0) + 1/8 (1,1) = (1/2, 1/2); the ends are the end points.
    np.testing.assert_allclose(xs, [0, 0.5, 1])
    np.testing.assert_allclose(ys, [0, 0.5, 1])
    # Control points on the diagonal at thirds give the straight line y = x.
    xs, ys = restoration.bezier_curve(np.array([[0, 0], [1 / 3, 1 / 3], [2 / 3, 2 / 3], [1, 1]]), n=11)
    np.testing.assert_allclose(xs, ys, atol=1e-12)


def test_nonlinear_intensity_is_a_monotone_map_of_the_unit_interval():
    ramp = np.linspace(0, 1, 256, dtype=np.float32)[None, :]
    directions = set()
    for seed in range(20):
        out = restoration.nonlinear_intensity(ramp, np.random.default_rng(seed))[0]
        steps = np.diff(out)
        assert (steps >= -1e-6).all() or (steps <= 1e-6).all()  # monotone
        assert out.min() >= 0 and out.max() <= 1
        # Increasing curves fix 0 and 1; decreasing ones (inversion) swap them.
        if steps.sum() > 0:
            assert out[0] == pytest.approx(0, abs=1e-6) and out[-1] == pytest.approx(1, abs=1e-6)
            directions.add("up")
        else:
            assert out[0] == pytest.approx(1, abs=1e-6) and out[-1] == pytest.approx(0, abs=1e-6)
            directions.add("down")
    assert directions == {"up", "down"}


def test_local_pixel_shuffle_permutes_inside_one_small_window():
    rng = np.random.default_rng(0)
    image = rng.random((64, 64)).astype(np.float32)  # distinct values: every moved pixel shows
    out = restoration.local_pixel_shuffle(image, np.random.default_rng(1), blocks=1)
    changed = np.argwhere(out != image)
    assert len(changed) > 0
    (top, left), (bottom, right) = changed.min(0), changed.max(0)
    assert bottom - top < 8 and right - left < 8  # windows are at most 1/8 of the side
    window = (slice(top, bottom + 1), slice(left, right + 1))
    np.testing.assert_array_equal(np.sort(out[window].ravel()), np.sort(image[window].ravel()))
    np.testing.assert_array_equal(np.sort(out.ravel()), np.sort(image.ravel()))


def test_in_and_out_painting_touch_the_expected_areas():
    image = np.full((60, 60), 0.5, np.float32)
    for seed in range(10):
        painted = restoration.inpaint(image, np.random.default_rng(seed))
        changed = np.mean(painted != image)
        # 1 to 5 boxes of at most 1/3 x 1/3 of the image: at most 5/9 of it; noise lies in [0, 1).
        assert 0 < changed <= 5 / 9 and painted.min() >= 0 and painted.max() < 1
        kept = np.mean(restoration.outpaint(image, np.random.default_rng(seed)) == image)
        # At least one kept box of at least (3/7 of the side)^2, at most 4 boxes of (4/7)^2 (noise hits 0.5 never).
        assert (25 / 60) ** 2 - 1e-9 <= kept <= min(1.0, 4 * (35 / 60) ** 2)


def test_distort_with_zero_rates_is_the_identity_and_draws_are_reproducible():
    image = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    off = PretrainConfig(nonlinear_rate=0, shuffle_rate=0, paint_rate=0, inpaint_rate=0)
    np.testing.assert_array_equal(restoration.distort(image, np.random.default_rng(3), off), image)
    on = PretrainConfig(nonlinear_rate=1, shuffle_rate=1, paint_rate=1, inpaint_rate=0.5)
    a = restoration.distort(image, np.random.default_rng(3), on)
    b = restoration.distort(image, np.random.default_rng(3), on)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, image) and a.min() >= 0 and a.max() <= 1


def test_sequence_gives_distorted_inputs_and_clean_targets():
    images = (np.random.default_rng(0).random((10, 16, 16, 1)) * 255).astype(np.uint8)
    sequence = restoration.RestorationSequence(images, np.arange(10), PretrainConfig(), batch_size=4, seed=5)
    x, y = sequence[0]
    rows = sequence.order[:4]
    np.testing.assert_allclose(y, images[rows] / 255.0, rtol=1e-6)  # no geometric augmentation: clean targets
    assert x.shape == y.shape == (4, 16, 16, 1) and 0 <= x.min() and x.max() <= 255
    np.testing.assert_array_equal(sequence[0][0], x)  # the same (seed, epoch, batch): the same batch
    sequence.set_epoch(1)
    assert not np.array_equal(sequence[0][0], x)
    # Grey images stored in 3 channels: the distorted grey image in each channel, a one-channel target.
    x3, y3 = restoration.RestorationSequence(np.repeat(images, 3, -1), np.arange(10), PretrainConfig(), batch_size=4,
                                             seed=5)[0]
    assert x3.shape == (4, 16, 16, 3) and y3.shape == (4, 16, 16, 1)
    np.testing.assert_array_equal(x3[..., 1], x3[..., 0])
    np.testing.assert_array_equal(x3[..., :1], x)


def test_restoration_loss_numpy_equals_keras():
    rng = np.random.default_rng(0)
    clean = rng.random((3, 8, 8, 1)).astype(np.float32)
    logits = rng.normal(0, 2, (3, 8, 8, 1)).astype(np.float32)
    keras_loss = float(make_loss("restoration_mse", 1)(clean, logits))
    assert restoration.restoration_mse_numpy(clean, logits) == pytest.approx(keras_loss, rel=1e-5)
    # By hand: logit 0 -> 0.5, against 1 -> 0.25.
    assert restoration.restoration_mse_numpy(np.ones((1, 2)), np.zeros((1, 2))) == pytest.approx(0.25)


# ---------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": {"name": "cnn3d_kerasio", "kwargs": {}}, "segmentation": None}, "one 2-D image input"),
        ({"model": {"name": "masked_efficientnet_b0", "kwargs": {}}, "segmentation": None}, "one 2-D image input"),
        ({"training": {"loss": "dice_bce"}}, "restoration_mse"),
        ({"training": {"monitor": "val_dice"}}, "not a pretrain selection rule"),
        ({"segmentation": {"lung_input": "auto"}}, "lung_input"),
        ({"segmentation": {"folds": 5}}, "folds"),
        ({"segmentation": {"val_fraction": 0}}, "val_fraction=0"),
        ({"pretrain": {"paint_rate": 1.5}}, "pretrain.paint_rate"),
        ({"evaluation": {"tta": True}}, "evaluation section"),
    ],
)
def test_pretrain_config_errors(change, message):
    with pytest.raises(CovidctError, match=message):
        _cfg(**change)


def test_pretrain_settings_are_refused_on_other_tasks():
    with pytest.raises(CovidctError, match="applies to task: pretrain only"):
        validate_config(config_from_dict({"pretrain": {"paint_rate": 0.5}}))
    with pytest.raises(CovidctError, match="restoration loss"):
        validate_config(config_from_dict({"training": {"loss": "restoration_mse"}}))


def test_pretrain_defaults_and_shipped_configs():
    cfg = _cfg()
    assert (cfg.training.loss, cfg.training.monitor, cfg.run_name) == ("restoration_mse", "val_loss", "pt")
    shipped = load_config("configs/medseg/unet-pretrain-genesis.yaml")
    finetune = load_config("configs/medseg/unet-infection-lungcrop-genesis.yaml")
    base = load_config("configs/medseg/unet-infection-lungcrop.yaml")
    # The fine-tuning run differs from the shipped recipe only by its name and initial weights ...
    assert finetune.model.weights == f"runs/{shipped.run_name}/model.keras"
    strip = lambda c: (c.training, c.segmentation, c.data, c.model.name, c.model.kwargs)  # noqa: E731
    assert strip(finetune) == strip(base)
    # ... and the pretraining makes its inputs the way the segmenter sees them, with the same network.
    assert (shipped.model.name, shipped.model.kwargs, shipped.data.size) == (base.model.name, base.model.kwargs, base.data.size)
    assert (shipped.segmentation.crop, shipped.segmentation.lung_input) == (base.segmentation.crop, base.segmentation.lung_input)


# ---------------------------------------------------------------------------------------------- the run


def test_pretrain_run_learns_and_hands_its_weights_to_a_segmentation_run(tmp_path):
    from covidct.train.build import build_segmentation_model

    cfg = _cfg(output_root=str(tmp_path), training={"epochs": 4})
    run = train(cfg, progress=False)
    info = json.loads((run / "run.json").read_text())
    assert info["task"] == "pretrain" and info["status"] == "finished" and info["selection_split"] == "val"
    assert info["split_counts"]["train"]["images"] + info["split_counts"]["val"]["images"] == 30
    history = np.genfromtxt(run / "history.csv", delimiter=",", names=True)
    # Restoration is learned: the validation error (fixed distortions) falls below the first epoch's.
    assert history["val_loss"].min() < history["val_loss"][0]
    assert info["best_score"] == pytest.approx(history["val_loss"].min())
    assert "not a segmentation or diagnostic score" in (run / "run_report.md").read_text()
    from covidct.train.run import load_run

    with pytest.raises(CovidctError, match="self-supervised pretraining run"):
        load_run(run)  # evaluate, predict and Grad-CAM refuse it: it predicts no class or mask
    from covidct.preprocess.lungs import load_segmenter

    with pytest.raises(CovidctError, match="pretraining checkpoint"):
        load_segmenter(run)  # covidct segment predict refuses it too

    # The segmentation run starts from exactly those weights (model.weights = the pretraining's model.keras).
    import keras

    finetune_tree = {
        "task": "segmentation",
        "data": {"dataset": "phantom", "size": 32},
        "model": {"name": "unet", "kwargs": {"base_filters": 4, "batch_norm": True}, "weights": str(run / "model.keras")},
    }
    finetune = validate_config(config_from_dict(finetune_tree))
    started = build_segmentation_model(finetune, (32, 32))
    saved = keras.saving.load_model(run / "model.keras", compile=False)
    assert len(started.weights) == len(saved.weights) > 0  # BatchNorm moving statistics included
    for a, b in zip(started.weights, saved.weights):
        assert a.path == b.path
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    fresh = build_segmentation_model(validate_config(config_from_dict({**finetune_tree, "model": {
        "name": "unet", "kwargs": {"base_filters": 4, "batch_norm": True}}})), (32, 32))
    assert not np.array_equal(fresh.get_weights()[0], saved.get_weights()[0])  # the check can fail
    # Another width cannot take them: a clear error naming the layer and both shapes.
    wider = validate_config(
        config_from_dict(
            {
                "task": "segmentation",
                "data": {"dataset": "phantom", "size": 32},
                "model": {"name": "unet", "kwargs": {"base_filters": 8, "batch_norm": True}, "weights": str(run / "model.keras")},
            }
        )
    )
    with pytest.raises(CovidctError, match=r"layer 'enc1_conv1' has shapes \[\(3, 3, 1, 4\)\] there but \[\(3, 3, 1, 8\)\]"):
        build_segmentation_model(wider, (32, 32))


def test_unlabeled_images_from_a_folder_dataset_are_lung_crops(tmp_path, monkeypatch):
    from covidct.data.phantom import make_dataset
    from covidct.preprocess.body import to_display_u8

    phantoms = make_dataset(n=4, size=96, seed=0)
    for index, image in enumerate(phantoms.images_hu):
        folder = tmp_path / "data" / ("A" if index % 2 else "B")
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"slice_{index}.png"), to_display_u8(image))
    cfg = _cfg(data={"dataset": "folder", "root": str(tmp_path / "data"), "size": 32, "options": {}},
               segmentation={"crop": "lungs", "lung_input": "masked"})
    unlabeled = restoration.load_unlabeled_images(cfg, progress=False)
    assert unlabeled.images.shape == (4, 32, 32, 1) and unlabeled.images.dtype == np.uint8
    assert len(unlabeled.groups) == 4
    # Lung-masked crops: the corners (outside the dilated lungs) are 0 and the lungs are not.
    assert (unlabeled.images[:, 0, 0] == 0).all() and (unlabeled.images.reshape(4, -1).max(1) > 0).all()
    (tmp_path / "data" / "A" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(CovidctError, match="broken.png"):
        restoration.load_unlabeled_images(cfg, progress=False)


# ---------------------------------------------------------------------------------------------- classifiers


@pytest.mark.parametrize(("name", "resized"), [("small_cnn", False), ("simple_cnn", True)])
def test_restoration_network_of_a_classifier_keeps_its_backbone(name, resized):
    from covidct.models import build_model

    classifier = build_model(name, input_shape=(64, 64, 1), num_classes=2)
    network = restoration.restoration_network(classifier)
    assert tuple(network.output.shape[1:]) == (64, 64, 1)
    names = {layer.name for layer in network.layers}
    # The spatial backbone is shared (same layer objects, same names); the head is not part of it.
    assert {"logits"}.isdisjoint(names) and ("restore_resize" in names) == resized
    backbone = [layer.name for layer in classifier.layers if layer.weights and layer.name != "logits" and "dense" not in layer.name]
    assert set(backbone) <= names


def test_a_classifier_pretrains_on_its_split_without_test_rows_and_hands_over_its_backbone(tmp_path):
    import keras

    from covidct.train.build import build_configured_model
    from covidct.train.data import prepare_data

    data_section = {"dataset": "phantom", "stage": "original", "size": 32, "options": {"n": 60},
                    "cache_root": str(tmp_path / "cache")}
    cfg = validate_config(config_from_dict({
        "task": "pretrain", "name": "pt-cnn", "output_root": str(tmp_path), "data": data_section,
        "model": {"name": "small_cnn"},
        "training": {"epochs": 3, "batch_size": 8, "learning_rate": 0.003},  # BatchNorm recalibrated (distorted)
    }))
    run = train(cfg, progress=False)
    info = json.loads((run / "run.json").read_text())
    data = prepare_data(cfg, progress=False)
    split = data.manifest["split"].to_numpy()
    # Its own grouped split: train rows train, val rows validate, test rows are never read.
    assert info["split_counts"]["train"]["images"] == (split == "train").sum()
    assert info["split_counts"]["val"]["images"] == (split == "val").sum() > 0
    assert (split == "test").sum() > 0
    history = np.genfromtxt(run / "history.csv", delimiter=",", names=True)
    assert history["val_loss"].min() < history["val_loss"][0]

    classify = validate_config(config_from_dict({
        "data": data_section, "model": {"name": "small_cnn", "weights": str(run / "model.keras")},
    }))
    classifier = build_configured_model(classify, data.images, num_classes=2)
    saved = {layer.name: layer for layer in keras.saving.load_model(run / "model.keras", compile=False).layers}
    for layer in classifier.layers:
        if not layer.weights:
            continue
        if layer.name == "logits":  # the head starts random: not in the pretrained network
            assert layer.name not in saved
            continue
        for a, b in zip(layer.get_weights(), saved[layer.name].get_weights()):
            np.testing.assert_array_equal(a, b)
    # A classifier of another width cannot take them: the layer and both shapes are named.
    wider = validate_config(config_from_dict({
        "data": data_section,
        "model": {"name": "small_cnn", "kwargs": {"filters": [8, 16, 32, 64]}, "weights": str(run / "model.keras")},
    }))
    with pytest.raises(CovidctError, match="block1_conv"):
        build_configured_model(wider, data.images, num_classes=2)


def test_classifier_pretraining_refuses_the_segmentation_section():
    with pytest.raises(CovidctError, match="segmentation section applies to segmentation models only"):
        _cfg(model={"name": "small_cnn", "kwargs": {}}, data={"stage": "original"})


def test_cli_trains_a_pretraining_config_and_does_not_evaluate_it(tmp_path, capsys):
    import yaml

    from covidct.cli import main

    config = tmp_path / "pretrain.yaml"
    config.write_text(yaml.safe_dump({
        "task": "pretrain", "name": "pt-cli", "output_root": str(tmp_path / "runs"),
        "data": {"dataset": "phantom", "size": 32, "options": {"n": 20}},
        "model": {"name": "unet", "kwargs": {"base_filters": 4}},
        "training": {"epochs": 1, "batch_size": 8},
        "segmentation": {"val_fraction": 0.3},
    }))
    assert main(["train", "--config", str(config), "--jobs", "2"]) != 0  # parallel folds: segmentation CV only
    assert "jobs=2): fitting folds separately applies to task segmentation, not pretrain" in capsys.readouterr().err
    assert main(["train", "--config", str(config), "--evaluate"]) == 0
    out = capsys.readouterr().out
    assert "A pretraining run is not evaluated" in out and "model.weights" in out
    assert json.loads((tmp_path / "runs" / "pt-cli" / "run.json").read_text())["status"] == "finished"


@pytest.mark.slow  # make test-slow
def test_an_interrupted_pretraining_resumes_to_the_uninterrupted_result(tmp_path, crash_after_epoch):
    import keras
    import pandas as pd

    from covidct.train import trainer as trainer_module

    cfg = _cfg(training={"epochs": 3, "bn_recalibration": 16})
    reference = train(cfg, run_dir=tmp_path / "reference", progress=False)
    with crash_after_epoch(1):
        train(cfg, run_dir=tmp_path / "resumed", progress=False)
    resumed = tmp_path / "resumed"
    assert trainer_module.run_status(resumed) == "interrupted"
    train(cfg, run_dir=resumed, progress=False, resume=True)
    history = [pd.read_csv(run / "history.csv").drop(columns=["seconds"]) for run in (reference, resumed)]
    assert len(history[1]) == 3
    pd.testing.assert_frame_equal(*history, rtol=1e-5)
    a, b = (keras.saving.load_model(run / "model.keras", compile=False) for run in (reference, resumed))
    for x, y in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.realdata
def test_real_sars_cov_2_slices_become_lung_masked_crops(data_root, tmp_path):
    """Forty real sars-cov-2-ct slices (20 per class folder, linked into a folder dataset) through the segmenter's
    pretraining input: every crop holds lung pixels, the lungs fill much of it, and the corners are masked out."""
    source = data_root / "sars-cov-2-ct-scan"
    for folder in ("COVID", "non-COVID"):
        (tmp_path / "data" / folder).mkdir(parents=True)
        for path in sorted((source / folder).glob("*.png"))[:20]:
            (tmp_path / "data" / folder / path.name).symlink_to(path)
    cfg = _cfg(data={"dataset": "folder", "root": str(tmp_path / "data"), "size": 128, "options": {}},
               segmentation={"crop": "lungs", "lung_input": "masked"})
    unlabeled = restoration.load_unlabeled_images(cfg, progress=False)
    assert unlabeled.images.shape == (40, 128, 128, 1)
    inside = (unlabeled.images[..., 0] > 0).reshape(40, -1).mean(1)
    # The square around the (dilated) lungs: lungs cover a large share, never none, never the whole square.
    assert inside.min() > 0.25 and inside.max() < 0.75, inside  # measured: 0.33-0.60
    assert (unlabeled.images[:, 0, 0, 0] == 0).mean() > 0.9
