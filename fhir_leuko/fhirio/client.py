"""The one FHIR R4 HTTP client of fhir-leuko, sync and async, over httpx.

Why one module: request building, the retry policy and Bundle parsing must behave the same
whether the caller is the CLI (sync) or the CDS Hooks / Subscription services (async). They are
written once, as *flows*: generators that yield what they need done (send this request, sleep
this long, hand this page to the caller) and receive the result. ``FhirClient`` and
``AsyncFhirClient`` only run those steps with httpx and a sleep function; they hold no policy.

Errors follow ``fhir_leuko.errors``: callers decide by type. ``TemporaryFhirServerError`` means
"try again later" (network, timeout, 408, 429, 5xx but 501, after our own retries);
``FatalFhirServerError`` means retrying will not help (other 4xx, 501, not FHIR JSON, a next
link outside the base URL). Subclasses name what the answer means (``FhirNotFound``,
``FhirRateLimited``, ...), so no caller compares status codes. Messages name the interaction
(``GET Observation``) and the server's OperationOutcome text, never a query string, request
body, resource or token: those carry PHI or secrets, and messages end up in logs.
"""

from __future__ import annotations

import email.utils
import importlib.metadata
import logging
import random
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Generic, TypeAlias, TypedDict, TypeVar, Unpack, cast

import anyio
import httpx
import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from fhir_leuko.errors import (
    ConfigError,
    FatalFhirServerError,
    FhirServerError,
    InputError,
    TemporaryFhirServerError,
    fhir_error_for_status,
)
from fhir_leuko.fhirio.refs import ID_RE, TYPE_RE

__all__ = [
    "AsyncFhirClient",
    "Auth",
    "FhirClient",
    "FhirTimeouts",
    "SearchParams",
    "SmartBackendAuth",
    "bundle_resources",
    "next_link",
    "parse_retry_after",
]

logger = logging.getLogger(__name__)


def _package_version() -> str:
    # Not ``from fhir_leuko import __version__``: the package's __init__ imports the service
    # layer, which may import this module, and a cycle would break at start-up.
    try:
        return importlib.metadata.version("fhir-leuko")
    except importlib.metadata.PackageNotFoundError:
        return "dev"


T = TypeVar("T")
Resource: TypeAlias = dict[str, Any]
SearchParams: TypeAlias = (
    Mapping[str, str | int | Sequence[str | int]] | Sequence[tuple[str, str | int]]
)

FHIR_JSON: Final = "application/fhir+json"
_USER_AGENT: Final = f"fhir-leuko/{_package_version()}"
_MAX_MESSAGE_DETAIL: Final = 300
# Failures after which a request was certainly not applied, so even a plain POST may be resent.
_NOT_APPLIED_STATUSES: Final = frozenset({408, 429, 503})
_NOT_SENT_ERRORS: Final = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_RETRYABLE_ERRORS: Final = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
    httpx.ProxyError,
)


# --------------------------------------------------------------------------------------------
# Configuration values
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FhirTimeouts:
    """Per-attempt time limits in seconds.

    httpx's read timeout is per socket read, so a server that trickles bytes never trips it.
    ``total`` bounds one whole attempt (connect, send, headers and body): every httpx timeout
    is capped at the time left, and the body is checked against it chunk by chunk.
    """

    connect: float = 5.0
    read: float = 10.0
    write: float = 10.0
    pool: float = 5.0
    total: float = 10.0


# --------------------------------------------------------------------------------------------
# SMART Backend Services authorisation (client_credentials + private_key_jwt)
# --------------------------------------------------------------------------------------------


class SmartBackendAuth:
    """Gets and caches an access token with the SMART Backend Services flow.

    The client signs a short JWT (RS384 or ES384, ``kid`` in the header) and exchanges it at the
    token endpoint for a bearer token, which is reused until shortly before it expires, so a
    busy service does not hit the authorisation server for every FHIR call. This class does no
    I/O itself: the FHIR client sends the request it builds, through the same transport and
    retry policy, and hands back the answer. Concurrent callers at expiry may both fetch a
    token; that is harmless and cheaper than a lock held across network calls.
    """

    ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

    def __init__(
        self,
        *,
        token_url: str,
        client_id: str,
        private_key: str | bytes | RSAPrivateKey | EllipticCurvePrivateKey,
        kid: str,
        scope: str,
        algorithm: str = "RS384",
        assertion_lifetime: int = 300,
        refresh_margin: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        url = httpx.URL(token_url)
        # The client assertion is a credential: never send it in clear text off this machine.
        if url.scheme != "https" and url.host not in {"127.0.0.1", "localhost", "::1"}:
            raise ConfigError("The SMART token URL must use https (or be on this machine)")
        if algorithm not in {"RS384", "ES384"}:
            # SMART Backend Services 2.0 requires support for exactly these two.
            raise ConfigError(f"Unsupported SMART client assertion algorithm: {algorithm}")
        # SMART: the assertion's exp must be no more than five minutes in the future.
        if not 0 < assertion_lifetime <= 300:
            raise ConfigError("The SMART client assertion lifetime must be 1..300 seconds")
        self.token_url = str(url)
        self.client_id = client_id
        self.kid = kid
        self.scope = scope
        self.algorithm = algorithm
        self._private_key = private_key
        self._assertion_lifetime = assertion_lifetime
        self._refresh_margin = refresh_margin
        self._clock = clock
        self._wall_clock = wall_clock
        self._token: str | None = None
        self._refresh_at = 0.0

    def __repr__(self) -> str:
        # Deliberately leaves out the key and the token.
        return f"SmartBackendAuth(token_url={self.token_url!r}, client_id={self.client_id!r})"

    def cached_token(self) -> str | None:
        """The current token, or None when there is none or it is about to expire."""
        if self._token is not None and self._clock() < self._refresh_at:
            return self._token
        return None

    def invalidate(self) -> None:
        """Forget the token (the FHIR server said 401: revoked or expired early)."""
        self._token = None

    def client_assertion(self) -> str:
        """A freshly signed JWT that authenticates this client to the token endpoint."""
        now = int(self._wall_clock())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.token_url,
            "iat": now,
            "exp": now + self._assertion_lifetime,
            "jti": uuid.uuid4().hex,  # unique per assertion: servers reject replays
        }
        return jwt.encode(
            claims,
            self._private_key,
            algorithm=self.algorithm,
            headers={"kid": self.kid, "typ": "JWT"},
        )

    def token_request(self) -> httpx.Request:
        """The client_credentials token request (form-encoded, as OAuth 2.0 requires)."""
        form = {
            "grant_type": "client_credentials",
            "scope": self.scope,
            "client_assertion_type": self.ASSERTION_TYPE,
            "client_assertion": self.client_assertion(),
        }
        return httpx.Request(
            "POST",
            self.token_url,
            data=form,
            headers={"Accept": "application/json", "User-Agent": _USER_AGENT},
        )

    def accept_token_response(self, status: int, content: bytes) -> str:
        """Reads the token endpoint's answer; caches and returns the token or raises."""
        body = _loads_or_none(content)
        if status != 200:
            message = f"The SMART token endpoint refused the token request (HTTP {status}"
            if isinstance(body, dict) and isinstance(body.get("error"), str):
                # RFC 6749 5.2 error codes and descriptions name the problem, not secrets.
                message += f", {body['error']}"
                if isinstance(body.get("error_description"), str):
                    message += f": {_shorten(body['error_description'])}"
            message += ")"
            if status in {408, 429} or status >= 500:
                raise TemporaryFhirServerError(message, status=status)
            raise FatalFhirServerError(message, status=status)
        if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
            raise FatalFhirServerError(
                "The SMART token endpoint did not return a JSON access token", status=status
            )
        token_type = body.get("token_type", "bearer")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise FatalFhirServerError(
                "The SMART token endpoint returned a token that is not a bearer token",
                status=status,
            )
        token: str = body["access_token"]
        try:
            # SMART requires expires_in; some servers send it as a string, some forget it.
            lifetime = float(body.get("expires_in", 300))
        except (TypeError, ValueError):
            lifetime = 300.0
        margin = min(self._refresh_margin, lifetime / 2)
        self._token = token
        self._refresh_at = self._clock() + lifetime - margin
        return token


Auth: TypeAlias = str | SmartBackendAuth | None
"""No auth, a static bearer token, or SMART Backend Services."""


# --------------------------------------------------------------------------------------------
# Pure helpers: parsing, messages, URLs
# --------------------------------------------------------------------------------------------


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date, RFC 9110 10.2.3).

    Returns None when the header is absent or unreadable, so the caller falls back to backoff.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def bundle_resources(bundle: Mapping[str, Any]) -> list[Resource]:
    """The resources of a searchset page: matches and includes, not outcome entries.

    ``search.mode = outcome`` entries are the server's warnings (an OperationOutcome), not data.
    """
    resources: list[Resource] = []
    for entry in bundle.get("entry") or ():
        if not isinstance(entry, dict):
            continue
        mode = (entry.get("search") or {}).get("mode")
        resource = entry.get("resource")
        if mode != "outcome" and isinstance(resource, dict):
            resources.append(resource)
    return resources


def _encode_query(params: SearchParams | None) -> str:
    """A query string from a mapping (lists repeat the name) or from (name, value) pairs.

    Repeating a name is how FHIR ANDs values (``date=ge2026-01-01&date=le2026-02-01``); a
    comma inside one value ORs them.
    """
    if not params:
        return ""
    pairs: list[tuple[str, str]] = []
    items = params.items() if isinstance(params, Mapping) else params
    for name, value in items:
        if isinstance(value, str | int):
            pairs.append((name, str(value)))
        else:
            pairs.extend((name, str(v)) for v in value)
    return str(httpx.QueryParams(tuple(pairs)))


def next_link(bundle: Mapping[str, Any]) -> str | None:
    """The URL of ``Bundle.link[relation=next]``, if any."""
    for link in bundle.get("link") or ():
        if isinstance(link, dict) and link.get("relation") == "next":
            url = link.get("url")
            if isinstance(url, str) and url:
                return url
    return None


def _shorten(text: str, limit: int = _MAX_MESSAGE_DETAIL) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _loads_or_none(content: bytes) -> Any:
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return None


def _outcome_text(outcome: Mapping[str, Any]) -> str:
    """The human text of an OperationOutcome's issues (diagnostics, else details)."""
    texts: list[str] = []
    for issue in outcome.get("issue") or ():
        if not isinstance(issue, dict):
            continue
        text = issue.get("diagnostics")
        details = issue.get("details")
        if not isinstance(text, str) and isinstance(details, dict):
            text = details.get("text")
            if not isinstance(text, str):
                codings = details.get("coding") or ()
                text = next(
                    (c["display"] for c in codings if isinstance(c, dict) and "display" in c),
                    None,
                )
        if isinstance(text, str) and text.strip():
            texts.append(text.strip())
    return _shorten("; ".join(texts[:3]))


def _error_for_status(
    status: int, reason: str, content: bytes, label: str
) -> TemporaryFhirServerError | FatalFhirServerError:
    """The typed error for a non-2xx answer (``errors.fhir_error_for_status``)."""
    body = _loads_or_none(content)
    outcome = (
        cast(dict[str, object], body)
        if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome"
        else None
    )
    message = f"FHIR server answered {status} {reason} to {label}".rstrip()
    if status == 401:
        message += " (our credentials were refused: token missing, expired or invalid)"
    elif status == 403:
        message += " (access forbidden: the token lacks a scope or right for this request)"
    if outcome is not None and (text := _outcome_text(outcome)):
        message += f": {text}"
    return fhir_error_for_status(status, message, outcome)


def _network_problem(label: str, err: httpx.RequestError) -> TemporaryFhirServerError:
    """A transport failure as a retryable error; raises Fatal for ones retrying cannot fix."""
    if not isinstance(err, _RETRYABLE_ERRORS):  # e.g. unsupported URL scheme
        raise FatalFhirServerError(f"{label} failed ({type(err).__name__})") from err
    what = "timed out" if isinstance(err, httpx.TimeoutException) else "failed"
    return TemporaryFhirServerError(
        f"{label} {what} ({type(err).__name__}): the server could not be reached or did not "
        f"answer in time"
    )


def _give_up(problem: FhirServerError, why: str) -> TemporaryFhirServerError:
    """The last retryable problem, said to be final; its meaning (a rate limit) is kept."""
    cls = type(problem) if isinstance(problem, TemporaryFhirServerError) else None
    return (cls or TemporaryFhirServerError)(
        f"{problem} ({why})", status=problem.status, outcome=problem.outcome
    )


def _parse_fhir_json(reply: _Reply, label: str, expected_type: str | None = None) -> Resource:
    data = _loads_or_none(reply.content)
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        content_type = reply.headers.get("content-type", "no Content-Type")
        raise FatalFhirServerError(
            f"FHIR server did not return FHIR JSON for {label} "
            f"(HTTP {reply.status}, {_shorten(content_type, 80)})",
            status=reply.status,
        )
    if expected_type is not None and data["resourceType"] != expected_type:
        raise FatalFhirServerError(
            f"FHIR server returned a {_shorten(data['resourceType'], 64)} for {label}, "
            f"expected a {expected_type}",
            status=reply.status,
        )
    return cast(Resource, data)


def _check_type(resource_type: str) -> str:
    # Checking type and id (refs.TYPE_RE, refs.ID_RE) keeps a caller-supplied id (from a CDS
    # Hooks context, say) from walking the URL path ("../", "?", "#").
    if not isinstance(resource_type, str) or not TYPE_RE.fullmatch(resource_type):
        raise InputError("Not a FHIR resource type name")
    return resource_type


def _check_id(resource_id: str) -> str:
    if not isinstance(resource_id, str) or not ID_RE.fullmatch(resource_id):
        raise InputError("Not a FHIR resource id (1-64 of A-Z a-z 0-9 - .)")
    return resource_id


def _type_of(resource: Mapping[str, Any]) -> str:
    resource_type = resource.get("resourceType") if isinstance(resource, Mapping) else None
    if not isinstance(resource_type, str):
        raise InputError("A FHIR resource must be a JSON object with a resourceType")
    return _check_type(resource_type)


def _same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    # httpx normalises case and drops default ports, so "https://x:443" equals "https://x".
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


def _under(url: httpx.URL, base: httpx.URL) -> bool:
    """Whether ``url``'s path is the base path or below it, with no dot segment left.

    httpx removes literal ``..`` when it joins, but not ``%2e%2e`` (or ``%2f``), which a
    server or proxy may decode into a step up; the decoded path is checked, so those fail.
    """
    path = url.path
    segments = path.replace("\\", "/").split("/")
    if "." in segments or ".." in segments:
        return False
    root = base.path.rstrip("/")
    return path == root or path.startswith(root + "/")


def loggable(label: str) -> str:
    """A request label as a route: ``GET Patient/{id}`` for ``GET Patient/123``.

    Messages name the resource (the caller asked for it); a log line must not, because the
    id of a patient or of their resources is patient data. Kept: the method, resource
    types, ``$operations``, ``_history`` and the like; every other segment becomes ``{id}``.
    """
    method, _, path = label.partition(" ")
    out: list[str] = []
    after_type = False
    for segment in path.split("/"):
        keep = not after_type and (
            TYPE_RE.fullmatch(segment) is not None
            or segment.startswith(("$", "_"))
            or segment in ("[base]", "metadata", "")
        )
        out.append(segment if keep or segment.startswith("$") else "{id}")
        after_type = keep and TYPE_RE.fullmatch(segment) is not None
    return f"{method} {'/'.join(out)}" if path else method


def _is_idempotent_transaction(bundle: Mapping[str, Any]) -> bool:
    """True when resending the transaction cannot create anything twice.

    That holds when every POST is conditional (``ifNoneExist``), which is how fhir-leuko writes
    (identifiers derived from patient + rule + basis), and the other entries are PUT/DELETE/GET.
    """
    for entry in bundle.get("entry") or ():
        request = entry.get("request") if isinstance(entry, dict) else None
        if not isinstance(request, dict):
            return False
        method = str(request.get("method", "")).upper()
        if method == "POST" and not request.get("ifNoneExist"):
            return False
        if method not in {"POST", "PUT", "DELETE", "GET", "HEAD"}:
            return False
    return True


# --------------------------------------------------------------------------------------------
# Flows: the logic, written once. A flow yields steps; a driver performs them.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Reply:
    """A fully read HTTP answer (the drivers read bodies under the attempt's deadline)."""

    status: int
    reason: str
    headers: httpx.Headers
    content: bytes


@dataclass(frozen=True)
class _Send:
    request: httpx.Request
    deadline: float  # monotonic time by which the whole body must have arrived


@dataclass(frozen=True)
class _Sleep:
    seconds: float


@dataclass(frozen=True)
class _Emit:
    bundle: Resource  # a searchset page handed to the caller of search_bundle_pages


@dataclass(frozen=True)
class _Done(Generic[T]):
    value: T


_Step: TypeAlias = _Send | _Sleep | _Emit
# A flow receives a _Reply after _Send, None after _Sleep/_Emit; transport errors are thrown in.
_Flow: TypeAlias = Generator[_Step, _Reply | None, T]


def _advance(flow: _Flow[T], value: _Reply | BaseException | None) -> _Step | _Done[T]:
    """Resume a flow with a result (or throw an error into it); report its next step or end.

    StopIteration must be caught here, next to ``send``: raised inside a coroutine it would
    become a RuntimeError (PEP 479).
    """
    try:
        if isinstance(value, BaseException):
            return flow.throw(value)
        return flow.send(value)
    except StopIteration as stop:
        return _Done(cast(T, stop.value))


@dataclass
class _Budget:
    """The time left for one public call (CDS Hooks: "2 s in all, then give up")."""

    deadline: float | None

    def remaining(self, now: float) -> float | None:
        return None if self.deadline is None else self.deadline - now


@dataclass(frozen=True)
class _Call:
    """One logical HTTP request; ``label`` is what messages and logs may say about it."""

    method: str
    url: str
    label: str
    idempotent: bool
    content: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


class ClientOptions(TypedDict, total=False):
    """What both clients take besides the base URL and their HTTP client: the defaults and
    their meaning are :class:`_FhirClientCore`'s."""

    auth: Auth
    timeouts: FhirTimeouts | float | None
    max_retries: int
    backoff_base: float
    max_backoff: float
    max_retry_after: float
    deadline: float | None
    max_pages: int
    max_resources: int
    max_response_bytes: int
    clock: Callable[[], float]
    jitter: Callable[[], float]


class _FhirClientCore:
    """Configuration and every flow; no I/O. Base of the sync and async clients."""

    def __init__(
        self,
        base_url: str,
        *,
        auth: Auth = None,
        timeouts: FhirTimeouts | float | None = None,
        max_retries: int = 3,
        backoff_base: float = 0.5,
        max_backoff: float = 30.0,
        max_retry_after: float = 60.0,
        deadline: float | None = None,
        max_pages: int = 100,
        max_resources: int = 10_000,
        max_response_bytes: int = 64 * 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        base = httpx.URL(base_url.rstrip("/"))
        if base.scheme not in {"http", "https"} or not base.host:
            raise ConfigError("The FHIR base URL must be an absolute http(s) URL")
        if base.query or base.fragment:
            raise ConfigError("The FHIR base URL must not have a query or fragment")
        if max_retries < 0 or max_pages < 1 or max_resources < 1:
            raise ConfigError("max_retries must be >= 0; max_pages and max_resources >= 1")
        if isinstance(timeouts, int | float):
            total = float(timeouts)
            timeouts = FhirTimeouts(
                connect=min(5.0, total), read=total, write=total, pool=min(5.0, total), total=total
            )
        self.base_url = str(base)
        self._base = base
        self._join_base = httpx.URL(self.base_url + "/")
        self._auth = auth
        self._timeouts = timeouts or FhirTimeouts()
        self._max_retries = max_retries
        self._backoff_base = backoff_base
        self._max_backoff = max_backoff
        self._max_retry_after = max_retry_after
        self._deadline = deadline
        self._max_pages = max_pages
        self._max_resources = max_resources
        self._max_response_bytes = max_response_bytes
        self._clock = clock
        self._jitter = jitter

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    # -- URLs ------------------------------------------------------------------------------

    def _url(self, *segments: str) -> str:
        return "/".join([self.base_url, *segments])

    def _resolve(self, url: str, what: str) -> str:
        """An absolute URL under the FHIR base URL (same origin, path below it), or
        FatalFhirServerError.

        Why the origin check: the client sends our bearer token with every request, so
        following a URL chosen by the server (a next link, a Location) to another origin would
        hand the token to that host, and lets a server steer us at internal addresses (SSRF).
        An http link from an https base is a different origin too (it would downgrade).
        """
        resolved = self._join_base.join(url)
        if _same_origin(resolved, self._base) and not _under(resolved, self._base):
            # Same host, other path: another application (or tenant) on the server would get
            # our token. Only the URL configured as the FHIR base is trusted with it.
            raise FatalFhirServerError(
                f"The {what} points outside the FHIR base {_shorten(self.base_url, 120)}; not "
                f"followed, so our token is not sent there"
            )
        if not _same_origin(resolved, self._base):
            port = f":{resolved.port}" if resolved.port else ""
            origin = _shorten(f"{resolved.scheme}://{resolved.host}{port}", 120)
            message = (
                f"The {what} points to another origin ({origin}) than the FHIR base; not "
                f"followed, so our token is not sent there"
            )
            if what == "next link":
                # The usual cause: a server behind a proxy that does not know its public URL.
                message += f" (is the server configured with its public base {self.base_url}?)"
            raise FatalFhirServerError(message)
        return str(resolved)

    def _label(self, method: str, url: str) -> str:
        """``GET Observation``: method and path below the base, never the query string."""
        path = httpx.URL(url).path
        base_path = self._base.path.rstrip("/")
        if path.startswith(base_path):
            path = path[len(base_path) :]
        return f"{method} {path.strip('/') or '[base]'}"

    # -- the retry policy ------------------------------------------------------------------

    def _budget(self) -> _Budget:
        return _Budget(None if self._deadline is None else self._clock() + self._deadline)

    def _request_timeout(self, attempt_deadline: float) -> httpx.Timeout:
        left = max(0.001, attempt_deadline - self._clock())
        t = self._timeouts
        return httpx.Timeout(
            connect=min(t.connect, left),
            read=min(t.read, left),
            write=min(t.write, left),
            pool=min(t.pool, left),
        )

    def _backoff(self, retry: int) -> float:
        """Exponential backoff with "equal jitter": grows, yet spreads clients apart."""
        ceiling = min(self._max_backoff, self._backoff_base * 2.0**retry)
        return ceiling / 2 + self._jitter() * ceiling / 2

    def _authorization(self, budget: _Budget) -> _Flow[str | None]:
        """The bearer token for the next attempt, fetching a SMART token when needed."""
        auth = self._auth
        if auth is None:
            return None
        if isinstance(auth, str):
            return auth
        token = auth.cached_token()
        if token is not None:
            return token
        request = auth.token_request()
        deadline = self._attempt_deadline(budget)
        request.extensions["timeout"] = self._request_timeout(deadline).as_dict()
        reply = yield _Send(request, deadline)
        assert reply is not None
        return auth.accept_token_response(reply.status, reply.content)

    def _attempt_deadline(self, budget: _Budget) -> float:
        end = self._clock() + self._timeouts.total
        return end if budget.deadline is None else min(end, budget.deadline)

    def _exchange(self, call: _Call, budget: _Budget) -> _Flow[_Reply]:
        """Send one logical request under the retry policy; return its 2xx reply or raise.

        Retried: network errors and timeouts, 408, 429, 5xx but 501, each after exponential
        backoff or the server's Retry-After. A request that is not idempotent (a plain POST) is
        resent only when it surely was not applied (no connection made, 408, 429, 503):
        otherwise a retry could create a resource twice, so the error goes to the caller as
        Temporary.
        """
        retry = 0
        reauthorised = False
        while True:
            remaining = budget.remaining(self._clock())
            if remaining is not None and remaining <= 0:
                raise TemporaryFhirServerError(
                    f"Gave up on {call.label}: its time budget of {self._deadline:g} s ran out"
                )
            result = yield from self._attempt(call, budget)
            retry_after: float | None = None
            if isinstance(result, _Reply):
                if 200 <= result.status < 300:
                    return result
                if (
                    result.status == 401
                    and isinstance(self._auth, SmartBackendAuth)
                    and not reauthorised
                ):
                    # A cached token can be revoked or expire early: get a new one, once.
                    self._auth.invalidate()
                    reauthorised = True
                    continue
                problem = _error_for_status(
                    result.status, result.reason, result.content, call.label
                )
                if isinstance(problem, FatalFhirServerError):
                    raise problem
                if not call.idempotent and result.status not in _NOT_APPLIED_STATUSES:
                    raise _give_up(problem, "not resent: the request may have been applied")
                retry_after = parse_retry_after(result.headers.get("retry-after"))
            else:
                problem = result
            delay = self._retry_delay(problem, retry, retry_after, budget)
            retry += 1
            logger.warning(
                "FHIR %s: %s; retry %d/%d in %.2f s",
                loggable(call.label),
                problem.status or "no answer",
                retry,
                self._max_retries,
                delay,
            )
            yield _Sleep(delay)

    def _attempt(self, call: _Call, budget: _Budget) -> _Flow[_Reply | TemporaryFhirServerError]:
        """One try: the reply (any status), or a retryable problem; raises what is not."""
        try:
            token = yield from self._authorization(budget)
        except httpx.RequestError as err:
            # The FHIR request was not sent yet, so even a plain POST may be retried.
            return _network_problem(f"the token request for {call.label}", err)
        except TemporaryFhirServerError as err:
            return err
        headers = {"Accept": FHIR_JSON, "User-Agent": _USER_AGENT, **call.headers}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        attempt_deadline = self._attempt_deadline(budget)
        request = httpx.Request(
            call.method,
            call.url,
            headers=headers,
            content=call.content,
            extensions={"timeout": self._request_timeout(attempt_deadline).as_dict()},
        )
        try:
            reply = yield _Send(request, attempt_deadline)
        except httpx.RequestError as err:
            problem = _network_problem(call.label, err)
            if not call.idempotent and not isinstance(err, _NOT_SENT_ERRORS):
                raise _give_up(problem, "not resent: the request may have been applied") from err
            return problem
        assert reply is not None
        return reply

    def _retry_delay(
        self,
        problem: TemporaryFhirServerError,
        retry: int,
        retry_after: float | None,
        budget: _Budget,
    ) -> float:
        """Seconds to wait before the next try, or raise when we should stop trying."""
        if retry >= self._max_retries:
            raise _give_up(problem, f"gave up after {retry + 1} attempts")
        if retry_after is not None and retry_after > self._max_retry_after:
            # Retrying sooner than asked would not honour the server; waiting longer than we
            # allow would stall the caller. Hand the decision up instead.
            raise _give_up(
                problem,
                f"the server asked to retry after {retry_after:.0f} s, more than the "
                f"{self._max_retry_after:g} s we wait",
            )
        delay = retry_after if retry_after is not None else self._backoff(retry)
        remaining = budget.remaining(self._clock())
        if remaining is not None and delay >= remaining:
            raise _give_up(problem, f"no time left in the {self._deadline:g} s budget to retry")
        return delay

    # -- interactions ----------------------------------------------------------------------

    def _get_resource(
        self, url: str, budget: _Budget, expected_type: str | None = None
    ) -> _Flow[Resource]:
        call = _Call("GET", url, self._label("GET", url), idempotent=True)
        reply = yield from self._exchange(call, budget)
        return _parse_fhir_json(reply, call.label, expected_type)

    def _read_flow(self, resource_type: str, resource_id: str) -> _Flow[Resource]:
        url = self._url(_check_type(resource_type), _check_id(resource_id))
        return (yield from self._get_resource(url, self._budget(), resource_type))

    def _get_url_flow(self, url: str) -> _Flow[Resource]:
        return (yield from self._get_resource(self._resolve(url, "URL"), self._budget()))

    def _pages_flow(
        self,
        resource_type: str,
        params: SearchParams | None,
        take: Callable[[Resource], bool] | None,
        max_pages: int | None,
    ) -> _Flow[None]:
        """GET a search and follow ``Bundle.link[next]`` under the base URL.

        Each page goes to ``take`` (which returns False to stop) or, without ``take``, to the
        caller through an _Emit step. Exceeding ``max_pages`` raises instead of truncating: a
        silently shortened lab history would read as "no older results".
        """
        budget = self._budget()
        limit = max_pages or self._max_pages
        query = _encode_query(params)
        url = self._url(_check_type(resource_type)) + (f"?{query}" if query else "")
        seen = {url}
        pages = 0
        while True:
            call = _Call("GET", url, f"search {resource_type}", idempotent=True)
            reply = yield from self._exchange(call, budget)
            bundle = _parse_fhir_json(reply, call.label, "Bundle")
            if bundle.get("type", "searchset") != "searchset":
                raise FatalFhirServerError(
                    f"FHIR server answered {call.label} with a Bundle that is not a searchset"
                )
            pages += 1
            if take is None:
                yield _Emit(bundle)
            elif not take(bundle):
                return
            next_url = next_link(bundle)
            if next_url is None:
                return
            url = self._resolve(next_url, "next link")
            if url in seen:
                raise FatalFhirServerError(
                    f"FHIR server's next link for {call.label} repeats an earlier page"
                )
            if pages >= limit:
                raise FatalFhirServerError(
                    f"{call.label} has more than {limit} pages; narrow the search or raise "
                    f"max_pages"
                )
            seen.add(url)

    def _search_flow(
        self,
        resource_type: str,
        params: SearchParams | None,
        limit: int | None,
        max_pages: int | None,
    ) -> _Flow[list[Resource]]:
        found: list[Resource] = []

        def take(bundle: Resource) -> bool:
            for resource in bundle_resources(bundle):
                if limit is not None and len(found) >= limit:
                    return False
                found.append(resource)
                if len(found) > self._max_resources:
                    raise FatalFhirServerError(
                        f"search {resource_type} returned more than {self._max_resources} "
                        f"resources; narrow the search or pass a limit"
                    )
            return limit is None or len(found) < limit

        yield from self._pages_flow(resource_type, params, take, max_pages)
        return found

    def _write_headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        # return=representation: some servers answer writes with an empty body by default.
        headers = {"Content-Type": FHIR_JSON, "Prefer": "return=representation"}
        headers.update(extra or {})
        return headers

    def _after_write(self, reply: _Reply, label: str, budget: _Budget) -> _Flow[Resource]:
        """The written resource: the body, else what the Location header points at."""
        if reply.content.strip():
            return _parse_fhir_json(reply, label)
        location = reply.headers.get("location") or reply.headers.get("content-location")
        if not location:
            raise FatalFhirServerError(
                f"FHIR server answered {label} with neither a body nor a Location",
                status=reply.status,
            )
        return (yield from self._get_resource(self._resolve(location, "Location"), budget))

    def _create_flow(
        self, resource: Mapping[str, Any], if_none_exist: str | SearchParams | None
    ) -> _Flow[Resource]:
        resource_type = _type_of(resource)
        extra: dict[str, str] = {}
        if if_none_exist:
            extra["If-None-Exist"] = (
                if_none_exist if isinstance(if_none_exist, str) else _encode_query(if_none_exist)
            )
        url = self._url(resource_type)
        call = _Call(
            "POST",
            url,
            f"POST {resource_type}",
            # Conditional create is safe to resend: the second try finds the first.
            idempotent=bool(if_none_exist),
            content=orjson.dumps(resource),
            headers=self._write_headers(extra),
        )
        budget = self._budget()
        reply = yield from self._exchange(call, budget)
        return (yield from self._after_write(reply, call.label, budget))

    def _update_flow(self, resource: Mapping[str, Any], if_match: str | None) -> _Flow[Resource]:
        resource_type = _type_of(resource)
        resource_id = resource.get("id")
        if not isinstance(resource_id, str):
            raise InputError("An update needs a resource with an id")
        extra = {"If-Match": if_match} if if_match else None
        call = _Call(
            "PUT",
            self._url(resource_type, _check_id(resource_id)),
            f"PUT {resource_type}",
            idempotent=True,
            content=orjson.dumps(resource),
            headers=self._write_headers(extra),
        )
        budget = self._budget()
        reply = yield from self._exchange(call, budget)
        return (yield from self._after_write(reply, call.label, budget))

    def _delete_flow(self, resource_type: str, resource_id: str) -> _Flow[int]:
        # DELETE is idempotent (R4 http.html#delete): resending it cannot remove anything twice.
        url = self._url(_check_type(resource_type), _check_id(resource_id))
        call = _Call("DELETE", url, f"DELETE {resource_type}", idempotent=True)
        reply = yield from self._exchange(call, self._budget())
        return reply.status

    def _transaction_flow(self, bundle: Mapping[str, Any]) -> _Flow[Resource]:
        if not isinstance(bundle, Mapping) or bundle.get("resourceType") != "Bundle":
            raise InputError("A transaction must be a Bundle")
        if bundle.get("type") != "transaction":
            raise InputError("A transaction Bundle must have type 'transaction'")
        call = _Call(
            "POST",
            self.base_url,
            "transaction",
            idempotent=_is_idempotent_transaction(bundle),
            content=orjson.dumps(bundle),
            headers=self._write_headers(),
        )
        reply = yield from self._exchange(call, self._budget())
        response = _parse_fhir_json(reply, call.label, "Bundle")
        if response.get("type") != "transaction-response":
            raise FatalFhirServerError(
                "FHIR server answered a transaction with a Bundle that is not a "
                "transaction-response",
                status=reply.status,
            )
        return response

    # -- body reading, shared by both drivers ----------------------------------------------

    def _body_collector(self, step: _Send) -> _BodyCollector:
        return _BodyCollector(step, self._clock, self._max_response_bytes)

    def _too_large(self, step: _Send) -> FatalFhirServerError:
        return FatalFhirServerError(
            f"FHIR server's answer to {self._label(step.request.method, str(step.request.url))} "
            f"is larger than {self._max_response_bytes} bytes"
        )


class _BodyCollector:
    """Accumulates a streamed body, enforcing the attempt's deadline and a size cap."""

    def __init__(self, step: _Send, clock: Callable[[], float], max_bytes: int) -> None:
        self._step = step
        self._clock = clock
        self._max_bytes = max_bytes
        self._chunks: list[bytes] = []
        self._size = 0
        self.too_large = False

    def add(self, chunk: bytes) -> bool:
        """Keep a chunk; False once the cap is passed. Raises ReadTimeout past the deadline."""
        self._size += len(chunk)
        if self._size > self._max_bytes:
            self.too_large = True
            return False
        self._chunks.append(chunk)
        if self._clock() > self._step.deadline:
            raise httpx.ReadTimeout(
                "the answer did not arrive within the total timeout", request=self._step.request
            )
        return True

    def reply(self, response: httpx.Response) -> _Reply:
        return _Reply(
            response.status_code, response.reason_phrase, response.headers, b"".join(self._chunks)
        )


# --------------------------------------------------------------------------------------------
# The two thin clients
# --------------------------------------------------------------------------------------------


class FhirClient(_FhirClientCore):
    """Synchronous FHIR client (CLI, scripts). Use as a context manager or call close().

    ``client``: an httpx.Client to use (not closed by us); ``transport``: a transport for the
    client we create (tests). ``sleep`` is injectable so tests do not wait.
    """

    def __init__(
        self,
        base_url: str,
        *,
        client: httpx.Client | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        **options: Unpack[ClientOptions],
    ) -> None:
        super().__init__(base_url, **options)
        self._owns_http = client is None
        # follow_redirects stays off: a redirect could carry the token to another origin.
        self._http = client or httpx.Client(transport=transport, follow_redirects=False)
        self._sleep = sleep

    def __enter__(self) -> FhirClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def read(self, resource_type: str, resource_id: str) -> Resource:
        """GET [base]/Type/id."""
        return self._run(self._read_flow(resource_type, resource_id))

    def search(
        self,
        resource_type: str,
        params: SearchParams | None = None,
        *,
        limit: int | None = None,
        max_pages: int | None = None,
    ) -> list[Resource]:
        """All resources of a search across pages (at most ``limit`` when given)."""
        return self._run(self._search_flow(resource_type, params, limit, max_pages))

    def search_bundle_pages(
        self,
        resource_type: str,
        params: SearchParams | None = None,
        *,
        max_pages: int | None = None,
    ) -> Generator[Resource, None, None]:
        """Each searchset Bundle page in turn (for ``total``, includes, or streaming).

        Pages are fetched as you iterate; ``close()`` the generator to stop early.
        """
        return self._iterate(self._pages_flow(resource_type, params, None, max_pages))

    def get_url(self, url: str) -> Resource:
        """GET a URL on the server's origin (absolute, or relative to the base)."""
        return self._run(self._get_url_flow(url))

    def create(
        self,
        resource: Mapping[str, Any],
        if_none_exist: str | SearchParams | None = None,
    ) -> Resource:
        """POST [base]/Type; with ``if_none_exist`` a conditional create (If-None-Exist)."""
        return self._run(self._create_flow(resource, if_none_exist))

    def update(self, resource: Mapping[str, Any], *, if_match: str | None = None) -> Resource:
        """PUT [base]/Type/id (``if_match``: a version ETag such as ``W/"3"``)."""
        return self._run(self._update_flow(resource, if_match))

    def transaction(self, bundle: Mapping[str, Any]) -> Resource:
        """POST a transaction Bundle to [base]; returns the transaction-response."""
        return self._run(self._transaction_flow(bundle))

    def delete(self, resource_type: str, resource_id: str) -> int:
        """DELETE [base]/Type/id; the 2xx status (a server may answer 200, 202 or 204)."""
        return self._run(self._delete_flow(resource_type, resource_id))

    # -- driver ----------------------------------------------------------------------------

    def _perform(self, step: _Send | _Sleep) -> _Reply | BaseException | None:
        if isinstance(step, _Sleep):
            self._sleep(step.seconds)
            return None
        collector = self._body_collector(step)
        try:
            response = self._http.send(step.request, stream=True)
            try:
                for chunk in response.iter_bytes():
                    if not collector.add(chunk):
                        break
            finally:
                response.close()
        except httpx.RequestError as err:
            return err
        if collector.too_large:
            raise self._too_large(step)
        return collector.reply(response)

    def _run(self, flow: _Flow[T]) -> T:
        try:
            step = _advance(flow, None)
            while not isinstance(step, _Done):
                if isinstance(step, _Emit):
                    raise AssertionError("this flow does not emit pages")
                step = _advance(flow, self._perform(step))
            return step.value
        finally:
            flow.close()

    def _iterate(self, flow: _Flow[None]) -> Generator[Resource, None, None]:
        try:
            step = _advance(flow, None)
            while not isinstance(step, _Done):
                if isinstance(step, _Emit):
                    yield step.bundle
                    step = _advance(flow, None)
                else:
                    step = _advance(flow, self._perform(step))
        finally:
            flow.close()


class AsyncFhirClient(_FhirClientCore):
    """Asynchronous FHIR client (CDS Hooks, Subscription worker); same behaviour as FhirClient.

    Use ``async with`` or call ``aclose()``. ``sleep`` defaults to ``anyio.sleep``.
    """

    def __init__(
        self,
        base_url: str,
        *,
        client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        **options: Unpack[ClientOptions],
    ) -> None:
        super().__init__(base_url, **options)
        self._owns_http = client is None
        self._http = client or httpx.AsyncClient(transport=transport, follow_redirects=False)
        self._sleep = sleep

    async def __aenter__(self) -> AsyncFhirClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def read(self, resource_type: str, resource_id: str) -> Resource:
        """GET [base]/Type/id."""
        return await self._run(self._read_flow(resource_type, resource_id))

    async def search(
        self,
        resource_type: str,
        params: SearchParams | None = None,
        *,
        limit: int | None = None,
        max_pages: int | None = None,
    ) -> list[Resource]:
        """All resources of a search across pages (at most ``limit`` when given)."""
        return await self._run(self._search_flow(resource_type, params, limit, max_pages))

    def search_bundle_pages(
        self,
        resource_type: str,
        params: SearchParams | None = None,
        *,
        max_pages: int | None = None,
    ) -> AsyncGenerator[Resource, None]:
        """Each searchset Bundle page in turn (``async for``); ``aclose()`` to stop early."""
        return self._iterate(self._pages_flow(resource_type, params, None, max_pages))

    async def get_url(self, url: str) -> Resource:
        """GET a URL on the server's origin (absolute, or relative to the base)."""
        return await self._run(self._get_url_flow(url))

    async def create(
        self,
        resource: Mapping[str, Any],
        if_none_exist: str | SearchParams | None = None,
    ) -> Resource:
        """POST [base]/Type; with ``if_none_exist`` a conditional create (If-None-Exist)."""
        return await self._run(self._create_flow(resource, if_none_exist))

    async def update(self, resource: Mapping[str, Any], *, if_match: str | None = None) -> Resource:
        """PUT [base]/Type/id (``if_match``: a version ETag such as ``W/"3"``)."""
        return await self._run(self._update_flow(resource, if_match))

    async def transaction(self, bundle: Mapping[str, Any]) -> Resource:
        """POST a transaction Bundle to [base]; returns the transaction-response."""
        return await self._run(self._transaction_flow(bundle))

    async def delete(self, resource_type: str, resource_id: str) -> int:
        """DELETE [base]/Type/id; the 2xx status (a server may answer 200, 202 or 204)."""
        return await self._run(self._delete_flow(resource_type, resource_id))

    # -- driver ----------------------------------------------------------------------------

    async def _perform(self, step: _Send | _Sleep) -> _Reply | BaseException | None:
        if isinstance(step, _Sleep):
            await self._sleep(step.seconds)
            return None
        collector = self._body_collector(step)
        try:
            response = await self._http.send(step.request, stream=True)
            try:
                async for chunk in response.aiter_bytes():
                    if not collector.add(chunk):
                        break
            finally:
                await response.aclose()
        except httpx.RequestError as err:
            return err
        if collector.too_large:
            raise self._too_large(step)
        return collector.reply(response)

    async def _run(self, flow: _Flow[T]) -> T:
        try:
            step = _advance(flow, None)
            while not isinstance(step, _Done):
                if isinstance(step, _Emit):
                    raise AssertionError("this flow does not emit pages")
                step = _advance(flow, await self._perform(step))
            return step.value
        finally:
            flow.close()

    async def _iterate(self, flow: _Flow[None]) -> AsyncGenerator[Resource, None]:
        try:
            step = _advance(flow, None)
            while not isinstance(step, _Done):
                if isinstance(step, _Emit):
                    yield step.bundle
                    step = _advance(flow, None)
                else:
                    step = _advance(flow, await self._perform(step))
        finally:
            flow.close()
