"""task: segmentation in the run config: defaults, names, and a clear error for every bad setting."""

import numpy as np
import pandas as pd
import pytest

import covidct.models  # noqa: F401  (registers unet, simple_cnn, ...)
from covidct.config import dump_config, load_config, segmentation_augmentation
from covidct.errors import CovidctError
from covidct.train import train

SEGMENT_YAML = """
task: segmentation
data: {dataset: medseg, size: 64}
model: {name: unet, kwargs: {base_filters: 8}}
training: {epochs: 3, augmentation: {flip: true, rotation: 0.025}}
segmentation: {folds: 5, lung_input: auto}
"""
CLASSIFY_YAML = """
data: {dataset: phantom, size: 48}
model: {name: simple_cnn}
"""


@pytest.fixture()
def segment_file(tmp_path):
    path = tmp_path / "segment.yaml"
    path.write_text(SEGMENT_YAML)
    return path


@pytest.fixture()
def classify_file(tmp_path):
    path = tmp_path / "classify.yaml"
    path.write_text(CLASSIFY_YAML)
    return path


def test_segmentation_defaults_name_and_round_trip(segment_file, tmp_path):
    cfg = load_config(segment_file)
    assert cfg.task == "segmentation" and cfg.run_name == "segment-unet-medseg-64"
    assert cfg.training.loss == "dice_bce" and cfg.training.monitor == "val_dice"
    assert cfg.segmentation.folds == 5 and cfg.segmentation.lung_input == "auto"
    assert segmentation_augmentation(cfg.training) == {"flip": True, "rotation_deg": pytest.approx(9.0)}
    assert load_config(dump_config(cfg, tmp_path / "out.yaml")) == cfg
    assert load_config(segment_file, ["training.monitor=val_loss"]).training.monitor == "val_loss"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "model.name=simple_cnn",
            "task='segmentation' but model 'simple_cnn' is a classification model.*unet",
        ),
        ("task=segmentaton", "Did you mean: segmentation"),
        ("training.loss=ce", "classification loss.*dice_bce"),
        ("training.monitor=val_auc", "not a segmentation selection rule.*val_dice"),
        ("training.class_weight=balanced", "class_weight.*does not apply"),
        ("training.augmentation=stage", "classification preset"),
        ("training.augmentation={zoom: 0.1}", r"\['zoom'\] do\(es\) not apply to task segmentation"),
        ("training.augmentation={rotation: 2}", "fraction of a full turn"),
        ("data.dataset=sars-cov-2-ct", "has no masks"),
        ("segmentation.lung_input=mask", "Did you mean: masked"),
        ("segmentation.folds=1", "folds must be 0"),
        ("segmentation.val_fraction=1", "val_fraction must lie in"),
        ("segmentation.val_fraction=0", "val_fraction=0 leaves nothing to select on.*monitor: last"),
        ("segmentation.fold=3", "Did you mean: folds"),
        ("segmentation.crop=lung", "Did you mean: lungs"),
        ("evaluation.mc_dropout=5", r"evaluation.mc_dropout do\(es\) not apply to task segmentation.*tta"),
        ("evaluation.threshold=0.3", r"evaluation.threshold do\(es\) not apply"),
    ],
)
def test_bad_segmentation_configs_name_the_fix(segment_file, override, message):
    with pytest.raises(CovidctError, match=message):
        load_config(segment_file, [override])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.name=unet", "'unet' is a segmentation model; set task: segmentation"),
        ("task=volume", "task='volume' but model 'simple_cnn' is a classification model"),
        ("training.loss=dice_bce", "training.loss='dice_bce' is for segmentation"),
        ("training.monitor=val_dice", "training.monitor='val_dice' is for segmentation"),
        ("segmentation.folds=5", "applies to task: segmentation only"),
    ],
)
def test_segmentation_settings_on_other_tasks_are_refused(classify_file, override, message):
    with pytest.raises(CovidctError, match=message):
        load_config(classify_file, [override])


def test_train_refuses_data_of_the_other_task(segment_file, classify_file, tmp_path, discs):
    from covidct.train.data import data_from_arrays

    manifest = pd.DataFrame(
        {"path": ["a", "b"], "label": ["x", "y"], "group": ["1", "2"], "split": ["train", "val"]}
    )
    slices = data_from_arrays(np.zeros((2, 8, 8, 1), np.uint8), manifest)
    with pytest.raises(CovidctError, match="task segmentation takes image/mask pairs"):
        train(load_config(segment_file), run_dir=tmp_path / "s", data=slices, progress=False)
    with pytest.raises(CovidctError, match="takes TrainingData.*task: segmentation"):
        train(load_config(classify_file), run_dir=tmp_path / "c", data=discs, progress=False)
    # Pairs at another size than data.size, and non-binary masks, stop before any fitting.
    no_folds = load_config(segment_file, ["segmentation.folds=0", "segmentation.lung_input=none"])
    with pytest.raises(CovidctError, match="32x32 px but data.size is 64"):
        train(no_folds, run_dir=tmp_path / "size", data=discs, progress=False)
    discs.masks[0, 0, 0] = 255
    with pytest.raises(CovidctError, match="masks must be binary"):
        train(
            load_config(
                segment_file, ["data.size=32", "segmentation.folds=0", "segmentation.lung_input=none"]
            ),
            run_dir=tmp_path / "binary",
            data=discs,
            progress=False,
        )
    assert not (tmp_path / "binary" / "model.keras").exists()


def test_shipped_infection_config_is_the_benchmarked_recipe():
    """configs/medseg/unet-infection-lungcrop.yaml is the run of bench_segmentation.py named in its header."""
    from pathlib import Path

    from covidct.segment.train import segmentation_config

    path = Path(__file__).resolve().parents[2] / "configs" / "medseg" / "unet-infection-lungcrop.yaml"
    shipped = load_config(path)
    bench = segmentation_config(
        model="unet", dataset="medseg", size=128, epochs=60, batch_size=4, learning_rate=1e-3, folds=5,
        model_kwargs={"base_filters": 16, "batch_norm": True}, rotation_deg=10, patience=12, lung_input="masked",
        crop="lungs", bn_momentum=0.9, bn_recalibration=1024, name="unet-medseg-infection-lungcrop",
    )
    assert shipped == bench
