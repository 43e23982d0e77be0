"""Transfer-learning phases (covidct.models.transfer): which layers train, and BatchNorm kept in inference mode.

EfficientNet-Lite0 is built with random weights at 32 px (fast); the ImageNet-weight tests through the
training loop live in test_efficientnet_lite.py, beside the one conversion they share.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest

from covidct.config import load_config
from covidct.errors import CovidctError
from covidct.models import build_model
from covidct.models.transfer import backbone_blocks, parse_finetune, set_phase_trainable
from covidct.train.loop import phases


@pytest.fixture(scope="module")
def lite0():
    keras.utils.set_random_seed(0)
    return build_model("efficientnet_lite0", input_shape=(32, 32, 1), num_classes=2)


def test_parse_finetune():
    assert parse_finetune("all") is None
    assert parse_finetune("top:3") == 3
    for bad in ("top:0", "top", "top:-1", "everything", "3"):
        with pytest.raises(CovidctError, match="'all' or 'top:N'"):
            parse_finetune(bad)


def test_blocks_of_lite0_are_the_sixteen_mbconv_blocks(lite0):
    blocks = backbone_blocks(lite0)
    assert len(blocks) == 16  # 1 + 2 + 2 + 3 + 3 + 4 + 1 (the B0 table, Lite keeps the repeats)
    assert blocks[:3] == ["block1a", "block2a", "block2b"] and blocks[-2:] == ["block6d", "block7a"]


def test_frozen_phase_trains_only_the_head(lite0):
    phase = set_phase_trainable(lite0, backbone=False)
    assert phase["trainable"] == ["logits"]
    assert [w.path for w in lite0.trainable_weights] == ["logits/kernel", "logits/bias"]


def test_top_n_opens_the_last_n_blocks_and_the_layers_after_them(lite0):
    phase = set_phase_trainable(lite0, backbone=True, finetune="top:2")
    expected = [
        f"{block}_{part}" for block in ("block6d", "block7a")
        for part in ("expand_conv", "expand_bn", "dwconv", "bn", "project_conv", "project_bn")
    ] + ["top_conv", "top_bn", "logits"]  # fmt: skip
    assert phase["trainable"] == expected
    assert "block6c_project_conv" in phase["frozen"] and "stem_conv" in phase["frozen"]
    with_bn_frozen = set_phase_trainable(lite0, backbone=True, finetune="top:2", freeze_batchnorm=True)
    assert with_bn_frozen["trainable"] == [n for n in expected if not n.endswith("_bn")]
    everything = set_phase_trainable(lite0, backbone=True, finetune="all")
    assert everything["frozen"] == [] and len(everything["trainable"]) == sum(1 for la in lite0.layers if la.weights)


def test_top_n_beyond_the_blocks_and_models_without_blocks_are_clear_errors(lite0):
    with pytest.raises(CovidctError, match="only 16 blocks .*top:16"):
        set_phase_trainable(lite0, backbone=True, finetune="top:17")
    small = build_model("small_cnn", input_shape=(32, 32, 1), num_classes=2)
    with pytest.raises(CovidctError, match="no named backbone blocks"):
        set_phase_trainable(small, backbone=True, finetune="top:1")


def _numpy(variable):
    return keras.ops.convert_to_numpy(variable)


def _bn_stats(model):
    return {la.name: [_numpy(v) for v in la.non_trainable_weights] for la in model.layers
            if isinstance(la, keras.layers.BatchNormalization)}


@pytest.mark.parametrize("freeze_batchnorm", [True, False])
def test_batch_norm_statistics_stay_while_frozen(lite0, freeze_batchnorm):
    model = keras.models.clone_model(lite0)
    model.set_weights(lite0.get_weights())
    set_phase_trainable(model, backbone=True, finetune="top:1", freeze_batchnorm=freeze_batchnorm)
    before, kernels = _bn_stats(model), {la.name: _numpy(la.weights[0]) for la in model.layers if la.weights}
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(1).uniform(0, 255, (8, 32, 32, 1)).astype("float32")
    model.train_on_batch(x, np.array([0, 1] * 4))
    after = _bn_stats(model)
    for name, stats in before.items():
        moved = not all(np.array_equal(a, b) for a, b in zip(stats, after[name]))
        # Only the opened block's and the top's BatchNorm layers may update, and only when not kept frozen.
        assert moved == (not freeze_batchnorm and name.startswith(("block7a", "top_bn"))), name
    assert not np.array_equal(kernels["block7a_project_conv"], _numpy(model.get_layer("block7a_project_conv").kernel))
    np.testing.assert_array_equal(kernels["block6d_project_conv"], _numpy(model.get_layer("block6d_project_conv").kernel))


def test_config_takes_finetune_and_freeze_batchnorm():
    cfg = load_config("sars-cov-2-ct/efficientnet_lite0-imagenet-lungs-robust-top8")
    assert (cfg.model.finetune, cfg.model.freeze_batchnorm) == ("top:8", True)
    assert load_config("sars-cov-2-ct/base").model.finetune == "all"
    for override in ("model.finetune=top:0", "model.finetune=blocks", "model.freeze_batchnorm=maybe"):
        with pytest.raises(CovidctError, match="model.finetune must be 'all' or 'top:N'"):
            load_config("sars-cov-2-ct/base", [override])


def test_shipped_top8_recipe_phases():
    cfg = load_config("sars-cov-2-ct/efficientnet_lite0-imagenet-lungs-robust-top8")
    assert (cfg.data.stage, cfg.data.size) == ("lungs-robust", 128)
    assert phases(cfg) == [(0, 2, False, pytest.approx(1e-3)), (2, 10, True, pytest.approx(1e-4))]
    assert dataclasses.asdict(cfg.model)["freeze"] == "frozen-then-finetune"
