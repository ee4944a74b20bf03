"""``--write``: the samples loaded, run through fetch, evaluate and write-back twice, removed."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import orjson

from fhir_leuko.checkserver.model import (
    CHECK_TAG_SYSTEM,
    FAIL,
    JSON,
    PASS,
    PROBE_IDENTIFIER_SYSTEM,
    WARN,
)
from fhir_leuko.checkserver.reads import Checker, Probe, describe, has_code
from fhir_leuko.errors import (
    FatalFhirServerError,
    FhirForbidden,
    FhirNotFound,
    FhirServerError,
    FhirUnauthorized,
    InputError,
    TemporaryFhirServerError,
)
from fhir_leuko.fhirio import codes, emit
from fhir_leuko.fhirio.client import bundle_resources
from fhir_leuko.fhirio.ingest import parse_time
from fhir_leuko.fhirio.refs import type_and_id
from fhir_leuko.fhirio.server import fetch_patient_data, write_back
from fhir_leuko.service import evaluate

_DEFAULT_NOW: Final = "2026-03-10T12:00:00Z"
# Referenced before referring: the order single creates must follow without transactions.
_LOAD_ORDER: Final = {
    "Patient": 0,
    "Specimen": 1,
    "Medication": 1,
    "Observation": 2,
    "DiagnosticReport": 3,
}


# --------------------------------------------------------------------------- --write


@dataclass
class Scenario:
    stem: str
    path: Path
    bundle: JSON
    expected: JSON | None
    created: list[tuple[str, str]] = field(default_factory=list)  # (type, id) loaded
    patient_id: str | None = None
    written: list[JSON] = field(default_factory=list)  # what write-back sent
    load_error: str = ""
    now: datetime | None = None  # the sample's own evaluation time, when it has one


class Writer:
    """``--write``: load the samples, run fetch → evaluate → write-back twice, clean up."""

    def __init__(self, checker: Checker, samples_dir: Path, now: datetime, run_id: str) -> None:
        self.c = checker
        self.client = checker.client
        self.samples_dir = samples_dir
        self.now = now
        self.tag = {
            "system": CHECK_TAG_SYSTEM,
            "code": run_id,
            "display": f"fhir-leuko check-server run {run_id}",
        }
        self.scenarios: list[Scenario] = []
        self.transaction_works = True
        self.write_back_failed = ""
        self.probe_ids: list[str] = []

    # -- loading -----------------------------------------------------------------------------

    def load(self) -> None:
        own_times = sample_times(self.samples_dir)
        bent = samples_not_valid_r4(self.samples_dir)
        for path in sample_inputs(self.samples_dir):
            if path.stem in bent:
                # Vendor data that bends R4 on purpose (a text in valueQuantity.value): a
                # conformant server refuses to store it, so it is not a test of the server.
                continue
            expected_file = path.with_name(path.stem + ".expected.json")
            expected = orjson.loads(expected_file.read_bytes()) if expected_file.exists() else None
            self.scenarios.append(
                Scenario(
                    path.stem,
                    path,
                    orjson.loads(path.read_bytes()),
                    expected,
                    now=own_times.get(path.stem),
                )
            )
        with self.c.probe() as p:
            for sc in self.scenarios:
                self._load_one(sc)
        loaded = [sc for sc in self.scenarios if sc.patient_id]
        n = sum(len(sc.created) for sc in self.scenarios)
        how = (
            "in one transaction each"
            if self.transaction_works
            else "one create at a time (transaction refused)"
        )
        if len(loaded) == len(self.scenarios):
            self.c.verdict(
                "write.load",
                "load the synthetic scenarios",
                p,
                PASS,
                f"{len(loaded)} patients, {n} resources, {how}, tagged {self.tag['code']}",
                group="write",
            )
        else:
            first = next(sc for sc in self.scenarios if not sc.patient_id)
            self.c.verdict(
                "write.load",
                "load the synthetic scenarios",
                p,
                FAIL,
                f"{len(loaded)} of {len(self.scenarios)} loaded; {first.stem}: {first.load_error}",
                group="write",
            )

    def _load_one(self, sc: Scenario) -> None:
        resources = [r for r in bundle_resources(sc.bundle)]
        urns: dict[str, str] = {}
        for i, r in enumerate(resources):
            urn = f"urn:uuid:{uuid.uuid4()}"
            urns[f"{r.get('resourceType')}/{r.get('id')}"] = urn
            entry_url = _full_url(sc.bundle, i)
            if entry_url:
                urns[entry_url] = urn
        bodies = [self._tagged(r, urns) for r in resources]
        try:
            if self.transaction_works:
                try:
                    sc.created = self._load_transaction(bodies, resources, urns)
                except (FhirUnauthorized, FhirForbidden, TemporaryFhirServerError):
                    # No access, rate limits, server errors and no answer are not about
                    # transactions.
                    raise
                except FatalFhirServerError:
                    # Refused as a request (405, 404, 400, 501...): try plain creates instead.
                    self.transaction_works = False
            if not self.transaction_works:
                sc.created = self._load_singly(bodies, resources, urns)
        except (FhirServerError, InputError) as err:
            sc.load_error = str(err)
            return
        sc.patient_id = next((rid for rtype, rid in sc.created if rtype == "Patient"), None)
        if sc.patient_id is None:
            sc.load_error = "no Patient in the sample"

    def _tagged(self, resource: JSON, urns: Mapping[str, str]) -> JSON:
        body: JSON = _rewrite_references({k: v for k, v in resource.items() if k != "id"}, urns)
        meta = {
            k: v
            for k, v in (body.get("meta") or {}).items()
            if k not in ("versionId", "lastUpdated", "source")
        }
        meta["tag"] = [*(meta.get("tag") or []), dict(self.tag)]
        body["meta"] = meta
        return body

    def _load_transaction(
        self, bodies: list[JSON], resources: list[JSON], urns: Mapping[str, str]
    ) -> list[tuple[str, str]]:
        entries = [
            {
                "fullUrl": urns[f"{r['resourceType']}/{r.get('id')}"],
                "resource": body,
                "request": {"method": "POST", "url": r["resourceType"]},
            }
            for r, body in zip(resources, bodies, strict=True)
        ]
        response = self.client.transaction(
            {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        )
        created: list[tuple[str, str]] = []
        for r, entry in zip(resources, response.get("entry") or (), strict=False):
            where = _location(entry)
            if where is None:
                raise InputError(
                    f"the transaction-response gives no location for a {r['resourceType']}"
                )
            created.append(where)
        if len(created) != len(resources):
            raise InputError(
                f"the transaction-response has {len(created)} entries for {len(resources)}"
            )
        return created

    def _load_singly(
        self, bodies: list[JSON], resources: list[JSON], urns: Mapping[str, str]
    ) -> list[tuple[str, str]]:
        """Without transactions: create in an order where references point backwards."""
        order = sorted(
            range(len(resources)), key=lambda i: _LOAD_ORDER.get(resources[i]["resourceType"], 5)
        )
        real: dict[str, str] = {}
        created: list[tuple[str, str]] = []
        for i in order:
            body = _rewrite_references(bodies[i], real)
            made = self.client.create(body)
            rtype, rid = str(made.get("resourceType")), str(made.get("id"))
            real[urns[f"{resources[i]['resourceType']}/{resources[i].get('id')}"]] = (
                f"{rtype}/{rid}"
            )
            created.append((rtype, rid))
        return created

    # -- the pipeline ------------------------------------------------------------------------

    def evaluate_all(self) -> None:
        """fetch → evaluate → compare → write-back for each scenario, as ``fetch --write-back``."""
        first_created = 0
        tx_probe = Probe()
        for sc in self.scenarios:
            cid, title = f"scenario.{sc.stem}", sc.stem
            if not sc.patient_id:
                self.c.skip(cid, title, f"not loaded: {sc.load_error}", group="scenario")
                continue
            with self.c.probe() as p:
                resources = self._run_pipeline(sc.patient_id, sc.now or self.now)
            if p.error is not None:
                self.c.error_verdict(cid, title, p, group="scenario")
                continue
            sc.written = resources
            if sc.expected is None:
                self.c.verdict(
                    cid,
                    title,
                    p,
                    PASS,
                    "no expected output in the samples: result not compared",
                    group="scenario",
                    required=False,
                )
            else:
                got, want = _clinical(resources), _clinical(bundle_resources(sc.expected))
                if got == want:
                    self.c.verdict(cid, title, p, PASS, _clinical_text(got), group="scenario")
                else:
                    self.c.verdict(
                        cid,
                        title,
                        p,
                        FAIL,
                        f"differs from {sc.path.stem}.expected.json: {_clinical_diff(got, want)}",
                        group="scenario",
                    )
            if resources and tx_probe.error is None:
                with self.c.probe() as wp:
                    first_created += write_back(self.client, resources)
                tx_probe.exchanges.extend(wp.exchanges)
                tx_probe.ms += wp.ms
                if wp.error is not None:
                    tx_probe.error = tx_probe.error or wp.error
        written = sum(len(sc.written) for sc in self.scenarios)
        if tx_probe.error is not None:
            self.write_back_failed = describe(tx_probe)
            self.c.error_verdict(
                "write.transaction", "write-back transaction", tx_probe, group="write"
            )
        elif written:
            self.write_back_failed = ""
            self.c.verdict(
                "write.transaction",
                "write-back transaction",
                tx_probe,
                PASS,
                f"{written} resources written in conditional-create transactions, "
                f"{first_created} new",
                group="write",
            )
        else:
            self.write_back_failed = "nothing to write"
            self.c.skip(
                "write.transaction",
                "write-back transaction",
                "no scenario produced anything to write",
                group="write",
            )

    def _run_pipeline(self, pid: str, now: datetime) -> list[JSON]:
        data = fetch_patient_data(self.client, pid, now)
        assessment = evaluate(data, now=now, thresholds=self.c.o.thresholds, patient_id=pid)
        return emit.resources(assessment)

    def check_conditional_create(self) -> None:
        """A plain POST with If-None-Exist, twice: the second finds the first."""
        cid, title = "write.conditional-create", "conditional create (If-None-Exist)"
        value = f"probe-{self.tag['code']}"
        body = {
            "resourceType": "Patient",
            "meta": {"tag": [dict(self.tag)]},
            "identifier": [{"system": PROBE_IDENTIFIER_SYSTEM, "value": value}],
        }
        criteria = {"identifier": f"{PROBE_IDENTIFIER_SYSTEM}|{value}"}
        with self.c.probe() as p:
            one = self.client.create(body, if_none_exist=criteria)
            self.probe_ids.append(str(one.get("id")))
            two = self.client.create(body, if_none_exist=criteria)
            self.probe_ids.append(str(two.get("id")))
        if p.error is not None:
            self.c.error_verdict(cid, title, p, group="write")
        elif one.get("id") != two.get("id"):
            self.c.verdict(
                cid,
                title,
                p,
                FAIL,
                "If-None-Exist ignored: the second create made a new Patient",
                group="write",
            )
        else:
            self.c.verdict(
                cid, title, p, PASS, "the second create found the first (same id)", group="write"
            )

    def rerun(self) -> None:
        """Nothing is written twice: the first run's resources sent again, and the whole
        pipeline run again, must both create nothing (conditional creates find the first)."""
        cid, title = "write.rerun", "second run writes nothing new"
        if self.write_back_failed:
            self.c.skip(
                cid, title, f"write-back did not work: {self.write_back_failed}", group="write"
            )
            return
        resent = created = total = fewer = 0
        with self.c.probe() as p:
            for sc in self.scenarios:
                if not sc.patient_id or not sc.written:
                    continue
                first = list(sc.written)
                resent += write_back(self.client, first)
                again = self._run_pipeline(sc.patient_id, sc.now or self.now)
                total += len(again)
                if again:
                    created += write_back(self.client, again)
                # The first run's ServiceRequest proposals are open orders now: the second
                # evaluation does not propose them again (ingest reads draft orders as open).
                fewer += len(_identifiers(first) - _identifiers(again))
                sc.written = _unique(first + again)
        if p.error is not None:
            self.c.error_verdict(cid, title, p, group="write")
        elif resent or created:
            self.c.verdict(
                cid,
                title,
                p,
                FAIL,
                f"conditional creates did not find the first run's resources: {resent} created "
                f"again when resent, {created} by the second evaluation",
                group="write",
            )
        else:
            note = (
                f" ({fewer} proposals of the first run now count as open orders)" if fewer else ""
            )
            self.c.verdict(
                cid,
                title,
                p,
                PASS,
                f"0 created when the first run's resources were resent, 0 of {total} by a "
                f"second fetch-evaluate-write{note}",
                group="write",
            )

    # -- cleanup -----------------------------------------------------------------------------

    def cleanup(self) -> None:
        cid, title = "write.cleanup", "delete what was created"
        targets: list[tuple[str, str]] = []
        with self.c.probe() as p:
            for sc in self.scenarios:
                for r in sc.written:
                    targets.extend(self._find_by_identifier(r))
            for sc in self.scenarios:
                targets.extend(reversed(sc.created))
            targets.extend(("Patient", i) for i in dict.fromkeys(self.probe_ids))
            targets = list(dict.fromkeys(targets))
            refused: Counter[str] = Counter()
            for rtype, rid in targets:
                try:
                    self.client.delete(rtype, rid)
                except FhirNotFound:
                    pass  # gone already
                except FhirServerError as err:
                    refused[f"{rtype} (HTTP {err.status or 'no answer'})"] += 1
            remaining = self._remaining(targets)
        self.c.report.remaining = [f"{n} {what}" for what, n in sorted(remaining.items())]
        if p.error is not None:
            self.c.error_verdict(cid, title, p, group="write", required=False)
        elif remaining:
            why = (
                f"; deletes refused: {', '.join(f'{n} {w}' for w, n in refused.items())}"
                if refused
                else ""
            )
            left = ", ".join(self.c.report.remaining)
            self.c.verdict(
                cid,
                title,
                p,
                WARN,
                f"{left} remain (search _tag={CHECK_TAG_SYSTEM}|{self.tag['code']}){why}",
                group="write",
                required=False,
            )
        else:
            self.c.verdict(
                cid,
                title,
                p,
                PASS,
                f"deleted {len(targets)} resources; nothing with the run's tag or identifiers "
                "remains",
                group="write",
                required=False,
            )

    def _find_by_identifier(self, resource: JSON) -> list[tuple[str, str]]:
        """Where a written resource is, by its identifier. Only results that carry the
        identifier count: a server ignoring the parameter must not make us delete others'."""
        ident = (resource.get("identifier") or [{}])[0]
        wanted = (ident.get("system"), ident.get("value"))
        found = self.client.search(
            resource["resourceType"], {"identifier": f"{wanted[0]}|{wanted[1]}"}
        )
        return [
            (str(r.get("resourceType")), str(r.get("id")))
            for r in found
            if any(
                isinstance(i, dict) and (i.get("system"), i.get("value")) == wanted
                for i in r.get("identifier") or ()
            )
        ]

    def _is_tagged(self, resource: Mapping[str, Any]) -> bool:
        tags = (resource.get("meta") or {}).get("tag") or ()
        mine = (CHECK_TAG_SYSTEM, self.tag["code"])
        return any(isinstance(t, dict) and (t.get("system"), t.get("code")) == mine for t in tags)

    def _remaining(self, targets: Sequence[tuple[str, str]]) -> Counter[str]:
        """What can still be found: by the run's tag, and written resources by identifier."""
        left: Counter[str] = Counter()
        for rtype in sorted({t for t, _ in targets}):
            found = self.client.search(
                rtype, {"_tag": f"{CHECK_TAG_SYSTEM}|{self.tag['code']}", "_count": 100}
            )
            left[rtype] += sum(1 for r in found if self._is_tagged(r))
        for sc in self.scenarios:
            for r in sc.written:
                left[r["resourceType"]] += len(self._find_by_identifier(r))
        return +left


# --------------------------------------------------------------------------- samples


def default_samples_dir() -> Path:
    """``samples/`` of the source tree this package is in (a clone or an editable install)."""
    return Path(__file__).resolve().parents[2] / "samples"


def sample_inputs(samples_dir: Path) -> list[Path]:
    """The scenario inputs ``NN-name.json`` (not the expected outputs or the manifest)."""
    return sorted(
        p for p in samples_dir.glob("[0-9][0-9]-*.json") if not p.name.endswith(".expected.json")
    )


def evaluation_time(samples_dir: Path) -> datetime:
    """The ``--now`` the samples' expected outputs were made with (``expectations.json``)."""
    manifest = samples_dir / "expectations.json"
    raw = _DEFAULT_NOW
    if manifest.exists():
        raw = str(orjson.loads(manifest.read_bytes()).get("evaluation_time") or _DEFAULT_NOW)
    when = parse_time(raw)
    if when is None:
        raise InputError(f"{manifest}: evaluation_time is not a date-time")
    return when


def _manifest_samples(samples_dir: Path) -> dict[str, Any]:
    manifest = samples_dir / "expectations.json"
    if not manifest.exists():
        return {}
    samples = orjson.loads(manifest.read_bytes()).get("samples")
    return samples if isinstance(samples, dict) else {}


def samples_not_valid_r4(samples_dir: Path) -> set[str]:
    """Samples marked ``input_not_valid_r4``: vendor data no conformant server stores."""
    return {
        stem
        for stem, exp in _manifest_samples(samples_dir).items()
        if isinstance(exp, dict) and "input_not_valid_r4" in exp
    }


def sample_times(samples_dir: Path) -> dict[str, datetime]:
    """Samples that carry their own ``evaluation_time`` in ``expectations.json``."""
    out: dict[str, datetime] = {}
    for stem, exp in _manifest_samples(samples_dir).items():
        when = parse_time(exp.get("evaluation_time")) if isinstance(exp, dict) else None
        if when is not None:
            out[stem] = when
    return out


# --------------------------------------------------------------------------- helpers


def _full_url(bundle: Mapping[str, Any], index: int) -> str | None:
    entries = [
        e
        for e in bundle.get("entry") or ()
        if isinstance(e, dict)
        and isinstance(e.get("resource"), dict)
        and (e.get("search") or {}).get("mode") != "outcome"
    ]
    url = entries[index].get("fullUrl") if index < len(entries) else None
    return url if isinstance(url, str) else None


def _rewrite_references(value: Any, urns: Mapping[str, str]) -> Any:
    """A copy with every ``reference`` found in ``urns`` replaced (other references kept)."""
    if isinstance(value, dict):
        out = {k: _rewrite_references(v, urns) for k, v in value.items()}
        ref = out.get("reference")
        if isinstance(ref, str) and ref in urns:
            out["reference"] = urns[ref]
        return out
    if isinstance(value, list):
        return [_rewrite_references(v, urns) for v in value]
    return value


def _location(entry: Mapping[str, Any]) -> tuple[str, str] | None:
    """(type, id) of a transaction-response entry: from response.location, else the resource."""
    response = entry.get("response") or {}
    location = response.get("location") if isinstance(response, dict) else None
    if isinstance(location, str) and (pair := type_and_id(location)):
        return pair
    resource = entry.get("resource")
    if isinstance(resource, dict) and resource.get("id"):
        return str(resource.get("resourceType")), str(resource["id"])
    return None


def richest(scenarios: Sequence[Scenario]) -> str | None:
    """The loaded patient with the most CBC Observations: the best test of sort and paging."""
    best: tuple[int, str] | None = None
    for sc in scenarios:
        if not sc.patient_id:
            continue
        n = sum(
            1
            for r in bundle_resources(sc.bundle)
            if r.get("resourceType") == "Observation"
            and has_code(r, codes.LOINC, set(codes.CBC_LOINC))
        )
        if best is None or n > best[0]:
            best = (n, sc.patient_id)
    return best[1] if best else None


@dataclass(frozen=True)
class _Clinical:
    """The clinically meaningful part of an output: what a reviewer compares."""

    risk: str | None
    findings: frozenset[str]
    actions: frozenset[tuple[str, str]]


def _clinical(resources: Sequence[Mapping[str, Any]]) -> _Clinical:
    risk: str | None = None
    findings: set[str] = set()
    actions: set[tuple[str, str]] = set()
    for r in resources:
        if r.get("resourceType") == "RiskAssessment":
            for prediction in r.get("prediction") or ():
                for c in (prediction.get("qualitativeRisk") or {}).get("coding") or ():
                    if c.get("system") == codes.RISK_PROBABILITY:
                        risk = c.get("code")
            for reason in r.get("reasonCode") or ():
                findings.update(
                    c["code"]
                    for c in reason.get("coding") or ()
                    if c.get("system") == codes.FINDING_SYSTEM
                )
        elif r.get("resourceType") == "ServiceRequest":
            for c in (r.get("code") or {}).get("coding") or ():
                if c.get("system") == codes.ACTION_SYSTEM:
                    actions.add((str(c.get("code")), str(r.get("priority") or "routine")))
    return _Clinical(risk, frozenset(findings), frozenset(actions))


def _clinical_text(c: _Clinical) -> str:
    if c.risk is None and not c.actions:
        return "nothing to write, as expected"
    acts = ", ".join(f"{a} ({p})" for a, p in sorted(c.actions)) or "no action"
    return f"risk {c.risk}; {len(c.findings)} findings; {acts}"


def _clinical_diff(got: _Clinical, want: _Clinical) -> str:
    parts: list[str] = []
    if got.risk != want.risk:
        parts.append(f"risk {got.risk}, expected {want.risk}")
    if got.findings != want.findings:
        extra, missing = sorted(got.findings - want.findings), sorted(want.findings - got.findings)
        parts.append(
            "findings"
            + (f" +{','.join(extra)}" if extra else "")
            + (f" -{','.join(missing)}" if missing else "")
        )
    if got.actions != want.actions:
        extra_a = sorted(f"{a}({p})" for a, p in got.actions - want.actions)
        missing_a = sorted(f"{a}({p})" for a, p in want.actions - got.actions)
        parts.append(
            "actions"
            + (f" +{','.join(extra_a)}" if extra_a else "")
            + (f" -{','.join(missing_a)}" if missing_a else "")
        )
    return "; ".join(parts)


def _identifiers(resources: Sequence[Mapping[str, Any]]) -> set[str]:
    return {
        f"{i.get('system')}|{i.get('value')}"
        for r in resources
        for i in (r.get("identifier") or [])[:1]
        if isinstance(i, dict)
    }


def _unique(resources: Sequence[JSON]) -> list[JSON]:
    seen: dict[str, JSON] = {}
    for r in resources:
        key = next(iter(_identifiers([r])), str(id(r)))
        seen.setdefault(key, r)
    return list(seen.values())
