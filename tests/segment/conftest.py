"""A tiny U-Net and a tiny synthetic segmentation set (dark discs on grey) for fast training tests.

``train(cfg)`` builds registered models only, so the ``tiny_segmenter`` fixture registers the tiny
U-Net as ``tiny_unet`` for the duration of one test (the registry is restored afterwards).
"""

import numpy as np
import pytest

from covidct.segment.data import SegmentationPairs


def tiny_unet(input_shape):
    """Two-level U-Net with 8 filters: trains in seconds at 32 px."""
    import keras
    from keras import layers

    inputs = keras.Input(input_shape, name="image")
    x = layers.Rescaling(1 / 255, name="rescale")(inputs)
    e1 = layers.Conv2D(8, 3, padding="same", activation="relu", name="enc1")(x)
    p1 = layers.MaxPooling2D(2, name="pool1")(e1)
    b = layers.Conv2D(16, 3, padding="same", activation="relu", name="bottleneck")(p1)
    u1 = layers.UpSampling2D(2, name="up1")(b)
    d1 = layers.Concatenate(name="skip1")([u1, e1])
    d1 = layers.Conv2D(8, 3, padding="same", activation="relu", name="dec1")(d1)
    outputs = layers.Conv2D(1, 1, name="logits")(d1)
    return keras.Model(inputs, outputs, name="tiny_unet")


def make_discs(n=24, size=32, seed=0):
    """Grey images with one dark disc each (the "lesion") and its exact mask; 2 images per group."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, masks = [], []
    for _ in range(n):
        cy, cx = rng.integers(8, size - 8, 2)
        radius = rng.integers(4, 8)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        image = np.where(mask, 60, 180) + rng.normal(0, 10, (size, size))
        images.append(np.clip(image, 0, 255).astype(np.uint8))
        masks.append(mask.astype(np.uint8))
    splits = np.array(["train"] * (n - 6) + ["test"] * 6)
    return SegmentationPairs(
        images=np.stack(images)[..., None],
        masks=np.stack(masks),
        names=[f"disc_{i}.png" for i in range(n)],
        splits=splits,
        groups=np.array([f"g{i // 2}" for i in range(n)]),
    )


@pytest.fixture
def tiny_segmenter(monkeypatch):
    """The registry name ``tiny_unet`` of the tiny U-Net, registered for this test only."""
    from covidct.models import registry

    def build_tiny_unet(input_shape, num_classes: int = 1, weights=None):
        return tiny_unet(input_shape)

    spec = registry.ModelSpec(
        name="tiny_unet",
        builder=build_tiny_unet,
        task="segmentation",
        family="test",
        input_shape=(32, 32, 1),
        description="two-level U-Net with 8 filters (tests only)",
    )
    monkeypatch.setitem(registry._REGISTRY, "tiny_unet", spec)
    return "tiny_unet"


@pytest.fixture
def discs():
    return make_discs()
