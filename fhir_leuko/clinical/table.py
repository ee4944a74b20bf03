"""The project's decision table (version 2) as Markdown, with a site's effective numbers.

``render_markdown(thresholds)`` writes every number from :class:`Thresholds`, so the table a
clinician reads can never drift from the numbers the engine uses: ``docs/clinical-rules.md``
is this module's output for the defaults (``python -m fhir_leuko.clinical.table`` rewrites it;
a test checks it is current), and the service serves it, with the site's own numbers, at
``/rules``. Headings carry explicit anchors (``{#row-1b}``) that card links point at.
"""

from __future__ import annotations

import sys

from fhir_leuko.clinical.model import num
from fhir_leuko.clinical.references import (
    ANDERSOHN_2007,
    ASCO_IDSA_2018,
    CLOZAPINE_LABEL,
    CTCAE,
    DECISION_TABLE,
    GIBSON_BERLINER_2014,
    HARRIET_LANE,
    IDSA_2010,
    MERZ_2023,
    NICE_CG151,
    REFERENCES,
    WHO_2011,
    Reference,
)
from fhir_leuko.clinical.thresholds import DEFAULT_THRESHOLDS, Thresholds


def _ref(r: Reference) -> str:
    """A reference as a link to its entry in section 5."""
    return f"[{r.short}](#{r.anchor})"


def render_markdown(t: Thresholds = DEFAULT_THRESHOLDS) -> str:
    """The whole decision table, in the project's words, with the numbers of ``t``."""
    n = num
    gb, ctcae, idsa = _ref(GIBSON_BERLINER_2014), _ref(CTCAE), _ref(IDSA_2010)
    nice, asco, who = _ref(NICE_CG151), _ref(ASCO_IDSA_2018), _ref(WHO_2011)
    hl, merz = _ref(HARRIET_LANE), _ref(MERZ_2023)
    cloz, andersohn = _ref(CLOZAPINE_LABEL), _ref(ANDERSOHN_2007)
    fut = f"{t.future_tolerance_hours:g}"
    refs = "\n".join(
        f"- **{r.short}** {{#{r.anchor}}}: {r.citation}" + (f" <{r.url}>" if r.url else "")
        for r in REFERENCES
    )
    return f"""# fhir-leuko decision table (version 2) {{#decision-table}}

What fhir-leuko decides about leukopenia and neutropenia, and why. This page is generated from
the numbers the engine runs with (`fhir_leuko/clinical/thresholds.py`); a site that changes a
threshold sees its own numbers here. Counts are in ×10⁹/L (= 10³/µL; 1,500/mm³ is 1.5).
Whether a result is a count or a percentage is decided from its LOINC code, never from the unit
spelling. Derived values are rounded to 0.01 before they are compared (5.0 × 30 % is 1.50).
Where the references below are silent or disagree, the safer reading is taken and said here.

## 1. Which data are used {{#cleaning}}

1. **Statuses**: `final`, `amended`, `corrected` and `preliminary` results
   are used; `registered`, `cancelled`, `entered-in-error` and `unknown` are not (and are
   listed). A result with a `dataAbsentReason` or no value is not a result, never zero. {{#cleaning-status}}
2. **Draws, not results**: one result per analyte and effective time is kept
   (amended/corrected > final > preliminary); identical duplicates count once. Serial rules
   (decline, stable, persistent) count **draws**: the same draw re-sent later, in another unit or
   under another code, is one point. Preliminary results may raise an alert but never suppress
   one, and make the assessment *preliminary*. {{#cleaning-draws}}
3. **Units**: a unit that is not understood, or a UCUM code and a unit text
   that disagree, make the value unusable; the output names the value and the unit. UCUM case
   matters: `g/L` (grams per litre) on a count is never read as `G/L` (10⁹/L). An implausible
   magnitude (a WBC of 3,400 ×10⁹/L) is reported, never silently rescaled. {{#cleaning-units}}
4. **Draws and the index CBC**: results belong to one draw when they share a
   specimen or DiagnosticReport, or were taken within {t.same_draw_tolerance_minutes} minutes
   of each other. The **index CBC** is the most recent draw with a WBC, an ANC or a neutrophil %.
   An Observation without its own time takes the time of the DiagnosticReport that lists it;
   references inside a Bundle also resolve by `fullUrl` (`urn:uuid:`), so two panels drawn in
   the same minute stay two draws. {{#cleaning-index}}
5. **ANC**: the ANC reported in the index draw; else WBC × (neutrophil % +
   band %) / 100 from the same draw, marked *derived*; else *unknown*. Different draws are never
   combined. The ANC can never exceed the WBC of its draw, so a low WBC proves at least the
   grade it would have as an ANC. {{#cleaning-anc}}
6. **Future-stamped results** (usually a clock or time-zone error): up to
   {fut} h after the evaluation they are used like preliminary results (may raise, never
   suppress) and reported with their values; later than that they are not used and are named.
   No output says "no leukopenia" while an unused value exists. {{#cleaning-future}}
7. **Text values**: a text holding one number with an optional comparator
   (`<0.1`, `< 0.1`, `<=0.5`, `>12`, `0.8`) is read in the analyte's reporting unit when no unit
   is given; `<0.1` is read as just below 0.1. It is reported. Anything else (`3,400`,
   `see comment`) is not read, and is named. {{#cleaning-text}}
8. **Unusable is not normal**: when CBC results were sent but no white
   count could be used, the outcome is **could not be assessed** (an `info` card naming what was
   unusable, and an error in the OperationOutcome), never "normal". {{#cleaning-unusable}}

## 2. Findings {{#findings}}

| finding | rule | source |
|---|---|---|
| WBC lower limit, adult | the result's own reference range low, else {n(t.wbc_lln_adult)} | {gb} (labs differ) |
| limits under {t.adult_age_years} y | WBC {n(t.wbc_lln_under_2y)} under 2 y, {n(t.wbc_lln_2_to_7y)} from 2 to 7 y, {n(t.wbc_lln_8_to_17y)} from 8 to 17 y; ANC {n(t.anc_lln_neonate)} under 1 month (never 1.0 for a neonate), {n(t.anc_lln_1m_to_1y)} from 1 month to 1 y, {n(t.anc_lln_from_1y)} from 1 y | {hl} |
| leukopenia | the most recent WBC below its lower limit | {gb} |
| neutropenia grade | none: ANC ≥ {n(t.anc_lln_adult)} (adults) · mild {n(t.anc_mild_floor)}–<{n(t.anc_lln_adult)} · moderate {n(t.anc_moderate_floor)}–<{n(t.anc_mild_floor)} · severe {n(t.anc_severe_floor)}–<{n(t.anc_moderate_floor)} · profound < {n(t.anc_severe_floor)} · unknown. The lower bound belongs to the tier | {ctcae}; {idsa} (profound); {cloz} |
| WBC red flag | WBC < {n(t.wbc_red_flag)} | {gb} |
| fever | within {t.fever_lookback_hours:g} h before the index CBC or since: one temperature ≥ {t.fever_single_c:.1f} °C, or two ≥ {t.fever_sustained_c:.1f} °C at least {t.fever_sustained_gap_hours:g} h apart (°F converted) | {idsa}; {ctcae} |
| febrile neutropenia | fever and ANC < {n(t.febrile_anc_below)} | {ctcae}; {idsa} |
| presumed febrile neutropenia | fever, ANC unknown, and a chemotherapy context or WBC < {n(t.presumed_fn_wbc_below)} | {nice} |
| anaemia | Hb < {n(t.hb_low_male)} g/dL (male ≥ {t.hb_adult_age_years} y), < {n(t.hb_low_female)} (female ≥ {t.hb_adult_age_years} y or sex unknown), < {n(t.hb_low_pregnant)} (pregnant), < {n(t.hb_low_12_to_14y)} (12–14 y), < {n(t.hb_low_5_to_11y)} (5–11 y), < {n(t.hb_low_6m_to_4y)} (6 months–4 y); none called under 6 months | {who} |
| thrombocytopenia | platelets < {n(t.platelets_low)} | {ctcae} |
| bicytopenia / pancytopenia | a low white line with one / both of anaemia and thrombocytopenia | {gb} |
| macrocytosis | MCV > {n(t.mcv_high)} fL, at any age | {gb} |
| progressive decline | ≥ {t.decline_min_draws} draws within {t.trend_lookback_days} days ({t.trend_lookback_days // 365} years) falling at each step, by ≥ {n(t.decline_min_fall_wbc)} in all for the WBC (latest below its limit) or ≥ {n(t.decline_min_fall_anc)} for the ANC (latest below its limit); the minimum fall keeps analytical noise from counting | {gb} |
| stable | ≥ {t.stable_min_draws} WBC draws spanning ≥ {t.stable_min_span_days} days, highest − lowest ≤ {n(t.stable_max_range)}, neither WBC nor ANC declining | {gb} |
| persistent neutropenia | ≥ {t.persistent_min_draws} draws spanning > {t.persistent_min_span_days} days with the ANC below its limit on every one, not declining | {gb} |
| B12 / folate recently normal | both resulted within {t.b12_folate_recent_days} days: B12 ≥ {n(t.b12_normal_min_pg_ml)} pg/mL, folate ≥ {n(t.folate_normal_min_ng_ml)} ng/mL (RBC folate ≥ {n(t.rbc_folate_normal_min_ng_ml)}), or the result's own range | lab reference ranges |
| high-risk medication | an active medication known to lower white cells (clozapine, antithyroid drugs, sulfasalazine, dapsone, trimethoprim-sulfamethoxazole, rituximab, every cytotoxic antineoplastic — an ATC L01 coding counts —, …); matched by RxNorm ingredient or by name. Corticosteroids are not on it | {andersohn}; {gb} |
| chemotherapy context | a cytotoxic antineoplastic, or an active Condition saying the patient is on anticancer treatment | {nice} |
| Duffy-null documented | a Condition or Observation recording the phenotype Fy(a−b−) as a fact. Not: one antigen negative and the other positive (Fy(a−b+)), anything negated or uncertain ("not yet tested", "possible", "rule out"), or a refuted, entered-in-error or resolved record. Never inferred from race | {merz} |
| red-flag condition | an active Condition for splenomegaly, hepatomegaly, lymphadenopathy, unexplained weight loss, bleeding or easy bruising, or recurrent infections (negated text skipped). Splenomegaly of unknown cause is a red flag; only recorded hypersplenism or portal hypertension explains a low count | {gb} |

## 3. Decision: the first matching row sets the risk and the suggestions {{#rows}}

Risk codes are those of `http://terminology.hl7.org/CodeSystem/risk-probability`; cards are
`info` for low, `warning` for moderate and `critical` for high risk. Repeat windows count from
the index CBC, and no order window starts in the past. Smear, referral and B12/folate are due
within {t.workup_asap_days} day (`asap`), {t.workup_urgent_days} days (`urgent`) or
{t.workup_routine_days} days (`routine`).

### Row 1 — febrile neutropenia {{#row-1}}

Fever and ANC < {n(t.febrile_anc_below)}. **High** risk. Urgent evaluation (`stat`): emergency
assessment, blood cultures and empiric broad-spectrum antibiotics within
{t.stat_evaluation_hours} hour ({asco}; {idsa}).

### Row 1b — presumed febrile neutropenia {{#row-1b}}

Fever with the ANC unknown, and a chemotherapy context or WBC < {n(t.presumed_fn_wbc_below)}.
**High** risk. Urgent evaluation (`stat`, as row 1: treat as neutropenic sepsis without waiting
for the count — {nice}) and a repeat CBC with differential (`stat`, now).

### Row 2 — severe or profound neutropenia without fever {{#row-2}}

ANC < {n(t.anc_moderate_floor)} (or a WBC that proves it). **High** risk. Repeat CBC
(`asap`, {t.repeat_severe_start_d}–{t.repeat_severe_end_d} days: confirm within 24 h),
peripheral smear and haematology referral (`asap`) ({ctcae}; {gb}).

### Row 3 — pancytopenia {{#row-3}}

**High** risk. Repeat CBC (`asap`, {t.repeat_pancytopenia_start_d}–{t.repeat_pancytopenia_end_d}
days), smear and haematology referral (`asap`), vitamin B12 and folate (`asap`) unless recently
normal ({gb}).

### Row 4 — moderate neutropenia {{#row-4}}

ANC {n(t.anc_moderate_floor)}–<{n(t.anc_mild_floor)}. **Moderate** risk, **high** with a
high-risk medication. Repeat CBC (`urgent`, {t.repeat_moderate_start_d}–{t.repeat_moderate_end_d}
days; {t.repeat_clozapine_start_d}–{t.repeat_clozapine_end_d} on clozapine — {cloz}), smear
and haematology referral (`urgent`; referral is mandatory below 1.0 — {gb}).

### Row 5 — documented Duffy-null phenotype {{#row-5}}

Duffy-null documented, ANC ≥ {n(t.duffy_null_anc_floor)}, WBC ≥ {n(t.wbc_red_flag)}, and no
fever, bicytopenia, macrocytosis, decline or red-flag condition. **Low** risk; nothing is
proposed: no smear, B12/folate, referral or urgent evaluation ({merz}).

### Row 6 — leukopenia or mild neutropenia with fever {{#row-6}}

**Moderate** risk. Urgent evaluation (`urgent`, same day: within
{t.urgent_evaluation_hours} h) — fever with a low white count may be a serious bacterial
infection ({idsa}).

### Row 7 — leukopenia or mild neutropenia with a concern {{#row-7}}

With WBC < {n(t.wbc_red_flag)}, bicytopenia, macrocytosis, progressive decline, a red-flag
condition or a high-risk medication. **Moderate** risk. Repeat CBC (`routine`,
{t.repeat_mild_start_d}–{t.repeat_mild_end_d} days; `urgent` {t.repeat_clozapine_start_d}–{t.repeat_clozapine_end_d}
on clozapine with mild neutropenia — {cloz}); a smear with WBC < {n(t.wbc_red_flag)},
bicytopenia, macrocytosis, decline or a red flag; B12 and folate with bicytopenia, macrocytosis
or decline (unless recently normal); haematology referral (`routine`) with bicytopenia, decline
or a red flag ({gb}).

### Row 8 — persistent neutropenia {{#row-8}}

**Moderate** risk. B12 and folate (unless recently normal) and a smear (`routine`); a routine
haematology referral is offered as optional; no short repeat ({gb}).

### Row 9 — stable chronic leukopenia {{#row-9}}

Leukopenia, stable, with a known normal ANC and no red-flag condition. **Low** risk; nothing is
proposed, and the card says it is reassuring ({gb}).

### Row 10 — leukopenia or mild neutropenia, otherwise {{#row-10}}

**Low** risk. Repeat CBC (`routine`): mild neutropenia {t.repeat_mild_start_d}–{t.repeat_mild_end_d}
days; leukopenia with a normal ANC {t.repeat_leukopenia_start_d}–{t.repeat_leukopenia_end_d}
days; a child with a viral illness in the last {t.recent_viral_days} days
{t.repeat_child_viral_start_d}–{t.repeat_child_viral_end_d} days ({gb}; {hl}).

### Row 11 — no leukopenia, ANC unknown {{#row-11}}

**Negligible**: a normal WBC without a differential is a normal count; nothing is proposed. The
output notes that no differential was available.

### Row 12 — normal {{#row-12}}

**Negligible**: nothing is emitted and no card is shown — unless a value could not be used,
which is then named (1.6, 1.8).

### ANC unknown {{#anc-unknown}}

Whenever the ANC is unknown and a repeat CBC is proposed, it is a CBC **with differential**
within 0–{t.repeat_anc_unknown_end_d} days, and within
0–{t.repeat_anc_unknown_concern_end_d} days (`asap`) with WBC < {n(t.wbc_red_flag)}, a
red-flag condition or a chemotherapy context: a red flag never waits longer than a plain low
count.

### 3a. Modifiers, on top of the first matching row {{#modifiers}}

The first matching row sets the base; these are then added (a suggestion already present keeps
the more urgent priority and the earlier window; risk only goes up):

- **Fever with any cytopenia** (leukopenia, neutropenia of any grade or unknown, bicytopenia,
  pancytopenia): urgent evaluation at least `urgent` (`stat` in rows 1 and 1b); risk at least
  moderate. Fever is never lost behind another row ({idsa}).
- **A red-flag condition** with a low white count: smear and haematology referral (at least
  `routine`); risk at least moderate; never "reassuring" (rows 5 and 9 do not apply) ({gb}).
- **Future-stamped or preliminary data** that would raise the assessment raise it, and the
  output says why (1.2, 1.6).

### Always, when anything is found {{#always}}

- Active medications known to lower white cells, and recorded conditions that can explain a
  low count (SLE, rheumatoid arthritis, viral infection, HIV, hypersplenism, chemotherapy,
  alcohol use) are named. On anticancer treatment, neutropenia is expected: the advice is to
  manage it per the oncology protocol ({nice}; {asco}); for other drugs with moderate or worse
  neutropenia, to consider holding the drug with haematology advice ({andersohn}).
- Nothing already open for the patient (an active or draft ServiceRequest with the same code)
  is proposed again; when the open order is less urgent than the finding needs, the output says
  to expedite it. B12/folate are not proposed when both were recently normal; the output says so.
- The patient is told the infection warning signs: fever above 38.0 °C, breathing difficulty,
  severe diarrhoea, confusion ({gb}).

## 4. What is emitted {{#output}}

- **RiskAssessment**: `prediction[0].qualitativeRisk` is the risk (none when the count could not
  be assessed); `basis` the Observations used; `reasonCode` one coding per finding from
  `http://fhir-leuko.org/fhir/CodeSystem/leukopenia-finding` (with SNOMED CT where one exists);
  the rationale cites the references below.
- **ServiceRequest** per suggestion: intent `proposal`, status `draft`, the standard code and a
  `leukopenia-action` coding, `priority`, `occurrencePeriod` (the window), `reasonReference` →
  the index CBC Observations, `reasonCode` → the findings, `supportingInfo` → the RiskAssessment.
- An **OperationOutcome** lists every piece of data that could not be used.

## 5. References {{#references}}

{refs}
- **{DECISION_TABLE.short}**: this page.
"""


def main() -> int:
    sys.stdout.write(render_markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
