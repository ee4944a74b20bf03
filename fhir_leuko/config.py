"""Settings from a TOML file and environment variables, auditable.

Precedence: built-in defaults < the TOML file (``--config FILE`` or ``FHIR_LEUKO_CONFIG``) <
environment variables. ``fhir-leuko config`` prints the effective settings and where each
non-default value came from, with secrets redacted, so a site can audit what runs.

Environment variables:
- ``FHIR_LEUKO_CONFIG``: path of the TOML file.
- ``FHIR_LEUKO_T_<NAME>``: one threshold, e.g. ``FHIR_LEUKO_T_WBC_LLN_ADULT=4.5``.
- ``FHIR_LEUKO_ENDPOINT__<NAME>__<KEY>``: one setting of the notification endpoint
  ``/notify/<name>``, e.g. ``FHIR_LEUKO_ENDPOINT__HAPI__HEADER_VALUE='Bearer s3cret'`` (secrets
  belong here rather than in a file).
- ``FHIR_LEUKO_<KEY>`` for the keys of the ``[service]`` table, upper-cased, e.g.
  ``FHIR_LEUKO_PUBLIC_BASE_URL``, ``FHIR_LEUKO_INSECURE_DEV=1``,
  ``FHIR_LEUKO_FHIR_SERVER_ALLOWLIST=https://a/fhir,https://b/fhir`` (lists are comma-separated).

Every value is checked when the settings load (type, range, the orderings the decision table
needs; an empty secret is refused, not read as unset), and so is every ``FHIR_LEUKO_*``
variable: one that is neither a setting nor in :data:`OTHER_ENV` is refused with its name and
the closest known one. Messages name the key as it was given (variable, or TOML key and file).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from fhir_leuko.clinical.thresholds import DEFAULT_THRESHOLDS, Thresholds
from fhir_leuko.errors import ConfigError
from fhir_leuko.logs import FORMATS, LEVELS

ENV_PREFIX = "FHIR_LEUKO_"
THRESHOLD_ENV_PREFIX = "FHIR_LEUKO_T_"
ENDPOINT_ENV_PREFIX = "FHIR_LEUKO_ENDPOINT__"


@dataclass(frozen=True)
class IssuerTrustConfig:
    """One trusted CDS client: its JWKS comes from an allowlisted jku or a configured file."""

    jku_allowlist: tuple[str, ...] = ()
    jwks_file: str | None = None
    tenants: tuple[str, ...] = ()


@dataclass(frozen=True)
class SubscriptionEndpoint:
    """One notification endpoint ``/notify/{name}``: who sends to it and how we answer back."""

    fhir_base: str
    header_name: str = "Authorization"
    header_value: str | None = None  # secret; compared in constant time
    hmac_secret: str | None = None  # Medplum X-Signature / X-Hub-Signature
    token: str | None = None  # bearer token for reading and writing back
    # Header carrying the HMAC-SHA256 of the body when hmac_secret is set (Medplum:
    # X-Signature; X-Hub-Signature senders prefix "sha256=").
    hmac_header: str = "X-Signature"
    # SMART Backend Services instead of a static token: all of url, client id, key file and kid.
    smart_token_url: str = ""
    smart_client_id: str = ""
    smart_key_file: str = ""  # PEM private key (RS384 or ES384)
    smart_kid: str = ""
    smart_algorithm: str = "RS384"
    smart_scope: str = (
        "system/Patient.read system/Observation.read system/MedicationRequest.read"
        " system/Condition.read system/ServiceRequest.read system/ServiceRequest.write"
        " system/RiskAssessment.read system/RiskAssessment.write"
    )


@dataclass(frozen=True)
class ServiceSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    # Server processes. One uses one core; give each core one (with uvloop, from
    # uvicorn[standard]) to reach the throughput benchmarks/README.md reports.
    workers: int = 1
    # With workers > 1 the JWT replay cache (seen jti values) is kept here, shared by all.
    replay_db: str = "fhir-leuko-replay.sqlite3"
    # The public URL of this service, as EHRs call it: JWT `aud` is compared with it, never
    # with the request URL (which differs behind a proxy). Unset: http://<host>:<port>.
    public_base_url: str = ""
    insecure_dev: bool = False  # no JWT check: local use only, announced loudly
    # fhir_leuko log lines on stderr: critical, error, warning, info (one line per CDS call,
    # identifiers only, never patient data) or debug.
    log_level: str = "info"
    # "text": one escaped line per record; "json": one JSON object per line (a log shipper).
    log_format: str = "text"
    fhir_server_allowlist: tuple[str, ...] = ()  # SSRF guard for fetching from fhirServer
    cors_origins: tuple[str, ...] = ()
    feedback_db: str = "fhir-leuko-feedback.sqlite3"
    queue_db: str = "fhir-leuko-queue.sqlite3"
    max_body_bytes: int = 8 * 1024 * 1024
    # Slow or idle clients (fhir_leuko/serving.py): a request's line and headers must arrive
    # within header_timeout_s of the connection or of the previous answer (else it is
    # closed), its body within body_timeout_s (else 408); an idle keep-alive connection
    # closes after keep_alive_s. limit_concurrency (0 = none): uvicorn answers 503 beyond that
    # many connections plus requests; it counts connections still sending headers, so 1,000
    # slow clients would make it refuse everyone until the header deadline cuts them (seen
    # in a probe): off unless a proxy in front holds the slow clients.
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keep_alive_s: float = 5.0
    limit_concurrency: int = 0
    fetch_timeout_s: float = 2.0  # all FHIR calls of one hook together (cds-hooks.md 7.4)
    jwt_max_lifetime_s: int = 3600  # our policy; the spec sets none (Epic uses 900 s)
    jwt_clock_skew_s: int = 60
    # Answer GET /cds-services without a JWT (some EHRs probe discovery unauthenticated);
    # service and feedback calls always need one unless insecure_dev.
    public_discovery: bool = False
    # The SMART client id of the trend app at /app/ (registered with the EHR). Cards link to
    # the decision table at <public_base_url>/rules and to the app at <public_base_url>/app/.
    app_client_id: str = "fhir-leuko-trend"
    # Garbage collector: a hook call allocates thousands of short-lived, acyclic objects
    # (the parsed prefetch), so Python's default gen-0 threshold of 700 runs collections
    # over and over; 0 keeps Python's default (benchmarks/README.md "HTTP benchmark").
    gc_gen0_threshold: int = 50_000
    write_back: bool = True
    worker_poll_s: float = 0.5
    # Notification worker (docs/subscriptions.md): run it inside `serve`, how long a job is
    # leased before another worker may take it over, retry policy, and how far back a
    # catch-up search reaches when nothing was ever received from a server.
    worker_enabled: bool = True
    worker_lease_s: float = 300.0
    worker_max_attempts: int = 8
    worker_backoff_s: float = 10.0
    worker_backoff_cap_s: float = 3600.0
    gap_grace_s: float = 30.0  # wait this long for a missing event number before searching
    catchup_lookback_s: float = 86400.0
    queue_keep_done_days: float = 14.0  # dedupe memory; beyond any server's retry horizon
    # Shared state (notification queue, JWT replay cache, feedback) in one PostgreSQL database,
    # so replicas on several hosts work as one service: postgresql://user:pass@host:5432/db.
    # It holds a password: set it in the environment (FHIR_LEUKO_DATABASE_URL). Unset: the
    # SQLite files above (queue_db, replay_db, feedback_db), for one machine only.
    database_url: str = ""
    # How long a call waits for a locked SQLite file or a free database connection before it
    # answers 503 (the caller retries); the event loop never waits on the database.
    db_timeout_s: float = 5.0
    # Notification jobs in flight per server process (never two of one patient at once).
    worker_concurrency: int = 4
    # GET /readyz answers 503 when more queued jobs than this are due (the worker is behind).
    readyz_max_queue_depth: int = 1000
    # GET /readyz answers within this many seconds: a check still waiting (a database that is
    # down) fails as "no answer", so a load balancer's probe never times out on us.
    readyz_timeout_s: float = 2.0


@dataclass(frozen=True)
class Settings:
    thresholds: Thresholds = DEFAULT_THRESHOLDS
    service: ServiceSettings = field(default_factory=ServiceSettings)
    issuers: Mapping[str, IssuerTrustConfig] = field(default_factory=dict)
    endpoints: Mapping[str, SubscriptionEndpoint] = field(default_factory=dict)
    origins: Mapping[str, str] = field(default_factory=dict)  # "section.key" -> where it came from

    def audit(self) -> dict[str, Any]:
        """Effective settings, secrets redacted, with the origin of every non-default value."""
        return {
            "thresholds": dataclasses.asdict(self.thresholds),
            "service": {
                **dataclasses.asdict(self.service),
                "database_url": redact_url(self.service.database_url),
            },
            "issuers": {k: dataclasses.asdict(v) for k, v in self.issuers.items()},
            "endpoints": {
                k: {
                    **dataclasses.asdict(v),
                    "header_value": _redact(v.header_value),
                    "hmac_secret": _redact(v.hmac_secret),
                    "token": _redact(v.token),
                }
                for k, v in self.endpoints.items()
            },
            "origins": dict(self.origins),
        }


def _redact(v: str | None) -> str | None:
    return None if v is None else "***"


def redact_url(url: str) -> str:
    """A database URL with its password replaced by ``***`` (for audits and logs)."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"


def _coerce(label: str, default: Any, raw: Any) -> Any:
    """Convert a TOML or env value to the type of the default, or fail naming the key."""
    try:
        if isinstance(default, bool):
            if isinstance(raw, bool):
                return raw
            if isinstance(raw, str) and raw.strip().lower() in _TRUE:
                return True
            if isinstance(raw, str) and raw.strip().lower() in _FALSE:
                return False
            raise ValueError(raw)
        if isinstance(raw, bool):  # TOML `port = true`: a bool is no number
            raise ValueError(raw)
        if isinstance(default, int):
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError(raw)
            return int(raw)
        if isinstance(default, float):
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError(raw)
            return value
        if isinstance(default, tuple):
            if isinstance(raw, str):
                return tuple(p.strip() for p in raw.split(",") if p.strip())
            if isinstance(raw, list) and all(isinstance(x, str) for x in raw):
                return tuple(raw)
            raise ValueError(raw)
        if isinstance(default, str) or default is None:
            # A None default is an optional string (a secret, a token): unset unless given.
            if not isinstance(raw, str):
                raise ValueError(raw)
            return raw
    except (TypeError, ValueError, OverflowError):
        kind = {bool: "boolean (true or false)", int: "whole number", float: "finite number"}.get(
            type(default), "list of strings" if isinstance(default, tuple) else "string"
        )
        raise ConfigError(f"{label} must be a {kind}, got {raw!r:.60}") from None
    raise ConfigError(f"{label} has an unsupported type")


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _apply(
    obj: Any,
    values: Mapping[str, Any],
    section: str,
    label_of: Callable[[str], str],
    where: str,
    origins: dict[str, str],
    labels: dict[str, str],
) -> Any:
    """``obj`` with ``values`` applied; each key's label (how the user wrote it) remembered for
    the messages of :func:`_validate`."""
    known = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    changes: dict[str, Any] = {}
    for key, raw in values.items():
        if key not in known:
            raise ConfigError(f"unknown setting {label_of(key)}{_suggest(key, known)}")
        label = label_of(key)
        changes[key] = _coerce(label, known[key], raw)
        origins[f"{section}.{key}"] = where
        labels[f"{section}.{key}"] = label
    return dataclasses.replace(obj, **changes) if changes else obj


def _suggest(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


DERIVED_BASE_URL = "derived from host and port"


def local_base_url(host: str, port: int) -> str:
    """``http://<host>:<port>``: the public URL when none is configured (no proxy in front)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


# FHIR_LEUKO_* variables read outside this module, accepted beside the settings: the fetch,
# subscribe and check-server commands' bearer token and notification secret (fhir_leuko/cli.py),
# and the knobs of the test suite's end-to-end and live runs, which start `serve` processes
# with them set (tests/integration/sub_e2e_support.py, tests/live/).
OTHER_ENV = frozenset(
    {
        f"{ENV_PREFIX}CONFIG",
        f"{ENV_PREFIX}FHIR_TOKEN",
        f"{ENV_PREFIX}NOTIFY_SECRET",
        f"{ENV_PREFIX}E2E_PAUSE_AT",
        f"{ENV_PREFIX}E2E_MARKER",
        f"{ENV_PREFIX}LIVE_HAPI",
        f"{ENV_PREFIX}LIVE_SMART",
    }
)
_SERVICE_KEYS = tuple(f.name for f in dataclasses.fields(ServiceSettings))
_THRESHOLD_KEYS = tuple(f.name for f in dataclasses.fields(Thresholds))
_ENDPOINT_KEYS = tuple(f.name for f in dataclasses.fields(SubscriptionEndpoint))


def _env_label(name: str) -> Callable[[str], str]:
    return lambda key: name


def _file_label(where: str, section: str) -> Callable[[str], str]:
    return lambda key: f"'{section}.{key}' in {where}"


def _known_env_names() -> list[str]:
    return [
        *OTHER_ENV,
        *(f"{ENV_PREFIX}{k.upper()}" for k in _SERVICE_KEYS),
        *(f"{THRESHOLD_ENV_PREFIX}{k.upper()}" for k in _THRESHOLD_KEYS),
    ]


def _split_env(
    env: Mapping[str, str],
) -> tuple[dict[str, tuple[str, str]], dict[str, tuple[str, str]], dict[str, dict[str, str]]]:
    """The ``FHIR_LEUKO_*`` variables by kind: service key -> (variable, value), threshold
    key -> (variable, value), endpoint name -> {key: variable}. Any other ``FHIR_LEUKO_*``
    variable is refused: a misspelt one would otherwise leave a setting silently unset."""
    service: dict[str, tuple[str, str]] = {}
    thresholds: dict[str, tuple[str, str]] = {}
    endpoints: dict[str, dict[str, str]] = {}
    for k, v in env.items():
        if not k.startswith(ENV_PREFIX) or k in OTHER_ENV:
            continue
        if k.startswith(ENDPOINT_ENV_PREFIX):
            name, sep, key = k[len(ENDPOINT_ENV_PREFIX) :].partition("__")
            if not sep or not name or not key:
                raise ConfigError(f"environment: {k} must be {ENDPOINT_ENV_PREFIX}<NAME>__<KEY>")
            if key.lower() not in _ENDPOINT_KEYS:
                close = difflib.get_close_matches(key.lower(), _ENDPOINT_KEYS, n=1, cutoff=0.75)
                hint = f" (did you mean {k[: -len(key)]}{close[0].upper()}?)" if close else ""
                raise ConfigError(f"unknown environment variable {k}{hint}")
            endpoints.setdefault(name.lower(), {})[key.lower()] = k
        elif k.startswith(THRESHOLD_ENV_PREFIX) and k[len(THRESHOLD_ENV_PREFIX) :].lower() in (
            _THRESHOLD_KEYS
        ):
            thresholds[k[len(THRESHOLD_ENV_PREFIX) :].lower()] = (k, v)
        elif k[len(ENV_PREFIX) :].lower() in _SERVICE_KEYS:
            service[k[len(ENV_PREFIX) :].lower()] = (k, v)
        else:
            close = difflib.get_close_matches(k.upper(), _known_env_names(), n=1, cutoff=0.75)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"unknown environment variable {k}{hint}")
    return service, thresholds, endpoints


def _apply_env(
    obj: Any,
    values: Mapping[str, tuple[str, str]],
    section: str,
    origins: dict[str, str],
    labels: dict[str, str],
) -> Any:
    for key, (name, raw) in values.items():
        obj = _apply(obj, {key: raw}, section, _env_label(name), "environment", origins, labels)
    return obj


def load_settings(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Load settings: defaults, then the TOML file, then environment variables.

    Every value is checked (type, range, the orderings the decision table needs) with a
    message naming the key as it was given: the TOML key and file, or the variable.
    """
    env = os.environ if env is None else env
    origins: dict[str, str] = {}
    labels: dict[str, str] = {}
    data: dict[str, Any] = {}
    file = path or env.get(f"{ENV_PREFIX}CONFIG")
    if file:
        p = Path(file)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8-sig"))
        except FileNotFoundError:
            raise ConfigError(f"config file {p} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None
        unknown = set(data) - {"thresholds", "service", "issuers", "endpoints"}
        if unknown:
            raise ConfigError(f"{p}: unknown section(s) {', '.join(sorted(unknown))}")
        for section in ("thresholds", "service", "issuers", "endpoints"):
            if not isinstance(data.get(section, {}), dict):
                raise ConfigError(f"{p}: [{section}] must be a table")
    where = str(file) if file else ""
    s_env, t_env, e_env = _split_env(env)

    def apply_file(obj: Any, values: Mapping[str, Any], section: str) -> Any:
        return _apply(obj, values, section, _file_label(where, section), where, origins, labels)

    thresholds = apply_file(DEFAULT_THRESHOLDS, data.get("thresholds", {}), "thresholds")
    thresholds = _apply_env(thresholds, t_env, "thresholds", origins, labels)
    service = apply_file(ServiceSettings(), data.get("service", {}), "service")
    service = _apply_env(service, s_env, "service", origins, labels)
    if not service.public_base_url:
        service = dataclasses.replace(
            service, public_base_url=local_base_url(service.host, service.port)
        )
        origins["service.public_base_url"] = DERIVED_BASE_URL

    issuers: dict[str, IssuerTrustConfig] = {}
    for iss, raw in (data.get("issuers") or {}).items():
        if not isinstance(raw, dict):
            raise ConfigError(f'{where}: [issuers."{iss}"] must be a table')
        issuers[iss] = apply_file(IssuerTrustConfig(), raw, f"issuers.{iss}")
    endpoints: dict[str, SubscriptionEndpoint] = {}
    for name, raw in (data.get("endpoints") or {}).items():
        if not isinstance(raw, dict) or "fhir_base" not in raw:
            raise ConfigError(f"{where}: [endpoints.{name}] needs fhir_base")
        endpoints[name] = apply_file(SubscriptionEndpoint(fhir_base=""), raw, f"endpoints.{name}")
    # FHIR_LEUKO_ENDPOINT__<NAME>__<KEY>: secrets belong in the environment, not in files.
    for name, variables in e_env.items():
        base = endpoints.get(name)
        if base is None:
            if "fhir_base" not in variables:
                raise ConfigError(
                    f"environment: endpoint '{name}' needs {ENDPOINT_ENV_PREFIX}"
                    f"{name.upper()}__FHIR_BASE"
                )
            base = SubscriptionEndpoint(fhir_base="")
        given = {key: (variable, env[variable]) for key, variable in variables.items()}
        endpoints[name] = _apply_env(base, given, f"endpoints.{name}", origins, labels)
    settings = Settings(thresholds, service, issuers, endpoints, origins)
    _validate(settings, labels)
    return settings


# --- Validation ----------------------------------------------------------------------------------

Check = tuple[Callable[[Any], bool], str]
_POSITIVE: Check = (lambda v: v > 0, "greater than 0")
_NOT_NEGATIVE: Check = (lambda v: v >= 0, "0 or more")
_AT_LEAST_ONE: Check = (lambda v: v >= 1, "1 or more")
_NOT_BLANK: Check = (lambda v: bool(v.strip()), "a non-empty string")
_HTTP_URL: Check = (
    lambda v: v.startswith(("http://", "https://")) and len(v) > len("https://"),
    "an http:// or https:// URL",
)
_HTTP_URL_OR_UNSET: Check = (lambda v: v == "" or _HTTP_URL[0](v), _HTTP_URL[1])

SERVICE_CHECKS: dict[str, Check] = {
    "host": _NOT_BLANK,
    "port": (lambda v: 1 <= v <= 65535, "a port number from 1 to 65535"),
    "workers": _AT_LEAST_ONE,
    "replay_db": _NOT_BLANK,
    "public_base_url": _HTTP_URL,
    "log_level": (lambda v: v.strip().lower() in LEVELS, f"one of {', '.join(LEVELS)}"),
    "log_format": (lambda v: v.strip().lower() in FORMATS, f"one of {', '.join(FORMATS)}"),
    "fhir_server_allowlist": (lambda v: all(_HTTP_URL[0](u) for u in v), "http(s) URLs"),
    "cors_origins": (lambda v: all(o == "*" or _HTTP_URL[0](o) for o in v), "http(s) origins"),
    "feedback_db": _NOT_BLANK,
    "queue_db": _NOT_BLANK,
    "max_body_bytes": _AT_LEAST_ONE,
    "header_timeout_s": _POSITIVE,
    "body_timeout_s": _POSITIVE,
    "keep_alive_s": _POSITIVE,
    "limit_concurrency": _NOT_NEGATIVE,
    "fetch_timeout_s": _POSITIVE,
    "jwt_max_lifetime_s": _AT_LEAST_ONE,
    "jwt_clock_skew_s": _NOT_NEGATIVE,
    "app_client_id": _NOT_BLANK,
    "gc_gen0_threshold": _NOT_NEGATIVE,
    "worker_poll_s": _POSITIVE,
    "worker_lease_s": _POSITIVE,
    "worker_max_attempts": _AT_LEAST_ONE,
    "worker_backoff_s": _POSITIVE,
    "worker_backoff_cap_s": _POSITIVE,
    "gap_grace_s": _NOT_NEGATIVE,
    "catchup_lookback_s": _POSITIVE,
    "queue_keep_done_days": _POSITIVE,
    "database_url": (
        lambda v: v == "" or v.startswith(("postgresql://", "postgres://")),
        "a postgresql:// URL",
    ),
    "db_timeout_s": _POSITIVE,
    "worker_concurrency": _AT_LEAST_ONE,
    "readyz_max_queue_depth": _NOT_NEGATIVE,
    "readyz_timeout_s": _POSITIVE,
}
ENDPOINT_CHECKS: dict[str, Check] = {
    "fhir_base": _HTTP_URL,
    "header_name": _NOT_BLANK,
    "hmac_header": _NOT_BLANK,
    "smart_token_url": _HTTP_URL_OR_UNSET,
    "smart_algorithm": (lambda v: v in ("RS384", "ES384"), "RS384 or ES384"),
}
# Secrets: left out, they are unset (None, or "" for the database URL); given, they must hold
# something. An empty value is refused rather than read as "unset", so a deployment whose
# secret failed to reach its environment stops instead of running without it.
SECRETS = ("service.database_url", "header_value", "hmac_secret", "token")


def _validate(settings: Settings, labels: Mapping[str, str]) -> None:
    def fail(key: str, value: Any, expected: str) -> NoReturn:
        label = labels.get(key, f"'{key}' (default)")
        raise ConfigError(f"{label} must be {expected}, got {value!r:.60}")

    def check(section: str, obj: Any, checks: Mapping[str, Check]) -> None:
        for key, (ok, expected) in checks.items():
            value = getattr(obj, key)
            if not ok(value):
                fail(f"{section}.{key}", value, expected)

    for key, label in labels.items():
        section, _, name = key.rpartition(".")
        if key in SECRETS or (section.startswith("endpoints.") and name in SECRETS):
            obj: Any = (
                settings.service
                if section == "service"
                else settings.endpoints[section.removeprefix("endpoints.")]
            )
            if not str(getattr(obj, name)).strip():
                raise ConfigError(
                    f"{label} is empty: give the secret, or leave the key out to leave it unset"
                )
    check("service", settings.service, SERVICE_CHECKS)
    svc = settings.service
    if svc.worker_backoff_cap_s < svc.worker_backoff_s:
        fail(
            "service.worker_backoff_cap_s",
            svc.worker_backoff_cap_s,
            f"at least worker_backoff_s ({svc.worker_backoff_s})",
        )
    for name, ep in settings.endpoints.items():
        check(f"endpoints.{name}", ep, ENDPOINT_CHECKS)
    for iss, trust in settings.issuers.items():
        if trust.jwks_file is not None and not trust.jwks_file.strip():
            fail(f"issuers.{iss}.jwks_file", trust.jwks_file, "a file name")
        for url in trust.jku_allowlist:
            if not _HTTP_URL[0](url):
                fail(f"issuers.{iss}.jku_allowlist", url, "a list of http(s) URLs")
    _check(settings.thresholds, labels)


def _check(t: Thresholds, labels: Mapping[str, str]) -> None:
    """Thresholds: positive numbers (day offsets and tolerances may be 0), and the orderings
    that keep the decision table coherent."""

    def name(key: str) -> str:
        return labels.get(f"thresholds.{key}", f"'thresholds.{key}' (default)")

    for key in _THRESHOLD_KEYS:
        value = getattr(t, key)
        may_be_zero = key.endswith(("_d", "_minutes"))
        if value < 0 or (value == 0 and not may_be_zero):
            expected = "0 or more" if may_be_zero else "greater than 0"
            raise ConfigError(f"{name(key)} must be {expected}, got {value!r}")
    for key in ("decline_min_draws", "stable_min_draws", "persistent_min_draws"):
        if getattr(t, key) < 2:
            raise ConfigError(f"{name(key)} must be 2 or more: a trend needs two draws")
    orderings = [
        ("anc_severe_floor", "anc_moderate_floor", "<"),
        ("anc_moderate_floor", "anc_mild_floor", "<"),
        ("anc_mild_floor", "anc_lln_adult", "<="),
        ("fever_sustained_c", "fever_single_c", "<="),
        ("mcv_min_plausible", "mcv_max_plausible", "<"),
        ("temp_min_plausible_c", "temp_max_plausible_c", "<"),
        ("stat_evaluation_hours", "urgent_evaluation_hours", "<="),
        ("workup_asap_days", "workup_urgent_days", "<="),
        ("workup_urgent_days", "workup_routine_days", "<="),
        *(
            (key, key.removesuffix("_start_d") + "_end_d", "<=")
            for key in _THRESHOLD_KEYS
            if key.startswith("repeat_") and key.endswith("_start_d")
        ),
    ]
    for low, high, op in orderings:
        a, b = getattr(t, low), getattr(t, high)
        if not (a < b if op == "<" else a <= b):
            raise ConfigError(
                f"{name(low)} = {a} must be {'below' if op == '<' else 'at most'} "
                f"{name(high)} = {b}"
            )
