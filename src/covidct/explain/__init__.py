"""Explainability: Grad-CAM heatmaps, overlays, contact sheets, feature maps and the lung-focus score.

Heatmaps are computed (``gradcam``), drawn (``overlay``, ``activations``) and scored (``focus``) by
separate functions; ``runs.gradcam_run`` does all three for a run folder (``covidct gradcam``).
"""

from covidct.explain.activations import feature_maps
from covidct.explain.focus import (
    LUNG_FOCUS_MARGIN,
    LungFocusWarning,
    lung_area_fractions,
    lung_focus_score,
    lung_focus_scores,
    lung_focus_summary,
    lung_focus_threshold,
)
from covidct.explain.gradcam import (
    METHODS,
    CamResult,
    compute_cams,
    compute_heatmaps,
    conv_layer_names,
    layer_activations,
)
from covidct.explain.overlay import comparison_grid, contact_sheet, heatmap_rgb, overlay
from covidct.explain.runs import (
    GradcamOutput,
    LungFocusResult,
    gradcam_run,
    lung_focus_of_samples,
    run_lung_focus,
)

__all__ = [
    "LUNG_FOCUS_MARGIN",
    "METHODS",
    "CamResult",
    "GradcamOutput",
    "LungFocusResult",
    "LungFocusWarning",
    "compute_cams",
    "comparison_grid",
    "compute_heatmaps",
    "contact_sheet",
    "conv_layer_names",
    "feature_maps",
    "gradcam_run",
    "heatmap_rgb",
    "layer_activations",
    "lung_area_fractions",
    "lung_focus_of_samples",
    "lung_focus_score",
    "lung_focus_scores",
    "lung_focus_summary",
    "lung_focus_threshold",
    "overlay",
    "run_lung_focus",
]
