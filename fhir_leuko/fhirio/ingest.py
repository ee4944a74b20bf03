"""FHIR R4 JSON -> :class:`PatientLabs` (a tolerant reader).

Reads only what the rules use and reads it fast: Observations are filtered by LOINC code on
the raw JSON before anything else is looked at; no fhir.resources model validation here (it
costs ~100x the JSON parse on a 1,200-Observation prefetch). Anything we cannot use is
reported as a :class:`DataIssue` naming the resource, never guessed, never a crash.

Only the evaluated patient's data is used (clinical safety): every resource that names a
subject or patient must name this patient; another patient's resources, resources about a
patient on another server, and (when the input holds several patients) resources without a
subject are left out and reported by type and count, never by the other patient's id.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson

from fhir_leuko.clinical.model import (
    ANALYTE_LABEL,
    CANONICAL_UNITS,
    Action,
    Analyte,
    ClinicalCondition,
    DataIssue,
    Medication,
    OpenOrder,
    PatientLabs,
    Priority,
    Result,
    comparator_value,
    num,
)
from fhir_leuko.clinical.thresholds import DEFAULT_THRESHOLDS, Thresholds
from fhir_leuko.errors import InputError
from fhir_leuko.fhirio import codes
from fhir_leuko.fhirio.refs import label_of, relative, split_base, subject_reference
from fhir_leuko.fhirio.units import TEMP_UNITS, Converter, UnitProblem, converter_for

JSON = dict[str, Any]

USED_STATUSES = frozenset({"final", "amended", "corrected", "preliminary"})
IGNORED_STATUSES = frozenset({"registered", "cancelled", "entered-in-error", "unknown"})
OPEN_ORDER_STATUSES = frozenset({"active", "draft"})
ACTIVE_MED_STATUSES = frozenset({"active"})
INACTIVE_CONDITION_STATUSES = frozenset({"inactive", "remission", "resolved"})
BAD_VERIFICATION = frozenset({"refuted", "entered-in-error"})
#: A phenotype that lowers the limits must be a fact: not provisional, not a differential.
UNCERTAIN_VERIFICATION = frozenset({"unconfirmed", "provisional", "differential"})
#: Statuses of a DiagnosticReport whose time and grouping we do not take over.
BAD_REPORT_STATUSES = frozenset({"entered-in-error", "cancelled"})
#: FHIR R4 Quantity.comparator codes.
COMPARATORS = frozenset({"<", "<=", ">=", ">"})
#: A pregnancy status observed longer ago than this before the newest result is a past one.
PREGNANCY_STATUS_VALID = timedelta(days=300)

#: Resource types that name their patient in ``subject`` (R4) or ``patient`` (older forms),
#: and that we read: only the evaluated patient's count.
_SUBJECT_TYPES = frozenset(
    {
        "Observation",
        "DiagnosticReport",
        "MedicationRequest",
        "MedicationStatement",
        "MedicationOrder",
        "Condition",
        "ServiceRequest",
    }
)

_NAME_RE = re.compile(
    r"\b("
    + "|".join(re.escape(n) for n in sorted(codes.HIGH_RISK_NAMES, key=len, reverse=True))
    + r")\b"
)


def _words_re(words: Iterable[str]) -> re.Pattern[str]:
    return re.compile(
        r"\b(" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + r")\b"
    )


_CONDITION_WORDS = {
    kind: _words_re(words) for kind, (_, _, words) in codes.CONDITION_MATCHERS.items()
}
_RED_FLAG_WORDS = {flag: _words_re(words) for flag, (_, _, words) in codes.RED_FLAGS.items()}
_PREGNANCY_WORDS = _words_re(codes.PREGNANCY_WORDS)

# --- Negated, past and uncertain text ------------------------------------------------------------
# A small NegEx-like reading of problem-list text: a term counts unless a cue in its own clause
# (clauses end at . , ; : and "but") says it is absent, or (for some kinds) past or uncertain.

_CLAUSE_RE = re.compile(r"[.,;:\n()\[\]]|\bbut\b|\bhowever\b")
_NEGATED_BEFORE = _words_re(
    (
        "no",
        "not",
        "non",
        "never",
        "denies",
        "denied",
        "deny",
        "without",
        "negative for",
        "absence of",
        "absent",
        "free of",
        "ruled out",
        "excluded",
        "resolved",
        "family history",
        "family history of",
        "fh",
        "fhx",
    )
)
_NEGATED_AFTER = _words_re(
    (
        "ruled out",
        "excluded",
        "resolved",
        "absent",
        "negative",
        "denied",
        "not present",
        "not found",
        "not seen",
        "none",
    )
)
_PAST_BEFORE = _words_re(
    (
        "history of",
        "h/o",
        "hx of",
        "past",
        "previous",
        "previously",
        "prior",
        "former",
        "completed",
        "finished",
        "remote",
        "ended",
        "stopped",
    )
)
_PAST_AFTER = _words_re(("completed", "finished", "ended", "stopped", "in the past"))
_FUTURE_BEFORE = _words_re(
    (
        "planned",
        "plan for",
        "plan",
        "scheduled",
        "candidate for",
        "considering",
        "consider",
        "declined",
        "refused",
        "awaiting",
        "possible",
        "rule out",
        "r/o",
    )
)
_PREGNANCY_NOT = _words_re(
    (
        "test",
        "termination",
        "terminated",
        "loss",
        "postpartum",
        "post-partum",
        "after",
        "miscarriage",
        "abortion",
        "planning",
        "wish",
        "prevention",
        "contraception",
        "possible",
        "possibly",
        "suspected",
        "query",
        "rule out",
        "r/o",
        "unknown",
    )
)


#: A negation's scope ends after the term at these (parentheses do not end it:
#: "Lymphadenopathy (ruled out)").
_CLAUSE_END = re.compile(r"[.,;\n]|\bbut\b|\bhowever\b")


def _scopes(text: str, m: re.Match[str]) -> tuple[str, str]:
    """The words before the term in its clause, and after it up to the clause's end."""
    start = 0
    for b in _CLAUSE_RE.finditer(text, 0, m.start()):
        start = b.end()
    e = _CLAUSE_END.search(text, m.end())
    return text[start : m.start()], text[m.end() : e.start() if e else len(text)]


def _affirmed(
    text: str,
    m: re.Match[str],
    *,
    past: bool = False,
    future: bool = False,
    extra: re.Pattern[str] | None = None,
) -> bool:
    """The term matched at ``m`` is stated as present in its clause (not negated, ...)."""
    before, after = _scopes(text, m)
    if _NEGATED_BEFORE.search(before) or _NEGATED_AFTER.search(after):
        return False
    if past and (_PAST_BEFORE.search(before) or _PAST_AFTER.search(after)):
        return False
    if future and _FUTURE_BEFORE.search(before):
        return False
    return not (extra is not None and (extra.search(before) or extra.search(after)))


def _find_affirmed(pattern: re.Pattern[str], text: str, **how: Any) -> str | None:
    """The first occurrence of ``pattern`` in ``text`` stated as present, else None."""
    for m in pattern.finditer(text):
        if _affirmed(text, m, **how):
            return m.group(0)
    return None


# --- Duffy-null (clinical-rules.md v2): the phenotype Fy(a-b-) recorded as a fact ---------------

_MINUS_SIGNS = str.maketrans(
    {"\u2212": "-", "\u2013": "-", "\u2014": "-", "\u2010": "-", "\u2011": "-", "\uff0d": "-"}
)
_DUFFY_NULL_WORDS = re.compile(r"\bduffy[\s-]*null\b")
_FY_PAIR = re.compile(r"\bfy\s*\(\s*a\s*([+-])\s*,?\s*b\s*([+-])\s*\)")
_FY_SINGLE = re.compile(
    r"\bfy\s*\(?\s*([ab])\s*\)?\s*(?:antigen\s*)?[:=]?\s*"
    r"(\+|-|positive|negative|pos\b|neg\b|detected|not detected|present|absent)"
)
#: Any of these makes the record doubtful or negated: then it is not Duffy-null.
_DUFFY_DOUBT = re.compile(
    r"\?|\b(no|not|non|never|none|without|unknown|untested|pending|awaiting|possible|possibly|"
    r"probable|probably|likely|unlikely|suspected|suspect|query|queried|rule out|ruled out|"
    r"r/o|to be confirmed|tbc|tbd|unconfirmed|uncertain|indeterminate|equivocal|inconclusive|"
    r"vs|versus|or|if|anti|antibody|antibodies|denies|denied|excluded|negative for|"
    r"family history|fh)\b"
)
#: One antigen named by an Observation's code ("Fy a Ag [Presence] on Red Blood Cells", "Fy(b)").
#: One antigen named: "Fya", "Fy(a)", "Fy a", "Duffy a", or LOINC's "Fy sup(a)" (superscript a).
_FY_ANTIGEN = re.compile(
    r"\bfy\s*\(?\s*([ab])\s*\)?(?![a-z])|\bduffy\s*\(?([ab])\)?(?![a-z])"
    r"|\bfy\s+sup\s*\(\s*([ab])\s*\)"
)
_SIGN_NEGATIVE = frozenset({"negative", "neg", "not detected", "absent", "-", "0"})
_SIGN_POSITIVE = frozenset({"positive", "pos", "detected", "present", "+", "1+", "2+", "3+", "4+"})
_FY_MENTION = re.compile(r"\bfy\s*\(|\bfy\s*[ab]\b")
_DUFFY_NULL_NEGATIVE = re.compile(r"\b(negative|neg|absent|not detected|false|n)\b")


def _antigen_sign(value: str) -> str | None:
    """``-`` or ``+`` for one antigen typing's value as text; ``None`` when it is neither."""
    v = " ".join(value.translate(_MINUS_SIGNS).lower().split())
    return "-" if v in _SIGN_NEGATIVE else "+" if v in _SIGN_POSITIVE else None


def duffy_null_stated(text: str) -> bool:
    """True when ``text`` records the Duffy-null phenotype Fy(a-b-) as a fact.

    "Duffy-null", "Duffy null phenotype", "Fy(a-b-)" (any minus sign), or both Fya and Fyb
    negative. Not: one antigen negative and the other positive (Fy(a-b+)), anything negated
    or uncertain ("not yet tested", "?", "possible", "rule out", "to be confirmed"), or
    "Duffy-null: negative". When in doubt: not Duffy-null.
    """
    t = " ".join(text.translate(_MINUS_SIGNS).lower().split())
    if "fy" not in t and "duffy" not in t:
        return False
    if _DUFFY_DOUBT.search(t):
        return False
    signs: dict[str, set[str]] = {"a": set(), "b": set()}
    for m in _FY_PAIR.finditer(t):
        signs["a"].add(m.group(1))
        signs["b"].add(m.group(2))
    for m in _FY_SINGLE.finditer(t):
        v = m.group(2)
        negative = v in ("-", "negative", "neg", "not detected", "absent")
        signs[m.group(1)].add("-" if negative else "+")
    if "+" in signs["a"] or "+" in signs["b"]:
        return False  # an antigen is present: not null, whatever else the text says
    if signs["a"] == {"-"} and signs["b"] == {"-"}:
        return True
    if signs["a"] or signs["b"]:
        return False  # one antigen negative, the other not stated
    return bool(_DUFFY_NULL_WORDS.search(t)) and not _DUFFY_NULL_NEGATIVE.search(t)


# --- Reading the input ----------------------------------------------------------------------------


def load_json(data: bytes | str) -> Any:
    """Parse JSON with a one-sentence error for bad input.

    A UTF-8 byte order mark at the start (Windows tools write one) is skipped, as RFC 8259
    section 8.1 lets a parser do.
    """
    if isinstance(data, bytes):
        data = data.removeprefix(b"\xef\xbb\xbf")
    else:
        data = data.removeprefix("\ufeff")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"input is not valid JSON ({exc.args[0].split(':')[0]})") from None


class _Collected:
    """Resources of the input, plus what their Bundle entries say about them.

    ``aliases``: a Bundle entry's ``fullUrl`` -> the resource's own reference, for fullUrls
    other references may use instead (``urn:uuid:...`` in transaction Bundles, and absolute
    URLs). ``bases``: the FHIR servers (base URLs) the entries' absolute fullUrls name.
    """

    __slots__ = ("aliases", "bases", "resources")

    def __init__(self) -> None:
        self.resources: list[JSON] = []
        self.aliases: dict[str, str] = {}
        self.bases: set[str] = set()


def resources_of(doc: Any) -> list[JSON]:
    """The resources in a Bundle of any type, a bare list, or a single resource.

    Accepts collection / searchset / transaction / batch-response / history Bundles, nested
    Bundles (e.g. CDS Hooks prefetch values), and ``entry.response`` entries without a
    resource (skipped). Raises :class:`InputError` for anything that is not FHIR.
    """
    return _collect_all(doc).resources


def _collect_all(doc: Any) -> _Collected:
    out = _Collected()
    _collect(doc, out, depth=0)
    return out


def _collect(doc: Any, out: _Collected, depth: int) -> None:
    if depth > 4:
        raise InputError("Bundles are nested more than 4 levels deep")
    if isinstance(doc, list):
        for item in doc:
            # A plain resource is kept here; Bundles and anything odd take the full path.
            rt = item.get("resourceType") if isinstance(item, dict) else None
            if isinstance(rt, str) and rt != "Bundle" and depth < 4:
                out.resources.append(item)
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
        resources, aliases, bases = out.resources, out.aliases, out.bases
        known = "\0"  # the base + "/" of the last absolute fullUrl (a searchset has one)
        for e in entries:
            res = e.get("resource") if isinstance(e, dict) else None
            if not isinstance(res, dict):
                continue
            rt = res.get("resourceType")
            if rt == "Bundle":
                _collect(res, out, depth + 1)
                continue
            if not isinstance(rt, str):
                continue
            full = e.get("fullUrl")
            if isinstance(full, str):
                rid = res.get("id")
                if not isinstance(rid, str):
                    res = {**res, "_fullUrl": full}
                    aliases[full] = full
                elif full.startswith(known):
                    pass
                elif full.startswith("urn:"):
                    aliases[full] = f"{rt}/{rid}"
                else:
                    cut = full.rfind(f"/{rt}/")
                    if cut > 0:
                        bases.add(full[:cut])
                        known = full[: cut + 1]
            resources.append(res)
        return
    out.resources.append(doc)


def ingest(
    doc: Any,
    *,
    patient_id: str | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    fhir_base: str | None = None,
) -> PatientLabs:
    """Read FHIR JSON (already parsed) into :class:`PatientLabs` for one patient.

    ``patient_id``: the patient being evaluated (a CDS hook's context, the Subscription's
    patient). Without it the input must be about one patient: a single Patient resource, or
    subjects that all name the same patient; several are an :class:`InputError`.
    ``fhir_base``: the FHIR server the data came from, so that an absolute subject reference
    on that server is this patient's, and one on another server is not.
    """
    got = _collect_all(doc)
    if fhir_base:
        got.bases.add(fhir_base)
    return _ingest(got, patient_id, thresholds)


def ingest_resources(
    resources: Iterable[JSON],
    *,
    patient_id: str | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    fhir_base: str | None = None,
) -> PatientLabs:
    got = _Collected()
    got.resources = list(resources)
    if fhir_base:
        got.bases.add(fhir_base)
    return _ingest(got, patient_id, thresholds)


class _Owned:
    """What was read from the resources of one subject reference (kept or left out as one)."""

    __slots__ = (
        "conditions",
        "counts",
        "deferred",
        "issues",
        "medications",
        "orders",
        "pregnancy",
        "reports",
        "results",
        "antigens",
    )

    def __init__(self) -> None:
        self.results: list[Result] = []
        self.issues: list[DataIssue] = []
        self.medications: list[Medication] = []
        self.conditions: list[ClinicalCondition] = []
        self.orders: list[OpenOrder] = []
        self.reports: list[tuple[str, datetime | None, list[str]]] = []
        self.deferred: list[JSON] = []  # Observations without an effective time
        self.pregnancy: list[tuple[datetime, bool, str, str]] = []
        self.counts: dict[str, int] = {}  # resources read, by type (for the left-out report)
        # Duffy antigen typings, one antigen each: (time, 'a' or 'b', '+' or '-', ref)
        self.antigens: list[tuple[datetime | None, str, str, str]] = []


def _ingest(got: _Collected, patient_id: str | None, thresholds: Thresholds) -> PatientLabs:
    reader = _Reader(thresholds, got.aliases)
    patients: list[JSON] = []
    others: list[JSON] = []
    observation = reader.observation
    for res in got.resources:
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
    by_ref = {
        (f"{r.get('resourceType')}/{r.get('id')}" if "id" in r else str(r["_fullUrl"])): r
        for r in others
        if "id" in r or "_fullUrl" in r
    }
    for res in others:
        rt = res.get("resourceType")
        if rt == "DiagnosticReport":
            reader.guarded(reader.report, res)
        elif rt in ("MedicationRequest", "MedicationStatement", "MedicationOrder"):
            reader.guarded(reader.medication, res, by_ref)
        elif rt == "Condition":
            reader.guarded(reader.condition, res)
        elif rt == "ServiceRequest":
            reader.guarded(reader.service_request, res)

    pid = _the_patient(patient_id, patients, reader, got)
    kept = reader.keep(pid, got.bases, patients)
    patient = next((p for p in patients if p.get("id") == pid), None)
    if patient is None and len(patients) == 1:
        if patients[0].get("id") is None:
            patient = patients[0]
        else:
            # Another person's age and sex must never set this patient's limits.
            reader.issue(
                "other-patient",
                "The Patient resource in the input is not the evaluated patient: its birthDate "
                "and gender were not used",
            )
    birth, sex = None, None
    if patient is not None:
        birth = _parse_birth(patient.get("birthDate"), reader)
        g = patient.get("gender")
        sex = g if isinstance(g, str) else None
    if pid is None:
        reader.issue("no-patient", "No Patient and no Observation.subject: the patient is unknown")

    reader.finish(kept)
    results: list[Result] = []
    issues: list[DataIssue] = []
    medications: list[Medication] = []
    conditions: list[ClinicalCondition] = []
    orders: list[OpenOrder] = []
    for o in kept:
        results += o.results
        issues += o.issues
        medications += o.medications
        conditions += o.conditions
        orders += o.orders
    conditions += _pregnancy_status(kept, results)
    conditions += _duffy_from_antigens(kept, conditions)
    return PatientLabs(
        patient_id=pid,
        birth_date=birth,
        sex=sex,
        results=tuple(results),
        medications=tuple(medications),
        conditions=tuple(conditions),
        open_orders=tuple(orders),
        issues=tuple(reader.issues + issues),
    )


def _the_patient(
    patient_id: str | None, patients: list[JSON], reader: _Reader, got: _Collected
) -> str | None:
    """The evaluated patient: the one asked for, else the one the input is clearly about.

    Without ``patient_id`` (the CLI's ``evaluate FILE``): a single Patient resource names
    the patient, and other patients' resources are then left out and reported; with no
    Patient resource, every subject must name the same patient. Anything else is ambiguous
    and refused, rather than guessing whose record this is.
    """
    if patient_id is not None:
        return patient_id
    with_id = {str(p["id"]) for p in patients if isinstance(p.get("id"), str)}
    if len(with_id) == 1 and len(patients) == 1:
        return next(iter(with_id))
    ids = {(None, i) for i in with_id} | reader.subject_ids(got.bases)
    if len(ids) > 1:
        raise InputError(
            f"the input holds data of more than one patient ({len(ids)} patients); "
            "name the one to evaluate (fhir-leuko evaluate --patient ID)"
        )
    if not ids:
        return None
    base, pid = next(iter(ids))
    if base is not None:
        got.bases.add(base)  # one patient, on one server the input does not name otherwise
    return pid


def _duffy_from_antigens(
    kept: list[_Owned], conditions: list[ClinicalCondition]
) -> list[ClinicalCondition]:
    """Duffy-null from separate antigen typings: the latest Fya and the latest Fyb both
    negative. Any other combination (one positive, one missing) is not Duffy-null."""
    if any(c.kind == "duffy-null" for c in conditions):
        return []
    latest: dict[str, tuple[datetime, str, str]] = {}
    oldest = datetime.min.replace(tzinfo=UTC)
    for o in kept:
        for when, antigen, sign, ref in o.antigens:
            t = when or oldest
            # the latest typing wins; at the same time a positive one (when in doubt: not null)
            if antigen not in latest or (t, sign == "+") > (
                latest[antigen][0],
                latest[antigen][1] == "+",
            ):
                latest[antigen] = (t, sign, ref)
    if set(latest) != {"a", "b"} or any(sign != "-" for _, sign, _ in latest.values()):
        return []
    return [
        ClinicalCondition(
            "duffy-null",
            "Duffy-null phenotype (Fy(a-b-))",
            latest["a"][2],
            f"Observations {latest['a'][2]} (Fya negative) and {latest['b'][2]} (Fyb negative)",
        )
    ]


def _pregnancy_status(kept: list[_Owned], results: list[Result]) -> list[ClinicalCondition]:
    """The latest pregnancy-status Observation, when it says pregnant and is recent.

    Recent: within :data:`PREGNANCY_STATUS_VALID` before the newest result (the reader has no
    clock; the CBC being assessed is the time that matters).
    """
    statuses = [s for o in kept for s in o.pregnancy]
    if not statuses:
        return []
    when, pregnant, ref, how = max(statuses, key=lambda s: (s[0], not s[1]))
    newest = max((r.time for r in results), default=when)
    if not pregnant or when < newest - PREGNANCY_STATUS_VALID:
        return []
    return [ClinicalCondition("pregnancy", "pregnancy", ref, how, when)]


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


def effective_time(res: Mapping[str, Any]) -> datetime | None:
    """When a result was taken: ``effective[x]`` (a Period by its start, else its end)."""
    raw = res.get("effectiveDateTime") or res.get("effectiveInstant")
    if raw is None:
        period = res.get("effectivePeriod")
        if isinstance(period, dict):
            raw = period.get("start") or period.get("end")
    return parse_time(raw)


def result_time(res: Mapping[str, Any]) -> datetime | None:
    """When a result was taken, else when it was issued."""
    return effective_time(res) or parse_time(res.get("issued"))


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

#: One number with an optional comparator, as labs send it in text: '<0.1', '< 0.1', '>=12'.
_TEXT_NUMBER = re.compile(r"\s*(<=|>=|<|>|\u2264|\u2265)?\s*([0-9]+(?:\.[0-9]+)?|\.[0-9]+)\s*")
_UNICODE_COMPARATORS = {"\u2264": "<=", "\u2265": ">="}


def parse_text_value(text: str) -> tuple[str | None, float] | None:
    """'<0.1' -> ('<', 0.1); '0.8' -> (None, 0.8); '3,400', 'see comment', 'NaN' -> None."""
    m = _TEXT_NUMBER.fullmatch(text)
    if m is None:
        return None
    comp = m.group(1)
    return _UNICODE_COMPARATORS.get(comp, comp) if comp else None, float(m.group(2))


def _shown_raw(raw: Any) -> str:
    """A value as sent, for messages: short, and never a whole JSON object."""
    if isinstance(raw, str):
        s = raw.strip()
        return s if len(s) <= 40 else s[:37] + "..."
    if isinstance(raw, bool) or raw is None:
        return str(raw).lower() if raw is not None else "(none)"
    if isinstance(raw, int) and not -(10**24) < raw < 10**24:
        return "(a number too large to read)"
    if isinstance(raw, int | float):
        return str(raw) if len(str(raw)) <= 24 else f"{raw:.6g}"
    return "(a JSON " + ("list" if isinstance(raw, list) else "object") + ")"


def _sent(raw: Any, comparator: str | None, ucum: str | None, unit: str | None) -> str:
    value = _shown_raw(raw)
    if comparator and not (isinstance(raw, str) and raw.strip()[:1] in "<>\u2264\u2265"):
        value = comparator + value
    u = unit or ucum
    return f"{value} {u}" if u else value


def _sent_of(holder: JSON) -> str:
    """The value of an Observation (or component) as sent, for a report about it."""
    q = holder.get("valueQuantity")
    if isinstance(q, dict):
        ucum, unit, comp = q.get("code"), q.get("unit"), q.get("comparator")
        return _sent(
            q.get("value"),
            comp if isinstance(comp, str) else None,
            ucum if isinstance(ucum, str) else None,
            unit if isinstance(unit, str) else None,
        )
    for key in ("valueString", "valueInteger"):
        if key in holder:
            return _shown_raw(holder[key])
    return "(no value)"


class _Reader:
    """Accumulates results and issues while walking resources once."""

    def __init__(self, t: Thresholds, aliases: Mapping[str, str]) -> None:
        self.t = t
        self.aliases = aliases
        self.issues: list[DataIssue] = []  # about the input as a whole
        self.owned: dict[str | None, _Owned] = {}
        self.cur = self._owned(None)
        self._last_subject: str | None = None
        self._last_owned = self.cur
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

    # --- whose data --------------------------------------------------------------------------

    def _owned(self, subject: str | None) -> _Owned:
        o = self.owned.get(subject)
        if o is None:
            o = self.owned[subject] = _Owned()
        return o

    def own(self, res: JSON, subject_of: JSON | None = None) -> None:
        """Make the subject of ``res`` (or of ``subject_of``) the owner of what is read next,
        and count ``res`` among that owner's resources."""
        subject = subject_reference(res if subject_of is None else subject_of)
        if subject == self._last_subject:
            o = self._last_owned
        else:
            key = subject
            if key is not None and (
                (key.startswith("urn:") and key not in self.aliases) or "?" in key
            ):
                # a Bundle-local reference to nothing in the input, or a conditional one
                # ('Patient?identifier=...'): unverifiable, like no subject at all
                key = None
            o = self._owned(key)
            self._last_subject, self._last_owned = subject, o
        rt = res.get("resourceType")
        if not isinstance(rt, str):
            rt = "resource"
        counts = o.counts
        counts[rt] = counts.get(rt, 0) + 1
        self.cur = o

    def _patient_of(self, subject: str) -> tuple[str | None, str | None]:
        """(server base or None for relative, patient id) of a subject reference; (.., None)
        when it does not name a Patient."""
        target = self.aliases.get(subject, subject)
        base, rel = split_base(target)
        if not rel.startswith("Patient/") or rel.count("/") != 1:
            return base, None
        return base, rel[8:]

    def subject_ids(self, bases: set[str]) -> set[tuple[str | None, str]]:
        """The patients the subjects of the input name, as (server base when not one of
        ``bases``, id): for telling whose input this is."""
        ids: set[tuple[str | None, str]] = set()
        for subject in self.owned:
            if subject is None:
                continue
            base, pid = self._patient_of(subject)
            if pid is not None:
                ids.add((None if base is None or _on(base, bases) else base, pid))
        return ids

    def keep(self, pid: str | None, bases: set[str], patients: list[JSON]) -> list[_Owned]:
        """What belongs to the evaluated patient; the rest is reported by type and count."""
        verdicts: dict[str | None, str] = {}
        identities: set[str] = {str(p.get("id")) for p in patients if isinstance(p.get("id"), str)}
        for subject in self.owned:
            if subject is None:
                continue
            base, spid = self._patient_of(subject)
            if spid is None:
                verdicts[subject] = "other"
                identities.add(subject)
            elif base is not None and not _on(base, bases):
                verdicts[subject] = "server"
                identities.add(f"{base}/Patient/{spid}")
            else:
                verdicts[subject] = "self" if spid == pid else "other"
                identities.add(spid)
        if pid is not None:
            identities.add(pid)
        several = len(identities) > 1
        verdicts[None] = "unsubjected" if several else "self"
        kept: list[_Owned] = []
        left_out: dict[tuple[str, str], int] = {}
        for subject, o in self.owned.items():
            verdict = verdicts[subject]
            if verdict == "self":
                kept.append(o)
                continue
            for rt, n in o.counts.items():
                if rt in _SUBJECT_TYPES:
                    left_out[(verdict, rt)] = left_out.get((verdict, rt), 0) + n
        for (verdict, rt), n in sorted(left_out.items()):
            self.issue("other-patient", _left_out_message(verdict, rt, n))
        return kept

    def finish(self, kept: list[_Owned]) -> None:
        """Give Observations without an effective time the time of their DiagnosticReport
        (clinical-rules.md 1.4 v2), and the report as their draw, from kept resources only."""
        report_of: dict[str, tuple[str, datetime | None]] = {}
        for o in kept:
            for report_ref, when, members in o.reports:
                for m in members:
                    report_of.setdefault(m, (report_ref, when))
        if not report_of:
            for o in kept:
                self.cur = o
                for obs in o.deferred:
                    self.guarded(self._untimed, obs, None)
            return
        for o in kept:
            self.cur = o
            for obs in o.deferred:
                self.guarded(self._untimed, obs, report_of.get(label_of(obs)))
            if o.results:
                o.results = [
                    r
                    if r.draw_id is not None or r.ref not in report_of
                    else r._replace(draw_id=report_of[r.ref][0])
                    for r in o.results
                ]

    def _untimed(self, obs: JSON, report: tuple[str, datetime | None] | None) -> None:
        ref = label_of(obs)
        if report is not None and report[1] is not None:
            self.issue(
                "time-from-report",
                f"{ref} has no effective time; the time of {report[0]}, which lists it, was used",
                ref,
                "information",
            )
            self.observation(obs, when=report[1], draw=report[0], owned=False)
            return
        issued = parse_time(obs.get("issued"))
        if issued is not None:
            self.issue(
                "no-effective-time",
                f"{ref} has no usable effective time; its issued time was used",
                ref,
                "information",
            )
            self.observation(obs, when=issued, draw=report[0] if report else None, owned=False)
            return
        analyte = _analyte_of(obs)
        self.issue(
            "no-effective-time",
            f"{ref} ({ANALYTE_LABEL[analyte] if analyte else 'result'} {_sent_of(obs)}) has no "
            "usable effective time, and no DiagnosticReport or panel Observation (hasMember) "
            "in the input gives one: not used",
            ref,
            analyte=analyte,
            sent=_sent_of(obs),
        )

    # --- issues ----------------------------------------------------------------------------------

    def guarded(self, read: Callable[..., None], res: JSON, *args: Any) -> None:
        """Read one resource; a resource whose elements have the wrong JSON types is reported
        and skipped, never a crash of the whole evaluation (and nothing else is lost)."""
        try:
            read(res, *args)
        except _MALFORMED:
            self.malformed(res)

    def malformed(self, res: JSON) -> None:
        """Report a resource that could not be read (an element of the wrong JSON type)."""
        self.own(res)
        rid = res.get("id")
        ref = (
            f"{res.get('resourceType')}/{rid}"
            if isinstance(rid, str)
            else str(res.get("resourceType"))
        )
        analyte = None
        if res.get("resourceType") == "Observation":
            try:
                analyte = _analyte_of(res)
            except _MALFORMED:
                analyte = None
        self.issue(
            "malformed-resource",
            f"{ref} is not valid FHIR JSON (an element has the wrong type); it was not used",
            ref,
            analyte=analyte,
            sent="(not readable)" if analyte else None,
        )

    def issue(
        self,
        code: str,
        message: str,
        ref: str | None = None,
        severity: str = "warning",
        *,
        analyte: Analyte | None = None,
        sent: str | None = None,
        time: datetime | None = None,
    ) -> None:
        target = self.issues if ref is None else self.cur.issues
        target.append(DataIssue(code, message, ref, severity, analyte, sent, time))

    # --- Observations -------------------------------------------------------------------------

    def observation(
        self,
        obs: JSON,
        *,
        when: datetime | None = None,
        draw: str | None = None,
        ref: str | None = None,
        owned: bool = True,
    ) -> None:
        """Read one Observation. ``when``/``draw``/``ref``: given for an Observation timed by
        its DiagnosticReport, or contained in one; ``owned``: the owner is already set."""
        code = obs.get("code")
        codings = code.get("coding") if isinstance(code, dict) else None
        analyte: Analyte | None = None
        loinc: str | None = None
        if isinstance(codings, list):
            for c in codings:
                if isinstance(c, dict) and c.get("system") == codes.LOINC:
                    cd = c.get("code")
                    a = codes.LOINC_ANALYTES.get(cd)  # type: ignore[arg-type]
                    if a is not None:
                        analyte, loinc = a, cd
                        break
                    if cd in codes.PREGNANCY_STATUS_LOINC:
                        if owned:
                            self.own(obs)
                        self._pregnancy_observation(obs, ref)
                        return
        components = obs.get("component")
        if analyte is None and not components:
            if isinstance(obs.get("hasMember"), list):
                self._grouper(obs, owned)
            elif isinstance(code, dict) and _mentions_duffy(code):
                if owned:
                    self.own(obs)
                self._duffy_observation(obs, code, ref)
            elif (temperature := _temperature_quantity(obs, code)) is not None:
                if owned:
                    self.own(obs)
                self._uncoded_temperature(obs, code, ref, temperature)
            return
        if owned:
            self.own(obs)
        if ref is None:
            ref = label_of(obs)
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
                    "bad-status",
                    f"{ref} ({ANALYTE_LABEL[analyte] if analyte else 'result'} "
                    f"{_sent_of(obs)}) has an unknown status '{_shown_raw(status)}' and was not "
                    "used",
                    ref,
                    analyte=analyte,
                    sent=_sent_of(obs),
                )
            return
        own_time = effective_time(obs)
        if own_time is not None:
            when = own_time
        elif when is None:
            self.cur.deferred.append(obs)  # its DiagnosticReport may give the time (1.4 v2)
            return
        draw_id = draw
        spec = obs.get("specimen")
        if isinstance(spec, dict) and isinstance(spec.get("reference"), str):
            draw_id = relative(spec["reference"])
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
        label = ANALYTE_LABEL[analyte]
        if holder.get("dataAbsentReason") is not None:
            dar = holder["dataAbsentReason"]
            why = _first_code(dar) or (dar.get("text") if isinstance(dar, dict) else None)
            self.issue(
                "data-absent",
                f"{ref} ({label}) has a dataAbsentReason"
                + (f" '{_shown_raw(why)}'" if why else "")
                + ": not a result",
                ref,
                "information",
                analyte=analyte,
                sent=f"(data absent: {_shown_raw(why)})" if why else "(data absent)",
            )
            return
        q = holder.get("valueQuantity")
        ucum: str | None = None
        unit: str | None = None
        comparator: str | None = None
        if isinstance(q, dict):
            raw = q.get("value")
            ucum, unit, qcomp = q.get("code"), q.get("unit"), q.get("comparator")
            if not isinstance(ucum, str) or not ucum:
                ucum = None
            if not isinstance(unit, str) or not unit:
                unit = None
            if qcomp is not None:
                if qcomp not in COMPARATORS:
                    self.issue(
                        "unparseable-value",
                        f"{ref} ({label}) has a comparator '{_shown_raw(qcomp)}' that is not "
                        "one of <, <=, >=, >: the value was not used",
                        ref,
                        analyte=analyte,
                        sent=_sent(raw, None, ucum, unit),
                    )
                    return
                comparator = qcomp
        elif "valueInteger" in holder:
            raw = holder["valueInteger"]
        elif "valueString" in holder:
            raw = holder["valueString"]
        else:
            shown = "(no value)"
            cc = holder.get("valueCodeableConcept")
            if isinstance(cc, dict) and _texts(cc):
                shown = _shown_raw(_texts(cc)[0])
            self.issue(
                "no-value",
                f"{ref} ({label} {shown}) has no numeric value: not a result",
                ref,
                analyte=analyte,
                sent=shown,
            )
            return
        text = isinstance(raw, str)
        if isinstance(raw, str):
            parsed = parse_text_value(raw)
            if parsed is None:
                self.issue(
                    "unparseable-value",
                    f"{ref}: {label} '{_shown_raw(raw)}' is not one number (with an optional "
                    "comparator such as '<0.1'): the value was not used",
                    ref,
                    analyte=analyte,
                    sent=_sent(raw, None, ucum, unit),
                )
                return
            tcomp, value = parsed
            if tcomp is not None and comparator is not None and tcomp != comparator:
                self.issue(
                    "unparseable-value",
                    f"{ref}: {label} '{_shown_raw(raw)}' and its comparator '{comparator}' "
                    "disagree: the value was not used",
                    ref,
                    analyte=analyte,
                    sent=_sent(raw, comparator, ucum, unit),
                )
                return
            comparator = tcomp or comparator
        else:
            number = _number(raw)
            if number is None:
                self.issue(
                    "unparseable-value",
                    f"{ref}: {label} value '{_shown_raw(raw)}' is not a number: the value was "
                    "not used",
                    ref,
                    analyte=analyte,
                    sent=_sent(raw, comparator, ucum, unit),
                )
                return
            value = number
        assumed = text and ucum is None and unit is None
        if assumed:
            conv: Converter = _same  # text without a unit: the analyte's reporting unit (1.7)
        else:
            try:
                conv = converter_for(analyte, ucum, unit)
            except UnitProblem as p:
                sent = _sent(raw, comparator, ucum, unit)
                self.issue(
                    p.code,
                    f"{ref}: {label} {sent}: {p}; the value was not used",
                    ref,
                    analyte=analyte,
                    sent=sent,
                )
                return
        v = conv(value)
        low: float | None
        low = self._ref_low(holder, analyte, ucum, unit, conv)
        if not low and loinc == codes.RBC_FOLATE and analyte is Analyte.FOLATE:
            low = self.t.rbc_folate_normal_min_ng_ml
        lo, hi = self._plausible[analyte]
        if not (lo <= v <= hi):
            sent = _sent(raw, comparator, ucum, unit)
            why = (
                f"read in {CANONICAL_UNITS[analyte]} as no unit was sent"
                if assumed
                else "wrong unit?"
            )
            self.issue(
                "implausible-value",
                f"{ref}: {label} {sent} is outside any plausible range ({why}); "
                "the value was not used",
                ref,
                analyte=analyte,
                sent=sent,
            )
            return
        if text or comparator is not None:
            sent = _sent(raw, comparator, ucum, unit)
            shown = f"{comparator or ''}{num(v)} {CANONICAL_UNITS[analyte]}"
            if text:
                how = (
                    f"in {CANONICAL_UNITS[analyte]}, the reporting unit, as no unit was sent"
                    if assumed
                    else "as a quantity"
                )
                self.issue(
                    "text-value",
                    f"{ref}: {label} sent as text '{_shown_raw(raw)}' was read {how}: {shown}",
                    ref,
                    "warning" if assumed else "information",
                    analyte=analyte,
                    sent=sent,
                )
            else:
                self.issue(
                    "comparator-value",
                    f"{ref}: {label} {sent} is a comparator quantity, read as {shown}",
                    ref,
                    "information",
                    analyte=analyte,
                    sent=sent,
                )
            v = comparator_value(v, comparator)
        self.cur.results.append(Result(analyte, v, when, ref, status, low, draw_id, comparator))

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

    def _duffy_observation(self, obs: JSON, code: JSON, ref: str | None) -> None:
        if obs.get("status") not in ("final", "amended", "corrected"):
            return  # a preliminary phenotype is "to be confirmed": not a fact
        values: list[str] = []
        vs = obs.get("valueString")
        if isinstance(vs, str):
            values.append(vs)
        vcc = obs.get("valueCodeableConcept")
        if isinstance(vcc, dict):
            values += _texts(vcc)
        vb = obs.get("valueBoolean")
        if isinstance(vb, bool):
            values.append("yes" if vb else "no")
        named = " ".join(_texts(code))
        text = f"{named}: {' '.join(values)}"
        if duffy_null_stated(text):
            self.cur.conditions.append(
                ClinicalCondition(
                    "duffy-null",
                    "Duffy-null phenotype (Fy(a-b-))",
                    ref or label_of(obs),
                    f"Observation '{_shown_raw(text)}'",
                )
            )
            return
        # A typing of one antigen (blood banks report Fya and Fyb separately): kept, and
        # combined once every Observation is read.
        code_t = " ".join(named.translate(_MINUS_SIGNS).lower().split())
        antigens = {next(g for g in m.groups() if g) for m in _FY_ANTIGEN.finditer(code_t)}
        if len(antigens) != 1 or _DUFFY_DOUBT.search(code_t) or not values:
            return
        # The value's text and its coding's display often say the same ("Negative" twice):
        # one reading, provided every text the value carries gives the same sign.
        signs = {_antigen_sign(v) for v in values}
        if len(signs) == 1 and (sign := signs.pop()) is not None:
            when = result_time(obs)
            self.cur.antigens.append((when, antigens.pop(), sign, ref or label_of(obs)))

    def _pregnancy_observation(self, obs: JSON, ref: str | None) -> None:
        if obs.get("status") not in USED_STATUSES:
            return
        when = effective_time(obs) or parse_time(obs.get("issued"))
        vcc = obs.get("valueCodeableConcept")
        if when is None or not isinstance(vcc, dict):
            return
        pregnant = any(
            isinstance(c, dict) and (c.get("system"), c.get("code")) in codes.PREGNANT_ANSWERS
            for c in vcc.get("coding") or ()
        )
        how = "Observation pregnancy status: " + (_texts(vcc) or ["pregnant"])[0]
        self.cur.pregnancy.append((when, pregnant, ref or label_of(obs), _shown_raw(how)))

    # --- DiagnosticReports ---------------------------------------------------------------------

    def report(self, res: JSON) -> None:
        """A DiagnosticReport: its time and grouping for the Observations it lists."""
        self.own(res)
        if res.get("status") in BAD_REPORT_STATUSES:
            return
        rid = label_of(res)
        when = effective_time(res)
        contained = {
            c.get("id"): c
            for c in res.get("contained") or ()
            if isinstance(c, dict) and c.get("resourceType") == "Observation"
        }
        members: list[str] = []
        owner = self.cur
        for m in res.get("result") or ():
            target = m.get("reference") if isinstance(m, dict) else None
            if not isinstance(target, str):
                continue
            if target.startswith("#"):
                obs = contained.get(target[1:])
                if obs is not None:
                    self._contained(obs, res, rid, target, when)
                    self.cur = owner
                continue
            members.append(self.aliases.get(target) or relative(target))
        owner.reports.append((rid, when, members))

    def _uncoded_temperature(
        self, obs: JSON, code: Any, ref: str | None, quantity: tuple[float, str | None, str | None]
    ) -> None:
        """A reading that looks like a body temperature but is not coded as one (LOINC
        8310-5): not read as one (codes decide, 1.3), but a febrile one is named, so that a
        fever charted under a local code is never silently lost."""
        if obs.get("status") not in USED_STATUSES:
            return
        value, ucum, unit = quantity
        try:
            celsius = converter_for(Analyte.BODY_TEMPERATURE, ucum, unit)(value)
        except UnitProblem:
            return
        low, high = self.t.fever_sustained_c, self.t.temp_max_plausible_c
        when = effective_time(obs)
        if when is None or not low <= celsius <= high:
            return
        ref = ref or label_of(obs)
        name = " ".join(_texts(code)[:1]) if isinstance(code, dict) else ""
        shown = f"{value:g} {unit or ucum}"
        self.issue(
            "uncoded-temperature",
            f"{ref} ('{_shown_raw(name or 'no name')}' {_shown_raw(shown)}, "
            f"{celsius:.1f} °C) looks like a body temperature but is not coded as one "
            "(LOINC 8310-5): not read, so a fever in it is not counted - check it",
            ref,
            time=when,
        )

    def _grouper(self, obs: JSON, owned: bool) -> None:
        """An Observation grouping a panel (``hasMember``, as some labs send a CBC) lists its
        members as a DiagnosticReport lists its results: members without a time of their own
        take its time, and it is their draw (clinical-rules.md 1.4)."""
        if owned:
            self.own(obs)
        if obs.get("status") in BAD_REPORT_STATUSES:
            return
        members = [
            self.aliases.get(target) or relative(target)
            for m in obs["hasMember"]
            if isinstance(m, dict)
            and isinstance(target := m.get("reference"), str)
            and not target.startswith("#")
        ]
        if members:
            self.cur.reports.append((label_of(obs), effective_time(obs), members))

    def _contained(
        self, obs: JSON, report: JSON, rid: str, target: str, when: datetime | None
    ) -> None:
        """An Observation contained in its DiagnosticReport (the FHIR specification's CBC
        example): its subject is its own, else the report's; its time its own, else the
        report's."""
        self.own(obs, None if subject_reference(obs) is not None else report)
        ref = f"{rid}{target}"
        if when is None and effective_time(obs) is None:
            if _analyte_of(obs) is None:
                return  # not a result we read (a haematocrit, an MCH): nothing to say
            self.issue(
                "no-effective-time",
                f"{ref} and its DiagnosticReport have no usable effective time: not used",
                ref,
                analyte=_analyte_of(obs),
                sent=_sent_of(obs),
            )
            return
        try:
            self.observation(obs, when=when, draw=rid, ref=ref, owned=False)
        except _MALFORMED:
            self.malformed(obs)

    # --- Medications, conditions, orders -------------------------------------------------------

    def medication(self, res: JSON, by_ref: Mapping[str, JSON]) -> None:
        self.own(res)
        status = res.get("status")
        if status not in ACTIVE_MED_STATUSES:
            return
        ref = label_of(res)
        concept = medication_concept(res, lambda r: by_ref.get(self.aliases.get(r) or relative(r)))
        if concept is None:
            # A drug we cannot see may be one that lowers white cells: say so.
            self.issue(
                "unresolved-medication",
                f"{ref}: its medication could not be read (no code, and the referenced "
                "Medication is not in the input), so it was not checked against the "
                "high-risk list",
                ref,
            )
            return
        match = match_medication_kind(concept)
        if match is not None:
            name, how, antineoplastic = match
            self.cur.medications.append(Medication(name, ref, how, antineoplastic))

    def condition(self, res: JSON) -> None:
        self.own(res)
        clinical = _first_code(res.get("clinicalStatus"))
        verification = _first_code(res.get("verificationStatus"))
        if clinical in INACTIVE_CONDITION_STATUSES or verification in BAD_VERIFICATION:
            return
        if any(k.startswith("abatement") for k in res):
            return  # it has ended (FHIR: abatement means no longer active)
        code = res.get("code")
        if not isinstance(code, dict):
            return
        ref = label_of(res)
        onset = parse_time(
            res.get("onsetDateTime")
            or (res.get("onsetPeriod") or {}).get("start")
            or res.get("recordedDate")
        )
        texts = _texts(code)
        raw_text = "; ".join(texts)
        text = raw_text.lower()
        out = self.cur.conditions
        if "duffy" in text or _FY_MENTION.search(text):
            if verification not in UNCERTAIN_VERIFICATION and duffy_null_stated(raw_text):
                out.append(
                    ClinicalCondition(
                        "duffy-null",
                        "Duffy-null phenotype (Fy(a-b-))",
                        ref,
                        f"Condition '{_shown_raw(raw_text)}'",
                        onset,
                    )
                )
            return
        codings = [c for c in code.get("coding") or () if isinstance(c, dict)]
        coded = [(c.get("system"), c["code"]) for c in codings if isinstance(c.get("code"), str)]
        kinds: list[tuple[str, str, str]] = []  # (kind, display, how)
        for kind, (snomed, icd, _) in codes.CONDITION_MATCHERS.items():
            if kind == "hypersplenism" and verification in UNCERTAIN_VERIFICATION:
                continue  # it would explain the count away: only a recorded diagnosis does
            how = _coded_match(coded, snomed, icd)
            if how is None:
                how = self._condition_words(kind, text)
            if how is not None:
                kinds.append((kind, codes.CONDITION_DISPLAY[kind], how))
                break
        explained = any(k == "hypersplenism" for k, _, _ in kinds)
        for flag, (snomed, icd, _) in codes.RED_FLAGS.items():
            if explained and flag in ("splenomegaly", "hepatomegaly"):
                continue  # a recorded cause: hypersplenism / portal hypertension explains it
            how = _coded_match(coded, snomed, icd)
            if how is None:
                word = _find_affirmed(_RED_FLAG_WORDS[flag], text, extra=_weight_loss_not(flag))
                if word is not None:
                    how = f"'{word}' in the condition text"
            if how is not None:
                kinds.append(("red-flag", flag, how))
        # Pregnancy lowers the anaemia limit (WHO 2011): it must be a fact, not a question.
        how = None
        if verification not in UNCERTAIN_VERIFICATION and "?" not in text:
            how = _coded_match(coded, codes.PREGNANCY_SNOMED, codes.PREGNANCY_ICD10)
            if how is None:
                word = _find_affirmed(_PREGNANCY_WORDS, text, past=True, extra=_PREGNANCY_NOT)
                if word is not None:
                    how = f"'{word}' in the condition text"
        if how is not None:
            kinds.append(("pregnancy", codes.CONDITION_DISPLAY["pregnancy"], how))
        for kind, display, how in kinds:
            out.append(ClinicalCondition(kind, display, ref, how, onset))

    def _condition_words(self, kind: str, text: str) -> str | None:
        if kind == "chemotherapy":
            word = _find_affirmed(_CONDITION_WORDS[kind], text, past=True, future=True)
            if word is None:
                word = _chemo_cycle(text)
            return None if word is None else f"'{word}' in the condition text"
        word = _find_affirmed(_CONDITION_WORDS[kind], text)
        return None if word is None else f"'{word}' in the condition text"

    def service_request(self, res: JSON) -> None:
        self.own(res)
        if res.get("status") not in OPEN_ORDER_STATUSES:
            return
        if _own_proposal(res):
            # fhir-leuko's own earlier suggestion, written back as a draft proposal: not an
            # order anyone placed. Counting it would change the assessment of the same data on
            # the next run; the write-back's conditional create already keeps it single.
            return
        code = res.get("code")
        codings = code.get("coding") if isinstance(code, dict) else None
        if not isinstance(codings, list):
            return
        priority = _PRIORITIES.get(res.get("priority") or "routine", Priority.ROUTINE)
        ref = label_of(res)
        seen: set[Action] = set()
        for c in codings:
            if not isinstance(c, dict):
                continue
            action = codes.ORDER_CODES.get((c.get("system"), c.get("code")))  # type: ignore[arg-type]
            if action is not None and action not in seen:
                seen.add(action)
                self.cur.orders.append(OpenOrder(action, priority, ref))


def _own_proposal(res: JSON) -> bool:
    """A draft proposal carrying fhir-leuko's own ServiceRequest identifier."""
    if res.get("intent") != "proposal" or res.get("status") != "draft":
        return False
    ids = res.get("identifier")
    return isinstance(ids, list) and any(
        isinstance(i, dict) and i.get("system") == codes.SR_IDENTIFIER_SYSTEM for i in ids
    )


def _same(v: float) -> float:
    return v


def _on(base: str, bases: set[str]) -> bool:
    """Is ``base`` one of the known servers (trailing slash and host case aside)?"""
    b = base.rstrip("/").lower()
    return any(b == k.rstrip("/").lower() for k in bases)


_LEFT_OUT_WHY = {
    "other": "belong to another patient",
    "server": "name a patient on another FHIR server",
    "unsubjected": "have no subject, and the input holds data of more than one patient",
}


def _left_out_message(verdict: str, resource_type: str, n: int) -> str:
    what = f"{n} {resource_type} resource" + ("s" if n != 1 else "")
    verb = _LEFT_OUT_WHY[verdict]
    if n == 1:
        verb = (
            verb.replace("belong ", "belongs ").replace("name ", "names ").replace("have ", "has ")
        )
    return f"{what} {verb}: not used for this patient"


def _analyte_of(obs: JSON) -> Analyte | None:
    code = obs.get("code")
    for c in (code.get("coding") or ()) if isinstance(code, dict) else ():
        if isinstance(c, dict) and c.get("system") == codes.LOINC:
            a = codes.LOINC_ANALYTES.get(c.get("code"))  # type: ignore[arg-type]
            if a is not None:
                return a
    return None


#: A bare 'C' or 'F' is a temperature unit only beside a name that says temperature.
_TEMPERATURE_WORDS = re.compile(r"(?i)\btemp")


def _temperature_quantity(obs: JSON, code: Any) -> tuple[float, str | None, str | None] | None:
    """(value, UCUM code, unit) of a quantity in a temperature unit; else None. Cheap: most
    Observations here are unread lab analytes with a count or mass unit."""
    q = obs.get("valueQuantity")
    if not isinstance(q, dict):
        return None
    raw: Any = q.get("value")
    ucum, unit = q.get("code"), q.get("unit")
    if type(raw) not in (int, float) or not math.isfinite(raw):
        return None
    value = float(raw)
    ucum = ucum if isinstance(ucum, str) and ucum else None
    unit = unit if isinstance(unit, str) and unit else None
    spelled = ucum or unit
    if spelled is None or spelled not in TEMP_UNITS:  # the temperature spellings we read
        return None
    if spelled.strip().upper() in ("C", "F"):
        named = isinstance(code, dict) and any(_TEMPERATURE_WORDS.search(t) for t in _texts(code))
        if not named:
            return None
    return value, ucum, unit


def _mentions_duffy(code: JSON) -> bool:
    """Cheap test first: almost every Observation here is an unread lab analyte."""
    words = code.get("text")
    words = words if isinstance(words, str) else ""
    for c in code.get("coding") or ():
        if isinstance(c, dict):
            d = c.get("display")
            if isinstance(d, str):
                words += d
    return "uffy" in words or "UFFY" in words or "Fy" in words or "FY" in words


def _coded_match(
    coded: list[tuple[Any, str]], snomed: frozenset[str], icd: tuple[str, ...]
) -> str | None:
    for system, cd in coded:
        if system == codes.SNOMED and cd in snomed:
            return f"SNOMED CT {cd}"
        if icd and system in codes.ICD10 and cd.upper().startswith(icd):
            return f"ICD-10 {cd}"
    return None


_WEIGHT_LOSS_NOT = _words_re(
    ("intentional", "intended", "surgery", "program", "programme", "diet", "counselling", "goal")
)


def _weight_loss_not(flag: str) -> re.Pattern[str] | None:
    return _WEIGHT_LOSS_NOT if flag == "weight loss" else None


_CYCLE_RE = re.compile(r"\b(cycle\s*\d+|c\d+\s*d\d+)\b")


def _chemo_cycle(text: str) -> str | None:
    """'cycle 3 of FOLFOX', 'C2D1 R-CHOP': a chemotherapy cycle, stated as current."""
    return _find_affirmed(_CYCLE_RE, text, past=True, future=True)


def medication_concept(
    order: Mapping[str, Any], resolve: Callable[[str], JSON | None] | None = None
) -> JSON | None:
    """The drug of a MedicationRequest/Statement as a CodeableConcept: its
    ``medicationCodeableConcept``, else the code of the Medication it references (contained
    ``#id``, or another resource through ``resolve``), else the reference's ``display`` as text.
    """
    concept = order.get("medicationCodeableConcept")
    if isinstance(concept, dict):
        return concept
    mref = order.get("medicationReference")
    if not isinstance(mref, dict):
        return None
    target: Any = None
    r = mref.get("reference")
    if isinstance(r, str):
        if r.startswith("#"):
            target = next(
                (
                    c
                    for c in order.get("contained") or ()
                    if isinstance(c, dict) and c.get("id") == r[1:]
                ),
                None,
            )
        elif resolve is not None:
            target = resolve(r)
    if target is None:
        display = mref.get("display")
        return {"text": display} if isinstance(display, str) else None
    code = target.get("code") if isinstance(target, dict) else None
    return code if isinstance(code, dict) else None


def match_medication(concept: JSON) -> tuple[str, str] | None:
    """(ingredient name, how it matched) for a high-risk medication, else None."""
    m = match_medication_kind(concept)
    return None if m is None else (m[0], m[1])


def match_medication_kind(concept: JSON) -> tuple[str, str, bool] | None:
    """(ingredient name, how it matched, cytotoxic antineoplastic?) for a high-risk
    medication, else None.

    Ingredient RxCUI first; then an ATC L01 (antineoplastic agents) coding; else the
    ingredient or brand name, as a whole word, in the text or any coding display (real
    MedicationRequests often carry clinical-drug codes, not ingredients: codes.md).
    """
    codings = [c for c in concept.get("coding") or () if isinstance(c, dict)]
    for c in codings:
        if c.get("system") == codes.RXNORM:
            name = codes.HIGH_RISK_RXCUI.get(c.get("code"))  # type: ignore[arg-type]
            if name is not None:
                return name, f"RxNorm ingredient {c['code']}", name in codes.ANTINEOPLASTIC
    texts = _texts(concept)
    for text in texts:
        m = _NAME_RE.search(text.lower())
        if m is not None:
            name = codes.HIGH_RISK_NAMES[m.group(1)]
            return name, f"name '{m.group(1)}' in '{text}'", name in codes.ANTINEOPLASTIC
    for c in codings:
        cd = c.get("code")
        if (
            c.get("system") == codes.ATC
            and isinstance(cd, str)
            and cd.upper().startswith(codes.ATC_ANTINEOPLASTIC_PREFIX)
        ):
            display = c.get("display")
            name = (
                display.strip().lower()
                if isinstance(display, str) and display.strip()
                else f"antineoplastic agent (ATC {cd})"
            )
            return name, f"ATC {cd} (L01 antineoplastic agents)", True
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
    """A JSON number as a finite float; strings are text values (parse_text_value)."""
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
    else:
        return None
    return v if math.isfinite(v) else None
