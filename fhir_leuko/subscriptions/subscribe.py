"""Build and create the Subscriptions that make a FHIR server notify us of new CBC results.

Two kinds, because servers support one or the other (``docs/subscriptions.md`` §1, §2):

- **R4 criteria Subscription** (HAPI, Medplum, most R4 servers): ``criteria`` is the search
  ``Observation?code=<CBC codes>``; with ``channel.payload`` the server sends the resource
  (HAPI: ``PUT {endpoint}/Observation/{id}``), without it an empty ping.
- **Backport IG topic Subscription** (R4 servers implementing the Subscriptions R5 Backport
  IG): ``criteria`` is the server's SubscriptionTopic canonical URL, narrowed to the CBC
  codes with a ``backport-filter-criteria`` extension; ``id-only`` content by default, since
  the worker reads the patient's current data anyway.

Either way the secret travels in ``channel.header``: R4 and the Backport IG define no other
authentication of notifications. The header value is stored on the FHIR server and readable
by whoever may read Subscriptions there; use a secret made for this endpoint only.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any, Literal

import httpx

from fhir_leuko.errors import ConfigError
from fhir_leuko.fhirio.client import FhirClient
from fhir_leuko.fhirio.queries import SUBSCRIBED_LOINC, subscription_criteria

__all__ = [
    "BACKPORT",
    "Content",
    "backport_subscription",
    "channel_header",
    "check_endpoint_url",
    "create_subscription",
    "endpoint_config",
    "new_secret",
    "r4_subscription",
]

JSON = dict[str, Any]
Content = Literal["empty", "id-only", "full-resource"]

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
FHIR_JSON = "application/fhir+json"
REASON = "fhir-leuko: assess new CBC results for leukopenia and neutropenia"


def new_secret() -> str:
    """A random secret for the notification header (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def channel_header(secret: str, header_name: str = "Authorization") -> str:
    """The ``channel.header`` string; a bare secret in ``Authorization`` becomes a bearer."""
    if not secret.strip() or any(c in secret for c in "\r\n"):
        raise ConfigError("the notification secret must be non-empty and on one line")
    if not header_name.strip() or ":" in header_name:
        raise ConfigError("the notification header name must be non-empty, without ':'")
    value = secret.strip()
    if header_name.lower() == "authorization" and " " not in value:
        value = f"Bearer {value}"
    return f"{header_name.strip()}: {value}"


def check_endpoint_url(url: str) -> str:
    """Our notification URL; https unless on this machine, because the secret travels
    in a header of every notification."""
    try:
        u = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        raise ConfigError("the notification endpoint is not a URL") from None
    if u.scheme not in ("http", "https") or not u.host:
        raise ConfigError("the notification endpoint must be an absolute http(s) URL")
    if u.scheme != "https" and u.host not in ("127.0.0.1", "localhost", "::1"):
        raise ConfigError("the notification endpoint must use https (the secret is in a header)")
    if u.query or u.fragment:
        raise ConfigError("the notification endpoint must not have a query or fragment")
    return str(u).rstrip("/")


def r4_subscription(
    endpoint: str,
    header: str,
    *,
    payload: bool = True,
    loinc: Sequence[str] = SUBSCRIBED_LOINC,
    reason: str = REASON,
) -> JSON:
    """A classic R4 Subscription on the CBC codes (``status: requested``; the server
    activates it). ``payload=False`` asks for empty pings: less PHI on the wire, one catch-up
    search per burst instead."""
    channel: JSON = {"type": "rest-hook", "endpoint": check_endpoint_url(endpoint)}
    if payload:
        channel["payload"] = FHIR_JSON
    channel["header"] = [header]
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": reason,
        "criteria": subscription_criteria(loinc),
        "channel": channel,
    }


def backport_subscription(
    endpoint: str,
    header: str,
    topic: str,
    *,
    content: Content = "id-only",
    heartbeat_s: int | None = 3600,
    timeout_s: int | None = None,
    max_count: int | None = None,
    loinc: Sequence[str] = SUBSCRIBED_LOINC,
    reason: str = REASON,
) -> JSON:
    """A Backport IG R4 Subscription (profile ``backport-subscription``) on ``topic``.

    Heartbeats let us notice lost notifications by their event count even when nothing
    happens (Backport IG ``errors.md``); hourly by default.
    """
    if not topic.strip():
        raise ConfigError("a topic-based Subscription needs the server's SubscriptionTopic URL")
    extensions: list[JSON] = []
    if heartbeat_s is not None:
        extensions.append(
            {"url": BACKPORT + "backport-heartbeat-period", "valueUnsignedInt": heartbeat_s}
        )
    if timeout_s is not None:
        extensions.append({"url": BACKPORT + "backport-timeout", "valueUnsignedInt": timeout_s})
    if max_count is not None:
        extensions.append({"url": BACKPORT + "backport-max-count", "valuePositiveInt": max_count})
    channel: JSON = {"type": "rest-hook", "endpoint": check_endpoint_url(endpoint)}
    if extensions:
        channel["extension"] = extensions
    channel["header"] = [header]
    channel["payload"] = FHIR_JSON
    channel["_payload"] = {
        "extension": [{"url": BACKPORT + "backport-payload-content", "valueCode": content}]
    }
    return {
        "resourceType": "Subscription",
        "meta": {"profile": [BACKPORT + "backport-subscription"]},
        "status": "requested",
        "reason": reason,
        "criteria": topic.strip(),
        "_criteria": {
            "extension": [
                {
                    "url": BACKPORT + "backport-filter-criteria",
                    "valueString": subscription_criteria(loinc),
                }
            ]
        },
        "channel": channel,
    }


def create_subscription(client: FhirClient, subscription: JSON) -> tuple[JSON, bool]:
    """Create it unless the server already has a Subscription to the same endpoint URL;
    ``(the Subscription on the server, created?)``. Conditional create on ``url`` (the R4
    search parameter for ``channel.endpoint``), so running the command twice is harmless."""
    endpoint = subscription["channel"]["endpoint"]
    before = client.search("Subscription", [("url", endpoint)], limit=1)
    if before:
        return before[0], False
    created = client.create(subscription, if_none_exist=[("url", endpoint)])
    return created, True


def endpoint_config(name: str, fhir_base: str, header: str) -> str:
    """The ``[endpoints.NAME]`` TOML the service needs for this Subscription (secret elided)."""
    header_name = header.split(":", 1)[0].strip()
    value = header.split(":", 1)[1].strip()
    shown = value.split(" ", 1)[0] + " <secret>" if " " in value else "<secret>"
    return (
        f"[endpoints.{name}]\n"
        f'fhir_base = "{fhir_base}"\n'
        f'header_name = "{header_name}"\n'
        f'header_value = "{shown}"\n'
    )
