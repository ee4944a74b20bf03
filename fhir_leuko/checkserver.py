"""``fhir-leuko check-server``: does a FHIR server give fhir-leuko what it needs?

Why a command of its own: before a go-live (or a CI run against a vendor sandbox) an
integration engineer needs one answer per capability fhir-leuko relies on, each with the
request that showed it, not a stack trace from the first thing that broke. The read-only
checks send exactly the searches fhir-leuko sends (``fhirio.queries``), through the project's
own client, and look at what comes back: is it sorted as asked, do the pages link up, does a
LOINC token match only LOINC. ``--write`` goes further: it loads the bundled synthetic
scenarios (``samples/``), runs the same fetch, evaluation and write-back as ``fhir-leuko fetch
--write-back`` for each, compares the clinical result with the sample's expected output, runs it
again to show nothing is written twice, and deletes what it wrote.

Every check ends ``pass``, ``warn`` or ``fail`` (``skip`` when an earlier check made it
impossible). Only a required check can fail; exit status 1 says one did.
"""

from __future__ import annotations

import dataclasses
import re
import time
import uuid
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import unquote

import httpx
import orjson

from fhir_leuko.clinical.thresholds import DEFAULT_THRESHOLDS, Thresholds
from fhir_leuko.errors import FhirServerError, InputError, LeukoError
from fhir_leuko.fhirio import codes, emit, queries
from fhir_leuko.fhirio.client import Auth, FhirClient, bundle_resources
from fhir_leuko.fhirio.ingest import parse_time
from fhir_leuko.service import evaluate
from fhir_leuko.subscriptions.worker import fetch_patient_data, write_back

__all__ = [
    "CHECK_TAG_SYSTEM",
    "Check",
    "Options",
    "Report",
    "default_samples_dir",
    "render_json",
    "render_junit",
    "render_text",
    "run",
]

JSON = dict[str, Any]
Status = Literal["pass", "warn", "fail", "skip"]
PASS: Final = "pass"
WARN: Final = "warn"
FAIL: Final = "fail"
SKIP: Final = "skip"

#: ``meta.tag`` system on everything ``--write`` creates; the code names the run.
CHECK_TAG_SYSTEM: Final = f"{codes.BASE}/CodeSystem/check-server-run"
#: Identifier system of the conditional-create probe Patient.
PROBE_IDENTIFIER_SYSTEM: Final = f"{codes.BASE}/identifier/check-server-probe"
#: SMART scopes for ``--write`` (SMART v1 wildcard: it reads, writes and deletes every type).
WRITE_SCOPE: Final = "system/*.read system/*.write"
#: Above this, one query is slow for a CDS Hooks call (the CDS client waits a few seconds in all).
SLOW_QUERY_MS: Final = 2000.0
_R4_PREFIX: Final = "4.0"
_BACKPORT: Final = "http://hl7.org/fhir/uv/subscriptions-backport"
_DEFAULT_NOW: Final = "2026-03-10T12:00:00Z"
_PAGE_SIZE_PROBE: Final = 2
_MAX_SHOWN: Final = 160


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Check:
    """One check's verdict, with the request that showed it and how long it took."""

    id: str
    title: str
    status: Status
    reason: str
    request: str = ""
    http_status: int | None = None
    ms: float | None = None
    required: bool = True
    group: str = "read"


@dataclass
class Report:
    base_url: str
    write: bool
    checks: list[Check] = field(default_factory=list)
    server: str = ""
    fhir_version: str = ""
    patient: str = ""
    run_tag: str = ""
    remaining: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAIL]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        return check


@dataclass(frozen=True)
class Options:
    base_url: str
    auth: Auth = None
    patient: str | None = None
    write: bool = False
    samples_dir: Path | None = None
    timeout: float = 30.0
    thresholds: Thresholds = DEFAULT_THRESHOLDS


# --------------------------------------------------------------------------- what was sent


@dataclass(frozen=True)
class _Exchange:
    method: str
    url: str
    status: int
    ms: float
    content_type: str
    retry_after: str | None


class _Recorder:
    """Every HTTP exchange the client makes (httpx event hooks: they see retries too).

    Only method, URL, status, timing and two headers are kept: never bodies or the
    Authorization header.
    """

    def __init__(self) -> None:
        self.log: list[_Exchange] = []
        self._started: dict[int, float] = {}

    def on_request(self, request: httpx.Request) -> None:
        self._started[id(request)] = time.perf_counter()

    def on_response(self, response: httpx.Response) -> None:
        request = response.request
        t0 = self._started.pop(id(request), time.perf_counter())
        self.log.append(
            _Exchange(
                request.method,
                str(request.url),
                response.status_code,
                (time.perf_counter() - t0) * 1000,
                response.headers.get("content-type", ""),
                response.headers.get("retry-after"),
            )
        )


class _NotServer(FhirServerError):
    """A check's failure that is not an HTTP answer (unreadable data, a bug): no status."""


@dataclass
class _Probe:
    """What one check sent: filled in by :meth:`_Checker.probe`."""

    exchanges: list[_Exchange] = field(default_factory=list)
    ms: float = 0.0
    error: FhirServerError | None = None

    @property
    def last(self) -> _Exchange | None:
        return self.exchanges[-1] if self.exchanges else None

    @property
    def rate_limited(self) -> list[_Exchange]:
        return [e for e in self.exchanges if e.status == 429]


# --------------------------------------------------------------------------- the checker


class _Checker:
    def __init__(
        self,
        options: Options,
        report: Report,
        client: FhirClient,
        recorder: _Recorder,
    ) -> None:
        self.o = options
        self.report = report
        self.client = client
        self.rec = recorder
        self.capability: JSON = {}
        self.no_access = ""  # why data checks cannot run (401, unreachable), once known
        self.cbc_found: list[JSON] = []

    # -- plumbing ----------------------------------------------------------------------------

    @contextmanager
    def probe(self) -> Iterator[_Probe]:
        """Run a check's requests; collect their exchanges, time and any FHIR server error."""
        p = _Probe()
        start = len(self.rec.log)
        t0 = time.perf_counter()
        try:
            yield p
        except FhirServerError as err:
            p.error = err
        except LeukoError as err:  # e.g. data the evaluation cannot read
            p.error = _NotServer(str(err))
        except Exception as err:  # noqa: BLE001 - one odd answer must not end every check
            p.error = _NotServer(f"unexpected {type(err).__name__}: {err}")
        finally:
            p.ms = (time.perf_counter() - t0) * 1000
            p.exchanges = self.rec.log[start:]

    def shown(self, exchange: _Exchange | None) -> str:
        """``GET Observation?patient=…`` relative to the base, decoded, shortened."""
        if exchange is None:
            return ""
        url = exchange.url
        base = self.client.base_url
        rel = url[len(base) :].lstrip("/") if url.startswith(base) else url
        return f"{exchange.method} {unquote(rel) or '[base]'}"

    def verdict(
        self,
        cid: str,
        title: str,
        p: _Probe,
        status: Status,
        reason: str,
        *,
        required: bool = True,
        group: str = "read",
        shown: _Exchange | None = None,
    ) -> Check:
        """Record a check; a non-required check never fails (it warns), 429s are named."""
        if status == FAIL and not required:
            status = WARN
        limited = p.rate_limited
        if limited and status == PASS:
            waits = sorted({e.retry_after for e in limited if e.retry_after})
            after = f" with Retry-After {', '.join(waits)} s" if waits else " without Retry-After"
            status = WARN
            reason = (
                f"rate limited: HTTP 429{after} on {len(limited)} request(s), answered after "
                f"waiting; {reason}"
            )
        ex = shown or (limited[0] if limited else None) or p.last
        return self.report.add(
            Check(
                cid,
                title,
                status,
                reason,
                self.shown(ex),
                ex.status if ex else None,
                round(p.ms, 1),
                required,
                group,
            )
        )

    def error_verdict(
        self, cid: str, title: str, p: _Probe, *, required: bool = True, group: str = "read"
    ) -> Check:
        assert p.error is not None
        return self.verdict(cid, title, p, FAIL, _describe(p), required=required, group=group)

    def skip(self, cid: str, title: str, reason: str, *, group: str = "read") -> Check:
        return self.report.add(Check(cid, title, SKIP, reason, group=group))

    # -- read-only checks --------------------------------------------------------------------

    def check_capability(self) -> None:
        title = "CapabilityStatement"
        with self.probe() as p:
            cs = self.client.get_url("metadata")
        if p.error is not None:
            if p.error.status is None and not isinstance(p.error, _NotServer):
                self.no_access = f"the server did not answer ({p.error})"
            self.error_verdict("capability", title, p)
            return
        if cs.get("resourceType") != "CapabilityStatement":
            self.verdict(
                "capability", title, p, FAIL, f"GET metadata returned a {cs.get('resourceType')}"
            )
            return
        self.capability = cs
        version = str(cs.get("fhirVersion") or "")
        software = cs.get("software") or {}
        name = " ".join(
            str(software.get(k)) for k in ("name", "version") if software.get(k)
        ) or str(cs.get("name") or "unnamed server")
        self.report.server = name
        self.report.fhir_version = version
        formats = [str(f).lower() for f in cs.get("format") or ()]
        json_ok = any("json" in f for f in formats)
        problems = []
        if not version.startswith(_R4_PREFIX):
            problems.append(f"fhirVersion is {version or 'missing'}, not R4 (4.0.x)")
        if not json_ok:
            problems.append(f"JSON is not among its formats ({', '.join(formats) or 'none'})")
        if problems:
            self.verdict("capability", title, p, FAIL, "; ".join(problems))
        else:
            self.verdict("capability", title, p, PASS, f"FHIR {version}, JSON; {name}")

    def check_access(self) -> None:
        title = "access with these credentials"
        if self.no_access:
            self.skip("access", title, self.no_access)
            return
        with self.probe() as p:
            self.client.search("Patient", {"_count": 1}, limit=1, max_pages=1)
        status = p.error.status if p.error else None
        unreachable = status is None and not isinstance(p.error, _NotServer)
        if p.error is not None and (status in (401, 403) or unreachable):
            self.no_access = f"no access to data: {_describe(p)}"
            self.error_verdict("access", title, p)
            return
        how = "a token" if self.o.auth else "no token"
        note = f" (the search itself answered {status})" if p.error else ""
        self.verdict("access", title, p, PASS, f"data requests accepted with {how}{note}")

    def find_patient(self) -> str | None:
        """The patient to check with: given, else the subject with most CBC Observations."""
        if self.o.patient:
            self.report.patient = f"Patient/{self.o.patient} (given)"
            return self.o.patient
        with self.probe() as p:
            found = self.client.search(
                "Observation",
                {"code": queries.any_code(codes.LOINC, codes.CBC_LOINC), "_count": 100},
                limit=100,
                max_pages=1,
            )
        if p.error is not None:
            self.error_verdict("find-patient", "a patient with CBC results", p)
            return None
        subjects = Counter(s for s in map(_subject_id, found) if s)
        if not subjects:
            self.verdict(
                "find-patient",
                "a patient with CBC results",
                p,
                WARN,
                "no CBC Observation on the server: the data checks cannot run; pass "
                "--patient ID, or --write to load synthetic patients",
                required=False,
            )
            return None
        pid = subjects.most_common(1)[0][0]
        self.report.patient = f"Patient/{pid} (most CBC results of the first 100 found)"
        return pid

    def check_patient_read(self, pid: str) -> None:
        title = "Patient read"
        with self.probe() as p:
            patient = self.client.read("Patient", pid)
        if p.error is not None:
            self.error_verdict("read.patient", title, p)
        elif patient.get("id") != pid:
            self.verdict(
                "read.patient", title, p, FAIL, f"returned a Patient with id {patient.get('id')}"
            )
        else:
            self.verdict("read.patient", title, p, PASS, f"Patient/{pid}")

    def check_query(self, query: queries.PatientQuery, pid: str) -> list[JSON] | None:
        """One search of the CDS prefetch, all pages; what it returned must match it."""
        cid, title = f"search.{query.key}", _QUERY_TITLES.get(query.key, query.key)
        rtype, params = query.search(pid)
        found: list[JSON] = []
        with self.probe() as p:
            pages = 0
            for page in self.client.search_bundle_pages(rtype, params):
                pages += 1
                found.extend(bundle_resources(page))
        if p.error is not None:
            self.error_verdict(cid, title, p)
            culprit = self._refused_parameter(rtype, params, p.error)
            if culprit:
                last = self.report.checks[-1]
                self.report.checks[-1] = dataclasses.replace(
                    last,
                    reason=f"refused because of {culprit} (the same search without it "
                    f"is answered): {last.reason}",
                )
            return None
        wrong = _mismatches(found, rtype, pid, params)
        if wrong:
            self.verdict(
                cid,
                title,
                p,
                FAIL,
                f"{len(wrong)} of {len(found)} results do not match the search: {wrong[0]}",
            )
            return None
        what = f"{_plural(len(found), rtype)}, {_plural(pages, 'page')}"
        self.verdict(cid, title, p, PASS, what)
        return found

    def _refused_parameter(
        self, rtype: str, params: Sequence[tuple[str, str]], error: FhirServerError
    ) -> str:
        """Which result parameter (``_sort``, ``_count``) a 4xx refusal was about, if either:
        the same search without it is tried once (a diagnosis, not part of any check)."""
        if error.status is None or not 400 <= error.status < 500 or error.status in (401, 403):
            return ""
        for name in ("_sort", "_count"):
            sent = [(k, v) for k, v in params if k == name]
            if not sent:
                continue
            try:
                self.client.search(rtype, [(k, v) for k, v in params if k != name], limit=1)
            except FhirServerError:
                continue
            return f"{name}={sent[0][1]}"
        return ""

    def check_loinc_token(self, pid: str) -> None:
        """``code=http://loinc.org|6690-2`` matches LOINC only: a SNOMED system with the same
        digits must not find the same results (a server ignoring the system would)."""
        cid, title = "search.loinc-token", "LOINC system|code token search"
        wbc = codes.CBC_LOINC[0]
        with self.probe() as p:
            loinc = self.client.search(
                "Observation", {"patient": pid, "code": f"{codes.LOINC}|{wbc}", "_count": 100}
            )
            other = self.client.search(
                "Observation", {"patient": pid, "code": f"{codes.SNOMED}|{wbc}", "_count": 100}
            )
        if p.error is not None:
            self.error_verdict(cid, title, p)
            return
        shown = p.exchanges[0] if p.exchanges else None
        bad = [o for o in loinc if not _has_code(o, codes.LOINC, {wbc})]
        if bad:
            self.verdict(
                cid, title, p, FAIL, f"{len(bad)} result(s) without LOINC {wbc}", shown=shown
            )
        elif any(not _has_code(o, codes.SNOMED, {wbc}) for o in other):
            self.verdict(
                cid,
                title,
                p,
                FAIL,
                "the system part is ignored: a SNOMED CT system with the same code found "
                "LOINC results",
                shown=p.last,
            )
        elif not loinc:
            self.verdict(
                cid,
                title,
                p,
                WARN,
                f"no LOINC {wbc} (WBC) result for this patient to check",
                required=False,
                shown=shown,
            )
        else:
            self.verdict(
                cid,
                title,
                p,
                PASS,
                f"{len(loinc)} LOINC {wbc} results; none for the same code in another system",
                shown=shown,
            )

    def check_sort(self, pid: str) -> None:
        """``_sort=-date`` (what we send) comes back newest first; ``_sort=date`` oldest first.

        The second shows the order comes from ``_sort``: data stored newest first would pass
        the first by accident. A server that always answers newest first (Oracle Health
        documents that for Observation) only warns: it gives fhir-leuko what it asks for."""
        cid, title = "search.sort", "_sort=-date honoured"
        rtype, params = queries.CBC.search(pid)
        base = [(k, v) for k, v in params if k != "_sort"]
        with self.probe() as p:
            newest_first = self.client.search(rtype, [*base, ("_sort", "-date")])
            oldest_first = self.client.search(rtype, [*base, ("_sort", "date")])
        if p.error is not None:
            self.error_verdict(cid, title, p)
            return
        down = [_effective(o) for o in newest_first]
        up = [_effective(o) for o in oldest_first]
        shown = p.exchanges[0] if p.exchanges else None
        if len({d for d in down if d}) < 2:
            self.verdict(
                cid,
                title,
                p,
                WARN,
                "fewer than two CBC dates for this patient: order not verifiable",
                required=False,
                shown=shown,
            )
            return
        if not _ordered(down, descending=True):
            self.verdict(
                cid,
                title,
                p,
                FAIL,
                f"_sort=-date ignored: {_first_disorder(down, descending=True)}",
                shown=shown,
            )
        elif not _ordered(up, descending=False):
            self.verdict(
                cid,
                title,
                p,
                WARN,
                f"newest first whatever _sort says (_sort=date: "
                f"{_first_disorder(up, descending=False)}): "
                "enough for fhir-leuko, which only asks for -date, if that order is promised",
                required=False,
                shown=p.last,
            )
        else:
            self.verdict(
                cid,
                title,
                p,
                PASS,
                f"{len(down)} results newest first (and oldest first with _sort=date)",
                shown=shown,
            )

    def check_paging(self, pid: str) -> None:
        """``_count=2``: pages hold at most 2, ``next`` links lead to every result once."""
        cid, title = "search.paging", "_count and paging links"
        rtype, params = queries.CBC.search(pid)
        small = [(k, v) for k, v in params if k != "_count"] + [("_count", str(_PAGE_SIZE_PROBE))]
        with self.probe() as p:
            everything = self.client.search(rtype, params)
            shown_at = len(self.rec.log)
            sizes: list[int] = []
            ids: list[str] = []
            for page in self.client.search_bundle_pages(rtype, small, max_pages=500):
                got = bundle_resources(page)
                sizes.append(len(got))
                ids.extend(str(r.get("id")) for r in got)
        if p.error is not None:
            self.error_verdict(cid, title, p)
            return
        shown = self.rec.log[shown_at] if shown_at < len(self.rec.log) else p.last
        total = len(everything)
        if total <= _PAGE_SIZE_PROBE:
            self.verdict(
                cid,
                title,
                p,
                WARN,
                f"only {total} CBC results: paging not exercised",
                required=False,
                shown=shown,
            )
        elif max(sizes) > _PAGE_SIZE_PROBE:
            self.verdict(
                cid,
                title,
                p,
                WARN,
                f"_count={_PAGE_SIZE_PROBE} ignored: a page held {max(sizes)} results "
                "(fhir-leuko still reads them)",
                required=False,
                shown=shown,
            )
        elif len(sizes) == 1:
            self.verdict(
                cid,
                title,
                p,
                FAIL,
                f"no next link: the first page of _count={_PAGE_SIZE_PROBE} held {sizes[0]} of "
                f"{total} results and the rest cannot be reached",
                shown=shown,
            )
        elif len(ids) != len(set(ids)) or set(ids) != {str(r.get("id")) for r in everything}:
            self.verdict(
                cid,
                title,
                p,
                FAIL,
                f"next links gave {len(ids)} results ({len(set(ids))} distinct), "
                f"the whole search {total}",
                shown=p.last,
            )
        else:
            self.verdict(
                cid,
                title,
                p,
                PASS,
                f"{total} results over {len(sizes)} pages of {_PAGE_SIZE_PROBE}, each once",
                shown=shown,
            )

    def check_operation_outcome(self, pid: str) -> None:
        """A bad search and a missing id are answered 4xx with an OperationOutcome."""
        cid, title = "errors.operation-outcome", "OperationOutcome on a bad request"
        probes: list[tuple[str, Callable[[], object]]] = [
            (
                "a malformed date",
                lambda: self.client.search("Observation", {"patient": pid, "date": "not-a-date"}),
            ),
            (
                "a missing id",
                lambda: self.client.read("Patient", f"fhir-leuko-missing-{uuid.uuid4().hex[:12]}"),
            ),
        ]
        problems: list[str] = []
        all_p = _Probe()
        shown: _Exchange | None = None
        for what, call in probes:
            with self.probe() as p:
                call()
            all_p.exchanges.extend(p.exchanges)
            all_p.ms += p.ms
            last = p.last
            if p.error is None:
                problems.append(f"{what} was accepted (HTTP {last.status if last else '?'})")
                shown = shown or last
            elif p.error.outcome is None:
                ctype = (last.content_type.split(";")[0] if last else "") or "no Content-Type"
                problems.append(
                    f"{what} got HTTP {p.error.status} with {ctype}, not an OperationOutcome"
                )
                shown = shown or last
        if problems:
            self.verdict(
                cid,
                title,
                all_p,
                WARN,
                "; ".join(problems) + " (error messages will be less clear)",
                required=False,
                shown=shown,
            )
        else:
            self.verdict(
                cid,
                title,
                all_p,
                PASS,
                "400 and 404 come with an OperationOutcome",
                required=False,
                shown=all_p.exchanges[0] if all_p.exchanges else None,
            )

    def check_declared_writes(self) -> None:
        """Without --write, transaction and conditional create can only be read off the
        CapabilityStatement (exercised for real with --write)."""
        rest = _server_rest(self.capability)
        interactions = {
            str(i.get("code")) for i in rest.get("interaction") or () if isinstance(i, dict)
        }
        empty = _Probe()
        if "transaction" in interactions:
            self.verdict(
                "write.transaction",
                "transaction",
                empty,
                PASS,
                "declared in the CapabilityStatement (exercised with --write)",
                required=False,
            )
        else:
            self.verdict(
                "write.transaction",
                "transaction",
                empty,
                WARN,
                "not declared in the CapabilityStatement: write-back sends one transaction per "
                "evaluation; run with --write to try it",
                required=False,
            )
        conditional = [
            r.get("type")
            for r in rest.get("resource") or ()
            if isinstance(r, dict)
            and r.get("type") in ("RiskAssessment", "ServiceRequest")
            and r.get("conditionalCreate") is True
        ]
        if len(conditional) == 2:
            self.verdict(
                "write.conditional-create",
                "conditional create (ifNoneExist)",
                empty,
                PASS,
                "declared for RiskAssessment and ServiceRequest (exercised with --write)",
                required=False,
            )
        else:
            self.verdict(
                "write.conditional-create",
                "conditional create (ifNoneExist)",
                empty,
                WARN,
                "conditionalCreate is not declared for RiskAssessment and ServiceRequest: "
                "without it a second write-back would duplicate; run with --write to try it",
                required=False,
            )

    def check_subscriptions(self) -> None:
        cid, title = "subscriptions", "Subscription support"
        empty = _Probe()
        rest = _server_rest(self.capability)
        sub = next(
            (
                r
                for r in rest.get("resource") or ()
                if isinstance(r, dict) and r.get("type") == "Subscription"
            ),
            None,
        )
        text = orjson.dumps(self.capability).decode()
        backport = _BACKPORT in text
        topics = [
            str(e.get("valueCanonical"))
            for r in rest.get("resource") or ()
            if isinstance(r, dict)
            for e in r.get("extension") or ()
            if isinstance(e, dict) and str(e.get("url", "")).endswith("subscriptiontopic-canonical")
        ]
        if sub is None and not backport:
            self.verdict(
                cid,
                title,
                empty,
                WARN,
                "no Subscription resource in the CapabilityStatement: new results will not be "
                "pushed (use CDS Hooks, or run fetch on a schedule)",
                required=False,
            )
        elif backport:
            extra = f"; topics: {', '.join(topics[:3])}" if topics else "; no topic advertised"
            self.verdict(
                cid,
                title,
                empty,
                PASS,
                f"Subscriptions Backport IG (topic-based){extra}",
                required=False,
            )
        else:
            self.verdict(
                cid,
                title,
                empty,
                PASS,
                "R4 Subscription resource (criteria, rest-hook) declared",
                required=False,
            )

    def check_speed(self) -> None:
        timed = [
            c
            for c in self.report.checks
            if c.id.startswith("search.") and c.id[7:] in _QUERY_KEYS or c.id == "read.patient"
        ]
        timed = [c for c in timed if c.ms is not None and c.status != SKIP]
        if not timed:
            return
        slow = [c for c in timed if (c.ms or 0) > SLOW_QUERY_MS]
        total = sum(c.ms or 0 for c in timed)
        empty = _Probe()
        empty.ms = total
        if slow:
            names = ", ".join(f"{c.id} {c.ms:.0f} ms" for c in slow)
            self.verdict(
                "speed",
                "query times",
                empty,
                WARN,
                f"slow for a CDS Hooks call (> {SLOW_QUERY_MS:.0f} ms): {names}",
                required=False,
            )
        else:
            worst = max(timed, key=lambda c: c.ms or 0)
            self.verdict(
                "speed",
                "query times",
                empty,
                PASS,
                f"one evaluation's reads took {total:.0f} ms in all; slowest {worst.id} "
                f"{worst.ms:.0f} ms",
                required=False,
            )

    def read_only(self, pid: str | None) -> None:
        data_checks = [
            ("read.patient", "Patient read"),
            *(
                (f"search.{q.key}", _QUERY_TITLES.get(q.key, q.key))
                for q in queries.PATIENT_DATA
                if q.returns == "Bundle"
            ),
            ("search.loinc-token", "LOINC system|code token search"),
            ("search.sort", "_sort=-date honoured"),
            ("search.paging", "_count and paging links"),
            ("errors.operation-outcome", "OperationOutcome on a bad request"),
        ]
        if self.no_access or pid is None:
            why = self.no_access or "no patient to check with"
            for cid, title in data_checks:
                self.skip(cid, title, why)
            return
        self.check_patient_read(pid)
        for query in queries.PATIENT_DATA:
            if query.returns == "Bundle":
                self.check_query(query, pid)
        self.check_loinc_token(pid)
        self.check_sort(pid)
        self.check_paging(pid)
        self.check_operation_outcome(pid)
        self.check_speed()


# --------------------------------------------------------------------------- --write


@dataclass
class _Scenario:
    stem: str
    path: Path
    bundle: JSON
    expected: JSON | None
    created: list[tuple[str, str]] = field(default_factory=list)  # (type, id) loaded
    patient_id: str | None = None
    written: list[JSON] = field(default_factory=list)  # what write-back sent
    load_error: str = ""


class _Writer:
    """``--write``: load the samples, run fetch → evaluate → write-back twice, clean up."""

    def __init__(self, checker: _Checker, samples_dir: Path, now: datetime, run_id: str) -> None:
        self.c = checker
        self.client = checker.client
        self.samples_dir = samples_dir
        self.now = now
        self.tag = {
            "system": CHECK_TAG_SYSTEM,
            "code": run_id,
            "display": f"fhir-leuko check-server run {run_id}",
        }
        self.scenarios: list[_Scenario] = []
        self.transaction_works = True
        self.write_back_failed = ""
        self.probe_ids: list[str] = []

    # -- loading -----------------------------------------------------------------------------

    def load(self) -> None:
        for path in sample_inputs(self.samples_dir):
            expected_file = path.with_name(path.stem + ".expected.json")
            expected = orjson.loads(expected_file.read_bytes()) if expected_file.exists() else None
            self.scenarios.append(
                _Scenario(path.stem, path, orjson.loads(path.read_bytes()), expected)
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

    def _load_one(self, sc: _Scenario) -> None:
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
                except FhirServerError as err:
                    # Refused as a request (405, 404, 400, 501...): try plain creates instead;
                    # no access, rate limits and server errors are not about transactions.
                    if (
                        err.status is None
                        or err.status in (401, 403, 429)
                        or 500 <= err.status != 501
                    ):
                        raise
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
        tx_probe = _Probe()
        for sc in self.scenarios:
            cid, title = f"scenario.{sc.stem}", sc.stem
            if not sc.patient_id:
                self.c.skip(cid, title, f"not loaded: {sc.load_error}", group="scenario")
                continue
            with self.c.probe() as p:
                resources = self._run_pipeline(sc.patient_id)
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
            self.write_back_failed = _describe(tx_probe)
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

    def _run_pipeline(self, pid: str) -> list[JSON]:
        data = fetch_patient_data(self.client, pid, self.now)
        assessment = evaluate(data, now=self.now, thresholds=self.c.o.thresholds, patient_id=pid)
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
                again = self._run_pipeline(sc.patient_id)
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
                except FhirServerError as err:
                    if err.status not in (404, 410):
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


# --------------------------------------------------------------------------- run


def default_samples_dir() -> Path:
    """``samples/`` of the source tree this package is in (a clone or an editable install)."""
    return Path(__file__).resolve().parent.parent / "samples"


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


def run(
    options: Options,
    *,
    http: httpx.Client | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Report:
    """Run every check against ``options.base_url``; the Report says what passed.

    ``http``: an httpx.Client to send through (tests); its event hooks get our recorder.
    """
    samples_dir = options.samples_dir or default_samples_dir()
    if options.write and not sample_inputs(samples_dir):
        raise InputError(f"--write needs the sample scenarios; none found in {samples_dir}")
    report = Report(options.base_url, options.write)
    recorder = _Recorder()
    owns = http is None
    if http is None:
        host = httpx.URL(options.base_url).host
        # A proxy from the environment must not see (or break) traffic to this machine.
        http = httpx.Client(follow_redirects=False, trust_env=host not in _LOOPBACK)
    http.event_hooks["request"].append(recorder.on_request)
    http.event_hooks["response"].append(recorder.on_response)
    try:
        with FhirClient(
            options.base_url,
            auth=options.auth,
            timeouts=options.timeout,
            max_retries=2,
            max_retry_after=30.0,
            client=http,
            sleep=sleep,
        ) as client:
            checker = _Checker(options, report, client, recorder)
            checker.check_capability()
            checker.check_access()
            writer: _Writer | None = None
            pid: str | None = None
            if options.write and not checker.no_access:
                run_id = f"{datetime.now().strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"
                report.run_tag = f"{CHECK_TAG_SYSTEM}|{run_id}"
                writer = _Writer(checker, samples_dir, evaluation_time(samples_dir), run_id)
                writer.load()
                pid = options.patient or _richest(writer.scenarios)
                if pid and not options.patient:
                    report.patient = f"Patient/{pid} (loaded scenario with most CBC results)"
            if pid is None and not checker.no_access:
                pid = checker.find_patient()
            checker.read_only(pid)
            if writer is None:
                checker.check_declared_writes()
            checker.check_subscriptions()
            if writer is not None:
                try:
                    writer.evaluate_all()
                    writer.check_conditional_create()
                    writer.rerun()
                finally:
                    writer.cleanup()
            elif options.write:
                checker.skip(
                    "write.load", "load the synthetic scenarios", checker.no_access, group="write"
                )
    finally:
        if owns:
            http.close()
    return report


# --------------------------------------------------------------------------- output


_MARK: Final = {PASS: "PASS", WARN: "WARN", FAIL: "FAIL", SKIP: "skip"}


def render_text(report: Report) -> str:
    """One screen: a line per check, the request under what did not pass, the verdict."""
    lines = [f"fhir-leuko check-server  {report.base_url}"]
    about = [x for x in (report.server, report.patient and f"patient {report.patient}") if x]
    if about:
        lines.append("  " + " · ".join(about))
    if report.run_tag:
        lines.append(f"  --write run tag: {report.run_tag}")
    lines.append("")
    scenarios = [c for c in report.checks if c.group == "scenario"]
    others = [c for c in report.checks if c.group != "scenario"]
    i = 0
    while i < len(others):
        c = others[i]
        same = 1
        while (
            c.status == SKIP
            and i + same < len(others)
            and (others[i + same].status, others[i + same].reason) == (SKIP, c.reason)
        ):
            same += 1
        if same > 1:
            lines.append(_line(SKIP, f"{same} checks ({c.title}, …)", None, c.reason))
        else:
            lines.append(_line(c.status, c.title, c.ms, c.reason))
            if c.status in (FAIL, WARN) and c.request:
                status = f" -> HTTP {c.http_status}" if c.http_status else ""
                lines.append(f"{'':{_INDENT}}{_short_request(c.request)}{status}")
        if scenarios and c.id == "write.load":
            lines.extend(_scenario_lines(scenarios))
        i += same
    counts = Counter(c.status for c in report.checks)
    verdict = "FAIL" if report.failed else "PASS"
    lines.append("")
    lines.append(
        f"{verdict}: {counts[PASS]} passed, {_plural(counts[WARN], 'warning')}, "
        f"{counts[FAIL]} failed, {counts[SKIP]} skipped (exit {report.exit_code})"
    )
    if report.failed:
        lines.append("Failed: " + ", ".join(c.id for c in report.failed))
    return "\n".join(lines) + "\n"


_TITLE_WIDTH: Final = 34
_INDENT: Final = 8


def _line(status: str, title: str, ms: float | None, reason: str) -> str:
    took = f"{ms:6.0f} ms" if ms else ""
    return f"{_MARK[status]}  {title[:_TITLE_WIDTH]:<{_TITLE_WIDTH}} {took:>9}  {reason}"


def _short_request(request: str) -> str:
    """For the screen: a long code list as its first code and a count, then cut to fit."""

    def fold(m: re.Match[str]) -> str:
        values = m.group(2).split(",")
        return m.group(1) + (f"{values[0]},…+{len(values) - 1}" if len(values) > 2 else m.group(2))

    text = re.sub(r"((?:^|[?&])code=)([^&]*)", fold, request)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 1] + "…"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _scenario_lines(scenarios: list[Check]) -> list[str]:
    """The scenarios as one line (a line each for those that did not pass)."""
    bad = [c for c in scenarios if c.status in (FAIL, WARN, SKIP)]
    ok = sum(1 for c in scenarios if c.status == PASS)
    status = FAIL if any(c.status == FAIL for c in bad) else (WARN if bad else PASS)
    total_ms = sum(c.ms or 0 for c in scenarios)
    reason = f"{ok}/{len(scenarios)} match their expected output (risk, findings, actions)"
    lines = [_line(status, "scenarios (fetch, evaluate)", total_ms, reason)]
    for c in bad[:6]:
        lines.append(f"{'':{_INDENT}}{_MARK[c.status]} {c.title}: {c.reason}")
    if len(bad) > 6:
        lines.append(f"{'':{_INDENT}}… and {len(bad) - 6} more (see --format json)")
    return lines


def render_json(report: Report) -> bytes:
    doc = {
        "base": report.base_url,
        "result": "fail" if report.failed else "pass",
        "exitCode": report.exit_code,
        "server": report.server,
        "fhirVersion": report.fhir_version,
        "patient": report.patient,
        "write": report.write,
        "runTag": report.run_tag,
        "remaining": report.remaining,
        "checks": [asdict(c) for c in report.checks],
    }
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"


def render_junit(report: Report) -> bytes:
    """JUnit XML: a testcase per check; fail is a failure, skip is skipped, warn passes
    (with the warning in system-out) so a CI pipeline fails only on what fhir-leuko needs."""
    suite = ET.Element(
        "testsuite",
        name="fhir-leuko check-server",
        tests=str(len(report.checks)),
        failures=str(len(report.failed)),
        errors="0",
        skipped=str(sum(1 for c in report.checks if c.status == SKIP)),
        time=f"{sum(c.ms or 0 for c in report.checks) / 1000:.3f}",
    )
    props = ET.SubElement(suite, "properties")
    for name, value in (
        ("base", report.base_url),
        ("server", report.server),
        ("runTag", report.run_tag),
    ):
        ET.SubElement(props, "property", name=name, value=value)
    for c in report.checks:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"check-server.{c.group}",
            name=c.id,
            time=f"{(c.ms or 0) / 1000:.3f}",
        )
        detail = f"{c.reason}\nrequest: {c.request or '-'}" + (
            f" -> HTTP {c.http_status}" if c.http_status else ""
        )
        if c.status == FAIL:
            ET.SubElement(case, "failure", message=c.reason, type="check-failed").text = detail
        elif c.status == SKIP:
            ET.SubElement(case, "skipped", message=c.reason)
        else:
            ET.SubElement(case, "system-out").text = f"{c.status.upper()}: {detail}"
    root = ET.Element(
        "testsuites",
        name="fhir-leuko check-server",
        tests=suite.get("tests", "0"),
        failures=suite.get("failures", "0"),
    )
    root.append(suite)
    ET.indent(root)
    xml: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return xml + b"\n"


# --------------------------------------------------------------------------- helpers

_LOOPBACK: Final = frozenset({"127.0.0.1", "localhost", "::1"})
_QUERY_TITLES: Final = {
    "cbc": "Observation: CBC by patient+code",
    "temperatures": "Observation: temperatures",
    "vitaminLevels": "Observation: B12 and folate",
    "medications": "MedicationRequest by status",
    "conditions": "Condition by clinical-status",
    "openOrders": "ServiceRequest by status",
}
_QUERY_KEYS: Final = frozenset(q.key for q in queries.PATIENT_DATA)
# Referenced before referring: the order single creates must follow without transactions.
_LOAD_ORDER: Final = {
    "Patient": 0,
    "Specimen": 1,
    "Medication": 1,
    "Observation": 2,
    "DiagnosticReport": 3,
}


def _describe(p: _Probe) -> str:
    """The client's message; a 429 says so by name (it is why the check did not get through)."""
    assert p.error is not None
    message = str(p.error)
    limited = p.rate_limited
    if limited and p.error.status == 429:
        after = limited[-1].retry_after
        message = (
            f"rate limited: HTTP 429{f' with Retry-After {after} s' if after else ''}; {message}"
        )
    last = p.last
    if (
        last is not None
        and last.status >= 400
        and p.error.outcome is None
        and "html" in last.content_type.lower()
    ):
        message += " (an HTML error page, not an OperationOutcome)"
    return message


def _server_rest(cs: Mapping[str, Any]) -> JSON:
    for rest in cs.get("rest") or ():
        if isinstance(rest, dict) and rest.get("mode", "server") == "server":
            return rest
    return {}


def _ref_id(ref: object, rtype: str) -> str | None:
    raw = ref.get("reference") if isinstance(ref, dict) else None
    if not isinstance(raw, str):
        return None
    parts = raw.split("/_history/")[0].rstrip("/").split("/")
    return parts[-1] if len(parts) >= 2 and parts[-2] == rtype else None


def _subject_id(resource: Mapping[str, Any]) -> str | None:
    return _ref_id(resource.get("subject"), "Patient") or _ref_id(
        resource.get("patient"), "Patient"
    )


def _has_code(resource: Mapping[str, Any], system: str, wanted: set[str]) -> bool:
    code = resource.get("code")
    return any(
        isinstance(c, dict) and c.get("system") == system and c.get("code") in wanted
        for c in (code.get("coding") if isinstance(code, dict) else None) or ()
    )


def _token_values(raw: str) -> tuple[str | None, set[str]]:
    system: str | None = None
    values: set[str] = set()
    for part in raw.split(","):
        s, sep, v = part.rpartition("|")
        if sep:
            system = s or None
        values.add(v if sep else part)
    return system, values


def _mismatches(
    found: Sequence[JSON], rtype: str, pid: str, params: Sequence[tuple[str, str]]
) -> list[str]:
    """Results a correct server would not have returned for these parameters."""
    wrong: list[str] = []
    for r in found:
        what = f"{r.get('resourceType')}/{r.get('id')}"
        if r.get("resourceType") != rtype:
            wrong.append(f"{what} is not a {rtype}")
            continue
        if _subject_id(r) != pid:
            wrong.append(f"{what} belongs to another patient")
            continue
        for name, value in params:
            system, values = _token_values(value)
            if name == "code" and not _has_code(r, system or "", values):
                wrong.append(f"{what} has none of the codes asked for")
            elif name == "status" and r.get("status") not in values:
                wrong.append(f"{what} has status {r.get('status')}")
            elif name == "clinical-status":
                cs = r.get("clinicalStatus") or {}
                if not any(
                    c.get("code") in values for c in cs.get("coding") or () if isinstance(c, dict)
                ):
                    wrong.append(f"{what} has another clinical status")
    return wrong


def _effective(resource: Mapping[str, Any]) -> datetime | None:
    """The time the ``date`` search parameter of Observation sorts on (effective[x])."""
    when = resource.get("effectiveDateTime") or resource.get("effectiveInstant")
    period = resource.get("effectivePeriod")
    if when is None and isinstance(period, dict):
        when = period.get("start")
    return parse_time(when)


def _ordered(times: Sequence[datetime | None], *, descending: bool) -> bool:
    dated = [t for t in times if t is not None]
    pairs = zip(dated, dated[1:], strict=False)
    return all((a >= b) if descending else (a <= b) for a, b in pairs)


def _first_disorder(times: Sequence[datetime | None], *, descending: bool) -> str:
    """Where the order first breaks: ``result 6 of 15 (2026-03-09) came after 2025-10-15``."""
    dated = [t for t in times if t is not None]
    for i, (a, b) in enumerate(zip(dated, dated[1:], strict=False)):
        if (a < b) if descending else (a > b):
            return f"result {i + 2} of {len(dated)} ({b.isoformat()}) came after {a.isoformat()}"
    return "in order"


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
    if isinstance(location, str) and location:
        parts = location.split("/_history/")[0].rstrip("/").split("/")
        if len(parts) >= 2:
            return parts[-2], parts[-1]
    resource = entry.get("resource")
    if isinstance(resource, dict) and resource.get("id"):
        return str(resource.get("resourceType")), str(resource["id"])
    return None


def _richest(scenarios: Sequence[_Scenario]) -> str | None:
    """The loaded patient with the most CBC Observations: the best test of sort and paging."""
    best: tuple[int, str] | None = None
    for sc in scenarios:
        if not sc.patient_id:
            continue
        n = sum(
            1
            for r in bundle_resources(sc.bundle)
            if r.get("resourceType") == "Observation"
            and _has_code(r, codes.LOINC, set(codes.CBC_LOINC))
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
