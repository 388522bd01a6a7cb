"""Length units as written by EM software, converted to nanometres."""

from __future__ import annotations

import math

#: Nanometres per unit. Keys are lower-case; the micro sign appears as U+00B5 and U+03BC, and
#: ImageJ writes it escaped (``\\u00B5m``) in some versions.
NM_PER_UNIT: dict[str, float] = {
    "pm": 1e-3,
    "picometer": 1e-3,
    "picometre": 1e-3,
    "a": 0.1,
    "å": 0.1,
    "\u212b": 0.1,  # ANGSTROM SIGN
    "angstrom": 0.1,
    "angstroms": 0.1,
    "nm": 1.0,
    "nanometer": 1.0,
    "nanometre": 1.0,
    "nanometers": 1.0,
    "um": 1e3,
    "µm": 1e3,
    "\u03bcm": 1e3,
    "\\u00b5m": 1e3,
    "micron": 1e3,
    "microns": 1e3,
    "micrometer": 1e3,
    "micrometre": 1e3,
    "micrometers": 1e3,
    "mm": 1e6,
    "millimeter": 1e6,
    "millimetre": 1e6,
    "cm": 1e7,
    "centimeter": 1e7,
    "m": 1e9,
    "meter": 1e9,
    "metre": 1e9,
}


def nm_per_unit(unit: str | None) -> float | None:
    """Nanometres in one ``unit``; None when the unit is missing or not a length.

    Examples:
        >>> nm_per_unit("micron"), nm_per_unit("Angstrom"), nm_per_unit("pixel")
        (1000.0, 0.1, None)
    """
    if unit is None:
        return None
    return NM_PER_UNIT.get(str(unit).strip().lower())


def to_nm(value: float, unit: str | None) -> float | None:
    """``value`` in ``unit`` as nanometres; None if the unit is unknown or the value not positive.

    Examples:
        >>> to_nm(0.004, "um")
        4.0
    """
    factor = nm_per_unit(unit)
    if factor is None:
        return None
    nm = float(value) * factor
    if not math.isfinite(nm) or nm <= 0:
        return None
    return round_sig(nm)


def round_sig(value: float, digits: int = 10) -> float:
    """Round away float noise from unit conversion (0.004 um * 1000 -> 4.0, not 4.000000000000001).

    Examples:
        >>> round_sig(4.000000000000001)
        4.0
    """
    if value == 0 or not math.isfinite(value):
        return value
    return float(f"{value:.{digits}g}")
