"""Assessment -> FHIR R4 RiskAssessment, ServiceRequests and a collection Bundle.

Resources are built as plain dicts (R4 JSON on the wire) and checked against the
fhir.resources R4B models (identical to R4 for these resources) by :func:`validate`.
Everything is deterministic for the same input and ``now``: identifiers are derived from
patient + action + index CBC, so writing the same result twice creates nothing new
(conditional create on the identifier).

R4 note: ``ServiceRequest.reasonReference`` may only point at Condition, Observation,
DiagnosticReport or DocumentReference, so each ServiceRequest points at the index CBC
Observations there, carries the finding codes in ``reasonCode``, and links the RiskAssessment
through ``supportingInfo`` (Reference(Any)).
"""

from __future__ import annotations

import functools
import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any

from fhir_leuko.clinical.model import Action, Assessment, Finding, Recommendation
from fhir_leuko.fhirio import codes
from fhir_leuko.markdown import md
from fhir_leuko.render import display_units

JSON = dict[str, Any]

_NS = uuid.UUID("8f0b6c1e-3c1a-5d7e-9a41-6c2f0e9b7d13")  # fhir-leuko's uuid5 namespace

_RISK_DISPLAY = {
    "negligible": "Negligible likelihood",
    "low": "Low likelihood",
    "moderate": "Moderate likelihood",
    "high": "High likelihood",
}


def instant(dt: datetime) -> str:
    """FHIR instant in UTC with seconds, e.g. 2026-03-04T06:10:00Z."""
    return dt.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _digest(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def _index_key(a: Assessment) -> str:
    return ",".join(sorted(a.index_draw.refs)) if a.index_draw else "-"


def _patient(a: Assessment) -> str:
    return a.patient_id or "unknown"


def risk_assessment_identifier(a: Assessment) -> str:
    """Same patient, index CBC and conclusion -> same identifier; a new conclusion -> a new one."""
    return _digest(
        _patient(a),
        "risk-assessment",
        _index_key(a),
        a.risk.value,
        str(a.row),
        ",".join(sorted(a.finding_codes)),
    )


def service_request_identifier(a: Assessment, rec: Recommendation) -> str:
    return _digest(_patient(a), rec.action.value, _index_key(a), rec.priority.value)


@functools.lru_cache(maxsize=8)
def _ns_bytes(namespace: uuid.UUID) -> bytes:
    return namespace.bytes  # a property that converts on every read


def uuid5(namespace: uuid.UUID, name: str) -> str:
    """``str(uuid.uuid5(namespace, name))`` (RFC 4122 name-based, SHA-1), without building
    UUID objects: a CDS call derives about ten of these, and the stdlib path costs ~10 µs each.
    """
    h = bytearray(
        hashlib.sha1(_ns_bytes(namespace) + name.encode(), usedforsecurity=False).digest()
    )
    h[6] = (h[6] & 0x0F) | 0x50  # version 5
    h[8] = (h[8] & 0x3F) | 0x80  # RFC 4122 variant
    x = h[:16].hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def resource_id(identifier: str) -> str:
    return uuid5(_NS, identifier)


def subject_of(a: Assessment) -> JSON:
    if a.patient_id:
        return {"reference": f"Patient/{a.patient_id}"}
    return {"display": "Patient not identified in the input"}


def finding_concept(f: Finding) -> JSON:
    coding = [
        {"system": codes.FINDING_SYSTEM, "code": f.code, "display": codes.FINDING_DISPLAY[f.code]}
    ]
    snomed = codes.FINDING_SNOMED.get(f.code)
    if snomed is not None:
        coding.append({"system": codes.SNOMED, "code": snomed[0], "display": snomed[1]})
    return {"coding": coding, "text": display_units(f.text)}


def rationale(a: Assessment) -> str:
    """Why, rendered from the trace: findings, then the decision row, each with its source."""
    lines = [a.headline + "."]
    lines += [f"- {f.text} [{f.source}]" for f in a.findings]
    row = next((h for h in a.trace if h.rule.startswith("row-")), None)
    if row is not None:
        lines.append(f"- {row.text} [{row.source}]")
    lines += [f"- Not proposed: {n}" for n in a.not_proposed]
    return display_units("\n".join(lines))


def risk_assessment(a: Assessment) -> JSON:
    ident = risk_assessment_identifier(a)
    # Annotation.text is FHIR markdown, rendered by EHRs with raw HTML allowed: every piece
    # that comes from the input (names, references, messages quoting a value) goes through
    # md(), so it renders as itself; our own words around them are written as Markdown.
    notes = [
        {"text": f"Data issue: {md(display_units(i.message))}"}
        for i in a.issues
        if i.severity != "information"
    ]
    if a.medications:
        notes.append(
            {
                "text": "Active medications known to lower white cells: "
                + "; ".join(
                    f"{md(m.name)} ({md(m.ref)}, matched by {md(m.matched_by)})"
                    for m in a.medications
                )
            }
        )
    notes += [{"text": f"Data handling: {md(d)}"} for d in a.data_handling]
    if a.conditions:
        notes.append(
            {
                "text": "Recorded conditions that can explain it: "
                + "; ".join(f"{md(c.display)} ({md(c.ref)})" for c in a.conditions)
            }
        )
    ra: JSON = {
        "resourceType": "RiskAssessment",
        "id": resource_id(ident),
        "meta": {"profile": [codes.RA_PROFILE]},
        "identifier": [{"system": codes.RA_IDENTIFIER_SYSTEM, "value": ident}],
        "status": "preliminary" if a.preliminary else "final",
        "code": {"text": "Leukopenia / neutropenia assessment"},
        "subject": subject_of(a),
        "occurrenceDateTime": instant(a.now),
        "basis": [{"reference": r} for r in a.basis if "#" not in r] or None,
        # A normal (negligible) assessment is written only to supersede an abnormal one (the
        # Subscription worker); the profile still wants a reason and a mitigation.
        "reasonCode": [finding_concept(f) for f in a.findings]
        or [{"text": display_units(a.headline)}],
        "prediction": [
            _prune(
                {
                    "outcome": {"text": "Serious infection or an untreated marrow disorder"},
                    # Not assessable (no usable white count): no risk is claimed at all.
                    "qualitativeRisk": {
                        "coding": [
                            {
                                "system": codes.RISK_PROBABILITY,
                                "code": a.risk.value,
                                "display": _RISK_DISPLAY[a.risk.value],
                            }
                        ]
                    }
                    if a.assessable
                    else None,
                    "rationale": rationale(a),
                }
            )
        ],
        "mitigation": " ".join(a.mitigation) or "None needed.",
        "note": notes or None,
    }
    return _prune(ra)


def service_request(
    a: Assessment, rec: Recommendation, ra: JSON, reasons: list[JSON], authored: str
) -> JSON:
    """A proposed order; ``reasons`` (the finding concepts) and ``authored`` (the instant of
    ``a.now``) are the same for every order of one assessment, so :func:`resources` builds
    them once."""
    ident = service_request_identifier(a, rec)
    coding = [
        {"system": s, "code": c, "display": d} for s, c, d in codes.ACTION_CODINGS[rec.action]
    ]
    coding.append(
        {
            "system": codes.ACTION_SYSTEM,
            "code": rec.action.value,
            "display": codes.ACTION_DISPLAY[rec.action],
        }
    )
    urgent = rec.action is Action.URGENT_EVALUATION
    period = (
        {"start": instant(rec.start), "end": instant(rec.end)}
        if urgent
        else {"start": rec.start.date().isoformat(), "end": rec.end.date().isoformat()}
    )
    index_refs = [r for r in (a.index_draw.refs if a.index_draw else ()) if "#" not in r]
    sr: JSON = {
        "resourceType": "ServiceRequest",
        "id": resource_id(ident),
        "meta": {"profile": [codes.SR_PROFILE]},
        "identifier": [{"system": codes.SR_IDENTIFIER_SYSTEM, "value": ident}],
        "status": "draft",
        "intent": "proposal",
        "priority": rec.priority.value,
        "code": {"coding": coding, "text": codes.ACTION_DISPLAY[rec.action]},
        "subject": subject_of(a),
        "occurrencePeriod": period,
        "authoredOn": authored,
        "performerType": {"text": "Haematology"}
        if rec.action is Action.HAEMATOLOGY_REFERRAL
        else None,
        "reasonCode": reasons,
        "reasonReference": [{"reference": r} for r in index_refs] or None,
        "supportingInfo": [reference_to(ra)],
        "note": [
            {
                "text": display_units(f"{rec.reason} [{rec.source}]")
                + (" Optional." if rec.optional else "")
            }
        ],
    }
    return _prune(sr)


def reference_to(resource: JSON) -> JSON:
    """A reference that resolves in a Bundle (urn:uuid) and on any server (identifier)."""
    return {
        "reference": f"urn:uuid:{resource['id']}",
        "type": resource["resourceType"],
        "identifier": resource["identifier"][0],
    }


def resources(a: Assessment) -> list[JSON]:
    """[RiskAssessment, ServiceRequest...]; empty for a normal CBC."""
    if not a.actionable:
        return []
    ra = risk_assessment(a)
    reasons = [finding_concept(f) for f in a.findings]  # the same codes in every order
    authored = instant(a.now)
    return [ra] + [service_request(a, rec, ra, reasons, authored) for rec in a.recommendations]


def operation_outcome(a: Assessment) -> JSON | None:
    """The data issues, so that nothing we could not use is silently lost."""
    if not a.issues and a.assessable:
        return None
    issues = [
        {
            "severity": i.severity,
            "code": "informational" if i.severity == "information" else "invalid",
            "details": {"text": i.code},
            "diagnostics": display_units(i.message),
        }
        for i in a.issues
    ]
    if not a.assessable:
        # Unusable is not normal (decision table 1.8): say so first.
        issues.insert(
            0,
            {
                "severity": "error",
                "code": "incomplete",
                "details": {"text": "not-assessable"},
                "diagnostics": display_units(a.headline),
            },
        )
    return {"resourceType": "OperationOutcome", "issue": issues}


def bundle(a: Assessment) -> JSON:
    """The output Bundle (type collection): RiskAssessment, ServiceRequests, data issues."""
    entries = [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in resources(a)]
    oo = operation_outcome(a)
    if oo is not None:
        entries.append({"resource": oo})
    out: JSON = {"resourceType": "Bundle", "type": "collection", "timestamp": instant(a.now)}
    if entries:
        out["entry"] = entries
    return out


def _prune(obj: JSON) -> JSON:
    """Drop None values: FHIR JSON never carries null or empty elements."""
    return {k: v for k, v in obj.items() if v is not None and v not in ("", [], {})}


def validate(resource: JSON) -> None:
    """Check a resource against the fhir.resources R4B model (raises on invalid)."""
    from fhir.resources.R4B import get_fhir_model_class

    get_fhir_model_class(resource["resourceType"]).model_validate(resource)
