"""Sizes and durations written the way PostgreSQL writes its settings.

A size is a number of bytes or a number with a unit: ``B``, ``kB``, ``MB``, ``GB``,
``TB``, each 1024 times the one before (``"64kB"``, ``"1GB"``, ``"1.5MB"``). A duration
is a number of seconds or a number with a unit: ``us``, ``ms``, ``s``, ``min``, ``h``,
``d`` (``"500ms"``, ``"2min"``). PostgreSQL spells units case-sensitively; operators
write ``64KB`` and ``1gb`` just as often and mean the same thing, so case is ignored.
"""

from __future__ import annotations

import math
import re

__all__ = ["DURATION_UNITS", "SIZE_UNITS", "parse_duration", "parse_size"]

SIZE_UNITS: dict[str, int] = {
    "B": 1,
    "kB": 1024,
    "MB": 1024**2,
    "GB": 1024**3,
    "TB": 1024**4,
}
DURATION_UNITS: dict[str, float] = {
    "us": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}

_NUMBER_UNIT = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*")


def _number_and_unit(text: str, units: dict[str, float] | dict[str, int]) -> float:
    match = _NUMBER_UNIT.fullmatch(text)
    if match is None:
        raise ValueError(f"not a number with an optional unit: {text!r}")
    number, unit = match.groups()
    folded = {name.lower(): factor for name, factor in units.items()}
    factor = folded.get(unit.lower(), 0) if unit else 1
    if not factor:
        raise ValueError(f"unknown unit {unit!r}")
    result = float(number) * factor
    # Thousands of digits parse as inf, which no caller can use (round() raises on it).
    if not math.isfinite(result):
        raise ValueError(f"too large: {text!r}")
    return result


def parse_size(value: object) -> int:
    """Return the number of bytes in ``value``: a non-negative int, or a string such as
    ``"1024"``, ``"64kB"`` or ``"1.5GB"`` (rounded to the nearest byte).

    Raises ValueError for anything else, including negative numbers and booleans.
    """
    if isinstance(value, bool):
        raise ValueError("a boolean is not a size")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        return round(_number_and_unit(value, SIZE_UNITS))
    raise ValueError(f"not a size: {value!r}")


def parse_duration(value: object) -> float:
    """Return the number of seconds in ``value``: a non-negative finite int or float, or a
    string such as ``"5"``, ``"500ms"`` or ``"2min"``.

    Raises ValueError for anything else, including negative, infinite or NaN numbers and
    booleans.
    """
    if isinstance(value, bool):
        raise ValueError("a boolean is not a duration")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:
            raise ValueError(f"too large: {value!r}") from None
    elif isinstance(value, str):
        seconds = _number_and_unit(value, DURATION_UNITS)
    else:
        raise ValueError(f"not a duration: {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"not a finite non-negative duration: {value!r}")
    return seconds
