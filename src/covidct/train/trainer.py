"""``train(cfg)``: the one place in covidct that compiles and fits a model.

Flow: resolve the run folder (refuse to clobber a finished run) → seed everything → load the data
(grouped split, preprocessed cache; the volume cache for 3D models, ``covidct.train.volume_data``)
→ check the splits are usable → optional shortcut probe → build the registered model → compile (loss,
optimizer, schedule, mixed precision) → fit on a ``PyDataset`` with one callback that, every epoch,
scores the validation set on probabilities, keeps the best checkpoint (``model.keras``, written
atomically), stops early, writes ``history.csv`` and a resumable
``train_state.npz`` → ``run.json`` + ``run_report.md``.

**Tasks.** ``covidct.config.resolve_task(cfg)`` picks what is fitted: ``classification`` (2-D slices)
and ``volume`` (3-D volumes) share everything above; ``segmentation`` (``task: segmentation``, see
``covidct.train.segmentation``) swaps the data for image/mask pairs, the loss for Dice + BCE, the
selection score for validation Dice and the batches for jointly augmented image/mask batches, and may
fit several units (``segmentation.folds`` grouped CV folds ``fold_<k>/``; with ``lung_input: auto`` a
plain and a lung-masked variant ``input_none/`` / ``input_masked/`` per split, the better on validation
kept); ``pretrain`` (``task: pretrain``, ``covidct.train.restoration``) fits a segmenter, or a slice
classifier's backbone with a decoder, to restore distorted unlabeled images, so that a later run can start
from its ``model.keras`` (``model.weights``, copied layer by layer). Every unit goes through the same epoch loop (``_fit_phases`` + ``EpochControl``): same
checkpointing, early stopping, NaN handling, history and resume.

The validation set selects the checkpoint; it is never reported as a test score (``covidct
evaluate`` does that on the test split; ``covidct.segment.evaluate.evaluate_segmentation`` for
segmenters, per image with bootstrap intervals).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import yaml

from covidct.config import RunConfig, augmentation_factors, config_to_dict, dump_config, resolve_task
from covidct.errors import CovidctError
from covidct.evaluate.report import markdown_table
from covidct.models.inference import predict_logits, predict_mask_logits
from covidct.models.transfer import set_phase_trainable
from covidct.runs import (
    HISTORY_FILE,
    MODEL_FILE,
    RUN_FILE,
    STATE_FILE,
    check_unlocked,
    clear_run_dir,
    remove_run_output,
    run_lock,
    run_status,
    writing_run,
)
from covidct.train.batchnorm import (
    recalibrate_batch_norm,
    recalibration_rows,
    set_batch_norm_momentum,
)
from covidct.train.data import (
    SliceSequence,
    TrainingData,
    balanced_class_weights,
    check_training_splits,
    prepare_data,
)
from covidct.train.losses import loss_numpy, make_loss
from covidct.train.state import (
    assign_variables,
    atomic_path,
    load_train_state,
    save_model_atomic,
    save_train_state,
    write_json_atomic,
    write_text_atomic,
)

log = logging.getLogger(__name__)

FIT_FILE = "fit.json"  # a finished unit of a segmentation run (one fold / lung-input variant)


# ------------------------------------------------------------------------------------------------------
# Environment: seeds, determinism, mixed precision
# ------------------------------------------------------------------------------------------------------


def gpu_names() -> list[str]:
    """The GPUs the active Keras backend sees, by name (empty: none, or a broken accelerator stack)."""
    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            return [d.name for d in tf.config.list_physical_devices("GPU")]
        if backend == "jax":
            import jax

            return [d.device_kind for d in jax.devices() if d.platform == "gpu"]
        if backend == "torch":
            import torch

            return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # A broken accelerator stack means "no GPU", not a crash.
        return []
    return []


def gpu_available() -> bool:
    """Whether the active Keras backend sees a GPU."""
    return bool(gpu_names())


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and the backend; on TensorFlow CPU also make ops deterministic."""
    keras.utils.set_random_seed(int(seed))
    if keras.backend.backend() == "tensorflow" and not gpu_available():
        import tensorflow as tf

        # Same config + seed on CPU must give the same numbers (a tested promise).
        tf.config.experimental.enable_op_determinism()


#: Environment variable: folder of the persistent XLA compilation cache on JAX ("off" disables it).
COMPILATION_CACHE_ENV = "COVIDCT_COMPILATION_CACHE"


def enable_compilation_cache() -> str | None:
    """On JAX, keep compiled XLA programs on disk so that a later fold, seed or run of the same model and shapes
    loads them instead of compiling again; returns the folder (None: not JAX, or switched off).

    A 256 px U-Net fold on an H200 spent 110-224 s in its first epoch, mostly compiling, and ~25 s in up to 79
    more (BENCHMARKS.md, infection segmentation); within one process every fold builds a new model and compiles again. The folder is
    ``$COVIDCT_COMPILATION_CACHE`` (``off`` disables), else the one JAX was given (``JAX_COMPILATION_CACHE_DIR``),
    else ``$COVIDCT_CACHE/xla`` (default ``.cache/covidct/xla``). JAX caches programs that took at least
    ``jax_persistent_cache_min_compile_time_secs`` (1 s) to compile, and a cached program computes the same
    numbers as a fresh one. The cache runs code: keep it in a folder only you can write to.
    """
    if keras.backend.backend() != "jax":
        return None
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    setting = os.environ.get(COMPILATION_CACHE_ENV, "").strip()
    if setting.lower() in {"off", "0", "false", "no", "none"}:
        return None
    current = jax.config.jax_compilation_cache_dir
    if current and not setting:
        return str(current)
    folder = Path(setting) if setting else Path(os.environ.get("COVIDCT_CACHE", ".cache/covidct")) / "xla"
    if current == str(folder):
        return current
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        log.warning("XLA compilation cache off: cannot create %s (%s); set %s to a writable folder or 'off'.",
                    folder, error, COMPILATION_CACHE_ENV)
        return None
    compilation_cache.set_cache_dir(str(folder))
    compilation_cache.reset_cache()  # a process that compiled before this call re-reads the setting
    return str(folder)


def drop_last_batch(setting: str) -> bool:
    """``training.drop_last`` resolved: ``auto`` is on where the fit is XLA-compiled (JAX, or a GPU)."""
    if setting == "auto":
        return keras.backend.backend() == "jax" or gpu_available()
    return setting == "on"


def mixed_precision_policy(setting: str) -> str:
    """The dtype policy for ``auto``/``on``/``off``: bfloat16 on JAX, float16 elsewhere, only on GPU for auto."""
    if setting == "off" or (setting == "auto" and not gpu_available()):
        return "float32"
    return "mixed_bfloat16" if keras.backend.backend() == "jax" else "mixed_float16"


# ------------------------------------------------------------------------------------------------------
# Model, freezing, optimizer
# ------------------------------------------------------------------------------------------------------


def model_input_shape(images: np.ndarray, input_names: tuple) -> tuple:
    """Input shape for the builder: (H, W, C), or (H, W, 1) per input of an image+mask model."""
    h, w, c = (int(s) for s in images.shape[1:4])
    return (h, w, 1) if len(input_names) > 1 else (h, w, c)


def build_configured_model(cfg: RunConfig, images: np.ndarray, num_classes: int):
    """Build the registered model named in ``cfg.model`` for these images."""
    from covidct.models import build_model, get_spec

    spec = get_spec(cfg.model.name)
    if spec.task not in ("classification", "volume"):
        raise CovidctError(
            f"Model {cfg.model.name!r} is a {spec.task} model; it takes task: {spec.task} (build_segmentation_model), "
            "not the classifier builder (see covidct.models.list_models(task='classification'))."
        )
    if (spec.task == "volume") != (images.ndim == 5):
        raise CovidctError(
            f"Model {cfg.model.name!r} ({spec.task}) cannot take images of shape {tuple(images.shape[1:])}: volume "
            "models take (D, H, W, 1) volumes, slice models (H, W, C) images. Let prepare_data(cfg) build the data."
        )
    shape = (
        tuple(int(s) for s in images.shape[1:])
        if spec.task == "volume"
        else model_input_shape(images, tuple(spec.inputs))
    )
    return _with_pretrained(cfg, lambda weights: build_model(
        cfg.model.name,
        input_shape=shape,
        num_classes=num_classes,
        weights=weights,
        **dict(cfg.model.kwargs or {}),
    ))


def _with_pretrained(cfg: RunConfig, build):
    """``build(weights)``; a ``task: pretrain`` run's ``model.keras`` as ``model.weights`` is copied in layer
    by layer instead (``covidct.train.restoration.load_pretrained``: the head stays random)."""
    from covidct.models.inference import is_pretrained_checkpoint
    from covidct.train.restoration import load_pretrained

    if not is_pretrained_checkpoint(cfg.model.weights):
        return build(cfg.model.weights)
    model = build(None)
    load_pretrained(model, cfg.model.weights)
    return model


def build_segmentation_model(cfg: RunConfig, size_hw: tuple):
    """Build the registered segmenter ``cfg.model.name`` for (H, W, 1) display images, 1 logit per pixel."""
    from covidct.models import build_model, get_spec

    spec = get_spec(cfg.model.name)
    if spec.task != "segmentation":
        raise CovidctError(
            f"Model {cfg.model.name!r} is a {spec.task} model; task segmentation needs a segmentation model "
            "(covidct models --task segmentation)."
        )
    shape = (int(size_hw[0]), int(size_hw[1]), 1)
    return _with_pretrained(cfg, lambda weights: build_model(
        cfg.model.name,
        input_shape=shape,
        num_classes=1,
        weights=weights,
        **dict(cfg.model.kwargs or {}),
    ))


def recalibration_source(cfg: RunConfig, images, train_index, input_names: tuple):
    """``training.bn_recalibration`` training rows as a callable yielding clean input batches (None: off)."""
    t = cfg.training
    rows = recalibration_rows(train_index, t.bn_recalibration, t.seed)
    if len(rows) == 0:
        return None
    # Larger batches than training's where they are small: fewer eager calls (the passes run outside
    # model.fit, op by op), same statistics in expectation. Capped at about 2 M input values per batch.
    per_sample = int(np.prod(np.shape(images)[1:]))
    batch_size = max(t.batch_size, min(128, (1 << 21) // max(per_sample, 1)))
    sequence = SliceSequence(images, rows, batch_size=batch_size, input_names=input_names)
    return lambda: (sequence[i][0] for i in range(len(sequence)))


def is_head_layer(layer) -> bool:
    """Head layers stay trainable when the backbone is frozen: ``logits`` and names starting ``head``."""
    return layer.name == "logits" or layer.name.startswith("head")


def set_backbone_trainable(model, trainable: bool) -> int:
    """Freeze or unfreeze every layer except the head; returns the number of layers changed."""
    changed = 0
    for layer in model.layers:
        if is_head_layer(layer) or not layer.weights:
            continue
        layer.trainable = trainable
        changed += 1
    return changed


def make_optimizer(cfg: RunConfig, learning_rate: float, total_steps: int):
    """Adam or AdamW with an optional cosine decay over ``total_steps``."""
    t = cfg.training
    lr = learning_rate
    if t.schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(1, int(total_steps)))
    if t.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate=lr, weight_decay=t.weight_decay)
    return keras.optimizers.Adam(learning_rate=lr)


def current_learning_rate(optimizer) -> float:
    lr = optimizer.learning_rate
    try:
        return float(keras.ops.convert_to_numpy(lr))
    except Exception:
        return float("nan")


# ------------------------------------------------------------------------------------------------------
# Prediction helpers shared with evaluation
# ------------------------------------------------------------------------------------------------------


def validation_scores(y_true: np.ndarray, logits: np.ndarray, loss: str, gamma: float, alpha) -> dict:
    """val_loss, val_macro_f1, val_auc (one-vs-rest macro, on probabilities), val_accuracy."""
    from sklearn.metrics import f1_score

    from covidct.evaluate.metrics import logits_to_probs, macro_auc

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


# ------------------------------------------------------------------------------------------------------
# The epoch callback
# ------------------------------------------------------------------------------------------------------


class EpochControl(keras.callbacks.Callback):
    """Per-epoch bookkeeping: data seeding, validation, best checkpoint, early stopping, NaN, resume state."""

    #: The per-batch NaN check only reads the logs and sets flags, so Keras may run it off the training
    #: thread. Without this, JAX turns every batch's loss into a Python float before the next step is
    #: dispatched (a device sync per batch: the GPU idles while the next batch is prepared).
    async_safe = True

    def __init__(self, trainer: _Trainer):
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


class _Trainer:
    """State of one training run (kept out of the public API; use ``train``)."""

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
        self.phase_end = cfg.training.epochs  # the current phase's last epoch (1-based); set by _fit_phases
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


# ------------------------------------------------------------------------------------------------------
# train()
# ------------------------------------------------------------------------------------------------------


def _backend_info(policy: str, cfg: RunConfig) -> dict:
    """Backend, Keras version, dtype policy, the last incomplete batch's fate and (JAX) compilation cache of a
    run, for ``run.json``."""
    info = {
        "backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        "dtype_policy": policy,
        "drop_last_batch": drop_last_batch(cfg.training.drop_last),
    }
    if info["backend"] == "jax":
        import jax

        info["compilation_cache"] = jax.config.jax_compilation_cache_dir
    return info


def _prepare_run_dir(cfg: RunConfig, run_dir: Path, resume: bool, overwrite: bool, folder=None) -> bool:
    """Refuse or clean the (marked, locked) run folder; returns True when training resumes from a saved state.

    ``--overwrite`` empties the folder but its marker (``covidct.runs.clear_run_dir``, which refuses a folder
    without one); ``folder`` (the ``RunFolder`` of ``writing_run``) then counts as fresh.
    """
    if overwrite:
        status = "new" if not run_dir.exists() else _status_or_corrupt(run_dir)
    else:
        status = run_status(run_dir)
    if status == "finished" and not overwrite:
        raise CovidctError(
            f"Run folder {run_dir} holds a finished run; refusing to overwrite it. "
            "Pass overwrite=True (--overwrite) or choose another name (--run-dir / name=...)."
        )
    if status == "interrupted" and not (resume or overwrite):
        raise CovidctError(
            f"Run folder {run_dir} holds an interrupted run. Pass resume=True (--resume) to continue it "
            "or overwrite=True (--overwrite) to start again."
        )
    if overwrite and run_dir.exists():
        clear_run_dir(run_dir)
        if folder is not None:
            folder.fresh = True
    run_dir.mkdir(parents=True, exist_ok=True)
    resuming = status == "interrupted" and resume and not overwrite
    if resuming:
        _check_resumed_config(cfg, run_dir)
    return resuming


def _status_or_corrupt(run_dir: Path) -> str:
    """``run_status``, or ``"corrupt"`` for an unreadable ``run.json`` (which ``--overwrite`` may replace)."""
    try:
        return run_status(run_dir)
    except CovidctError:
        return "corrupt"


def _check_resumed_config(cfg: RunConfig, run_dir: Path) -> None:
    """Refuse to resume a run folder whose saved config differs from ``cfg`` (the result would mix two runs)."""
    saved_file = run_dir / "config.yaml"
    if not saved_file.is_file():
        return
    try:
        saved = yaml.safe_load(saved_file.read_text())
    except yaml.YAMLError as error:
        raise CovidctError(f"{saved_file}: cannot read the interrupted run's config ({error}).") from error

    def leaves(tree, prefix=""):
        if isinstance(tree, dict):
            for key, value in tree.items():
                yield from leaves(value, f"{prefix}{key}.")
        else:
            yield prefix[:-1], tree

    now, before = dict(leaves(config_to_dict(cfg))), dict(leaves(saved or {}))
    # A key the saved config lacks was added by a later covidct: it ran with that key's default.
    defaults = dict(leaves(config_to_dict(RunConfig())))
    before.update({k: defaults[k] for k in now.keys() - before.keys() if k in defaults})
    changed = sorted(k for k in now.keys() | before.keys() if now.get(k) != before.get(k))
    if changed:
        shown = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:6])
        raise CovidctError(
            f"Run folder {run_dir} holds an interrupted run with another config ({shown}"
            f"{', ...' if len(changed) > 6 else ''}); resuming would mix two runs. Use the same settings, "
            "another run folder, or overwrite=True (--overwrite) to start again."
        )


def _shortcut_probe(cfg: RunConfig, data: TrainingData) -> dict:
    """Run covidct.data.audit's nuisance-feature probe on the training split (advisory, never fatal)."""
    if not cfg.training.shortcut_probe:
        return {"status": "skipped (training.shortcut_probe=false)"}
    if data.images.ndim == 5:
        return {"status": "skipped (volume model: the probe fingerprints 2-D images)"}
    train_manifest = data.manifest.iloc[data.indices("train")]
    if not all(os.path.exists(p) for p in train_manifest["path"].head(20)):
        return {"status": "skipped (the training rows are not image files)"}
    try:
        from covidct.data.audit import compute_fingerprints, nuisance_matrix, shortcut_probe
    except ImportError:
        return {"status": "not available (covidct.data.audit missing)"}
    try:
        prints = compute_fingerprints(train_manifest, cache_root=cfg.data.cache_root, progress=False)
        features, names = nuisance_matrix(prints)
        result = shortcut_probe(
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


def train(
    cfg: RunConfig,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    data=None,
    progress: bool = True,
    fold: int | None = None,
    jobs: int = 1,
) -> Path:
    """Train the model described by ``cfg`` and save the run folder.

    Args:
        cfg: a validated RunConfig (``covidct.config.load_config``).
        run_dir: the run folder (default ``<cfg.output_root>/<cfg.run_name>``).
        resume: continue an interrupted run from its last completed epoch.
        overwrite: delete an existing run folder (finished or not) and start again.
        data: already-loaded data (tests, notebooks): ``TrainingData`` for classification and volume
            runs, ``covidct.segment.data.SegmentationPairs`` for ``task: segmentation``,
            ``covidct.train.restoration.UnlabeledImages`` for ``task: pretrain``; default: built from
            ``cfg.data``.
        progress: show Keras' progress bar.
        fold: ``task: segmentation`` with ``segmentation.folds`` only: fit fold ``fold`` (0-based) alone and
            leave the run unfinished, so that the folds of one cross-validation can run at the same time in
            several processes (or machines sharing the folder) on the same ``run_dir``. An unfinished run
            folder of the same config is joined (its other folds are never touched); a finished fold is
            kept. A last call without ``fold`` (``resume=True``) fits any fold left and writes ``run.json``.
        jobs: ``task: segmentation`` with ``segmentation.folds`` only: fit up to ``jobs`` folds at the same time,
            each in its own fresh Python process (``fold=k`` there; logs in ``<run_dir>/fold_<k>.log``), then
            finish the run here. For a GPU, where a fold is compile-bound (BENCHMARKS.md, infection segmentation); on a CPU the
            processes share the cores. Each process must know the model: covidct's own are registered on
            import, a model registered by an importable module is imported by each process, one registered in a
            notebook is refused before any process starts (``_model_module``). Same result as ``jobs=1``.

    Returns:
        The run folder, holding ``config.yaml``, ``model.keras`` (best validation checkpoint),
        ``history.csv``, ``run.json`` (classes or lung input, preprocessing, best epoch, which split
        selected) and ``run_report.md``; segmentation runs also ``split.csv`` (rows of train/val/test)
        and, with folds, one such folder ``fold_<k>/`` per fold.

    Raises:
        CovidctError: finished run without overwrite, a model of another task, unusable splits, NaN
            loss (after keeping the last good checkpoint), a full disk.
    """
    run_dir = Path(run_dir) if run_dir is not None else Path(cfg.output_root) / cfg.run_name
    task = resolve_task(cfg, source=f"config of {run_dir}")
    enable_compilation_cache()
    if (fold is not None or jobs != 1) and task != "segmentation":
        what = f"fold={fold}" if fold is not None else f"jobs={jobs}"
        raise CovidctError(f"train(cfg, {what}): fitting folds separately applies to task segmentation, not {task}.")
    if task == "segmentation":
        _check_fold_arguments(cfg, run_dir, fold, jobs)
    if fold is not None:  # one fold beside others: the fold's own lock; the run's only from the parent (jobs)
        check_unlocked(run_dir, allowed_pids=(os.getppid(),))
    # Marked, locked, cleaned up after a failure: covidct.runs.writing_run (docs/data-safety.md).
    with writing_run(run_dir, lock=fold is None) as folder:
        if task == "segmentation":
            return _train_segmentation(cfg, run_dir, resume, overwrite, data, progress, fold, jobs, folder)
        if task == "pretrain":
            return _train_pretrain(cfg, run_dir, resume, overwrite, data, progress, folder)
        return _train_classifier(cfg, run_dir, resume, overwrite, data, progress, folder, task)


def _train_classifier(cfg: RunConfig, run_dir: Path, resume, overwrite, data, progress, folder, task: str) -> Path:
    """``train(cfg)`` for ``task`` classification or volume, in the marked and locked run folder."""
    if data is not None and not isinstance(data, TrainingData):
        raise CovidctError(
            f"train(cfg): a {task} run takes TrainingData (covidct.train.data), got {type(data).__name__}; "
            "image/mask pairs train a segmentation model with task: segmentation."
        )
    resuming = _prepare_run_dir(cfg, run_dir, resume, overwrite, folder)
    started = time.perf_counter()
    seed_everything(cfg.training.seed)
    if data is None:
        data = prepare_data(cfg, progress=progress)
    class_names = list(data.class_names)
    split = data.manifest["split"].astype(str).to_numpy()
    check_training_splits(data.labels, split, class_names, source=cfg.data.dataset)
    dump_config(cfg, run_dir / "config.yaml")

    probe = _shortcut_probe(cfg, data)
    with _dtype_policy(cfg) as policy:
        return _fit(cfg, run_dir, data, class_names, split, probe, policy, resuming, progress, started)


@contextlib.contextmanager
def _dtype_policy(cfg: RunConfig):
    """Set the run's mixed-precision policy (yields its name); the previous policy is restored afterwards."""
    policy = mixed_precision_policy(cfg.training.mixed_precision)
    previous = keras.mixed_precision.dtype_policy().name
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        yield policy
    finally:
        keras.mixed_precision.set_dtype_policy(previous)


def _phases(cfg: RunConfig) -> list[tuple]:
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


def _fit_phases(
    cfg: RunConfig, run_dir: Path, trainer: _Trainer, loss, resuming: bool, progress: bool, **compile_options
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
    phases = _phases(cfg)
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
    for index, (first, end, trainable, learning_rate) in enumerate(phases):
        if start_epoch >= end or trainer.stopped_early:
            continue
        trainer.phase, trainer.phase_end = index, end
        trainer.is_last_phase = index == len(phases) - 1
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


def _nan_error(cfg: RunConfig, trainer: _Trainer, run_dir: Path) -> CovidctError:
    kept = (
        f"model.keras keeps the best epoch ({trainer.best_epoch + 1})"
        if trainer.best_epoch >= 0
        else "no checkpoint was saved"
    )
    return CovidctError(
        f"Training {cfg.run_name}: the loss became NaN in epoch {trainer.nan_epoch + 1}; stopped, {kept} in {run_dir}. "
        "Lower training.learning_rate, check the inputs, or use mixed_precision=off."
    )


def _fit(cfg, run_dir, data, class_names, split, probe, policy, resuming, progress, started) -> Path:
    from covidct.models import get_spec

    t, m = cfg.training, cfg.model
    num_classes = len(class_names)
    input_names = tuple(get_spec(m.name).inputs)
    val_index = data.indices("val")

    def validate(model) -> dict:
        logits = predict_logits(model, data.images, val_index, t.batch_size, input_names)
        return validation_scores(data.labels[val_index], logits, t.loss, t.focal_gamma, t.focal_alpha)

    trainer = _Trainer(cfg, run_dir, validate, progress)
    trainer.model = build_configured_model(cfg, data.images, num_classes)
    trainer.input_names = input_names
    train_index = data.indices("train")
    class_weights = None
    if t.class_weight == "balanced":
        class_weights = balanced_class_weights(data.labels[train_index], num_classes)
    sequence_class, augmentation = SliceSequence, augmentation_factors(t, cfg.data.stage)
    if data.images.ndim == 5:  # volumes: 3D augmentation (covidct.train.volume_data)
        from covidct.train.volume_data import VolumeSequence, volume_augmentation

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
    )
    trainer.recalibration_batches = recalibration_source(cfg, data.images, train_index, input_names)
    loss = make_loss(t.loss, num_classes, gamma=t.focal_gamma, alpha=t.focal_alpha)
    _fit_phases(cfg, run_dir, trainer, loss, resuming, progress)

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
        **_backend_info(policy, cfg),
        "seconds": round(seconds, 1),
        "cache": data.cache_path,
        "split_counts": _split_counts(data, split, class_names),
        "shortcut_probe": probe,
    }
    if data.images.ndim == 5:
        run_info.update(task="volume", volume_shape=[int(s) for s in data.images.shape[1:4]])
    if trainer.nan_epoch is not None:
        run_info["status"] = "nan"
        write_json_atomic(run_dir / RUN_FILE, run_info)
        write_text_atomic(run_dir / "run_report.md", run_report(cfg, run_info, trainer.history))
        raise _nan_error(cfg, trainer, run_dir)
    run_info["status"] = "finished"
    write_json_atomic(run_dir / RUN_FILE, run_info)
    write_text_atomic(run_dir / "run_report.md", run_report(cfg, run_info, trainer.history))
    (run_dir / STATE_FILE).unlink(missing_ok=True)
    return run_dir


# ------------------------------------------------------------------------------------------------------
# task: segmentation
# ------------------------------------------------------------------------------------------------------

LUNG_INPUT_VARIANTS = {"none": ("none",), "masked": ("masked",), "auto": ("none", "masked")}


def _check_fold_arguments(cfg: RunConfig, run_dir: Path, fold, jobs) -> None:
    """Refuse bad ``fold`` / ``jobs`` arguments of a segmentation run before its folder is touched."""
    from covidct.config import check_task_settings

    check_task_settings(cfg, source=f"config of {run_dir}")
    if not _is_count(jobs) or jobs < 1:
        raise CovidctError(f"train(cfg, jobs={jobs!r}): jobs must be a positive integer (parallel fold processes).")
    if jobs > 1 and (not cfg.segmentation.folds or fold is not None):
        raise CovidctError(
            f"train(cfg, jobs={jobs}): parallel folds need a cross-validation (segmentation.folds >= 2) and no fold "
            f"argument (config of {run_dir}: segmentation.folds {cfg.segmentation.folds}, fold {fold})."
        )
    if fold is not None:
        folds = cfg.segmentation.folds
        if not folds:
            raise CovidctError(
                f"train(cfg, fold={fold}): the config of {run_dir} fits the dataset's test split "
                "(segmentation.folds 0); one fold can be fitted only in a cross-validation (segmentation.folds >= 2)."
            )
        if not _is_count(fold) or not 0 <= fold < folds:
            raise CovidctError(f"train(cfg, fold={fold!r}): fold must be an integer in 0..{folds - 1} "
                               f"(segmentation.folds {folds}).")


def _train_segmentation(
    cfg: RunConfig,
    run_dir: Path,
    resume: bool,
    overwrite: bool,
    pairs,
    progress: bool,
    fold: int | None = None,
    jobs: int = 1,
    folder=None,
) -> Path:
    """``train(cfg)`` for ``task: segmentation``: fit every split (and lung-input variant), write run.json.

    With ``fold``, fit that fold alone and return with the run unfinished; with ``jobs`` > 1, fit the folds
    in that many processes first (see ``train``).
    """
    from covidct.train import segmentation as seg

    if pairs is not None and isinstance(pairs, TrainingData):
        raise CovidctError(
            "train(cfg): task segmentation takes image/mask pairs (covidct.segment.data.SegmentationPairs), not "
            "TrainingData; pass data=load_pairs(...) or leave data=None to load data.dataset."
        )
    if fold is not None:
        if overwrite and run_status(run_dir) != "new":
            raise CovidctError(
                f"train(cfg, fold={fold}, overwrite=True) would delete the other folds in {run_dir}; delete the "
                "folder yourself before starting the folds, or fit without fold."
            )
        resume = True  # join the run that the other folds' processes share
    resuming = _prepare_run_dir(cfg, run_dir, resume, overwrite, folder)
    started = time.perf_counter()
    if pairs is None:
        pairs = seg.load_segmentation_pairs(cfg)
    seg.check_pairs(pairs, cfg)
    plans = seg.plan_splits(pairs, cfg)
    if not resuming:  # leftovers of a failed run in this folder must not pass for finished units
        # (one fold's process may clear only its own folder: the others may be training beside it)
        mine = [run_dir / plans[fold].name] if fold is not None else [*run_dir.glob("fold_*"), *run_dir.glob("input_*")]
        for leftover in mine:
            remove_run_output(leftover, run_dir)
        for name in (STATE_FILE, FIT_FILE):
            (run_dir / name).unlink(missing_ok=True)
    dump_config(cfg, run_dir / "config.yaml")
    write_json_atomic(run_dir / RUN_FILE, {"name": cfg.run_name, "task": "segmentation", "status": "running"})
    if fold is not None:
        plan = plans[fold]
        log.info("%s (%d/%d) alone: %d train, %d val, %d test", plan.name, fold + 1, len(plans), len(plan.train),
                 len(plan.val), len(plan.test))
        with _dtype_policy(cfg):
            _fit_segmentation_split(cfg, run_dir / plan.name, plan, pairs, resuming, progress)
        left = [p.name for p in plans if run_status(run_dir / p.name) != "finished"]
        log.info("%s of %s finished; %s", plan.name, run_dir,
                 f"not finished yet: {', '.join(left)}" if left else
                 "every fold is finished: call once more without fold (resume) to write run.json")
        return run_dir
    if jobs > 1:
        pending = [k for k, plan in enumerate(plans) if run_status(run_dir / plan.name) != "finished"]
        _fit_folds_in_processes(cfg, run_dir, pairs, pending, jobs)
        resuming = True  # every fold is finished now: the loop below reads their summaries
    with _dtype_policy(cfg) as policy:
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
            splits.append(_fit_segmentation_split(cfg, split_dir, plan, pairs, resuming, progress))
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
        **_backend_info(policy, cfg),
        "seconds": round(time.perf_counter() - started, 1),
    }
    if cfg.segmentation.folds:
        info["fold_results"] = splits
        info["fold_lung_input"] = [s["lung_input"] for s in splits]
    else:
        info.update(splits[0])
    write_json_atomic(run_dir / RUN_FILE, info)
    write_text_atomic(run_dir / "run_report.md", segmentation_run_report(info))
    return run_dir


def _model_module(name: str) -> str | None:
    """The module a new process must import to have model ``name`` registered: None for covidct's own models
    and for a script's (a spawned process runs the script's top level again); an error for a model registered in
    an interactive session (a notebook), which no new process can import."""
    import sys

    from covidct.models import get_spec

    builder = get_spec(name).builder
    module = getattr(getattr(builder, "func", builder), "__module__", None) or "__main__"  # functools.partial too
    if module == "covidct" or module.startswith("covidct."):
        return None
    if module in ("__main__", "__mp_main__"):
        if getattr(sys.modules.get("__main__"), "__file__", None):
            return None
        raise CovidctError(
            f"Model {name!r} is registered in this interactive session (a notebook or a shell): the new processes of "
            "train(cfg, jobs=N) cannot see it. Put its builder and the register_model call in a module (a .py file on "
            "the Python path) and import that module, or fit the folds with jobs=1."
        )
    return module


def _fold_process(cfg: RunConfig, run_dir: str, pairs, fold: int, module: str | None = None) -> str:
    """One fold of a segmentation CV in a fresh process (``train(cfg, jobs=...)``); its log goes to a file.
    ``module`` (``_model_module``) is imported first, so that a model registered outside covidct is known."""
    handler = logging.FileHandler(Path(run_dir) / f"fold_{fold}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    log.info("fold_%d in process %d", fold, os.getpid())
    try:
        if module:
            import importlib

            importlib.import_module(module)  # an ImportError fails this fold like any error (the caller names it)
        train(cfg, run_dir=run_dir, data=pairs, progress=False, fold=fold)
    finally:
        root.removeHandler(handler)
        handler.close()
    return run_status(Path(run_dir) / f"fold_{fold}")


def _fit_folds_in_processes(cfg: RunConfig, run_dir: Path, pairs, pending: list[int], jobs: int) -> None:
    """Fit the ``pending`` folds, ``jobs`` at a time, each in a new (spawned) process; wait for all of them.

    A failed fold does not stop the others (their work is kept); the first failure is raised at the end,
    naming the fold and its log. The new processes do not take a GPU's memory up front.
    """
    import multiprocessing
    import sys
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    if not pending:
        return
    module = _model_module(cfg.model.name)  # before any process starts
    log.info("fitting %s in %d process(es) at a time (logs: %s/fold_<k>.log)",
             ", ".join(f"fold_{k}" for k in pending), min(jobs, len(pending)), run_dir)
    saved = {name: os.environ.get(name) for name in ("XLA_PYTHON_CLIENT_PREALLOCATE", "TF_FORCE_GPU_ALLOW_GROWTH")}
    os.environ.update(XLA_PYTHON_CLIENT_PREALLOCATE="false", TF_FORCE_GPU_ALLOW_GROWTH="true")  # inherited
    failures = []
    try:
        # a fresh process per fold (Python >= 3.11): nothing of one fold's model or GPU memory outlives it
        fresh = {"max_tasks_per_child": 1} if sys.version_info >= (3, 11) else {}
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(jobs, len(pending)), mp_context=context, **fresh) as pool:
            running = {pool.submit(_fold_process, cfg, str(run_dir), pairs, k, module): k for k in pending}
            done_count = 0
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    k = running.pop(future)
                    done_count += 1
                    try:
                        status = future.result()
                    except Exception as error:  # a crashed process (BrokenProcessPool) or an error inside train()
                        failures.append((k, error))
                        log.error("fold_%d failed (%d/%d): %s", k, done_count, len(pending), error)
                        continue
                    log.info("fold_%d %s (%d/%d)", k, status, done_count, len(pending))
                    if status != "finished":
                        failures.append((k, CovidctError(f"fold_{k} ended {status}")))
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    if failures:
        k, error = failures[0]
        others = f" (and {len(failures) - 1} other fold(s))" if len(failures) > 1 else ""
        raise CovidctError(
            f"fold_{k} of {run_dir} failed{others}: {error}. Log: {run_dir / f'fold_{k}.log'}. The finished folds "
            "are kept; fix the cause and resume the run (resume=True / --resume)."
        ) from error


def _is_count(value) -> bool:
    """A plain integer (not a bool): what fold numbers and job counts must be."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _fold_lock(split_dir: Path):
    """Hold ``<run>/.<fold>.lock`` while this process fits the fold (``covidct.runs.run_lock``).

    Two processes fitting the same fold (``fold=k`` started twice, or a finishing call beside a running fold)
    would write the same files; the second stops with an error naming the owner instead. A lock left by a
    process of this host that no longer runs is taken over with a warning.
    """
    lock = split_dir.parent / f".{split_dir.name}.lock"
    return run_lock(lock, f"{split_dir.name} of {split_dir.parent}", doing="fitted")


def _fit_segmentation_split(
    cfg: RunConfig, split_dir: Path, plan, pairs, resuming: bool, progress: bool
) -> dict:
    """Fit one split (the test split, or one fold) with each lung-input variant; keep the best on validation.

    A fold is fitted under ``_fold_lock`` (one process per fold at a time).

    Returns:
        The split's summary (also ``split_dir/run.json`` for a fold): lung input chosen, its validation
        scores, best epoch, epochs run, sizes of the parts.
    """
    if plan.name and resuming and run_status(split_dir) == "finished":
        return json.loads((split_dir / RUN_FILE).read_text())
    with _fold_lock(split_dir) if plan.name else contextlib.nullcontext():
        return _fit_split_variants(cfg, split_dir, plan, pairs, resuming, progress)


def _fit_split_variants(cfg: RunConfig, split_dir: Path, plan, pairs, resuming: bool, progress: bool) -> dict:
    """``_fit_segmentation_split`` without its checks: fit each lung-input variant, keep the best."""
    from covidct.train import segmentation as seg

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
        fits.append(_fit_segmentation_unit(cfg, unit_dir, plan, pairs, variant, resuming, progress))
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


def _map_batches(t) -> dict:
    """Training-batch settings of the models with one output map per image (segmenters, restoration)."""
    from covidct.config import segmentation_augmentation

    return {
        "batch_size": t.batch_size,
        "shuffle": True,
        "seed": t.seed,
        "augmentation": segmentation_augmentation(t),
        "max_steps": t.max_steps_per_epoch,
        "drop_last": drop_last_batch(t.drop_last),
    }


def _fit_map_model(cfg: RunConfig, run_dir: Path, trainer: _Trainer, resuming: bool, progress: bool) -> None:
    """``_fit_phases`` for a model with one output map per image (loss ``training.loss`` on one channel).

    XLA compilation costs more than it saves for these small fully convolutional models on a CPU under
    TensorFlow (graph mode either way); JAX without jit runs op by op (0.65 s per batch of 8 on an H100).
    """
    jit = "auto" if gpu_available() or keras.backend.backend() != "tensorflow" else False
    _fit_phases(cfg, run_dir, trainer, make_loss(cfg.training.loss, 1), resuming, progress, jit_compile=jit)


def _fit_segmentation_unit(
    cfg: RunConfig, unit_dir: Path, plan, pairs, lung_input: str, resuming: bool, progress: bool
) -> dict:
    """Fit one segmenter on ``plan.train`` with ``lung_input`` images, selecting epochs on ``plan.val``."""
    from covidct.train import segmentation as seg

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

    trainer = _Trainer(cfg, unit_dir, validate, progress)
    trainer.model = build_segmentation_model(cfg, images.shape[1:3])
    trainer.input_names = ("image",)
    trainer.train_sequence = seg.MaskSequence(images, pairs.masks, plan.train, **_map_batches(t))
    trainer.recalibration_batches = recalibration_source(cfg, images, plan.train, ("image",))
    _fit_map_model(cfg, unit_dir, trainer, resume_here, progress)
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
        raise _nan_error(cfg, trainer, unit_dir)
    write_json_atomic(fit_file, fit)
    (unit_dir / STATE_FILE).unlink(missing_ok=True)
    return fit


# ------------------------------------------------------------------------------------------------------
# task: pretrain
# ------------------------------------------------------------------------------------------------------


def _train_pretrain(
    cfg: RunConfig, run_dir: Path, resume: bool, overwrite: bool, unlabeled, progress: bool, folder=None
) -> Path:
    """``train(cfg)`` for ``task: pretrain``: restoration of distorted unlabeled images (Models Genesis)."""
    from covidct.config import check_task_settings
    from covidct.train import restoration
    from covidct.train.segmentation import group_split

    check_task_settings(cfg, source=f"config of {run_dir}")
    if unlabeled is not None and not isinstance(unlabeled, restoration.UnlabeledImages):
        raise CovidctError(
            f"train(cfg): task pretrain takes unlabeled images (covidct.train.restoration.UnlabeledImages), got "
            f"{type(unlabeled).__name__}; leave data=None to read data.dataset."
        )
    from covidct.models import get_spec

    classifier = get_spec(cfg.model.name).task == "classification"
    resuming = _prepare_run_dir(cfg, run_dir, resume, overwrite, folder)
    started = time.perf_counter()
    t, s = cfg.training, cfg.segmentation
    seed_everything(t.seed)
    if unlabeled is None:
        unlabeled = restoration.load_unlabeled_images(cfg, progress=progress)
    images = np.asarray(unlabeled.images)
    if images.ndim != 4 or images.shape[1:3] != (cfg.data.size, cfg.data.size):
        raise CovidctError(
            f"data ({cfg.data.dataset}): pretraining images must be (N, {cfg.data.size}, {cfg.data.size}, C) "
            f"uint8, got {images.shape}."
        )
    if images.shape[-1] > 1 and not all(np.array_equal(images[..., 0], images[..., c]) for c in range(1, images.shape[-1])):
        raise CovidctError(
            f"data ({cfg.data.dataset}, stage {cfg.data.stage}): restoration pretraining distorts grey images; these "
            f"{images.shape[-1]} channels differ. Use a one-channel stage."
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
            "training and a validation part; add images or set segmentation.val_fraction: 0 with training.monitor: last."
        )
    dump_config(cfg, run_dir / "config.yaml")
    val_inputs, val_clean = restoration.fixed_validation_pairs(images, val_rows, cfg.pretrain, t.seed)

    def validate(model) -> dict:
        if not len(val_rows):
            return {}
        logits = predict_mask_logits(model, val_inputs, batch_size=t.batch_size)
        return {"val_loss": restoration.restoration_mse_numpy(val_clean, logits)}

    with _dtype_policy(cfg) as policy:
        trainer = _Trainer(cfg, run_dir, validate, progress)
        if classifier:  # the backbone with a decoder; its layers keep the classifier's names
            trainer.model = restoration.restoration_network(build_configured_model(cfg, images, num_classes=2))
        else:
            trainer.model = build_segmentation_model(cfg, images.shape[1:3])
        trainer.input_names = ("image",)
        trainer.train_sequence = restoration.RestorationSequence(images, train_rows, cfg.pretrain, **_map_batches(t))
        # BatchNorm statistics come from what the network is scored on: distorted inputs (fixed draws).
        rows = recalibration_rows(train_rows, t.bn_recalibration, t.seed)
        if len(rows):
            batches = restoration.RestorationSequence(
                images, rows, cfg.pretrain, batch_size=max(t.batch_size, 64), shuffle=False, seed=t.seed
            )
            trainer.recalibration_batches = lambda: (batches[i][0] for i in range(len(batches)))
        _fit_map_model(cfg, run_dir, trainer, resuming, progress)
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
        **_backend_info(policy, cfg),
        "seconds": round(time.perf_counter() - started, 1),
        "use": f"model.weights: {run_dir / MODEL_FILE} (same model.name, model.kwargs and input; copied layer by layer, "
        + ("the classifier's head stays random)" if classifier else "task: segmentation)"),
    }
    write_json_atomic(run_dir / RUN_FILE, info)
    write_text_atomic(run_dir / "run_report.md", pretrain_run_report(info))
    if trainer.nan_epoch is not None:
        raise _nan_error(cfg, trainer, run_dir)
    (run_dir / STATE_FILE).unlink(missing_ok=True)
    return run_dir


def pretrain_run_report(info: dict) -> str:
    """Markdown summary of a pretraining run: data, objective, selection, how to use the weights."""
    counts = info["split_counts"]
    score = info["best_score"]
    selection = (
        f"the checkpoint of epoch {info['best_epoch']} has the lowest validation restoration MSE ({score:.5f})"
        if isinstance(score, float) and math.isfinite(score)
        else "a fixed epoch budget (monitor last): the final epoch's weights are kept"
    )
    return "\n".join(
        [
            f"# Run {info['name']}",
            "",
            f"Status: **{info['status']}**. Self-supervised pretraining of `{info['model']}` "
            f"({info['model_kwargs']}) by {info['objective']} on `{info['dataset']}` (labels not read), "
            f"{info['size']} px, {info['input']}; backend {info['backend']} "
            f"(Keras {info['keras_version']}, {info['dtype_policy']}), {info['seconds']} s.",
            "",
            f"Images: {counts['train']['images']} training ({counts['train']['groups']} groups), "
            f"{counts['val']['images']} validation ({counts['val']['groups']} groups). Selection: {selection}. "
            "A restoration error is not a segmentation or diagnostic score.",
            "",
            f"Use: {info['use']}.",
            "",
        ]
    )


def segmentation_run_report(info: dict) -> str:
    """Markdown summary of a segmentation run: data, what selected, per-split results."""
    lines = [
        f"# Run {info['name']}",
        "",
        f"Status: **{info['status']}**. Segmenter `{info['model']}`, dataset `{info['dataset']}`, {info['size']} px; "
        f"backend {info['backend']} (Keras {info['keras_version']}, {info['dtype_policy']}), {info['seconds']} s.",
        "",
        (f"Checkpoints (and the lung input) were selected on the **validation** part by `{info['monitor']}`; "
         "this is a selection score, not a test score." if info["monitor"] != "last" else
         f"Selection: {info['selection']}.")
        + f" Reported split: {info['report_split']} "
        "(`covidct segment evaluate` writes per-image Dice, IoU and HD95 with bootstrap intervals).",
        "",
        "| split | lung input | best epoch | epochs run | "
        + (f"{info['monitor']} | train / val / test images |" if info["monitor"] != "last" else "selection score (none) | train / val / test images |"),
        "|---|---|---|---|---|---|",
    ]
    for row in info.get("fold_results") or [info]:
        counts = row["split_counts"]
        sizes = " / ".join(str(counts[p]["images"]) for p in ("train", "val", "test"))
        score = row["best_score"]
        score = f"{score:.4f}" if isinstance(score, float) and math.isfinite(score) else str(score)
        lines.append(
            f"| {row['split']} | {row['lung_input']} | {row['best_epoch']} | {row['epochs_run']} | {score} | {sizes} |"
        )
    lines += ["", f"Groups: {info['group_proxy']}.", ""]
    return "\n".join(lines)


def _split_counts(data: TrainingData, split: np.ndarray, class_names: list) -> dict:
    groups = data.groups
    counts = {}
    for name in ("train", "val", "test"):
        rows = split == name
        counts[name] = {
            "images": int(rows.sum()),
            "groups": int(len(set(groups[rows]))),
            **{c: int((data.labels[rows] == i).sum()) for i, c in enumerate(class_names)},
        }
    return counts


def run_report(cfg: RunConfig, info: dict, history: list[dict]) -> str:
    """Markdown summary of a training run (data, selection, shortcut probe, history)."""
    lines = [
        f"# Run {info['name']}",
        "",
        f"Status: **{info.get('status', '?')}**. Model `{info['model']}`, dataset `{info['dataset']}`, "
        + (
            f"volumes {'x'.join(map(str, info['volume_shape']))} (D x H x W)"
            if info.get("volume_shape")
            else f"stage `{info['stage']}`, {info['size']} px"
        )
        + f", classes {info['class_names']}.",
        f"Backend {info['backend']} (Keras {info['keras_version']}, {info['dtype_policy']}), "
        f"{info['epochs_run']} epoch(s) in {info['seconds']} s.",
        "",
        (
            f"`monitor: last`: a fixed budget; model.keras holds the final epoch ({info['best_epoch']}), "
            "nothing was selected on validation (its scores in history.csv are for reading only). "
            if info["monitor"] == "last"
            else f"The checkpoint was selected on the **validation** split by `{info['monitor']}`: best "
            f"{info['best_score']} at epoch {info['best_epoch']}. This is a selection score, not a test score; "
        )
        + "test numbers come from `covidct evaluate` on the test split.",
        "",
        "## Data",
        "",
        "| split | images | groups | " + " | ".join(info["class_names"]) + " |",
        "|---|---|---|" + "---|" * len(info["class_names"]),
    ]
    for name, row in info["split_counts"].items():
        lines.append(
            f"| {name} | {row['images']} | {row['groups']} | "
            + " | ".join(str(row[c]) for c in info["class_names"])
            + " |"
        )
    probe = info.get("shortcut_probe") or {}
    lines += ["", "## Shortcut probe (training split)", ""]
    if "auc" in probe:
        lines.append(
            f"Nuisance features alone (size, intensity statistics, format) predict the class with AUC {probe['auc']}."
        )
    lines.append(f"Status: {probe.get('status', '-')}.")
    if probe.get("warning"):
        lines.append(f"**Warning:** {probe['warning']}.")
    if history:
        frame = pd.DataFrame(history)
        lines += ["", "## History", "", markdown_table(frame)]
    lines += ["", "## Reproduce", "", "```", f"covidct train --config {info['name']}/config.yaml", "```", ""]
    return "\n".join(lines)


__all__ = ["train", "run_status", "enable_compilation_cache", "predict_logits", "set_backbone_trainable", "set_batch_norm_momentum"]
