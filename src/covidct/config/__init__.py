"""Run configuration: YAML → frozen dataclasses → a few ``key=value`` overrides → resolved YAML.

A run is described completely by a ``RunConfig`` (data, model, training, evaluation). ``load_config``
reads a YAML file, applies overrides such as ``"training.epochs=3"``, checks every key (unknown keys,
models, stages and choices stop with close matches) and returns the frozen config; ``dump_config``
writes the resolved config that is saved with every run, so a run can be reproduced from its folder.

``task`` (top level) switches what ``train(cfg)`` fits: ``classification`` (2-D slices), ``volume``
(3-D volumes), ``segmentation`` (a per-pixel mask: Dice + BCE loss, selection on validation Dice,
settings in the ``segmentation`` section) or ``pretrain`` (self-supervised restoration of unlabeled images
by a segmenter or a slice classifier's backbone, settings in the ``pretrain`` section; a later run starts from
it with ``model.weights``); empty means the registered model's own task (classification and volume models; a
segmentation model needs ``task: segmentation`` written out).

Experiment names follow ``<model>-<stage>-<setting>`` (``covidct.config.naming``).

The package holds the schema only: ``schema`` (dataclasses, choices, dicts and overrides), ``files``
(shipped configs, YAML in and out), ``checks`` (choices, ranges, each task's sections, registered names)
and ``naming``. The recipes a config names (the stage augmentation tables, the robust preset) live with
the training code that applies them, in ``covidct.train.recipes``.
"""

from __future__ import annotations

import os

from covidct.config.checks import (
    AUGMENTATION_KEYS,
    AUGMENTATION_PRESETS,
    PRETRAIN_PHANTOM_OPTIONS,
    SEGMENTATION_PHANTOM_CHOICES,
    SEGMENTATION_PHANTOM_OPTIONS,
    check_augmentation_value,
    check_data_options,
    check_task_settings,
    data_options_spec,
    drop_foreign_options,
    resolve_task,
    segmentation_augmentation,
    validate_config,
)
from covidct.config.files import (
    config_path,
    copy_config,
    dump_config,
    list_configs,
    read_config_file,
    shipped_configs_folder,
)
from covidct.config.naming import SETTINGS, apply_setting, experiment_name, setting_of
from covidct.config.schema import (
    AUTO_ON_OFF,
    CLASS_WEIGHTS,
    FREEZE_MODES,
    LOSSES,
    LUNG_INPUTS,
    MONITORS,
    ON_OFF_KEYS,
    OPTIMIZERS,
    PRETRAIN_LOSSES,
    PRETRAIN_MONITORS,
    PRETRAIN_TRAINING_DEFAULTS,
    SCHEDULES,
    SECTIONS,
    SEGMENTATION_CROPS,
    SEGMENTATION_DATASETS,
    SEGMENTATION_LOSSES,
    SEGMENTATION_MONITORS,
    SEGMENTATION_TRAINING_DEFAULTS,
    TASKS,
    DataConfig,
    EvaluationConfig,
    ModelConfig,
    PretrainConfig,
    RunConfig,
    SegmentationConfig,
    TrainingConfig,
    check_choice,
    check_threshold,
    config_from_dict,
    config_to_dict,
    parse_override,
    set_nested,
)

__all__ = [
    "AUGMENTATION_KEYS", "AUGMENTATION_PRESETS", "AUTO_ON_OFF", "CLASS_WEIGHTS", "FREEZE_MODES", "LOSSES",
    "LUNG_INPUTS", "MONITORS", "ON_OFF_KEYS", "OPTIMIZERS", "PRETRAIN_LOSSES", "PRETRAIN_MONITORS",
    "PRETRAIN_PHANTOM_OPTIONS", "PRETRAIN_TRAINING_DEFAULTS", "SCHEDULES", "SECTIONS", "SEGMENTATION_CROPS",
    "SEGMENTATION_DATASETS", "SEGMENTATION_LOSSES", "SEGMENTATION_MONITORS", "SEGMENTATION_PHANTOM_CHOICES",
    "SEGMENTATION_PHANTOM_OPTIONS", "SEGMENTATION_TRAINING_DEFAULTS", "SETTINGS", "TASKS", "DataConfig",
    "EvaluationConfig", "ModelConfig", "PretrainConfig", "RunConfig", "SegmentationConfig", "TrainingConfig",
    "apply_setting", "check_augmentation_value", "check_choice", "check_data_options", "check_task_settings",
    "check_threshold", "config_from_dict", "config_path", "config_to_dict", "copy_config", "data_options_spec",
    "drop_foreign_options", "dump_config", "experiment_name", "list_configs", "load_config", "parse_override",
    "read_config_file", "resolve_task", "segmentation_augmentation", "set_nested", "setting_of",
    "shipped_configs_folder", "validate_config",
]


def load_config(
    path: str | os.PathLike | None = None,
    overrides: list[str] | tuple = (),
    validate: bool = True,
) -> RunConfig:
    """Load a RunConfig from YAML and apply ``key=value`` overrides.

    Args:
        path: YAML file, or the name of a shipped config such as ``"demo"`` or ``"sars-cov-2-ct/base"``
            (see :func:`list_configs`); None: all defaults.
        overrides: e.g. ``["training.epochs=3", "data.stage=lungs"]``; values are parsed as YAML.
        validate: check choices and that the model/stage/dataset are registered.

    Returns:
        The frozen, validated RunConfig.

    Raises:
        CovidctError: missing file, bad YAML, unknown key/model/stage (with close matches).
    """
    tree: dict = {}
    source = "config"
    if path is not None:
        file = config_path(path)
        source = str(file)
        tree = read_config_file(file)
    file_data = tree.get("data") if isinstance(tree.get("data"), dict) else {}
    file_dataset, file_options = file_data.get("dataset", DataConfig.dataset), file_data.get("options")
    # Options written in the file for its own dataset; a command line that changes data.dataset drops those the
    # new loader does not take (logged), while options given on the command line are always checked as given.
    inherited = set(file_options) if isinstance(file_options, dict) else set()
    for text in overrides or ():
        parts, value = parse_override(text)
        if parts[:2] in (["data"], ["data", "options"]) and len(parts) <= 2:
            inherited = set()  # the command line replaced the options: none is the file's any more
        elif parts[:2] == ["data", "options"]:
            inherited.discard(parts[2])  # given on the command line: checked, never dropped
        set_nested(tree, parts, value)
    cfg = config_from_dict(tree, source=source)
    if inherited and cfg.data.dataset != file_dataset and validate:
        cfg = drop_foreign_options(cfg, inherited, file_dataset, source)
    return validate_config(cfg, source=source, check_registries=validate)
