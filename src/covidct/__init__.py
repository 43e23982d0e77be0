"""covidct: an open research toolkit for COVID-19 detection in chest CT.

Research software, not a medical device: nothing it outputs is a diagnosis.
"""

__version__ = "0.1.0"

DISCLAIMER = (
    "covidct is research software, not a diagnostic device. Its outputs must not be used "
    "for clinical decisions."
)

__all__ = ["__version__", "DISCLAIMER"]
