"""Every clinical number fhir-leuko uses, each with its source beside it.

This module is the one place a threshold lives. A site overrides any field through
configuration (``fhir_leuko.config``); the defaults below are the decision table in
``docs/clinical-rules.md`` (seed files are cited by their number, e.g. "seed 002").
Counts are in 10^9/L (= 10^3/uL); 1,500/mm3 is 1.5.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Thresholds:
    # --- White cell lower limits ------------------------------------------------------------
    # Adult WBC LLN when the result carries no referenceRange.low. Seed 001 (4,000/uL); labs
    # differ (seed 002 uses 4.5, seed 003 uses 3.5), so a result's own range wins.
    wbc_lln_adult: float = 4.0
    # Paediatric WBC LLN: under 2 y 6.0, 2-17 y 5.5 (Univ. of Iowa paediatric reference
    # ranges; Pediatrics in Review). Never apply adult limits to a child.
    wbc_lln_under_2y: float = 6.0
    wbc_lln_2_to_17y: float = 5.5
    # ANC LLN: adults 1.5 (seed 002: "normal 1500-8000"; seed 000); children 1.0 under 1 y,
    # 1.5 from 1 y (paediatric reference ranges, as above).
    anc_lln_adult: float = 1.5
    anc_lln_under_1y: float = 1.0
    anc_lln_from_1y: float = 1.5
    adult_age_years: int = 18

    # --- Neutropenia grade (lower bound belongs to the tier) ---------------------------------
    # Mild 1.0 <= ANC < 1.5, moderate 0.5 <= ANC < 1.0, severe 0.1 <= ANC < 0.5 (seed 002;
    # seed 000; CTCAE v5 bands); profound < 0.1 (IDSA 2010).
    anc_mild_floor: float = 1.0
    anc_moderate_floor: float = 0.5
    anc_severe_floor: float = 0.1

    # --- Red flags -----------------------------------------------------------------------------
    # WBC < 3.0 is the red-flag threshold requiring closer monitoring (seed 000).
    wbc_red_flag: float = 3.0

    # --- Fever ---------------------------------------------------------------------------------
    # One temperature >= 38.3 C, or two >= 38.0 C at least 1 h apart, within 24 h before the
    # index CBC or since (IDSA 2010; CTCAE). More sensitive than seed 002 (> 38.5 C), never less.
    fever_single_c: float = 38.3
    fever_sustained_c: float = 38.0
    fever_sustained_gap_hours: float = 1.0
    fever_lookback_hours: float = 24.0
    # Febrile neutropenia: fever and ANC < 1.0 (seed 002, seed 000; CTCAE v5, whose < 1.0
    # covers IDSA's "expected to fall below 0.5 within 48 h").
    febrile_anc_below: float = 1.0

    # --- Other cell lines (seed 000: "bi- or pancytopenia usually implies insufficient
    # production in the bone marrow"; seeds 001, 002) --------------------------------------------
    # Anaemia, WHO: Hb < 13.0 g/dL men >= 15 y, < 12.0 women >= 15 y and sex unknown
    # (clinical-rules.md), < 11.0 under 15 y (WHO; seeds 000, 001, 002).
    hb_low_male: float = 13.0
    hb_low_female: float = 12.0
    hb_low_child: float = 11.0
    hb_adult_age_years: int = 15
    # Thrombocytopenia: platelets < 150 x 10^9/L (seeds 000, 001).
    platelets_low: float = 150.0
    # Macrocytosis: MCV > 100 fL in adults (seed 002 RBC indices; seed 000 megaloblastosis).
    mcv_high: float = 100.0

    # --- Trends --------------------------------------------------------------------------------
    # Serial counts are read from this window before the index CBC (the CDS prefetch asks for
    # 12 months; seed 000 "check previous blood counts").
    trend_lookback_days: int = 365
    # Progressive decline: >= 3 WBC results, each lower than the one before, the latest below
    # LLN (seed 000, seed 001).
    decline_min_results: int = 3
    # Stable: >= 3 WBC results spanning >= 180 days, max - min <= 0.5, not declining
    # (seed 000: "stable counts suggest benign etiology").
    stable_min_results: int = 3
    stable_min_span_days: int = 180
    stable_max_range: float = 0.5
    # Persistent neutropenia: >= 3 draws spanning > 90 days, ANC below LLN on every one, not
    # declining (seed 002: chronic > 3 months; seed 000).
    persistent_min_draws: int = 3
    persistent_min_span_days: int = 90

    # --- B12 / folate "recently normal" (lab reference ranges) ----------------------------------
    b12_normal_min_pg_ml: float = 180.0
    folate_normal_min_ng_ml: float = 4.0
    b12_folate_recent_days: int = 90
    # RBC folate (LOINC 2283-0) has its own range (lab reference ranges: commonly
    # > 140 ng/mL). A result's own referenceRange.low wins over any default here.
    rbc_folate_normal_min_ng_ml: float = 140.0

    # --- Duffy-null ----------------------------------------------------------------------------
    # Documented Duffy-null phenotype with ANC >= 1.21 and no other concern: no work-up
    # (Merz et al. 2023; ASH Choosing Wisely). Never inferred from race.
    duffy_null_anc_floor: float = 1.21

    # --- Repeat-CBC windows, days from the index CBC (clinical-rules.md section 3) --------------
    # Row 2, severe/profound afebrile: confirm within 24 h (seed 002; seed 000).
    repeat_severe_start_d: int = 0
    repeat_severe_end_d: int = 1
    # Row 3, pancytopenia: within a week (seed 000: marrow production failure).
    repeat_pancytopenia_start_d: int = 0
    repeat_pancytopenia_end_d: int = 7
    # Row 4, moderate neutropenia: 1-7 d (seed 000: haematology mandatory below 1.0).
    repeat_moderate_start_d: int = 1
    repeat_moderate_end_d: int = 7
    # Clozapine with moderate or mild neutropenia: 0-1 d (clozapine ANC monitoring practice).
    repeat_clozapine_start_d: int = 0
    repeat_clozapine_end_d: int = 1
    # Rows 7 and 10, mild neutropenia or leukopenia with a concern: 7-14 d (seed 002:
    # "repeat CBC in 1-2 weeks").
    repeat_mild_start_d: int = 7
    repeat_mild_end_d: int = 14
    # Row 10, leukopenia with normal ANC: 4-6 weeks (seed 000).
    repeat_leukopenia_start_d: int = 28
    repeat_leukopenia_end_d: int = 42
    # Row 10, a child with a recent viral illness: 3-4 weeks (transient post-viral
    # leukopenia, seeds 001, 004).
    repeat_child_viral_start_d: int = 21
    repeat_child_viral_end_d: int = 28
    # Viral illness counts as recent within this many days of the index CBC (seeds 001, 004:
    # transient post-viral leukopenia; our reading, docs/clinical-logic.md).
    recent_viral_days: int = 30
    # Row 11 (and leukopenia with ANC unknown): a differential within a week (clinical-rules.md
    # section 3, row 11).
    repeat_anc_unknown_start_d: int = 0
    repeat_anc_unknown_end_d: int = 7
    # Row 1, febrile neutropenia: emergency assessment, cultures and empiric antibiotics
    # within 1 h (seed 000; ASCO/IDSA 2018).
    stat_evaluation_hours: int = 1
    # Row 6, leukopenia or mild neutropenia with fever: same-day evaluation (seed 000), so
    # within 12 h of the evaluation.
    urgent_evaluation_hours: int = 12
    # Work-up other than the repeat CBC (smear, referral, B12/folate) counts from the
    # evaluation time, by priority (clinical-rules.md section 3): asap within a day (row 2:
    # "confirm within 24 h"), urgent within a week (row 4's window), routine within two weeks
    # (rows 7-8's window).
    workup_asap_days: int = 1
    workup_urgent_days: int = 7
    workup_routine_days: int = 14

    # --- Draw grouping -------------------------------------------------------------------------
    # Results with effective times within 1 h belong to one draw (clinical-rules.md 1.4).
    same_draw_tolerance_minutes: int = 60

    # --- Plausibility (codes.md: flag an implausible magnitude instead of rescaling) -----------
    wbc_max_plausible: float = 500.0
    anc_max_plausible: float = 500.0
    platelets_max_plausible: float = 5000.0
    hb_max_plausible_g_dl: float = 30.0
    mcv_min_plausible: float = 40.0
    mcv_max_plausible: float = 200.0
    temp_min_plausible_c: float = 25.0
    temp_max_plausible_c: float = 46.0

    def replace(self, **changes: float | int) -> Thresholds:
        """A copy with some thresholds changed (a site's configuration)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


DEFAULT_THRESHOLDS = Thresholds()


def threshold_names() -> tuple[str, ...]:
    """The names a configuration may override, for validation and documentation."""
    return tuple(f.name for f in dataclasses.fields(Thresholds))
