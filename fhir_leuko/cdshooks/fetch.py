"""Prefetch, or fetch it ourselves: the data one CDS call needs, or a 412.

Per key (``docs/cds-hooks.md`` 2.4 and 3; CDS Hooks 2.0 "Prefetch Template"):

- present, a resource of the expected type -> used; a searchset page with a ``next`` link
  is followed on ``fhirServer`` (the client MAY paginate prefetch);
- present and ``null`` -> "no data", used as such, nothing fetched;
- absent, an OperationOutcome (the client's way to report a prefetch error) or anything
  that is not the expected FHIR resource -> fetched from ``fhirServer`` with the same query;
- cannot be fetched (no ``fhirServer``, not on our allowlist, network error, 401/403/404,
  429 or 5xx after retries, the time budget ran out) -> a required key answers 412, as the
  spec demands; an optional key becomes a :class:`DataIssue` shown on the card, so that what
  was not checked is never silently missing.

SSRF: ``fhirServer`` comes from the request body, so we call it only when it is on the
configured allowlist, and follow a prefetch ``next`` link only when it lies below that base.
The bearer token from ``fhirAuthorization`` goes to ``fhirServer`` and nowhere else.
All calls of one hook share one time budget (``fetch_timeout_s``): an EHR waits for us.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from fhir_leuko import metrics
from fhir_leuko.cdshooks.services import PrefetchQuery, ServiceDefinition
from fhir_leuko.clinical.model import DataIssue
from fhir_leuko.errors import FhirServerError, InputError, LeukoError
from fhir_leuko.fhirio.client import AsyncFhirClient, bundle_resources, next_link
from fhir_leuko.fhirio.queries import past_window, within_window

JSON = dict[str, Any]
logger = logging.getLogger(__name__)


class PreconditionFailed(LeukoError):
    """Data the service needs was neither prefetched nor fetchable: HTTP 412 (spec)."""

    http_status = 412


@dataclass(frozen=True)
class FetchPolicy:
    """Where and how long we may fetch. ``allowlist``: FHIR base URLs we may call."""

    allowlist: tuple[str, ...]
    timeout_s: float = 2.0
    max_pages: int = 50


@dataclass
class Gathered:
    """What one call will be evaluated on."""

    resources: list[JSON] = field(default_factory=list)
    issues: list[DataIssue] = field(default_factory=list)
    fetched: list[str] = field(default_factory=list)  # keys we fetched ourselves (for logs)


# --- The allowlist -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def normalise_base(url: str) -> str | None:
    """``https://Host:443/fhir/`` -> ``https://host/fhir``; None for what we never call.

    Userinfo, query and fragment are refused: none belongs in a FHIR base, and userinfo is a
    classic way to make an allowlist check and the HTTP client disagree about the host.
    Cached: an EHR sends the same fhirServer on every call, and the allowlist never changes.
    """
    try:
        u = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return None
    if u.scheme not in ("http", "https") or not u.host or u.userinfo or u.query or u.fragment:
        return None
    # httpx resolves a literal "..", not "%2e%2e" (nor "..%2f"): the decoded path would step
    # out of the allowlisted base on a server that decodes before routing.
    if {".", ".."} & set(u.path.replace("\\", "/").split("/")):
        return None
    default = {"http": 80, "https": 443}[u.scheme]
    port = f":{u.port}" if u.port not in (None, default) else ""
    return f"{u.scheme}://{u.host.lower()}{port}{u.path.rstrip('/')}"


def server_allowed(fhir_server: str, allowlist: Sequence[str]) -> bool:
    """True when ``fhir_server`` is an allowlisted base or lies below one."""
    base = normalise_base(fhir_server)
    if base is None:
        return False
    for entry in allowlist:
        allowed = normalise_base(entry)
        if allowed is not None and (base == allowed or base.startswith(allowed + "/")):
            return True
    return False


def _below(url: str, base: str) -> bool:
    """A prefetch ``next`` link we may follow: on ``base`` or below it."""
    split = urlsplit(url)
    target = normalise_base(f"{split.scheme}://{split.netloc}{split.path}")
    root = normalise_base(base)
    return (
        target is not None
        and root is not None
        and (target == root or target.startswith(root + "/"))
    )


# --- Gathering -----------------------------------------------------------------------------------

ClientFactory = Callable[[str, str | None], AsyncFhirClient]


class _Missing:
    """A key the client did not supply, with the reason (for messages)."""

    def __init__(self, why: str) -> None:
        self.why = why


def _classify(query: PrefetchQuery, prefetch: dict[str, Any] | None) -> JSON | None | _Missing:
    if prefetch is None or query.key not in prefetch:
        return _Missing("was not prefetched")
    value = prefetch[query.key]
    if value is None:
        return None
    if not isinstance(value, dict):
        return _Missing("is not a FHIR resource")
    kind = value.get("resourceType")
    if kind == "OperationOutcome":
        return _Missing("came back as an OperationOutcome")
    if kind == query.returns or (query.returns == "Patient" and kind == "Bundle"):
        return value
    return _Missing(f"is a {str(kind)[:40]!r}, not a {query.returns}")


def _check_patient(key: str, value: JSON, patient_id: str) -> None:
    """The prefetched Patient must be the patient in context (the template names it).

    Otherwise another person's age and sex would set the lower limits, silently.
    """
    patients = [r for r in _resources(value) if r.get("resourceType") == "Patient"]
    if any(p.get("id") != patient_id for p in patients):
        raise InputError(f"prefetch.{key} is not the Patient of context.patientId")


def _resources(value: JSON) -> list[JSON]:
    if value.get("resourceType") == "Bundle":
        return bundle_resources(value)
    return [value]


async def gather(
    service: ServiceDefinition,
    *,
    patient_id: str,
    prefetch: dict[str, Any] | None,
    fhir_server: str | None,
    token: str | None,
    policy: FetchPolicy,
    now: datetime,
    client_factory: ClientFactory,
) -> Gathered:
    """Collect every prefetch key of ``service``; raise :class:`PreconditionFailed` (412)."""
    out = Gathered()
    usable = fhir_server is not None and server_allowed(fhir_server, policy.allowlist)
    if fhir_server is None:
        no_server = "the request has no fhirServer"
    elif not usable:
        no_server = "fhirServer is not on this service's allowlist"
    else:
        no_server = ""

    jobs: dict[str, Callable[[AsyncFhirClient], Awaitable[list[JSON]]]] = {}
    reasons: dict[str, str] = {}
    for query in service.prefetch:
        value = _classify(query, prefetch)
        if value is None:
            continue
        if isinstance(value, _Missing):
            reasons[query.key] = value.why
            jobs[query.key] = _fetch_job(query, patient_id, now, policy)
            continue
        if query.returns == "Patient":
            _check_patient(query.key, value, patient_id)
        out.resources.extend(within_window(_resources(value), query.query, now))
        next_url = next_link(value) if value.get("resourceType") == "Bundle" else None
        if next_url is not None:
            if usable and fhir_server is not None and _below(next_url, fhir_server):
                jobs[query.key] = _pages_job(query, next_url, now, policy)
                reasons[query.key] = "has further pages"
            else:
                why = no_server or "its next link is not on fhirServer"
                out.issues.append(_partial(query, why))

    if not jobs:
        return out
    if not usable:
        _fail_or_note(service, jobs, reasons, no_server, out)
        return out

    assert fhir_server is not None
    client = client_factory(fhir_server, token)
    try:
        results = await _run_all(jobs, client, policy.timeout_s)
    finally:
        await client.aclose()
    failures: dict[str, str] = {}
    for key, result in results.items():
        if isinstance(result, list):
            out.resources.extend(result)
            out.fetched.append(key)
        else:
            failures[key] = result
    for key, problem in failures.items():
        query = next(q for q in service.prefetch if q.key == key)
        if reasons[key] == "has further pages":
            out.issues.append(_partial(query, problem))
        elif query.required:
            raise PreconditionFailed(
                f"prefetch key {key!r} {reasons[key]} and fetching it from fhirServer failed: "
                f"{problem}"
            )
        else:
            out.issues.append(_unavailable(query, problem))
    return out


def _fail_or_note(
    service: ServiceDefinition,
    jobs: dict[str, Any],
    reasons: dict[str, str],
    no_server: str,
    out: Gathered,
) -> None:
    for query in service.prefetch:
        if query.key not in jobs:
            continue
        if reasons[query.key] == "has further pages":
            out.issues.append(_partial(query, no_server))
        elif query.required:
            raise PreconditionFailed(
                f"prefetch key {query.key!r} {reasons[query.key]} and {no_server}, so it "
                "cannot be fetched"
            )
        else:
            out.issues.append(_unavailable(query, no_server))


def _unavailable(query: PrefetchQuery, why: str) -> DataIssue:
    return DataIssue(
        "prefetch-unavailable",
        f"Not available: {query.describes}; prefetch key {query.key!r} could not be had ({why})",
    )


def _partial(query: PrefetchQuery, why: str) -> DataIssue:
    return DataIssue(
        "prefetch-partial",
        f"Only the first page of prefetch key {query.key!r} was used ({why}): older "
        f"{query.describes.split(' (')[0]} may be missing",
    )


async def _run_all(
    jobs: dict[str, Callable[[AsyncFhirClient], Awaitable[list[JSON]]]],
    client: AsyncFhirClient,
    timeout_s: float,
) -> dict[str, list[JSON] | str]:
    """Run the fetches together under one budget; a key's result or why it failed."""

    async def one(job: Callable[[AsyncFhirClient], Awaitable[list[JSON]]]) -> list[JSON] | str:
        try:
            return await job(client)
        except FhirServerError as err:
            metrics.fhir_error(getattr(err, "status", None), "cds")
            return str(err)
        except InputError as err:
            return f"the server's answer was not usable FHIR ({err})"

    tasks = {key: asyncio.ensure_future(one(job)) for key, job in jobs.items()}
    done, pending = await asyncio.wait(tasks.values(), timeout=timeout_s)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    out: dict[str, list[JSON] | str] = {}
    for key, task in tasks.items():
        if task in done:
            out[key] = task.result()
        else:
            out[key] = f"no answer within the {timeout_s:g} s budget"
    return out


def _fetch_job(
    query: PrefetchQuery, patient_id: str, now: datetime, policy: FetchPolicy
) -> Callable[[AsyncFhirClient], Awaitable[list[JSON]]]:
    async def run(client: AsyncFhirClient) -> list[JSON]:
        if query.returns == "Patient":
            kind, _, rid = query.query.fill(patient_id).partition("/")
            return [await client.read(kind, rid)]
        kind, params = query.query.search(patient_id)
        return await _collect_pages(
            client.search_bundle_pages(kind, params, max_pages=policy.max_pages), query, now
        )

    return run


def _pages_job(
    query: PrefetchQuery, next_url: str, now: datetime, policy: FetchPolicy
) -> Callable[[AsyncFhirClient], Awaitable[list[JSON]]]:
    async def run(client: AsyncFhirClient) -> list[JSON]:
        found: list[JSON] = []
        url: str | None = next_url
        pages = 0
        while url is not None:
            page = await client.get_url(url)
            if page.get("resourceType") != "Bundle":
                raise InputError("a next page is not a Bundle")
            raw = bundle_resources(page)
            batch = within_window(raw, query.query, now)
            found.extend(batch)
            pages += 1
            if past_window(raw, batch, query.query) or pages >= policy.max_pages:
                break
            url = next_link(page)
        return found

    return run


async def _collect_pages(pages: Any, query: PrefetchQuery, now: datetime) -> list[JSON]:
    """All resources of a search, stopping once a whole page is older than the window.

    The templates sort by ``-date``, so a page entirely before the cutoff means every later
    page is too: no need to spend the EHR's time budget on years of history.
    """
    found: list[JSON] = []
    try:
        async for page in pages:
            raw = bundle_resources(page)
            batch = within_window(raw, query.query, now)
            found.extend(batch)
            if past_window(raw, batch, query.query):
                break
    finally:
        await pages.aclose()  # stops the client's page flow now, not at garbage collection
    return found
