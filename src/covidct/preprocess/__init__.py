"""Preprocessing: body masks, background removal, lung masks, crops, and the named STAGES."""

from covidct.preprocess import harmonize, pipelines, standardize  # noqa: F401  (register the named stages)
from covidct.preprocess.body import body_mask, crop_to_body, remove_background
from covidct.preprocess.lungs import check_lung_mask, lung_mask
from covidct.preprocess.stages import STAGES, StageOutput, get_stage, register_stage

__all__ = [
    "STAGES",
    "StageOutput",
    "body_mask",
    "check_lung_mask",
    "crop_to_body",
    "get_stage",
    "lung_mask",
    "register_stage",
    "remove_background",
]
