"""The recipe cross-validation of ``covidct.experiments`` (``covidct cv``): its rule on hand-made out-of-fold
scores, and the protocol end to end on phantoms."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from covidct.errors import CovidctError
from covidct.experiments import cli, folds, oof, rounds, selection
from covidct.experiments import cv as cv_module


@pytest.fixture(scope="module")
def cv():
    """The protocol's functions under one name, as the tests call them."""
    return SimpleNamespace(
        choose=selection.choose, versus_base=selection.versus_base, MIN_GAIN=rounds.MIN_GAIN,
        CANDIDATES=rounds.CANDIDATES, ROUNDS=rounds.ROUNDS, EVALUATION_ONLY=rounds.EVALUATION_ONLY,
        out_of_fold=oof.out_of_fold, parse_args=cli.parse_args, main=cli.main, run_cv=cv_module.run_cv,
        candidate_config=folds.candidate_config, non_test_data=folds.non_test_data, bundle_stem=folds.bundle_stem,
        subsample_groups=folds.subsample_groups, fold_data=folds.fold_data,
    )


def _scores(f1, auc):
    return {"oof_macro_f1": f1, "oof_auc": auc}


def test_a_gain_below_min_gain_keeps_base(cv):
    choice = cv.choose({"base": _scores(0.930, 0.98), "e24": _scores(0.930 + cv.MIN_GAIN / 2, 0.99)})
    assert choice["best_by_oof_macro_f1"] == "e24" and choice["chosen"] == "base" and choice["overrides"] == []


def test_the_best_candidate_replaces_base_at_min_gain(cv):
    choice = cv.choose({"base": _scores(0.90, 0.98), "aug": _scores(0.92, 0.97), "e24": _scores(0.95, 0.96)})
    assert choice["chosen"] == "e24" and choice["gain_over_base"] == pytest.approx(0.05)
    assert choice["overrides"] == cv.CANDIDATES["e24"]


def test_equal_macro_f1_is_broken_by_auc(cv):
    choice = cv.choose({"base": _scores(0.90, 0.95), "aug": _scores(0.93, 0.97), "e24": _scores(0.93, 0.99)})
    assert choice["best_by_oof_macro_f1"] == "e24"


def test_out_of_fold_refuses_a_slice_predicted_twice(cv, tmp_path):
    for k in range(2):
        (tmp_path / f"f{k}").mkdir()
        pd.DataFrame({"path": ["a.png", f"b{k}.png"], "group": ["g", "h"], "label": ["COV", "NonCOV"],
                      "prob_COV": [0.9, 0.1]}).to_csv(tmp_path / f"f{k}" / "predictions_val.csv", index=False)
    with pytest.raises(CovidctError, match="repeated slices"):
        cv.out_of_fold([tmp_path / "f0", tmp_path / "f1"])


def test_versus_base_scores_the_hand_computed_difference(cv):
    """4 slices in 4 groups: base gets one NonCOV slice wrong (macro-F1 = (0.8 + 0.667) / 2 = 0.733), the
    candidate gets all right (1.0): +0.267 on all rows, never negative in a replicate; AUC 3/4 -> 1."""
    paths = [f"{i}.png" for i in range(4)]
    labels = ["COV", "COV", "NonCOV", "NonCOV"]
    base = pd.DataFrame({"path": paths, "group": list("abcd"), "label": labels, "prob_COV": [0.9, 0.8, 0.85, 0.2]})
    other = base.assign(prob_COV=[0.9, 0.8, 0.3, 0.2])
    diff = cv.versus_base(base, other, n_bootstrap=60)
    expected = 1.0 - (0.8 + 2 / 3) / 2
    assert diff["macro_f1"]["value"] == pytest.approx(expected)
    assert diff["macro_f1"]["low"] >= 0.0
    assert diff["auc"]["value"] == pytest.approx(1.0 - 0.75)
    assert np.isfinite(diff["macro_f1"]["share_b_better"])


def test_cross_validation_never_sees_a_test_row_and_predicts_every_other_row_once(cv, tmp_path):
    """End to end on phantoms (2 candidates x 2 folds, 2-3 epochs): the out-of-fold table holds exactly the
    non-test rows of the configured split, each once, and the JSON records the rule's choice."""
    from covidct.config import load_config
    from covidct.data.datasets import load_dataset
    from covidct.data.splits import assign_splits
    from covidct.train.data import apply_label_map

    out = tmp_path / "cv.json"
    args = cv.parse_args(["--smoke", "--candidates", "base", "e24", "--folds", "2", "--runs-root", str(tmp_path / "runs"),
                          "--cache-root", str(tmp_path / "cache"), "--out", str(out)])
    results = cv.run_cv(args)
    cfg = cv.candidate_config("base", 0, args)
    d = cfg.data
    manifest = apply_label_map(load_dataset(d.dataset, root=d.root, **dict(d.options)), d.label_map)
    manifest = assign_splits(manifest, fractions=tuple(d.split_fractions), seed=d.seed)
    non_test = set(manifest.loc[manifest["split"] != "test", "path"].astype(str))
    table = cv.out_of_fold([Path(d) for d in results["candidates"]["base"]["run_dirs"]])
    assert set(table["path"].astype(str)) == non_test and len(table) == len(non_test)
    assert results["non_test_slices"] == len(non_test) and sum(f["slices"] for f in results["candidates"]["e24"]["folds"]) == len(non_test)
    assert load_config(Path(results["candidates"]["e24"]["run_dirs"][0]) / "config.yaml").training.validation_freq == 3
    saved = json.loads(out.read_text())
    assert saved["choice"]["chosen"] in ("base", "e24") and saved["choice"]["rule"].endswith("else base")


def test_rounds_name_known_candidates_and_evaluation_only_ones_share_their_training(cv):
    for round_name, (base, names) in cv.ROUNDS.items():
        assert base in names and set(names) <= set(cv.CANDIDATES), round_name
    for name, source in cv.EVALUATION_ONLY.items():
        extra = [o for o in cv.CANDIDATES[name] if o not in cv.CANDIDATES[source]]
        assert extra and all(o.startswith("evaluation.") for o in extra)
        assert all(o in cv.CANDIDATES[name] for o in cv.CANDIDATES[source])


def test_the_rule_compares_with_the_round_base(cv):
    scores = {"aug-e24": _scores(0.868, 0.918), "aug-e24-s192": _scores(0.872, 0.919), "aug-e24-wide": _scores(0.866, 0.92)}
    kept = cv.choose(scores, "aug-e24")
    assert kept["chosen"] == "aug-e24" and kept["best_by_oof_macro_f1"] == "aug-e24-s192"
    assert kept["gain_over_base"] == pytest.approx(0.004) and kept["rule"].endswith("else aug-e24")
    scores["aug-e24-wide"] = _scores(0.880, 0.90)
    assert cv.choose(scores, "aug-e24")["chosen"] == "aug-e24-wide"


def test_exported_workers_and_score_only_pass_with_mirror_tta(cv, tmp_path):
    """The GPU flow on phantoms: --export-data writes only non-test rows (the same arrays a normal run
    reads); --train-only workers fill in folds; --score-only scores only candidates whose folds all
    finished; the evaluation-only candidate reuses its source's fold models and its probabilities are the
    mean of the model's on each image and its mirror image (computed here with Keras directly)."""
    import keras

    from covidct.data.splits import grouped_kfold

    common = ["--smoke", "--round", "capacity", "--folds", "2", "--runs-root", str(tmp_path / "runs"),
              "--cache-root", str(tmp_path / "cache")]
    own = cv.non_test_data(cv.parse_args(common), "aug-e24")
    assert cv.main(common + ["--export-data", str(tmp_path / "bundle")]) == 0
    stem = cv.bundle_stem(tmp_path / "bundle", "lungs-robust", 32)
    assert {p.name for p in (tmp_path / "bundle").iterdir()} == {
        f"nontest-lungs-robust-{s}.{e}" for s in (32, 48) for e in ("npz", "csv")}
    with np.load(f"{stem}.npz") as saved:
        np.testing.assert_array_equal(saved["images"], np.asarray(own.images))
    assert not (pd.read_csv(f"{stem}.csv")["split"] == "test").any()

    run = common + ["--data-dir", str(tmp_path / "bundle"), "--candidates", "aug-e24", "aug-e24-tta"]
    assert cv.main(run + ["--train-only", "--fold", "0"]) == 0
    partial = cv.run_cv(cv.parse_args(run + ["--score-only"]))
    assert set(partial["unfinished"]) == {"aug-e24", "aug-e24-tta"} and "choice" not in partial
    assert cv.main(run + ["--train-only", "--fold", "1"]) == 0
    results = cv.run_cv(cv.parse_args(run + ["--score-only", "--out", str(tmp_path / "cv.json")]))
    assert results["unfinished"] == {} and results["choice"]["base"] == "aug-e24"

    data = cv.non_test_data(cv.parse_args(run), "aug-e24")
    held_out = grouped_kfold(data.manifest, k=2, seed=0)[1][1]
    source_dir, tta_dir = (Path(results["candidates"][n]["run_dirs"][1]) for n in ("aug-e24", "aug-e24-tta"))
    assert (tta_dir / "model.keras").read_bytes() == (source_dir / "model.keras").read_bytes()
    model = keras.saving.load_model(source_dir / "model.keras", compile=False)
    x = np.asarray(data.images[held_out], dtype="float32")
    probs = (keras.ops.convert_to_numpy(keras.ops.softmax(model(x, training=False)))
             + keras.ops.convert_to_numpy(keras.ops.softmax(model(x[:, :, ::-1], training=False)))) / 2
    expected = pd.Series(probs[:, data.class_names.index("COV")], index=data.manifest["path"].iloc[held_out].to_numpy())
    saved = pd.read_csv(tta_dir / "predictions_val.csv").set_index("path")["prob_COV"]
    np.testing.assert_allclose(saved.loc[expected.index].to_numpy(), expected.to_numpy(), atol=1e-5)
    plain = pd.read_csv(source_dir / "predictions_val.csv").set_index("path")["prob_COV"]
    assert not np.allclose(plain.loc[expected.index].to_numpy(), expected.to_numpy(), atol=1e-5)


def test_subsample_groups_keeps_whole_groups_and_about_the_fraction_of_each_class(cv):
    """10 COV groups of 3 rows and 10 NonCOV groups of 5 rows: at 0.8 exactly 8 groups of each class are kept
    (24 of 30 and 40 of 50 rows), whole; the draw is fixed by the seed and changes with it."""
    rows = [{"group": f"c{g}", "label": "COV"} for g in range(10) for _ in range(3)]
    rows += [{"group": f"n{g}", "label": "NonCOV"} for g in range(10) for _ in range(5)]
    manifest = pd.DataFrame(rows)
    kept = cv.subsample_groups(manifest, 0.8, seed=0)
    picked = manifest.iloc[kept]
    assert picked["label"].value_counts().to_dict() == {"NonCOV": 40, "COV": 24}
    assert picked["group"].nunique() == 16
    assert (picked.groupby("group").size() == manifest[manifest["group"].isin(picked["group"])].groupby("group").size()).all()
    np.testing.assert_array_equal(kept, cv.subsample_groups(manifest, 0.8, seed=0))
    assert set(picked["group"]) != set(manifest.iloc[cv.subsample_groups(manifest, 0.8, seed=1)]["group"])
    assert len(cv.subsample_groups(manifest, 1.0, seed=0)) == len(manifest)
    with pytest.raises(ValueError, match="fraction"):
        cv.subsample_groups(manifest, 0.0, seed=0)


def test_a_subsampled_fold_keeps_its_held_out_rows(cv):
    from covidct.train.data import phantom_slice_data

    data = phantom_slice_data(60, 32, seed=0)
    held_out = np.arange(0, 60, 4)
    full, part = cv.fold_data(data, held_out), cv.fold_data(data, held_out, 0.5, seed=0)
    assert (full.manifest["split"] == "val").sum() == (part.manifest["split"] == "val").sum() == len(held_out)
    assert set(part.manifest.loc[part.manifest["split"] == "val", "path"]) == set(data.manifest["path"].iloc[held_out])
    n_train = (part.manifest["split"] == "train").sum()
    assert 0.4 * 45 <= n_train < 45 and len(part.images) == len(part.manifest)
