"""Lesion evidence: infection-segmenter features per slice and patient, and a small model on them.

``covidct.evidence.features`` (burden, density, distribution, count), ``extract`` (applying a segmenter run
inside the classical lung mask), ``model`` (candidates and grouped-CV choice), ``run`` (the ``covidct evidence``
workflow) and ``cli``. Only ``covidct.cli`` imports this package.
"""
