"""Evaluation: metrics, group bootstrap CIs, calibration, aggregation, plots, ``evaluate_run``."""

from covidct.evaluate.evaluator import evaluate_run

__all__ = ["evaluate_run"]
