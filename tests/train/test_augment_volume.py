"""3D batch augmentation: exact flips and quarter turns, bounded intensity changes, seeds."""

from __future__ import annotations

import numpy as np
import pytest

from covidct.errors import CovidctError
from covidct.train.augment_volume import VolumeAugmenter, augment_volumes, rotate_inplane


def _batch(n: int = 8, shape=(4, 9, 9), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(60, 200, size=(n, *shape, 1), dtype=np.uint8)


def test_identity_when_everything_is_off():
    batch = _batch()
    out = augment_volumes(batch, 0, rotation_deg=0, flip_lr=False, intensity_shift=0, intensity_scale=0)
    assert out.dtype == np.float32 and out.shape == batch.shape
    assert np.array_equal(out, batch.astype(np.float32))


def test_quarter_turn_is_exact_and_counter_clockwise():
    volume = np.random.default_rng(1).random((3, 7, 7)).astype(np.float32)
    assert np.allclose(rotate_inplane(volume, 90), np.rot90(volume, 1, axes=(1, 2)), atol=1e-5)
    channels = np.random.default_rng(2).random((3, 8, 8, 2)).astype(np.float32)
    assert np.allclose(rotate_inplane(channels, -90), np.rot90(channels, -1, axes=(1, 2)), atol=1e-5)
    # Small rotations keep a centred blob's mass and move corners only.
    blob = np.zeros((2, 33, 33), dtype=np.float32)
    blob[:, 12:21, 12:21] = 100.0
    turned = rotate_inplane(blob, 10)
    assert turned.sum() == pytest.approx(blob.sum(), rel=0.02)
    assert turned[:, 16, 16].tolist() == [100.0, 100.0]


def test_flips_are_left_right_only_by_default():
    batch = _batch(n=16)
    out = augment_volumes(batch, 3, rotation_deg=0, intensity_shift=0, intensity_scale=0)
    flipped = 0
    for original, augmented in zip(batch.astype(np.float32), out):
        if np.array_equal(augmented, original):
            continue
        assert np.array_equal(augmented, original[:, :, ::-1]), "only W (left-right) flips expected"
        flipped += 1
    assert 3 <= flipped <= 13
    all_axes = augment_volumes(
        batch, 4, rotation_deg=0, flip_ap=True, flip_si=True, intensity_shift=0, intensity_scale=0
    )
    candidates = lambda v: [v[::a, ::b, ::c] for a in (1, -1) for b in (1, -1) for c in (1, -1)]  # noqa: E731
    for original, augmented in zip(batch.astype(np.float32), all_axes):
        assert any(np.array_equal(augmented, c) for c in candidates(original))


def test_intensity_shift_and_scale_are_bounded():
    batch = _batch(n=12)
    shifted = augment_volumes(batch, 5, rotation_deg=0, flip_lr=False, intensity_shift=10, intensity_scale=0)
    offsets = []
    for original, augmented in zip(batch.astype(np.float32), shifted):
        difference = augmented - original
        assert np.allclose(difference, difference.flat[0], atol=1e-3)  # one constant per volume
        offsets.append(difference.flat[0])
    assert max(np.abs(offsets)) <= 10 and np.std(offsets) > 1
    scaled = augment_volumes(batch, 6, rotation_deg=0, flip_lr=False, intensity_shift=0, intensity_scale=0.2)
    ratios = [a.std() / o.std() for o, a in zip(batch.astype(np.float32), scaled)]
    assert 0.8 - 1e-4 <= min(ratios) and max(ratios) <= 1.2 + 1e-4
    means = [a.mean() - o.mean() for o, a in zip(batch.astype(np.float32), scaled)]
    assert np.abs(means).max() < 1e-3  # contrast changes about the volume mean
    saturated = augment_volumes(
        np.full((1, 2, 4, 4, 1), 250, np.uint8), 7, rotation_deg=0, intensity_shift=50
    )
    assert saturated.max() <= 255.0 and saturated.min() >= 0.0


def test_seeded_and_input_untouched():
    batch = _batch()
    before = batch.copy()
    a = VolumeAugmenter(seed=11)(batch)
    b = VolumeAugmenter(seed=11)(batch)
    assert np.array_equal(a, b)
    assert np.array_equal(batch, before)
    augmenter = VolumeAugmenter(seed=11)
    assert not np.array_equal(augmenter(batch), augmenter(batch))  # each call draws new parameters


def test_bad_arguments():
    with pytest.raises(CovidctError, match="rotation_deg"):
        VolumeAugmenter(rotation_deg=-1)
    with pytest.raises(CovidctError, match="intensity_scale"):
        VolumeAugmenter(intensity_scale=1.5)
    with pytest.raises(CovidctError, match="N, D, H, W, C"):
        augment_volumes(np.zeros((4, 9, 9, 1)))
