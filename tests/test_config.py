"""Config loading: YAML + overrides → frozen dataclasses; unknown names stop with close matches."""

from __future__ import annotations

import dataclasses

import pytest

import covidct.models.simple_cnn  # noqa: F401  (registers simple_cnn)
from covidct.config import (
    RunConfig,
    apply_setting,
    dump_config,
    experiment_name,
    load_config,
)
from covidct.errors import CovidctError
from covidct.train.recipes import STAGE_AUGMENTATION, augmentation_factors

YAML = """
name: ""
data: {dataset: phantom, stage: lungs, size: 64}
model: {name: simple_cnn}
training: {epochs: 5, class_weight: balanced, augmentation: stage}
"""


@pytest.fixture()
def config_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(YAML)
    return path


def test_load_overrides_and_name(config_file):
    cfg = load_config(config_file, ["training.epochs=3", "training.learning_rate=1e-4", "data.split_fractions=[0.6,0.2,0.2]"])
    assert isinstance(cfg, RunConfig)
    assert cfg.training.epochs == 3 and cfg.training.learning_rate == pytest.approx(1e-4)
    assert cfg.data.split_fractions == (0.6, 0.2, 0.2)
    assert cfg.run_name == "simple_cnn-lungs-classw-dataaug"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.training.epochs = 7


def test_threshold_takes_a_number_or_the_word_val(config_file, tmp_path):
    """evaluation.threshold: 'val' (chosen on validation) survives loading, a number stays a number."""
    assert load_config(config_file, ["evaluation.threshold=val"]).evaluation.threshold == "val"
    assert load_config(config_file, ["evaluation.threshold=0.3"]).evaluation.threshold == pytest.approx(0.3)
    yaml_file = tmp_path / "val.yaml"
    yaml_file.write_text(YAML + "evaluation: {threshold: val}\n")
    cfg = load_config(yaml_file)
    assert cfg.evaluation.threshold == "val" and load_config(dump_config(cfg, tmp_path / "again.yaml")) == cfg
    with pytest.raises(CovidctError, match="evaluation.threshold must be a number in \\(0, 1\\), 'val'"):
        load_config(config_file, ["evaluation.threshold=vall"])
    with pytest.raises(CovidctError, match="training.learning_rate must be a number, got 'fast'"):
        load_config(config_file, ["training.learning_rate=fast"])


def test_dump_round_trip(config_file, tmp_path):
    cfg = load_config(config_file, ["evaluation.tta=true"])
    path = dump_config(cfg, tmp_path / "out" / "config.yaml")
    assert load_config(path) == cfg
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def test_settings_and_stage_augmentation(config_file):
    cfg = load_config(config_file)
    assert experiment_name("transfusion_tiny", "crop", "classw") == "transfusion_tiny-crop-classw"
    baseline = apply_setting(cfg, "baseline")
    assert baseline.setting == "baseline" and baseline.training.class_weight == "none"
    assert apply_setting(cfg, "dataaug").setting == "dataaug"
    # The CT-COV19 study: (r, z, t) = (0.05, -0.1, 0.05) for lungs, (0.1, -0.2, 0.15) for lungs-nocrop.
    assert augmentation_factors(cfg.training, "lungs") == {"rotation": 0.05, "zoom": -0.1, "translation": 0.05, "flip": True}
    assert STAGE_AUGMENTATION["lungs-nocrop"] == (0.1, -0.2, 0.15)
    assert STAGE_AUGMENTATION["crop"] == (0.07, -0.1, 0.07)
    assert augmentation_factors(baseline.training, "lungs") is None
    with pytest.raises(CovidctError, match="Unknown setting"):
        apply_setting(cfg, "classweights")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("traning.epochs=3", "Did you mean: training"),
        ("training.epoch=3", "Did you mean: epochs"),
        ("model.name=simpel_cnn", "Did you mean: simple_cnn"),
        ("data.stage=lung", "Did you mean: lungs"),
        ("data.dataset=phantoms", "Did you mean: phantom"),
        ("training.optimizer=adamm", "Did you mean: adam"),
        ("training.epochs=0", "integer >= 1"),
        ("training.bn_recalibration=-1", "bn_recalibration must be an integer >= 0"),
        ("training.drop_last=sometimes", "training.drop_last='sometimes' is not one of"),
        ("data.split_fractions=[0.5,0.2,0.2]", "summing to 1"),
        ("training.augmentation={rotate: 0.1}", "Did you mean: rotation"),
    ],
)
def test_bad_configs_name_the_fix(config_file, override, message):
    with pytest.raises(CovidctError, match=message):
        load_config(config_file, [override])


def test_bare_yaml_on_off_mean_on_and_off(tmp_path):
    """YAML 1.1 reads a bare on/off as true/false; the on/off settings take them as "on"/"off"."""
    path = tmp_path / "onoff.yaml"
    path.write_text(YAML.replace("augmentation: stage}", "augmentation: stage, mixed_precision: off, drop_last: on}"))
    training = load_config(path).training
    assert (training.mixed_precision, training.drop_last) == ("off", "on")
    training = load_config(path, ["training.mixed_precision=on", "training.drop_last=off"]).training
    assert (training.mixed_precision, training.drop_last) == ("on", "off")
    assert load_config(tmp_path / "onoff.yaml", ["training.drop_last=auto"]).training.drop_last == "auto"


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(CovidctError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(CovidctError, match="section.key=value"):
        load_config(None, ["training.epochs"])


def test_stage_augmentation_covers_every_registered_stage():
    """Every built-in stage resolves "stage" augmentation to the factors of the study stage it is framed like
    (lungs-robust once fell back silently to the whole-slice factors); an unknown stage is refused."""
    from covidct.config import TrainingConfig
    from covidct.preprocess import STAGES
    from covidct.train.recipes import STAGE_AUGMENTATION_LIKE

    stage_aug = TrainingConfig(augmentation="stage")
    built_in = [name for name, fn in STAGES.items() if getattr(fn, "__module__", "").startswith("covidct.")]
    assert {"lungs", "lungs-robust", "halves"} <= set(built_in)  # other tests may register their own stages
    for stage in built_in:
        assert stage in STAGE_AUGMENTATION or stage in STAGE_AUGMENTATION_LIKE, stage
    lungs = {"rotation": 0.05, "zoom": -0.1, "translation": 0.05, "flip": True}
    for stage in ("lungs-robust", "lungs-hist", "lungs-3window"):
        assert augmentation_factors(stage_aug, stage) == lungs
    assert augmentation_factors(stage_aug, "halves") == {"rotation": 0.07, "zoom": -0.1, "translation": 0.07, "flip": True}
    assert augmentation_factors(stage_aug, "masked-pair")["rotation"] == 0.1
    with pytest.raises(CovidctError, match="no factors for stage 'my-stage'"):
        augmentation_factors(stage_aug, "my-stage")


def test_stage_augmentation_for_an_unknown_stage_names_the_config(config_file):
    """A registered stage without factors is refused by the task's check when the config is loaded for training
    (``load_run_config``, which ``covidct train`` uses; ``train(cfg)`` checks it too), not at the first batch."""
    from covidct.preprocess import STAGES, register_stage
    from covidct.train.tasks import load_run_config

    name = "test-only-stage-without-factors"
    register_stage(name)(STAGES["lungs"])
    try:
        with pytest.raises(CovidctError, match=f"{config_file}.*no factors for stage '{name}'"):
            load_run_config(config_file, [f"data.stage={name}", "training.augmentation=stage"])
        assert load_config(config_file, [f"data.stage={name}", "training.augmentation=stage"]).data.stage == name
        assert load_run_config(config_file, [f"data.stage={name}", "training.augmentation=none"]).data.stage == name
    finally:
        STAGES.pop(name)
