"""Every registered model, one parametrised test each: a new model is covered with no new test code.

Models are built once per session at their spec's small ``test_input_shape`` (see conftest.py).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from covidct.errors import CovidctError
from covidct.models import build_model, builder_options, get_spec, list_models
from covidct.models.registry import TASKS

ALL = list_models()
WITH_GRADCAM = [n for n in ALL if get_spec(n).task != "segmentation"]


def test_registry_holds_every_model_of_the_study():
    expected = {
        "simple_cnn", "small_cnn",
        "transfusion_tiny", "transfusion_small", "transfusion_largew", "transfusion_larget",
        "bit_r50x1", "efficientnet_b0", "efficientnet_b3", "efficientnet_b7", "masked_efficientnet_b0",
        "resnet50", "resnet18", "vgg19", "inception_resnet_v2",
        "bcd_unet", "unet", "cnn3d_covidscan", "cnn3d_kerasio",
    }  # fmt: skip
    assert expected <= set(ALL)
    assert set(list_models(task="segmentation")) == {"bcd_unet", "unet"}
    assert set(list_models(task="volume")) == {"cnn3d_covidscan", "cnn3d_kerasio"}
    assert list_models(family="transfusion") == [
        "transfusion_larget", "transfusion_largew", "transfusion_small", "transfusion_tiny",
    ]  # fmt: skip


@pytest.mark.parametrize("name", ALL)
def test_spec_is_complete(name):
    spec = get_spec(name)
    assert spec.task in TASKS
    assert spec.reference, "every model cites its source"
    rank = 4 if spec.task == "volume" else 3
    assert len(spec.input_shape) == rank and len(spec.test_input_shape or spec.input_shape) == rank
    assert (spec.gradcam_layer is None) == (spec.task == "segmentation")
    assert spec.inputs[0] in ("image", "volume")


@pytest.mark.parametrize("name", ALL)
def test_build_and_forward(name, built_models, make_inputs):
    spec = get_spec(name)
    model = built_models(name)
    assert isinstance(model, keras.Model) and model.name == name
    assert [t.name for t in model.inputs] == list(spec.inputs)
    x = make_inputs(spec)
    y = keras.ops.convert_to_numpy(model(x, training=False))
    shape = spec.test_input_shape
    if spec.task == "segmentation":
        assert y.shape == (2, shape[0], shape[1], 1)
    else:
        assert y.shape == (2, 3)
    assert np.isfinite(y).all()
    # Two different inputs must not collapse to the same output (a wiring bug, e.g. a dead branch). Relative
    # tolerance only: an untrained deep network with BatchNorm in inference mode can output logits near 1e-8
    # (masked_efficientnet_b0), where numpy's default atol=1e-8 would call any two outputs equal.
    assert not np.allclose(y[0], y[1], rtol=1e-3, atol=0)
    # The model is uncompiled and has no softmax/sigmoid on its last layer: it outputs logits.
    assert not model.compiled
    assert getattr(model.layers[-1], "activation", keras.activations.linear) is keras.activations.linear


@pytest.mark.parametrize("name", WITH_GRADCAM)
def test_gradcam_layer_exists_and_has_gradients(name, built_models, make_inputs):
    import tensorflow as tf

    spec = get_spec(name)
    model = built_models(name)
    layer = model.get_layer(spec.gradcam_layer)  # a top-level layer, also for keras.applications bases
    rank = 5 if spec.task == "volume" else 4  # batch + spatial + channels
    assert len(layer.output.shape) == rank
    probe = keras.Model(model.inputs, [layer.output, model.output])
    x = make_inputs(spec, batch=1)
    x = [tf.constant(a) for a in x] if isinstance(x, list) else tf.constant(x)
    with tf.GradientTape() as tape:
        feature_map, logits = probe(x, training=False)
        score = logits[:, 0]
    grads = tape.gradient(score, feature_map)
    assert grads is not None and grads.shape == feature_map.shape
    assert np.isfinite(grads.numpy()).all()


# Writing and re-reading a .keras file costs seconds per 10 M parameters on 2 shared CPU cores. Above
# this size (EfficientNetB7 64 M, InceptionResNetV2 54 M at their test shapes) the test rebuilds the
# model from its serialised config in memory and copies the weights instead: the same config and
# custom-layer serialisation, without 200+ MB of disk I/O.
ROUND_TRIP_FILE_MAX_PARAMS = 30_000_000


@pytest.mark.parametrize("name", ALL)
def test_save_and_load_give_identical_outputs(name, built_models, make_inputs, tmp_path):
    spec = get_spec(name)
    model = built_models(name)
    if model.count_params() <= ROUND_TRIP_FILE_MAX_PARAMS:
        path = tmp_path / f"{name}.keras"
        model.save(path)
        loaded = keras.models.load_model(path)
    else:
        config = keras.saving.serialize_keras_object(model)
        loaded = keras.saving.deserialize_keras_object(config)
        loaded.set_weights(model.get_weights())
    x = make_inputs(spec, seed=1)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model(x, training=False)), keras.ops.convert_to_numpy(loaded(x, training=False))
    )
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]


@pytest.mark.parametrize("name", ALL)
def test_input_shape_of_wrong_rank_is_a_clear_error(name):
    spec = get_spec(name)
    wrong = (64, 64) if spec.task != "volume" else (64, 64, 1)
    with pytest.raises(CovidctError, match="input_shape"):
        build_model(name, input_shape=wrong)


@pytest.mark.parametrize("name", ALL)
def test_unknown_option_is_a_clear_error_with_the_valid_options(name):
    with pytest.raises(CovidctError, match=r"has no option 'no_such_option'.*Its options"):
        build_model(name, no_such_option=1)


def test_unknown_model_suggests_close_matches():
    with pytest.raises(CovidctError, match=r"Unknown model 'efficientnet_b4'.*Did you mean: efficientnet_b"):
        get_spec("efficientnet_b4")
    with pytest.raises(ValueError, match="transfusion_tiny"):  # CovidctError is a ValueError
        build_model("transfusion_tyni")


def test_misspelled_option_suggests_the_right_one():
    with pytest.raises(CovidctError, match="Did you mean: freeze_backbone"):
        build_model("efficientnet_b0", input_shape=(32, 32, 1), freeze_backbon=True)


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("simple_cnn", {"num_classes": 0}, "num_classes must be a positive integer"),
        ("simple_cnn", {"num_classes": 2.5}, "num_classes must be a positive integer"),
        ("simple_cnn", {"weights": "imagenet"}, "no ImageNet weights"),
        ("simple_cnn", {"weights": "/nonexistent/simple.weights.h5"}, r"does not exist\.$"),
        ("unet", {"weights": "/nonexistent/run/model.keras"}, "does not exist. It names a run's checkpoint: train that"),
        ("simple_cnn", {"input_shape": (16, 16, 1)}, r"at least 22x22"),
        ("transfusion_larget", {"input_shape": (216, 216, 1)}, r"at least 217x217"),
        ("transfusion_tiny", {"input_shape": (90, 90, 1)}, r"at least 91x91"),
        ("transfusion_small", {"input_shape": (120, 120, 1)}, r"at least 121x121"),
        ("inception_resnet_v2", {"input_shape": (74, 74, 1)}, r"at least 75x75"),
        ("efficientnet_b0", {"input_shape": (32, 32, 2)}, "2 input channel"),
        ("efficientnet_b0", {"input_shape": (16, 16, 1)}, "at least 32x32"),
        ("efficientnet_b0", {"weights": "/nonexistent/efficientnetb0_notop.h5"}, "does not exist"),
        ("bit_r50x1", {"input_shape": (224, 224, 4)}, "4 input channel"),
        ("small_cnn", {"dropout_rate": 1.0}, r"dropout_rate must be a number in \[0, 1\)"),
        ("small_cnn", {"filters": ()}, "filters must be a non-empty tuple"),
        ("resnet18", {"dropout_rate": -0.1}, "dropout_rate"),
        ("unet", {"input_shape": (40, 40, 1)}, "divisible by 16"),
        ("unet", {"base_filters": 0}, "base_filters must be a positive integer"),
        ("bcd_unet", {"input_shape": (36, 36, 1)}, "divisible by 8"),
        ("cnn3d_covidscan", {"input_shape": (9, 64, 64, 1)}, r"at least 10x10x10"),
        ("cnn3d_kerasio", {"input_shape": (45, 128, 128, 1)}, r"at least 46x46x46"),
        ("simple_cnn", {"input_shape": (32, 32.5, 1)}, "input_shape"),
    ],
)
def test_bad_arguments_raise_value_errors_that_name_the_problem(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model(name, **kwargs)


def test_builder_options_lists_user_options_not_internal_ones():
    assert builder_options("efficientnet_b0") == {"freeze_backbone": False, "dropout_rate": 0.0}
    assert builder_options("bit_r50x1") == {"freeze_backbone": False, "zero_head": False}
    assert builder_options("simple_cnn") == {}
