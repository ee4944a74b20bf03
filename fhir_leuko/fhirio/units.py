"""Unit normalisation (docs/codes.md "Units").

Counts go to 10^9/L, percent to %, haemoglobin to g/dL, temperature to Celsius, B12 to pg/mL,
folate to ng/mL. Count-versus-percent is decided by the LOINC code (the analyte), never by
the unit string: ``K/uL`` is kelvin per microlitre in strict UCUM and ``G/L`` gauss per litre,
yet both are common lab spellings of 10^9/L. Unknown units are reported, never guessed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

from fhir_leuko.clinical.model import ANALYTE_LABEL, Analyte

Converter = Callable[[float], float]


def _scale(factor: float) -> Converter:
    return lambda v: v * factor


def _f_to_c(v: float) -> float:
    return (v - 32.0) * 5.0 / 9.0


def _same(v: float) -> float:
    return v


def _key(unit: str) -> str:
    """Fold spelling noise: spaces, the two micro signs, case."""
    return unit.strip().replace(" ", "").replace("\u00b5", "u").replace("\u03bc", "u").lower()


def _table(spec: Mapping[Converter, tuple[str, ...]]) -> dict[str, Converter]:
    return {_key(u): conv for conv, units in spec.items() for u in units}


# Counts: x1 and x0.001 spellings from codes.md, plus a few unambiguous variants.
_PER_UL = _scale(0.001)
COUNT_UNITS = _table(
    {
        _same: (
            "10*9/L",
            "10^9/L",
            "10*3/uL",
            "10^3/uL",
            "10*3/mm3",
            "/nL",
            "K/uL",
            "k/uL",
            "x10E3/uL",
            "10E3/uL",
            "x10^3/uL",
            "thou/uL",
            "th/cumm",
            "Tsd/\u00b5l",
            "Tsd/ul",
            "G/L",
            "giga/L",
            # unambiguous variants of the above
            "x10*9/L",
            "x10^9/L",
            "10E9/L",
            "x10E9/L",
            "x10*3/uL",
            "10^3/mm3",
        ),
        _PER_UL: (
            "/uL",
            "/mm3",
            "{cells}/uL",
            "cells/uL",
            "cells/mm3",
            "/cumm",
            "cells/mcL",
            "/\u00b5l",
        ),
    }
)
PERCENT_UNITS = _table({_same: ("%", "percent")})
FRACTION_UNITS = _table({_scale(100.0): ("1",)})  # 0.47 = 47 %
HB_UNITS = _table({_same: ("g/dL",), _scale(0.1): ("g/L",), _scale(1 / 0.6206): ("mmol/L",)})
MCV_UNITS = _table({_same: ("fL", "um3")})
TEMP_UNITS = _table(
    {_same: ("Cel", "\u00b0C", "degC", "C"), _f_to_c: ("[degF]", "\u00b0F", "degF", "F")}
)
B12_UNITS = _table({_same: ("pg/mL", "ng/L"), _scale(1.355): ("pmol/L",)})
FOLATE_UNITS = _table({_same: ("ng/mL", "ug/L"), _scale(1 / 2.266): ("nmol/L",)})

_PERCENT_ANALYTES = (
    Analyte.NEUTROPHIL_PERCENT,
    Analyte.BAND_PERCENT,
    Analyte.LYMPHOCYTE_PERCENT,
)

UNITS_FOR: Mapping[Analyte, dict[str, Converter]] = {
    **dict.fromkeys(
        (Analyte.WBC, Analyte.ANC, Analyte.BAND_COUNT, Analyte.LYMPHOCYTE_COUNT, Analyte.PLATELETS),
        COUNT_UNITS,
    ),
    **dict.fromkeys(_PERCENT_ANALYTES, {**PERCENT_UNITS, **FRACTION_UNITS}),
    Analyte.HAEMOGLOBIN: HB_UNITS,
    Analyte.MCV: MCV_UNITS,
    Analyte.BODY_TEMPERATURE: TEMP_UNITS,
    Analyte.VITAMIN_B12: B12_UNITS,
    Analyte.FOLATE: FOLATE_UNITS,
}


class UnitProblem(ValueError):
    """The unit is unknown, or the UCUM code and the display unit disagree."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@functools.lru_cache(maxsize=1024)
def converter_for(analyte: Analyte, ucum_code: str | None, unit: str | None) -> Converter:
    """Pick the conversion for a quantity: prefer the UCUM ``code``, fall back to ``unit``.

    If both are understood and mean different things, do not guess (codes.md).
    """
    table = UNITS_FOR[analyte]
    by_code = table.get(_key(ucum_code)) if ucum_code else None
    by_unit = table.get(_key(unit)) if unit else None
    if by_code is not None and by_unit is not None and by_code is not by_unit:
        raise UnitProblem(
            "unit-conflict",
            f"UCUM code '{ucum_code}' and unit '{unit}' disagree for {ANALYTE_LABEL[analyte]}",
        )
    conv = by_code or by_unit
    if conv is None:
        given = [u for u in (ucum_code, unit) if u]
        shown = " / ".join(f"'{u}'" for u in dict.fromkeys(given)) or "no unit"
        raise UnitProblem(
            "unknown-unit", f"unit {shown} is not understood for {ANALYTE_LABEL[analyte]}"
        )
    return conv


def normalise(analyte: Analyte, value: float, ucum_code: str | None, unit: str | None) -> float:
    """The value in the canonical unit of its analyte (see ``CANONICAL_UNITS``)."""
    return converter_for(analyte, ucum_code, unit)(value)


def c_to_f(celsius: float) -> float:
    """Inverse of the Fahrenheit conversion, for round-trip checks."""
    return celsius * 9.0 / 5.0 + 32.0
