"""Regenerate the README figures in images/ (`make figures`). Only synthetic phantoms: never real data.

    python benchmarks/make_figures.py               # images/phantom_classes.png
    python benchmarks/make_figures.py --demo-run runs/demo   # + images/demo_gradcam.png from a demo run
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from covidct.data.phantom import plot_phantom_classes  # noqa: E402

IMAGES = Path(__file__).resolve().parents[1] / "images"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-run", default=None, help="a finished `covidct demo` run folder")
    args = parser.parse_args(argv)
    IMAGES.mkdir(exist_ok=True)
    plot_phantom_classes().savefig(IMAGES / "phantom_classes.png", dpi=80)
    print(f"wrote {IMAGES / 'phantom_classes.png'}")
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
