"""Segmentation: image/mask data, metrics (Dice, IoU, HD95), per-image evaluation, prediction.

Segmenters are trained by the one training path, ``covidct.train.train(cfg)`` with ``task:
segmentation``; ``covidct.segment.train`` builds that config for ``covidct segment train``.
"""

from covidct.segment.metrics import dice, hausdorff95, iou, per_image_metrics, summarize

__all__ = ["dice", "hausdorff95", "iou", "per_image_metrics", "summarize"]
