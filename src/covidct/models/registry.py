"""The model registry: one name per model, one spec per name, one builder signature.

Every builder has the signature ``builder(input_shape, num_classes, weights=None, **kwargs)`` and
returns an uncompiled, Functional ``keras.Model`` that outputs logits and names every layer.
Inputs are channels-last float tensors in the display range [0, 255] (the cache's uint8 values);
any scaling a network needs (``Rescaling(1/255)``, ImageNet normalisation) lives *inside* the
model, so training, prediction and Grad-CAM can never disagree about preprocessing.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

from covidct.errors import CovidctError, did_you_mean, unknown_name_error

TASKS = ("classification", "segmentation", "volume")


@dataclass(frozen=True)
class ModelSpec:
    """What the toolkit knows about a registered model.

    Attributes:
        name: registry name, e.g. ``"transfusion_tiny"``.
        builder: ``builder(input_shape, num_classes, weights=None, **kwargs) -> keras.Model``.
        task: ``"classification"`` (2D slices), ``"segmentation"`` or ``"volume"`` (3D).
        family: file/family name, e.g. ``"transfusion"``.
        input_shape: default input shape, channels last, e.g. ``(224, 224, 1)``.
        gradcam_layer: name of the layer Grad-CAM uses by default (None for segmenters).
        reference: paper or source the architecture follows.
        imagenet_weights: whether ``weights="imagenet"`` is available.
        inputs: names of the model inputs, ``("image",)`` or ``("image", "mask")``.
        description: one line for ``covidct models``.
        defaults: builder keyword defaults applied by ``build_model`` (overridden by its ``**kwargs``).
        test_input_shape: a small input shape the test suite builds the model at (defaults to
            ``input_shape``); models whose valid convolutions need large inputs set it to their minimum.
    """

    name: str
    builder: Callable
    task: str
    family: str
    input_shape: tuple
    gradcam_layer: str | None = None
    reference: str = ""
    imagenet_weights: bool = False
    inputs: tuple = ("image",)
    description: str = ""
    defaults: dict = field(default_factory=dict)
    test_input_shape: tuple | None = None

    @property
    def channels(self) -> int:
        return int(self.input_shape[-1])


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add ``spec`` to the registry; a second model with the same name is an error."""
    if spec.task not in TASKS:
        raise CovidctError(f"Model {spec.name!r}: task must be one of {TASKS}, got {spec.task!r}.")
    if spec.name in _REGISTRY:
        raise CovidctError(f"A model named {spec.name!r} is already registered.")
    _REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> ModelSpec:
    """Return the spec of a registered model; unknown names raise with close matches."""
    if name not in _REGISTRY:
        raise unknown_name_error("model", name, _REGISTRY)
    return _REGISTRY[name]


def list_models(task: str | None = None, family: str | None = None) -> list[str]:
    """Names of registered models, sorted, optionally filtered by task and family."""
    return sorted(
        name
        for name, spec in _REGISTRY.items()
        if (task is None or spec.task == task) and (family is None or spec.family == family)
    )


def build_model(name: str, input_shape: tuple | None = None, num_classes: int = 2, weights=None, **kwargs):
    """Build a registered model.

    Args:
        name: registry name (see ``list_models()``).
        input_shape: channels-last input shape; defaults to the spec's.
        num_classes: number of output logits (1 for a binary segmentation mask).
        weights: None (random init), ``"imagenet"`` where the spec allows it, or a path to a weights file.
        **kwargs: builder-specific options (e.g. ``freeze_backbone=True``).

    Returns:
        An uncompiled Functional ``keras.Model`` that outputs logits.
    """
    spec = get_spec(name)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise CovidctError(f"num_classes must be a positive integer, got {num_classes!r}.")
    if weights == "imagenet" and not spec.imagenet_weights:
        raise CovidctError(f"Model {name!r} has no ImageNet weights; use weights=None or a weights file path.")
    shape = tuple(input_shape) if input_shape is not None else tuple(spec.input_shape)
    merged = {**spec.defaults, **kwargs}
    _check_builder_options(spec, merged)
    return spec.builder(shape, num_classes, weights=weights, **merged)


def builder_options(name: str) -> dict:
    """The builder-specific keyword options of a model and their defaults (spec defaults applied).

    Keyword parameters whose names start with ``_`` are bound by the family (the variant row) and are
    not user options.
    """
    spec = get_spec(name)
    params = inspect.signature(spec.builder).parameters
    fixed = {"input_shape", "num_classes", "weights"}
    options = {
        key: p.default
        for key, p in params.items()
        if key not in fixed and not key.startswith("_") and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }
    options.update(spec.defaults)
    return options


def _check_builder_options(spec: ModelSpec, options: dict) -> None:
    """Unknown keyword options are a ``CovidctError`` with close matches, not a TypeError deep inside."""
    params = inspect.signature(spec.builder).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    known = builder_options(spec.name)
    for key in options:
        if key not in known:
            listing = ", ".join(sorted(known)) or "none"
            raise CovidctError(
                f"Model {spec.name!r} has no option {key!r}.{did_you_mean(key, known)} Its options: {listing}."
            )
