"""covidct.data: readers, HU windows, dataset registry, manifests, splits, audit, cache, downloads.

Import the submodules directly (``from covidct.data.datasets import load_dataset``); the names below
are the most used ones.
"""

from covidct.data.io import CTImage, read_image
from covidct.data.manifest import make_manifest, validate_manifest
from covidct.data.windows import WINDOWS, to_display, window_hu, window_stack

__all__ = [
    "CTImage",
    "WINDOWS",
    "make_manifest",
    "read_image",
    "to_display",
    "validate_manifest",
    "window_hu",
    "window_stack",
]
