"""The recipe candidates compared by grouped cross-validation, and the rounds that compare them.

Each candidate is a list of config overrides of ``BASE_CONFIG``. ``stage`` augmentation of the
``lungs-robust`` stage is the lungs crop's gentle geometry (±18° rotation, up to 10% zoom in, ±5% shift,
horizontal flip). Round ``recipes`` chose ``aug-e24`` over the previously shipped ``base``; round
``capacity`` (fixed before it ran) takes ``aug-e24`` as its base and tries more capacity
(``aug-e24-wide``: twice the filters, ~4x the convolution FLOPs), more pixels (``aug-e24-s192``) and
mirror test-time augmentation (``aug-e24-tta``: the fold models of ``aug-e24``, predictions averaged with
the horizontal flip). Round ``architectures`` (fixed after ``capacity`` kept ``aug-e24``, before it ran)
tries other registered architectures from scratch with the same recipe. Round ``learning-curve`` trains
``aug-e24`` on ~83% of each training fold (by whole groups) to ask whether more data of this kind helps.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

#: The shipped config the candidates override.
BASE_CONFIG = Path(str(resources.files("covidct") / "configs" / "sars-cov-2-ct" / "small_cnn-lungs-robust-baseline.yaml"))
AUG_E24 = ["training.augmentation=stage", "training.epochs=24"]
CANDIDATES: dict[str, list[str]] = {
    "base": [],
    "e24": ["training.epochs=24"],
    "aug": ["training.augmentation=stage"],
    "aug-e24": AUG_E24,
    "aug-e24-wide": AUG_E24 + ["model.kwargs={dropout_rate: 0.2, filters: [32, 64, 128, 256]}"],
    "aug-e24-s192": AUG_E24 + ["data.size=192"],
    "aug-e24-tta": AUG_E24 + ["evaluation.tta=true"],
    "aug-e24-resnet18": AUG_E24 + ["model.name=resnet18", "model.kwargs={dropout_rate: 0.2}"],
    "aug-e24-effb0": AUG_E24 + ["model.name=efficientnet_b0", "model.kwargs={dropout_rate: 0.2}"],
    "aug-e24-tsmall": AUG_E24 + ["model.name=transfusion_small", "model.kwargs={}"],
    "aug-e24-sub83": AUG_E24,
}
#: Candidates trained on a group subsample of each training fold (the held-out fold unchanged): a learning-curve
#: point. 0.83 ~ 1,749 / 2,121, the standard split's training rows over all non-test rows.
TRAIN_FRACTION: dict[str, float] = {"aug-e24-sub83": 0.83}
#: round -> (its base, its candidates in order).
ROUNDS: dict[str, tuple[str, list[str]]] = {
    "recipes": ("base", ["base", "e24", "aug", "aug-e24"]),
    "capacity": ("aug-e24", ["aug-e24", "aug-e24-wide", "aug-e24-s192", "aug-e24-tta"]),
    "architectures": ("aug-e24", ["aug-e24", "aug-e24-resnet18", "aug-e24-effb0", "aug-e24-tsmall"]),
    "learning-curve": ("aug-e24", ["aug-e24", "aug-e24-sub83"]),
}
#: Candidates that differ from another only in ``evaluation.*``: they reuse that candidate's trained fold
#: models (copied into their own run folders) and only predict differently.
EVALUATION_ONLY: dict[str, str] = {"aug-e24-tta": "aug-e24"}
#: The least pooled out-of-fold macro-F1 gain over the round's base for which another recipe replaces it.
MIN_GAIN = 0.01
#: The positive class of the binary scores.
POSITIVE = "COV"
