"""covid_models: the library behind the COVID-19 chest CT / X-ray screening dashboard.

Research use only: not a medical device, not for diagnosis.
"""
from __future__ import annotations

__version__ = "0.1.0"

RESEARCH_USE_NOTICE = (
    "Research use only. This tool is not a medical device and must not be used for diagnosis "
    "or treatment decisions. Its outputs are to be reviewed by a qualified radiologist."
)
