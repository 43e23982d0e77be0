"""``evaluate_run``: the one evaluation path. Validation selects, test (or an external set) reports.

For a run folder it predicts one split of the run's own dataset (``section: internal``) or a whole
other dataset mapped onto the run's classes with a label map (``section: external``), then writes

* ``predictions_<tag>.csv``: one row per image (per volume for 3D models) with the class probabilities,
* ``metrics_<tag>.json``: every protocol metric with 95% bootstrap CIs over groups, calibration,
  patient-level aggregation, and a ``selection``/``evaluated_on`` block saying which set chose the
  checkpoint (always validation) and which set produced the numbers,
* ``figures/<tag>_*.png``: confusion matrices, ROC and PR curves, reliability diagram, training curves.

``<tag>`` is the split (``test``) or ``external-<dataset>``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from sklearn import metrics as skm

import covidct.evaluate.plots as plots
from covidct.config import EvaluationConfig, check_threshold
from covidct.data.cache import build_cache
from covidct.data.datasets import load_dataset
from covidct.errors import CovidctError, did_you_mean, unknown_name_error
from covidct.evaluate.aggregate import aggregate_groups
from covidct.evaluate.bootstrap import bootstrap_ci
from covidct.evaluate.calibration import expected_calibration_error, fit_temperature
from covidct.evaluate.metrics import (
    choose_threshold,
    compute_metrics,
    logits_to_probs,
    macro_auc,
    predict_labels,
    resolve_positive_index,
)
from covidct.evaluate.scores import is_scores_run, load_saved_scores, two_class_probabilities
from covidct.models.inference import predict_logits, split_inputs
from covidct.preprocess import get_stage
from covidct.runs import atomic_path, check_writable, write_json_atomic, write_text_atomic
from covidct.train.data import apply_label_map, data_from_arrays, parse_label_map, prepare_data
from covidct.train.run import load_run
from covidct.train.volume_data import external_volume_data, is_volume_model

log = logging.getLogger(__name__)

CI_METRICS = ("macro_f1", "auc_macro_ovr", "accuracy", "balanced_accuracy", "weighted_f1")


def _metric_functions(class_names, threshold, positive_index):
    def predictions(probs):
        return predict_labels(probs, threshold, positive_index if positive_index is not None else 1)

    def macro_f1(y, p):
        present = sorted(set(y.tolist()))
        return skm.f1_score(y, predictions(p), labels=present, average="macro", zero_division=0)

    def weighted_f1(y, p):
        return skm.f1_score(y, predictions(p), average="weighted", zero_division=0)

    def accuracy(y, p):
        return float(np.mean(predictions(p) == y))

    def balanced_accuracy(y, p):
        pred = predictions(p)
        return float(np.mean([np.mean(pred[y == c] == c) for c in sorted(set(y.tolist()))]))

    functions = {
        "macro_f1": macro_f1,
        "auc_macro_ovr": macro_auc,
        "accuracy": accuracy,
        "balanced_accuracy": balanced_accuracy,
        "weighted_f1": weighted_f1,
    }
    if len(class_names) == 2:
        pos = positive_index

        def sensitivity(y, p):
            pred = predictions(p)
            return float(np.mean(pred[y == pos] == pos)) if (y == pos).any() else float("nan")

        def specificity(y, p):
            pred = predictions(p)
            return float(np.mean(pred[y != pos] != pos)) if (y != pos).any() else float("nan")

        functions.update(sensitivity=sensitivity, specificity=specificity)
    return functions


def metrics_with_ci(y_true, probs, groups, class_names, n_bootstrap=1000, ci=0.95, threshold=None, positive_class=None, seed=0) -> dict:
    """``compute_metrics`` plus a ``ci`` block: bootstrap intervals over groups for the headline metrics.

    Args:
        y_true: (N,) labels.
        probs: (N, C) probabilities (or per-class scores).
        groups: (N,) group ids (None: every row is its own group, e.g. patient-level rows).
        class_names: C names.
        n_bootstrap: replicates (0: no intervals).
        ci: confidence level.
        threshold: binary decision threshold (None: argmax).
        positive_class: positive class for sensitivity/specificity.
        seed: bootstrap seed.
    """
    y_true = np.asarray(y_true).astype(int)
    result = compute_metrics(y_true, probs, class_names, threshold=threshold, positive_class=positive_class)
    if n_bootstrap:
        result["ci"] = {
            name: bootstrap_ci(fn, y_true, np.asarray(probs), groups=groups, n_bootstrap=n_bootstrap, ci=ci, seed=seed)
            for name, fn in metric_functions(class_names, threshold, positive_class).items()
        }
    return result


def metric_functions(class_names, threshold=None, positive_class=None) -> dict:
    """The headline metrics as functions ``fn(y_true, probs) -> float`` (what the bootstrap CIs resample):
    ``macro_f1``, ``auc_macro_ovr``, ``accuracy``, ``balanced_accuracy``, ``weighted_f1`` and, for two
    classes, ``sensitivity`` / ``specificity`` of ``positive_class``. For comparisons on resampled rows
    (``covidct.evaluate.bootstrap.paired_difference_ci``) with the evaluator's own definitions."""
    positive_index = resolve_positive_index(class_names, positive_class) if len(class_names) == 2 else None
    return _metric_functions(class_names, threshold, positive_index)


def _predict(loaded, images, rows, batch_size, tta: bool, mc_dropout: int):
    """Probabilities (N, C), logits (N, C) and optional MC-dropout std (N, C)."""
    model = loaded.model
    logits = predict_logits(model, images, rows, batch_size, loaded.input_names)
    probs = logits_to_probs(logits)
    if tta:
        flipped = predict_logits(model, images, rows, batch_size, loaded.input_names, flip=True)
        probs = (probs + logits_to_probs(flipped)) / 2.0
        # Temperature scaling works on logits; with TTA use the log of the averaged probabilities.
        logits = np.log(np.clip(probs, 1e-12, 1.0))
    std = None
    if mc_dropout:
        probs, std = mc_dropout_predict(model, images, rows, batch_size, loaded.input_names, mc_dropout)
    return probs, logits, std


def mc_dropout_predict(model, images, rows, batch_size, input_names, passes: int):
    """Monte-Carlo dropout: mean and std of the probabilities over ``passes`` stochastic passes.

    Dropout runs in training mode while BatchNormalization keeps its inference statistics (Keras 3 runs
    a non-trainable BatchNormalization layer in inference mode even when ``training=True``).
    """

    bn_layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [layer.trainable for layer in bn_layers]
    for layer in bn_layers:
        layer.trainable = False
    try:
        samples = []
        for _ in range(int(passes)):
            chunks = []
            for start in range(0, len(rows), batch_size):
                part = np.sort(rows[start : start + batch_size])
                order = np.argsort(np.argsort(rows[start : start + batch_size]))
                batch = np.asarray(images[part], dtype="float32")[order]
                out = model(split_inputs(batch, input_names), training=True)
                chunks.append(np.asarray(keras.ops.convert_to_numpy(out), dtype="float64"))
            samples.append(logits_to_probs(np.concatenate(chunks)))
    finally:
        for layer, value in zip(bn_layers, saved):
            layer.trainable = value
    stack = np.stack(samples)
    return stack.mean(axis=0), stack.std(axis=0)


def map_onto_classes(manifest: pd.DataFrame, label_map, dataset: str, class_names: list, what: str) -> pd.DataFrame:
    """``apply_label_map`` then refuse labels that are not classes of the run (``what``: how messages name the data)."""
    manifest = apply_label_map(manifest, label_map, source=dataset)
    unknown = sorted(set(manifest["label"].astype(str)) - set(class_names))
    if unknown:
        raise CovidctError(
            f"{what} {dataset!r}: label(s) {unknown} are not classes of the run {class_names}."
            f"{did_you_mean(unknown[0], class_names)} Pass a label map, e.g. "
            f"--label-map \"{unknown[0]}={class_names[0]}\"."
        )
    return manifest


def _external_data(loaded, dataset: str, root, label_map, progress: bool):
    """Load another dataset, map its labels onto the run's classes, preprocess it with the run's stage."""
    if is_volume_model(loaded.config.model.name):  # a 3D run: the external volumes at the run's shape
        return external_volume_data(loaded, dataset, root, label_map, progress)
    manifest = map_onto_classes(load_dataset(dataset, root=root), label_map, dataset, loaded.class_names, "External dataset")
    manifest = manifest.assign(split="test")
    cfg = loaded.config
    cache = build_cache(manifest, stage=get_stage(loaded.stage), size=loaded.size, cache_root=cfg.data.cache_root, progress=progress)
    return data_from_arrays(cache.images, cache.manifest.assign(split="test"), classes=loaded.class_names, cache_path=str(cache.path), source=dataset)


def run_task(run_dir) -> str:
    """The task recorded in a run folder's ``run.json`` (``""`` when absent or unreadable)."""
    try:
        return str(json.loads((Path(run_dir) / "run.json").read_text()).get("task") or "")
    except (OSError, ValueError):
        return ""


def evaluate_run(
    run_dir: str | os.PathLike,
    split: str = "test",
    dataset: str | None = None,
    root: str | None = None,
    label_map: dict | str | None = None,
    tta: bool | None = None,
    mc_dropout: int | None = None,
    temperature_scaling: bool | None = None,
    n_bootstrap: int | None = None,
    threshold: float | None = None,
    data=None,
    figures: bool = True,
    progress: bool = False,
) -> dict:
    """Evaluate a run folder on a split of its dataset or on an external dataset.

    Args:
        run_dir: the run folder (``model.keras``, ``config.yaml``, ``run.json``).
        split: ``"test"`` (default), ``"val"`` or ``"train"`` of the run's own dataset; a validation result
            is labelled as the selection set, never as a test score.
        dataset: an external dataset name (evaluated whole, with the run's stage and size).
        root: the external dataset's folder.
        label_map: ``{raw: run class}`` or ``"COVID-19=COV,CAP=non-COV"`` for the external labels.
        tta: average the prediction with its horizontal flip (default: the run's evaluation config).
        mc_dropout: Monte-Carlo-dropout passes (0: off).
        temperature_scaling: fit a temperature on the run's validation split and report calibrated scores.
        n_bootstrap: bootstrap replicates for the CIs.
        threshold: binary decision threshold on the positive-class probability, or ``"val"``: the threshold
            that maximises macro-F1 on the run's validation split, applied unchanged here (recorded under
            ``threshold`` in the result, with its validation score).
        data: TrainingData to use instead of the run's cache (tests, notebooks); for an external
            evaluation it is the external data.
        figures: save the figures under ``figures/``.
        progress: progress bars while building a cache.

    Returns:
        The metrics dict also written to ``metrics_<tag>.json``.
    """
    run_dir = Path(run_dir)
    if run_task(run_dir) == "segmentation":
        raise CovidctError(
            f"{run_dir} is a segmentation run: its per-image Dice/IoU/HD95 come from "
            "covidct.segment.evaluate.evaluate_segmentation (`covidct segment evaluate --run RUN`)."
        )
    if is_scores_run(run_dir):  # an evidence run: its probabilities are saved scores, nothing is predicted
        return _evaluate_saved_scores(run_dir, split, dataset, label_map, n_bootstrap, threshold, figures,
                                      refused={"data": data is not None, "tta": bool(tta), "mc_dropout": bool(mc_dropout),
                                               "temperature_scaling": bool(temperature_scaling)})
    loaded = load_run(run_dir)
    # Before anything is computed: results that cannot be written are not worth minutes of predictions.
    check_writable(run_dir)
    if (run_dir / "figures").is_dir():
        check_writable(run_dir / "figures")
    cfg = loaded.config
    e = cfg.evaluation
    tta = e.tta if tta is None else tta
    mc_dropout = e.mc_dropout if mc_dropout is None else int(mc_dropout)
    temperature_scaling = e.temperature_scaling if temperature_scaling is None else temperature_scaling
    n_bootstrap = e.n_bootstrap if n_bootstrap is None else int(n_bootstrap)
    threshold = check_threshold(e.threshold if threshold is None else threshold, f"evaluate_run({run_dir}): threshold")
    class_names = loaded.class_names
    label_map = parse_label_map(label_map)
    own_data = None

    if dataset is not None:
        section, tag = "external", f"external-{dataset}"
        eval_data = data if data is not None else _external_data(loaded, dataset, root, label_map, progress)
        rows = np.arange(len(eval_data.labels))
    else:
        if split not in ("train", "val", "test"):
            raise unknown_name_error("split", split, ("train", "val", "test"))
        section, tag = "internal", split
        eval_data = own_data = data if data is not None else prepare_data(cfg, progress=progress)
        if list(eval_data.class_names) != list(class_names):
            raise CovidctError(f"Run {run_dir}: the data's classes {eval_data.class_names} differ from the run's {class_names}.")
        rows = eval_data.indices(split)
    if len(rows) == 0:
        raise CovidctError(f"Run {run_dir}: the {tag!r} set has no images.")

    batch_size = max(1, int(cfg.training.batch_size))
    probs, logits, std = _predict(loaded, eval_data.images, rows, batch_size, tta, mc_dropout)
    validation_cache: dict = {}

    def validation_predictions():
        """(labels, logits) of the run's own validation split (predicted once, for threshold and temperature)."""
        nonlocal own_data
        if "logits" not in validation_cache:
            if own_data is None:
                own_data = prepare_data(cfg, progress=progress)
            val_rows = own_data.indices("val")
            if len(val_rows) == 0:
                raise CovidctError(f"Run {run_dir}: its validation split is empty; nothing to fit on.")
            _, validation_cache["logits"], _ = _predict(loaded, own_data.images, val_rows, batch_size, tta, 0)
            validation_cache["labels"] = own_data.labels[val_rows]
        return validation_cache["labels"], validation_cache["logits"]

    threshold_info = None
    if threshold == "val":
        threshold_info = _threshold_from_validation(run_dir, class_names, e.positive_class, validation_predictions)
        threshold = threshold_info["value"]
    y_true = eval_data.labels[rows]
    manifest = eval_data.manifest.iloc[rows].reset_index(drop=True)
    groups = manifest["group"].astype(str).to_numpy()

    result = {
        "run": cfg.run_name,
        "run_dir": str(run_dir),
        "selection": {
            # monitor: last keeps the final epoch of a fixed budget: no split selected anything
            "split": "none" if loaded.info.get("monitor", cfg.training.monitor) == "last" else "val",
            "monitor": loaded.info.get("monitor", cfg.training.monitor),
            "best_epoch": loaded.info.get("best_epoch"),
            "score": loaded.info.get("best_score"),
        },
        "evaluated_on": {
            "section": section,
            "split": tag,
            "dataset": dataset or cfg.data.dataset,
            "label_map": label_map,
            "n_images": int(len(rows)),
            "n_groups": int(len(set(groups))),
            "is_selection_set": section == "internal" and split == "val",
        },
        "class_names": class_names,
        "options": {"tta": bool(tta), "mc_dropout": int(mc_dropout), "n_bootstrap": n_bootstrap, "threshold": threshold},
    }
    if threshold_info is not None:
        result["threshold"] = threshold_info
    if section == "internal" and split == "val":
        result["warning"] = "These numbers come from the validation split that selected the checkpoint: they are optimistic and are not test scores."
    elif section == "internal" and split == "train":
        result["warning"] = "These numbers come from the training split: they measure fit, not generalisation."

    calibrated = None
    if temperature_scaling:
        try:
            val_labels, val_logits = validation_predictions()
        except Exception as error:  # External evaluation without the run's own data: say so.
            calibrated = {"status": f"skipped (validation data unavailable: {error})"}
        else:
            temperature = fit_temperature(val_labels, val_logits)
            calibrated_probs = logits_to_probs(logits, temperature)
            calibrated = {
                "fitted_on": "val",
                "temperature": temperature,
                "ece": expected_calibration_error(y_true, calibrated_probs),
                "auc_macro_ovr": macro_auc(y_true, calibrated_probs),
            }
    level = "volume" if np.ndim(eval_data.images) == 5 else "slice"
    return _score_and_write(run_dir, tag, result, y_true, probs, manifest, e, threshold, level=level, std=std,
                            temperature=calibrated, figures=figures)


def _score_and_write(run_dir: Path, tag: str, result: dict, y_true, probs, manifest: pd.DataFrame, e, threshold,
                     level: str = "slice", std=None, temperature: dict | None = None, figures: bool = True) -> dict:
    """The metrics, CIs, calibration, patient-level blocks, predictions CSV, figures and metrics JSON of one set
    (every run's evaluation ends here, whether its probabilities were predicted or read from saved scores)."""
    class_names = result["class_names"]
    n_bootstrap = result["options"]["n_bootstrap"]
    positive_class = e.positive_class
    groups = manifest["group"].astype(str).to_numpy()
    result["slice"] = metrics_with_ci(y_true, probs, groups, class_names, n_bootstrap, e.ci, threshold, positive_class)
    # A row is a slice, or a whole volume for 3D models: "slice" is the per-row block either way (one
    # reader for reports); volume runs also name it "volume" so a reader cannot mistake the unit.
    result["level"] = level
    if level == "volume":
        result["volume"] = result["slice"]
    result["calibration"] = {"ece": expected_calibration_error(y_true, probs), "n_bins": 15}
    if temperature is not None:
        result["temperature_scaling"] = temperature

    patient = {}
    if len(set(groups)) < len(groups):
        for method in e.aggregation:
            try:
                table = aggregate_groups(probs, groups, labels=y_true, method=method, k=e.topk)
            except CovidctError as error:
                patient[method] = {"status": f"skipped ({error})"}
                continue
            scores = table[[f"score_{c}" for c in range(len(class_names))]].to_numpy()
            patient[method] = metrics_with_ci(
                table["label"].to_numpy(), scores, None, class_names, n_bootstrap, e.ci, None, positive_class
            )
            patient[method]["n_groups"] = int(len(table))
    result["patient"] = patient

    predictions = manifest[[c for c in ("path", "group", "label", "source", "slice_index") if c in manifest]].copy()
    predictions["label_index"] = y_true
    positive_index = resolve_positive_index(class_names, positive_class) if len(class_names) == 2 else 1
    predictions["predicted"] = [class_names[i] for i in predict_labels(probs, threshold, positive_index)]
    for c, name in enumerate(class_names):
        predictions[f"prob_{name}"] = probs[:, c]
        if std is not None:
            predictions[f"std_{name}"] = std[:, c]
    write_text_atomic(run_dir / f"predictions_{tag}.csv", predictions.to_csv(index=False))
    if figures:
        result["figures"] = save_figures(run_dir, tag, y_true, probs, class_names, result["slice"]["confusion_matrix"])
    write_json_atomic(run_dir / f"metrics_{tag}.json", result)
    return result


def _evaluate_saved_scores(run_dir: Path, split, dataset, label_map, n_bootstrap, threshold, figures, refused) -> dict:
    """``evaluate_run`` of a run whose probabilities are saved scores (``covidct.evaluate.scores``)."""
    asked = sorted(name for name, value in refused.items() if value)
    if asked or threshold == "val":
        raise CovidctError(
            f"{run_dir} is an evidence run: its probabilities are saved scores (no model to predict with and no "
            f"validation predictions), so {asked or ['threshold val']} cannot apply; evaluate it without them."
        )
    check_writable(run_dir)
    if (run_dir / "figures").is_dir():
        check_writable(run_dir / "figures")
    saved = load_saved_scores(run_dir, split, dataset)
    class_names = saved.class_names
    e = EvaluationConfig(positive_class=saved.positive_class)
    n_bootstrap = e.n_bootstrap if n_bootstrap is None else int(n_bootstrap)
    threshold = check_threshold(threshold, f"evaluate_run({run_dir}): threshold")
    given = parse_label_map(label_map)
    label_map = given or saved.label_map
    # the probability travels with its row through the label map (rows mapped to "drop" leave together)
    manifest = map_onto_classes(saved.manifest.assign(probability=saved.positive_probability), label_map,
                                saved.dataset, class_names, "Dataset")
    if manifest.empty:
        raise CovidctError(f"Run {run_dir}: no rows of {saved.dataset!r} are left to score.")
    probs = two_class_probabilities(manifest.pop("probability").to_numpy(), class_names, saved.positive_class)
    y_true = np.array([class_names.index(label) for label in manifest["label"].astype(str)], dtype=int)
    section, tag = ("external", f"external-{dataset}") if dataset is not None else ("internal", split)
    groups = manifest["group"].astype(str)
    result = {
        "run": run_dir.name,
        "run_dir": str(run_dir),
        "selection": saved.selection,
        "evaluated_on": {
            "section": section,
            "split": tag,
            "dataset": saved.dataset,
            "label_map": label_map,
            "n_images": int(len(manifest)),
            "n_groups": int(groups.nunique()),
            "is_selection_set": False,
        },
        "class_names": class_names,
        "options": {"tta": False, "mc_dropout": 0, "n_bootstrap": n_bootstrap, "threshold": threshold},
        "scores": f"saved by `covidct evidence` (scores_{saved.dataset}.csv); nothing was predicted here",
        "command": saved.command + (f" --dataset {dataset}" if dataset else "") + (
            ' --label-map "' + ",".join(f"{k}={v}" for k, v in given.items()) + '"' if given else ""),
    }
    return _score_and_write(run_dir, tag, result, y_true, probs, manifest, e, threshold, figures=figures)


def _threshold_from_validation(run_dir, class_names, positive_class, validation_predictions) -> dict:
    """``choose_threshold`` on the run's validation split (two classes only), as recorded in the result."""
    if len(class_names) != 2:
        raise CovidctError(
            f"Run {run_dir}: threshold 'val' needs two classes (a threshold on one class's probability); "
            f"this run has {len(class_names)}: {class_names}. Use the argmax (no threshold)."
        )
    positive = resolve_positive_index(class_names, positive_class)
    labels, logits = validation_predictions()
    chosen = choose_threshold(np.asarray(labels) == positive, logits_to_probs(logits)[:, positive])
    return {
        "value": chosen["value"],
        "chosen_on": "val",
        "criterion": "macro-F1 on the validation split",
        "positive_class": class_names[positive],
        "val_macro_f1": chosen["score"],
        "val_macro_f1_at_0.5": chosen["score_at_0.5"],
        "n_val": int(len(labels)),
    }


def save_figures(run_dir: Path, tag: str, y_true, probs, class_names, confusion) -> list[str]:
    """Write the evaluation figures of one set (and the training curves) under ``run_dir/figures``."""
    folder = run_dir / "figures"
    folder.mkdir(exist_ok=True)
    figures = {
        f"{tag}_confusion_counts.png": plots.plot_confusion_matrix(confusion, class_names, title=f"{tag}: counts"),
        f"{tag}_confusion_normalised.png": plots.plot_confusion_matrix(confusion, class_names, normalize=True, title=f"{tag}: row-normalised"),
        f"{tag}_roc.png": plots.plot_roc_curves(y_true, probs, class_names, title=f"{tag}: ROC (one-vs-rest)"),
        f"{tag}_pr.png": plots.plot_pr_curves(y_true, probs, class_names, title=f"{tag}: precision-recall"),
        f"{tag}_reliability.png": plots.plot_reliability(y_true, probs, title=f"{tag}: reliability"),
    }
    history = run_dir / "history.csv"
    if history.is_file():
        figures["training_curves.png"] = plots.plot_training_curves(pd.read_csv(history))
    written = []
    for name, fig in figures.items():
        with atomic_path(folder / name, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=100)
        written.append(str(Path("figures") / name))
    return written
