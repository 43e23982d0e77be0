"""Segmentation: metrics (Dice, IoU, HD95), training of lung / infection segmenters, prediction."""

from covidct.segment.metrics import dice, hausdorff95, iou, per_image_metrics, summarize

__all__ = ["dice", "hausdorff95", "iou", "per_image_metrics", "summarize"]
