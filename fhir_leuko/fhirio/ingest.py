"""FHIR R4 JSON -> :class:`PatientLabs` (a tolerant reader).

Reads only what the rules use and reads it fast: Observations are filtered by LOINC code on
the raw JSON before anything else is looked at; no fhir.resources model validation here (it
costs ~100x the JSON parse on a 1,200-Observation prefetch). Anything we cannot use is
reported as a :class:`DataIssue` naming the resource, never guessed, never a crash.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, date, datetime
from typing import Any

import orjson

from fhir_leuko.clinical.model import (
    ANALYTE_LABEL,
    Action,
    Analyte,
    ClinicalCondition,
    DataIssue,
    Medication,
    OpenOrder,
    PatientLabs,
    Priority,
    Result,
)
from fhir_leuko.clinical.thresholds import DEFAULT_THRESHOLDS, Thresholds
from fhir_leuko.errors import InputError
from fhir_leuko.fhirio import codes
from fhir_leuko.fhirio.units import Converter, UnitProblem, converter_for

JSON = dict[str, Any]

USED_STATUSES = frozenset({"final", "amended", "corrected", "preliminary"})
IGNORED_STATUSES = frozenset({"registered", "cancelled", "entered-in-error", "unknown"})
OPEN_ORDER_STATUSES = frozenset({"active", "draft"})
ACTIVE_MED_STATUSES = frozenset({"active"})
INACTIVE_CONDITION_STATUSES = frozenset({"inactive", "remission", "resolved"})
BAD_VERIFICATION = frozenset({"refuted", "entered-in-error"})

_NAME_RE = re.compile(
    r"\b("
    + "|".join(re.escape(n) for n in sorted(codes.HIGH_RISK_NAMES, key=len, reverse=True))
    + r")\b"
)
_CONDITION_WORDS = {
    kind: re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b")
    for kind, (_, _, words) in codes.CONDITION_MATCHERS.items()
}
_DUFFY_VALUE_RE = re.compile(r"null|fy\s*\(\s*a\s*-\s*b\s*-\s*\)|negative|fy\(a-b-\)")


def load_json(data: bytes | str) -> Any:
    """Parse JSON with a one-sentence error for bad input."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"input is not valid JSON ({exc.args[0].split(':')[0]})") from None


def resources_of(doc: Any) -> list[JSON]:
    """The resources in a Bundle of any type, a bare list, or a single resource.

    Accepts collection / searchset / transaction / batch-response / history Bundles, nested
    Bundles (e.g. CDS Hooks prefetch values), and ``entry.response`` entries without a
    resource (skipped). Raises :class:`InputError` for anything that is not FHIR.
    """
    out: list[JSON] = []
    _collect(doc, out, depth=0)
    return out


def _collect(doc: Any, out: list[JSON], depth: int) -> None:
    if depth > 4:
        raise InputError("Bundles are nested more than 4 levels deep")
    if isinstance(doc, list):
        for item in doc:
            # A plain resource is kept here; Bundles and anything odd take the full path.
            rt = item.get("resourceType") if isinstance(item, dict) else None
            if isinstance(rt, str) and rt != "Bundle" and depth < 4:
                out.append(item)
            elif item is not None:
                _collect(item, out, depth + 1)
        return
    if not isinstance(doc, dict) or not isinstance(doc.get("resourceType"), str):
        kind = type(doc).__name__ if not isinstance(doc, dict) else "object without resourceType"
        raise InputError(f"input is not FHIR: expected a resource, Bundle or list, got {kind}")
    if doc["resourceType"] == "Bundle":
        entries = doc.get("entry") or []
        if not isinstance(entries, list):
            raise InputError("Bundle.entry is not a list")
        for e in entries:
            res = e.get("resource") if isinstance(e, dict) else None
            if isinstance(res, dict):
                if res.get("resourceType") == "Bundle":
                    _collect(res, out, depth + 1)
                elif isinstance(res.get("resourceType"), str):
                    if "id" not in res and isinstance(e.get("fullUrl"), str):
                        res = {**res, "_fullUrl": e["fullUrl"]}
                    out.append(res)
        return
    out.append(doc)


def ingest(
    doc: Any,
    *,
    patient_id: str | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> PatientLabs:
    """Read FHIR JSON (already parsed) into :class:`PatientLabs` for one patient."""
    return ingest_resources(resources_of(doc), patient_id=patient_id, thresholds=thresholds)


def ingest_resources(
    resources: Iterable[JSON],
    *,
    patient_id: str | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> PatientLabs:
    reader = _Reader(thresholds)
    patients: list[JSON] = []
    others: list[JSON] = []
    observation = reader.observation
    for res in resources:
        rt = res.get("resourceType")
        if rt == "Observation":
            try:  # reader.guarded, inlined: the one loop that runs for every result
                observation(res)
            except _MALFORMED:
                reader.malformed(res)
        elif rt == "Patient":
            patients.append(res)
        else:
            others.append(res)
    by_ref = {f"{r.get('resourceType')}/{r.get('id')}": r for r in others if "id" in r}
    report_draw: dict[str, str] = {}
    for res in others:
        rt = res.get("resourceType")
        if rt == "DiagnosticReport":
            reader.guarded(_report_members, res, report_draw)
        elif rt in ("MedicationRequest", "MedicationStatement"):
            reader.guarded(reader.medication, res, by_ref)
        elif rt == "Condition":
            reader.guarded(reader.condition, res)
        elif rt == "ServiceRequest":
            reader.guarded(reader.service_request, res)

    subject_ids = {s for s in reader.subjects if s}
    pid = patient_id
    if pid is None:
        ids: set[str] = {
            str(p["id"]) for p in patients if isinstance(p.get("id"), str)
        } | subject_ids
        if len(ids) > 1:
            shown = ", ".join(f"Patient/{i}" for i in sorted(ids)[:3])
            raise InputError(
                f"the input holds data of more than one patient ({shown}); "
                "evaluate one patient at a time"
            )
        pid = next(iter(ids), None)
    elif subject_ids - {pid}:
        other = sorted(subject_ids - {pid})[0]
        raise InputError(
            f"Observations belong to Patient/{other}, not to the requested Patient/{pid}"
        )
    patient = next((p for p in patients if p.get("id") == pid), None)
    if patient is None and len(patients) == 1:
        other_id = patients[0].get("id")
        if other_id is None:
            patient = patients[0]
        else:
            # Another person's age and sex must never set this patient's limits.
            reader.issue(
                "other-patient",
                f"Patient/{other_id} is not the evaluated Patient/{pid}: its birthDate and gender "
                "were not used",
            )
    birth, sex = None, None
    if patient is not None:
        birth = _parse_birth(patient.get("birthDate"), reader)
        g = patient.get("gender")
        sex = g if isinstance(g, str) else None
    if pid is None:
        reader.issue("no-patient", "No Patient and no Observation.subject: the patient is unknown")

    results = reader.results
    if report_draw:
        results = [
            r
            if r.draw_id is not None or r.ref not in report_draw
            else _with_draw(r, report_draw[r.ref])
            for r in results
        ]
    return PatientLabs(
        patient_id=pid,
        birth_date=birth,
        sex=sex,
        results=tuple(results),
        medications=tuple(reader.medications),
        conditions=tuple(reader.conditions),
        open_orders=tuple(reader.orders),
        issues=tuple(reader.issues),
    )


def _report_members(res: JSON, report_draw: dict[str, str]) -> None:
    rid = _ref_of(res)
    for m in res.get("result") or ():
        if isinstance(m, dict) and isinstance(m.get("reference"), str):
            report_draw[_rel(m["reference"])] = rid


def _with_draw(r: Result, draw_id: str) -> Result:
    return Result(r.analyte, r.value, r.time, r.ref, r.status, r.ref_low, draw_id)


@functools.lru_cache(maxsize=4096)
def _rel(reference: str) -> str:
    """'https://x/fhir/Observation/1/_history/2' -> 'Observation/1'."""
    parts = [p for p in reference.split("/") if p]
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    return "/".join(parts[-2:]) if len(parts) >= 2 else reference


def _ref_of(res: JSON) -> str:
    rid = res.get("id")
    if isinstance(rid, str):
        return f"{res['resourceType']}/{rid}"
    return str(res.get("_fullUrl") or f"{res['resourceType']}/(no id)")


def parse_time(value: Any) -> datetime | None:
    """FHIR date / dateTime / instant -> aware datetime (UTC when no zone is given)."""
    if not isinstance(value, str) or len(value) < 4:
        return None
    return _parse_time_str(value)


@functools.lru_cache(maxsize=8192)
def _parse_time_str(value: str) -> datetime | None:
    """Cached: the results of one draw share one time string, and the CDS prefetch windows
    parse the same strings before ingest does."""
    try:
        if len(value) == 4:
            dt = datetime(int(value), 1, 1)
        elif len(value) == 7:
            dt = datetime(int(value[:4]), int(value[5:7]), 1)
        else:
            dt = datetime.fromisoformat(value)
    except ValueError:
        return None
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def _parse_birth(value: Any, reader: _Reader) -> date | None:
    dt = parse_time(value)
    if dt is None:
        if value is not None:
            reader.issue("bad-birth-date", f"Patient.birthDate '{value}' is not a FHIR date")
        return None
    return dt.date()


_PRIORITIES = {p.value: p for p in Priority}
#: What reading a resource whose elements have the wrong JSON types raises.
_MALFORMED = (TypeError, AttributeError, ValueError, KeyError, IndexError)


class _Reader:
    """Accumulates results and issues while walking resources once."""

    def __init__(self, t: Thresholds) -> None:
        self.t = t
        self.results: list[Result] = []
        self.issues: list[DataIssue] = []
        self.medications: list[Medication] = []
        self.conditions: list[ClinicalCondition] = []
        self.orders: list[OpenOrder] = []
        self.subjects: set[str] = set()
        self._plausible: Mapping[Analyte, tuple[float, float]] = {
            Analyte.WBC: (0.0, t.wbc_max_plausible),
            Analyte.ANC: (0.0, t.anc_max_plausible),
            Analyte.BAND_COUNT: (0.0, t.anc_max_plausible),
            Analyte.LYMPHOCYTE_COUNT: (0.0, t.wbc_max_plausible),
            Analyte.PLATELETS: (0.0, t.platelets_max_plausible),
            Analyte.HAEMOGLOBIN: (0.0, t.hb_max_plausible_g_dl),
            Analyte.MCV: (t.mcv_min_plausible, t.mcv_max_plausible),
            Analyte.BODY_TEMPERATURE: (t.temp_min_plausible_c, t.temp_max_plausible_c),
            Analyte.NEUTROPHIL_PERCENT: (0.0, 100.0),
            Analyte.BAND_PERCENT: (0.0, 100.0),
            Analyte.LYMPHOCYTE_PERCENT: (0.0, 100.0),
            Analyte.VITAMIN_B12: (0.0, 1e5),
            Analyte.FOLATE: (0.0, 1e4),
        }

    def guarded(self, read: Callable[..., None], res: JSON, *args: Any) -> None:
        """Read one resource; a resource whose elements have the wrong JSON types is reported
        and skipped, never a crash of the whole evaluation (and nothing else is lost)."""
        try:
            read(res, *args)
        except _MALFORMED:
            self.malformed(res)

    def malformed(self, res: JSON) -> None:
        """Report a resource that could not be read (an element of the wrong JSON type)."""
        rid = res.get("id")
        ref = (
            f"{res.get('resourceType')}/{rid}"
            if isinstance(rid, str)
            else str(res.get("resourceType"))
        )
        self.issue(
            "malformed-resource",
            f"{ref} is not valid FHIR JSON (an element has the wrong type); it was not used",
            ref,
        )

    def issue(
        self, code: str, message: str, ref: str | None = None, severity: str = "warning"
    ) -> None:
        self.issues.append(DataIssue(code, message, ref, severity))

    # --- Observations -------------------------------------------------------------------------

    def observation(self, obs: JSON) -> None:
        code = obs.get("code")
        codings = code.get("coding") if isinstance(code, dict) else None
        analyte: Analyte | None = None
        loinc: str | None = None
        if isinstance(codings, list):
            for c in codings:
                if isinstance(c, dict) and c.get("system") == codes.LOINC:
                    a = codes.LOINC_ANALYTES.get(c.get("code"))  # type: ignore[arg-type]
                    if a is not None:
                        analyte, loinc = a, c["code"]
                        break
        components = obs.get("component")
        if analyte is None and not components:
            if isinstance(code, dict) and self._duffy_observation(obs, code):
                return
            return
        ref = _ref_of(obs)
        status = obs.get("status")
        if status not in USED_STATUSES:
            if status in IGNORED_STATUSES:
                self.issue(
                    "ignored-status",
                    f"{ref} has status '{status}' and was not used",
                    ref,
                    "information",
                )
            else:
                self.issue(
                    "bad-status", f"{ref} has an unknown status '{status}' and was not used", ref
                )
            return
        subj = obs.get("subject")
        if isinstance(subj, dict) and isinstance(subj.get("reference"), str):
            sref = _rel(subj["reference"])
            if sref.startswith("Patient/"):
                self.subjects.add(sref[8:])
        when = self._time(obs, ref)
        if when is None:
            return
        draw_id = None
        spec = obs.get("specimen")
        if isinstance(spec, dict) and isinstance(spec.get("reference"), str):
            draw_id = _rel(spec["reference"])
        if analyte is not None:
            self._value(obs, analyte, loinc, ref, status, when, draw_id)
        if isinstance(components, list):
            for i, comp in enumerate(components):
                if not isinstance(comp, dict):
                    continue
                ccodes = (comp.get("code") or {}).get("coding") or ()
                for c in ccodes:
                    if isinstance(c, dict) and c.get("system") == codes.LOINC:
                        a = codes.LOINC_ANALYTES.get(c.get("code"))  # type: ignore[arg-type]
                        if a is not None:
                            self._value(
                                comp,
                                a,
                                c["code"],
                                f"{ref}#component[{i}]",
                                status,
                                when,
                                draw_id or ref,
                            )
                            break

    def _time(self, obs: JSON, ref: str) -> datetime | None:
        raw = obs.get("effectiveDateTime") or obs.get("effectiveInstant")
        if raw is None:
            period = obs.get("effectivePeriod")
            if isinstance(period, dict):
                raw = period.get("start") or period.get("end")
        when = parse_time(raw)
        if when is None:
            issued = parse_time(obs.get("issued"))
            if issued is not None:
                self.issue(
                    "no-effective-time",
                    f"{ref} has no usable effective time; its issued time was used",
                    ref,
                    "information",
                )
                return issued
            self.issue(
                "no-effective-time", f"{ref} has no usable effective time and was not used", ref
            )
        return when

    def _value(
        self,
        holder: JSON,
        analyte: Analyte,
        loinc: str | None,
        ref: str,
        status: str,
        when: datetime,
        draw_id: str | None,
    ) -> None:
        if holder.get("dataAbsentReason") is not None:
            self.issue(
                "data-absent",
                f"{ref} ({ANALYTE_LABEL[analyte]}) has a dataAbsentReason: not a result",
                ref,
                "information",
            )
            return
        q = holder.get("valueQuantity")
        ucum: str | None = None
        unit: str | None = None
        comparator: str | None = None
        if isinstance(q, dict):
            raw = q.get("value")
            ucum, unit, comparator = q.get("code"), q.get("unit"), q.get("comparator")
            if not isinstance(ucum, str):
                ucum = None
            if not isinstance(unit, str):
                unit = None
            if not isinstance(comparator, str):
                comparator = None
        elif "valueInteger" in holder:
            raw = holder["valueInteger"]
        elif "valueString" in holder:
            raw = holder["valueString"]
        else:
            self.issue(
                "no-value",
                f"{ref} ({ANALYTE_LABEL[analyte]}) has no numeric value: not a result",
                ref,
            )
            return
        value = _number(raw)
        if value is None:
            self.issue(
                "unparseable-value",
                f"{ref} ({ANALYTE_LABEL[analyte]}) value '{raw}' is not a number",
                ref,
            )
            return
        try:
            conv = converter_for(analyte, ucum, unit)
        except UnitProblem as p:
            self.issue(p.code, f"{ref}: {p}; the value was not used", ref)
            return
        v = conv(value)
        low: float | None
        low = self._ref_low(holder, analyte, ucum, unit, conv)
        if not low and loinc == codes.RBC_FOLATE and analyte is Analyte.FOLATE:
            low = self.t.rbc_folate_normal_min_ng_ml
        lo, hi = self._plausible[analyte]
        if not (lo <= v <= hi):
            shown = f"{value:g} {ucum or unit or ''}".strip()
            self.issue(
                "implausible-value",
                f"{ref}: {ANALYTE_LABEL[analyte]} {shown} is outside any plausible range "
                "(wrong unit?); "
                "the value was not used",
                ref,
            )
            return
        if comparator in ("<", "<="):
            v = math.nextafter(v, -math.inf) if comparator == "<" else v
        elif comparator in (">", ">="):
            v = math.nextafter(v, math.inf) if comparator == ">" else v
        self.results.append(Result(analyte, v, when, ref, status, low, draw_id))

    def _ref_low(
        self,
        holder: JSON,
        analyte: Analyte,
        ucum: str | None,
        unit: str | None,
        value_conv: Converter,
    ) -> float | None:
        """referenceRange.low in the canonical unit (the value's unit when it names none)."""
        rr = holder.get("referenceRange")
        if not isinstance(rr, list):
            return None
        for r in rr:
            low = r.get("low") if isinstance(r, dict) else None
            if isinstance(low, dict):
                n = _number(low.get("value"))
                if n is None:
                    continue
                lcode, lunit = low.get("code"), low.get("unit")
                if not isinstance(lcode, str):
                    lcode = ucum
                if not isinstance(lunit, str):
                    lunit = unit
                if lcode == ucum and lunit == unit:
                    return value_conv(n)
                try:
                    return converter_for(analyte, lcode, lunit)(n)
                except UnitProblem:
                    return None
        return None

    def _duffy_observation(self, obs: JSON, code: JSON) -> bool:
        # Cheap test first: almost every Observation here is an unread lab analyte.
        words = str(code.get("text", ""))
        for c in code.get("coding") or ():
            if isinstance(c, dict) and "display" in c:
                words += str(c["display"])
        if "uffy" not in words and "UFFY" not in words:
            return False
        text = " ".join(_texts(code)).lower()
        if "duffy" not in text or obs.get("status") not in USED_STATUSES:
            return False
        vals = " ".join(
            [str(obs.get("valueString") or "")] + _texts(obs.get("valueCodeableConcept") or {})
        ).lower()
        if _DUFFY_VALUE_RE.search(vals):
            ref = _ref_of(obs)
            self.conditions.append(
                ClinicalCondition(
                    "duffy-null",
                    "Duffy-null phenotype (Fy(a-b-))",
                    ref,
                    "Observation text 'Duffy' with a null/negative value",
                )
            )
            return True
        return False

    # --- Medications, conditions, orders -------------------------------------------------------

    def medication(self, res: JSON, by_ref: Mapping[str, JSON]) -> None:
        status = res.get("status")
        if status not in ACTIVE_MED_STATUSES:
            return
        ref = _ref_of(res)
        concept = res.get("medicationCodeableConcept")
        if not isinstance(concept, dict):
            mref = res.get("medicationReference")
            target: JSON | None = None
            if isinstance(mref, dict) and isinstance(mref.get("reference"), str):
                r = mref["reference"]
                if r.startswith("#"):
                    target = next(
                        (
                            c
                            for c in res.get("contained") or ()
                            if isinstance(c, dict) and c.get("id") == r[1:]
                        ),
                        None,
                    )
                else:
                    target = by_ref.get(_rel(r))
                if target is None and isinstance(mref.get("display"), str):
                    target = {"code": {"text": mref["display"]}}
            concept = (target or {}).get("code") if target else None
        if not isinstance(concept, dict):
            # A drug we cannot see may be one that lowers white cells: say so.
            self.issue(
                "unresolved-medication",
                f"{ref}: its medication could not be read (no code, and the referenced "
                "Medication is not in the input), so it was not checked against the "
                "high-risk list",
                ref,
            )
            return
        match = match_medication(concept)
        if match is not None:
            name, how = match
            self.medications.append(Medication(name, ref, how))

    def condition(self, res: JSON) -> None:
        clinical = _first_code(res.get("clinicalStatus"))
        verification = _first_code(res.get("verificationStatus"))
        if clinical in INACTIVE_CONDITION_STATUSES or verification in BAD_VERIFICATION:
            return
        code = res.get("code")
        if not isinstance(code, dict):
            return
        ref = _ref_of(res)
        onset = parse_time(
            res.get("onsetDateTime")
            or (res.get("onsetPeriod") or {}).get("start")
            or res.get("recordedDate")
        )
        text = " ".join(_texts(code)).lower()
        if "duffy" in text and _DUFFY_VALUE_RE.search(text):
            self.conditions.append(
                ClinicalCondition(
                    "duffy-null",
                    "Duffy-null phenotype (Fy(a-b-))",
                    ref,
                    "Condition text 'Duffy' null",
                    onset,
                )
            )
            return
        codings = [c for c in code.get("coding") or () if isinstance(c, dict)]
        for kind, (snomed, icd, _) in codes.CONDITION_MATCHERS.items():
            how = None
            for c in codings:
                sys_, cd = c.get("system"), c.get("code")
                if not isinstance(cd, str):
                    continue
                if sys_ == codes.SNOMED and cd in snomed:
                    how = f"SNOMED CT {cd}"
                elif sys_ in codes.ICD10 and cd.upper().startswith(icd):
                    how = f"ICD-10 {cd}"
                if how:
                    break
            if how is None and _CONDITION_WORDS[kind].search(text):
                how = "words in the condition text"
            if how is not None:
                self.conditions.append(
                    ClinicalCondition(kind, codes.CONDITION_DISPLAY[kind], ref, how, onset)
                )
                return

    def service_request(self, res: JSON) -> None:
        if res.get("status") not in OPEN_ORDER_STATUSES:
            return
        code = res.get("code")
        codings = code.get("coding") if isinstance(code, dict) else None
        if not isinstance(codings, list):
            return
        priority = _PRIORITIES.get(res.get("priority") or "routine", Priority.ROUTINE)
        ref = _ref_of(res)
        seen: set[Action] = set()
        for c in codings:
            if not isinstance(c, dict):
                continue
            action = codes.ORDER_CODES.get((c.get("system"), c.get("code")))  # type: ignore[arg-type]
            if action is not None and action not in seen:
                seen.add(action)
                self.orders.append(OpenOrder(action, priority, ref))


def match_medication(concept: JSON) -> tuple[str, str] | None:
    """(ingredient name, how it matched) for a high-risk medication, else None.

    Ingredient RxCUI first; else the ingredient name in the text or any coding display (real
    MedicationRequests often carry clinical-drug codes, not ingredients: codes.md).
    """
    for c in concept.get("coding") or ():
        if isinstance(c, dict) and c.get("system") == codes.RXNORM:
            name = codes.HIGH_RISK_RXCUI.get(c.get("code"))  # type: ignore[arg-type]
            if name is not None:
                return name, f"RxNorm ingredient {c['code']}"
    for text in _texts(concept):
        m = _NAME_RE.search(text.lower())
        if m is not None:
            return codes.HIGH_RISK_NAMES[m.group(1)], f"name '{m.group(1)}' in '{text}'"
    return None


def _texts(concept: JSON) -> list[str]:
    out: list[str] = []
    if isinstance(concept.get("text"), str):
        out.append(concept["text"])
    for c in concept.get("coding") or ():
        if isinstance(c, dict) and isinstance(c.get("display"), str):
            out.append(c["display"])
    return out


def _first_code(concept: Any) -> str | None:
    if isinstance(concept, dict):
        for c in concept.get("coding") or ():
            if isinstance(c, dict) and isinstance(c.get("code"), str):
                return str(c["code"])
    return None


def _number(raw: Any) -> float | None:
    kind = type(raw)
    if kind is float:  # the usual case first (orjson gives exact types; bool is not int here)
        v = raw
    elif isinstance(raw, bool):
        return None
    elif isinstance(raw, int | float):
        try:
            v = float(raw)
        except OverflowError:  # an int beyond any float (parsed JSON cannot hold one)
            return None
    elif isinstance(raw, str):
        try:
            # No comma handling: "3,400" (thousands) and "3,4" (decimal) cannot be told apart.
            v = float(raw.strip())
        except ValueError:
            return None
    else:
        return None
    return v if math.isfinite(v) else None


def iter_observation_codes(resources: Iterable[JSON]) -> Iterator[str]:
    """LOINC codes of the Observations given (used by tests and diagnostics)."""
    for r in resources:
        if r.get("resourceType") == "Observation":
            for c in (r.get("code") or {}).get("coding") or ():
                if c.get("system") == codes.LOINC:
                    yield c.get("code", "")
