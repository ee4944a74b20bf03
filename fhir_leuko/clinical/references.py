"""The references a clinician can look up, each once, with its full citation.

Everything users read (card detail and source, RiskAssessment rationale, the text report)
cites a rule by the short names below or by a row of the project's own decision table
(``docs/clinical-rules.md``, served at ``/rules``). Anchors are the HTML ids on that page.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reference:
    short: str  # what output cites, e.g. "NICE CG151"
    anchor: str  # id on the decision-table page, e.g. "ref-nice-cg151"
    citation: str  # the full citation
    url: str | None = None  # a stable public address, where one exists


CTCAE = Reference(
    "CTCAE v5.0",
    "ref-ctcae-v5",
    "National Cancer Institute. Common Terminology Criteria for Adverse Events (CTCAE) "
    "version 5.0. US Department of Health and Human Services, 2017: neutrophil count "
    "decreased grades; febrile neutropenia (ANC < 1.0 ×10⁹/L with a single temperature "
    "> 38.3 C or >= 38.0 C sustained over one hour).",
)
IDSA_2010 = Reference(
    "IDSA 2010",
    "ref-idsa-2010",
    "Freifeld AG, Bow EJ, Sepkowitz KA, et al. Clinical practice guideline for the use of "
    "antimicrobial agents in neutropenic patients with cancer: 2010 update by the Infectious "
    "Diseases Society of America. Clin Infect Dis 2011;52(4):e56-e93.",
    "https://doi.org/10.1093/cid/cir073",
)
ASCO_IDSA_2018 = Reference(
    "ASCO/IDSA 2018",
    "ref-asco-idsa-2018",
    "Taplitz RA, Kennedy EB, Bow EJ, et al. Outpatient management of fever and neutropenia in "
    "adults treated for malignancy: American Society of Clinical Oncology and Infectious "
    "Diseases Society of America clinical practice guideline update. J Clin Oncol "
    "2018;36(14):1443-1453 (empiric antibiotics within 1 hour).",
    "https://doi.org/10.1200/JCO.2017.77.6211",
)
NICE_CG151 = Reference(
    "NICE CG151",
    "ref-nice-cg151",
    "National Institute for Health and Care Excellence. Neutropenic sepsis: prevention and "
    "management in people with cancer. Clinical guideline CG151, 2012 (updated 2020): treat "
    "suspected neutropenic sepsis in people having anticancer treatment as an emergency, "
    "without waiting for the neutrophil count.",
    "https://www.nice.org.uk/guidance/cg151",
)
GIBSON_BERLINER_2014 = Reference(
    "Gibson & Berliner 2014",
    "ref-gibson-berliner-2014",
    "Gibson C, Berliner N. How we evaluate and treat neutropenia in adults. Blood "
    "2014;124(8):1251-1258 (work-up: repeat count, smear, B12 and folate, referral; benign "
    "ethnic neutropenia; red flags; infection warning signs).",
    "https://doi.org/10.1182/blood-2014-02-482612",
)
MERZ_2023 = Reference(
    "Merz 2023",
    "ref-merz-2023",
    "Merz LE, Story CM, Osei MA, et al. Development of Duffy null-specific absolute neutrophil "
    "count reference ranges. JAMA 2023;329(23):2088-2089 (lower limit 1.21 ×10⁹/L); and "
    "Merz LE, et al. Absolute neutrophil count by Duffy status among healthy Black and African "
    "American adults. Blood Adv 2023;7(3):317-320.",
    "https://doi.org/10.1001/jama.2023.7467",
)
ANDERSOHN_2007 = Reference(
    "Andersohn 2007",
    "ref-andersohn-2007",
    "Andersohn F, Konzen C, Garbe E. Systematic review: agranulocytosis induced by "
    "nonchemotherapy drugs. Ann Intern Med 2007;146(9):657-665.",
    "https://doi.org/10.7326/0003-4819-146-9-200705010-00009",
)
CLOZAPINE_LABEL = Reference(
    "clozapine label",
    "ref-clozapine-label",
    "Clozapine prescribing information (US label), ANC monitoring table: ANC 1.0-1.49 mild "
    "neutropenia (monitor three times weekly), 0.5-0.99 moderate (interrupt therapy), < 0.5 "
    "severe.",
)
WHO_2011 = Reference(
    "WHO 2011",
    "ref-who-2011",
    "World Health Organization. Haemoglobin concentrations for the diagnosis of anaemia and "
    "assessment of severity. Vitamin and Mineral Nutrition Information System. Geneva: WHO, "
    "2011 (WHO/NMH/NHD/MNM/11.1).",
    "https://apps.who.int/iris/handle/10665/85839",
)
HARRIET_LANE = Reference(
    "Harriet Lane",
    "ref-harriet-lane",
    "The Harriet Lane Handbook (Johns Hopkins Hospital), age-specific haematology reference "
    "ranges; neonatal neutrophil ranges: Schmutz N, Henry E, Jopling J, Christensen RD. "
    "Expected ranges for blood neutrophil concentrations of neonates. J Perinatol "
    "2008;28(4):275-281.",
)
DECISION_TABLE = Reference(
    "fhir-leuko decision table",
    "decision-table",
    "fhir-leuko decision table, version 2: the project's own reading of the references on "
    "this page, where they are silent or disagree (the safer reading is taken).",
)

#: Every reference, in the order the decision-table page lists them.
REFERENCES: tuple[Reference, ...] = (
    CTCAE,
    IDSA_2010,
    ASCO_IDSA_2018,
    NICE_CG151,
    GIBSON_BERLINER_2014,
    MERZ_2023,
    ANDERSOHN_2007,
    CLOZAPINE_LABEL,
    WHO_2011,
    HARRIET_LANE,
)

BY_SHORT: Mapping[str, Reference] = {r.short: r for r in (*REFERENCES, DECISION_TABLE)}


def cite(*refs: Reference) -> str:
    """A source string for output: short names joined, e.g. 'IDSA 2010; CTCAE v5.0'."""
    return "; ".join(r.short for r in refs)


def row_anchor(row: str) -> str:
    """The id of a decision-table row on the rules page: '1b' -> 'row-1b'; a result that
    could not be assessed points at the rule that says so (1.8, 'cleaning-unusable')."""
    if row == "not-assessable":
        return "cleaning-unusable"
    return f"row-{row}"
