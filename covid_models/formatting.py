"""Numbers and class names as the pages, reports and scripts write them: one formatter, so a probability or a class
reads the same everywhere."""
from __future__ import annotations

import math


def percent(value: float | None, digits: int = 1) -> str:
    """A probability or share in [0, 1] as a percentage ("12.3%"); "n/a" when there is none (None or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}%}"


CLASS_NAMES = {"covid": "COVID-19", "non_covid": "non-COVID"}


def class_name(label: str) -> str:
    """A class as people write it ("covid" -> "COVID-19")."""
    return CLASS_NAMES.get(label, label.replace("_", " "))
