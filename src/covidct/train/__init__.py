"""Training: ``train(cfg)`` is the one place that compiles and fits (see ``covidct.train.trainer``)."""

from covidct.train.trainer import train

__all__ = ["train"]
