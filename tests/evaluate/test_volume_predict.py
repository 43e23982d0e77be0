"""Slice-to-patient prediction on phantom volumes: lung slice selection, aggregation, plot, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from matplotlib.figure import Figure

from covidct.data.io import CTImage
from covidct.data.phantom import make_volume
from covidct.errors import CovidctError
from covidct.evaluate.volume_predict import (
    format_prediction,
    lung_fractions,
    plot_slice_probabilities,
    predict_volume,
    write_volume_prediction,
)

SHAPE = (20, 48, 48)


@pytest.fixture(scope="module")
def volumes():
    return {label: make_volume(label, shape=SHAPE, seed=7) for label in ("COV", "Normal")}


def _truth_fractions(volume) -> np.ndarray:
    return (volume.lung_labels > 0).mean(axis=(1, 2))


def test_lung_fractions_match_phantom_masks(volumes):
    volume = volumes["COV"]
    truth = _truth_fractions(volume)
    measured = lung_fractions(CTImage(volume.volume_hu, "HU"))
    assert measured.shape == (SHAPE[0],)
    assert np.abs(measured - truth).max() < 0.02
    assert measured[0] == 0 and measured[-1] == 0
    crude = lung_fractions(volume.volume_hu, criterion="air-fraction")
    assert np.mean((crude >= 0.02) == (truth >= 0.02)) >= 0.9
    with pytest.raises(CovidctError, match="Did you mean: lung-mask"):
        lung_fractions(volume.volume_hu, criterion="lung-masks")


def _by_slice_index(items):
    """A stand-in classifier: P(class 1) rises with the slice index; two classes."""
    p = np.array([item.meta["slice_index"] / SHAPE[0] for item in items])
    return np.stack([1 - p, p], axis=1)


def test_aggregations_by_hand(volumes):
    result = predict_volume(
        _by_slice_index, volumes["Normal"].volume_hu, class_names=["neg", "pos"], k=3, threshold=0.5
    )
    expected_slices = np.flatnonzero(lung_fractions(volumes["Normal"].volume_hu) >= 0.02)
    assert np.array_equal(result.slice_indices, expected_slices)
    assert 0 not in result.slice_indices and SHAPE[0] - 1 not in result.slice_indices
    p = expected_slices / SHAPE[0]
    assert result.scores["mean"][1] == pytest.approx(p.mean())
    assert result.scores["max"][1] == pytest.approx(p.max())
    assert result.scores["topk"][1] == pytest.approx(np.sort(p)[-3:].mean())
    assert result.scores["fraction"][1] == pytest.approx(np.mean(p >= 0.5))
    assert result.scores["mean"].sum() == pytest.approx(1.0)
    assert result.predicted_class == ("pos" if p.mean() > 0.5 else "neg")
    frame = result.to_frame()
    assert list(frame.columns) == ["slice_index", "lung_fraction", "prob_neg", "prob_pos"]
    assert result.summary().shape == (2, 4)
    assert "patient prediction (mean)" in format_prediction(result)


def test_lesion_slices_score_higher_for_cov(volumes):
    # A content-based stand-in: P(COV) = share of lung-window pixels in the ground-glass range.
    def ground_glass(items):
        p = np.array([np.mean((item.array > -600) & (item.array < -250)) * 10 for item in items]).clip(0, 1)
        return np.stack([p, 1 - p], axis=1)

    cov = predict_volume(ground_glass, volumes["COV"].volume_hu, class_names=["COV", "Normal"], method="max")
    normal = predict_volume(
        ground_glass, volumes["Normal"].volume_hu, class_names=["COV", "Normal"], method="max"
    )
    assert cov.scores["max"][0] > normal.scores["max"][0]
    lesion_slices = np.flatnonzero(volumes["COV"].lesion_masks.any(axis=(1, 2)))
    best = cov.slice_indices[np.argmax(cov.slice_probs[:, 0])]
    assert best in lesion_slices


def test_plot_and_files(volumes, tmp_path):
    result = predict_volume(_by_slice_index, volumes["Normal"].volume_hu, class_names=["neg", "pos"])
    figure = plot_slice_probabilities(result)
    assert isinstance(figure, Figure)
    axes = figure.axes[0]
    lines = [line for line in axes.get_lines() if line.get_label().startswith("P(")]
    assert [line.get_label() for line in lines] == ["P(neg)", "P(pos)"]
    assert np.array_equal(lines[1].get_xdata(), result.slice_indices)
    assert np.allclose(lines[1].get_ydata(), result.slice_probs[:, 1])
    with pytest.raises(CovidctError, match="Unknown class"):
        plot_slice_probabilities(result, classes=["maybe"])
    paths = write_volume_prediction(result, tmp_path)
    assert paths["plot"].stat().st_size > 1000 and paths["table"].is_file()
    with pytest.raises(CovidctError, match="already exist"):
        write_volume_prediction(result, tmp_path)


def test_errors():
    empty = np.full((6, 32, 32), -1000.0, dtype=np.float32)
    with pytest.raises(CovidctError, match="no slice shows lung"):
        predict_volume(_by_slice_index, empty)
    with pytest.raises(CovidctError, match="3-D"):
        predict_volume(_by_slice_index, np.zeros((32, 32)))
    with pytest.raises(CovidctError, match="Did you mean: topk"):
        predict_volume(_by_slice_index, empty, method="top-k")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """An untrained simple_cnn saved as a run folder (the layout covidct.train writes)."""
    import covidct.models  # noqa: F401
    from covidct.config import config_from_dict, dump_config
    from covidct.models import build_model

    run_dir = tmp_path_factory.mktemp("run")
    classes = ["COV", "Normal", "OtherPneumonia"]
    model = build_model("simple_cnn", input_shape=(32, 32, 1), num_classes=3)
    model.save(run_dir / "model.keras")
    cfg = config_from_dict(
        {
            "name": "tiny",
            "data": {"dataset": "phantom", "stage": "original", "size": 32},
            "model": {"name": "simple_cnn"},
        }
    )
    dump_config(cfg, run_dir / "config.yaml")
    (run_dir / "run.json").write_text(json.dumps({"class_names": classes, "stage": "original", "size": 32}))
    return run_dir


def test_cli_predict_volume(tiny_run, volumes, tmp_path, capsys):
    from covidct.cli import main
    from covidct.train.run import load_run, predict_images

    path = tmp_path / "scan.npy"
    np.save(path, np.rint(volumes["COV"].volume_hu).astype(np.int16))
    code = main(["predict-volume", "--run", str(tiny_run), str(path), "--out", str(tmp_path / "out")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "patient prediction (mean):" in printed
    assert (tmp_path / "out" / "scan_slice_probabilities.png").is_file()
    table = (tmp_path / "out" / "scan_slices.csv").read_text().splitlines()
    # The run's own preprocessing gives the same slice probabilities as predict_images on those slices.
    loaded = load_run(tiny_run)
    result = predict_volume(loaded, path)
    assert len(table) == 1 + len(result.slice_indices)
    direct = predict_images(loaded, [np.load(path)[k].astype(np.float32) for k in result.slice_indices])
    assert np.allclose(result.slice_probs, direct, atol=1e-5)
    assert result.predicted_class in printed
    assert main(["predict-volume", "--run", str(tiny_run), str(path), "--out", str(tmp_path / "out")]) == 2


@pytest.mark.realdata
def test_covid_ct_md_volume_orientation_and_lung_slices(data_root):
    from covidct.data.volumes import load_volume, preprocess_volume

    path = data_root / "covid-ct-md-sample" / "COVID-19" / "P001.nii.gz"
    volume = load_volume(path)
    # volumes.csv: 148 slices of 224 x 224, 1.7098 mm pixels, 2 mm slices; stored as uint8 display values.
    assert volume.array.shape == (148, 224, 224) and volume.unit == "display"
    assert volume.spacing == pytest.approx((2.0, 1.7098, 1.7098), abs=1e-3)
    # Inferior first: slice 5 is upper abdomen, with the liver (bright) on the image left = patient right.
    abdomen = volume.array[5]
    assert abdomen[:, :100].mean() > abdomen[:, 124:].mean()
    fractions = lung_fractions(volume)
    assert fractions[74] > 0.2 and fractions[-1] < 0.01 and fractions[5] < 0.05
    assert 0.5 < np.mean(fractions >= 0.02) < 0.95
    model_input = preprocess_volume(path, (32, 64, 64))
    assert model_input.shape == (32, 64, 64) and model_input.dtype == np.uint8
