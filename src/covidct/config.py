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

Experiment names follow ``<model>-<stage>-<setting>`` with setting one of ``baseline``, ``classw``
(class weights "balanced"), ``dataaug`` (the stage's augmentation), ``classw-dataaug``, and ``robust`` /
``classw-robust`` (the robust recipe's geometry + appearance augmentation, ``training.augmentation: robust``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from covidct.errors import CovidctError, did_you_mean, unknown_name_error

logger = logging.getLogger(__name__)

SETTINGS = ("baseline", "classw", "dataaug", "classw-dataaug", "robust", "classw-robust")
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("none", "cosine")
LOSSES = ("ce", "focal", "dice_bce", "restoration_mse")
CLASS_WEIGHTS = ("none", "balanced")
MONITORS = ("val_macro_f1", "val_auc", "val_loss", "val_dice", "last")
TASKS = ("classification", "volume", "segmentation", "pretrain")
# task: segmentation: the loss, the selection scores and the lung-masked input choices.
SEGMENTATION_LOSSES = ("dice_bce",)
SEGMENTATION_MONITORS = ("val_dice", "val_loss", "last")
LUNG_INPUTS = ("none", "masked", "auto")
SEGMENTATION_CROPS = ("none", "lungs")  # covidct.segment.data.CROPS
SEGMENTATION_DATASETS = ("kaggle-lungs", "medseg", "phantom")
# task: pretrain (self-supervised restoration by a segmenter or a classifier's backbone, covidct.train.restoration).
PRETRAIN_LOSSES = ("restoration_mse",)
PRETRAIN_MONITORS = ("val_loss", "last")
AUTO_ON_OFF = ("auto", "on", "off")  # training.mixed_precision and training.drop_last
ON_OFF_KEYS = ("mixed_precision", "drop_last")  # training keys whose YAML on/off (read as booleans) mean "on"/"off"
FREEZE_MODES = ("none", "frozen", "frozen-then-finetune")

# The CT-COV19 study's stage-specific augmentation: (rotation, zoom, translation) factors of
# Keras' RandomRotation, RandomZoom (negative = zoom in) and RandomTranslation, plus RandomFlip
# horizontal. Tighter crops get gentler augmentation so the lungs stay in the frame.
STAGE_AUGMENTATION: dict[str, tuple[float, float, float]] = {
    "original": (0.1, -0.2, 0.1),
    "nobackg": (0.1, -0.2, 0.1),
    "lungs-nocrop": (0.1, -0.2, 0.15),
    "crop": (0.07, -0.1, 0.07),
    "lungs": (0.05, -0.1, 0.05),
}
DEFAULT_AUGMENTATION = STAGE_AUGMENTATION["original"]
# Stages that are not in the study share the framing of one that is, and take its factors: the lung crops
# (three windows, intensity-standardised, rank-equalised) are framed like ``lungs``, the whole-slice pair like
# ``original``, the body-crop halves like ``crop``. A stage in neither table has no "stage" augmentation: the
# config must give the factors itself (``training.augmentation: {rotation: ..., zoom: ..., translation: ...}``).
STAGE_AUGMENTATION_LIKE: dict[str, str] = {
    "lungs-3window": "lungs",
    "lungs-robust": "lungs",
    "lungs-hist": "lungs",
    "masked-pair": "original",
    "halves": "crop",
}
# training.augmentation: robust: ±29° rotation, ±15% zoom (crop/zoom), ±5% shift, flips,
# and the "robust" appearance preset (blur/sharpen, noise, gamma, contrast, JPEG).
ROBUST_AUGMENTATION = {"rotation": 0.08, "zoom": 0.15, "translation": 0.05, "flip": True, "appearance": "robust"}


@dataclass(frozen=True)
class DataConfig:
    """Which images, preprocessed how.

    Attributes:
        dataset: registered dataset name (``covidct.data.datasets.list_datasets()``), e.g. ``"phantom"``.
        root: dataset folder (None: the dataset's default).
        stage: preprocessing stage name (``covidct.preprocess.STAGES``).
        size: side of the square model input in pixels.
        split_fractions: train/val/test fractions for datasets without official splits (grouped).
        seed: seed of the grouped split.
        keep_official_splits: keep a dataset's own train/val/test split when it has one.
        label_map: optional ``{raw label: class}`` mapping applied before training (e.g. merge
            ``Normal`` and ``CAP`` into ``non-COV``).
        classes: class order (the model's output order); None: sorted labels after the label map.
        cache_root: folder of the preprocessed cache.
        options: extra keyword arguments of the dataset loader (e.g. ``n`` for phantoms).
        volume_shape: for volume models (``task="volume"``, e.g. ``cnn3d_covidscan``) the (D, H, W) every
            volume is resized to, in covidct's order (slices, rows, columns), e.g. ``[32, 64, 64]``, or a
            name of ``covidct.data.volumes.SHAPES`` (``covidscan`` = [32, 64, 64], ``kerasio`` =
            [64, 128, 128]); None: the model's default input shape. ``stage`` and ``size`` do not apply
            to volume models.
    """

    dataset: str = "phantom"
    root: str | None = None
    stage: str = "original"
    size: int = 224
    split_fractions: tuple = (0.7, 0.15, 0.15)
    seed: int = 0
    keep_official_splits: bool = True
    label_map: dict | None = None
    classes: tuple | None = None
    cache_root: str = ".cache/covidct"
    options: dict = field(default_factory=dict)
    volume_shape: tuple | str | None = None


@dataclass(frozen=True)
class ModelConfig:
    """Which network.

    Attributes:
        name: registered model name (``covidct models``).
        kwargs: builder-specific keyword arguments.
        weights: None (random init), ``"imagenet"`` or a weights file path.
        freeze: ``"none"`` (train everything), ``"frozen"`` (train only the head) or
            ``"frozen-then-finetune"`` (head for ``frozen_epochs`` epochs, then everything at the
            learning rate times ``finetune_learning_rate_factor``).
        frozen_epochs: epochs of the frozen phase of ``"frozen-then-finetune"``.
        finetune_learning_rate_factor: learning-rate factor of the fine-tuning phase.
        finetune: how much of the backbone fine-tuning opens: ``"all"`` or ``"top:N"`` (the last N blocks
            and the layers after them; ``covidct.models.transfer``).
        freeze_batchnorm: keep the backbone's BatchNorm layers in inference mode (ImageNet statistics,
            not updated) while fine-tuning too.
    """

    name: str = "simple_cnn"
    kwargs: dict = field(default_factory=dict)
    weights: str | None = None
    freeze: str = "none"
    frozen_epochs: int = 5
    finetune_learning_rate_factor: float = 0.1
    finetune: str = "all"
    freeze_batchnorm: bool = False


@dataclass(frozen=True)
class TrainingConfig:
    """How to fit.

    Attributes:
        epochs: maximum number of epochs.
        batch_size: images per batch.
        optimizer: ``"adam"`` or ``"adamw"``.
        learning_rate: initial learning rate.
        weight_decay: AdamW weight decay.
        schedule: ``"none"`` or ``"cosine"`` (cosine decay over all training steps).
        loss: ``"ce"`` (cross-entropy from logits) or ``"focal"``.
        focal_gamma: focusing parameter of the focal loss.
        focal_alpha: class balance of the focal loss: None, a float (weight of the positive class for two
            classes, of every class otherwise) or a list with one weight per class.
        class_weight: ``"none"`` or ``"balanced"`` (scikit-learn's n / (k * count)).
        augmentation: ``"none"``, ``"stage"`` (the stage's (r, z, t) of the CT-COV19 study), ``"robust"``
            (``ROBUST_AUGMENTATION``: geometry plus appearance) or a dict with ``rotation``,
            ``zoom``, ``translation``, ``flip`` (bool) and ``appearance`` (a preset of
            ``covidct.train.appearance.APPEARANCE_PRESETS`` or a dict of its layers).
        monitor: the validation score that selects the checkpoint and drives early stopping, or ``"last"``:
            a fixed epoch budget, the final epoch's weights are kept and early stopping is off (validation
            is still scored every epoch, for the history only). Use it when the validation split is too
            small to rank epochs (its score flat within noise): selecting on noise picks early epochs.
        early_stopping_patience: epochs without improvement before stopping (0: never stop early).
        validation_freq: score the validation split (and recalibrate BatchNorm first) every this many
            epochs and always at the end of a phase (``model.fit``'s ``validation_freq``); the other epochs
            only train, so only validated epochs can be checkpointed, selected or stop the run (patience still
            counts epochs). With ``monitor: last`` the per-epoch validation is only for the history: a larger
            value saves its cost and gives the same final model.
        min_epochs: epochs before early stopping may stop the run (BatchNorm statistics need a few
            epochs on small data; validation AUC can sit at 0.5 meanwhile).
        seed: seed of initialisation, shuffling and augmentation.
        mixed_precision: ``"auto"`` (on when a GPU is present), ``"on"`` or ``"off"``.
        drop_last: leave out each epoch's last, incomplete training batch (``"on"``), keep it (``"off"``), or
            ``"auto"``: leave it out where the fit is XLA-compiled (JAX backend, or a GPU), where a batch of
            another size compiles the training step a second time (a 256 px U-Net fold on an H200 spent most
            of its time compiling), and keep it on TensorFlow CPU (no step compiled per shape). The rows left
            out change every epoch (the order is reshuffled); validation and prediction never drop rows.
        shortcut_probe: run the data audit's nuisance-feature probe on the training split first.
        max_steps_per_epoch: cap on batches per epoch (None: the whole training split); for smoke runs.
        bn_momentum: override the momentum of every BatchNormalization layer (None: the model's own,
            0.99 in Keras). On small datasets 0.9 lets the running statistics catch up within a few
            epochs; with 0.99 validation scores can sit at chance while training loss is near zero.
        bn_recalibration: before every validation pass, replace each trainable BatchNormalization
            layer's running mean and variance by the average of its batch statistics over this many
            training samples, read without augmentation and with dropout off ("precise BN", Wu &
            Johnson 2021, arXiv:2105.07576); 0 turns it off. The running averages otherwise mix
            statistics of older weights and of augmented, dropout-perturbed activations, and the model
            ranks well (high AUC) while its probabilities pile up on one class (argmax F1 at chance).
    """

    epochs: int = 30
    batch_size: int = 32
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "none"
    loss: str = "ce"
    focal_gamma: float = 2.0
    focal_alpha: float | list | None = None
    class_weight: str = "none"
    augmentation: str | dict = "none"
    monitor: str = "val_macro_f1"
    early_stopping_patience: int = 10
    validation_freq: int = 1
    min_epochs: int = 3
    seed: int = 0
    mixed_precision: str = "auto"
    drop_last: str = "auto"
    shortcut_probe: bool = True
    max_steps_per_epoch: int | None = None
    bn_momentum: float | None = None
    bn_recalibration: int = 1024


@dataclass(frozen=True)
class EvaluationConfig:
    """How to report.

    Attributes:
        n_bootstrap: bootstrap replicates for the confidence intervals (resampling groups).
        ci: confidence level.
        tta: test-time augmentation (average of the image and its horizontal flip; for ``task: segmentation``
            the mean of the two probability maps, the mirrored one mirrored back). A segmentation run's
            evaluator takes only ``n_bootstrap``, ``ci`` and ``tta``; the other keys are refused there.
        mc_dropout: number of Monte-Carlo-dropout passes (0: off).
        temperature_scaling: fit a temperature on the validation set and report calibrated scores too.
        threshold: decision threshold on the positive-class probability (two classes; None: argmax), or
            ``"val"``: the threshold that maximises macro-F1 on the run's validation split
            (``covidct.evaluate.metrics.choose_threshold``), applied unchanged to the evaluated data.
        positive_class: the positive class for sensitivity/specificity (None: the one starting "COV").
        aggregation: patient-level aggregation methods to report.
        topk: k of the top-k mean aggregation.
    """

    n_bootstrap: int = 1000
    ci: float = 0.95
    tta: bool = False
    mc_dropout: int = 0
    temperature_scaling: bool = False
    threshold: float | str | None = None
    positive_class: str | None = None
    aggregation: tuple = ("mean", "max", "topk")
    topk: int = 5


@dataclass(frozen=True)
class SegmentationConfig:
    """Settings of ``task: segmentation`` runs (ignored by, and refused for, other tasks).

    The data are image/mask pairs (``covidct.segment.data.load_pairs``: ``data.dataset`` is
    ``kaggle-lungs``, ``medseg`` or ``phantom``; ``data.size`` is the side in pixels). The loss is
    ``training.loss: dice_bce`` and the checkpoint is selected on ``training.monitor: val_dice`` (both the
    defaults when ``task: segmentation``). ``training.augmentation`` is ``"none"`` or a dict of ``flip``
    (random left-right mirror) and ``rotation`` (largest random rotation as a fraction of a full turn,
    as for slices), applied to image and mask together.

    Attributes:
        lung_input: ``"none"`` (plain images), ``"masked"`` (pixels outside the dilated classical lung
            mask set to 0) or ``"auto"`` (fit both, keep the one with the better validation Dice).
        folds: 0 evaluates on the dataset's test split; k >= 2 runs grouped k-fold cross-validation
            (each fold a sub-run ``fold_<k>/``; for datasets without a test split such as ``medseg``).
        val_fraction: fraction of the training groups held out as the validation (selection) part when
            the data have no ``val`` split of their own. 0 (only with ``training.monitor: last``, a fixed
            epoch budget that selects nothing, and a fixed ``lung_input``): every training group is fitted.
        crop: ``"none"`` (whole slices resampled to ``data.size``) or ``"lungs"``: each slice cropped, at its
            source resolution, to the square around its dilated classical lung mask (5% margin) and then
            resampled, so the lungs fill the input. Validation Dice (selection) is computed on the crops; test
            predictions are pasted back into the whole slice at ``data.size`` and scored against the whole
            slice's mask (infection outside the crop counts as missed).
    """

    lung_input: str = "none"
    folds: int = 0
    val_fraction: float = 0.15
    crop: str = "none"


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of ``task: pretrain`` runs: the Models Genesis distortions (``covidct.train.restoration``).

    A segmenter (inputs from ``data.dataset`` made as ``segmentation.crop`` and ``segmentation.lung_input``
    say) or a slice classifier's backbone with a decoder (its own ``data.stage`` and grouped split, test rows
    left out) learns to restore unlabeled images from distorted copies; its ``model.keras`` then initialises
    a later run of the same model (``model.weights``, copied layer by layer). Refused for other tasks.

    Attributes:
        nonlinear_rate: probability of the random Bezier intensity curve.
        shuffle_rate: probability of local pixel shuffling.
        paint_rate: probability of in- or out-painting.
        inpaint_rate: share of the painted images that are in-painted (the rest out-painted).
    """

    nonlinear_rate: float = 0.9
    shuffle_rate: float = 0.5
    paint_rate: float = 0.9
    inpaint_rate: float = 0.2


@dataclass(frozen=True)
class RunConfig:
    """One experiment: name + task + data + model + training + evaluation (+ segmentation).

    Attributes:
        name: run name (folder under ``output_root``); empty: ``<model>-<stage>-<setting>``
            (``segment-<model>-<dataset>-<size>`` for segmentation).
        output_root: parent folder of run folders.
        task: ``""`` (the model's own task), ``"classification"``, ``"volume"``, ``"segmentation"`` or
            ``"pretrain"`` (self-supervised restoration of unlabeled images, ``covidct.train.restoration``).
    """

    name: str = ""
    output_root: str = "runs"
    task: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)

    @property
    def setting(self) -> str:
        """The experiment setting implied by class weights and augmentation."""
        return setting_of(self.training)

    @property
    def run_name(self) -> str:
        """``name`` or, when empty, ``<model>-<stage>-<setting>`` (``segment-<model>-<dataset>-<size>``)."""
        if not self.name and self.task == "segmentation":
            return f"segment-{self.model.name}-{self.data.dataset}-{self.data.size}"
        if not self.name and self.task == "pretrain":
            return f"pretrain-{self.model.name}-{self.data.dataset}-{self.data.size}"
        return self.name or experiment_name(self.model.name, self.data.stage, self.setting)


SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "training": TrainingConfig,
    "evaluation": EvaluationConfig,
    "segmentation": SegmentationConfig,
    "pretrain": PretrainConfig,
}
# Training defaults that differ for task: segmentation (used when the YAML does not set them).
SEGMENTATION_TRAINING_DEFAULTS = {"loss": "dice_bce", "monitor": "val_dice"}
PRETRAIN_TRAINING_DEFAULTS = {"loss": "restoration_mse", "monitor": "val_loss"}
_TUPLE_FIELDS = {("data", "split_fractions"), ("data", "classes"), ("evaluation", "aggregation")}


def setting_of(training: TrainingConfig) -> str:
    """``baseline`` / ``classw`` / ``dataaug`` / ``classw-dataaug`` from a training config."""
    classw = training.class_weight == "balanced"
    if training.augmentation == "robust":  # the robust recipe's geometry + appearance augmentation
        return "classw-robust" if classw else "robust"
    dataaug = training.augmentation not in ("none", None, False)
    return {(False, False): "baseline", (True, False): "classw", (False, True): "dataaug", (True, True): "classw-dataaug"}[
        (classw, dataaug)
    ]


def experiment_name(model: str, stage: str, setting: str) -> str:
    """The study's experiment name ``<model>-<stage>-<setting>``."""
    if setting not in SETTINGS:
        raise unknown_name_error("setting", setting, SETTINGS)
    return f"{model}-{stage}-{setting}"


def apply_setting(cfg: RunConfig, setting: str) -> RunConfig:
    """Return ``cfg`` with class weights and augmentation set by an experiment setting."""
    if setting not in SETTINGS:
        raise unknown_name_error("setting", setting, SETTINGS)
    training = dataclasses.replace(
        cfg.training,
        class_weight="balanced" if "classw" in setting else "none",
        augmentation="robust" if "robust" in setting else ("stage" if "dataaug" in setting else "none"),
    )
    return dataclasses.replace(cfg, training=training)


def augmentation_factors(training: TrainingConfig, stage: str) -> dict | None:
    """Resolve ``training.augmentation`` to ``{rotation, zoom, translation, flip}`` or None (off)."""
    aug = training.augmentation
    if aug in ("none", None, False):
        return None
    if aug == "stage":
        like = STAGE_AUGMENTATION_LIKE.get(stage, stage)
        if like not in STAGE_AUGMENTATION:
            raise CovidctError(
                f"training.augmentation: 'stage' has no factors for stage {stage!r} (known: "
                f"{sorted(STAGE_AUGMENTATION) + sorted(STAGE_AUGMENTATION_LIKE)}). Give them in the config, e.g. "
                "training.augmentation: {rotation: 0.05, zoom: -0.1, translation: 0.05}, or add the stage to "
                "covidct.config.STAGE_AUGMENTATION_LIKE."
            )
        rotation, zoom, translation = STAGE_AUGMENTATION[like]
        return {"rotation": rotation, "zoom": zoom, "translation": translation, "flip": True}
    if aug == "robust":
        # The robust recipe: stronger geometry plus appearance (covidct.train.appearance "robust" preset).
        return dict(ROBUST_AUGMENTATION)
    if isinstance(aug, dict):
        known = {"rotation", "zoom", "translation", "flip", "appearance"}
        unknown = sorted(set(aug) - known)
        if unknown:
            raise CovidctError(
                f"training.augmentation: unknown key(s) {unknown}.{did_you_mean(unknown[0], known)} "
                f"Known keys: {sorted(known)}."
            )
        factors = {
            "rotation": float(aug.get("rotation", 0.0)),
            "zoom": float(aug.get("zoom", 0.0)),
            "translation": float(aug.get("translation", 0.0)),
            "flip": bool(aug.get("flip", True)),
        }
        if aug.get("appearance") not in (None, "none", False):
            from covidct.train.appearance import resolve_appearance

            resolve_appearance(aug["appearance"])  # raises on unknown presets/layers
            factors["appearance"] = aug["appearance"]
        return factors
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
    _check_choice(source, "task", cfg.task, ("", *TASKS))
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
    _check_choice(source, "segmentation.lung_input", s.lung_input, LUNG_INPUTS)
    _check_choice(source, "segmentation.crop", s.crop, SEGMENTATION_CROPS)
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
        from covidct.models import get_spec

        return get_spec(name).task
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
    _check_choice(source, "segmentation.crop", s.crop, SEGMENTATION_CROPS)
    _check_choice(source, "segmentation.lung_input", s.lung_input, ("none", "masked"))
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
    from covidct.models import get_spec, list_models

    spec = get_spec(cfg.model.name)
    if cfg.task == "pretrain":
        if spec.task not in ("segmentation", "classification") or tuple(spec.inputs) != ("image",):
            raise CovidctError(
                f"{source}: task pretrain restores one 2-D image input (a segmentation model, or a slice classifier's "
                f"backbone with a decoder); model {cfg.model.name!r} is a {spec.task} model with inputs "
                f"{list(spec.inputs)}."
            )
        return "pretrain"
    if cfg.task and cfg.task != spec.task:
        names = ", ".join(list_models(task=cfg.task)) or "none registered"
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


def _parse_override(text: str) -> tuple[list[str], object]:
    if "=" not in text:
        raise CovidctError(f"Override {text!r} must look like section.key=value (e.g. training.epochs=3).")
    key, value = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise CovidctError(f"Override {text!r} has an empty key.")
    return parts, yaml.safe_load(value) if value.strip() != "" else None


def _set_nested(tree: dict, parts: list[str], value) -> None:
    node = tree
    for part in parts[:-1]:
        if node.get(part) is None:
            node[part] = {}
        if not isinstance(node[part], dict):
            raise CovidctError(f"Override {'.'.join(parts)}: {part!r} is not a section.")
        node = node[part]
    node[parts[-1]] = value


def _section_from_dict(section: str, cls, values: dict, source: str):
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise CovidctError(f"{source}: section {section!r} must be a mapping, got {type(values).__name__}.")
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            raise CovidctError(
                f"{source}: unknown key {section}.{key}.{did_you_mean(key, names)} "
                f"Known keys of {section}: {', '.join(names)}."
            )
    types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if (section, key) in _TUPLE_FIELDS and value is not None:
            value = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        if isinstance(value, str) and types[key].startswith("float"):
            # YAML 1.1 reads "1e-4" (no dot) as a string; numbers are numbers here.
            try:
                value = float(value)
            except ValueError as error:
                if "str" not in types[key]:  # evaluation.threshold also takes the word "val"
                    raise CovidctError(f"{source}: {section}.{key} must be a number, got {value!r}.") from error
        kwargs[key] = value
    return cls(**kwargs)


def config_from_dict(tree: dict, source: str = "config") -> RunConfig:
    """Build a RunConfig from a nested dict, rejecting unknown keys with close matches."""
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise CovidctError(f"{source}: the top level must be a mapping of sections.")
    top = ["name", "output_root", "task", *SECTIONS]
    for key in tree:
        if key not in top:
            raise CovidctError(f"{source}: unknown key {key!r}.{did_you_mean(key, top)} Known keys: {', '.join(top)}.")
    task = str(tree.get("task") or "")
    values = dict(tree)
    defaults = {"segmentation": SEGMENTATION_TRAINING_DEFAULTS, "pretrain": PRETRAIN_TRAINING_DEFAULTS}.get(task)
    if defaults and (values.get("training") is None or isinstance(values.get("training"), dict)):
        values["training"] = {**defaults, **(values.get("training") or {})}
    if isinstance(values.get("training"), dict):  # YAML reads a bare on/off as true/false
        values["training"] = {
            key: ({True: "on", False: "off"}[value] if key in ON_OFF_KEYS and isinstance(value, bool) else value)
            for key, value in values["training"].items()
        }
    sections = {
        name: _section_from_dict(name, cls, values.get(name), source) for name, cls in SECTIONS.items()
    }
    return RunConfig(
        name=str(tree.get("name") or ""),
        output_root=str(tree.get("output_root") or "runs"),
        task=task,
        **sections,
    )


def config_to_dict(cfg: RunConfig) -> dict:
    """Plain nested dict (lists for tuples) of a RunConfig, suitable for YAML."""

    def plain(value):
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(cfg))


def _check_choice(source: str, key: str, value, choices) -> None:
    if value not in choices:
        raise CovidctError(
            f"{source}: {key}={value!r} is not one of {list(choices)}.{did_you_mean(str(value), choices)}"
        )


def check_threshold(value, where: str):
    """``evaluation.threshold``: None (argmax), a number in (0, 1), or ``"val"`` (chosen on validation)."""
    if value is None or value == "val":
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < float(value) < 1:
        raise CovidctError(f"{where} must be a number in (0, 1), 'val' (chosen on the validation split) or "
                           f"empty (argmax); got {value!r}.")
    return float(value)


def validate_config(cfg: RunConfig, source: str = "config", check_registries: bool = True) -> RunConfig:
    """Check choices, ranges and (optionally) that the model, stage and dataset are registered.

    Raises:
        CovidctError: naming the bad key and, for names, the closest known ones.
    """
    t, m, d, e = cfg.training, cfg.model, cfg.data, cfg.evaluation
    _check_choice(source, "training.optimizer", t.optimizer, OPTIMIZERS)
    _check_choice(source, "training.schedule", t.schedule, SCHEDULES)
    _check_choice(source, "training.loss", t.loss, LOSSES)
    _check_choice(source, "training.class_weight", t.class_weight, CLASS_WEIGHTS)
    _check_choice(source, "training.monitor", t.monitor, MONITORS)
    _check_choice(source, "training.mixed_precision", t.mixed_precision, AUTO_ON_OFF)
    _check_choice(source, "training.drop_last", t.drop_last, AUTO_ON_OFF)
    _check_choice(source, "model.freeze", m.freeze, FREEZE_MODES)
    if not re.fullmatch(r"all|top:[1-9][0-9]*", str(m.finetune)) or not isinstance(m.freeze_batchnorm, bool):
        raise CovidctError(f"{source}: model.finetune must be 'all' or 'top:N' (N >= 1), e.g. 'top:8', and "
                           f"model.freeze_batchnorm true or false; got {m.finetune!r}, {m.freeze_batchnorm!r}.")
    check_task_settings(cfg, source)
    if t.augmentation != "stage":
        augmentation_factors(t, d.stage)  # a dict's keys and appearance preset; "stage" is checked below
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
        from covidct.data.volumes import resolve_shape

        try:
            resolve_shape(d.volume_shape)
        except (CovidctError, TypeError, ValueError) as error:
            raise CovidctError(f"{source}: data.volume_shape: {error} E.g. [32, 64, 64] or 'covidscan'.") from None
    if check_registries:
        from covidct.models import get_spec

        get_spec(m.name)  # raises "Unknown model ... Did you mean"
        resolve_task(cfg, source)  # the task and the model agree
        import covidct.preprocess as preprocess

        if d.stage not in preprocess.STAGES:
            raise unknown_name_error("stage", d.stage, preprocess.STAGES)
        if t.augmentation == "stage" and resolve_task(cfg, source) != "volume":  # volumes: volume_data's own
            try:
                augmentation_factors(t, d.stage)
            except CovidctError as error:
                raise CovidctError(f"{source}: {error}") from None
        try:
            from covidct.data.datasets import list_datasets
        except ImportError:
            list_datasets = None
        if list_datasets is not None and d.dataset not in list_datasets():
            raise unknown_name_error("dataset", d.dataset, list_datasets())
        if list_datasets is not None:
            check_data_options(cfg, source)
    return cfg


def shipped_configs_folder() -> Path:
    """The folder of the YAML configs shipped inside the package (``covidct/configs``)."""
    return Path(str(resources.files("covidct") / "configs"))


def list_configs() -> list[str]:
    """Names of the shipped configs, e.g. ``demo``, ``sars-cov-2-ct/base``, ``grids/ct-cov19``."""
    folder = shipped_configs_folder()
    return sorted(path.relative_to(folder).with_suffix("").as_posix() for path in folder.rglob("*.yaml"))


def config_path(name_or_path: str | os.PathLike) -> Path:
    """Resolve a config given as a file path or as the name of a shipped config.

    An existing file wins; otherwise ``name_or_path`` is looked up among the shipped configs, with or
    without ``.yaml`` and a leading ``configs/`` (so ``configs/demo.yaml`` works after a pip install too).

    Raises:
        CovidctError: neither a file nor a shipped config (close names suggested), or a directory.
    """
    path = Path(name_or_path)
    if path.is_dir():
        raise CovidctError(f"{path} is a folder, not a config file; pass a YAML file or a shipped config name.")
    if path.is_file():
        return path
    name = path.as_posix()
    name = name[len("configs/"):] if name.startswith("configs/") else name
    name = name[: -len(".yaml")] if name.endswith(".yaml") else name
    shipped = shipped_configs_folder() / f"{name}.yaml"
    if name in list_configs():
        return shipped
    raise CovidctError(
        f"Config file {path} does not exist and is not a shipped config.{did_you_mean(name, list_configs())} "
        "List the shipped ones with `covidct config list`."
    )


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
        tree = _read_config_file(file)
    file_data = tree.get("data") if isinstance(tree.get("data"), dict) else {}
    file_dataset, file_options = file_data.get("dataset", DataConfig.dataset), file_data.get("options")
    # Options written in the file for its own dataset; a command line that changes data.dataset drops those the
    # new loader does not take (logged), while options given on the command line are always checked as given.
    inherited = set(file_options) if isinstance(file_options, dict) else set()
    for text in overrides or ():
        parts, value = _parse_override(text)
        if parts[:2] in (["data"], ["data", "options"]) and len(parts) <= 2:
            inherited = set()  # the command line replaced the options: none is the file's any more
        elif parts[:2] == ["data", "options"]:
            inherited.discard(parts[2])  # given on the command line: checked, never dropped
        _set_nested(tree, parts, value)
    cfg = config_from_dict(tree, source=source)
    if inherited and cfg.data.dataset != file_dataset and validate:
        cfg = _drop_foreign_options(cfg, inherited, file_dataset, source)
    return validate_config(cfg, source=source, check_registries=validate)


def _read_config_file(file: Path) -> dict:
    """The mapping of a config file; an empty, non-text, non-YAML or non-mapping file is refused by name."""
    try:
        text = file.read_text()
    except UnicodeDecodeError:
        raise CovidctError(f"{file}: not a text file, so not a YAML config; pass a .yaml config file.") from None
    except OSError as error:
        raise CovidctError(f"{file}: cannot read the config ({error.strerror or error}).") from None
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise CovidctError(f"{file}: not valid YAML ({error}).") from error
    if tree is None:
        raise CovidctError(
            f"{file}: the config file is empty (no keys). An empty file would train on every default and write "
            "data/ and .cache/ into the working folder; write the keys you mean (e.g. data: {dataset: ...}, "
            "model: {name: ...}), start from a shipped config such as configs/demo.yaml, or pass no config at all "
            "where defaults are wanted (load_config() without a path)."
        )
    if not isinstance(tree, dict):
        kind = "a list" if isinstance(tree, list) else f"a single {type(tree).__name__} value ({str(tree)[:40]!r})"
        raise CovidctError(
            f"{file}: the top level must be a mapping of sections (name:, data:, model:, training:, evaluation:, ...), "
            f"got {kind}. Write it as key: value lines, e.g. `model: {{name: small_cnn}}`, not as a list."
        )
    return tree


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
    from covidct.data.datasets import DATASETS, dataset_options

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
    from covidct.data.options import check_options

    known, choices, what = data_options_spec(cfg)
    check_options(cfg.data.options, known, choices, what, where=f"{source}: data.options")


def _drop_foreign_options(cfg: RunConfig, inherited: set, file_dataset: str, source: str) -> RunConfig:
    """An override changed ``data.dataset``: drop the file's options (``inherited``) the new loader does not take.

    The options in a config file were written for its own dataset (e.g. a phantom's ``n``); a command line
    that points the run at another dataset means to leave those behind. Each dropped option is logged; options
    given on the command line are never dropped (they are checked, and refused by name when foreign).
    """
    from covidct.data.datasets import list_datasets

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


def dump_config(cfg: RunConfig, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=".config-", suffix=".yaml")
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def copy_config(name: str, dest: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Copy a shipped config (or a config file) to a file or folder, to edit it there.

    Args:
        name: a shipped config name such as ``"sars-cov-2-ct/base"`` (see :func:`list_configs`), or a YAML file.
        dest: the target file, or an existing folder (or one given with a trailing ``/``) that receives
            ``<name's file name>.yaml``; default: that file name in the working folder.
        force: replace a file that already exists at the target.

    Returns:
        The path written.

    Raises:
        CovidctError: unknown config (close names suggested), or the target exists and ``force`` is False.
    """
    source = config_path(name)
    target = Path(dest) if dest is not None else Path(source.name)
    if target.is_dir() or (dest is not None and str(dest).endswith(("/", os.sep))):
        target = target / source.name
    if target.exists() and not force:
        raise CovidctError(f"{target} already exists; pass --force (force=True) to replace it, or choose another DEST.")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(source.read_bytes())
    return target
