"""Losses by hand, balanced class weights, the PyDataset's batches and augmentation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from keras import ops

from covidct.train.augment import make_augmenter
from covidct.train.data import SliceSequence, balanced_class_weights, parse_label_map
from covidct.train.losses import CrossEntropyFromLogits, FocalLossFromLogits, loss_numpy


def _value(loss, y, logits):
    return float(ops.convert_to_numpy(loss(np.asarray(y), np.asarray(logits, dtype="float32"))))


def test_focal_loss_hand_computed():
    # p_t = 0.5 for logits [0, 0]: focal = (1 - 0.5)^2 * ln 2 = 0.25 * 0.693147.
    expected = 0.25 * math.log(2)
    assert _value(FocalLossFromLogits(gamma=2.0, num_classes=2), [1], [[0.0, 0.0]]) == pytest.approx(expected, rel=1e-5)
    # A single sigmoid logit 0 gives the same p_t.
    assert _value(FocalLossFromLogits(gamma=2.0, num_classes=2), [1], [[0.0]]) == pytest.approx(expected, rel=1e-5)
    # alpha = 0.25 weighs the positive class by 0.25 and the negative by 0.75.
    assert _value(FocalLossFromLogits(gamma=2.0, alpha=0.25, num_classes=2), [1], [[0.0, 0.0]]) == pytest.approx(0.25 * expected, rel=1e-5)
    assert _value(FocalLossFromLogits(gamma=2.0, alpha=0.25, num_classes=2), [0], [[0.0, 0.0]]) == pytest.approx(0.75 * expected, rel=1e-5)


def test_gamma_zero_is_cross_entropy_and_numpy_twin_agrees():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(16, 3)).astype("float32")
    y = rng.integers(0, 3, 16)
    ce = _value(CrossEntropyFromLogits(), y, logits)
    log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    assert ce == pytest.approx(-log_softmax[np.arange(16), y].mean(), rel=1e-5)
    assert _value(FocalLossFromLogits(gamma=0.0, num_classes=3), y, logits) == pytest.approx(ce, rel=1e-5)
    focal = _value(FocalLossFromLogits(gamma=2.0, alpha=[0.2, 0.3, 0.5], num_classes=3), y, logits)
    assert loss_numpy("focal", y, logits, gamma=2.0, alpha=[0.2, 0.3, 0.5]) == pytest.approx(focal, rel=1e-4)
    assert loss_numpy("ce", y, logits) == pytest.approx(ce, rel=1e-5)


def test_balanced_class_weights_hand_computed():
    # n / (k * count): 4 / (2 * 3) and 4 / (2 * 1).
    np.testing.assert_allclose(balanced_class_weights(np.array([0, 0, 0, 1]), 2), [2 / 3, 2.0])


def test_slice_sequence_shuffles_per_epoch_and_weights():
    images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1).repeat(4, 1).repeat(4, 2)
    labels = np.array([0, 1] * 5)
    seq = SliceSequence(images, np.arange(10), labels, batch_size=4, shuffle=True, seed=3, class_weights=[1.0, 3.0])
    assert len(seq) == 3
    x, y, w = seq[0]
    assert x.dtype == np.float32 and x.shape == (4, 4, 4, 1)
    np.testing.assert_array_equal(x[:, 0, 0, 0].astype(int), seq.order[:4])
    np.testing.assert_array_equal(y, labels[seq.order[:4]])
    np.testing.assert_allclose(w, np.where(y == 1, 3.0, 1.0))
    first = seq.order.copy()
    seq.set_epoch(1)
    assert sorted(seq.order) == list(range(10)) and not np.array_equal(seq.order, first)
    seq.set_epoch(0)
    np.testing.assert_array_equal(seq.order, first)  # a pure function of (seed, epoch): resumable
    capped = SliceSequence(images, np.arange(10), labels, batch_size=4, max_steps=1)
    assert len(capped) == 1


def test_drop_last_keeps_full_batches_and_leaves_out_other_rows_each_epoch():
    from covidct.segment.data import phantom_pairs
    from covidct.train.data import epoch_steps
    from covidct.train.segmentation import MaskSequence

    # by hand: 10 rows in batches of 4 -> 3 batches (4, 4, 2), or 2 full ones; fewer rows than a batch -> 1
    assert [epoch_steps(10, 4), epoch_steps(10, 4, drop_last=True), epoch_steps(3, 4, drop_last=True)] == [3, 2, 1]
    assert [epoch_steps(12, 4, drop_last=True), epoch_steps(10, 4, max_steps=1, drop_last=True)] == [3, 1]
    images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1).repeat(4, 1).repeat(4, 2)
    seq = SliceSequence(images, np.arange(10), np.zeros(10, int), batch_size=4, shuffle=True, seed=3, drop_last=True)
    left_out = []
    for epoch in range(4):
        seq.set_epoch(epoch)
        seen = np.concatenate([seq[i][0][:, 0, 0, 0].astype(int) for i in range(len(seq))])
        assert len(seq) == 2 and len(seen) == 8 and len(set(seen)) == 8  # two full batches, no repeats
        left_out.append(frozenset(set(range(10)) - set(seen)))
    assert len(set(left_out)) > 1  # the rows left out change with the epoch's order
    pairs = phantom_pairs(10, 32, "lesion")
    masks = MaskSequence(pairs.images, pairs.masks, np.arange(10), batch_size=4, drop_last=True)
    assert len(masks) == 2 and all(masks[i][0].shape[0] == 4 for i in range(len(masks)))
    assert len(MaskSequence(pairs.images, pairs.masks, np.arange(10), batch_size=4)) == 3


def test_two_input_split_and_augmentation_is_seeded():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(4, 16, 16, 2), dtype=np.uint8)
    seq = SliceSequence(images, np.arange(4), None, batch_size=4, input_names=("image", "mask"))
    (x,) = seq[0]
    assert set(x) == {"image", "mask"} and x["mask"].shape == (4, 16, 16, 1)
    np.testing.assert_array_equal(x["mask"][..., 0], images[..., 1])
    factors = {"rotation": 0.1, "zoom": -0.2, "translation": 0.1, "flip": True}
    batch = images[..., :1].astype("float32")
    a = np.asarray(make_augmenter(factors, seed=5)(batch, training=True))
    b = np.asarray(make_augmenter(factors, seed=5)(batch, training=True))
    np.testing.assert_allclose(a, b)
    assert a.shape == batch.shape and not np.allclose(a, batch)
    assert make_augmenter(None) is None


def test_parse_label_map():
    assert parse_label_map("COVID-19=COV, CAP=non-COV,Normal=non-COV") == {"COVID-19": "COV", "CAP": "non-COV", "Normal": "non-COV"}
