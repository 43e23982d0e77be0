"""Preprocessing: body masks, background removal, lung masks, crops, and the named STAGES."""

from covidct.preprocess.stages import STAGES, StageOutput, get_stage, register_stage

__all__ = ["STAGES", "StageOutput", "get_stage", "register_stage"]
