"""``task: pretrain``: self-supervised restoration of distorted unlabeled images (Models Genesis).

A segmenter, or a slice classifier's backbone with a decoder (``covidct.train.restoration``), learns to
restore images distorted by non-linear intensity maps, local shuffles and in/out-painting; the validation
part (by group, or the classifier's own grouped split) is scored by the restoration MSE on fixed
distortions. A later run starts from its ``model.keras`` with ``model.weights``. A pretraining run is not
evaluated.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

import covidct.train.restoration as restoration
from covidct.config import RunConfig, check_task_settings
from covidct.errors import CovidctError
from covidct.models import get_spec
from covidct.models.inference import predict_mask_logits
from covidct.runs import MODEL_FILE
from covidct.train.batchnorm import recalibration_rows
from covidct.train.build import build_configured_model, build_segmentation_model
from covidct.train.loop import Trainer, fit_map_model, map_batches, nan_error
from covidct.train.reports import pretrain_run_report
from covidct.train.runtime import backend_info, dtype_policy, seed_everything
from covidct.train.segmentation import group_split
from covidct.train.tasks.base import Outcome, Request, Task


class PretrainTask(Task):
    """Restoration pretraining; see the module docstring."""

    name = "pretrain"

    def check_config(self, cfg: RunConfig, source: str) -> None:
        check_task_settings(cfg, source=source)

    def check_data(self, data) -> None:
        if data is not None and not isinstance(data, restoration.UnlabeledImages):
            raise CovidctError(
                f"train(cfg): task pretrain takes unlabeled images (covidct.train.restoration.UnlabeledImages), got "
                f"{type(data).__name__}; leave data=None to read data.dataset."
            )

    def load_data(self, cfg: RunConfig, progress: bool):
        return restoration.load_unlabeled_images(cfg, progress=progress)

    def load(self, request: Request, resuming: bool) -> dict:
        cfg = request.cfg
        t, s = cfg.training, cfg.segmentation
        seed_everything(t.seed)
        unlabeled = request.data if request.data is not None else self.load_data(cfg, request.progress)
        images = np.asarray(unlabeled.images)
        if images.ndim != 4 or images.shape[1:3] != (cfg.data.size, cfg.data.size):
            raise CovidctError(
                f"data ({cfg.data.dataset}): pretraining images must be (N, {cfg.data.size}, {cfg.data.size}, C) "
                f"uint8, got {images.shape}."
            )
        if images.shape[-1] > 1 and not all(np.array_equal(images[..., 0], images[..., c])
                                            for c in range(1, images.shape[-1])):
            raise CovidctError(
                f"data ({cfg.data.dataset}, stage {cfg.data.stage}): restoration pretraining distorts grey images; "
                f"these {images.shape[-1]} channels differ. Use a one-channel stage."
            )
        groups = np.asarray(unlabeled.groups).astype(str)
        if unlabeled.splits is not None:  # a classifier's own grouped split (its test rows already left out)
            splits = np.asarray(unlabeled.splits).astype(str)
            train_rows, val_rows = np.flatnonzero(splits == "train"), np.flatnonzero(splits == "val")
        elif s.val_fraction > 0:
            train_rows, val_rows = group_split(groups, s.val_fraction, t.seed)
        else:
            train_rows, val_rows = np.arange(len(images)), np.arange(0)
        if len(train_rows) == 0 or (s.val_fraction > 0 and len(val_rows) == 0):
            raise CovidctError(
                f"data ({cfg.data.dataset}): {len(images)} images in {len(set(groups))} group(s) cannot give both a "
                "training and a validation part; add images or set segmentation.val_fraction: 0 with training.monitor: "
                "last."
            )
        return {"images": images, "groups": groups, "train_rows": train_rows, "val_rows": val_rows}

    def fit(self, request: Request, prepared: dict, resuming: bool, started: float) -> Outcome:
        cfg, run_dir, progress = request.cfg, request.run_dir, request.progress
        t, s = cfg.training, cfg.segmentation
        images, groups = prepared["images"], prepared["groups"]
        train_rows, val_rows = prepared["train_rows"], prepared["val_rows"]
        classifier = get_spec(cfg.model.name).task == "classification"
        val_inputs, val_clean = restoration.fixed_validation_pairs(images, val_rows, cfg.pretrain, t.seed)

        def validate(model) -> dict:
            if not len(val_rows):
                return {}
            logits = predict_mask_logits(model, val_inputs, batch_size=t.batch_size)
            return {"val_loss": restoration.restoration_mse_numpy(val_clean, logits)}

        with dtype_policy(cfg) as policy:
            trainer = Trainer(cfg, run_dir, validate, progress)
            if classifier:  # the backbone with a decoder; its layers keep the classifier's names
                trainer.model = restoration.restoration_network(build_configured_model(cfg, images, num_classes=2))
            else:
                trainer.model = build_segmentation_model(cfg, images.shape[1:3])
            trainer.input_names = ("image",)
            trainer.train_sequence = restoration.RestorationSequence(images, train_rows, cfg.pretrain, **map_batches(t))
            # BatchNorm statistics come from what the network is scored on: distorted inputs (fixed draws).
            rows = recalibration_rows(train_rows, t.bn_recalibration, t.seed)
            if len(rows):
                batches = restoration.RestorationSequence(
                    images, rows, cfg.pretrain, batch_size=max(t.batch_size, 64), shuffle=False, seed=t.seed
                )
                trainer.recalibration_batches = lambda: (batches[i][0] for i in range(len(batches)))
            fit_map_model(cfg, run_dir, trainer, resuming, progress)
        info = {
            "name": cfg.run_name,
            "task": "pretrain",
            "status": "nan" if trainer.nan_epoch is not None else "finished",
            "objective": "Models Genesis restoration (covidct.train.restoration)",
            "dataset": cfg.data.dataset,
            "size": int(images.shape[1]),
            "channels": int(images.shape[-1]),
            "input_names": ["image"],
            "input": f"stage {cfg.data.stage} of the classifier's grouped split, test rows left out"
            if classifier
            else f"crop {s.crop}, lung input {s.lung_input}",
            "model": cfg.model.name,
            "model_kwargs": dict(cfg.model.kwargs or {}),
            **trainer.selection_info(),
            "split_counts": {
                part: {"images": int(len(rows)), "groups": int(len(set(groups[rows])))}
                for part, rows in (("train", train_rows), ("val", val_rows))
            },
            **backend_info(policy, cfg),
            "seconds": round(time.perf_counter() - started, 1),
            "use": f"model.weights: {run_dir / MODEL_FILE} (same model.name, model.kwargs and input; copied layer by "
            "layer, " + ("the classifier's head stays random)" if classifier else "task: segmentation)"),
        }
        error = nan_error(cfg, trainer, run_dir) if trainer.nan_epoch is not None else None
        return Outcome(info, trainer.history, error)

    def report(self, cfg: RunConfig, outcome: Outcome) -> str:
        return pretrain_run_report(outcome.info)

    def describe(self, run_dir: Path, result: dict | None) -> str:
        return ("A pretraining run is not evaluated (its restoration error is in run_report.md); start a run of the "
                f"same model from it with model.weights: {run_dir}/model.keras, then evaluate that run.")
