"""Experiment names: ``<model>-<stage>-<setting>`` and the settings that name a run's recipe.

``setting`` is one of ``baseline``, ``classw`` (class weights "balanced"), ``dataaug`` (the stage's
augmentation), ``classw-dataaug``, and ``robust`` / ``classw-robust`` (the robust recipe's geometry +
appearance augmentation, ``training.augmentation: robust``). A run without a ``name`` is called by it
(``RunConfig.run_name``).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from covidct.errors import unknown_name_error

if TYPE_CHECKING:
    from covidct.config.schema import RunConfig, TrainingConfig

SETTINGS = ("baseline", "classw", "dataaug", "classw-dataaug", "robust", "classw-robust")


def setting_of(training: TrainingConfig) -> str:
    """``baseline`` / ``classw`` / ``dataaug`` / ``classw-dataaug`` from a training config."""
    classw = training.class_weight == "balanced"
    if training.augmentation == "robust":  # the robust recipe's geometry + appearance augmentation
        return "classw-robust" if classw else "robust"
    dataaug = training.augmentation not in ("none", None, False)
    return {(False, False): "baseline", (True, False): "classw", (False, True): "dataaug", (True, True): "classw-dataaug"}[
        (classw, dataaug)
    ]


def experiment_name(model: str, stage: str, setting: str) -> str:
    """The study's experiment name ``<model>-<stage>-<setting>``."""
    if setting not in SETTINGS:
        raise unknown_name_error("setting", setting, SETTINGS)
    return f"{model}-{stage}-{setting}"


def apply_setting(cfg: RunConfig, setting: str) -> RunConfig:
    """Return ``cfg`` with class weights and augmentation set by an experiment setting."""
    if setting not in SETTINGS:
        raise unknown_name_error("setting", setting, SETTINGS)
    training = dataclasses.replace(
        cfg.training,
        class_weight="balanced" if "classw" in setting else "none",
        augmentation="robust" if "robust" in setting else ("stage" if "dataaug" in setting else "none"),
    )
    return dataclasses.replace(cfg, training=training)
