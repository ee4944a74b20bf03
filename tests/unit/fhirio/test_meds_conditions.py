"""Medications, red-flag conditions, chemotherapy context and pregnancy (codes.md v2).

Written from codes.md and clinical-rules.md before running the reader.
"""

from __future__ import annotations

from typing import Any

import pytest

from fhir_leuko.clinical.model import ClinicalCondition, PatientLabs
from fhir_leuko.fhirio.ingest import ingest, match_medication_kind
from tests.builders import at, bundle, cbc, condition, med, obs, patient

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
ATC = "http://www.whocc.no/atc"


def labs(*resources: Any) -> PatientLabs:
    return ingest(bundle(patient(), cbc(3.0, 1.2), *resources), patient_id="p1")


def kinds(lab: PatientLabs) -> set[tuple[str, str]]:
    return {(c.kind, c.display) for c in lab.conditions}


# --- medications --------------------------------------------------------------------------------

CHEMO = [
    "paclitaxel",
    "nab-paclitaxel",
    "cabazitaxel",
    "docetaxel",
    "doxorubicin",
    "daunorubicin",
    "idarubicin",
    "mitoxantrone",
    "ifosfamide",
    "bendamustine",
    "melphalan",
    "busulfan",
    "chlorambucil",
    "temozolomide",
    "dacarbazine",
    "cytarabine",
    "azacitidine",
    "decitabine",
    "fludarabine",
    "cladribine",
    "clofarabine",
    "pemetrexed",
    "hydroxyurea",
    "topotecan",
    "vinblastine",
    "vinorelbine",
    "eribulin",
    "mitomycin",
    "trabectedin",
    "sacituzumab govitecan",
    "trastuzumab deruxtecan",
    # the earlier chemotherapy list
    "cyclophosphamide",
    "carboplatin",
    "cisplatin",
    "etoposide",
    "gemcitabine",
    "fluorouracil",
    "capecitabine",
    "irinotecan",
    "oxaliplatin",
    "epirubicin",
    "vincristine",
]


@pytest.mark.parametrize("name", CHEMO)
def test_every_listed_cytotoxic_is_chemotherapy(name: str) -> None:
    text = f"{name.upper()} 80 mg/m2 IV infusion, cycle day 1"
    (m,) = labs(med(text)).medications
    assert m.name == name and m.antineoplastic
    assert name in m.matched_by


@pytest.mark.parametrize(
    "name", ["ganciclovir", "valganciclovir", "linezolid", "levamisole", "olanzapine"]
)
def test_non_chemotherapy_additions_are_high_risk_but_not_chemotherapy(name: str) -> None:
    (m,) = labs(med(f"{name} tablet")).medications
    assert m.name == name and not m.antineoplastic


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("Taxol 175 mg/m2", "paclitaxel"),
        ("Abraxane", "nab-paclitaxel"),
        ("hydroxycarbamide 500 mg", "hydroxyurea"),
    ],
)
def test_brand_names_and_synonyms(text: str, name: str) -> None:
    (m,) = labs(med(text)).medications
    assert m.name == name and m.antineoplastic


def test_an_atc_l01_coding_counts_and_says_so() -> None:
    concept = {"coding": [{"system": ATC, "code": "L01XX99", "display": "Novotaxib"}]}
    got = match_medication_kind(concept)
    assert got is not None
    name, how, antineoplastic = got
    assert antineoplastic and "ATC L01XX99" in how and name == "novotaxib"


def test_an_atc_code_outside_l01_does_not() -> None:
    assert match_medication_kind({"coding": [{"system": ATC, "code": "H02AB06"}]}) is None


def test_the_name_is_matched_in_a_coding_display() -> None:
    concept = {
        "coding": [
            {
                "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                "code": "583214",
                "display": "paclitaxel 6 MG/ML Injectable Solution",
            }
        ]
    }
    got = match_medication_kind(concept)
    assert got is not None
    assert got[0] == "paclitaxel" and got[2] and "Injectable Solution" in got[1]


@pytest.mark.parametrize(
    "text",
    [
        "prednisone 20 mg",
        "dexamethasone 8 mg",
        "hydroxychloroquine 200 mg",
        "methylprednisolone",
        "paclitaxelum-free diluent",
        "antilinezolid",
    ],
)
def test_not_high_risk(text: str) -> None:
    assert labs(med(text)).medications == ()


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("sulfamethoxazole-trimethoprim 800-160 mg", "sulfamethoxazole/trimethoprim"),
        ("nab-paclitaxel 125 mg/m2", "nab-paclitaxel"),
        ("5-fluorouracil bolus", "fluorouracil"),
        ("Olanzapine 10 MG Oral Tablet", "olanzapine"),
    ],
)
def test_names_with_hyphens_and_case(text: str, name: str) -> None:
    (m,) = labs(med(text)).medications
    assert m.name == name


def test_low_dose_methotrexate_is_high_risk_but_not_chemotherapy_context() -> None:
    (m,) = labs(med("methotrexate 15 mg weekly", "6851")).medications
    assert m.name == "methotrexate" and not m.antineoplastic and "RxNorm" in m.matched_by


# --- red flags ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "flag"),
    [
        ("Splenomegaly", "splenomegaly"),
        ("Splenomegaly, cause unknown", "splenomegaly"),
        ("Enlarged spleen", "splenomegaly"),
        ("Hepatomegaly", "hepatomegaly"),
        ("Lymphadenopathy, cervical", "lymphadenopathy"),
        ("Enlarged lymph nodes", "lymphadenopathy"),
        ("Unexplained weight loss", "weight loss"),
        ("Easy bruising", "bleeding"),
        ("Bleeding gums", "bleeding"),
        ("Recurrent infections", "recurrent infections"),
    ],
)
def test_red_flag_words(text: str, flag: str) -> None:
    assert ("red-flag", flag) in kinds(labs(condition(text)))


@pytest.mark.parametrize(
    ("text", "flag"),
    [
        ("No fever, splenomegaly on examination", "splenomegaly"),
        ("Weight loss, lymphadenopathy resolved", "weight loss"),
        ("Denies bleeding but has lymphadenopathy", "lymphadenopathy"),
    ],
)
def test_negation_stays_in_its_clause(text: str, flag: str) -> None:
    assert ("red-flag", flag) in kinds(labs(condition(text)))


def test_hepatosplenomegaly_is_both() -> None:
    got = kinds(labs(condition("Hepatosplenomegaly")))
    assert {("red-flag", "splenomegaly"), ("red-flag", "hepatomegaly")} <= got


@pytest.mark.parametrize(
    ("code", "flag"),
    [
        ("16294009", "splenomegaly"),
        ("80515008", "hepatomegaly"),
        ("30746006", "lymphadenopathy"),
        ("89362005", "weight loss"),
        ("302215000", "bleeding"),
        ("451991000124106", "recurrent infections"),
    ],
)
def test_red_flag_snomed_codes(code: str, flag: str) -> None:
    got = labs(condition("(coded)", (SNOMED, code))).conditions
    assert [(c.kind, c.display) for c in got] == [("red-flag", flag)]
    assert code in got[0].matched_by


@pytest.mark.parametrize(
    "text",
    [
        "No splenomegaly",
        "no splenomegaly or lymphadenopathy",
        "Denies weight loss",
        "Lymphadenopathy ruled out",
        "without hepatomegaly",
        "Family history of bleeding disorder",
        "Intentional weight loss",
        "Weight loss surgery",
        "Lymphadenopathy (ruled out)",
        "Splenomegaly: resolved",
    ],
)
def test_negated_text_is_not_a_red_flag(text: str) -> None:
    assert not [c for c in labs(condition(text)).conditions if c.kind == "red-flag"]


@pytest.mark.parametrize("status", ["resolved", "inactive", "remission"])
def test_only_active_conditions(status: str) -> None:
    c = condition("Splenomegaly")
    c["clinicalStatus"]["coding"][0]["code"] = status
    assert labs(c).conditions == ()


@pytest.mark.parametrize("verification", ["refuted", "entered-in-error"])
def test_refuted_conditions_are_not_used(verification: str) -> None:
    c = condition("Splenomegaly")
    c["verificationStatus"] = {"coding": [{"code": verification}]}
    assert labs(c).conditions == ()


def test_an_abated_condition_is_not_active() -> None:
    c = condition("Lymphadenopathy")
    c["abatementDateTime"] = "2025-01-01"
    assert labs(c).conditions == ()


def test_splenomegaly_of_unknown_cause_is_not_hypersplenism() -> None:
    got = kinds(labs(condition("Splenomegaly, cause unknown")))
    assert got == {("red-flag", "splenomegaly")}


@pytest.mark.parametrize("text", ["Hypersplenism", "Portal hypertension with splenomegaly"])
def test_a_recorded_hypersplenism_explains_the_count(text: str) -> None:
    got = kinds(labs(condition(text)))
    assert ("hypersplenism", "hypersplenism") in got
    assert ("red-flag", "splenomegaly") not in got


def test_a_provisional_hypersplenism_does_not_explain_the_count() -> None:
    c = condition("Hypersplenism with splenomegaly")
    c["verificationStatus"] = {"coding": [{"code": "differential"}]}
    assert kinds(labs(c)) == {("red-flag", "splenomegaly")}


# --- chemotherapy context -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "On chemotherapy",
        "Undergoing chemotherapy for breast cancer",
        "Receiving antineoplastic chemotherapy",
        "Cycle 3 of FOLFOX",
        "Breast cancer, on anticancer treatment",
    ],
)
def test_a_condition_saying_on_chemotherapy(text: str) -> None:
    assert "chemotherapy" in {c.kind for c in labs(condition(text)).conditions}


def test_snomed_chemotherapy() -> None:
    got = labs(condition("Chemotherapy", (SNOMED, "367336001"))).conditions
    assert [c.kind for c in got] == ["chemotherapy"] and "367336001" in got[0].matched_by


@pytest.mark.parametrize(
    "text",
    [
        "History of chemotherapy",
        "No chemotherapy",
        "Completed chemotherapy in 2019",
        "Planned chemotherapy",
        "Previous chemotherapy (2015)",
    ],
)
def test_past_planned_or_negated_chemotherapy_is_not_current(text: str) -> None:
    assert "chemotherapy" not in {c.kind for c in labs(condition(text)).conditions}


# --- pregnancy ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["Pregnancy", "Pregnant, 20 weeks", "Pregnancy, second trimester"])
def test_an_active_pregnancy_condition(text: str) -> None:
    assert ("pregnancy", "pregnancy") in kinds(labs(condition(text)))


def test_a_coded_pregnancy() -> None:
    assert ("pregnancy", "pregnancy") in kinds(labs(condition("x", (SNOMED, "77386006"))))


@pytest.mark.parametrize(
    "text",
    ["Not pregnant", "History of pregnancy", "Pregnancy test negative", "Previous pregnancy loss"],
)
def test_negated_or_past_pregnancy_is_not(text: str) -> None:
    assert "pregnancy" not in {c.kind for c in labs(condition(text)).conditions}


@pytest.mark.parametrize("text", ["Possible pregnancy", "? pregnant", "Rule out pregnancy"])
def test_an_uncertain_pregnancy_is_not(text: str) -> None:
    # pregnancy lowers the anaemia limit: a question must not lower it
    assert "pregnancy" not in {c.kind for c in labs(condition(text)).conditions}


def test_an_unconfirmed_pregnancy_is_not() -> None:
    c = condition("Pregnancy", (SNOMED, "77386006"))
    c["verificationStatus"] = {"coding": [{"code": "provisional"}]}
    assert labs(c).conditions == ()


def test_a_resolved_pregnancy_is_not() -> None:
    c = condition("Pregnancy", (SNOMED, "77386006"))
    c["clinicalStatus"]["coding"][0]["code"] = "resolved"
    assert labs(c).conditions == ()


def pregnancy_status(answer: tuple[str, str], days_before: float = 10) -> dict[str, Any]:
    o = obs("82810-3", None, at(days_before))
    del o["category"]
    o["code"] = {"coding": [{"system": LOINC, "code": "82810-3"}], "text": "Pregnancy status"}
    o["valueCodeableConcept"] = {"coding": [{"system": answer[0], "code": answer[1]}]}
    return o


@pytest.mark.parametrize("answer", [(SNOMED, "77386006"), (LOINC, "LA15173-0")])
def test_a_pregnancy_status_observation(answer: tuple[str, str]) -> None:
    got = labs(pregnancy_status(answer)).conditions
    assert [c.kind for c in got] == ["pregnancy"]


def test_not_pregnant_answer() -> None:
    assert labs(pregnancy_status((SNOMED, "60001007"))).conditions == ()


def test_a_later_not_pregnant_status_wins() -> None:
    got = labs(
        pregnancy_status((SNOMED, "77386006"), days_before=100),
        pregnancy_status((SNOMED, "60001007"), days_before=5),
    ).conditions
    assert got == ()


def test_an_old_pregnancy_status_is_a_past_pregnancy() -> None:
    # more than 300 days before the CBC: that pregnancy has ended
    assert labs(pregnancy_status((SNOMED, "77386006"), days_before=400)).conditions == ()


def test_conditions_keep_their_reference_and_say_how_they_matched() -> None:
    c = condition("Lymphadenopathy")
    (got,) = labs(c).conditions
    assert isinstance(got, ClinicalCondition)
    assert got.ref == f"Condition/{c['id']}" and "lymphadenopathy" in got.matched_by


def test_cbc_is_still_read_beside_conditions() -> None:
    assert {r.analyte.value for r in labs(condition("Splenomegaly")).results} >= {"wbc"}
