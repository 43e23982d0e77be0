"""Evaluation: metrics, group bootstrap CIs, calibration, aggregation, plots, ``evaluate_run``.

The metric modules (``metrics``, ``bootstrap``, ``calibration``, ``aggregate``, ``report``, ``plots``) sit below
training, which scores validation with them; ``evaluator`` (``evaluate_run``: a finished run on a split or an
external dataset) reads a run's data and model through the training layer and sits above it. Importing a
metric module therefore must not import the evaluator: ``evaluate_run`` is looked up here on first use.
"""

__all__ = ["evaluate_run"]


def __getattr__(name: str):
    """``covidct.evaluate.evaluate_run`` (``covidct.evaluate.evaluator``), imported on first use."""
    if name == "evaluate_run":
        from covidct.evaluate.evaluator import (
            evaluate_run,  # above training: never imported by a metric module
        )

        return evaluate_run
    raise AttributeError(f"module 'covidct.evaluate' has no attribute {name!r}")
