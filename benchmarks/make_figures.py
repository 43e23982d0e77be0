"""Regenerate the README figures in images/ (`make figures`). Only synthetic phantoms and recorded scores: never
real images.

    python benchmarks/make_figures.py               # images/phantom_classes.png, images/infection_dice_recipes.png
    python benchmarks/make_figures.py --demo-run runs/demo   # + images/demo_gradcam.png from a demo run
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from covidct.data.phantom import plot_phantom_classes  # noqa: E402
from covidct.evaluate.plots import plot_intervals  # noqa: E402

IMAGES = Path(__file__).resolve().parents[1] / "images"
RESULTS = Path(__file__).resolve().parent / "results"

#: Issue 4: every finished 5-fold CV of the infection U-Net on MedSeg (benchmarks/results/), in the order run.
INFECTION_RECIPES = [
    ("64 px, base 8, whole slices (session 1)", "segmentation_infection_unet.json"),
    ("128 px, base 16, whole slices (session 2)", "segmentation_infection_unet_128px_b16_masked.json"),
    ("128 px lung crops (session 6)", "segmentation_infection_unet_128px_b16_masked_lungcrop.json"),
    ("160 px lung crops (session 7)", "segmentation_infection_unet_160px_b16_masked_lungcrop.json"),
    ("128 px lung crops, fixed budget (session 7)", "segmentation_infection_unet_128px_b16_masked_lungcrop_fixedbudget.json"),
    ("128 px lung crops, Genesis-pretrained (session 8)",
     "segmentation_infection_unet_128px_b16_masked_lungcrop_unet-pretrain-genesis-sarscov2.json"),
    ("256 px, base 32, lung crops, GPU (session 9)", "segmentation_infection_unet_256px_b32_masked_lungcrop_h200_s9.json"),
    ("256 px, base 32, whole slices, GPU (session 9)", "segmentation_infection_unet_256px_b32_masked_h200_s9.json"),
    ("same, other fold partition (session 9)", "segmentation_infection_unet_256px_b32_masked_seed1_h200_s9.json"),
]


def plot_infection_recipes():
    """Forest plot of the issue-4 CV Dice per recipe (mean per-slice Dice, 95% bootstrap CI over groups)."""
    rows = [(label, json.loads((RESULTS / name).read_text())["metrics"]["dice"]) for label, name in INFECTION_RECIPES]
    return plot_intervals(
        [label for label, _ in rows], [d["mean"] for _, d in rows], [d["low"] for _, d in rows],
        [d["high"] for _, d in rows], target=0.70, xlabel="Dice, 5-fold grouped CV on MedSeg (100 slices, 20 groups)",
        title="Infection U-Net recipes: mean Dice and 95% CI",
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-run", default=None, help="a finished `covidct demo` run folder")
    args = parser.parse_args(argv)
    IMAGES.mkdir(exist_ok=True)
    plot_phantom_classes().savefig(IMAGES / "phantom_classes.png", dpi=80)
    print(f"wrote {IMAGES / 'phantom_classes.png'}")
    plot_infection_recipes().savefig(IMAGES / "infection_dice_recipes.png", dpi=80, bbox_inches="tight")
    print(f"wrote {IMAGES / 'infection_dice_recipes.png'}")
    if args.demo_run:
        sheet = Path(args.demo_run) / "gradcam" / "contact_sheet.png"
        if not sheet.is_file():
            print(f"{sheet} not found: run `covidct demo` first", file=sys.stderr)
            return 1
        shutil.copyfile(sheet, IMAGES / "demo_gradcam.png")
        print(f"wrote {IMAGES / 'demo_gradcam.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
