"""``task: classification`` (2-D slices) and ``task: volume`` (3-D volumes): one class per image or volume.

The data come from ``covidct.train.data.prepare_data`` (grouped split, preprocessed cache; the volume cache
for 3-D models, ``covidct.train.volume_data``); the training split is checked for usable classes and,
optionally, probed for shortcuts (``covidct.data.audit``); batches are ``SliceSequence`` (with the stage's or
the config's augmentation, ``covidct.train.recipes``) or ``VolumeSequence``; validation scores macro-F1, AUC
and loss on probabilities (``covidct.train.loop.validation_scores``). A finished run is evaluated by
``covidct.evaluate.evaluate_run`` on the test split (``covidct.train.workflow.evaluate_after_training``).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from covidct.config import RunConfig
from covidct.data import audit
from covidct.errors import CovidctError
from covidct.models import get_spec
from covidct.models.inference import predict_logits
from covidct.train.build import build_configured_model, recalibration_source
from covidct.train.data import (
    SliceSequence,
    TrainingData,
    balanced_class_weights,
    check_training_splits,
    prepare_data,
)
from covidct.train.distribution import training_distribution
from covidct.train.loop import Trainer, fit_phases, nan_error, validation_scores
from covidct.train.losses import make_loss
from covidct.train.recipes import augmentation_factors
from covidct.train.reports import run_report, split_counts
from covidct.train.runtime import backend_info, drop_last_batch, dtype_policy, seed_everything
from covidct.train.sampling import balanced_weights, make_sampler
from covidct.train.tasks.base import Outcome, Request, Task
from covidct.train.volume_data import VolumeSequence, volume_augmentation

log = logging.getLogger(__name__)


class ClassificationTask(Task):
    """One class per 2-D image (``VolumeTask``: per 3-D volume); see the module docstring."""

    name = "classification"
    #: ``training.augmentation: stage`` means the stage's 2-D factors (``covidct.train.recipes``); a volume run
    #: reads it as the volume augmenter's own defaults (``covidct.train.volume_data.volume_augmentation``).
    stage_factors = True

    def check_config(self, cfg: RunConfig, source: str) -> None:
        """The augmentation recipe resolves: a stage with factors, known appearance presets."""
        t = cfg.training
        if t.augmentation != "stage":
            augmentation_factors(t, cfg.data.stage)  # a dict's keys and appearance preset
        elif self.stage_factors:
            try:
                augmentation_factors(t, cfg.data.stage)
            except CovidctError as error:
                raise CovidctError(f"{source}: {error}") from None

    def check_data(self, data) -> None:
        if data is not None and not isinstance(data, TrainingData):
            raise CovidctError(
                f"train(cfg): a {self.name} run takes TrainingData (covidct.train.data), got {type(data).__name__}; "
                "image/mask pairs train a segmentation model with task: segmentation."
            )

    def load_data(self, cfg: RunConfig, progress: bool) -> TrainingData:
        return prepare_data(cfg, progress=progress)

    def load(self, request: Request, resuming: bool) -> TrainingData:
        cfg = request.cfg
        seed_everything(cfg.training.seed)
        data = request.data if request.data is not None else self.load_data(cfg, request.progress)
        split = data.manifest["split"].astype(str).to_numpy()
        check_training_splits(data.labels, split, list(data.class_names), source=cfg.data.dataset)
        return data

    def fit(self, request: Request, data: TrainingData, resuming: bool, started: float) -> Outcome:
        cfg, run_dir = request.cfg, request.run_dir
        class_names = list(data.class_names)
        split = data.manifest["split"].astype(str).to_numpy()
        probe = shortcut_probe(cfg, data)
        with dtype_policy(cfg) as policy, training_distribution(cfg.training):
            t, m = cfg.training, cfg.model
            num_classes = len(class_names)
            input_names = tuple(get_spec(m.name).inputs)
            val_index = data.indices("val")

            def validate(model) -> dict:
                logits = predict_logits(model, data.images, val_index, t.batch_size, input_names)
                return validation_scores(data.labels[val_index], logits, t.loss, t.focal_gamma, t.focal_alpha)

            trainer = Trainer(cfg, run_dir, validate, request.progress)
            trainer.model = build_configured_model(cfg, data.images, num_classes)
            trainer.input_names = input_names
            train_index = data.indices("train")
            sampler = make_sampler(t.sampler, train_index, data.manifest)
            class_weights = None
            if t.class_weight == "balanced" and sampler is not None:  # the classes of the rows it draws
                class_weights = balanced_weights(sampler.expected_class_counts(data.labels, num_classes))
            elif t.class_weight == "balanced":
                class_weights = balanced_class_weights(data.labels[train_index], num_classes)
            sequence_class, augmentation = SliceSequence, augmentation_factors(t, cfg.data.stage)
            if data.images.ndim == 5:  # volumes: 3D augmentation (covidct.train.volume_data)
                sequence_class, augmentation = VolumeSequence, volume_augmentation(t)
            trainer.train_sequence = sequence_class(
                data.images,
                train_index,
                labels=data.labels,
                batch_size=t.batch_size,
                shuffle=True,
                seed=t.seed,
                augmentation=augmentation,
                class_weights=class_weights,
                input_names=input_names,
                max_steps=t.max_steps_per_epoch,
                drop_last=drop_last_batch(t.drop_last),
                **({"sampler": sampler} if sampler is not None else {}),
                **({"pipeline": t.input_pipeline} if sequence_class is SliceSequence else {}),
            )
            trainer.recalibration_batches = recalibration_source(cfg, data.images, train_index, input_names)
            loss = make_loss(t.loss, num_classes, gamma=t.focal_gamma, alpha=t.focal_alpha)
            fit_phases(cfg, run_dir, trainer, loss, resuming, request.progress)

        seconds = time.perf_counter() - started
        run_info = {
            "name": cfg.run_name,
            "class_names": class_names,
            "dataset": cfg.data.dataset,
            "stage": cfg.data.stage,
            "size": cfg.data.size,
            "channels": int(data.images.shape[-1]),
            "input_names": list(input_names),
            "model": m.name,
            **trainer.selection_info(),
            **backend_info(policy, cfg),
            "seconds": round(seconds, 1),
            "cache": data.cache_path,
            "split_counts": split_counts(data, split, class_names),
            **({"sources": source_counts(data, split)} if cfg.data.extra_sources else {}),
            "shortcut_probe": probe,
        }
        if data.images.ndim == 5:
            run_info.update(task="volume", volume_shape=[int(s) for s in data.images.shape[1:4]])
        error = None
        if trainer.nan_epoch is not None:
            error = nan_error(cfg, trainer, run_dir)
        run_info["status"] = "nan" if error is not None else "finished"
        return Outcome(run_info, trainer.history, error)

    def report(self, cfg: RunConfig, outcome: Outcome) -> str:
        return run_report(cfg, outcome.info, outcome.history)

    def describe(self, run_dir: Path, result: dict | None) -> str:
        return f"test macro-F1 {result['slice']['macro_f1']:.3f}, AUC {result['slice']['auc_macro_ovr']:.3f}"


class VolumeTask(ClassificationTask):
    """One class per 3-D volume (volume models; ``covidct.train.volume_data``)."""

    name = "volume"
    stage_factors = False


def source_counts(data: TrainingData, split) -> dict:
    """``{split: {source: {class: rows}}}`` of a run whose training split mixes sources."""
    frame = data.manifest.assign(split=split, label=[data.class_names[i] for i in data.labels])
    return {name: {source: rows.groupby("label").size().astype(int).to_dict()
                   for source, rows in part.groupby("source")} for name, part in frame.groupby("split")}


def shortcut_probe(cfg: RunConfig, data: TrainingData) -> dict:
    """Run covidct.data.audit's nuisance-feature probe on the training split (advisory, never fatal)."""
    if not cfg.training.shortcut_probe:
        return {"status": "skipped (training.shortcut_probe=false)"}
    if data.images.ndim == 5:
        return {"status": "skipped (volume model: the probe fingerprints 2-D images)"}
    train_manifest = data.manifest.iloc[data.indices("train")]
    if not all(os.path.exists(p) for p in train_manifest["path"].head(20)):
        return {"status": "skipped (the training rows are not image files)"}
    try:
        prints = audit.compute_fingerprints(train_manifest, cache_root=cfg.data.cache_root, progress=False)
        features, names = audit.nuisance_matrix(prints)
        result = audit.shortcut_probe(
            features,
            train_manifest["label"].astype(str).to_numpy(),
            groups=train_manifest["group"].astype(str).to_numpy(),
        )
    except Exception as error:  # The probe is advisory: it must never stop a training run.
        return {"status": f"failed ({type(error).__name__}: {error})"}
    out = {"status": "ran", "features": names, **result}
    auc = out.get("auc_grouped_cv") if out.get("auc_grouped_cv") is not None else out.get("auc_cv")
    out["auc"] = auc
    if isinstance(auc, (int, float)) and auc >= 0.7:
        out["warning"] = (
            f"nuisance features alone (format, size, intensity statistics) predict the class with AUC {auc:.2f} "
            "on the training split: the model may learn a shortcut; compare its AUC with this"
        )
        log.warning("Shortcut probe: %s.", out["warning"])
    return out
