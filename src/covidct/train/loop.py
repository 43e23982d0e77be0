"""The epoch loop every task shares: compile per phase, restore a saved state, fit, and per epoch validate,
keep the best checkpoint, stop early, catch a NaN loss, write ``history.csv`` and the resumable state.

A task hands the loop a ``Trainer`` holding the model, its ``train_sequence`` (a ``PyDataset`` with
``set_epoch``), ``validate(model) -> scores`` and optionally ``recalibration_batches``; ``fit_phases`` runs
the phases of ``model.freeze`` through ``model.fit`` with one callback, ``EpochControl``. Same
checkpointing, early stopping, NaN handling, history and resume for every task and unit.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from covidct.config import RunConfig, config_to_dict, segmentation_augmentation
from covidct.errors import CovidctError
from covidct.evaluate.metrics import logits_to_probs, macro_auc
from covidct.models.transfer import set_phase_trainable
from covidct.runs import HISTORY_FILE, MODEL_FILE, STATE_FILE
from covidct.train.batchnorm import recalibrate_batch_norm, set_batch_norm_momentum
from covidct.train.build import current_learning_rate, make_optimizer
from covidct.train.losses import loss_numpy, make_loss
from covidct.train.runtime import drop_last_batch, gpu_available
from covidct.train.state import (
    assign_variables,
    load_train_state,
    save_model_atomic,
    save_train_state,
    write_text_atomic,
)

log = logging.getLogger(__name__)


def validation_scores(y_true: np.ndarray, logits: np.ndarray, loss: str, gamma: float, alpha) -> dict:
    """val_loss, val_macro_f1, val_auc (one-vs-rest macro, on probabilities), val_accuracy."""
    probs = logits_to_probs(logits)
    present = sorted(set(np.asarray(y_true).tolist()))
    return {
        "val_loss": loss_numpy(loss, y_true, logits, gamma=gamma, alpha=alpha),
        "val_macro_f1": float(
            f1_score(y_true, probs.argmax(1), labels=present, average="macro", zero_division=0)
        ),
        "val_auc": macro_auc(y_true, probs),
        "val_accuracy": float(np.mean(probs.argmax(1) == y_true)),
    }


class EpochControl(keras.callbacks.Callback):
    """Per-epoch bookkeeping: data seeding, validation, best checkpoint, early stopping, NaN, resume state."""

    #: The per-batch NaN check only reads the logs and sets flags, so Keras may run it off the training
    #: thread. Without this, JAX turns every batch's loss into a Python float before the next step is
    #: dispatched (a device sync per batch: the GPU idles while the next batch is prepared).
    async_safe = True

    def __init__(self, trainer: Trainer):
        super().__init__()
        self.trainer = trainer

    def on_epoch_begin(self, epoch, logs=None):
        self.trainer.train_sequence.set_epoch(epoch)
        self.epoch_start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.trainer.nan_epoch = self.trainer.current_epoch
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        self.trainer.end_epoch(epoch, logs or {}, time.perf_counter() - self.epoch_start)


class Trainer:
    """State of one fit (a run, or one unit of a segmentation run): history, best epoch, NaN, phases."""

    def __init__(self, cfg: RunConfig, run_dir: Path, validate, progress: bool):
        """``validate(model) -> {score name: value}`` scores the validation set (it holds ``training.monitor``)."""
        self.cfg = cfg
        self.run_dir = run_dir
        self.validate = validate
        #: ``() -> iterable of clean training input batches`` for BatchNorm recalibration, or None.
        self.recalibration_batches = None
        self.progress = progress
        self.history: list[dict] = []
        self.best_score = None
        self.best_epoch = -1
        self.nan_epoch = None
        self.current_epoch = 0
        self.phase = 0
        self.stopped_early = False
        self.is_last_phase = True
        self.phase_end = cfg.training.epochs  # the current phase's last epoch (1-based); set by fit_phases
        t = cfg.training
        self.higher_is_better = t.monitor != "val_loss"
        #: ``monitor: last``: every epoch replaces the checkpoint; nothing is selected.
        self.keep_last = t.monitor == "last"
        self.state_saved_at = None  # perf_counter() after the last resume-state write (None: none yet)
        self.state_save_seconds = 0.0

    def improved(self, score: float) -> bool:
        if score is None or not math.isfinite(score):
            return self.best_score is None
        if self.best_score is None or not math.isfinite(self.best_score):
            return True
        return score > self.best_score if self.higher_is_better else score < self.best_score

    def end_epoch(self, epoch: int, logs: dict, seconds: float) -> None:
        t = self.cfg.training
        self.current_epoch = epoch + 1
        if self.nan_epoch is not None:
            log.error(
                "Loss became NaN in epoch %d; stopping. model.keras keeps epoch %d.",
                epoch + 1,
                self.best_epoch + 1,
            )
            return
        row = {"epoch": epoch + 1, "phase": self.phase, "loss": float(logs.get("loss", float("nan")))}
        validated = not (epoch + 1) % t.validation_freq or epoch + 1 == self.phase_end  # training.validation_freq
        scores = {}
        if validated:
            if self.recalibration_batches is not None:
                recalibrate_batch_norm(self.model, self.recalibration_batches())
            scores = self.validate(self.model)
            logs.update(scores)
        row.update(scores)
        row["learning_rate"] = current_learning_rate(self.model.optimizer)
        row["seconds"] = round(seconds, 3)
        self.history.append(row)
        if not validated:  # nothing to checkpoint, select or stop on
            log.info("epoch %d: loss %.4f (validated every %d epochs)", epoch + 1, row["loss"], t.validation_freq)
            self.write_history()
            self.save_resume_state()
            return
        # monitor last: every epoch replaces the checkpoint and there is no selection score (best_score None)
        score = None if self.keep_last else scores[t.monitor]
        if self.keep_last or self.improved(score):
            self.best_score = None if self.keep_last else float(score)
            self.best_epoch = epoch
            save_model_atomic(self.model, self.run_dir / MODEL_FILE)
        if self.keep_last:
            shown = {k: v for k, v in scores.items() if k in ("val_loss", "val_auc", "val_macro_f1", "val_dice")}
            log.info(
                "epoch %d: loss %.4f%s (monitor last: checkpoint = this epoch)",
                epoch + 1,
                row["loss"],
                "".join(f", {k} {v:.4f}" for k, v in shown.items()),
            )
        else:
            log.info(
                "epoch %d: loss %.4f, %s %.4f (best %.4f at epoch %d)",
                epoch + 1,
                row["loss"],
                t.monitor,
                score,
                self.best_score,
                self.best_epoch + 1,
            )
        # Early stopping counts only epochs after min_epochs (BatchNorm warm-up on small data).
        if t.early_stopping_patience and self.is_last_phase and not self.keep_last:
            wait = (epoch + 1) - max(self.best_epoch + 1, t.min_epochs)
            if epoch + 1 >= t.min_epochs and wait >= t.early_stopping_patience:
                self.stopped_early = True
                self.model.stop_training = True
        self.write_history()
        self.save_resume_state()

    #: The resume state (every model and optimizer variable) is rewritten after an epoch unless the last
    #: write took more than 1/STATE_SAVE_SHARE of the time since: with 0.1-s epochs of a 7.8 M-parameter U-Net
    #: on a GPU a 94 MB write per epoch would be most of the run. A crash then replays a few short epochs
    #: (deterministically: the same result as an uninterrupted run).
    STATE_SAVE_SHARE = 5.0

    def save_resume_state(self) -> None:
        now = time.perf_counter()
        if self.state_saved_at is not None and now - self.state_saved_at < self.STATE_SAVE_SHARE * self.state_save_seconds:
            return
        save_train_state(self.run_dir / STATE_FILE, self.model, self.model.optimizer, self.state_dict())
        self.state_saved_at = time.perf_counter()
        self.state_save_seconds = self.state_saved_at - now

    def selection_info(self) -> dict:
        """What selected the saved checkpoint, for ``run.json``: monitor, split, best epoch and score, epochs run."""
        return {
            "monitor": self.cfg.training.monitor,
            "selection_split": "none" if self.keep_last else "val",
            "best_epoch": self.best_epoch + 1,
            "best_score": self.best_score,
            "epochs_run": len(self.history),
            "stopped_early": self.stopped_early,
        }

    def state_dict(self) -> dict:
        return {
            "epochs_done": self.current_epoch,
            "phase": self.phase,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early,
            "history": self.history,
            "config": config_to_dict(self.cfg),
        }

    def write_history(self) -> None:
        frame = pd.DataFrame(self.history)  # epochs not validated (training.validation_freq): empty val_* cells
        first = ["epoch", "phase", "loss"]
        frame = frame[first + [c for c in frame.columns if c not in first + ["learning_rate", "seconds"]]
                      + ["learning_rate", "seconds"]]
        write_text_atomic(self.run_dir / HISTORY_FILE, frame.to_csv(index=False))


def phases(cfg: RunConfig) -> list[tuple]:
    """Training phases (first epoch, end epoch, backbone trainable, learning rate) from ``model.freeze``."""
    t, m = cfg.training, cfg.model
    if m.freeze == "frozen":
        return [(0, t.epochs, False, t.learning_rate)]
    if m.freeze == "frozen-then-finetune":
        split_epoch = min(max(int(m.frozen_epochs), 0), t.epochs)
        phases = [
            (0, split_epoch, False, t.learning_rate),
            (split_epoch, t.epochs, True, t.learning_rate * m.finetune_learning_rate_factor),
        ]
        return [p for p in phases if p[1] > p[0]]
    return [(0, t.epochs, True, t.learning_rate)]


def fit_phases(
    cfg: RunConfig, run_dir: Path, trainer: Trainer, loss, resuming: bool, progress: bool, **compile_options
) -> None:
    """The epoch loop every task shares: compile per phase, restore a saved state, ``model.fit``.

    ``trainer`` holds the model, its ``train_sequence`` (a PyDataset with ``set_epoch``) and the
    validation function; ``EpochControl`` checkpoints, stops early and saves the resumable state.
    """
    t, m = cfg.training, cfg.model
    model = trainer.model
    if t.bn_momentum is not None:
        set_batch_norm_momentum(model, t.bn_momentum)
    steps_per_epoch = len(trainer.train_sequence)
    plan = phases(cfg)
    start_epoch, saved = 0, None
    if resuming and not (run_dir / STATE_FILE).is_file():  # the state is first written after epoch 1
        log.info("%s stopped before its first epoch ended (no %s): starting from epoch 1.", run_dir, STATE_FILE)
        resuming = False
    if resuming:
        model_arrays, optimizer_arrays, state = load_train_state(run_dir / STATE_FILE)
        saved = (model_arrays, optimizer_arrays)
        start_epoch = int(state["epochs_done"])
        trainer.history = list(state["history"])
        trainer.best_score = state["best_score"]
        trainer.best_epoch = int(state["best_epoch"])
        trainer.stopped_early = bool(state.get("stopped_early"))
        log.info(
            "Resuming %s after epoch %d (best %s at epoch %d).",
            run_dir,
            start_epoch,
            trainer.best_score,
            trainer.best_epoch + 1,
        )

    callbacks = [EpochControl(trainer)]
    for index, (first, end, trainable, learning_rate) in enumerate(plan):
        if start_epoch >= end or trainer.stopped_early:
            continue
        trainer.phase, trainer.phase_end = index, end
        trainer.is_last_phase = index == len(plan) - 1
        if m.freeze != "none" or m.finetune != "all" or m.freeze_batchnorm:
            set_phase_trainable(model, trainable, m.finetune, m.freeze_batchnorm)  # covidct.models.transfer
        optimizer = make_optimizer(cfg, learning_rate, steps_per_epoch * (end - first))
        model.compile(optimizer=optimizer, loss=loss, **compile_options)
        if saved is not None:
            assign_variables(model.variables, saved[0], "model")
            if start_epoch > first:
                # Resuming inside this phase: restore the optimizer's moments and step counter too.
                optimizer.build(model.trainable_variables)
                assign_variables(optimizer.variables, saved[1], "optimizer")
            saved = None
        model.fit(
            trainer.train_sequence,
            epochs=end,
            initial_epoch=max(first, start_epoch),
            callbacks=callbacks,
            verbose="auto" if progress else 0,
            shuffle=False,
        )
        if trainer.nan_epoch is not None:
            break
        start_epoch = end


def map_batches(t) -> dict:
    """Training-batch settings of the models with one output map per image (segmenters, restoration)."""
    return {
        "batch_size": t.batch_size,
        "shuffle": True,
        "seed": t.seed,
        "augmentation": segmentation_augmentation(t),
        "max_steps": t.max_steps_per_epoch,
        "drop_last": drop_last_batch(t.drop_last),
    }


def fit_map_model(cfg: RunConfig, run_dir: Path, trainer: Trainer, resuming: bool, progress: bool) -> None:
    """``fit_phases`` for a model with one output map per image (loss ``training.loss`` on one channel).

    XLA compilation costs more than it saves for these small fully convolutional models on a CPU under
    TensorFlow (graph mode either way); JAX without jit runs op by op (0.65 s per batch of 8 on an H100).
    """
    jit = "auto" if gpu_available() or keras.backend.backend() != "tensorflow" else False
    fit_phases(cfg, run_dir, trainer, make_loss(cfg.training.loss, 1), resuming, progress, jit_compile=jit)


def nan_error(cfg: RunConfig, trainer: Trainer, run_dir: Path) -> CovidctError:
    """The error of a fit stopped by a NaN loss: the epoch, what ``model.keras`` keeps, what to change."""
    kept = (
        f"model.keras keeps the best epoch ({trainer.best_epoch + 1})"
        if trainer.best_epoch >= 0
        else "no checkpoint was saved"
    )
    return CovidctError(
        f"Training {cfg.run_name}: the loss became NaN in epoch {trainer.nan_epoch + 1}; stopped, {kept} in {run_dir}. "
        "Lower training.learning_rate, check the inputs, or use mixed_precision=off."
    )
