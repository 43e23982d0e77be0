"""Feature baselines: frozen CNN features → scikit-learn classifiers, same evaluator (as in the transfer-learning study
"Covid Classification and Opacification using Transfer Learning").

Any registered classifier serves as a frozen feature extractor: its output just before the ``logits``
layer (for ImageNet backbones with ``weights="imagenet"`` that is the pooled ImageNet feature, with the
model's own ``preprocess_input`` inside the network). A classical classifier (SVM, random forest,
logistic regression, k-NN or a small MLP) is fitted on the training split and scored on the test split
by the same metric code as every other run, with group-bootstrap CIs. Hyperparameters are fixed (no
selection on test); the validation split is reported alongside as the selection-free check.

With ``select_c=True`` the regularisation strength ``C`` of ``lr`` and ``svm`` is chosen by grouped k-fold
cross-validation over the non-test rows (train + val; folds never split a group; the pooled out-of-fold
macro-F1 decides, ties to the smaller ``C``), and the classifier is refitted on all non-test rows with it;
the test split is touched once, after the choice. ``external`` datasets (e.g. COVID-CT-MD preprocessed with
the run's stage) are scored by the same fitted classifier, as ``predictions_external-<name>.csv`` and
``metrics_external-<name>.json``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from covidct.config import dump_config
from covidct.errors import CovidctError, unknown_name_error
from covidct.evaluate.evaluator import metrics_with_ci
from covidct.evaluate.metrics import compute_metrics
from covidct.models import get_spec
from covidct.models.inference import predict_logits
from covidct.runs import run_status, write_json_atomic, write_text_atomic
from covidct.train.build import build_configured_model
from covidct.train.data import check_training_splits, prepare_data

log = logging.getLogger(__name__)

CLASSIFIERS = ("svm", "rf", "lr", "knn", "mlp")
#: Classifiers with a regularisation strength C that ``select_c`` chooses.
TUNABLE = ("lr", "svm")
#: The C values grouped cross-validation chooses from (``select_c``).
C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)


def make_classifier(name: str, seed: int = 0, C: float = 1.0):
    """A scikit-learn pipeline (standardisation + classifier) with fixed, documented hyperparameters.

    Args:
        name: ``svm`` (RBF, C=1), ``rf`` (300 trees), ``lr`` (L2, C=1), ``knn`` (k=5) or ``mlp`` (one hidden
            layer of 128, early stopping).
        seed: random state.
        C: the inverse regularisation strength of ``svm`` and ``lr`` (ignored by the others).
    """
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    models = {
        "svm": lambda: SVC(C=C, kernel="rbf", probability=True, random_state=seed),
        "rf": lambda: RandomForestClassifier(n_estimators=300, random_state=seed, n_jobs=1),
        "lr": lambda: LogisticRegression(C=C, max_iter=3000),
        "knn": lambda: KNeighborsClassifier(n_neighbors=5),
        "mlp": lambda: MLPClassifier(
            hidden_layer_sizes=(128,), early_stopping=True, max_iter=500, random_state=seed
        ),
    }
    if name not in models:
        raise unknown_name_error("classifier", name, CLASSIFIERS)
    return make_pipeline(StandardScaler(), models[name]())


def feature_extractor(model, layer_name: str | None = None):
    """A Keras model that outputs the input of the ``logits`` layer (or of ``layer_name``'s output)."""
    import keras

    if layer_name is not None:
        output = model.get_layer(layer_name).output
    else:
        try:
            output = model.get_layer("logits").input
        except ValueError:
            output = model.layers[-1].input
    inputs = model.inputs if len(model.inputs) > 1 else model.inputs[0]
    return keras.Model(inputs, output, name=f"{model.name}_features")


def extract_features(
    model, images, indices, batch_size: int = 64, input_names: tuple = ("image",), layer_name=None
) -> np.ndarray:
    """Frozen features (N, F) of rows ``indices`` of a uint8 image array (flattened if not 1-D per image)."""
    extractor = feature_extractor(model, layer_name)
    features = predict_logits(extractor, images, indices, batch_size, input_names)
    return features.reshape(len(features), -1)


def select_c(classifier: str, features, labels, groups, folds: int = 4, grid=C_GRID, seed: int = 0) -> dict:
    """Choose ``C`` of ``classifier`` by grouped k-fold cross-validation (pooled out-of-fold macro-F1).

    Args:
        classifier: ``lr`` or ``svm``.
        features, labels, groups: the rows to cross-validate over (never the test split).
        folds: number of folds (``GroupKFold``: every group lies in exactly one fold).
        grid: the candidate C values.
        seed: the classifier's random state.

    Returns:
        ``{"C": chosen, "folds": k, "scores": [{"C", "oof_macro_f1", "oof_auc"}...], "rule": ...}``.

    Raises:
        CovidctError: fewer groups than folds, or a classifier without C.
    """
    from sklearn.model_selection import GroupKFold

    if classifier not in TUNABLE:
        raise CovidctError(f"Classifier {classifier!r} has no C to select; select_c applies to {', '.join(TUNABLE)}.")
    labels, groups = np.asarray(labels), np.asarray(groups).astype(str)
    if len(set(groups)) < folds:
        raise CovidctError(f"select_c: {len(set(groups))} group(s) cannot fill {folds} grouped folds; lower the folds.")
    n_classes = int(labels.max()) + 1
    scores = []
    for C in grid:
        oof = np.zeros((len(labels), n_classes))
        for fit_rows, held_rows in GroupKFold(n_splits=folds).split(features, labels, groups):
            fitted = make_classifier(classifier, seed=seed, C=C).fit(features[fit_rows], labels[fit_rows])
            oof[np.ix_(held_rows, fitted.classes_)] = fitted.predict_proba(features[held_rows])
        metrics = compute_metrics(labels, oof)
        scores.append({"C": float(C), "oof_macro_f1": metrics["macro_f1"], "oof_auc": metrics["auc_macro_ovr"]})
    best = max(scores, key=lambda row: (row["oof_macro_f1"], -row["C"]))
    return {
        "C": best["C"],
        "folds": int(folds),
        "scores": scores,
        "rule": "largest pooled out-of-fold macro-F1 (ties: smaller C), grouped folds over the non-test rows",
    }


def feature_run_dir(cfg, classifier: str, output_root: str | os.PathLike | None = None) -> Path:
    """The default folder of a feature baseline: ``<output_root>/features-<model>-<stage>-<classifier>``."""
    root = Path(output_root) if output_root is not None else Path(cfg.output_root)
    return root / f"features-{cfg.model.name}-{cfg.data.stage}-{classifier}"


def _refuse_existing(run_dir: Path) -> None:

    held = [name for name in RESULT_FILES if (run_dir / name).exists()]
    if held:
        finished = " a finished feature baseline" if run_status(run_dir) == "finished" else " results"
        raise CovidctError(
            f"{run_dir} holds{finished} ({', '.join(held)}); refusing to overwrite it. "
            "Pass overwrite=True (--overwrite) or choose another folder (--run-dir / --output-root)."
        )


RESULT_FILES = ("run.json", "metrics_test.json", "predictions_test.csv")


def run_feature_baselines(
    cfg,
    classifiers=("lr",),
    run_dirs=None,
    data=None,
    n_bootstrap: int | None = None,
    overwrite: bool = False,
    select_c: bool = False,
    cv_folds: int = 4,
    external: dict | None = None,
) -> list[dict]:
    """Fit several classifiers on one extraction of frozen ``cfg.model`` features; evaluate each like a run.

    Features are computed once; each classifier gets its own run folder with ``config.yaml``,
    ``predictions_test.csv``, ``metrics_test.json`` and ``run.json``. Every folder is checked before any
    work starts, so nothing is half-written when one of them already holds results.

    Args:
        cfg: RunConfig (data + the feature model, e.g. ``resnet50`` with ``weights: imagenet``).
        classifiers: names from ``CLASSIFIERS`` (duplicates are an error).
        run_dirs: one output folder per classifier (default ``feature_run_dir(cfg, classifier)``).
        data: TrainingData (default: built from ``cfg.data``).
        n_bootstrap: bootstrap replicates (default: the config's).
        overwrite: replace results already in those folders.
        select_c: choose C of ``lr`` / ``svm`` by grouped CV over the non-test rows and refit on them
            (the others keep their fixed hyperparameters and are fitted on train).
        cv_folds: folds of that cross-validation.
        external: ``{name: TrainingData}`` of other datasets, preprocessed like ``cfg`` and labelled with
            its classes, scored by each fitted classifier too.

    Returns:
        The test metrics dicts, in the order of ``classifiers`` (each also in its ``metrics_test.json``).

    Raises:
        CovidctError: unknown or repeated classifier, a folder that already holds results (without
            ``overwrite``), a class missing from train/val, or an empty test split.
    """
    import keras


    classifiers = list(classifiers)
    if not classifiers:
        raise CovidctError(f"Name at least one classifier ({', '.join(CLASSIFIERS)}).")
    if len(set(classifiers)) < len(classifiers):
        raise CovidctError(f"Classifiers {classifiers} repeat a name; each one gets its own run folder.")
    for name in classifiers:
        make_classifier(name)  # fail fast on an unknown name
    run_dirs = (
        [feature_run_dir(cfg, c) for c in classifiers] if run_dirs is None else [Path(d) for d in run_dirs]
    )
    if len(run_dirs) != len(classifiers) or len(set(run_dirs)) < len(run_dirs):
        raise CovidctError(
            f"Give one distinct run folder per classifier; got {len(run_dirs)} for {classifiers}."
        )
    if not overwrite:
        for run_dir in run_dirs:
            _refuse_existing(run_dir)
    keras.utils.set_random_seed(cfg.training.seed)
    data = data if data is not None else prepare_data(cfg)
    split = data.manifest["split"].astype(str).to_numpy()
    check_training_splits(data.labels, split, data.class_names, source=cfg.data.dataset)
    if not (split == "test").any():
        raise CovidctError(
            f"{cfg.data.dataset}: the 'test' split is empty, so there is nothing to report. Set "
            "data.split_fractions (e.g. [0.7, 0.15, 0.15])."
        )
    model = build_configured_model(cfg, data.images, len(data.class_names))
    inputs = tuple(get_spec(cfg.model.name).inputs)
    batch = max(1, cfg.training.batch_size)
    features = {
        s: extract_features(model, data.images, data.indices(s), batch, inputs)
        for s in ("train", "val", "test")
    }
    for name, other in (external or {}).items():
        features[f"external-{name}"] = extract_features(
            model, other.images, np.arange(len(other.labels)), batch, inputs
        )
    return [
        _fit_and_write(cfg, name, run_dir, data, features, n_bootstrap, select_c, cv_folds, external or {})
        for name, run_dir in zip(classifiers, run_dirs)
    ]


def _fit_and_write(
    cfg, classifier: str, run_dir: Path, data, features: dict, n_bootstrap, select=False, folds=4, external=None
) -> dict:

    train_rows, val_rows = data.indices("train"), data.indices("val")
    choice = None
    if select and classifier in TUNABLE:
        rows = np.concatenate([train_rows, val_rows])
        pool = np.concatenate([features["train"], features["val"]])
        choice = select_c(classifier, pool, data.labels[rows], data.groups[rows], folds, seed=cfg.training.seed)
        fitted = make_classifier(classifier, seed=cfg.training.seed, C=choice["C"]).fit(pool, data.labels[rows])
    else:
        fitted = make_classifier(classifier, seed=cfg.training.seed).fit(features["train"], data.labels[train_rows])

    def probabilities(part: str) -> np.ndarray:
        # Columns of predict_proba follow fitted.classes_; put them in class-index order.
        out = np.zeros((len(features[part]), len(data.class_names)))
        out[:, fitted.classes_] = fitted.predict_proba(features[part])
        return out

    e = cfg.evaluation
    n_bootstrap = e.n_bootstrap if n_bootstrap is None else int(n_bootstrap)
    name = run_dir.name
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, run_dir / "config.yaml")
    test_rows = data.indices("test")
    val_metrics = metrics_with_ci(
        data.labels[val_rows],
        probabilities("val"),
        None,
        data.class_names,
        0,
        e.ci,
        e.threshold,
        e.positive_class,
    )
    test_probs = probabilities("test")
    groups = data.groups[test_rows]
    select_flag = " --select-c" if choice else ""
    command = f"covidct features --config {run_dir}/config.yaml --classifier {classifier} --run-dir {run_dir}{select_flag} --overwrite"
    selection = {
        "split": "none",
        "monitor": f"fixed hyperparameters, {classifier} fitted on train",
        "note": "nothing was selected on validation or test; the validation scores are a check, test is reported",
        "score": val_metrics["macro_f1"],
    }
    if choice:
        selection = {
            "split": "grouped-cv",
            "monitor": f"C of {classifier} by {choice['folds']}-fold grouped CV over train + val, refitted on them",
            "note": "validation rows were part of the fit, so the validation scores below are not held out",
            "score": max(row["oof_macro_f1"] for row in choice["scores"]),
            "C": choice["C"],
            "cv": choice,
        }
    result = {
        "run": name,
        "run_dir": str(run_dir),
        "selection": selection,
        "evaluated_on": {
            "section": "internal",
            "split": "test",
            "dataset": cfg.data.dataset,
            "n_images": int(len(test_rows)),
            "n_groups": int(len(set(groups))),
            "is_selection_set": False,
        },
        "class_names": list(data.class_names),
        "feature_model": {
            "name": cfg.model.name,
            "weights": cfg.model.weights,
            "dimension": int(features["train"].shape[1]),
        },
        "classifier": classifier,
        "options": {"n_bootstrap": n_bootstrap, "threshold": e.threshold},
        "val_macro_f1": val_metrics["macro_f1"],
        "validation": {
            "role": "check (not used for selection)" if not choice else "fitted on (part of the CV pool)",
            "n_images": int(len(val_rows)),
            "macro_f1": val_metrics["macro_f1"],
            "auc_macro_ovr": val_metrics["auc_macro_ovr"],
        },
        "slice": metrics_with_ci(
            data.labels[test_rows],
            test_probs,
            groups,
            data.class_names,
            n_bootstrap,
            e.ci,
            e.threshold,
            e.positive_class,
        ),
        "command": command,
    }
    predictions = data.manifest.iloc[test_rows][["path", "group", "label"]].reset_index(drop=True)
    predictions["label_index"] = data.labels[test_rows]
    predictions["predicted"] = [data.class_names[i] for i in test_probs.argmax(axis=1)]
    for c, class_name in enumerate(data.class_names):
        predictions[f"prob_{class_name}"] = test_probs[:, c]
    write_text_atomic(run_dir / "predictions_test.csv", predictions.to_csv(index=False))
    write_json_atomic(run_dir / "metrics_test.json", result)
    for other_name, other in (external or {}).items():
        tag = f"external-{other_name}"
        probs = probabilities(tag)
        rows = other.manifest.reset_index(drop=True)
        table = rows[[c for c in ("path", "slice_index", "group", "label") if c in rows]].copy()
        table["label_index"] = other.labels
        table["predicted"] = [data.class_names[i] for i in probs.argmax(axis=1)]
        for c, class_name in enumerate(data.class_names):
            table[f"prob_{class_name}"] = probs[:, c]
        write_text_atomic(run_dir / f"predictions_{tag}.csv", table.to_csv(index=False))
        block = metrics_with_ci(other.labels, probs, other.groups, data.class_names, n_bootstrap, e.ci, e.threshold,
                                e.positive_class)
        write_json_atomic(run_dir / f"metrics_{tag}.json", {
            **{k: result[k] for k in ("run", "run_dir", "selection", "class_names", "feature_model", "classifier")},
            "evaluated_on": {"section": "external", "split": tag, "dataset": other_name, "n_images": int(len(probs)),
                             "n_groups": int(len(set(other.groups))), "is_selection_set": False},
            "slice": block,
        })
    write_json_atomic(
        run_dir / "run.json",
        {
            "status": "finished",
            "name": name,
            "model": f"{cfg.model.name}+{classifier}",
            "dataset": cfg.data.dataset,
            "stage": cfg.data.stage,
            "size": cfg.data.size,
            "class_names": list(data.class_names),
            "monitor": "none",
            "selection_split": "none",
            "task": "features",
            "command": command,
        },
    )
    return result


def run_feature_baseline(
    cfg,
    classifier: str = "lr",
    run_dir: str | os.PathLike | None = None,
    data=None,
    n_bootstrap: int | None = None,
    overwrite: bool = False,
    **options,
) -> dict:
    """Fit ``classifier`` on frozen features of ``cfg.model`` and evaluate it like any run.

    Args:
        cfg: RunConfig (data + the feature model, e.g. ``resnet50`` with ``weights: imagenet``).
        classifier: one of ``CLASSIFIERS``.
        run_dir: output folder (default ``<output_root>/features-<model>-<stage>-<classifier>``).
        data: TrainingData (default: built from ``cfg.data``).
        n_bootstrap: bootstrap replicates (default: the config's).
        overwrite: replace an existing folder.
        **options: ``select_c``, ``cv_folds``, ``external`` of :func:`run_feature_baselines`.

    Returns:
        The test metrics dict (also in ``metrics_test.json``; ``predictions_test.csv``, ``run.json``).
    """
    run_dirs = None if run_dir is None else [run_dir]
    return run_feature_baselines(cfg, [classifier], run_dirs, data, n_bootstrap, overwrite, **options)[0]


def format_feature_result(result: dict) -> str:
    """Lines for the command line: what was fitted, the validation check and the test metrics with CIs."""
    where, block = result["evaluated_on"], result["slice"]
    feature = result["feature_model"]
    lines = [
        f"{result['run']}: {feature['name']} features ({feature['dimension']}-d, weights {feature['weights'] or 'random init'}) "
        f"+ {result['classifier']} fitted on train, fixed hyperparameters (nothing selected on validation)",
        f"  validation (check, not selection): macro_f1 {result['validation']['macro_f1']:.3f}, "
        f"auc_macro_ovr {result['validation']['auc_macro_ovr']:.3f}",
        f"  test (reported; {where['n_images']} images, {where['n_groups']} groups), "
        f"{result['options']['n_bootstrap']} bootstrap replicates over groups:",
    ]
    for key in ("macro_f1", "auc_macro_ovr", "balanced_accuracy"):
        ci = block.get("ci", {}).get(key, {})
        low, high = ci.get("low"), ci.get("high")
        interval = f"  [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
        lines.append(f"    {key:<18} {block[key]:.3f}{interval}")
    lines.append(
        f"  written: {result['run_dir']}/metrics_test.json, predictions_test.csv, run.json, config.yaml"
    )
    return "\n".join(lines)
