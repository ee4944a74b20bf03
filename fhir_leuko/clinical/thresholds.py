"""Every clinical number fhir-leuko uses, each with its source beside it.

This module is the one place a threshold lives. A site overrides any field through
configuration (``fhir_leuko.config``); the defaults below are the project's decision table,
version 2 (``docs/clinical-rules.md``, generated from this module by
``fhir_leuko.clinical.table``, and served at ``/rules``). Sources are cited by the short names
of ``fhir_leuko.clinical.references``. Counts are in 10^9/L (= 10^3/uL); 1,500/mm3 is 1.5.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Thresholds:
    # --- White cell lower limits ------------------------------------------------------------
    # Adult WBC LLN when the result carries no referenceRange.low: 4.0 (Gibson & Berliner
    # 2014; labs differ between 3.5 and 4.5, so a result's own range wins).
    wbc_lln_adult: float = 4.0
    # Paediatric WBC LLN (Harriet Lane age-specific ranges): 6.0 under 2 y, 5.5 from 2 to 7 y,
    # 4.5 from 8 to 17 y. Never apply adult limits to a child, never over-call a teenager.
    wbc_lln_under_2y: float = 6.0
    wbc_lln_2_to_7y: float = 5.5
    wbc_lln_8_to_17y: float = 4.5
    # ANC LLN: adults 1.5 (CTCAE v5.0; Gibson & Berliner 2014). Children (Harriet Lane;
    # Schmutz 2008 for neonates): 1.5 under 1 month (neonatal limits are higher and depend
    # on hours of life: never grade a neonate against 1.0), 1.0 from 1 month to 1 y, 1.5 from
    # 1 y.
    anc_lln_adult: float = 1.5
    anc_lln_neonate: float = 1.5
    anc_lln_1m_to_1y: float = 1.0
    anc_lln_from_1y: float = 1.5
    adult_age_years: int = 18

    # --- Neutropenia grade (lower bound belongs to the tier) ---------------------------------
    # Mild 1.0 <= ANC < 1.5, moderate 0.5 <= ANC < 1.0, severe 0.1 <= ANC < 0.5 (CTCAE v5.0
    # bands; clozapine label); profound < 0.1 (IDSA 2010).
    anc_mild_floor: float = 1.0
    anc_moderate_floor: float = 0.5
    anc_severe_floor: float = 0.1

    # --- Red flags -----------------------------------------------------------------------------
    # WBC < 3.0 asks for closer monitoring and a smear (Gibson & Berliner 2014).
    wbc_red_flag: float = 3.0

    # --- Fever ---------------------------------------------------------------------------------
    # One temperature >= 38.3 C, or two >= 38.0 C at least 1 h apart, within 24 h before the
    # index CBC or since (IDSA 2010; CTCAE v5.0).
    fever_single_c: float = 38.3
    fever_sustained_c: float = 38.0
    fever_sustained_gap_hours: float = 1.0
    fever_lookback_hours: float = 24.0
    # Febrile neutropenia: fever and ANC < 1.0 (CTCAE v5.0, whose < 1.0 covers IDSA 2010's
    # "expected to fall below 0.5 within 48 h").
    febrile_anc_below: float = 1.0
    # Row 1b, presumed febrile neutropenia: fever with the ANC unknown and WBC < 1.0 (or a
    # chemotherapy context): treat as neutropenic sepsis without waiting for the count
    # (NICE CG151).
    presumed_fn_wbc_below: float = 1.0

    # --- Other cell lines (Gibson & Berliner 2014: bi- or pancytopenia points to the marrow) --
    # Anaemia, WHO 2011: Hb < 13.0 g/dL men >= 15 y; < 12.0 women >= 15 y and sex unknown;
    # < 11.0 in pregnancy; < 12.0 at 12-14 y; < 11.5 at 5-11 y; < 11.0 at 6 months-4 y. WHO
    # gives no limit under 6 months: no anaemia is called there.
    hb_low_male: float = 13.0
    hb_low_female: float = 12.0
    hb_low_pregnant: float = 11.0
    hb_low_12_to_14y: float = 12.0
    hb_low_5_to_11y: float = 11.5
    hb_low_6m_to_4y: float = 11.0
    hb_adult_age_years: int = 15
    # Thrombocytopenia: platelets < 150 x 10^9/L (CTCAE v5.0 lower limit of normal).
    platelets_low: float = 150.0
    # Macrocytosis: MCV > 100 fL at any age (Gibson & Berliner 2014: B12/folate deficiency;
    # children's upper limits are lower still, so this never over-calls a child).
    mcv_high: float = 100.0

    # --- Trends --------------------------------------------------------------------------------
    # Serial counts are read from 24 months before the index CBC (the CDS prefetch and the
    # FHIR queries read 24 months of CBCs; Gibson & Berliner 2014: compare with old counts).
    trend_lookback_days: int = 730
    # Progressive decline: >= 3 draws, falling at each step, by >= 0.5 in all for the WBC or
    # >= 0.3 for the ANC, the latest below its LLN. The minimum fall keeps analytical noise
    # (1.35 -> 1.30 -> 1.28) from counting (Gibson & Berliner 2014: the ANC matters more than
    # the total WBC).
    decline_min_draws: int = 3
    decline_min_fall_wbc: float = 0.5
    decline_min_fall_anc: float = 0.3
    # Stable: >= 3 WBC draws spanning >= 180 days, max - min <= 0.5, neither WBC nor ANC
    # declining (Gibson & Berliner 2014: stable counts suggest a benign cause).
    stable_min_draws: int = 3
    stable_min_span_days: int = 180
    stable_max_range: float = 0.5
    # Persistent neutropenia: >= 3 draws spanning > 90 days, ANC below LLN on every one, not
    # declining (chronic neutropenia lasts > 3 months; Gibson & Berliner 2014).
    persistent_min_draws: int = 3
    persistent_min_span_days: int = 90

    # --- B12 / folate "recently normal" (common lab reference ranges) --------------------------
    b12_normal_min_pg_ml: float = 180.0
    folate_normal_min_ng_ml: float = 4.0
    b12_folate_recent_days: int = 90
    # RBC folate (LOINC 2283-0) has its own range (common lab reference ranges: > 140 ng/mL).
    # A result's own referenceRange.low wins over any default here.
    rbc_folate_normal_min_ng_ml: float = 140.0

    # --- Duffy-null ----------------------------------------------------------------------------
    # Documented Duffy-null phenotype with ANC >= 1.21 (its reference range's lower limit),
    # WBC >= 3.0 and no other concern: no work-up (Merz 2023). Never inferred from race.
    duffy_null_anc_floor: float = 1.21

    # --- Repeat-CBC windows, days from the index CBC -------------------------------------------
    # Row 1b, presumed febrile neutropenia: a CBC with differential now (NICE CG151).
    repeat_presumed_fn_start_d: int = 0
    repeat_presumed_fn_end_d: int = 0
    # Row 2, severe/profound afebrile: confirm within 24 h (IDSA 2010; CTCAE v5.0).
    repeat_severe_start_d: int = 0
    repeat_severe_end_d: int = 1
    # Row 3, pancytopenia: within a week (Gibson & Berliner 2014: marrow failure work-up).
    repeat_pancytopenia_start_d: int = 0
    repeat_pancytopenia_end_d: int = 7
    # Row 4, moderate neutropenia: 1-7 d, haematology mandatory below 1.0
    # (Gibson & Berliner 2014).
    repeat_moderate_start_d: int = 1
    repeat_moderate_end_d: int = 7
    # Clozapine with moderate or mild neutropenia: 0-1 d (clozapine label: monitor closely).
    repeat_clozapine_start_d: int = 0
    repeat_clozapine_end_d: int = 1
    # Rows 7 and 10, mild neutropenia or leukopenia with a concern: 7-14 d
    # (Gibson & Berliner 2014: repeat in 1-2 weeks).
    repeat_mild_start_d: int = 7
    repeat_mild_end_d: int = 14
    # Row 10, leukopenia with normal ANC: 4-6 weeks (Gibson & Berliner 2014).
    repeat_leukopenia_start_d: int = 28
    repeat_leukopenia_end_d: int = 42
    # Row 10, a child with a recent viral illness: 3-4 weeks (transient post-viral
    # leukopenia; Harriet Lane).
    repeat_child_viral_start_d: int = 21
    repeat_child_viral_end_d: int = 28
    # Viral illness counts as recent within this many days of the index CBC (fhir-leuko
    # decision table, row 10: transient post-viral leukopenia lasts weeks; Harriet Lane).
    recent_viral_days: int = 30
    # ANC unknown: whenever a repeat CBC is proposed it is a CBC with differential within
    # 0-7 d, and 0-2 d (asap) with WBC < 3.0, a red-flag condition or chemotherapy context (a
    # red flag never waits longer than a plain low count; fhir-leuko decision table).
    repeat_anc_unknown_end_d: int = 7
    repeat_anc_unknown_concern_end_d: int = 2
    # Rows 1 and 1b: emergency assessment, cultures and empiric antibiotics within 1 h
    # (ASCO/IDSA 2018; NICE CG151).
    stat_evaluation_hours: int = 1
    # Row 6 and the fever modifier: same-day evaluation, within 12 h of the evaluation
    # (IDSA 2010: fever with a low count may be a serious bacterial infection).
    urgent_evaluation_hours: int = 12
    # Work-up other than the repeat CBC (smear, referral, B12/folate) counts from the
    # evaluation time, by priority: asap within a day, urgent within a week, routine within
    # two weeks (fhir-leuko decision table: the repeat windows of rows 2, 4 and 7).
    workup_asap_days: int = 1
    workup_urgent_days: int = 7
    workup_routine_days: int = 14

    # --- Data ----------------------------------------------------------------------------------
    # Results with effective times within 1 h belong to one draw (decision table 1.4).
    same_draw_tolerance_minutes: int = 60
    # Future-stamped results (a clock or time-zone error): up to 24 h ahead they may raise an
    # alert, never suppress one; beyond that they are not used (decision table 1.6).
    future_tolerance_hours: float = 24.0

    # --- Plausibility (flag an implausible magnitude instead of rescaling it) ------------------
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
