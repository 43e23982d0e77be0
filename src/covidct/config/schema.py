"""The run configuration's schema: frozen dataclasses, their choices, and nested dicts to and from them.

A run is described completely by a ``RunConfig`` (data, model, training, evaluation, and the
``segmentation`` / ``pretrain`` sections of those tasks). ``config_from_dict`` builds one from a nested
dict and rejects unknown keys with close matches; ``config_to_dict`` gives the plain dict written as YAML.
Overrides ``section.key=value`` are parsed here too (``parse_override``, ``set_nested``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import yaml

from covidct.config.naming import experiment_name, setting_of
from covidct.errors import CovidctError, did_you_mean

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
INPUT_PIPELINES = ("auto", "inline", "threaded")  # training.input_pipeline (covidct.train.pipeline)
AUTO_ON_OFF = ("auto", "on", "off")  # training.mixed_precision and training.drop_last
ON_OFF_KEYS = ("mixed_precision", "drop_last")  # training keys whose YAML on/off (read as booleans) mean "on"/"off"
FREEZE_MODES = ("none", "frozen", "frozen-then-finetune")
SAMPLERS = ("shuffle", "source_balanced")  # training.sampler (covidct.train.sampling)


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
        extra_sources: further datasets that join the TRAINING split only (never validation or test), each a
            mapping ``{dataset: NAME, label: CLASS}`` (every row gets that class) or ``{dataset: NAME,
            label_map: {raw: class}}``, with optional ``options`` (the loader's) and ``root``; their groups
            are prefixed with the dataset name and the manifest's ``source`` column tells them apart
            (``covidct.train.sources``). 2-D classification only.
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
    extra_sources: tuple = ()


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
        sampler: the rows of each training epoch: ``"shuffle"`` (every training row once, in a seeded
            order) or ``"source_balanced"`` (the same number of rows from each ``source`` of the training
            split; ``covidct.train.sampling``). Needs ``data.extra_sources``.
        input_pipeline: how training batches are prepared (``covidct.train.pipeline``): ``"inline"`` (when the
            trainer asks), ``"threaded"`` (the next batches on a background thread, the same batches) or
            ``"auto"`` (inline: the faster on the CPU measured so far).
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
    distribution: str = "auto"
    sampler: str = "shuffle"
    input_pipeline: str = "auto"


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
_TUPLE_FIELDS = {("data", "split_fractions"), ("data", "classes"), ("data", "extra_sources"), ("evaluation", "aggregation")}


def parse_override(text: str) -> tuple[list[str], object]:
    """``"section.key=value"`` -> (``["section", "key"]``, the value read as YAML; None when empty)."""
    if "=" not in text:
        raise CovidctError(f"Override {text!r} must look like section.key=value (e.g. training.epochs=3).")
    key, value = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise CovidctError(f"Override {text!r} has an empty key.")
    return parts, yaml.safe_load(value) if value.strip() != "" else None


def set_nested(tree: dict, parts: list[str], value) -> None:
    """Set ``tree[parts[0]][parts[1]]... = value``, creating sections that are missing."""
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


def check_choice(source: str, key: str, value, choices) -> None:
    """Refuse ``value`` of ``key`` unless it is one of ``choices`` (with close matches)."""
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
