"""Which layers train in each phase of transfer learning: the head, the top blocks or all, BatchNorm frozen or not.

A pretrained classifier is fine-tuned in phases (``model.freeze``): first the head alone on a frozen backbone,
then the backbone too. ``model.finetune`` says how much of the backbone the second phase opens:

* ``"all"``: every layer;
* ``"top:N"``: the last ``N`` blocks of the backbone and every layer after them (EfficientNet's ``top_conv``
  / ``top_bn``); the layers before stay frozen.

A block is a run of layers sharing a name prefix ``block<stage><letter>_`` (EfficientNet, EfficientNet-Lite)
or ``conv<stage>_block<n>_`` (keras.applications ResNet); :func:`backbone_blocks` lists them in graph order.

In Keras 3 a BatchNormalization layer whose ``trainable`` is False runs in inference mode: it normalises
with its moving statistics and does not update them. Frozen layers therefore keep the ImageNet statistics.
``model.freeze_batchnorm: true`` keeps every backbone BatchNorm layer that way during fine-tuning as well
(the usual practice on small datasets: batch statistics of 32 CT slices replace ImageNet's otherwise).

Head layers (``logits`` and names starting ``head``) always train.
"""

from __future__ import annotations

import re

from keras import layers

from covidct.errors import CovidctError

FINETUNE_HELP = "'all' or 'top:N' (N >= 1: the last N backbone blocks and the layers after them)"
_BLOCK = re.compile(r"^(block\d+[a-z]+|conv\d+_block\d+)_")


def is_head_layer(layer) -> bool:
    """Head layers stay trainable in every phase: ``logits`` and names starting ``head``."""
    return layer.name == "logits" or layer.name.startswith("head")


def parse_finetune(value, source: str = "model.finetune") -> int | None:
    """``"all"`` → None; ``"top:N"`` → N.

    Raises:
        CovidctError: any other value (naming ``source`` and the accepted forms).
    """
    text = str(value).strip()
    if text == "all":
        return None
    match = re.fullmatch(r"top:(\d+)", text)
    if match is None or int(match.group(1)) < 1:
        raise CovidctError(f"{source}: {value!r} is not a fine-tuning scope; use {FINETUNE_HELP}, e.g. 'top:8'.")
    return int(match.group(1))


def block_name(layer) -> str | None:
    """The backbone block a layer belongs to (``block6a``, ``conv5_block3``), or None."""
    match = _BLOCK.match(layer.name)
    return match.group(1) if match else None


def backbone_blocks(model) -> list[str]:
    """The model's backbone blocks in graph order (each listed once)."""
    seen: list[str] = []
    for layer in model.layers:
        name = block_name(layer)
        if name is not None and name not in seen:
            seen.append(name)
    return seen


def _first_open_index(model, top: int | None) -> int:
    """Index into ``model.layers`` of the first layer that ``top:N`` opens (0 for ``all``)."""
    if top is None:
        return 0
    blocks = backbone_blocks(model)
    if not blocks:
        raise CovidctError(
            f"Model {model.name!r} has no named backbone blocks (block<stage><letter>_..., conv<stage>_block<n>_...), "
            "so model.finetune 'top:N' cannot tell its top blocks; use model.finetune: all."
        )
    if top > len(blocks):
        raise CovidctError(
            f"model.finetune 'top:{top}': model {model.name!r} has only {len(blocks)} blocks "
            f"({blocks[0]} … {blocks[-1]}); use top:{len(blocks)} or 'all'."
        )
    first = blocks[-top]
    return next(i for i, layer in enumerate(model.layers) if block_name(layer) == first)


def set_phase_trainable(model, backbone: bool, finetune="all", freeze_batchnorm: bool = False) -> dict:
    """Set ``trainable`` on every layer with weights for one phase.

    Args:
        model: a Functional classifier (flat: backbone layers are top-level layers).
        backbone: False for the frozen phase (only the head trains), True for fine-tuning.
        finetune: ``"all"`` or ``"top:N"`` (see the module docstring); used when ``backbone`` is True.
        freeze_batchnorm: keep backbone BatchNorm layers frozen (inference mode) while fine-tuning.

    Returns:
        ``{"trainable": [...], "frozen": [...]}``: names of the layers with weights.
    """
    start = _first_open_index(model, parse_finetune(finetune)) if backbone else len(model.layers)
    out: dict = {"trainable": [], "frozen": []}
    for index, layer in enumerate(model.layers):
        if not layer.weights:
            continue
        if is_head_layer(layer):
            trainable = True
        else:
            trainable = index >= start and not (freeze_batchnorm and isinstance(layer, layers.BatchNormalization))
        layer.trainable = trainable
        out["trainable" if trainable else "frozen"].append(layer.name)
    return out


__all__ = ["backbone_blocks", "block_name", "is_head_layer", "parse_finetune", "set_phase_trainable"]
