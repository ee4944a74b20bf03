"""The read-only checks: every search fhir-leuko sends, and what must come back."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import unquote

import httpx
import orjson

from fhir_leuko.checkserver.model import (
    FAIL,
    JSON,
    PASS,
    SKIP,
    SLOW_QUERY_MS,
    WARN,
    Check,
    Options,
    Report,
    Status,
    plural,
)
from fhir_leuko.errors import (
    FhirForbidden,
    FhirRateLimited,
    FhirServerError,
    FhirUnauthorized,
    LeukoError,
)
from fhir_leuko.fhirio import codes, queries
from fhir_leuko.fhirio.client import FhirClient, bundle_resources
from fhir_leuko.fhirio.ingest import parse_time
from fhir_leuko.fhirio.refs import type_and_id

_R4_PREFIX: Final = "4.0"
_BACKPORT: Final = "http://hl7.org/fhir/uv/subscriptions-backport"
_PAGE_SIZE_PROBE: Final = 2
_PAGING_PAGES: Final = 5  # pages of _PAGE_SIZE_PROBE the paging check follows at most
_SAMPLE_LIMIT: Final = 200  # results a check looks at, at most (sort, LOINC token)


# --------------------------------------------------------------------------- what was sent


@dataclass(frozen=True)
class Exchange:
    method: str
    url: str
    status: int
    ms: float
    content_type: str
    retry_after: str | None


class Recorder:
    """Every HTTP exchange the client makes (httpx event hooks: they see retries too).

    Only method, URL, status, timing and two headers are kept: never bodies or the
    Authorization header.
    """

    def __init__(self) -> None:
        self.log: list[Exchange] = []
        self._started: dict[int, float] = {}

    def on_request(self, request: httpx.Request) -> None:
        self._started[id(request)] = time.perf_counter()

    def on_response(self, response: httpx.Response) -> None:
        request = response.request
        t0 = self._started.pop(id(request), time.perf_counter())
        self.log.append(
            Exchange(
                request.method,
                str(request.url),
                response.status_code,
                (time.perf_counter() - t0) * 1000,
                response.headers.get("content-type", ""),
                response.headers.get("retry-after"),
            )
        )


class NotServer(FhirServerError):
    """A check's failure that is not an HTTP answer (unreadable data, a bug): no status."""


@dataclass
class Probe:
    """What one check sent: filled in by :meth:`Checker.probe`."""

    exchanges: list[Exchange] = field(default_factory=list)
    ms: float = 0.0
    error: FhirServerError | None = None

    @property
    def last(self) -> Exchange | None:
        return self.exchanges[-1] if self.exchanges else None

    @property
    def rate_limited(self) -> list[Exchange]:
        return [e for e in self.exchanges if e.status == 429]


# --------------------------------------------------------------------------- the checker


class Checker:
    def __init__(
        self,
        options: Options,
        report: Report,
        client: FhirClient,
        recorder: Recorder,
    ) -> None:
        self.o = options
        self.report = report
        self.client = client
        self.rec = recorder
        self.capability: JSON = {}
        self.no_access = ""  # why data checks cannot run (401, unreachable), once known
        # The evaluation time: the windows of the queries count back from it.
        self.now = datetime.now(UTC)

    # -- plumbing ----------------------------------------------------------------------------

    @contextmanager
    def probe(self) -> Iterator[Probe]:
        """Run a check's requests; collect their exchanges, time and any FHIR server error."""
        p = Probe()
        start = len(self.rec.log)
        t0 = time.perf_counter()
        try:
            yield p
        except FhirServerError as err:
            p.error = err
        except LeukoError as err:  # e.g. data the evaluation cannot read
            p.error = NotServer(str(err))
        except Exception as err:  # noqa: BLE001 - one odd answer must not end every check
            p.error = NotServer(f"unexpected {type(err).__name__}: {err}")
        finally:
            p.ms = (time.perf_counter() - t0) * 1000
            p.exchanges = self.rec.log[start:]

    def shown(self, exchange: Exchange | None) -> str:
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
        p: Probe,
        status: Status,
        reason: str,
        *,
        required: bool = True,
        group: str = "read",
        shown: Exchange | None = None,
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
        self, cid: str, title: str, p: Probe, *, required: bool = True, group: str = "read"
    ) -> Check:
        assert p.error is not None
        return self.verdict(cid, title, p, FAIL, describe(p), required=required, group=group)

    def skip(self, cid: str, title: str, reason: str, *, group: str = "read") -> Check:
        return self.report.add(Check(cid, title, SKIP, reason, group=group))

    # -- read-only checks --------------------------------------------------------------------

    def check_capability(self) -> None:
        title = "CapabilityStatement"
        with self.probe() as p:
            cs = self.client.get_url("metadata")
        if p.error is not None:
            if p.error.status is None and not isinstance(p.error, NotServer):
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
        unreachable = status is None and not isinstance(p.error, NotServer)
        if p.error is not None and (
            isinstance(p.error, FhirUnauthorized | FhirForbidden) or unreachable
        ):
            self.no_access = f"no access to data: {describe(p)}"
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
        """One search of the CDS prefetch, paged as fhir-leuko pages it (until a whole page is
        older than the query's window); every result must match the search."""
        cid, title = f"search.{query.key}", _QUERY_TITLES.get(query.key, query.key)
        rtype, params = query.search(pid)
        found: list[JSON] = []
        with self.probe() as p:
            pages = 0
            for page in self.client.search_bundle_pages(rtype, params):
                pages += 1
                got = bundle_resources(page)
                found.extend(got)
                if queries.past_window(got, queries.within_window(got, query, self.now), query):
                    break
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
        what = f"{plural(len(found), rtype)}, {plural(pages, 'page')}"
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
                "Observation",
                {"patient": pid, "code": f"{codes.LOINC}|{wbc}", "_count": 100},
                limit=_SAMPLE_LIMIT,
            )
            other = self.client.search(
                "Observation",
                {"patient": pid, "code": f"{codes.SNOMED}|{wbc}", "_count": 100},
                limit=_SAMPLE_LIMIT,
            )
        if p.error is not None:
            self.error_verdict(cid, title, p)
            return
        shown = p.exchanges[0] if p.exchanges else None
        bad = [o for o in loinc if not has_code(o, codes.LOINC, {wbc})]
        if bad:
            self.verdict(
                cid, title, p, FAIL, f"{len(bad)} result(s) without LOINC {wbc}", shown=shown
            )
        elif any(not has_code(o, codes.SNOMED, {wbc}) for o in other):
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
            newest_first = self.client.search(
                rtype, [*base, ("_sort", "-date")], limit=_SAMPLE_LIMIT
            )
            oldest_first = self.client.search(
                rtype, [*base, ("_sort", "date")], limit=_SAMPLE_LIMIT
            )
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
        """``_count=2``: pages hold at most 2, and ``next`` links lead on, each result once.

        At most ``_PAGING_PAGES`` pages are followed (a patient on a big server may have
        thousands of results); when the whole search fits in them, they must hold all of it.
        """
        cid, title = "search.paging", "_count and paging links"
        rtype, params = queries.CBC.search(pid)
        small = [(k, v) for k, v in params if k != "_count"] + [("_count", str(_PAGE_SIZE_PROBE))]
        most = _PAGE_SIZE_PROBE * _PAGING_PAGES
        with self.probe() as p:
            # The first results of the search fhir-leuko sends: the yardstick.
            first = self.client.search(rtype, params, limit=most + 1)
            shown_at = len(self.rec.log)
            sizes: list[int] = []
            ids: list[str] = []
            pages = self.client.search_bundle_pages(rtype, small, max_pages=_PAGING_PAGES + 1)
            try:
                for page in pages:
                    got = bundle_resources(page)
                    sizes.append(len(got))
                    ids.extend(str(r.get("id")) for r in got)
                    if len(sizes) == _PAGING_PAGES:
                        break
            finally:
                pages.close()
        if p.error is not None:
            self.error_verdict(cid, title, p)
            return
        shown = self.rec.log[shown_at] if shown_at < len(self.rec.log) else p.last
        total = len(first)
        whole = f"{total}" if total <= most else f"more than {most}"
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
                f"{whole} results and the rest cannot be reached",
                shown=shown,
            )
        elif len(ids) != len(set(ids)) or (
            total <= most and set(ids) != {str(r.get("id")) for r in first}
        ):
            self.verdict(
                cid,
                title,
                p,
                FAIL,
                f"next links gave {len(ids)} results ({len(set(ids))} distinct) in "
                f"{len(sizes)} pages; the search has {whole}",
                shown=p.last,
            )
        else:
            followed = "all" if total <= most else f"the first {len(sizes)}"
            self.verdict(
                cid,
                title,
                p,
                PASS,
                f"{whole} results; {followed} pages of {_PAGE_SIZE_PROBE} followed, each result "
                "once",
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
        all_p = Probe()
        shown: Exchange | None = None
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
        if not self.capability:
            why = "no CapabilityStatement to read it from"
            self.skip("write.transaction", "transaction", why, group="write")
            self.skip("write.conditional-create", "conditional create", why, group="write")
            return
        rest = _server_rest(self.capability)
        interactions = {
            str(i.get("code")) for i in rest.get("interaction") or () if isinstance(i, dict)
        }
        empty = Probe()
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
        if not self.capability:
            self.skip(cid, title, "no CapabilityStatement to read it from")
            return
        empty = Probe()
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
        empty = Probe()
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


# --------------------------------------------------------------------------- helpers

_QUERY_TITLES: Final = {
    "cbc": "Observation: CBC by patient+code",
    "labReports": "DiagnosticReport: lab reports",
    "temperatures": "Observation: temperatures",
    "vitaminLevels": "Observation: B12 and folate",
    "medications": "MedicationRequest by status",
    "conditions": "Condition by clinical-status",
    "openOrders": "ServiceRequest by status",
}
_QUERY_KEYS: Final = frozenset(q.key for q in queries.PATIENT_DATA)
# Referenced before referring: the order single creates must follow without transactions.


def describe(p: Probe) -> str:
    """The client's message; a 429 says so by name (it is why the check did not get through)."""
    assert p.error is not None
    message = str(p.error)
    limited = p.rate_limited
    if limited and isinstance(p.error, FhirRateLimited):
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
    pair = type_and_id(raw)
    return pair[1] if pair is not None and pair[0] == rtype else None


def _subject_id(resource: Mapping[str, Any]) -> str | None:
    return _ref_id(resource.get("subject"), "Patient") or _ref_id(
        resource.get("patient"), "Patient"
    )


def has_code(resource: Mapping[str, Any], system: str, wanted: set[str]) -> bool:
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
            if name == "code" and not has_code(r, system or "", values):
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
