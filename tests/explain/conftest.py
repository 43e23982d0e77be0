"""Shared fixtures for the explain tests: hand-built models and two small CNNs trained on phantoms.

The trained models are session-scoped, so the whole explain suite trains each of them once.

- ``lesion_task``: COV vs Normal phantoms at 64 px (one slice per synthetic patient, so a patient's
  anatomy cannot be memorised); only the planted ground-glass lesions separate the classes.
- ``shortcut_task``: all phantoms, labels drawn at random (independent of the lesions), and every
  class-1 image marked by a bright 8x8 square in the top-left corner, outside the body: the marker is
  the only signal.
"""

from __future__ import annotations

import numpy as np
import pytest

SIZE = 64


def small_cnn(seed: int = 0, size: int = SIZE, name: str = "test_cnn"):
    """Conv(8)-BN-ReLU-Pool, Conv(16)-BN-ReLU-Pool, Conv(32)-BN-ReLU, GAP, Dense(2) logits.

    BatchNorm momentum 0.9 lets the running statistics settle within the few hundred steps of a test.
    """
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 1), name="image")
    x = keras.layers.Rescaling(1 / 255, name="rescale")(inputs)
    for i, width in enumerate((8, 16, 32)):
        x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{i}")(x)
        x = keras.layers.Activation("relu", name=f"relu{i}")(x)
        if i < 2:
            x = keras.layers.MaxPooling2D(name=f"pool{i}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(2, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def fit_small_cnn(images, labels, epochs: int, seed: int = 0, name: str = "test_cnn"):
    import keras

    model = small_cnn(seed=seed, name=name)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(images, labels, epochs=epochs, batch_size=16, verbose=0, shuffle=True)
    return model


@pytest.fixture(scope="session")
def phantom_slices():
    from covidct.data.phantom import make_dataset

    return make_dataset(n=450, size=SIZE, seed=0, slices_per_patient=1)


def _display(images_hu):
    from covidct.data.windows import window_hu

    return np.rint(window_hu(images_hu) * 255.0)[..., None].astype(np.float32)


@pytest.fixture(scope="session")
def lesion_task(phantom_slices):
    labels = np.asarray(phantom_slices.labels)
    keep = np.isin(labels, ["COV", "Normal"])
    images = _display(phantom_slices.images_hu[keep])
    y = (labels[keep] == "COV").astype(np.int32)
    test = np.arange(len(y)) % 5 == 0
    model = fit_small_cnn(images[~test], y[~test], epochs=10, seed=0, name="lesion_cnn")
    return {
        "model": model,
        "images": images[test],
        "labels": y[test],
        "lung_labels": phantom_slices.lung_labels[keep][test],
        "lesions": phantom_slices.lesion_masks[keep][test],
    }


CORNER = (slice(1, 9), slice(1, 9))


@pytest.fixture(scope="session")
def shortcut_task(phantom_slices):
    images = _display(phantom_slices.images_hu)
    assert not phantom_slices.body_masks[:, CORNER[0], CORNER[1]].any(), "the marker must lie outside the body"
    y = np.random.default_rng(1).integers(0, 2, len(images)).astype(np.int32)
    images[y == 1, CORNER[0], CORNER[1], :] = 255.0
    test = np.arange(len(y)) % 4 == 0
    model = fit_small_cnn(images[~test], y[~test], epochs=4, seed=0, name="shortcut_cnn")
    return {
        "model": model,
        "images": images[test],
        "labels": y[test],
        "lung_labels": phantom_slices.lung_labels[test],
    }


def known_answer_model(height: int = 5, width: int = 6):
    """A model whose Grad-CAM is known in closed form.

    ``image -> Rescaling(x / 127.5 - 1) -> Conv2D(2, 1x1, kernel c = (1, 2), no bias) [layer "features"]
    -> GlobalAveragePooling -> Dense(2, kernel W = [[0.5, -1], [0.25, 0.25]], no bias)``.

    With ``x' = x / 127.5 - 1`` the feature maps are ``A_k = c_k x'`` and ``d logit_c / d A_k = W[k, c] / (h w)``
    everywhere, so Grad-CAM weights are ``W[k, c] / (h w)`` and ``cam_c = relu(x' sum_k W[k, c] c_k) / (h w)``:
    class 0 (sum = 0.5 + 0.5 = 1 > 0) gives ``relu(x')``, class 1 (sum = -1 + 0.5 = -0.5) gives ``relu(-x')``,
    each scaled to [0, 1] by its maximum (the minimum is 0 whenever some pixel has the other sign).
    """
    import keras

    inputs = keras.Input((height, width, 1), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="rescale")(inputs)
    x = keras.layers.Conv2D(2, 1, use_bias=False, name="features")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(2, use_bias=False, name="logits")(x)
    model = keras.Model(inputs, outputs, name="known_answer")
    model.get_layer("features").set_weights([np.array([1.0, 2.0], np.float32).reshape(1, 1, 1, 2)])
    model.get_layer("logits").set_weights([np.array([[0.5, -1.0], [0.25, 0.25]], np.float32)])
    return model


def known_answer_image(height: int = 5, width: int = 6) -> np.ndarray:
    """A (1, H, W, 1) ramp over [0, 255] with both signs of x' = x / 127.5 - 1 and an asymmetric layout."""
    ramp = np.linspace(0.0, 255.0, height * width, dtype=np.float32).reshape(height, width)
    ramp[0, 0], ramp[-1, -1] = ramp[-1, -1], ramp[0, 0]  # break symmetry so a transpose/flip would show
    return ramp[None, ..., None]


def expected_known_answer(image: np.ndarray, class_index: int) -> np.ndarray:
    scaled = image[0, ..., 0].astype(np.float64) / 127.5 - 1.0
    signed = scaled if class_index == 0 else -scaled
    cam = np.maximum(signed, 0.0)
    return cam / cam.max()


@pytest.fixture
def known_answer():
    return known_answer_model, known_answer_image, expected_known_answer


def nested_mobilenet(size: int = 64):
    """A keras.applications MobileNetV3Small nested as one layer: image -> scale -> RGB -> base -> GAP -> Dense."""
    import keras

    keras.utils.set_random_seed(3)
    base = keras.applications.MobileNetV3Small(
        input_shape=(size, size, 3), include_top=False, weights=None, include_preprocessing=False, pooling=None
    )
    inputs = keras.Input((size, size, 1), name="image")
    x = keras.layers.Rescaling(1 / 255, name="rescale")(inputs)
    x = keras.layers.Concatenate(name="to_rgb")([x, x, x])
    x = base(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(2, name="logits")(x)
    model = keras.Model(inputs, outputs, name="nested_mobilenet")
    # Random but non-degenerate head weights, so both classes have positive and negative evidence.
    kernel = np.random.default_rng(0).normal(size=model.get_layer("logits").get_weights()[0].shape)
    model.get_layer("logits").set_weights([kernel.astype(np.float32), np.zeros(2, np.float32)])
    return model, base


def nested_small_cnn(size: int = 16):
    """A small Functional base nested as one layer (cheap to build on JAX, unlike keras.applications).

    ``image -> rescale -> to_rgb -> backbone[conv_a -> relu_a -> conv_b -> relu_b] -> GAP -> Dense``.
    """
    import keras

    keras.utils.set_random_seed(5)
    base_inputs = keras.Input((size, size, 3), name="backbone_input")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv_a")(base_inputs)
    x = keras.layers.Activation("relu", name="relu_a")(x)
    x = keras.layers.Conv2D(6, 3, strides=2, padding="same", name="conv_b")(x)
    x = keras.layers.Activation("relu", name="relu_b")(x)
    base = keras.Model(base_inputs, x, name="backbone")
    inputs = keras.Input((size, size, 1), name="image")
    x = keras.layers.Rescaling(1 / 255, name="rescale")(inputs)
    x = keras.layers.Concatenate(name="to_rgb")([x, x, x])
    x = keras.layers.GlobalAveragePooling2D(name="gap")(base(x))
    model = keras.Model(inputs, keras.layers.Dense(2, name="logits")(x), name="nested_small")
    kernel = np.random.default_rng(1).normal(size=(6, 2)).astype(np.float32)
    model.get_layer("logits").set_weights([kernel, np.zeros(2, np.float32)])
    return model, base


def class_activation_map_of(features: np.ndarray, kernel: np.ndarray, class_index: int, size: int) -> np.ndarray:
    """Zhou et al.'s CAM, relu(sum_k W[k, c] A_k), resized and scaled like a Grad-CAM heatmap."""
    from covidct.explain.gradcam import normalise_cam

    return normalise_cam(np.maximum(features @ kernel[:, class_index], 0.0), size, size)


@pytest.fixture(scope="module")
def mobilenet():
    return nested_mobilenet()


@pytest.fixture
def class_activation_map():
    return class_activation_map_of


@pytest.fixture
def nested_small():
    return nested_small_cnn
