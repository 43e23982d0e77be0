"""Training recipes: the stage augmentation tables of the CT-COV19 study and the robust preset.

``training.augmentation`` names a recipe (``"stage"``: the stage's own factors; ``"robust"``: stronger
geometry plus the ``robust`` appearance preset of ``covidct.train.appearance``) or gives the factors as a
dict; ``augmentation_factors`` resolves it to the ``{rotation, zoom, translation, flip[, appearance]}`` the
batch augmenter applies, and refuses a stage without factors or an unknown appearance preset.
"""

from __future__ import annotations

from covidct.config import TrainingConfig, check_augmentation_value
from covidct.errors import CovidctError
from covidct.train.appearance import resolve_appearance

# The CT-COV19 study's stage-specific augmentation: (rotation, zoom, translation) factors of
# Keras' RandomRotation, RandomZoom (negative = zoom in) and RandomTranslation, plus RandomFlip
# horizontal. Tighter crops get gentler augmentation so the lungs stay in the frame.
STAGE_AUGMENTATION: dict[str, tuple[float, float, float]] = {
    "original": (0.1, -0.2, 0.1),
    "nobackg": (0.1, -0.2, 0.1),
    "lungs-nocrop": (0.1, -0.2, 0.15),
    "crop": (0.07, -0.1, 0.07),
    "lungs": (0.05, -0.1, 0.05),
}
DEFAULT_AUGMENTATION = STAGE_AUGMENTATION["original"]
# Stages that are not in the study share the framing of one that is, and take its factors: the lung crops
# (three windows, intensity-standardised, rank-equalised) are framed like ``lungs``, the whole-slice pair like
# ``original``, the body-crop halves like ``crop``. A stage in neither table has no "stage" augmentation: the
# config must give the factors itself (``training.augmentation: {rotation: ..., zoom: ..., translation: ...}``).
STAGE_AUGMENTATION_LIKE: dict[str, str] = {
    "lungs-3window": "lungs",
    "lungs-robust": "lungs",
    "lungs-hist": "lungs",
    "lungs-harmonized": "lungs",
    "masked-pair": "original",
    "halves": "crop",
}
# training.augmentation: robust: ±29° rotation, ±15% zoom (crop/zoom), ±5% shift, flips,
# and the "robust" appearance preset (blur/sharpen, noise, gamma, contrast, JPEG).
ROBUST_AUGMENTATION = {"rotation": 0.08, "zoom": 0.15, "translation": 0.05, "flip": True, "appearance": "robust"}


def augmentation_factors(training: TrainingConfig, stage: str) -> dict | None:
    """Resolve ``training.augmentation`` to ``{rotation, zoom, translation, flip}`` or None (off)."""
    aug = training.augmentation
    if aug in ("none", None, False):
        return None
    if aug == "stage":
        like = STAGE_AUGMENTATION_LIKE.get(stage, stage)
        if like not in STAGE_AUGMENTATION:
            raise CovidctError(
                f"training.augmentation: 'stage' has no factors for stage {stage!r} (known: "
                f"{sorted(STAGE_AUGMENTATION) + sorted(STAGE_AUGMENTATION_LIKE)}). Give them in the config, e.g. "
                "training.augmentation: {rotation: 0.05, zoom: -0.1, translation: 0.05}, or add the stage to "
                "covidct.train.recipes.STAGE_AUGMENTATION_LIKE."
            )
        rotation, zoom, translation = STAGE_AUGMENTATION[like]
        return {"rotation": rotation, "zoom": zoom, "translation": translation, "flip": True}
    if aug == "robust":
        # The robust recipe: stronger geometry plus appearance (covidct.train.appearance "robust" preset).
        return dict(ROBUST_AUGMENTATION)
    check_augmentation_value(aug)  # what is left: a dict of the known keys
    factors = {
        "rotation": float(aug.get("rotation", 0.0)),
        "zoom": float(aug.get("zoom", 0.0)),
        "translation": float(aug.get("translation", 0.0)),
        "flip": bool(aug.get("flip", True)),
    }
    if aug.get("appearance") not in (None, "none", False):
        resolve_appearance(aug["appearance"])  # raises on unknown presets/layers
        factors["appearance"] = aug["appearance"]
    return factors
