"""Checks of a run configuration: choices and ranges, the sections of each task, and registered names.

``validate_config`` checks every key of a ``RunConfig``: choices and ranges, the settings that belong to one
task only (``check_task_settings``: the ``segmentation`` and ``pretrain`` sections, their losses and
selection rules), and that the model, stage and dataset (and the dataset loader's ``data.options``) are
registered. The recipes a key names (the stage augmentation tables, the robust preset) are resolved, and
checked, by the training code that applies them (``covidct.train.recipes``, each task's ``check_config``).
"""

from __future__ import annotations

import dataclasses
import logging
import re

import covidct.preprocess as preprocess
from covidct.config.schema import (
    AUTO_ON_OFF,
    CLASS_WEIGHTS,
    FREEZE_MODES,
    INPUT_PIPELINES,
    LOSSES,
    LUNG_INPUTS,
    MONITORS,
    OPTIMIZERS,
    PRETRAIN_LOSSES,
    PRETRAIN_MONITORS,
    SAMPLERS,
    SCHEDULES,
    SEGMENTATION_CROPS,
    SEGMENTATION_DATASETS,
    SEGMENTATION_LOSSES,
    SEGMENTATION_MONITORS,
    TASKS,
    EvaluationConfig,
    PretrainConfig,
    RunConfig,
    SegmentationConfig,
    TrainingConfig,
    check_choice,
    check_threshold,
)
from covidct.config.sources import check_extra_sources
from covidct.data.datasets import DATASETS, dataset_options, list_datasets
from covidct.data.options import check_options
from covidct.data.volumes import resolve_shape
from covidct.errors import CovidctError, did_you_mean, unknown_name_error

logger = logging.getLogger(__name__)


def _model_registry():
    """``covidct.models`` (the registry of ``get_spec`` / ``list_models``), imported on first use.

    The registry imports every architecture and with them Keras (seconds); reading, writing and listing
    configs must not pay for it, so this is the one lazy import of the config package.
    """
    import covidct.models

    return covidct.models

#: The keys of a ``training.augmentation`` dict (a classification or volume run's own factors).
AUGMENTATION_KEYS = ("rotation", "zoom", "translation", "flip", "appearance")
#: The named ``training.augmentation`` presets (``covidct.train.recipes.augmentation_factors``).
AUGMENTATION_PRESETS = ("none", "stage", "robust")


def check_augmentation_value(aug) -> None:
    """The form of ``training.augmentation``: a preset name or a dict of the known keys.

    Raises:
        CovidctError: an unknown key (with close matches) or a value of another kind.
    """
    if aug in (None, False) or (isinstance(aug, str) and aug in AUGMENTATION_PRESETS):
        return
    if isinstance(aug, dict):
        unknown = sorted(set(aug) - set(AUGMENTATION_KEYS))
        if unknown:
            raise CovidctError(
                f"training.augmentation: unknown key(s) {unknown}.{did_you_mean(unknown[0], AUGMENTATION_KEYS)} "
                f"Known keys: {sorted(AUGMENTATION_KEYS)}."
            )
        return
    raise CovidctError(
        f"training.augmentation must be 'none', 'stage', 'robust' or a dict of rotation/zoom/translation/flip"
        f"/appearance, got {aug!r}."
    )


def segmentation_augmentation(training: TrainingConfig) -> dict | None:
    """Resolve ``training.augmentation`` for ``task: segmentation`` to ``{flip, rotation_deg}`` or None (off).

    Only geometry that can move a mask with its image exactly is offered: a random left-right mirror
    (``flip``, default true) and a random rotation of at most ``rotation`` (a fraction of a full turn,
    as for slices: 10 degrees is 10 / 360) with a nearest-neighbour mask.

    Raises:
        CovidctError: a classification preset (``stage``, ``robust``) or keys other than flip/rotation.
    """
    aug = training.augmentation
    if aug in ("none", None, False):
        return None
    if isinstance(aug, dict):
        known = {"flip", "rotation"}
        other = sorted(
            key for key in aug if key not in known and aug[key] not in (0, 0.0, None, False, "none")
        )
        if other:
            raise CovidctError(
                f"training.augmentation: {other} do(es) not apply to task segmentation.{did_you_mean(other[0], known)} "
                "Segmentation augments image and mask together with 'flip' and 'rotation' only."
            )
        rotation = aug.get("rotation", 0.0)
        if not isinstance(rotation, (int, float)) or isinstance(rotation, bool) or not 0 <= rotation < 0.5:
            raise CovidctError(
                f"training.augmentation.rotation must be a fraction of a full turn in [0, 0.5), got {rotation!r} "
                "(10 degrees is 0.0278)."
            )
        return {"flip": bool(aug.get("flip", True)), "rotation_deg": 360.0 * float(rotation)}
    raise CovidctError(
        f"training.augmentation={aug!r} is a classification preset; task segmentation takes 'none' or a dict "
        "{flip: true, rotation: R} (R: largest rotation as a fraction of a full turn, e.g. 0.0278 for 10 degrees)."
    )


def check_task_settings(cfg: RunConfig, source: str = "config") -> None:
    """Check ``task`` and the settings that belong to one task only (no registry needed).

    Raises:
        CovidctError: a segmentation loss, monitor or section on another task, or classification settings
            (loss, monitor, class weights, augmentation preset, dataset) on a segmentation run.
    """
    check_choice(source, "task", cfg.task, ("", *TASKS))
    t, s = cfg.training, cfg.segmentation
    if cfg.task != "pretrain":
        if t.loss in PRETRAIN_LOSSES:
            raise CovidctError(
                f"{source}: training.loss={t.loss!r} is the restoration loss of task: pretrain, but task is "
                f"{cfg.task or 'the model default'!r}."
            )
        if cfg.pretrain != PretrainConfig():
            raise CovidctError(
                f"{source}: the pretrain section ({dataclasses.asdict(cfg.pretrain)}) applies to task: pretrain only; "
                "set task: pretrain or remove it."
            )
    else:
        _check_pretrain_settings(cfg, source)
        return
    if cfg.task != "segmentation":
        if t.loss in SEGMENTATION_LOSSES or t.monitor == "val_dice":
            key, value = (
                ("training.loss", t.loss)
                if t.loss in SEGMENTATION_LOSSES
                else ("training.monitor", t.monitor)
            )
            raise CovidctError(
                f"{source}: {key}={value!r} is for segmentation, but task is {cfg.task or 'the model default'!r}. "
                "Set task: segmentation, or use loss ce/focal and monitor val_macro_f1/val_auc/val_loss/last."
            )
        if s != SegmentationConfig():
            raise CovidctError(
                f"{source}: the segmentation section ({dataclasses.asdict(s)}) applies to task: segmentation only; "
                "set task: segmentation or remove it."
            )
        return
    _check_task_training(
        source, "segmentation", t, SEGMENTATION_LOSSES, SEGMENTATION_MONITORS,
        "(binary cross-entropy + soft Dice, the default when task: segmentation)", "default val_dice",
    )
    default_evaluation = EvaluationConfig()
    classifier_only = [
        name for name in ("mc_dropout", "temperature_scaling", "threshold", "positive_class", "aggregation", "topk")
        if getattr(cfg.evaluation, name) != getattr(default_evaluation, name)  # aggregation: a tuple once loaded
    ]
    if classifier_only:
        raise CovidctError(
            f"{source}: evaluation.{', evaluation.'.join(classifier_only)} do(es) not apply to task segmentation (its "
            "evaluator reports per-image Dice, IoU and HD95 of the masks at probability 0.5); of the evaluation "
            "section only n_bootstrap, ci and tta (mirror averaging) apply. Remove the key(s)."
        )
    check_choice(source, "segmentation.lung_input", s.lung_input, LUNG_INPUTS)
    check_choice(source, "segmentation.crop", s.crop, SEGMENTATION_CROPS)
    if not isinstance(s.folds, int) or isinstance(s.folds, bool) or s.folds < 0 or s.folds == 1:
        raise CovidctError(
            f"{source}: segmentation.folds must be 0 (use the test split) or an integer >= 2, got {s.folds!r}."
        )
    if not (isinstance(s.val_fraction, (int, float)) and 0 <= s.val_fraction < 1):
        raise CovidctError(f"{source}: segmentation.val_fraction must lie in [0, 1), got {s.val_fraction!r}.")
    if s.val_fraction == 0 and (t.monitor != "last" or s.lung_input == "auto"):
        raise CovidctError(
            f"{source}: segmentation.val_fraction=0 leaves nothing to select on, but "
            + (f"training.monitor={t.monitor!r} selects the checkpoint on validation"
               if t.monitor != "last" else "lung_input 'auto' picks the lung input on validation")
            + "; use training.monitor: last with lung_input none or masked, or a val_fraction > 0."
        )
    if cfg.data.dataset not in SEGMENTATION_DATASETS:
        raise CovidctError(
            f"{source}: data.dataset={cfg.data.dataset!r} has no masks.{did_you_mean(cfg.data.dataset, SEGMENTATION_DATASETS)} "
            f"Segmentation datasets: {', '.join(SEGMENTATION_DATASETS)}."
        )
    try:
        segmentation_augmentation(t)
    except CovidctError as error:
        raise CovidctError(f"{source}: {error}") from None


def _check_task_training(source: str, task: str, t, losses: tuple, monitors: tuple, loss_hint: str, monitor_hint: str):
    """The loss, selection rule and class weights a task's runs allow (segmentation, pretrain)."""
    if t.loss not in losses:
        kind = "a classification loss" if t.loss in ("ce", "focal") else f"not a {task} loss"
        raise CovidctError(
            f"{source}: training.loss={t.loss!r} is {kind}; task {task} trains with {losses[0]!r} {loss_hint}."
        )
    if t.monitor not in monitors:
        raise CovidctError(
            f"{source}: training.monitor={t.monitor!r} is not a {task} selection rule; task {task} selects the "
            f"checkpoint on one of {list(monitors)} ({monitor_hint})."
        )
    if t.class_weight != "none":
        raise CovidctError(f"{source}: training.class_weight={t.class_weight!r} does not apply to task {task}; use 'none'.")


def _model_task(name: str) -> str:
    """The registered task of model ``name`` ("" when the registry does not know it: reported elsewhere)."""
    try:
        return _model_registry().get_spec(name).task
    except Exception:  # noqa: BLE001  (unknown names are reported by validate_config with close matches)
        return ""


def _check_pretrain_settings(cfg: RunConfig, source: str) -> None:
    """``task: pretrain``: restoration loss, val_loss/last selection, a fixed input, rates in [0, 1]."""
    t, s, p = cfg.training, cfg.segmentation, cfg.pretrain
    _check_task_training(
        source, "pretrain", t, PRETRAIN_LOSSES, PRETRAIN_MONITORS,
        "(mean squared error of sigmoid(logits) against the clean image, the default when task: pretrain)",
        "val_loss: the restoration error on the validation part",
    )
    if cfg.evaluation != EvaluationConfig():
        raise CovidctError(
            f"{source}: the evaluation section does not apply to task pretrain (a pretraining run is not evaluated; "
            "start a run of the same model from it with model.weights: <run>/model.keras and evaluate that). Remove it."
        )
    check_choice(source, "segmentation.crop", s.crop, SEGMENTATION_CROPS)
    check_choice(source, "segmentation.lung_input", s.lung_input, ("none", "masked"))
    if s.folds:
        raise CovidctError(f"{source}: segmentation.folds={s.folds!r} does not apply to task pretrain (nothing is tested); use 0.")
    if _model_task(cfg.model.name) == "classification" and s != SegmentationConfig():
        raise CovidctError(
            f"{source}: a classifier pretrains on its own inputs (data.stage, and its grouped split: train rows train, "
            "val rows validate, test rows are left out); the segmentation section applies to segmentation models only. "
            "Remove it."
        )
    if not (isinstance(s.val_fraction, (int, float)) and 0 <= s.val_fraction < 1):
        raise CovidctError(f"{source}: segmentation.val_fraction must lie in [0, 1), got {s.val_fraction!r}.")
    if s.val_fraction == 0 and t.monitor != "last":
        raise CovidctError(
            f"{source}: segmentation.val_fraction=0 leaves no validation part, but training.monitor={t.monitor!r} "
            "selects on it; use training.monitor: last or a val_fraction > 0."
        )
    for key in ("nonlinear_rate", "shuffle_rate", "paint_rate", "inpaint_rate"):
        value = getattr(p, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise CovidctError(f"{source}: pretrain.{key} must be a probability in [0, 1], got {value!r}.")
    try:
        segmentation_augmentation(t)
    except CovidctError as error:
        raise CovidctError(f"{source}: {error}") from None


def resolve_task(cfg: RunConfig, source: str = "config") -> str:
    """The task of a run: ``cfg.task`` checked against the registered model's task, or the model's task.

    Raises:
        CovidctError: the task and the model disagree (e.g. a classification model with task
            segmentation), or a segmentation model without ``task: segmentation``.
    """
    spec = _model_registry().get_spec(cfg.model.name)
    if cfg.task == "pretrain":
        if spec.task not in ("segmentation", "classification") or tuple(spec.inputs) != ("image",):
            raise CovidctError(
                f"{source}: task pretrain restores one 2-D image input (a segmentation model, or a slice classifier's "
                f"backbone with a decoder); model {cfg.model.name!r} is a {spec.task} model with inputs "
                f"{list(spec.inputs)}."
            )
        return "pretrain"
    if cfg.task and cfg.task != spec.task:
        names = ", ".join(_model_registry().list_models(task=cfg.task)) or "none registered"
        raise CovidctError(
            f"{source}: task={cfg.task!r} but model {cfg.model.name!r} is a {spec.task} model. "
            f"Choose a {cfg.task} model ({names}) or set task: {spec.task}."
        )
    if not cfg.task and spec.task == "segmentation":
        raise CovidctError(
            f"{source}: model {cfg.model.name!r} is a segmentation model; set task: segmentation "
            "(its Dice + BCE loss, validation-Dice selection and image/mask data follow from it)."
        )
    return spec.task


def validate_config(cfg: RunConfig, source: str = "config", check_registries: bool = True) -> RunConfig:
    """Check choices, ranges and (optionally) that the model, stage and dataset are registered.

    Raises:
        CovidctError: naming the bad key and, for names, the closest known ones.
    """
    t, m, d, e = cfg.training, cfg.model, cfg.data, cfg.evaluation
    check_choice(source, "training.optimizer", t.optimizer, OPTIMIZERS)
    check_choice(source, "training.schedule", t.schedule, SCHEDULES)
    check_choice(source, "training.loss", t.loss, LOSSES)
    check_choice(source, "training.class_weight", t.class_weight, CLASS_WEIGHTS)
    check_choice(source, "training.monitor", t.monitor, MONITORS)
    check_choice(source, "training.mixed_precision", t.mixed_precision, AUTO_ON_OFF)
    check_choice(source, "training.drop_last", t.drop_last, AUTO_ON_OFF)
    check_choice(source, "training.input_pipeline", t.input_pipeline, INPUT_PIPELINES)
    check_choice(source, "model.freeze", m.freeze, FREEZE_MODES)
    check_choice(source, "training.sampler", t.sampler, SAMPLERS)
    if not re.fullmatch(r"all|top:[1-9][0-9]*", str(m.finetune)) or not isinstance(m.freeze_batchnorm, bool):
        raise CovidctError(f"{source}: model.finetune must be 'all' or 'top:N' (N >= 1), e.g. 'top:8', and "
                           f"model.freeze_batchnorm true or false; got {m.finetune!r}, {m.freeze_batchnorm!r}.")
    check_task_settings(cfg, source)
    check_augmentation_value(t.augmentation)  # its factors and presets: the task's check_config (covidct.train)
    for key, value, low in (
        ("training.epochs", t.epochs, 1),
        ("training.batch_size", t.batch_size, 1),
        ("data.size", d.size, 8),
        ("training.early_stopping_patience", t.early_stopping_patience, 0),
        ("training.min_epochs", t.min_epochs, 0),
        ("training.validation_freq", t.validation_freq, 1),
        ("training.bn_recalibration", t.bn_recalibration, 0),
        ("evaluation.n_bootstrap", e.n_bootstrap, 0),
        ("evaluation.mc_dropout", e.mc_dropout, 0),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise CovidctError(f"{source}: {key} must be an integer >= {low}, got {value!r}.")
    if not (isinstance(t.learning_rate, (int, float)) and t.learning_rate > 0):
        raise CovidctError(f"{source}: training.learning_rate must be a positive number, got {t.learning_rate!r}.")
    fractions = tuple(float(f) for f in d.split_fractions)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise CovidctError(f"{source}: data.split_fractions must be three non-negative numbers summing to 1, got {d.split_fractions}.")
    if not 0 < e.ci < 1:
        raise CovidctError(f"{source}: evaluation.ci must lie in (0, 1), got {e.ci}.")
    check_threshold(e.threshold, f"{source}: evaluation.threshold")
    if d.volume_shape is not None:
        try:
            resolve_shape(d.volume_shape)
        except (CovidctError, TypeError, ValueError) as error:
            raise CovidctError(f"{source}: data.volume_shape: {error} E.g. [32, 64, 64] or 'covidscan'.") from None
    if check_registries:
        _model_registry().get_spec(m.name)  # raises "Unknown model ... Did you mean"
        resolve_task(cfg, source)  # the task and the model agree
        if d.stage not in preprocess.STAGES:
            raise unknown_name_error("stage", d.stage, preprocess.STAGES)
        if d.dataset not in list_datasets():
            raise unknown_name_error("dataset", d.dataset, list_datasets())
        check_data_options(cfg, source)
        check_extra_sources(cfg, source, task=resolve_task(cfg, source))
    return cfg


#: ``data.options`` of ``task: segmentation`` with ``data.dataset: phantom`` (``covidct.train.segmentation``
#: ``load_segmentation_pairs``): name -> default, and allowed values.
SEGMENTATION_PHANTOM_OPTIONS = {"n": 60, "target": "lungs", "seed": 0}
SEGMENTATION_PHANTOM_CHOICES = {"target": ("lungs", "lesion")}
#: ``data.options`` of ``task: pretrain`` of a segmenter on ``data.dataset: phantom`` (``covidct.train.restoration``).
PRETRAIN_PHANTOM_OPTIONS = {"n": 60, "seed": 0}


def data_options_spec(cfg: RunConfig) -> tuple[dict, dict, str]:
    """What ``data.options`` the run's data loader takes: (name -> default, name -> allowed values, who).

    Classification and volume runs, and pretraining on a dataset, pass the options to the dataset's loader
    (``covidct.data.datasets``; its signature). Segmentation runs read image/mask pairs: phantom pairs take
    ``n``, ``target``, ``seed``; ``kaggle-lungs`` and ``medseg`` take none.
    """
    d = cfg.data
    model_task = _model_task(cfg.model.name)
    task = cfg.task or model_task
    if task == "segmentation":
        if d.dataset == "phantom":
            return SEGMENTATION_PHANTOM_OPTIONS, SEGMENTATION_PHANTOM_CHOICES, "phantom segmentation pairs"
        return {}, {}, f"segmentation dataset {d.dataset!r} (image/mask pairs)"
    if task == "pretrain" and model_task == "segmentation" and d.dataset == "phantom":
        return PRETRAIN_PHANTOM_OPTIONS, {}, "phantom pretraining images"
    return dataset_options(d.dataset), DATASETS[d.dataset].choices, f"dataset {d.dataset!r}"


def check_data_options(cfg: RunConfig, source: str = "config") -> None:
    """Check ``data.options`` against the run's loader: names (did-you-mean), allowed values, types.

    Raises:
        CovidctError: naming the option and listing the loader's options.
    """
    known, choices, what = data_options_spec(cfg)
    check_options(cfg.data.options, known, choices, what, where=f"{source}: data.options")


def drop_foreign_options(cfg: RunConfig, inherited: set, file_dataset: str, source: str) -> RunConfig:
    """An override changed ``data.dataset``: drop the file's options (``inherited``) the new loader does not take.

    The options in a config file were written for its own dataset (e.g. a phantom's ``n``); a command line
    that points the run at another dataset means to leave those behind. Each dropped option is logged; options
    given on the command line are never dropped (they are checked, and refused by name when foreign).
    """
    if cfg.data.dataset not in list_datasets():
        return cfg  # reported by validate_config with close names
    known, _, what = data_options_spec(cfg)
    options = dict(cfg.data.options or {})
    dropped = sorted(key for key in options if key in inherited and key not in known)
    if not dropped:
        return cfg
    logger.warning(
        "%s: data.options %s were written for dataset %r and do not apply to %s; dropped (data.dataset was changed "
        "on the command line). Set data.options=... to give the new loader options.",
        source, {key: options[key] for key in dropped}, file_dataset, what,
    )
    kept = {key: value for key, value in options.items() if key not in dropped}
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, options=kept))
