"""Verify the JWT a CDS client sends with every CDS Hooks 2.0 call.

CDS Hooks has no session: the only proof of who is calling is a signed JWT in
``Authorization: Bearer``. The spec ("Trusting CDS Clients") and the cds-hooks.org best
practices fix what must be checked; ``docs/cds-hooks.md`` section 6 lists them. Every
failure raises :class:`AuthError` with one sentence that names the failed check and
never contains the token; the HTTP edge turns it into a bare 401.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import httpx
import jwt
import orjson

from fhir_leuko.errors import AuthError, ConfigError
from fhir_leuko.storage import Migrations, Store

JwkDict = dict[str, Any]

#: Recommended by CDS Hooks 2.0 ("JWT Signing Algorithm"); the default allowlist.
RECOMMENDED_ALGORITHMS: frozenset[str] = frozenset({"RS384", "ES384"})
#: Asymmetric algorithms a deployment may add for a client that needs them. ``none`` and
#: every HMAC algorithm are absent on purpose: the spec forbids them ("SHALL NOT").
PERMITTED_ALGORITHMS: frozenset[str] = RECOMMENDED_ALGORITHMS | {
    "RS256",
    "RS512",
    "ES256",
    "ES512",
    "PS384",
}

# Bounds on attacker-controlled sizes, so a hostile caller cannot make us parse or keep
# megabytes. Real tokens are about 1 KB and real jti values are UUIDs.
_MAX_TOKEN_CHARS = 16_384
_MAX_JTI_CHARS = 256
_MAX_JWKS_BYTES = 256 * 1024
#: The latest NumericDate we accept for ``exp``, ``iat`` and ``nbf``: 9999-12-31T23:59:59Z.
#: Every whole second from 0 to here is exact as a float, so comparisons and the lifetime
#: ``exp - iat`` mean what they say.
_MAX_NUMERIC_DATE = 253_402_300_799


@dataclass(frozen=True)
class IssuerTrust:
    """Where the keys of one trusted issuer may come from.

    ``jku_allowlist``: JWK Set URLs we will fetch for this issuer; a token's ``jku`` must
    be one of them exactly. ``jwks``: a JWK Set exchanged out of band (the spec's
    alternative when the client sends no ``jku``).
    """

    jku_allowlist: tuple[str, ...] = ()
    jwks: dict[str, Any] | None = None


@dataclass(frozen=True)
class JwtPolicy:
    """What a deployment trusts. The defaults are the spec's recommendation.

    ``max_lifetime_s`` is our own cap on ``exp - iat``: the spec sets none, the best
    practices say well-behaved clients stay within an hour, Epic's example uses 900 s
    and the sandbox 300 s. Which tenants an issuer may name is checked by the CDS Hooks
    router, per issuer (``[issuers.*] tenants``).
    """

    issuers: Mapping[str, IssuerTrust]
    algorithms: frozenset[str] = RECOMMENDED_ALGORITHMS
    max_lifetime_s: int = 3600
    clock_skew_s: int = 60
    jwks_ttl_s: float = 3600.0
    jwks_min_refetch_s: float = 60.0
    jwks_timeout_s: float = 2.0

    def __post_init__(self) -> None:
        unsafe = set(self.algorithms) - PERMITTED_ALGORITHMS
        if unsafe:
            raise ConfigError(
                f"JWT algorithms {sorted(unsafe)} are not permitted; "
                f"choose from {sorted(PERMITTED_ALGORITHMS)}"
            )
        if not self.algorithms:
            raise ConfigError("the JWT algorithm allowlist is empty")
        if not self.issuers:
            raise ConfigError("the JWT issuer allowlist is empty")
        for iss, trust in self.issuers.items():
            if not trust.jku_allowlist and trust.jwks is None:
                raise ConfigError(f"issuer {iss!r} has neither a jku allowlist nor a JWKS")
            if trust.jwks is not None and _index_jwks(trust.jwks) is None:
                raise ConfigError(f"the configured JWKS of issuer {iss!r} is not a JWK Set")
        if self.max_lifetime_s <= 0 or self.clock_skew_s < 0:
            raise ConfigError("max_lifetime_s must be positive and clock_skew_s not negative")


@dataclass(frozen=True)
class Claims:
    """A verified token: the fields callers use, plus every claim as sent.

    Log ``iss``, ``tenant`` and ``jti`` to trace a call (best practices); never the token.
    """

    iss: str
    aud: tuple[str, ...]
    exp: float
    iat: float
    jti: str
    tenant: str | None
    kid: str
    alg: str
    payload: Mapping[str, Any] = field(repr=False)


class ReplayCache(Protocol):
    """Remembers ``jti`` values; a shared store (Redis, a database) can stand in.

    Async so that a networked store does not block the event loop.
    """

    async def remember(self, key: str, until: float) -> bool:
        """Remember ``key`` until the time ``until``; False if it is already remembered."""
        ...


_REPLAY_SQLITE = (
    "CREATE TABLE IF NOT EXISTS seen_jti (key TEXT PRIMARY KEY, until REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS seen_jti_until ON seen_jti (until)",
)
_REPLAY_POSTGRES = (
    "CREATE TABLE IF NOT EXISTS seen_jti (key TEXT PRIMARY KEY, until DOUBLE PRECISION NOT NULL)",
    "CREATE INDEX IF NOT EXISTS seen_jti_until ON seen_jti (until)",
)
REPLAY_MIGRATIONS: Migrations = {"sqlite": (_REPLAY_SQLITE,), "postgresql": (_REPLAY_POSTGRES,)}


class DatabaseReplayCache(Store):
    """Replay cache shared by every server process (``serve --workers N``) and, on
    PostgreSQL (``service.database_url``), by every replica on every host.

    A per-process cache would let a token replayed to another process through. The primary
    key makes "first time seen" atomic across processes and hosts; expired entries are purged
    as new ones arrive. The database work runs in a worker thread, so a locked file or a slow
    database never blocks the event loop; one that stays unavailable raises `StorageError`
    (503: the token was not judged), never a verdict on the token.
    """

    component = "replay"
    migrations = REPLAY_MIGRATIONS

    async def remember(self, key: str, until: float) -> bool:
        """Remember ``key`` until ``until``; False if any process already remembered it."""
        return await anyio.to_thread.run_sync(self.remember_now, key, until)

    def remember_now(self, key: str, until: float) -> bool:
        """`remember` for synchronous callers (it blocks on the database)."""
        now = self._clock()
        with self.database.transaction() as db:
            db.execute("DELETE FROM seen_jti WHERE until <= ?", (now,))
            cur = db.execute(
                "INSERT INTO seen_jti (key, until) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (key, until),
            )
            return bool(cur.rowcount == 1)


#: The name from before PostgreSQL; a file path still opens SQLite.
SqliteReplayCache = DatabaseReplayCache


class InMemoryReplayCache:
    """Per-process replay cache, bounded in size.

    Only tokens that passed every other check reach it, so filling it needs a trusted
    client's volume. When full, the entry closest to expiry is dropped first: it leaves
    the smallest replay window open.
    """

    def __init__(
        self, *, max_entries: int = 100_000, clock: Callable[[], float] = time.time
    ) -> None:
        if max_entries <= 0:
            raise ConfigError("max_entries must be positive")
        self._max_entries = max_entries
        self._clock = clock
        self._until: dict[str, float] = {}
        self._by_expiry: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            self._purge(self._clock())
            return len(self._until)

    async def remember(self, key: str, until: float) -> bool:
        """Remember ``key`` until ``until``; False if it was already remembered."""
        with self._lock:
            now = self._clock()
            self._purge(now)
            if key in self._until:
                return False
            while len(self._until) >= self._max_entries:
                self._pop_earliest()
            self._until[key] = until
            heapq.heappush(self._by_expiry, (until, key))
            return True

    def _purge(self, now: float) -> None:
        while self._by_expiry and self._by_expiry[0][0] <= now:
            self._pop_earliest()

    def _pop_earliest(self) -> None:
        until, key = heapq.heappop(self._by_expiry)
        if self._until.get(key) == until:
            del self._until[key]


@dataclass
class _CachedJwks:
    keys: dict[str, JwkDict]
    fetched_at: float


class _JwksCache:
    """JWK Sets fetched from allowlisted ``jku`` URLs, cached per URL.

    A kid we do not know triggers one refetch (the client rotated its key), but never
    more than once per ``min_refetch_s`` per URL, so unknown kids cannot make us hammer
    the client's server.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        ttl_s: float,
        min_refetch_s: float,
        timeout_s: float,
        clock: Callable[[], float],
    ) -> None:
        self._http = http
        self._ttl_s = ttl_s
        self._min_refetch_s = min_refetch_s
        self._timeout = httpx.Timeout(timeout_s)
        self._clock = clock
        self._entries: dict[str, _CachedJwks] = {}
        self._last_attempt: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def lookup(self, url: str, kid: str) -> JwkDict | None:
        """The key ``kid`` from the JWKS at ``url``; None if the set has no such key."""
        entry = self._entries.get(url)
        if entry is not None and self._is_fresh(entry) and kid in entry.keys:
            return entry.keys[kid]
        # One fetch per URL at a time; the others wait and reuse its result.
        async with self._locks.setdefault(url, asyncio.Lock()):
            now = self._clock()
            entry = self._entries.get(url)
            fresh = entry is not None and self._is_fresh(entry)
            if entry is not None and fresh and kid in entry.keys:
                return entry.keys[kid]
            last = self._last_attempt.get(url)
            if last is not None and now - last < self._min_refetch_s:
                if entry is not None and fresh:
                    return None
                raise AuthError(f"the JWKS at {url} is unavailable; its last fetch failed")
            self._last_attempt[url] = now
            keys = await self._fetch(url)
            self._entries[url] = _CachedJwks(keys=keys, fetched_at=now)
            return keys.get(kid)

    def _is_fresh(self, entry: _CachedJwks) -> bool:
        return self._clock() - entry.fetched_at < self._ttl_s

    async def _fetch(self, url: str) -> dict[str, JwkDict]:
        try:
            response = await self._http.get(
                url, timeout=self._timeout, headers={"Accept": "application/json"}
            )
        except httpx.HTTPError as err:
            raise AuthError(f"could not fetch the JWKS at {url} ({type(err).__name__})") from err
        if response.status_code != 200:
            raise AuthError(f"the JWKS at {url} answered HTTP {response.status_code}")
        if len(response.content) > _MAX_JWKS_BYTES:
            raise AuthError(f"the JWKS at {url} is larger than {_MAX_JWKS_BYTES} bytes")
        try:
            document = orjson.loads(response.content)
        except ValueError as err:
            raise AuthError(f"the JWKS at {url} is not JSON") from err
        keys = _index_jwks(document)
        if keys is None:
            raise AuthError(f"the JWKS at {url} is not a JWK Set")
        return keys


class JwtVerifier:
    """Checks a CDS client's ``Authorization`` header against a :class:`JwtPolicy`.

    Holds the JWKS cache and the replay cache, so create one per process and share it.
    """

    def __init__(
        self,
        policy: JwtPolicy,
        *,
        http: httpx.AsyncClient | None = None,
        replay_cache: ReplayCache | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._policy = policy
        self._clock = clock
        self._owns_http = http is None
        self._http = http if http is not None else httpx.AsyncClient(follow_redirects=False)
        self._replay: ReplayCache = (
            replay_cache if replay_cache is not None else InMemoryReplayCache(clock=clock)
        )
        self._jwks = _JwksCache(
            self._http,
            ttl_s=policy.jwks_ttl_s,
            min_refetch_s=policy.jwks_min_refetch_s,
            timeout_s=policy.jwks_timeout_s,
            clock=clock,
        )
        self._configured: dict[str, dict[str, JwkDict]] = {
            iss: _index_jwks(trust.jwks) or {}
            for iss, trust in policy.issuers.items()
            if trust.jwks is not None
        }

    async def aclose(self) -> None:
        """Close the HTTP client if this verifier created it."""
        if self._owns_http:
            await self._http.aclose()

    async def verify(self, authorization_header: str | None, audience: str) -> Claims:
        """Return the verified claims, or raise :class:`AuthError` naming the failed check.

        ``audience`` is the public URL of the endpoint being called (discovery, service
        or feedback URL), taken from configuration rather than from the request, because
        behind a proxy the request URL is not what the client signed.
        """
        token = _bearer_token(authorization_header)
        header = _unverified_header(token)
        alg = self._check_alg(header.get("alg"))
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthError("the JWT header has no kid")
        typ = header.get("typ")
        # RFC 7515 4.1.9: typ is a media type name, compared case-insensitively.
        if not isinstance(typ, str) or typ.upper() != "JWT":
            raise AuthError("the JWT header typ is not JWT")
        jku = header.get("jku")
        if jku is not None and not isinstance(jku, str):
            raise AuthError("the JWT header jku is not a string")

        iss = _unverified_payload(token).get("iss")
        if not isinstance(iss, str) or not iss:
            raise AuthError("the JWT has no iss claim")
        trust = self._policy.issuers.get(iss)
        if trust is None:
            raise AuthError(f"issuer {_quote(iss)} is not on the allowlist")

        jwk = await self._find_key(iss, trust, jku, kid)
        payload = _verified_payload(token, jwk, alg, kid)
        claims = self._check_claims(payload, audience, kid=kid, alg=alg)
        # Last, so a token that fails any other check does not use up its jti.
        if not await self._replay.remember(
            f"{claims.iss}\x1f{claims.jti}", claims.exp + self._policy.clock_skew_s
        ):
            raise AuthError(f"jti {_quote(claims.jti)} from {_quote(iss)} was already used")
        return claims

    def _check_alg(self, alg: object) -> str:
        if not isinstance(alg, str) or not alg:
            raise AuthError("the JWT header has no alg")
        if alg.lower() == "none" or alg.upper().startswith("HS"):
            raise AuthError(f"alg {_quote(alg)} is forbidden by CDS Hooks (none or HMAC)")
        if alg not in self._policy.algorithms:
            raise AuthError(f"alg {_quote(alg)} is not on the allowlist")
        return alg

    async def _find_key(self, iss: str, trust: IssuerTrust, jku: str | None, kid: str) -> JwkDict:
        """Find the key for ``kid`` without ever fetching a URL that is not allowlisted.

        A configured key set (``jwks_file``) is trusted whatever ``jku`` the token names: some
        clients (the public sandbox) always send one. The key then comes from the site's own
        file, never from the token's URL, so the token cannot bring its own key.
        """
        configured = self._configured.get(iss, {}).get(kid)
        if jku is not None:
            if jku in trust.jku_allowlist:
                jwk = await self._jwks.lookup(jku, kid) or configured
            elif configured is not None:
                jwk = configured
            else:
                # Fetching a jku the token chose would let anyone supply their own key.
                raise AuthError(f"jku {_quote(jku)} is not on the allowlist of {_quote(iss)}")
        else:
            jwk = configured
            for url in trust.jku_allowlist:
                if jwk is not None:
                    break
                jwk = await self._jwks.lookup(url, kid)
        if jwk is None:
            raise AuthError(f"no key with kid {_quote(kid)} for issuer {_quote(iss)}")
        return jwk

    def _check_claims(
        self, payload: Mapping[str, Any], audience: str, *, kid: str, alg: str
    ) -> Claims:
        policy = self._policy
        now = self._clock()
        skew = policy.clock_skew_s

        aud = payload.get("aud")
        audiences = (aud,) if isinstance(aud, str) else aud
        if not isinstance(audiences, list | tuple) or not audiences:
            raise AuthError("the JWT has no aud claim")
        if not all(isinstance(a, str) for a in audiences):
            raise AuthError("the JWT aud claim is not a string or an array of strings")
        # Deliberately lenient on one trailing slash only: clients and configuration
        # disagree on it, and it never names a different endpoint.
        wanted = audience.removesuffix("/")
        if not any(a.removesuffix("/") == wanted for a in audiences):
            raise AuthError(f"the JWT aud does not name this endpoint ({_quote(audience)})")

        exp = _number_claim(payload, "exp")
        iat = _number_claim(payload, "iat")
        if now >= exp + skew:
            raise AuthError("the JWT has expired")
        if iat > now + skew:
            raise AuthError("the JWT iat is in the future")
        if exp <= iat:
            raise AuthError("the JWT exp is not after its iat")
        if exp - iat > policy.max_lifetime_s:
            raise AuthError(
                f"the JWT lifetime exp - iat is {exp - iat:.0f} s, over {policy.max_lifetime_s} s"
            )
        if "nbf" in payload and now + skew < _number_claim(payload, "nbf"):
            raise AuthError("the JWT is not valid yet (nbf)")

        jti = payload.get("jti")
        if not isinstance(jti, str) or not jti:
            raise AuthError("the JWT has no jti claim")
        if len(jti) > _MAX_JTI_CHARS:
            raise AuthError(f"the JWT jti is longer than {_MAX_JTI_CHARS} characters")

        tenant = payload.get("tenant")
        if tenant is not None and not isinstance(tenant, str):
            raise AuthError("the JWT tenant claim is not a string")

        return Claims(
            iss=payload["iss"],
            aud=tuple(audiences),
            exp=exp,
            iat=iat,
            jti=jti,
            tenant=tenant,
            kid=kid,
            alg=alg,
            payload=payload,
        )


def _bearer_token(authorization_header: str | None) -> str:
    if authorization_header is None or not authorization_header.strip():
        raise AuthError("no Authorization header")
    scheme, _, token = authorization_header.strip().partition(" ")
    # RFC 7235: the auth scheme is case-insensitive.
    if scheme.lower() != "bearer":
        raise AuthError("the Authorization header is not a Bearer token")
    token = token.strip()
    if not token:
        raise AuthError("the Bearer token is empty")
    if len(token) > _MAX_TOKEN_CHARS:
        raise AuthError(f"the Bearer token is longer than {_MAX_TOKEN_CHARS} characters")
    return token


def _unverified_header(token: str) -> dict[str, Any]:
    try:
        return jwt.get_unverified_header(token)
    except jwt.PyJWTError as err:
        raise AuthError("the Bearer token is not a well-formed JWT") from err


def _unverified_payload(token: str) -> dict[str, Any]:
    """Read the payload only to learn ``iss``, which picks the keys to verify with."""
    try:
        decoded = jwt.PyJWS().decode_complete(token, options={"verify_signature": False})
    except jwt.PyJWTError as err:
        raise AuthError("the JWT payload is not a JSON object") from err
    return _json_object(decoded["payload"])


def _verified_payload(token: str, jwk: JwkDict, alg: str, kid: str) -> dict[str, Any]:
    use = jwk.get("use")
    if use is not None and use != "sig":
        # Keys without "use" are common (the sandbox added it late); "enc" keys are not
        # for signatures.
        raise AuthError(f"key {_quote(kid)} is marked use={_quote(use)}, not for signatures")
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        raise AuthError(f"key {_quote(kid)} does not allow verify in key_ops")
    if "alg" in jwk and jwk["alg"] != alg:
        raise AuthError(f"key {_quote(kid)} is for alg {_quote(jwk['alg'])}, the JWT uses {alg}")
    try:
        key = jwt.PyJWK(jwk, algorithm=alg)
    except jwt.PyJWTError as err:
        raise AuthError(f"key {_quote(kid)} cannot verify alg {alg}") from err
    try:
        # PyJWT turns the JWS raw r||s ECDSA signature into DER itself (pyjwt #158).
        decoded = jwt.PyJWS().decode_complete(
            token, key=key, algorithms=[alg], options={"enforce_minimum_key_length": True}
        )
    except jwt.InvalidSignatureError as err:
        raise AuthError("the JWT signature does not verify") from err
    except jwt.PyJWTError as err:
        raise AuthError(f"the JWT signature cannot be checked ({type(err).__name__})") from err
    return _json_object(decoded["payload"])


def _json_object(raw: bytes) -> dict[str, Any]:
    """The payload as a JSON object, parsed strictly (RFC 8259).

    Python's ``json`` accepts ``NaN`` and ``Infinity`` and turns ``1e400`` into infinity;
    a NaN ``exp`` compares false with everything and so never expires. orjson refuses those,
    numbers beyond a double, and nesting deeper than 1024, as a JSON error.
    """
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise AuthError("the JWT payload is not a JSON object") from err
    if not isinstance(payload, dict):
        raise AuthError("the JWT payload is not a JSON object")
    return payload


def _number_claim(payload: Mapping[str, Any], name: str) -> float:
    """A NumericDate claim: a finite number of seconds from 1970 to the year 9999."""
    value = payload.get(name)
    if value is None:
        raise AuthError(f"the JWT has no {name} claim")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthError(f"the JWT {name} claim is not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise AuthError(f"the JWT {name} claim is not a finite number")
    if not 0 <= value <= _MAX_NUMERIC_DATE:
        raise AuthError(f"the JWT {name} claim is out of range")
    return float(value)


def _index_jwks(document: object) -> dict[str, JwkDict] | None:
    """Keys of a JWK Set by kid; None if ``document`` is not a JWK Set.

    Keys without a kid are skipped: CDS Hooks requires a kid to select the key.
    """
    if not isinstance(document, dict):
        return None
    keys = document.get("keys")
    if not isinstance(keys, list):
        return None
    indexed: dict[str, JwkDict] = {}
    for key in keys:
        if isinstance(key, dict) and isinstance(key.get("kid"), str):
            indexed.setdefault(key["kid"], key)
    return indexed


def _quote(value: object) -> str:
    """Attacker-supplied text for a log line: escaped and short."""
    text = value if isinstance(value, str) else repr(value)
    return repr(text[:100])
