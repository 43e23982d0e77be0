"""Exact parameter counts (computed by hand below) and behaviour that proves each architecture's wiring.

Conv2D(k x k, Cin → Cout) has k*k*Cin*Cout + Cout parameters; BatchNorm has 4*C (gamma, beta and the
two running statistics, all counted by Keras); Dense(In → Out) has In*Out + Out.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from covidct.errors import CovidctError
from covidct.models import build_model
from covidct.models._common import ImageNetPreprocess


def _conv(k, cin, cout, dims=2):
    return k**dims * cin * cout + cout


def _dense(n_in, n_out):
    return n_in * n_out + n_out


@pytest.mark.parametrize(
    "name, input_shape, num_classes, expected",
    [
        # simple_cnn: 160 + 4,640 + 18,496 + 2,080 + 99 = 25,475 (independent of the image size).
        ("simple_cnn", (512, 512, 1), 3, _conv(3, 1, 16) + _conv(3, 16, 32) + _conv(3, 32, 64) + _dense(64, 32) + _dense(32, 3)),
        # Tiny, 5x5: (1,664 + 256) + (204,928 + 512) + (819,456 + 1,024) + (3,277,312 + 2,048) + 1,539 = 4,308,739.
        ("transfusion_tiny", (224, 224, 1), 3, 4_308_739),
        # Small, 7x7 32-64-128-256: (1,600+128) + (100,416+256) + (401,536+512) + (1,605,888+1,024) + 771 = 2,112,131.
        ("transfusion_small", (224, 224, 1), 3, 2_112_131),
        # LargeW, 7x7 64-128-256-512: (3,200+256) + (401,536+512) + (1,605,888+1,024) + (6,423,040+2,048) + 1,539 = 8,439,043.
        ("transfusion_largew", (224, 224, 1), 3, 8_439_043),
        # LargeT = Small's four blocks (2,111,360) + block 5 7x7 256→512 (6,423,040 + 2,048) + Dense 512→3 (1,539) = 8,537,987.
        ("transfusion_larget", (224, 224, 1), 3, 8_537_987),
        # small_cnn (no conv bias): 144+64 + 4,608+128 + 18,432+256 + 73,728+512 + Dense 128→3 387 = 98,259.
        ("small_cnn", (64, 64, 1), 3, 98_259),
        # cnn3d_covidscan at (32, 64, 64, 1): conv 1,792 + BN 256 + conv 221,312 + BN 512; valid conv/pool shrink
        # 32x64x64 → 30x62x62 → 15x31x31 → 13x29x29 → 6x14x14, so Flatten gives 6*14*14*128 = 150,528 features;
        # Dense 150,528→512 = 77,070,848; 512→256 = 131,328; 256→2 = 514. Total 77,426,562.
        ("cnn3d_covidscan", (32, 64, 64, 1), 2, 77_426_562),
        # cnn3d_kerasio: 1,792+256 + 110,656+256 + 221,312+512 + 884,992+1,024 + Dense 256→512 131,584 + 512→2 1,026.
        ("cnn3d_kerasio", (64, 128, 128, 1), 2, 1_353_410),
        # keras.applications EfficientNetB0 notop has 4,049,571 parameters; + Dense 1280→3 (3,843) = 4,053,414.
        ("efficientnet_b0", (224, 224, 3), 3, 4_053_414),
    ],
)
def test_exact_parameter_counts(name, input_shape, num_classes, expected):
    model = build_model(name, input_shape=input_shape, num_classes=num_classes)
    assert model.count_params() == expected


def test_hand_counts_agree_with_the_formulas():
    tiny = sum(_conv(5, a, b) + 4 * b for a, b in [(1, 64), (64, 128), (128, 256), (256, 512)]) + _dense(512, 3)
    small = sum(_conv(7, a, b) + 4 * b for a, b in [(1, 32), (32, 64), (64, 128), (128, 256)])
    larget = small + _conv(7, 256, 512) + 4 * 512 + _dense(512, 3)
    covidscan = _conv(3, 1, 64, 3) + 256 + _conv(3, 64, 128, 3) + 512 + _dense(150_528, 512) + _dense(512, 256) + _dense(256, 2)
    assert (tiny, small + _dense(256, 3), larget, covidscan) == (4_308_739, 2_112_131, 8_537_987, 77_426_562)


def test_transfusion_variants_all_differ():
    summaries = {}
    for name in ("transfusion_tiny", "transfusion_small", "transfusion_largew", "transfusion_larget"):
        model = build_model(name, input_shape=(224, 224, 1), num_classes=3)
        convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
        pools = [layer for layer in model.layers if isinstance(layer, keras.layers.MaxPooling2D)]
        summaries[name] = (
            tuple(c.kernel_size[0] for c in convs),
            tuple(c.filters for c in convs),
            len(pools),
            model.count_params(),
        )
    assert len(set(summaries.values())) == 4
    assert summaries["transfusion_larget"][:3] == ((7,) * 5, (32, 64, 128, 256, 512), 4)
    assert summaries["transfusion_tiny"][:3] == ((5,) * 4, (64, 128, 256, 512), 4)


def test_simple_cnn_matches_a_numpy_forward_pass():
    """The original study's layer order (rescale → conv/relu → pool ×3 → global max → dense) checked numerically."""
    from scipy.signal import correlate

    model = build_model("simple_cnn", input_shape=(30, 30, 1), num_classes=3)
    x = np.random.default_rng(0).uniform(0, 255, (1, 30, 30, 1)).astype("float32")
    h = x[0] / 255.0
    for i in (1, 2, 3):
        kernel, bias = model.get_layer(f"conv{i}").get_weights()
        out = np.stack(
            [sum(correlate(h[:, :, c], kernel[:, :, c, o], mode="valid") for c in range(h.shape[-1])) for o in range(kernel.shape[-1])],
            axis=-1,
        )
        h = np.maximum(out + bias, 0)
        hh, ww = h.shape[0] // 2, h.shape[1] // 2
        h = h[: 2 * hh, : 2 * ww].reshape(hh, 2, ww, 2, -1).max(axis=(1, 3))
    h = h.max(axis=(0, 1))
    k1, b1 = model.get_layer("dense1").get_weights()
    k2, b2 = model.get_layer("logits").get_weights()
    expected = np.maximum(h @ k1 + b1, 0) @ k2 + b2
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x))[0], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode, app", [("caffe", "resnet50"), ("caffe", "vgg19"), ("tf", "inception_resnet_v2")])
def test_imagenet_preprocess_layer_equals_keras_preprocess_input(mode, app):
    module = getattr(keras.applications, app)
    x = np.random.default_rng(0).uniform(0, 255, (2, 5, 5, 3)).astype("float32")
    expected = module.preprocess_input(x.copy())
    ours = keras.ops.convert_to_numpy(ImageNetPreprocess(mode)(x))
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-4)


def test_masked_efficientnet_sees_only_the_masked_image(built_models):
    model = built_models("masked_efficientnet_b0")  # 32x32x1
    assert [t.name for t in model.inputs] == ["image", "mask"]
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 255, (1, 32, 32, 1)).astype("float32")
    b = rng.uniform(0, 255, (1, 32, 32, 1)).astype("float32")
    mask = np.zeros((1, 32, 32, 1), "float32")
    mask[:, 8:24, 8:24] = 255.0
    b_same_inside = b.copy()
    b_same_inside[:, 8:24, 8:24] = a[:, 8:24, 8:24]
    out = lambda img, m: keras.ops.convert_to_numpy(model([img, m], training=False))  # noqa: E731
    # Pixels outside the mask cannot change the prediction; pixels inside can. Relative tolerances only: the
    # untrained network's logits are of order 1e-8, below any absolute tolerance.
    reference = out(a, mask)
    assert np.abs(reference).max() > 0
    np.testing.assert_allclose(out(b_same_inside, mask), reference, rtol=1e-5, atol=0)
    assert not np.allclose(out(b, mask), reference, rtol=1e-2, atol=0)
    # The original study's head: 2x2/2 conv and 3x3 conv of 512 filters, Dense 512; MaxPool(6) at 512 px.
    assert model.get_layer("head_conv1").strides == (2, 2) and model.get_layer("head_conv2").kernel_size == (3, 3)


def test_masked_efficientnet_head_matches_the_seed_at_512_px():
    model = build_model("masked_efficientnet_b0", input_shape=(512, 512, 1), num_classes=2)
    # EfficientNetB0 gives 16x16 at 512 px → conv 2x2/2 → 8x8 → conv 3x3 valid → 6x6 → MaxPool(6) → 1x1.
    assert tuple(model.get_layer("top_activation").output.shape[1:3]) == (16, 16)
    assert tuple(model.get_layer("head_conv2").output.shape[1:3]) == (6, 6)
    assert model.get_layer("head_pool").pool_size == (6, 6)
    assert tuple(model.get_layer("head_flatten").output.shape) == (None, 512)


def test_efficientnet_grayscale_is_repeated_to_rgb_inside_the_model(built_models):
    model = built_models("efficientnet_b0")  # 32x32x1
    assert tuple(model.get_layer("to_rgb").output.shape) == (None, 32, 32, 3)


def test_freeze_backbone_leaves_only_the_head_trainable():
    model = build_model("efficientnet_b0", input_shape=(32, 32, 1), num_classes=2, freeze_backbone=True)
    assert [w.path for w in model.trainable_weights] == ["logits/kernel", "logits/bias"]
    model = build_model("resnet50", input_shape=(32, 32, 1), num_classes=2, freeze_backbone=True)
    assert sorted(w.path for w in model.trainable_weights) == [
        "head_dense1/bias", "head_dense1/kernel", "logits/bias", "logits/kernel",
    ]  # fmt: skip


def test_imagenet_weights_offline_is_one_clear_error(monkeypatch):
    import keras.src.utils.file_utils as file_utils

    def offline(fname, origin=None, **kwargs):
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(CovidctError, match=r'weights="/path/to/efficientnetb0_notop\.h5"') as info:
        build_model("efficientnet_b0", input_shape=(32, 32, 1), weights="imagenet")
    assert "could not be downloaded" in str(info.value) and "URL fetch failure" in str(info.value)


def test_local_weights_file_is_loaded_into_the_base(tmp_path):
    # A stand-in for efficientnetb0_notop.h5: any EfficientNetB0 notop weights saved by Keras.
    reference = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "efficientnetb0_notop.weights.h5"
    reference.save_weights(path)
    model = build_model("efficientnet_b0", input_shape=(32, 32, 3), num_classes=2, weights=str(path))
    np.testing.assert_array_equal(
        model.get_layer("top_conv").kernel.numpy(), reference.get_layer("top_conv").kernel.numpy()
    )
