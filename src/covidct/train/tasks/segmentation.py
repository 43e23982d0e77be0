"""``task: segmentation``: one mask per image (Dice + BCE loss, selection on validation Dice).

The data are image/mask pairs (``covidct.train.segmentation``: the dataset's pairs, cropped to the lungs or
not); ``plan_splits`` gives the test split or ``segmentation.folds`` grouped CV folds (``fold_<k>/``), each
with a validation part by group; with ``lung_input: auto`` a plain and a lung-masked variant
(``input_none/`` / ``input_masked/``) are fitted per split and the better on validation kept. Batches are
jointly augmented image/mask batches (``MaskSequence``). Folds may be fitted apart (``fold``) or in worker
processes (``jobs``, ``covidct.train.folds``). A finished run is evaluated per image, with bootstrap intervals,
by ``covidct.segment.evaluate.evaluate_segmentation`` (``covidct.train.workflow.evaluate_after_training``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from pathlib import Path

import numpy as np

import covidct.train.segmentation as seg
from covidct.config import RunConfig, check_task_settings
from covidct.data.writes import atomic_path
from covidct.errors import CovidctError
from covidct.models.inference import predict_mask_logits
from covidct.runs import HISTORY_FILE, MODEL_FILE, RUN_FILE, STATE_FILE, remove_run_output, run_status
from covidct.train.build import build_segmentation_model, recalibration_source
from covidct.train.data import TrainingData
from covidct.train.folds import check_fold_arguments, fit_folds_in_processes, fold_lock
from covidct.train.loop import Trainer, fit_map_model, map_batches, nan_error
from covidct.train.reports import segmentation_run_report
from covidct.train.runtime import backend_info, dtype_policy, seed_everything
from covidct.train.state import write_json_atomic, write_text_atomic
from covidct.train.tasks.base import Outcome, Request, Task

log = logging.getLogger(__name__)

FIT_FILE = "fit.json"  # a finished unit of a segmentation run (one fold / lung-input variant)
LUNG_INPUT_VARIANTS = {"none": ("none",), "masked": ("masked",), "auto": ("none", "masked")}


class SegmentationTask(Task):
    """One mask per image; see the module docstring."""

    name = "segmentation"

    def check_config(self, cfg: RunConfig, source: str) -> None:
        check_task_settings(cfg, source=source)

    def check_arguments(self, cfg: RunConfig, run_dir: Path, fold, jobs) -> None:
        self.check_config(cfg, f"config of {run_dir}")  # the config first: fold counts come from its section
        check_fold_arguments(cfg, run_dir, fold, jobs)

    def check_data(self, data) -> None:
        if data is not None and isinstance(data, TrainingData):
            raise CovidctError(
                "train(cfg): task segmentation takes image/mask pairs (covidct.segment.data.SegmentationPairs), not "
                "TrainingData; pass data=load_pairs(...) or leave data=None to load data.dataset."
            )

    def before_prepare(self, request: Request) -> None:
        if request.fold is not None:
            if request.overwrite and run_status(request.run_dir) != "new":
                raise CovidctError(
                    f"train(cfg, fold={request.fold}, overwrite=True) would delete the other folds in {request.run_dir}; "
                    "delete the folder yourself before starting the folds, or fit without fold."
                )
            request.resume = True  # join the run that the other folds' processes share

    def load_data(self, cfg: RunConfig, progress: bool):
        return seg.load_segmentation_pairs(cfg)

    def load(self, request: Request, resuming: bool):
        cfg, run_dir, fold = request.cfg, request.run_dir, request.fold
        pairs = request.data if request.data is not None else self.load_data(cfg, request.progress)
        seg.check_pairs(pairs, cfg)
        plans = seg.plan_splits(pairs, cfg)
        if not resuming:  # leftovers of a failed run in this folder must not pass for finished units
            # (one fold's process may clear only its own folder: the others may be training beside it)
            mine = [run_dir / plans[fold].name] if fold is not None else [*run_dir.glob("fold_*"), *run_dir.glob("input_*")]
            for leftover in mine:
                remove_run_output(leftover, run_dir)
            for name in (STATE_FILE, FIT_FILE):
                (run_dir / name).unlink(missing_ok=True)
        return pairs, plans

    def fit(self, request: Request, prepared, resuming: bool, started: float) -> Outcome | None:
        """Fit every split (and lung-input variant); with ``fold``, that fold alone (None: run left unfinished);
        with ``jobs`` > 1, the folds in that many processes first."""
        cfg, run_dir, fold, progress = request.cfg, request.run_dir, request.fold, request.progress
        pairs, plans = prepared
        write_json_atomic(run_dir / RUN_FILE, {"name": cfg.run_name, "task": "segmentation", "status": "running"})
        if fold is not None:
            plan = plans[fold]
            log.info("%s (%d/%d) alone: %d train, %d val, %d test", plan.name, fold + 1, len(plans), len(plan.train),
                     len(plan.val), len(plan.test))
            with dtype_policy(cfg):
                fit_split(cfg, run_dir / plan.name, plan, pairs, resuming, progress)
            left = [p.name for p in plans if run_status(run_dir / p.name) != "finished"]
            log.info("%s of %s finished; %s", plan.name, run_dir,
                     f"not finished yet: {', '.join(left)}" if left else
                     "every fold is finished: call once more without fold (resume) to write run.json")
            return None
        if request.jobs > 1:
            pending = [k for k, plan in enumerate(plans) if run_status(run_dir / plan.name) != "finished"]
            fit_folds_in_processes(request.entry, cfg, run_dir, pairs, pending, request.jobs)
            resuming = True  # every fold is finished now: the loop below reads their summaries
        with dtype_policy(cfg) as policy:
            splits = []
            for number, plan in enumerate(plans, start=1):
                if plan.name:
                    log.info(
                        "%s (%d/%d): %d train, %d val, %d test",
                        plan.name,
                        number,
                        len(plans),
                        len(plan.train),
                        len(plan.val),
                        len(plan.test),
                    )
                split_dir = run_dir / plan.name if plan.name else run_dir
                splits.append(fit_split(cfg, split_dir, plan, pairs, resuming, progress))
        t = cfg.training
        info = {
            "name": cfg.run_name,
            "task": "segmentation",
            "status": "finished",
            "dataset": cfg.data.dataset,
            "size": int(pairs.images.shape[1]),
            "channels": 1,
            "input_names": ["image"],
            "model": cfg.model.name,
            "monitor": t.monitor,
            "selection_split": "val" if t.monitor != "last" else "none",
            "selection": "a validation part of the training data (by group) selects the checkpoint and the lung input"
            if t.monitor != "last"
            else "nothing: a fixed epoch budget (monitor last), the final epoch's weights are kept"
            + ("; the validation part is scored for the history only" if cfg.segmentation.val_fraction > 0 else
               "; every training group is fitted (no validation part)"),
            "report_split": "test"
            if not cfg.segmentation.folds
            else f"held-out fold of {cfg.segmentation.folds}-fold grouped CV",
            "folds": int(cfg.segmentation.folds),
            "group_proxy": pairs.group_proxy or "group column of the pairs",
            **backend_info(policy, cfg),
            "seconds": round(time.perf_counter() - started, 1),
        }
        if cfg.segmentation.folds:
            info["fold_results"] = splits
            info["fold_lung_input"] = [s["lung_input"] for s in splits]
        else:
            info.update(splits[0])
        return Outcome(info)

    def report(self, cfg: RunConfig, outcome: Outcome) -> str:
        return segmentation_run_report(outcome.info)

    def describe(self, run_dir: Path, result: dict | None) -> str:
        dice = result["dice"]
        return f"test Dice {dice['mean']:.3f} [{dice['low']:.3f}, {dice['high']:.3f}] ({selection_words(result)})"


def fit_split(
    cfg: RunConfig, split_dir: Path, plan, pairs, resuming: bool, progress: bool
) -> dict:
    """Fit one split (the test split, or one fold) with each lung-input variant; keep the best on validation.

    A fold is fitted under ``fold_lock`` (one process per fold at a time).

    Returns:
        The split's summary (also ``split_dir/run.json`` for a fold): lung input chosen, its validation
        scores, best epoch, epochs run, sizes of the parts.
    """
    if plan.name and resuming and run_status(split_dir) == "finished":
        return json.loads((split_dir / RUN_FILE).read_text())
    with fold_lock(split_dir) if plan.name else contextlib.nullcontext():
        return _fit_split_variants(cfg, split_dir, plan, pairs, resuming, progress)


def _fit_split_variants(cfg: RunConfig, split_dir: Path, plan, pairs, resuming: bool, progress: bool) -> dict:
    """``fit_split`` without its checks: fit each lung-input variant, keep the best."""
    split_dir.mkdir(parents=True, exist_ok=True)
    split_csv = plan.frame(pairs).to_csv(index=False)
    saved_split = split_dir / seg.SPLIT_FILE
    if resuming and saved_split.is_file() and saved_split.read_text() != split_csv:
        raise CovidctError(
            f"Cannot resume: the data give other train/val/test rows than {saved_split} of the interrupted run "
            "(another data.root, size or seed?). Resume with the same data, or rerun with --overwrite."
        )
    write_text_atomic(saved_split, split_csv)
    variants = LUNG_INPUT_VARIANTS[cfg.segmentation.lung_input]
    fits = []
    for variant in variants:
        unit_dir = split_dir if len(variants) == 1 else split_dir / f"input_{variant}"
        fits.append(fit_unit(cfg, unit_dir, plan, pairs, variant, resuming, progress))
    higher = cfg.training.monitor != "val_loss"

    def rank(i: int) -> tuple:
        score = fits[i]["best_score"]
        score = -math.inf if score is None or not math.isfinite(score) else (score if higher else -score)
        return (score, -i)  # ties keep the first variant, the plain images

    chosen = fits[max(range(len(fits)), key=rank)]
    if len(variants) > 1:
        # The chosen variant's checkpoint and history become the split's own (what predict reads).
        unit_dir = split_dir / f"input_{chosen['lung_input']}"
        for name in (MODEL_FILE, HISTORY_FILE):
            with atomic_path(split_dir / name, suffix=Path(name).suffix) as tmp:
                shutil.copyfile(unit_dir / name, tmp)
    summary = {
        "status": "finished",
        "split": plan.name or "test",
        "lung_input": chosen["lung_input"],
        "crop": cfg.segmentation.crop,
        "monitor": cfg.training.monitor,
        "best_epoch": chosen["best_epoch"],
        "best_score": chosen["best_score"],
        "val_dice": chosen["val_dice"],
        "val_dice_by_input": {f["lung_input"]: f["val_dice"] for f in fits},
        "epochs_run": chosen["epochs_run"],
        "stopped_early": chosen["stopped_early"],
        "split_counts": {
            part: {"images": int(len(rows)), "groups": int(len(set(np.asarray(pairs.groups)[rows])))}
            for part, rows in (("train", plan.train), ("val", plan.val), ("test", plan.test))
        },
    }
    if plan.name:
        write_json_atomic(split_dir / RUN_FILE, summary)
    return summary


def fit_unit(
    cfg: RunConfig, unit_dir: Path, plan, pairs, lung_input: str, resuming: bool, progress: bool
) -> dict:
    """Fit one segmenter on ``plan.train`` with ``lung_input`` images, selecting epochs on ``plan.val``."""
    t = cfg.training
    fit_file = unit_dir / FIT_FILE
    if resuming and fit_file.is_file():
        return json.loads(fit_file.read_text())
    resume_here = resuming and (unit_dir / STATE_FILE).is_file()
    unit_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(t.seed)
    images = seg.model_inputs(pairs, lung_input == "masked")
    val_masks = np.asarray(pairs.masks)[plan.val]

    def validate(model) -> dict:
        if not len(plan.val):  # segmentation.val_fraction 0 with monitor last: nothing to score
            return {}
        logits = predict_mask_logits(model, images, plan.val, t.batch_size)
        return seg.mask_validation_scores(val_masks, logits)

    trainer = Trainer(cfg, unit_dir, validate, progress)
    trainer.model = build_segmentation_model(cfg, images.shape[1:3])
    trainer.input_names = ("image",)
    trainer.train_sequence = seg.MaskSequence(images, pairs.masks, plan.train, **map_batches(t))
    trainer.recalibration_batches = recalibration_source(cfg, images, plan.train, ("image",))
    fit_map_model(cfg, unit_dir, trainer, resume_here, progress)
    best = trainer.history[trainer.best_epoch] if trainer.best_epoch >= 0 else {}
    fit = {
        "status": "nan" if trainer.nan_epoch is not None else "finished",
        "lung_input": lung_input,
        "best_epoch": trainer.best_epoch + 1,
        "best_score": trainer.best_score,
        "val_dice": best.get("val_dice"),
        "epochs_run": len(trainer.history),
        "stopped_early": trainer.stopped_early,
    }
    if trainer.nan_epoch is not None:
        write_json_atomic(unit_dir / RUN_FILE, {**fit, "name": cfg.run_name, "task": "segmentation"})
        raise nan_error(cfg, trainer, unit_dir)
    write_json_atomic(fit_file, fit)
    (unit_dir / STATE_FILE).unlink(missing_ok=True)
    return fit


def selection_words(summary: dict) -> str:
    """What chose the checkpoints of a segmentation run, for the one-line summaries."""
    if summary.get("selection", {}).get("split") == "none":
        return "nothing selected: fixed epoch budget, final epoch kept"
    return "checkpoints selected on validation"
