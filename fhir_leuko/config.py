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
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fhir_leuko.clinical.thresholds import DEFAULT_THRESHOLDS, Thresholds
from fhir_leuko.errors import ConfigError
from fhir_leuko.logs import check_format, check_level

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


def _coerce(name: str, default: Any, raw: Any, where: str) -> Any:
    """Convert a TOML or env value to the type of the default, or fail with a clear message."""
    try:
        if isinstance(default, bool):
            if isinstance(raw, bool):
                return raw
            if str(raw).lower() in ("1", "true", "yes", "on"):
                return True
            if str(raw).lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError(raw)
            return int(raw)
        if isinstance(default, float):
            return float(raw)
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
    except (TypeError, ValueError):
        kind = "str" if default is None else type(default).__name__
        raise ConfigError(f"{where}: '{name}' must be a {kind}, got {raw!r}") from None
    raise ConfigError(f"{where}: '{name}' has an unsupported type")


def _apply(
    obj: Any, values: Mapping[str, Any], where: str, section: str, origins: dict[str, str]
) -> Any:
    known = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    changes: dict[str, Any] = {}
    for key, raw in values.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown setting '{section}.{key}'")
        changes[key] = _coerce(key, known[key], raw, where)
        origins[f"{section}.{key}"] = where
    return dataclasses.replace(obj, **changes) if changes else obj


DERIVED_BASE_URL = "derived from host and port"


def local_base_url(host: str, port: int) -> str:
    """``http://<host>:<port>``: the public URL when none is configured (no proxy in front)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def load_settings(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Load settings: defaults, then the TOML file, then environment variables."""
    env = os.environ if env is None else env
    origins: dict[str, str] = {}
    data: dict[str, Any] = {}
    file = path or env.get(f"{ENV_PREFIX}CONFIG")
    if file:
        p = Path(file)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {p} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None
        unknown = set(data) - {"thresholds", "service", "issuers", "endpoints"}
        if unknown:
            raise ConfigError(f"{p}: unknown section(s) {', '.join(sorted(unknown))}")
    where = str(file) if file else ""
    thresholds = _apply(
        DEFAULT_THRESHOLDS, data.get("thresholds", {}), where, "thresholds", origins
    )
    service = _apply(ServiceSettings(), data.get("service", {}), where, "service", origins)

    t_env = {
        k[len(THRESHOLD_ENV_PREFIX) :].lower(): v
        for k, v in env.items()
        if k.startswith(THRESHOLD_ENV_PREFIX)
    }
    thresholds = _apply(thresholds, t_env, "environment", "thresholds", origins)
    s_names = {f.name for f in dataclasses.fields(ServiceSettings)}
    s_env = {
        k[len(ENV_PREFIX) :].lower(): v
        for k, v in env.items()
        if k.startswith(ENV_PREFIX) and k[len(ENV_PREFIX) :].lower() in s_names
    }
    service = _apply(service, s_env, "environment", "service", origins)
    check_level(service.log_level)
    check_format(service.log_format)
    if not service.public_base_url:
        service = dataclasses.replace(
            service, public_base_url=local_base_url(service.host, service.port)
        )
        origins["service.public_base_url"] = DERIVED_BASE_URL

    issuers: dict[str, IssuerTrustConfig] = {}
    for iss, raw in (data.get("issuers") or {}).items():
        if not isinstance(raw, dict):
            raise ConfigError(f'{where}: [issuers."{iss}"] must be a table')
        issuers[iss] = _apply(IssuerTrustConfig(), raw, where, f"issuers.{iss}", origins)
    endpoints: dict[str, SubscriptionEndpoint] = {}
    for name, raw in (data.get("endpoints") or {}).items():
        if not isinstance(raw, dict) or "fhir_base" not in raw:
            raise ConfigError(f"{where}: [endpoints.{name}] needs fhir_base")
        endpoints[name] = _apply(
            SubscriptionEndpoint(fhir_base=str(raw["fhir_base"])),
            {k: v for k, v in raw.items() if k != "fhir_base"},
            where,
            f"endpoints.{name}",
            origins,
        )
    # FHIR_LEUKO_ENDPOINT__<NAME>__<KEY>: secrets belong in the environment, not in files.
    e_env: dict[str, dict[str, str]] = {}
    for k, v in env.items():
        if k.startswith(ENDPOINT_ENV_PREFIX):
            name, sep, key = k[len(ENDPOINT_ENV_PREFIX) :].partition("__")
            if not sep or not name or not key:
                raise ConfigError(f"environment: {k} must be {ENDPOINT_ENV_PREFIX}<NAME>__<KEY>")
            e_env.setdefault(name.lower(), {})[key.lower()] = v
    for name, raw_env in e_env.items():
        base = endpoints.get(name)
        if base is None:
            if "fhir_base" not in raw_env:
                raise ConfigError(
                    f"environment: endpoint '{name}' needs {ENDPOINT_ENV_PREFIX}"
                    f"{name.upper()}__FHIR_BASE"
                )
            base = SubscriptionEndpoint(fhir_base=raw_env["fhir_base"])
            origins[f"endpoints.{name}.fhir_base"] = "environment"
        rest = {k: v for k, v in raw_env.items() if k != "fhir_base" or name in endpoints}
        endpoints[name] = _apply(base, rest, "environment", f"endpoints.{name}", origins)
    _check(thresholds)
    return Settings(thresholds, service, issuers, endpoints, origins)


def _check(t: Thresholds) -> None:
    """Reject overrides that would make the decision table incoherent."""
    if not (0 < t.anc_severe_floor < t.anc_moderate_floor < t.anc_mild_floor <= t.anc_lln_adult):
        raise ConfigError(
            "ANC tiers must satisfy 0 < severe floor < moderate floor < mild floor <= adult LLN"
        )
    if t.fever_sustained_c > t.fever_single_c:
        raise ConfigError("fever_sustained_c must not exceed fever_single_c")
