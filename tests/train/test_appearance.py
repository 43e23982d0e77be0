"""Appearance augmentation layers (covidct.train.appearance) and the ``robust`` augmentation hook."""

from __future__ import annotations

import io
import math

import keras
import numpy as np
import pytest
from PIL import Image
from scipy import fft, ndimage

from covidct.config import TrainingConfig
from covidct.errors import CovidctError
from covidct.train.appearance import (
    RandomBlurSharpen,
    RandomContrastBrightness,
    RandomGamma,
    RandomGaussianNoise,
    RandomJPEG,
    dct_matrix,
    gaussian_blur,
    jpeg_compress,
    make_appearance_augmenter,
    resolve_appearance,
)
from covidct.train.augment import make_augmenter
from covidct.train.recipes import augmentation_factors


def lung_batch(n: int = 4, size: int = 32, seed: int = 0) -> np.ndarray:
    """Smooth random 'lungs' in [40, 220] inside a disk, exactly 0 outside."""
    rng = np.random.default_rng(seed)
    images = ndimage.gaussian_filter(rng.uniform(40, 220, size=(n, size, size)), sigma=(0, 1.5, 1.5))
    yy, xx = np.mgrid[:size, :size]
    disk = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.4 * size) ** 2
    return (images * disk)[..., None].astype("float32")


def run(layer, batch):
    return np.asarray(keras.ops.convert_to_numpy(layer(batch, training=True)), dtype="float64")


def test_dct_matrix_is_orthonormal_and_matches_scipy():
    d = dct_matrix(8)
    np.testing.assert_allclose(d @ d.T, np.eye(8), atol=1e-6)
    x = np.random.default_rng(0).normal(size=8)
    np.testing.assert_allclose(d @ x, fft.dct(x, norm="ortho"), atol=1e-5)


def test_gaussian_blur_matches_scipy():
    batch = lung_batch(2, 24)
    expected = ndimage.gaussian_filter(batch[..., 0].astype("float64"), sigma=(0, 1.2, 1.2), mode="mirror", truncate=3.0)
    got = np.asarray(keras.ops.convert_to_numpy(gaussian_blur(batch, 1.2)))[..., 0]
    np.testing.assert_allclose(got, expected, atol=0.02)


def test_jpeg_compress_matches_pil_and_quality_100_is_nearly_lossless():
    batch = lung_batch(2, 32, seed=1)
    batch[batch == 0] = 30.0  # a full image: PIL compresses the whole frame
    out = np.asarray(keras.ops.convert_to_numpy(jpeg_compress(batch, np.array([30.0, 75.0]))))
    for i, quality in enumerate((30, 75)):
        buffer = io.BytesIO()
        Image.fromarray(np.round(batch[i, ..., 0]).astype(np.uint8)).save(buffer, format="JPEG", quality=quality)
        reference = np.asarray(Image.open(buffer), dtype="float64")
        ours_vs_pil = np.abs(out[i, ..., 0] - reference).mean()
        pil_loss = np.abs(reference - np.round(batch[i, ..., 0])).mean()
        # libjpeg's integer DCT rounds differently; the compression loss itself is ~5-8 grey levels.
        assert pil_loss > 4
        assert ours_vs_pil < 0.2 * pil_loss
    lossless = np.asarray(keras.ops.convert_to_numpy(jpeg_compress(batch, np.array([100.0, 100.0]))))
    assert np.abs(lossless - np.round(batch)).max() <= 2.0
    odd = np.asarray(keras.ops.convert_to_numpy(jpeg_compress(batch[:, :30, :27], np.array([50.0, 50.0]))))
    assert odd.shape == (2, 30, 27, 1)


@pytest.mark.parametrize(
    "layer_class, kwargs",
    [
        (RandomBlurSharpen, {}),
        (RandomGaussianNoise, {}),
        (RandomGamma, {}),
        (RandomContrastBrightness, {}),
        (RandomJPEG, {}),
    ],
)
def test_layers_are_seeded_identity_at_inference_and_keep_the_background(layer_class, kwargs):
    batch = lung_batch()
    a, b = run(layer_class(seed=3, **kwargs), batch), run(layer_class(seed=3, **kwargs), batch)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, run(layer_class(seed=4, **kwargs), batch))
    assert not np.allclose(a, batch)
    assert (a[batch == 0] == 0).all()
    assert a.min() >= 0 and a.max() <= 255
    np.testing.assert_array_equal(np.asarray(layer_class(seed=3, **kwargs)(batch, training=False)), batch)


def test_gamma_applies_one_power_curve_per_image_within_the_range():
    batch = lung_batch()
    out = run(RandomGamma(max_log_gamma=math.log(1.5), seed=0), batch)
    inside = batch[..., 0] > 0
    for i in range(len(batch)):
        x, y = batch[i, ..., 0][inside[i]] / 255.0, out[i, ..., 0][inside[i]] / 255.0
        gammas = np.log(y) / np.log(x)
        assert gammas.std() < 1e-3
        assert 1 / 1.5 - 1e-3 <= gammas.mean() <= 1.5 + 1e-3


def test_contrast_is_an_affine_map_about_the_foreground_mean():
    batch = lung_batch()
    out = run(RandomContrastBrightness(contrast=0.3, brightness=10, seed=1), batch)
    for i in range(len(batch)):
        inside = batch[i, ..., 0] > 0
        x, y = batch[i, ..., 0][inside], out[i, ..., 0][inside]
        slope, intercept = np.polyfit(x, y, 1)
        np.testing.assert_allclose(y, slope * x + intercept, atol=1e-2)
        assert 0.7 - 1e-6 <= slope <= 1.3 + 1e-6
        # The mean moves only by the brightness shift.
        assert abs(y.mean() - x.mean()) <= 10 + 1e-3


def test_blur_sharpen_lies_on_the_line_through_the_image_and_its_blur():
    batch = lung_batch(n=6)
    layer = RandomBlurSharpen(sigma_fraction=1.5 / 32, max_blur=1.0, max_sharpen=1.0, seed=2, keep_background=False)
    out = run(layer, batch)
    blurred = np.asarray(keras.ops.convert_to_numpy(gaussian_blur(batch, 1.5)), dtype="float64")
    amounts = []
    for i in range(len(batch)):
        direction = (blurred[i] - batch[i]).ravel()
        unclipped = (out[i] > 0) & (out[i] < 255)
        amount = np.dot((out[i] - batch[i]).ravel()[unclipped.ravel()], direction[unclipped.ravel()]) / np.dot(
            direction[unclipped.ravel()], direction[unclipped.ravel()]
        )
        np.testing.assert_allclose(out[i][unclipped], (batch[i] + amount * (blurred[i] - batch[i]))[unclipped], atol=1e-2)
        amounts.append(amount)
    assert all(-1 - 1e-4 <= a <= 1 + 1e-4 for a in amounts)


def test_noise_has_zero_mean_and_bounded_std():
    batch = np.full((3, 64, 64, 1), 128.0, dtype="float32")
    out = run(RandomGaussianNoise(max_std=6.0, seed=0), batch)
    residual = (out - batch).reshape(3, -1)
    assert (residual.std(axis=1) <= 6.0 * 1.05).all()
    assert np.abs(residual.mean(axis=1)).max() < 0.5


def test_probability_zero_is_identity():
    batch = lung_batch()
    np.testing.assert_allclose(run(RandomGamma(probability=0.0, seed=0), batch), batch)
    with pytest.raises(CovidctError, match="probability"):
        RandomGamma(probability=1.5)


def test_resolve_appearance_presets_overrides_and_errors():
    resolved = resolve_appearance({"preset": "robust", "jpeg": False, "noise": {"max_std": 2.0}})
    assert "jpeg" not in resolved and resolved["noise"]["max_std"] == 2.0 and "gamma" in resolved
    assert resolve_appearance("none") == {}
    with pytest.raises(CovidctError, match="Did you mean"):
        resolve_appearance("robst")
    with pytest.raises(CovidctError, match="Did you mean"):
        resolve_appearance({"gama": True})
    augmenter = make_appearance_augmenter("light", seed=0)
    assert [layer.name for layer in augmenter.layers] == ["aug_blur_sharpen", "aug_noise", "aug_gamma", "aug_contrast", "aug_jpeg"]


def test_training_augmentation_robust_reaches_the_augmenter():
    factors = augmentation_factors(TrainingConfig(augmentation="robust"), "lungs-robust")
    assert factors["appearance"] == "robust" and factors["rotation"] > 0
    augmenter = make_augmenter(factors, seed=5)
    names = [layer.name for layer in augmenter.layers]
    assert names[0] == "aug_flip" and "aug_jpeg" in names and "aug_gamma" in names
    batch = lung_batch()
    first = np.asarray(keras.ops.convert_to_numpy(augmenter(batch, training=True)))
    second = np.asarray(keras.ops.convert_to_numpy(make_augmenter(factors, seed=5)(batch, training=True)))
    np.testing.assert_array_equal(first, second)
    custom = augmentation_factors(TrainingConfig(augmentation={"rotation": 0.1, "appearance": {"gamma": True}}), "lungs")
    assert [layer.name for layer in make_augmenter(custom).layers][-1] == "aug_gamma"
    with pytest.raises(CovidctError, match="Did you mean"):
        augmentation_factors(TrainingConfig(augmentation={"appearence": "robust"}), "lungs")


@pytest.mark.jax
def test_robust_augmenter_runs_on_jax():
    assert keras.backend.backend() == "jax"
    augmenter = make_appearance_augmenter("robust", seed=1)
    batch = lung_batch()
    out = np.asarray(augmenter(batch, training=True))
    again = np.asarray(make_appearance_augmenter("robust", seed=1)(batch, training=True))
    np.testing.assert_array_equal(out, again)
    assert (out[batch == 0] == 0).all() and out.shape == batch.shape
