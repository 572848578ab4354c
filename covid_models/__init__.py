"""covid_models: the library behind the COVID-19 chest CT / X-ray screening dashboard.

Research use only: not a medical device, not for diagnosis.
"""
from __future__ import annotations

from covid_models.runtime import set_wait_policy

set_wait_policy()  # before any submodule imports torch: see covid_models.runtime

__version__ = "0.1.0"

RESEARCH_USE_NOTICE = (
    "Research use only. This tool is not a medical device and must not be used for diagnosis "
    "or treatment decisions. Its outputs are to be reviewed by a qualified radiologist."
)
