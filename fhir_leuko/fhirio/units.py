"""Unit normalisation (docs/codes.md "Units").

Counts go to 10^9/L, percent to %, haemoglobin to g/dL, temperature to Celsius, B12 to pg/mL,
folate to ng/mL. Count-versus-percent is decided by the LOINC code (the analyte), never by
the unit string: ``K/uL`` is kelvin per microlitre in strict UCUM and ``G/L`` gauss per litre,
yet both are common lab spellings of 10^9/L. Unknown units are reported, never guessed.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping

from fhir_leuko.clinical.model import ANALYTE_LABEL, Analyte

Converter = Callable[[float], float]


def _scale(factor: float) -> Converter:
    return lambda v: v * factor


def _f_to_c(v: float) -> float:
    return (v - 32.0) * 5.0 / 9.0


def _same(v: float) -> float:
    return v


def _key(unit: str) -> str:
    """Fold spelling noise that never changes the meaning: spaces and the two micro signs.

    Case is kept: UCUM is case-sensitive where it matters (``g/L`` grams per litre is not
    ``G/L`` giga per litre); :func:`_lookup` folds case only where that is harmless.
    """
    return unit.strip().replace(" ", "").replace("\u00b5", "u").replace("\u03bc", "u")


class _Table:
    """Unit spellings of one kind of quantity: exact spellings first, then case-folded ones.

    ``strict``: lower-case spellings that must match exactly (their case carries meaning):
    ``g/l`` is grams per litre on a count (``G/L`` is giga per litre) and gauss per litre
    (``G/L``) on haemoglobin. Every other spelling is matched whatever its case (``/ul`` and
    ``/uL`` are both per microlitre: UCUM's ``l`` and ``L`` are both litre).
    """

    __slots__ = ("exact", "folded", "strict")

    def __init__(self, spec: Mapping[Converter, tuple[str, ...]], strict: frozenset[str]) -> None:
        self.exact = {_key(u): conv for conv, units in spec.items() for u in units}
        self.strict = strict
        self.folded = {k.lower(): c for k, c in self.exact.items() if k.lower() not in strict}

    def get(self, unit: str) -> Converter | None:
        k = _key(unit)
        conv = self.exact.get(k)
        if conv is None:
            conv = self.folded.get(k.lower())
        return conv

    def __contains__(self, unit: str) -> bool:
        return self.get(unit) is not None


def _table(spec: Mapping[Converter, tuple[str, ...]], strict: Iterable[str] = ()) -> _Table:
    return _Table(spec, frozenset(strict))


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
            "K/mm3",  # Meditech
            "K/cumm",
            "K/mcL",
            "x10E3/uL",
            "10E3/uL",
            "x10^3/uL",
            "thou/uL",
            "thou/mm3",
            "thou/cumm",
            "th/cumm",
            "th/uL",
            "Tsd/\u00b5l",
            "Tsd/ul",
            "G/L",
            "G/l",
            "giga/L",
            # unambiguous variants of the above
            "x10*9/L",
            "x10^9/L",
            "10E9/L",
            "x10E9/L",
            "x10*3/uL",
            "10^3/mm3",
            "x10*3/mm3",
            "10*3/cumm",
            "10*3/mcL",
            "10^3/mcL",
            "x10^3/mcL",
            "10^3/mm^3",
            # parenthesised exponents (Oracle Health / Cerner displays)
            "x10(3)/mcL",
            "x10(3)/uL",
            "10(3)/uL",
            "10(3)/mcL",
            "x10(9)/L",
            "10(9)/L",
        ),
        _PER_UL: (
            "/uL",
            "/mm3",
            "/cumm",
            "/mcL",
            "{cells}/uL",
            "cells/uL",
            "cells/mm3",
            "cells/cumm",
            "cells/mcL",
            "/\u00b5l",
            "/cmm",
            "/mm^3",
            "cells/mm^3",
        ),
    },
    # 'g/L' is grams per litre (a mass concentration), only 'G/L' and 'G/l' are giga per litre.
    strict=("g/l",),
)
# Percent, or '1' as a fraction (0.47 = 47 %).
_PERCENT_TABLE = _table({_same: ("%", "percent"), _scale(100.0): ("1",)})
# 'G/L' on haemoglobin would be gauss per litre: only 'g/L' and 'g/l' are grams per litre.
HB_UNITS = _table(
    {
        _same: ("g/dL", "g/dl", "gm/dL", "gm/dl"),
        _scale(0.1): ("g/L", "g/l"),
        _scale(1 / 0.6206): ("mmol/L",),
    },
    strict=("g/l", "g/dl"),
)
MCV_UNITS = _table({_same: ("fL", "um3")})
TEMP_UNITS = _table(
    {
        _same: ("Cel", "\u00b0C", "degC", "C", "Celsius"),
        _f_to_c: ("[degF]", "\u00b0F", "degF", "F", "Fahrenheit"),
    }
)
B12_UNITS = _table({_same: ("pg/mL", "ng/L"), _scale(1.355): ("pmol/L",)})
FOLATE_UNITS = _table({_same: ("ng/mL", "ug/L"), _scale(1 / 2.266): ("nmol/L",)})

_PERCENT_ANALYTES = (
    Analyte.NEUTROPHIL_PERCENT,
    Analyte.BAND_PERCENT,
    Analyte.LYMPHOCYTE_PERCENT,
)
_COUNT_ANALYTES = frozenset(
    (Analyte.WBC, Analyte.ANC, Analyte.BAND_COUNT, Analyte.LYMPHOCYTE_COUNT, Analyte.PLATELETS)
)

UNITS_FOR: Mapping[Analyte, _Table] = {
    **dict.fromkeys(_COUNT_ANALYTES, COUNT_UNITS),
    **dict.fromkeys(_PERCENT_ANALYTES, _PERCENT_TABLE),
    Analyte.HAEMOGLOBIN: HB_UNITS,
    Analyte.MCV: MCV_UNITS,
    Analyte.BODY_TEMPERATURE: TEMP_UNITS,
    Analyte.VITAMIN_B12: B12_UNITS,
    Analyte.FOLATE: FOLATE_UNITS,
}

#: A mass concentration ('g/L', 'mg/dL', 'ug/mL', ...): never a count, whatever its case.
_MASS_RE = re.compile(r"^[munpk]?g/[dcm]?[lL]$")


def is_mass_unit(unit: str) -> bool:
    """True for a mass-per-volume spelling with a lower-case gram ('g/L'; not 'G/L')."""
    return _MASS_RE.match(_key(unit)) is not None


class UnitProblem(ValueError):
    """The unit is unknown, or the UCUM code and the display unit disagree."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@functools.lru_cache(maxsize=1024)
def converter_for(analyte: Analyte, ucum_code: str | None, unit: str | None) -> Converter:
    """Pick the conversion for a quantity: prefer the UCUM ``code``, fall back to ``unit``.

    If both are understood and mean different things, do not guess (codes.md). A mass
    concentration on a count (``g/L``, grams per litre, for ``G/L``) is never read as a count.
    """
    table = UNITS_FOR[analyte]
    by_code = table.get(ucum_code) if ucum_code else None
    by_unit = table.get(unit) if unit else None
    label = ANALYTE_LABEL[analyte]
    if by_code is not None and by_unit is not None and by_code is not by_unit:
        raise UnitProblem(
            "unit-conflict", f"UCUM code '{ucum_code}' and unit '{unit}' disagree for {label}"
        )
    if analyte in _COUNT_ANALYTES:
        mass = [u for u in (ucum_code, unit) if u and is_mass_unit(u)]
        if mass:
            other = by_code or by_unit
            what = (
                f"'{mass[0]}' is a mass concentration (grams per litre), not a count "
                "(10^9/L is written 'G/L' or '10*9/L')"
            )
            if other is not None:
                raise UnitProblem(
                    "unit-conflict",
                    f"UCUM code '{ucum_code}' and unit '{unit}' disagree for {label}: {what}",
                )
            raise UnitProblem("unknown-unit", f"unit {what}; not understood for {label}")
    conv = by_code or by_unit
    if conv is None:
        given = [u for u in (ucum_code, unit) if u]
        shown = " / ".join(f"'{u}'" for u in dict.fromkeys(given)) or "no unit"
        raise UnitProblem("unknown-unit", f"unit {shown} is not understood for {label}")
    return conv


def normalise(analyte: Analyte, value: float, ucum_code: str | None, unit: str | None) -> float:
    """The value in the canonical unit of its analyte (see ``CANONICAL_UNITS``)."""
    return converter_for(analyte, ucum_code, unit)(value)


def c_to_f(celsius: float) -> float:
    """Inverse of the Fahrenheit conversion, for round-trip checks."""
    return celsius * 9.0 / 5.0 + 32.0
