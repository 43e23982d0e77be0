"""Batch prediction of slice images at any scale: ``covidct predict`` (``covidct.predict.batch``)."""
