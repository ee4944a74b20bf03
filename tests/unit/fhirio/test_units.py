"""Every unit spelling of docs/codes.md, and round trips of the conversions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fhir_leuko.clinical.model import Analyte
from fhir_leuko.fhirio.units import UnitProblem, c_to_f, normalise

X1 = [
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
    "10*3/\u03bcL",
]
X0001 = ["/uL", "/mm3", "{cells}/uL", "cells/uL", "cells/mm3", "/cumm", "cells/mcL", "/\u00b5l"]


@pytest.mark.parametrize("unit", X1)
def test_count_units_meaning_10e9_per_litre(unit: str) -> None:
    assert normalise(Analyte.WBC, 3.4, None, unit) == 3.4


@pytest.mark.parametrize("unit", X0001)
def test_count_units_per_microlitre(unit: str) -> None:
    assert normalise(Analyte.ANC, 1207, None, unit) == pytest.approx(1.207)


def test_ucum_code_is_preferred_over_unit_text() -> None:
    assert normalise(Analyte.WBC, 3.4, "10*3/uL", "x10(3)/mcL weird") == 3.4


def test_code_and_unit_that_disagree_are_not_guessed() -> None:
    with pytest.raises(UnitProblem) as e:
        normalise(Analyte.WBC, 3400, "/uL", "10*3/uL")
    assert e.value.code == "unit-conflict"


def test_unknown_unit_is_reported() -> None:
    with pytest.raises(UnitProblem) as e:
        normalise(Analyte.WBC, 3.4, None, "furlongs")
    assert e.value.code == "unknown-unit" and "furlongs" in str(e.value)


def test_missing_unit_is_reported_not_assumed() -> None:
    with pytest.raises(UnitProblem):
        normalise(Analyte.WBC, 3.4, None, None)


def test_percent_and_fraction() -> None:
    assert normalise(Analyte.NEUTROPHIL_PERCENT, 47, "%", "%") == 47
    assert normalise(Analyte.NEUTROPHIL_PERCENT, 0.47, "1", None) == pytest.approx(47)


def test_percent_unit_on_a_count_code_is_rejected() -> None:
    # Count versus percent comes from the LOINC code, never from the unit string.
    with pytest.raises(UnitProblem):
        normalise(Analyte.ANC, 47, "%", "%")


@pytest.mark.parametrize(
    ("value", "unit", "g_dl"), [(12.5, "g/dL", 12.5), (125, "g/L", 12.5), (7.757, "mmol/L", 12.5)]
)
def test_haemoglobin_units(value: float, unit: str, g_dl: float) -> None:
    assert normalise(Analyte.HAEMOGLOBIN, value, unit, unit) == pytest.approx(g_dl, abs=0.01)


@pytest.mark.parametrize("unit", ["Cel", "\u00b0C", "degC", "C"])
def test_celsius_spellings(unit: str) -> None:
    assert normalise(Analyte.BODY_TEMPERATURE, 38.3, None, unit) == 38.3


@pytest.mark.parametrize("unit", ["[degF]", "\u00b0F", "degF", "F"])
def test_fahrenheit_spellings(unit: str) -> None:
    assert normalise(Analyte.BODY_TEMPERATURE, 100.4, None, unit) == pytest.approx(38.0)


def test_b12_and_folate_units() -> None:
    assert normalise(Analyte.VITAMIN_B12, 100, "pmol/L", None) == pytest.approx(135.5)
    assert normalise(Analyte.VITAMIN_B12, 300, "ng/L", None) == 300
    assert normalise(Analyte.FOLATE, 22.66, "nmol/L", None) == pytest.approx(10.0)
    assert normalise(Analyte.FOLATE, 10, "ug/L", None) == 10


finite = st.floats(min_value=0.0, max_value=1e4, allow_nan=False, allow_infinity=False)


@given(finite)
def test_fahrenheit_round_trip(c: float) -> None:
    assert normalise(Analyte.BODY_TEMPERATURE, c_to_f(c), "[degF]", None) == pytest.approx(
        c, abs=1e-9
    )


@given(finite)
def test_per_microlitre_round_trip(v: float) -> None:
    assert normalise(Analyte.WBC, v * 1000, "/uL", None) == pytest.approx(v, rel=1e-12, abs=1e-12)


@given(finite)
def test_b12_pmol_round_trip(pg_ml: float) -> None:
    assert normalise(Analyte.VITAMIN_B12, pg_ml / 1.355, "pmol/L", None) == pytest.approx(
        pg_ml, rel=1e-12, abs=1e-9
    )


@given(finite)
def test_folate_nmol_round_trip(ng_ml: float) -> None:
    assert normalise(Analyte.FOLATE, ng_ml * 2.266, "nmol/L", None) == pytest.approx(
        ng_ml, rel=1e-12, abs=1e-9
    )


@given(finite)
def test_haemoglobin_g_per_litre_round_trip(g_dl: float) -> None:
    assert normalise(Analyte.HAEMOGLOBIN, g_dl * 10, "g/L", None) == pytest.approx(
        g_dl, rel=1e-12, abs=1e-12
    )
    assert normalise(Analyte.HAEMOGLOBIN, g_dl * 0.6206, "mmol/L", None) == pytest.approx(
        g_dl, rel=1e-12, abs=1e-9
    )


# --- codes.md "Units for counts" (v2) and UCUM case ------------------------------------------

V2_X1 = [
    "K/mm3",
    "x10*9/L",
    "K/cumm",
    "th/cumm",
    "Tsd/\u00b5l",
    "giga/L",
    "G/l",
    "10^9/l",
    "x10(3)/mcL",
    "x10(9)/L",
    "K/\u00b5L",
]
V2_X0001 = ["/\u00b5l", "cells/mcL", "/ul", "/UL", "CELLS/UL", "/cumm", "/mm^3", "/cmm"]


@pytest.mark.parametrize("unit", V2_X1)
def test_v2_count_spellings_meaning_10e9_per_litre(unit: str) -> None:
    assert normalise(Analyte.WBC, 2.7, None, unit) == 2.7
    assert normalise(Analyte.ANC, 2.7, unit, None) == 2.7


@pytest.mark.parametrize("unit", V2_X0001)
def test_v2_count_spellings_per_microlitre(unit: str) -> None:
    assert normalise(Analyte.ANC, 900, None, unit) == pytest.approx(0.9)


@pytest.mark.parametrize("unit", ["g/L", "g/l", "mg/dL", "ug/mL", "g/dL"])
def test_a_mass_concentration_is_never_read_as_a_count(unit: str) -> None:
    # UCUM is case-sensitive where it matters: g/L is grams per litre, G/L is 10^9/L.
    for kind in ("code", "unit"):
        with pytest.raises(UnitProblem) as e:
            normalise(
                Analyte.WBC, 4.0, unit if kind == "code" else None, unit if kind == "unit" else None
            )
        assert e.value.code == "unknown-unit" and unit in str(e.value)


def test_giga_per_litre_code_with_a_grams_display_is_a_conflict() -> None:
    with pytest.raises(UnitProblem) as e:
        normalise(Analyte.WBC, 4.0, "G/L", "g/L")
    assert e.value.code == "unit-conflict"


@pytest.mark.parametrize(
    ("unit", "factor"), [("g/L", 0.1), ("g/l", 0.1), ("g/dL", 1.0), ("g/dl", 1.0)]
)
def test_haemoglobin_grams(unit: str, factor: float) -> None:
    assert normalise(Analyte.HAEMOGLOBIN, 120, None, unit) == pytest.approx(120 * factor)


@pytest.mark.parametrize("unit", ["G/L", "G/dL", "G/DL"])
def test_haemoglobin_in_gauss_is_not_guessed(unit: str) -> None:
    with pytest.raises(UnitProblem):
        normalise(Analyte.HAEMOGLOBIN, 120, None, unit)


def test_harmless_case_differences_are_read() -> None:
    assert normalise(Analyte.WBC, 3.0, "10*3/ul", None) == 3.0
    assert normalise(Analyte.HAEMOGLOBIN, 8.0, None, "MMOL/L") == pytest.approx(8.0 / 0.6206)
    assert normalise(Analyte.BODY_TEMPERATURE, 38.5, None, "cel") == 38.5
