"""Synthetic chest CT phantoms in Hounsfield units, with exact masks.

The phantoms are the built-in ``phantom`` dataset and the fixture of every unit test: they look like
axial chest CT slices closely enough for preprocessing, lung masks, classifiers and Grad-CAM to be
exercised, and every structure comes with its exact mask, so tests can assert numbers.

What a slice holds (values in HU, before noise):

- air outside the body: -1000; a patient table below the body (a foam core near -500 between two
  thin carbon shells near +150; the patient lies supine, so the table is posterior, at the image bottom);
- the body: soft tissue from 0 to 60 HU under a subcutaneous fat ring near -100 HU, the heart (~+40 HU)
  in the anterior mediastinum, a trachea (air, with a soft-tissue wall) at the top of the mediastinum;
- bone 400..1000 HU: the spine (cortical shell ~900 HU around marrow ~500 HU, spinal canal ~+20 HU)
  at the posterior midline, ribs as small ellipses around the lungs, the sternum at the anterior midline;
- two lungs as deformed ellipses, parenchyma about -850 HU (slightly denser posteriorly, as in a supine
  patient), with vessels: small bright dots and branches (~+40 HU) blended in by partial volume;
- Gaussian noise over the whole image (standard deviation 8..25 HU, one value per patient).

**Orientation (radiological convention).** Rows run anterior (row 0) to posterior; columns run from
the patient's right (column 0) to the patient's left. So the patient's *right* lung appears on the
*image left*: ``right_lung`` occupies small column indices and carries lung label 1; ``left_lung`` is on
the image right and carries label 2 (``lung_labels``: 0 background, 1 right lung, 2 left lung).
Volumes stack axial slices along axis 0 from inferior (index 0, feet side) to superior (head side).

Classes (``CLASSES``):

- ``Normal``: no lesion.
- ``COV``: COVID-19 pattern: bilateral, peripheral (subpleural), patchy ground-glass opacities of
  -500..-300 HU, several blobs in each lung, more often posterior and (in volumes) in the lower lobes.
  Every 2D ``COV`` slice has lesion pixels in both lungs.
- ``OtherPneumonia``: dense consolidation of -100..+40 HU in one lung only (unilateral), either lobar
  (the lung region beyond a fissure-like plane) or focal (one or two large blobs), in 60% of cases
  with air bronchograms (thin air tubes of about -870 HU inside the consolidation).

Lesions are clipped to the lung masks (``lesion`` is a subset of the lungs), the lungs lie inside the
body and never overlap bone, the heart or the trachea. Everything is a deterministic function of the
seed (a ``numpy.random.Generator``): the same seed gives the same arrays on any machine.

Example::

    from covidct.data.phantom import make_dataset, make_slice
    one = make_slice("COV", size=256, seed=3)          # PhantomSlice
    data = make_dataset(n=600, size=128, seed=0)       # PhantomSet, 120 patients x 5 slices
"""

from covidct.data.phantom.containers import (
    AIR_HU,
    CLASSES,
    FIELD_OF_VIEW_MM,
    LEFT_LUNG,
    RIGHT_LUNG,
    PhantomSet,
    PhantomSlice,
    PhantomVolume,
)
from covidct.data.phantom.files import plot_phantom_classes, write_dataset, write_phantom_volumes
from covidct.data.phantom.generate import make_dataset, make_slice, make_volume

__all__ = [
    "AIR_HU",
    "CLASSES",
    "FIELD_OF_VIEW_MM",
    "LEFT_LUNG",
    "RIGHT_LUNG",
    "PhantomSet",
    "PhantomSlice",
    "PhantomVolume",
    "make_dataset",
    "make_slice",
    "make_volume",
    "plot_phantom_classes",
    "write_dataset",
    "write_phantom_volumes",
]
