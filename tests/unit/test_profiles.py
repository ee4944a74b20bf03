"""The conformance resources under profiles/ are valid R4 and agree with each other.

They are what we publish and what emitted resources must conform to: a broken file, a code
emitted but never defined, or a canonical that points nowhere should fail here, not on a FHIR
server.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fhir.resources.R4B import get_fhir_model_class

from fhir_leuko.clinical.references import REFERENCES
from fhir_leuko.clinical.thresholds import DEFAULT_THRESHOLDS
from fhir_leuko.fhirio.codes import FINDING_DISPLAY
from fhir_leuko.fhirio.profiles import PROFILES_DIR, codes_of
from tests.oracles import (
    ACTION_SYSTEM,
    BASE,
    EXPECTED_ACTIONS,
    EXPECTED_FINDINGS,
    FINDING_SYSTEM,
)

ROOT = Path(__file__).resolve().parents[2]

LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"

#: Analyte groups of codes.md "LOINC codes read" -> ValueSet id suffix.
CBC_GROUPS = (
    "wbc",
    "anc",
    "neutrophil-percent",
    "band-percent",
    "band-count",
    "lymphocyte-count",
    "lymphocyte-percent",
    "haemoglobin",
    "platelets",
    "mcv",
)
OTHER_GROUPS = ("body-temperature", "vitamin-b12", "folate")
EXPECTED_FILES = frozenset(
    {
        "CodeSystem-leukopenia-finding.json",
        "CodeSystem-leukopenia-action.json",
        "CodeSystem-cds-override-reason.json",
        "CodeSystem-decision-table-row.json",
        "ValueSet-leukopenia-finding.json",
        "ValueSet-leukopenia-action.json",
        "ValueSet-loinc-cbc-all.json",
        "ValueSet-high-risk-medications.json",
        "StructureDefinition-leuko-riskassessment.json",
        "StructureDefinition-leuko-servicerequest.json",
        "CapabilityStatement-fhir-leuko.json",
        *(f"ValueSet-loinc-{g}.json" for g in CBC_GROUPS + OTHER_GROUPS),
    }
)

PATHS = sorted(PROFILES_DIR.glob("*.json"))


def _load(path: Path) -> dict[str, Any]:
    data = orjson.loads(path.read_bytes())
    assert isinstance(data, dict), path.name
    return data


RESOURCES: dict[str, dict[str, Any]] = {p.name: _load(p) for p in PATHS}
BY_URL: dict[str, dict[str, Any]] = {r["url"]: r for r in RESOURCES.values() if "url" in r}


def _of_type(resource_type: str) -> list[dict[str, Any]]:
    return [r for r in RESOURCES.values() if r["resourceType"] == resource_type]


def _valueset(vs_id: str) -> dict[str, Any]:
    return BY_URL[f"{BASE}/ValueSet/{vs_id}"]


def _include_codes(vs: dict[str, Any], system: str) -> list[str]:
    """Explicit concept codes a ValueSet includes from ``system`` (duplicates kept)."""
    return [
        c["code"]
        for inc in vs["compose"]["include"]
        if inc.get("system") == system
        for c in inc.get("concept", [])
    ]


def _strings(node: object) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def test_profiles_dir_is_the_checkout_folder_with_every_expected_file() -> None:
    assert PROFILES_DIR == ROOT / "profiles"
    assert {p.name for p in PATHS} == EXPECTED_FILES


@pytest.mark.parametrize("name", sorted(RESOURCES))
def test_each_file_is_one_valid_r4_resource_named_after_it(name: str) -> None:
    resource = RESOURCES[name]
    model = get_fhir_model_class(resource["resourceType"])
    model.model_validate(resource)
    assert name == f"{resource['resourceType']}-{resource['id']}.json"
    assert resource.get("fhirVersion", "4.0.1") == "4.0.1"


@pytest.mark.parametrize("name", sorted(RESOURCES))
def test_canonical_url_is_ours_and_matches_type_and_id(name: str) -> None:
    resource = RESOURCES[name]
    assert resource["url"].startswith(f"{BASE}/")
    assert resource["url"] == f"{BASE}/{resource['resourceType']}/{resource['id']}"
    assert resource["status"] == "draft"


def test_no_two_resources_share_a_url() -> None:
    urls = [r["url"] for r in RESOURCES.values()]
    assert len(urls) == len(set(urls))
    assert len(BY_URL) == len(RESOURCES)


def test_every_canonical_of_ours_that_a_resource_mentions_is_published() -> None:
    published_kinds = ("CodeSystem", "ValueSet", "StructureDefinition", "CapabilityStatement")
    mentioned = {
        s
        for r in RESOURCES.values()
        for s in _strings(r)
        if s.startswith(tuple(f"{BASE}/{kind}/" for kind in published_kinds))
    }
    assert mentioned <= set(BY_URL)


@pytest.mark.parametrize(
    ("system", "expected"),
    [(FINDING_SYSTEM, EXPECTED_FINDINGS), (ACTION_SYSTEM, EXPECTED_ACTIONS)],
)
def test_code_systems_hold_exactly_the_contract_codes(
    system: str, expected: frozenset[str]
) -> None:
    assert codes_of(system) == expected
    cs = BY_URL[system]
    concepts = cs["concept"]
    assert len(concepts) == len(expected) == cs["count"]  # no duplicate codes
    assert cs["content"] == "complete"
    assert cs["caseSensitive"] is True
    for concept in concepts:
        assert concept["display"].strip(), concept["code"]
        assert len(concept["definition"]) > 40, concept["code"]


#: Internal working material that a FHIR user cannot look up: a seed file cited by number
#: ("seed 002", "seeds 000-004"), "all seeds", or the file names of the project's notes.
WORKING_MATERIAL = re.compile(
    r"\bseeds?\s+\d{3}|\ball\s+seeds\b|clinical-rules\.md|codes\.md", re.IGNORECASE
)


@pytest.mark.parametrize(
    "text",
    [
        "seed 000",
        "seeds 000 and 002",
        "Seeds 000-004",
        "all seeds",
        "see clinical-rules.md",
        "codes.md",
    ],
)
def test_working_material_pattern_catches_every_form(text: str) -> None:
    assert WORKING_MATERIAL.search(text)


@pytest.mark.parametrize(
    "text", ["fhir-leuko decision table row 1b", "fhir_leuko/fhirio/codes.py", "seeded"]
)
def test_working_material_pattern_leaves_public_citations_alone(text: str) -> None:
    assert not WORKING_MATERIAL.search(text)


def test_no_published_file_cites_working_material() -> None:
    files = sorted(p for p in PROFILES_DIR.iterdir() if p.is_file())
    assert PROFILES_DIR / "README.md" in files
    cited = {
        p.name: sorted({m.group(0) for m in WORKING_MATERIAL.finditer(p.read_text("utf-8"))})
        for p in files
    }
    assert {name: hits for name, hits in cited.items() if hits} == {}


def test_finding_definitions_cite_the_decision_table_and_known_references() -> None:
    for concept in BY_URL[FINDING_SYSTEM]["concept"]:
        definition = concept["definition"]
        assert "fhir-leuko decision table" in definition, concept["code"]
    # Every reference the decision table rests on is cited somewhere, by its short name.
    text = " ".join(c["definition"] for c in BY_URL[FINDING_SYSTEM]["concept"])
    missing = [r.short for r in REFERENCES if r.short not in text]
    assert missing == []


def test_code_system_defines_every_emitted_finding_with_the_emitted_display() -> None:
    displays = {c["code"]: c["display"] for c in BY_URL[FINDING_SYSTEM]["concept"]}
    assert displays == dict(FINDING_DISPLAY)


@pytest.mark.parametrize(
    ("code", "row", "reference"),
    [
        ("presumed-febrile-neutropenia", "row 1b", "NICE CG151"),
        ("red-flag-condition", "section 2, 'red-flag condition'", "Gibson & Berliner 2014"),
        ("febrile-neutropenia", "row 1", "ASCO/IDSA 2018"),
        ("anaemia", "section 2, 'anaemia'", "WHO 2011"),
        ("duffy-null", "row 5", "Merz 2023"),
        ("paediatric-limits", "section 2, 'LLN, under 18'", "Harriet Lane"),
    ],
)
def test_finding_definitions_name_their_row_and_reference(
    code: str, row: str, reference: str
) -> None:
    (concept,) = [c for c in BY_URL[FINDING_SYSTEM]["concept"] if c["code"] == code]
    assert row in concept["definition"]
    assert reference in concept["definition"]


@pytest.mark.parametrize(
    ("code", "numbers"),
    [
        # version 2 of the decision table, as the thresholds module holds it
        (
            "paediatric-limits",
            (
                DEFAULT_THRESHOLDS.wbc_lln_under_2y,
                DEFAULT_THRESHOLDS.wbc_lln_2_to_7y,
                DEFAULT_THRESHOLDS.wbc_lln_8_to_17y,
                DEFAULT_THRESHOLDS.anc_lln_neonate,
                DEFAULT_THRESHOLDS.anc_lln_1m_to_1y,
                DEFAULT_THRESHOLDS.anc_lln_from_1y,
            ),
        ),
        (
            "anaemia",
            (
                DEFAULT_THRESHOLDS.hb_low_male,
                DEFAULT_THRESHOLDS.hb_low_female,
                DEFAULT_THRESHOLDS.hb_low_pregnant,
                DEFAULT_THRESHOLDS.hb_low_5_to_11y,
            ),
        ),
        (
            "progressive-decline",
            (DEFAULT_THRESHOLDS.decline_min_fall_wbc, DEFAULT_THRESHOLDS.decline_min_fall_anc),
        ),
        ("macrocytosis", (DEFAULT_THRESHOLDS.mcv_high,)),
        ("presumed-febrile-neutropenia", (DEFAULT_THRESHOLDS.presumed_fn_wbc_below,)),
        ("duffy-null", (DEFAULT_THRESHOLDS.duffy_null_anc_floor,)),
        ("fever", (DEFAULT_THRESHOLDS.fever_single_c, DEFAULT_THRESHOLDS.fever_sustained_c)),
    ],
)
def test_finding_definitions_state_the_version_2_numbers(
    code: str, numbers: tuple[float, ...]
) -> None:
    (concept,) = [c for c in BY_URL[FINDING_SYSTEM]["concept"] if c["code"] == code]
    stated = {float(n) for n in re.findall(r"(?<![\d.])\d+(?:\.\d+)?", concept["definition"])}
    assert set(numbers) <= stated, sorted(set(numbers) - stated)


def test_codes_of_an_unpublished_system_is_an_error() -> None:
    with pytest.raises(KeyError):
        codes_of(f"{BASE}/CodeSystem/no-such-system")


def test_valueset_codes_from_our_systems_are_defined() -> None:
    for vs in _of_type("ValueSet"):
        for inc in vs["compose"]["include"]:
            system = inc.get("system", "")
            if not system.startswith(f"{BASE}/"):
                continue
            defined = codes_of(system)  # KeyError when the system is not published
            used = {c["code"] for c in inc.get("concept", [])}
            assert used <= defined, (vs["id"], sorted(used - defined))


@pytest.mark.parametrize(
    ("vs_id", "system"),
    [
        ("leukopenia-finding", FINDING_SYSTEM),
        ("leukopenia-action", ACTION_SYSTEM),
    ],
)
def test_project_valuesets_include_their_whole_code_system(vs_id: str, system: str) -> None:
    assert _valueset(vs_id)["compose"]["include"] == [{"system": system}]
    assert BY_URL[system]["valueSet"] == _valueset(vs_id)["url"]


def test_loinc_valuesets_list_codes_once_and_groups_do_not_overlap() -> None:
    seen: dict[str, str] = {}
    for group in CBC_GROUPS + OTHER_GROUPS:
        vs = _valueset(f"loinc-{group}")
        assert [inc["system"] for inc in vs["compose"]["include"]] == [LOINC]
        codes = _include_codes(vs, LOINC)
        assert codes and len(codes) == len(set(codes)), group
        for code in codes:
            assert code not in seen, (code, group, seen.get(code))
            seen[code] = group


def test_cbc_all_is_the_union_of_the_cbc_groups() -> None:
    cbc_all = _include_codes(_valueset("loinc-cbc-all"), LOINC)
    union = [c for g in CBC_GROUPS for c in _include_codes(_valueset(f"loinc-{g}"), LOINC)]
    assert len(cbc_all) == len(set(cbc_all))
    assert set(cbc_all) == set(union)
    for group in OTHER_GROUPS:
        assert not set(_include_codes(_valueset(f"loinc-{group}"), LOINC)) & set(cbc_all)


def test_high_risk_medications_are_rxnorm_ingredients_without_corticosteroids() -> None:
    vs = _valueset("high-risk-medications")
    codes = _include_codes(vs, RXNORM)
    assert len(codes) == len(set(codes)) == 29
    assert {"2626", "10831", "121191"} <= set(codes)  # clozapine, SMX/TMP, rituximab
    assert "5521" not in codes  # hydroxychloroquine is explicitly not high-risk (codes.md)


def test_high_risk_medications_include_every_cytotoxic_antineoplastic_by_atc_class() -> None:
    vs = _valueset("high-risk-medications")
    atc = [inc for inc in vs["compose"]["include"] if inc["system"] == "http://www.whocc.no/atc"]
    assert atc == [
        {
            "system": "http://www.whocc.no/atc",
            "filter": [{"property": "concept", "op": "is-a", "value": "L01"}],
        }
    ]
    assert "names are also matched in text" in vs["description"].lower()
    assert "codes unverified" in vs["description"]


@pytest.mark.parametrize("sd", _of_type("StructureDefinition"), ids=lambda sd: sd["id"])
def test_profiles_are_differential_constraints_on_r4(sd: dict[str, Any]) -> None:
    assert sd["derivation"] == "constraint"
    assert sd["kind"] == "resource"
    assert sd["abstract"] is False
    assert sd["baseDefinition"] == f"http://hl7.org/fhir/StructureDefinition/{sd['type']}"
    assert "snapshot" not in sd
    elements = sd["differential"]["element"]
    ids = [e["id"] for e in elements]
    assert len(ids) == len(set(ids))
    for element in elements:
        path = element["path"]
        assert path == sd["type"] or path.startswith(f"{sd['type']}.")
        # the id is the path with slice names inserted, e.g. ServiceRequest.code.coding:leukoAction
        assert ".".join(part.split(":")[0] for part in element["id"].split(".")) == path


def _element(sd_id: str, element_id: str) -> dict[str, Any]:
    sd = BY_URL[f"{BASE}/StructureDefinition/{sd_id}"]
    matches: list[dict[str, Any]] = [
        e for e in sd["differential"]["element"] if e["id"] == element_id
    ]
    assert len(matches) == 1, element_id
    return matches[0]


def test_riskassessment_profile_carries_the_output_contract() -> None:
    def el(suffix: str) -> dict[str, Any]:
        return _element("leuko-riskassessment", f"RiskAssessment.{suffix}")

    assert el("identifier.system")["fixedUri"] == f"{BASE}/identifier/risk-assessment"
    assert el("prediction.qualitativeRisk")["binding"] == {
        "strength": "required",
        "description": "HL7 risk probability.",
        "valueSet": "http://hl7.org/fhir/ValueSet/risk-probability",
    }
    assert el("reasonCode")["binding"]["strength"] == "extensible"
    assert el("reasonCode")["binding"]["valueSet"] == f"{BASE}/ValueSet/leukopenia-finding"
    for suffix in ("identifier", "occurrence[x]", "basis", "prediction", "reasonCode"):
        assert el(suffix)["min"] == 1, suffix
    assert el("mitigation")["min"] == 1


def test_servicerequest_profile_carries_the_output_contract() -> None:
    def el(suffix: str) -> dict[str, Any]:
        return _element("leuko-servicerequest", f"ServiceRequest.{suffix}")

    assert el("status")["fixedCode"] == "draft"
    assert el("intent")["fixedCode"] == "proposal"
    assert el("identifier.system")["fixedUri"] == f"{BASE}/identifier/service-request"
    assert el("code.coding:leukoAction.system")["fixedUri"] == ACTION_SYSTEM
    expressions = [c["expression"] for c in el("code")["constraint"]]
    assert expressions == [f"coding.where(system='{ACTION_SYSTEM}').exists()"]
    # R4 reasonReference cannot point at a RiskAssessment: the link goes in supportingInfo.
    assert el("supportingInfo")["type"][0]["targetProfile"] == [
        f"{BASE}/StructureDefinition/leuko-riskassessment"
    ]
    for suffix in ("identifier", "code", "priority", "reasonCode", "supportingInfo", "authoredOn"):
        assert el(suffix)["min"] == 1, suffix


def test_capability_statement_reads_as_client_and_creates_conditionally() -> None:
    (cap,) = _of_type("CapabilityStatement")
    assert cap["kind"] == "capability"
    assert cap["format"] == ["json"]
    (rest,) = cap["rest"]
    assert rest["mode"] == "client"
    resources = {r["type"]: r for r in rest["resource"]}
    for read in (
        "Observation",
        "Patient",
        "MedicationRequest",
        "MedicationStatement",
        "Condition",
        "ServiceRequest",
    ):
        assert read in resources, read
    for created in ("RiskAssessment", "ServiceRequest"):
        interactions = {i["code"] for i in resources[created]["interaction"]}
        assert "create" in interactions
        assert resources[created]["conditionalCreate"] is True


def test_card_override_reasons_are_published() -> None:
    from fhir_leuko.cdshooks.cards import (
        ASSESSMENT_OVERRIDES,
        MEDICATION_OVERRIDES,
        OVERRIDE_SYSTEM,
    )

    used = {c.code for c in (*ASSESSMENT_OVERRIDES, *MEDICATION_OVERRIDES)}
    assert used == codes_of(OVERRIDE_SYSTEM)
