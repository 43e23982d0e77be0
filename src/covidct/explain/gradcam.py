"""Grad-CAM heatmaps for any covidct classifier, on the TensorFlow, JAX and PyTorch backends.

A heatmap says which part of the input raised the score of one class. Three weightings of the
feature maps ``A`` (shape ``(h, w, K)``) of a chosen layer are offered, all from the gradient
``G = d score / d A`` of the class logit:

- ``"gradcam"`` (Selvaraju et al. 2017, https://arxiv.org/abs/1610.02391): channel weight
  ``w_k = mean_ij G_ijk``.
- ``"guided"``: the variant of the CT-COV19 study's notebook, which keeps only positive
  gradients at positive activations: ``w_k = mean_ij [A_ijk > 0] [G_ijk > 0] G_ijk``.
- ``"gradcam++"`` (Chattopadhay et al. 2018, https://arxiv.org/abs/1710.11063, eq. 19 with the
  exponential of the score, as in pytorch-grad-cam): ``w_k = sum_ij relu(G_ijk) a_ijk`` with
  ``a_ijk = G^2 / (2 G^2 + sum_ab A_abk G^3)`` (0 where ``G = 0``).

In every case the map is ``relu(sum_k w_k A_k)``, resized bilinearly to the input's height and width
and scaled per image to [0, 1] by its minimum and maximum. A map with no spatial contrast (a constant
image, or a class with no positive evidence anywhere) becomes all zeros, never NaN.

The gradient is taken with respect to a zero tensor ``delta`` added to the chosen layer's output in a
rebuilt copy of the graph (the "probe", which shares the model's layers and weights). Because ``delta``
is an ordinary model input, one formula serves every backend: ``tf.GradientTape``, ``jax.grad`` over
``stateless_call`` and ``torch.autograd.grad``. The rebuild also reaches layers inside nested models
(a ``keras.applications`` base used as a layer): the nested graph is inlined into the probe, so the
inner layer's activations and the outer logits come from one forward pass.

Layer names: a name of the top-level model, a path through nested models
(``"efficientnetb0/top_activation"``), or the bare name of a layer inside a nested model when it is
unique. By default the registry spec's ``gradcam_layer`` is used when the model's name is a registered
model; otherwise the last layer with a 4-D output (searching inside nested models too), preferring
layers whose maps are larger than 1x1.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass

import cv2
import keras
import numpy as np
from keras import ops

from covidct.errors import CovidctError, did_you_mean
from covidct.models import get_spec, list_models

LOGGER = logging.getLogger(__name__)

METHODS = ("gradcam", "guided", "gradcam++")

# Probes are rebuilt graphs that add symbolic nodes to the model's layers; build each one once per model.
_PROBES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class CamResult:
    """Heatmaps and what produced them.

    Attributes:
        heatmaps: float32 (N, H, W) in [0, 1] at the input's resolution.
        class_index: int (N,) class each heatmap explains.
        logits: float32 (N, num_logits) model outputs for the inputs.
        layer: path of the layer used (``"outer/inner"`` inside nested models).
        method: ``"gradcam"``, ``"guided"`` or ``"gradcam++"``.
    """

    heatmaps: np.ndarray
    class_index: np.ndarray
    logits: np.ndarray
    layer: str
    method: str


# ----------------------------------------------------------------------------------------------- layers


def _keras():
    return keras


def _is_model(layer) -> bool:
    return isinstance(layer, _keras().Model)


def _output_rank(layer) -> int | None:
    try:
        output = layer.output
    except (AttributeError, ValueError, RuntimeError):
        return None
    if isinstance(output, (list, tuple)):
        return None
    shape = getattr(output, "shape", None)
    return None if shape is None else len(shape)


def _output_shape(layer) -> tuple:
    return tuple(layer.output.shape)


def _iter_layers(model, prefix: str = ""):
    """Yield ``(path, layer)`` for every layer, depth first, nested models expanded after themselves."""
    keras = _keras()
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        path = f"{prefix}{layer.name}"
        yield path, layer
        if _is_model(layer):
            yield from _iter_layers(layer, prefix=f"{path}/")


def conv_layer_names(model) -> list[str]:
    """Paths of the layers with a 4-D output (N, h, w, C), nested models included, in graph order.

    Args:
        model: a Keras model.

    Returns:
        Layer paths usable as ``layer_name`` (``"outer/inner"`` for layers inside nested models).
    """
    return [path for path, layer in _iter_layers(model) if _output_rank(layer) == 4]


def _default_layer(model, model_name: str | None) -> str:
    name = model_name or model.name

    if name in list_models():
        layer = get_spec(name).gradcam_layer
        if layer:
            try:
                _resolve(model, layer)
                return layer
            except CovidctError:
                # A model that only shares a registered name: find its layer automatically.
                LOGGER.info("model %r has no layer %r (registry default); choosing one automatically", name, layer)
    candidates = conv_layer_names(model)
    if not candidates:
        raise CovidctError(
            f"Model {model.name!r} has no layer with a 4-D output (N, h, w, C); Grad-CAM needs a "
            "convolutional feature map. Is this an image classifier?"
        )
    # Padding, cropping and intensity-scaling layers only reshape or rescale their input; a 1x1 map
    # cannot localise anything. Prefer the last layer that is neither.
    keras = _keras()
    passive = (keras.layers.ZeroPadding2D, keras.layers.Cropping2D, keras.layers.Rescaling, keras.layers.Normalization)
    layers = {path: _resolve(model, path)[-1] for path in candidates}
    preferred = [path for path in candidates if not isinstance(layers[path], passive) and _spatial_size(layers[path]) > 1]
    return (preferred or candidates)[-1]


def _spatial_size(layer) -> int:
    shape = _output_shape(layer)
    height, width = shape[1], shape[2]
    if height is None or width is None:
        return 2
    return int(height) * int(width)


def _resolve(model, layer_name: str) -> list:
    """Return the chain of layers ``[outer, ..., target]`` named by ``layer_name``.

    Raises:
        CovidctError: when no layer (or several nested ones) match, listing the conv layers.
    """
    parts = [part for part in str(layer_name).split("/") if part]
    chain = []
    current = model
    for part in parts:
        match = next((layer for layer in getattr(current, "layers", []) if layer.name == part), None)
        if match is None:
            chain = []
            break
        chain.append(match)
        current = match
    if not chain and len(parts) == 1:
        # A bare name of a layer inside a nested model is accepted when it is unique.
        hits = [path for path, _ in _iter_layers(model) if path.split("/")[-1] == parts[0]]
        if len(hits) == 1:
            return _resolve(model, hits[0])
        if len(hits) > 1:
            raise CovidctError(
                f"Layer name {layer_name!r} is ambiguous in model {model.name!r}: {', '.join(hits)}. "
                "Give the full path."
            )
    if not chain:
        convs = conv_layer_names(model)
        raise CovidctError(
            f"Model {model.name!r} has no layer {layer_name!r}.{did_you_mean(str(layer_name), convs)} "
            f"Layers with a 4-D output (usable for Grad-CAM): {', '.join(convs) or 'none'}."
        )
    target = chain[-1]
    if _output_rank(target) != 4:
        convs = conv_layer_names(model)
        raise CovidctError(
            f"Layer {layer_name!r} of model {model.name!r} has output shape "
            f"{getattr(getattr(target, 'output', None), 'shape', '?')}, not 4-D (N, h, w, C). "
            f"Layers with a 4-D output: {', '.join(convs) or 'none'}."
        )
    return chain


# ------------------------------------------------------------------------------------------------ probe


def _inline_call(layer, args, kwargs, remaining: list, delta, captured: dict):
    """Call ``layer`` symbolically; along ``remaining`` (nested layers) inline the graph and inject."""
    keras = _keras()
    if not remaining:
        output = layer(*args, **kwargs)
        output = keras.ops.add(output, delta)
        captured["features"] = output
        return output
    inner = remaining[0]
    if isinstance(layer, keras.Sequential):
        tensor = args[0]
        for sub in layer.layers:
            if sub is inner:
                tensor = _inline_call(sub, (tensor,), {}, remaining[1:], delta, captured)
            else:
                tensor = sub(tensor)
        return tensor
    if not hasattr(layer, "_run_through_graph"):
        raise CovidctError(
            f"Cannot reach layer {inner.name!r} inside {layer.name!r} ({type(layer).__name__}): only "
            "Functional and Sequential models can be opened for Grad-CAM. Choose a layer of the outer model."
        )

    def operation_fn(operation):
        if operation is inner:
            return lambda *a, **k: _inline_call(operation, a, k, remaining[1:], delta, captured)
        return operation

    inputs = args[0] if len(args) == 1 else list(args)
    outputs = layer._run_through_graph(inputs, operation_fn=operation_fn)
    return outputs[0] if isinstance(outputs, (list, tuple)) and len(outputs) == 1 else outputs


def _build_probe(model, chain: list):
    """A Functional model ``[*model inputs, delta] -> [features + delta, logits]`` sharing ``model``'s weights."""
    keras = _keras()
    key = "/".join(layer.name for layer in chain)
    cache = _PROBES.setdefault(model, {})
    if key in cache:
        return cache[key]
    feature_shape = _output_shape(chain[-1])
    delta = keras.Input(shape=feature_shape[1:], name="gradcam_delta")
    captured: dict = {}
    inputs = list(model.inputs)
    if isinstance(model, keras.Sequential):
        outputs = _inline_call(model, (inputs[0],), {}, chain, delta, captured)
    else:

        def operation_fn(operation):
            if operation is chain[0]:
                return lambda *a, **k: _inline_call(operation, a, k, chain[1:], delta, captured)
            return operation

        outputs = model._run_through_graph(inputs, operation_fn=operation_fn)
    if isinstance(outputs, (list, tuple)):
        if len(outputs) != 1:
            raise CovidctError(
                f"Model {model.name!r} has {len(outputs)} outputs; Grad-CAM needs one logits output."
            )
        outputs = outputs[0]
    if "features" not in captured:
        raise CovidctError(f"Layer {key!r} is not on the path from the inputs to the output of {model.name!r}.")
    probe = keras.Model([*inputs, delta], [captured["features"], outputs], name=f"{model.name}_gradcam_probe")
    cache[key] = probe
    return probe


# --------------------------------------------------------------------------------------------- backends


def _select_scores(ops, logits, class_index):
    """Score of the requested class per image; ``class_index < 0`` means the predicted class."""
    if logits.shape[-1] == 1:
        # One logit (sigmoid output): class 1 is the logit, class 0 its negation.
        predicted = ops.cast(logits[:, 0] > 0, "int32")
        chosen = ops.where(class_index < 0, predicted, class_index)
        scores = ops.where(chosen == 1, logits[:, 0], -logits[:, 0])
    else:
        predicted = ops.cast(ops.argmax(logits, axis=-1), "int32")
        chosen = ops.where(class_index < 0, predicted, class_index)
        scores = ops.take_along_axis(logits, ops.expand_dims(chosen, -1), axis=-1)[:, 0]
    return scores, chosen


def _gradients_tensorflow(probe, inputs, delta, class_index):
    import tensorflow as tf

    delta = tf.convert_to_tensor(delta)
    inputs = [tf.convert_to_tensor(array) for array in inputs]
    with tf.GradientTape() as tape:
        tape.watch(delta)
        features, logits = probe([*inputs, delta], training=False)
        scores, chosen = _select_scores(ops, logits, tf.convert_to_tensor(class_index))
        total = tf.reduce_sum(scores)
    gradients = tape.gradient(total, delta)
    return features.numpy(), gradients.numpy(), logits.numpy(), chosen.numpy()


def _gradients_jax(probe, inputs, delta, class_index):
    import jax

    # The jitted function lives on the probe (not in a global table), so it is freed with the model.
    gradient_fn = getattr(probe, "_covidct_jax_gradient_fn", None)
    if gradient_fn is None:

        def total_score(delta_value, trainable, non_trainable, input_values, classes):
            (features, logits), _ = probe.stateless_call(
                trainable, non_trainable, [*input_values, delta_value], training=False
            )
            scores, chosen = _select_scores(ops, logits, classes)
            return scores.sum(), (features, logits, chosen)

        gradient_fn = jax.jit(jax.grad(total_score, has_aux=True))
        probe._covidct_jax_gradient_fn = gradient_fn
    trainable = [variable.value for variable in probe.trainable_variables]
    non_trainable = [variable.value for variable in probe.non_trainable_variables]
    gradients, (features, logits, chosen) = gradient_fn(delta, trainable, non_trainable, list(inputs), class_index)
    return np.asarray(features), np.asarray(gradients), np.asarray(logits), np.asarray(chosen)


def _gradients_torch(probe, inputs, delta, class_index):
    import torch

    delta_tensor = ops.convert_to_tensor(delta).detach().requires_grad_(True)
    inputs = [ops.convert_to_tensor(array) for array in inputs]
    features, logits = probe([*inputs, delta_tensor], training=False)
    scores, chosen = _select_scores(ops, logits, ops.convert_to_tensor(class_index))
    (gradients,) = torch.autograd.grad(scores.sum(), delta_tensor)
    return (
        features.detach().cpu().numpy(),
        gradients.detach().cpu().numpy(),
        logits.detach().cpu().numpy(),
        chosen.detach().cpu().numpy(),
    )


_GRADIENTS = {"tensorflow": _gradients_tensorflow, "jax": _gradients_jax, "torch": _gradients_torch}


def _backend_gradients(probe, inputs, delta, class_index):
    backend = _keras().backend.backend()
    if backend not in _GRADIENTS:
        raise CovidctError(f"Grad-CAM supports the {', '.join(_GRADIENTS)} backends, not {backend!r}.")
    return _GRADIENTS[backend](probe, inputs, delta, class_index)


# ---------------------------------------------------------------------------------------------- the math


def cam_from_gradients(features: np.ndarray, gradients: np.ndarray, method: str = "gradcam") -> np.ndarray:
    """Combine feature maps and their gradients into raw class activation maps.

    Args:
        features: float (N, h, w, K) activations ``A`` of the chosen layer.
        gradients: float (N, h, w, K) gradients ``d score / d A``.
        method: ``"gradcam"``, ``"guided"`` or ``"gradcam++"`` (formulas in the module docstring).

    Returns:
        float32 (N, h, w) maps ``relu(sum_k w_k A_k)``, not yet resized or normalised.
    """
    if method not in METHODS:
        raise CovidctError(f"Unknown Grad-CAM method {method!r}.{did_you_mean(method, METHODS)} Use one of {METHODS}.")
    features = np.asarray(features, dtype=np.float64)
    gradients = np.asarray(gradients, dtype=np.float64)
    if method == "gradcam":
        weights = gradients.mean(axis=(1, 2))
    elif method == "guided":
        weights = ((features > 0) * (gradients > 0) * gradients).mean(axis=(1, 2))
    else:
        squared = gradients**2
        cubed = squared * gradients
        activation_sums = features.sum(axis=(1, 2), keepdims=True)
        denominator = 2.0 * squared + activation_sums * cubed
        safe = np.where(np.abs(denominator) > 1e-30, denominator, 1.0)
        alphas = np.where((gradients != 0) & (np.abs(denominator) > 1e-30), squared / safe, 0.0)
        weights = (np.maximum(gradients, 0.0) * alphas).sum(axis=(1, 2))
    cams = np.einsum("nhwk,nk->nhw", features, weights)
    cams = np.maximum(np.nan_to_num(cams, nan=0.0, posinf=0.0, neginf=0.0), 0.0)
    return cams.astype(np.float32)


def normalise_cam(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a raw map bilinearly to (height, width) and scale it to [0, 1] by its min and max.

    Args:
        cam: float (h, w) non-negative map.
        height: output height in pixels.
        width: output width in pixels.

    Returns:
        float32 (height, width) in [0, 1]; all zeros when the map has no contrast.
    """
    cam = np.nan_to_num(np.asarray(cam, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if cam.shape != (height, width):
        cam = cv2.resize(cam, (int(width), int(height)), interpolation=cv2.INTER_LINEAR)
    low, high = float(cam.min()), float(cam.max())
    spread = high - low
    # Float noise on a flat map must not be stretched into a pattern: require contrast relative to the peak.
    if not np.isfinite(spread) or spread <= 1e-6 * max(abs(high), 1e-30) or high <= 0:
        return np.zeros((height, width), dtype=np.float32)
    return np.clip((cam - low) / spread, 0.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------------------------------ public entry


def _fits(shape: tuple, expected: tuple) -> bool:
    return len(shape) == len(expected) and all(e is None or int(e) == int(a) for e, a in zip(expected, shape))


def _as_input_list(model, images, masks) -> list[np.ndarray]:
    """Turn ``images`` (array, tuple/list, dict) and optional ``masks`` into arrays in ``model.inputs`` order."""
    input_tensors = list(model.inputs)
    if isinstance(images, dict):
        names = [tensor.name for tensor in input_tensors]
        missing = [name for name in names if name not in images]
        if missing:
            raise CovidctError(
                f"Model {model.name!r} needs inputs {names}; the dict given lacks {missing} "
                f"(it has {sorted(images)})."
            )
        arrays = [images[name] for name in names]
    elif isinstance(images, (list, tuple)):
        arrays = list(images)
    else:
        arrays = [images]
    if masks is not None:
        arrays.append(masks)
    if len(arrays) != len(input_tensors):
        raise CovidctError(
            f"Model {model.name!r} takes {len(input_tensors)} input(s) "
            f"({', '.join(t.name for t in input_tensors)}) but {len(arrays)} were given. "
            "Pass a tuple (image, mask) or masks=... for two-input models."
        )
    result = []
    for tensor, array in zip(input_tensors, arrays):
        array = np.asarray(array, dtype=np.float32)
        expected = tuple(tensor.shape[1:])
        if array.ndim == len(expected) and _fits(array.shape, expected):
            array = array[None]  # one image
        elif array.ndim == len(expected) and expected[-1] == 1 and _fits(array.shape[1:], expected[:-1]):
            array = array[..., None]  # (N, H, W) grayscale -> (N, H, W, 1)
        elif array.ndim == len(expected) - 1 and expected[-1] == 1 and _fits(array.shape, expected[:-1]):
            array = array[None, ..., None]  # one (H, W) grayscale image
        if array.ndim != len(expected) + 1 or not _fits(array.shape[1:], expected):
            raise CovidctError(
                f"Input {tensor.name!r} of model {model.name!r} expects shape (N, "
                f"{', '.join(str(e) for e in expected)}), got {array.shape}. Images are channels-last "
                "float values in [0, 255] (the cache's uint8 range)."
            )
        result.append(array)
    if len({array.shape[0] for array in result}) != 1:
        raise CovidctError(f"All inputs need the same number of images, got {[a.shape[0] for a in result]}.")
    return result


def _class_indices(class_index, count: int, num_logits: int) -> np.ndarray:
    num_classes = 2 if num_logits == 1 else num_logits
    if class_index is None:
        return np.full(count, -1, dtype=np.int32)
    indices = np.asarray(class_index)
    if indices.ndim == 0:
        indices = np.full(count, int(indices), dtype=np.int32)
    if indices.shape != (count,) or not np.issubdtype(indices.dtype, np.integer):
        raise CovidctError(
            f"class_index must be None, an int or {count} ints (one per image); got {class_index!r}."
        )
    bad = indices[(indices < 0) | (indices >= num_classes)]
    if bad.size:
        raise CovidctError(
            f"class_index {int(bad[0])} is out of range for a model with {num_classes} classes "
            f"(valid: 0..{num_classes - 1})."
        )
    return indices.astype(np.int32)


def _feature_batch_shape(probe, batch: list) -> tuple:
    """Shape of the probed layer's output for ``batch``; models with free spatial sizes need a pass."""
    feature_shape = tuple(probe.outputs[0].shape[1:])
    count = batch[0].shape[0]
    if all(dim is not None for dim in feature_shape):
        return (count, *feature_shape)
    # A (count, 1, 1, K) zero delta broadcasts over the free spatial dimensions.
    broadcast = np.zeros((count, 1, 1, int(feature_shape[-1])), dtype=np.float32)
    features, _ = probe([*batch, broadcast], training=False)
    return tuple(int(dim) for dim in features.shape)


def layer_activations(model, images, layer_name: str, masks=None, batch_size: int = 16) -> np.ndarray:
    """Activations of one layer (nested paths allowed), e.g. to draw feature maps.

    Args:
        model: a Keras model.
        images: as for ``compute_heatmaps``.
        layer_name: layer or ``"outer/inner"`` path with a 4-D output.
        masks: optional second input.
        batch_size: images per forward pass.

    Returns:
        float32 (N, h, w, K).
    """
    keras = _keras()
    inputs = _as_input_list(model, images, masks)
    probe = _build_probe(model, _resolve(model, layer_name))
    outputs = []
    for start in range(0, inputs[0].shape[0], int(batch_size)):
        batch = [array[start : start + int(batch_size)] for array in inputs]
        delta = np.zeros(_feature_batch_shape(probe, batch), dtype=np.float32)
        features, _ = probe([*batch, delta], training=False)
        outputs.append(keras.ops.convert_to_numpy(features).astype(np.float32))
    return np.concatenate(outputs, axis=0)


def compute_cams(
    model,
    images,
    class_index=None,
    layer_name: str | None = None,
    method: str = "gradcam",
    batch_size: int = 16,
    masks=None,
    model_name: str | None = None,
) -> CamResult:
    """Grad-CAM heatmaps with the classes, logits and layer that produced them.

    Args: see ``compute_heatmaps``.

    Returns:
        A ``CamResult``.
    """
    if method not in METHODS:
        raise CovidctError(f"Unknown Grad-CAM method {method!r}.{did_you_mean(method, METHODS)} Use one of {METHODS}.")
    if int(batch_size) < 1:
        raise CovidctError(f"batch_size must be a positive integer, got {batch_size!r}.")
    inputs = _as_input_list(model, images, masks)
    count, height, width = inputs[0].shape[0], inputs[0].shape[1], inputs[0].shape[2]
    layer_path = layer_name or _default_layer(model, model_name)
    chain = _resolve(model, layer_path)
    layer_path = "/".join(layer.name for layer in chain)
    probe = _build_probe(model, chain)
    num_logits = int(probe.outputs[1].shape[-1])
    classes = _class_indices(class_index, count, num_logits)

    heatmaps = np.zeros((count, height, width), dtype=np.float32)
    chosen_all = np.zeros(count, dtype=np.int32)
    logits_all = np.zeros((count, num_logits), dtype=np.float32)
    for start in range(0, count, int(batch_size)):
        stop = min(start + int(batch_size), count)
        batch = [array[start:stop] for array in inputs]
        delta = np.zeros(_feature_batch_shape(probe, batch), dtype=np.float32)
        features, gradients, logits, chosen = _backend_gradients(probe, batch, delta, classes[start:stop])
        cams = cam_from_gradients(features, gradients, method)
        for offset, cam in enumerate(cams):
            heatmaps[start + offset] = normalise_cam(cam, height, width)
        chosen_all[start:stop] = chosen
        logits_all[start:stop] = logits
    return CamResult(heatmaps, chosen_all, logits_all, layer_path, method)


def compute_heatmaps(
    model,
    images,
    class_index=None,
    layer_name: str | None = None,
    method: str = "gradcam",
    batch_size: int = 16,
    masks=None,
    model_name: str | None = None,
) -> np.ndarray:
    """Grad-CAM heatmaps of a classifier, one per image, at the input's resolution.

    Args:
        model: a Keras classifier that outputs logits (Functional or Sequential; nested bases allowed).
        images: float/uint8 (N, H, W, C) (or (N, H, W) for one channel, or one (H, W, C) image) in the
            model's input range [0, 255]; for multi-input models a tuple/list in ``model.inputs`` order or
            a dict keyed by input name.
        class_index: None (each image's predicted class), an int for all images, or N ints.
        layer_name: layer to explain (path ``"outer/inner"`` inside nested models); default: the
            registry spec's ``gradcam_layer``, else the last layer with a 4-D output.
        method: ``"gradcam"`` (default), ``"guided"`` (the CT-COV19 study's variant) or ``"gradcam++"``.
        batch_size: images per forward/backward pass.
        masks: optional second input (e.g. the lung mask of the masked EfficientNet), appended after
            ``images``.
        model_name: registry name used to look up the default layer (default: ``model.name``).

    Returns:
        float32 (N, H, W) heatmaps in [0, 1].

    Raises:
        CovidctError: unknown method or layer (the message lists the layers with a 4-D output), inputs
            of the wrong shape, or an out-of-range class index.
    """
    return compute_cams(
        model, images, class_index, layer_name, method, batch_size, masks=masks, model_name=model_name
    ).heatmaps
