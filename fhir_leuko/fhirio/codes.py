"""Every code fhir-leuko reads or emits, in one module (docs/codes.md).

Match on codes, never on display strings. A site extends a set by configuration
(``extra_loinc`` in the config file). Verification marks follow codes.md:
V = verified against an authoritative source, P = two public files agree, S = single source.
"""

from __future__ import annotations

from collections.abc import Mapping

from fhir_leuko.clinical.model import ACTION_LABEL, Action, Analyte

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ATC = "http://www.whocc.no/atc"
UCUM = "http://unitsofmeasure.org"
ICD10 = ("http://hl7.org/fhir/sid/icd-10-cm", "http://hl7.org/fhir/sid/icd-10")
RISK_PROBABILITY = "http://terminology.hl7.org/CodeSystem/risk-probability"
BASE = "http://fhir-leuko.org/fhir"
FINDING_SYSTEM = f"{BASE}/CodeSystem/leukopenia-finding"
ACTION_SYSTEM = f"{BASE}/CodeSystem/leukopenia-action"
RA_IDENTIFIER_SYSTEM = f"{BASE}/identifier/risk-assessment"
SR_IDENTIFIER_SYSTEM = f"{BASE}/identifier/service-request"
RA_PROFILE = f"{BASE}/StructureDefinition/leuko-riskassessment"
SR_PROFILE = f"{BASE}/StructureDefinition/leuko-servicerequest"
RULES_URL = f"{BASE}/clinical-rules"

#: LOINC code -> analyte (codes.md "LOINC codes read").
LOINC_ANALYTES: Mapping[str, Analyte] = {
    # WBC: 6690-2 V, 26464-8 V, 804-5 V (manual), 49498-9 V (estimate), 33256-9 S (nRBC-corrected)
    **dict.fromkeys(("6690-2", "26464-8", "804-5", "49498-9", "33256-9"), Analyte.WBC),
    # ANC: 751-8 V, 26499-4 V, 753-4 V (manual), 30451-9 V (segmented), 768-2 S
    **dict.fromkeys(("751-8", "26499-4", "753-4", "30451-9", "768-2"), Analyte.ANC),
    # Neutrophil %: 770-8, 26511-6, 23761-0 (manual), 769-0, 26505-8, 32200-8 (segmented), all V
    **dict.fromkeys(
        ("770-8", "26511-6", "23761-0", "769-0", "26505-8", "32200-8"), Analyte.NEUTROPHIL_PERCENT
    ),
    # Bands %: 764-1, 26508-2, 35332-6 V; bands count: 26507-4, 30229-9 V, 763-3 P
    **dict.fromkeys(("764-1", "26508-2", "35332-6"), Analyte.BAND_PERCENT),
    **dict.fromkeys(("26507-4", "30229-9", "763-3"), Analyte.BAND_COUNT),
    # Lymphocytes: 731-0, 732-8, 26474-7 count; 736-9, 737-7, 26478-8 %, all V
    **dict.fromkeys(("731-0", "732-8", "26474-7"), Analyte.LYMPHOCYTE_COUNT),
    **dict.fromkeys(("736-9", "737-7", "26478-8"), Analyte.LYMPHOCYTE_PERCENT),
    # Haemoglobin: 718-7, 20509-6 (g/dL, g/L), 59260-0 (mmol/L), all V
    **dict.fromkeys(("718-7", "20509-6", "59260-0"), Analyte.HAEMOGLOBIN),
    # Platelets: 777-3, 26515-7, 778-1, 49497-1, all V
    **dict.fromkeys(("777-3", "26515-7", "778-1", "49497-1"), Analyte.PLATELETS),
    # MCV: 787-2, 30428-7 V
    **dict.fromkeys(("787-2", "30428-7"), Analyte.MCV),
    # Body temperature: 8310-5 V
    "8310-5": Analyte.BODY_TEMPERATURE,
    # Vitamin B12 2132-9 V; folate 2284-8 V (serum), 2283-0 V (RBC)
    "2132-9": Analyte.VITAMIN_B12,
    "2284-8": Analyte.FOLATE,
    "2283-0": Analyte.FOLATE,
}

RBC_FOLATE = "2283-0"

#: The LOINC codes of a CBC (what the CDS prefetch asks for), in a stable order.
CBC_LOINC: tuple[str, ...] = tuple(
    code
    for code, analyte in LOINC_ANALYTES.items()
    if analyte not in (Analyte.BODY_TEMPERATURE, Analyte.VITAMIN_B12, Analyte.FOLATE)
)
B12_FOLATE_LOINC: tuple[str, ...] = ("2132-9", "2284-8", "2283-0")
TEMPERATURE_LOINC: tuple[str, ...] = ("8310-5",)

#: What we emit for each action (codes.md "Emitted"): (system, code, display) pairs.
ACTION_CODINGS: Mapping[Action, tuple[tuple[str, str, str], ...]] = {
    Action.REPEAT_CBC: ((LOINC, "57021-8", "CBC W Auto Differential panel - Blood"),),
    Action.VITAMIN_B12: (
        (LOINC, "2132-9", "Cobalamin (Vitamin B12) [Mass/volume] in Serum or Plasma"),
    ),
    Action.FOLATE: ((LOINC, "2284-8", "Folate [Mass/volume] in Serum or Plasma"),),
    Action.PERIPHERAL_SMEAR: ((LOINC, "34994-4", "Smear morphology panel - Blood"),),
    Action.HAEMATOLOGY_REFERRAL: (
        (SNOMED, "3457005", "Patient referral"),
        (SNOMED, "183567007", "Referral to hematologist"),  # P
    ),
    Action.URGENT_EVALUATION: (),  # project code only
}

ACTION_DISPLAY: Mapping[Action, str] = ACTION_LABEL

#: Open ServiceRequests with these codes count as "already ordered" for an action.
ORDER_CODES: Mapping[tuple[str, str], Action] = {
    (LOINC, "57021-8"): Action.REPEAT_CBC,
    (LOINC, "57782-5"): Action.REPEAT_CBC,  # CBC with manual differential V
    (LOINC, "2132-9"): Action.VITAMIN_B12,
    (LOINC, "2284-8"): Action.FOLATE,
    (LOINC, "2283-0"): Action.FOLATE,
    (LOINC, "34994-4"): Action.PERIPHERAL_SMEAR,
    (SNOMED, "183567007"): Action.HAEMATOLOGY_REFERRAL,
    **{(ACTION_SYSTEM, a.value): a for a in Action},
}

FINDING_DISPLAY: Mapping[str, str] = {
    "leukopenia": "Leukopenia",
    "neutropenia-mild": "Mild neutropenia",
    "neutropenia-moderate": "Moderate neutropenia",
    "neutropenia-severe": "Severe neutropenia",
    "neutropenia-profound": "Profound neutropenia",
    "neutropenia-unknown": "Neutropenia status unknown",
    "febrile-neutropenia": "Febrile neutropenia",
    "presumed-febrile-neutropenia": "Presumed febrile neutropenia",
    "fever": "Fever",
    "wbc-below-3": "WBC below 3.0 ×10⁹/L",
    "anaemia": "Anaemia",
    "thrombocytopenia": "Thrombocytopenia",
    "bicytopenia": "Bicytopenia",
    "pancytopenia": "Pancytopenia",
    "macrocytosis": "Macrocytosis",
    "progressive-decline": "Progressive decline",
    "stable": "Stable counts",
    "persistent": "Persistent neutropenia",
    "high-risk-medication": "High-risk medication",
    "duffy-null": "Duffy-null phenotype",
    "red-flag-condition": "Red-flag condition",
    "preliminary-data": "Preliminary data",
    "paediatric-limits": "Paediatric limits applied",
}

#: SNOMED CT beside the project code (codes.md "Findings"; S/P marks as there).
FINDING_SNOMED: Mapping[str, tuple[str, str]] = {
    "leukopenia": ("84828003", "Leukopenia"),  # S
    "neutropenia-mild": ("165517008", "Neutropenia"),  # P
    "neutropenia-moderate": ("165517008", "Neutropenia"),
    "neutropenia-severe": ("165517008", "Neutropenia"),
    "neutropenia-profound": ("165517008", "Neutropenia"),
    "febrile-neutropenia": ("409089005", "Febrile neutropenia"),  # P
    "pancytopenia": ("127034005", "Pancytopenia"),  # S
}

#: High-risk medications: RxNorm ingredient RxCUI -> ingredient name (codes.md, all V).
HIGH_RISK_RXCUI: Mapping[str, str] = {
    "2626": "clozapine",
    "2002": "carbamazepine",
    "2020": "carbimazole",
    "6835": "methimazole",
    "8794": "propylthiouracil",
    "10831": "sulfamethoxazole/trimethoprim",
    "9524": "sulfasalazine",
    "3108": "dapsone",
    "121191": "rituximab",
    "1256": "azathioprine",
    "103": "mercaptopurine",
    "6851": "methotrexate",
    "7145": "mycophenolic acid",
    "11118": "valproic acid",
    "8183": "phenytoin",
    "2348": "chloramphenicol",
    "5880": "interferon alfa-2b",
    "120608": "peginterferon alfa-2a",
    "3002": "cyclophosphamide",
    "40048": "carboplatin",
    "2555": "cisplatin",
    "4179": "etoposide",
    "12574": "gemcitabine",
    "4492": "fluorouracil",
    "194000": "capecitabine",
    "51499": "irinotecan",
    "32592": "oxaliplatin",
    "3995": "epirubicin",
    "10485": "thioguanine",
}

#: v2: every cytotoxic antineoplastic counts; these by name (codes unverified; an ATC L01
#: coding counts too).
CYTOTOXIC_BY_NAME: tuple[str, ...] = (
    "paclitaxel",
    "nab-paclitaxel",
    "cabazitaxel",
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
)
#: v2: non-chemotherapy causes named beside them (linezolid: courses over 10 days).
OTHER_V2_BY_NAME: tuple[str, ...] = (
    "ganciclovir",
    "valganciclovir",
    "linezolid",
    "levamisole",
    "olanzapine",
)

#: Names matched in medication text or coding displays (lower case) -> ingredient name.
#: Includes the by-name-only drugs of codes.md (codes unverified) and common synonyms.
HIGH_RISK_NAMES: Mapping[str, str] = {
    **{name: name for name in HIGH_RISK_RXCUI.values()},
    "trimethoprim-sulfamethoxazole": "sulfamethoxazole/trimethoprim",
    "sulfamethoxazole": "sulfamethoxazole/trimethoprim",
    "co-trimoxazole": "sulfamethoxazole/trimethoprim",
    "cotrimoxazole": "sulfamethoxazole/trimethoprim",
    "mycophenolate": "mycophenolic acid",
    "valproate": "valproic acid",
    "divalproex": "valproic acid",
    "thiamazole": "methimazole",
    "interferon alfa": "interferon alfa-2b",
    "peginterferon": "peginterferon alfa-2a",
    "5-fluorouracil": "fluorouracil",
    "docetaxel": "docetaxel",
    "doxorubicin": "doxorubicin",
    "vincristine": "vincristine",
    "dipyrone": "dipyrone",
    "metamizole": "dipyrone",
    "procainamide": "procainamide",
    "ticlopidine": "ticlopidine",
    "deferiprone": "deferiprone",
    # v2: the other cytotoxic antineoplastics, by name (codes unverified), and the
    # non-chemotherapy causes added with them.
    **{name: name for name in (*CYTOTOXIC_BY_NAME, *OTHER_V2_BY_NAME)},
    "hydroxycarbamide": "hydroxyurea",
    "paclitaxel protein-bound": "nab-paclitaxel",
    "protein-bound paclitaxel": "nab-paclitaxel",
    "fam-trastuzumab deruxtecan": "trastuzumab deruxtecan",
    "mitomycin c": "mitomycin",
    # Brand names (a site adds its own): only unambiguous single-ingredient brands.
    "taxol": "paclitaxel",
    "abraxane": "nab-paclitaxel",
    "taxotere": "docetaxel",
    "jevtana": "cabazitaxel",
    "adriamycin": "doxorubicin",
    "enhertu": "trastuzumab deruxtecan",
    "trodelvy": "sacituzumab govitecan",
    "gemzar": "gemcitabine",
    "xeloda": "capecitabine",
    "temodar": "temozolomide",
    "temodal": "temozolomide",
    "navelbine": "vinorelbine",
    "halaven": "eribulin",
    "alimta": "pemetrexed",
    "valcyte": "valganciclovir",
    "cytovene": "ganciclovir",
    "zyvox": "linezolid",
    "zyprexa": "olanzapine",
    "clozaril": "clozapine",
    "leponex": "clozapine",
}

#: Ingredients that are cytotoxic chemotherapy (the "chemotherapy context" of the decision
#: table). Dual-use drugs given at low dose for autoimmune disease (methotrexate,
#: mercaptopurine, azathioprine) and antibodies such as rituximab are high-risk, but they do not
#: by themselves make a fever "presumed febrile neutropenia"; an ATC L01 coding does.
ANTINEOPLASTIC: frozenset[str] = frozenset(
    {
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
        "thioguanine",
        "docetaxel",
        "doxorubicin",
        "vincristine",
        *CYTOTOXIC_BY_NAME,
    }
)

#: ATC class of antineoplastic agents (codes.md v2: any ATC code starting L01 counts).
ATC_ANTINEOPLASTIC_PREFIX = "L01"

#: Recorded conditions that explain a low count (clinical-rules.md "Always"), matched by
#: SNOMED code, ICD-10 prefix, or words in the text. kind -> (SNOMED codes, ICD-10 prefixes,
#: words). SNOMED/ICD codes here are well-known but not in codes.md: verify before a release.
#: Splenomegaly alone is a red flag, not hypersplenism (clinical-rules.md v2): only a recorded
#: hypersplenism or portal hypertension explains a low count.
CONDITION_MATCHERS: Mapping[str, tuple[frozenset[str], tuple[str, ...], tuple[str, ...]]] = {
    "sle": (frozenset({"55464009"}), ("M32",), ("lupus erythematosus", "sle")),
    "rheumatoid-arthritis": (frozenset({"69896004"}), ("M05", "M06"), ("rheumatoid arthritis",)),
    "hiv": (frozenset({"86406008"}), ("B20", "Z21"), ("hiv", "human immunodeficiency virus")),
    "hypersplenism": (
        frozenset(),
        ("D73.1", "K76.6"),
        ("hypersplenism", "portal hypertension", "portal hypertensive"),
    ),
    # On chemotherapy / anticancer treatment now (Z51.1 is an encounter for it; a history of
    # chemotherapy, Z92.21, is not). SNOMED 367336001 Chemotherapy (procedure) V,
    # 385786002 Chemotherapy care P.
    "chemotherapy": (
        frozenset({"367336001", "385786002"}),
        ("Z51.1",),
        (
            "chemotherapy",
            "chemo",
            "antineoplastic therapy",
            "antineoplastic treatment",
            "antineoplastic chemotherapy",
            "anticancer treatment",
            "anticancer therapy",
            "anti-cancer treatment",
            "anti-cancer therapy",
            "cytotoxic therapy",
            "cytotoxic treatment",
        ),
    ),
    "alcohol-use": (
        frozenset({"7200002"}),
        ("F10",),
        ("alcohol use", "alcohol dependence", "alcoholism", "alcohol abuse"),
    ),
    "viral-infection": (
        frozenset({"34014006"}),
        ("B34", "J10", "J11", "B27", "U07.1"),
        ("viral", "virus", "influenza", "mononucleosis", "covid", "hepatitis"),
    ),
}

#: "cycle 3 of FOLFOX", "C2D1 of R-CHOP": a chemotherapy cycle in the text.
CHEMO_CYCLE_WORDS = ("cycle", "c1d1", "day 1 of")

#: (v2) Red-flag conditions (codes.md): display -> (SNOMED codes (S), ICD-10 prefixes, words).
RED_FLAGS: Mapping[str, tuple[frozenset[str], tuple[str, ...], tuple[str, ...]]] = {
    "splenomegaly": (
        frozenset({"16294009"}),
        ("R16.1", "R16.2"),
        ("splenomegaly", "enlarged spleen", "spleen enlargement", "hepatosplenomegaly"),
    ),
    "hepatomegaly": (
        frozenset({"80515008"}),
        ("R16.0", "R16.2"),
        ("hepatomegaly", "enlarged liver", "hepatosplenomegaly"),
    ),
    "lymphadenopathy": (
        frozenset({"30746006"}),
        ("R59",),
        (
            "lymphadenopathy",
            "enlarged lymph nodes",
            "enlarged lymph node",
            "lymph node enlargement",
            "swollen lymph nodes",
        ),
    ),
    "weight loss": (
        frozenset({"89362005"}),
        ("R63.4",),
        ("weight loss", "loss of weight"),
    ),
    "bleeding": (
        frozenset({"302215000"}),
        ("R58", "R23.3"),
        ("easy bruising", "bleeding", "bleeding tendency", "bruises easily"),
    ),
    "recurrent infections": (
        frozenset({"451991000124106"}),
        (),
        ("recurrent infections", "recurrent infection", "frequent infections"),
    ),
}

#: Pregnancy: SNOMED 77386006 Pregnancy (codes.md, clinical-rules.md WHO limits); ICD-10
#: Z33.1 pregnant state, Z34 supervision of normal pregnancy, O09 supervision of high-risk
#: pregnancy.
PREGNANCY_SNOMED = frozenset({"77386006"})
PREGNANCY_ICD10 = ("Z33.1", "Z34", "O09")
PREGNANCY_WORDS = ("pregnant", "pregnancy", "gravid")
#: Observations of pregnancy status: LOINC 82810-3 Pregnancy status, 11449-6 Pregnancy status
#: - Reported; answers meaning "pregnant": SNOMED 77386006, LOINC LA15173-0.
PREGNANCY_STATUS_LOINC = frozenset({"82810-3", "11449-6"})
PREGNANT_ANSWERS = frozenset({(SNOMED, "77386006"), (LOINC, "LA15173-0")})

CONDITION_DISPLAY: Mapping[str, str] = {
    "sle": "systemic lupus erythematosus",
    "rheumatoid-arthritis": "rheumatoid arthritis",
    "hiv": "HIV infection",
    "hypersplenism": "hypersplenism",
    "chemotherapy": "chemotherapy",
    "alcohol-use": "alcohol use",
    "viral-infection": "viral infection",
    "duffy-null": "Duffy-null phenotype",
    "pregnancy": "pregnancy",
}
