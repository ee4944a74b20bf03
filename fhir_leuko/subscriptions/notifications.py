"""Turn one HTTP delivery from a FHIR server into typed work.

Pure: no I/O, no clock, no logging. The router hands us what arrived (method, the path below
our endpoint root, headers, raw body bytes) and gets back a `Notification` describing what the
server told us, or an `InputError` naming what is wrong with the request's *shape*. Errors never
quote resource contents (PHI); only structural codes such as ``Bundle.type`` appear in them.

Shapes covered and the dispatch order follow ``docs/subscriptions.md`` §5: classic R4 rest-hook
from HAPI (empty ping, ``PUT``/``DELETE {root}/Type/id``, payload-search ``transaction``),
topic-based Subscriptions (Backport IG R4 ``Parameters`` and R4B ``SubscriptionStatus`` in a
``history`` Bundle, R5 ``subscription-notification``) and Medplum (bare resource, ``{}`` on delete).

Also here: the shared-secret checks, because they must run on the raw request before parsing.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from fhir_leuko.errors import AuthError, ConfigError, InputError
from fhir_leuko.fhirio.refs import (
    ID_RE,
    TYPE_RE,
    key_of,
    last_updated,
    normalise_reference,
    parse_reference,
    patient_of,
    reference_of,
    subject_patient,
    version_id,
)

__all__ = [
    "Event",
    "Kind",
    "Notification",
    "Shape",
    "check_hmac",
    "check_secret",
    "parse_notification",
    "parse_status_reply",
]

Kind = Literal[
    "ping",
    "resource",
    "deletion",
    "handshake",
    "heartbeat",
    "event",
    "query-status",
    "query-event",
]
"""What the receiver must do; topic kinds mirror the status ``type`` codes."""

Shape = Literal[
    "r4-ping",
    "r4-payload-put",
    "r4-delete",
    "hapi-transaction",
    "backport-r4",
    "backport-r4b",
    "r5",
    "medplum",
    "bare-resource",
]
"""Which sender dialect the request was in; for metrics and for debugging a server."""


@dataclass(frozen=True, slots=True)
class Event:
    """One triggering change, as far as the notification tells us.

    ``focus`` is a normalised ``Type/id`` (``None`` for ``empty`` content: search instead).
    ``resource`` is the full resource when the server included it, else ``None`` (GET it).
    ``version_id`` is an ordering hint only: servers strip, omit or send stale versions.
    """

    event_number: int | None
    timestamp: str | None
    focus: str | None
    resource: dict[str, Any] | None
    version_id: str | None
    patient: str | None


@dataclass(frozen=True, slots=True)
class Notification:
    """Everything the receiver needs to enqueue work for one delivery.

    ``events`` is empty for pings, handshakes and heartbeats, and for an event notification that
    named no events (treat that like ``empty`` content: search since the watermark).
    """

    kind: Kind
    shape: Shape
    subscription_id: str | None
    status: str | None
    events_since_start: int | None
    events: tuple[Event, ...]
    topic: str | None = None


# --------------------------------------------------------------------------- references


def _subscription_id(value: object) -> str | None:
    """A Subscription id from a Reference: ``Subscription/x``, an absolute URL, or a bare id."""
    ref = reference_of(value)
    if ref is None:
        return None
    parsed = parse_reference(ref)
    if parsed is not None:
        return parsed.id
    ref = ref.strip()
    return ref if ID_RE.fullmatch(ref) else None


# --------------------------------------------------------------------------- small readers


#: Event numbers and counts are stored as signed 64-bit integers (SQLite INTEGER, SQL
#: bigint), as FHIR's integer64 is; a count is never negative.
INT64_MAX = 2**63 - 1
# FHIR integer64 lexically: optional sign, ASCII digits (int() would also read "١٢" or "1_0").
_INTEGER = re.compile(r"[+-]?[0-9]{1,19}")


def _int(value: object, what: str) -> int | None:
    """An event number or count, 0 to 2^63 - 1, from a JSON number or string (integer64
    arrives as a JSON string). Anything else is refused here, at the edge, with its name."""
    if value is None:
        return None
    text = str(value).strip() if isinstance(value, int | str) else ""
    if isinstance(value, bool) or not _INTEGER.fullmatch(text) or not 0 <= int(text) <= INT64_MAX:
        raise InputError(f"{what} is not an integer from 0 to {INT64_MAX}")
    return int(text)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _resource_event(
    resource: dict[str, Any], *, focus: str | None = None, version: str | None = None
) -> Event:
    """An event for a resource that arrived whole (classic R4 payload, Medplum, transaction)."""
    return Event(
        event_number=None,
        timestamp=last_updated(resource),
        focus=focus or key_of(resource),
        resource=resource,
        version_id=version_id(resource) or version,
        patient=subject_patient(resource),
    )


def _lower_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


_CODE = re.compile(r"[a-z][a-z0-9-]{0,39}")


def _code(value: object) -> str:
    """Quote a value in an error only when it looks like a FHIR code; anything else might be
    content (PHI) in the wrong place, so it is described, never echoed."""
    if isinstance(value, str) and _CODE.fullmatch(value):
        return repr(value)
    return "(not a code)"


#: JSON nesting we accept. A FHIR resource is rarely 20 levels deep and a Bundle adds 3;
#: the JSON encoder that digests and stores what we keep stops at 255.
MAX_DEPTH = 100


def _too_deep(doc: object, limit: int) -> bool:
    """Whether ``doc`` nests objects and arrays more than ``limit`` levels (iterative)."""
    stack: list[tuple[object, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        children: Iterable[object] = value.values() if isinstance(value, dict) else ()
        if isinstance(value, list):
            children = value
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def _load(body: bytes, headers: Mapping[str, str]) -> object:
    if body.startswith(b"\xef\xbb\xbf"):
        body = body[3:]
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        if "xml" in headers.get("content-type", "").lower():
            raise InputError("XML notification bodies are not supported; use JSON") from None
        raise InputError("body is not valid JSON") from None
    # Fewer brackets than the limit cannot nest past it: most bodies skip the walk.
    brackets = body.count(b"{") + body.count(b"[")
    if brackets > MAX_DEPTH and isinstance(doc, dict | list) and _too_deep(doc, MAX_DEPTH):
        raise InputError(f"body is nested deeper than {MAX_DEPTH} levels")
    return doc


# --------------------------------------------------------------------------- entry point


def parse_notification(
    method: str, path: str, headers: Mapping[str, str], body: bytes
) -> Notification:
    """Classify one delivery in the §5 dispatch order: method, empty body, then ``resourceType``.

    ``path`` is what follows our endpoint root (``""`` or ``"/Observation/obs-1"``) because HAPI
    appends ``Type/id`` to the endpoint when a payload is configured. ``If-Match`` is ignored:
    a notification must never be refused with 412.
    """
    h = _lower_headers(headers)
    verb = method.upper()
    suffix = path.strip("/")
    medplum_sub = _str(h.get("x-medplum-subscription", "").strip())

    if verb in ("PUT", "DELETE"):
        return _hapi_payload(verb, suffix, h, body)
    if verb != "POST":
        raise InputError(f"HTTP method {verb[:10]!r} is not a notification")
    if suffix:
        raise InputError("a POST notification must target the endpoint root, not a sub-path")
    if not body.strip():
        return Notification("ping", "r4-ping", medplum_sub, None, None, ())

    doc = _load(body, h)
    if not isinstance(doc, dict):
        raise InputError("body is not a JSON object")
    rtype = doc.get("resourceType")
    if rtype is None:
        if h.get("x-medplum-interaction", "").strip().lower() == "delete":
            return _medplum_delete(h, medplum_sub)
        raise InputError("body has no resourceType")
    if not isinstance(rtype, str) or not TYPE_RE.fullmatch(rtype):
        raise InputError("body resourceType is not a FHIR resource type")
    if rtype == "Bundle":
        return _bundle(doc, medplum_sub)

    medplum = medplum_sub is not None or "x-medplum-interaction" in h
    if medplum and h.get("x-medplum-interaction", "").strip().lower() == "delete":
        return _medplum_delete(h, medplum_sub)
    if key_of(doc) is None:
        raise InputError(f"bare {rtype} resource has no valid id")
    shape: Shape = "medplum" if medplum else "bare-resource"
    return Notification("resource", shape, medplum_sub, None, None, (_resource_event(doc),))


def parse_status_reply(body: bytes) -> tuple[Notification, ...]:
    """Parse a ``$status`` or ``$events`` reply: one `Notification` per status resource.

    ``$status`` answers with a ``searchset`` Bundle holding one status per Subscription (R5
    and Backport OperationDefinition), which `parse_notification` rightly refuses as a push.
    ``$events`` answers with the usual notification Bundle (``query-event``).
    """
    doc = _load(body, {})
    if not isinstance(doc, dict) or doc.get("resourceType") != "Bundle":
        raise InputError("status reply is not a Bundle")
    if doc.get("type") != "searchset":
        return (_bundle(doc, None),)
    entries = doc.get("entry") or []
    if not isinstance(entries, list):
        raise InputError("Bundle.entry is not a list")
    out = []
    for entry in entries:
        res = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(res, dict) and res.get("resourceType") in _STATUS_TYPES:
            single = {"resourceType": "Bundle", "type": "history", "entry": [entry]}
            out.append(_bundle(single, None))
    return tuple(out)


# --------------------------------------------------------------------------- HAPI classic


def _hapi_payload(verb: str, suffix: str, h: Mapping[str, str], body: bytes) -> Notification:
    """HAPI with ``channel.payload`` set uses its FHIR client's update()/delete() on our root."""
    target = normalise_reference(suffix) if suffix else None
    if target is None:
        raise InputError(f"{verb} notification path must end in Type/id")
    focus, path_version = target
    if verb == "DELETE":
        event = Event(None, None, focus, None, path_version, None)
        return Notification("deletion", "r4-delete", None, None, None, (event,))
    if not body.strip():
        raise InputError("PUT notification has an empty body")
    doc = _load(body, h)
    if not isinstance(doc, dict) or not isinstance(doc.get("resourceType"), str):
        raise InputError("PUT notification body is not a FHIR resource")
    body_key = key_of(doc)
    if body_key is not None and body_key != focus:
        raise InputError("PUT path Type/id does not match the body's resourceType/id")
    if body_key is None and doc["resourceType"] != focus.split("/", 1)[0]:
        raise InputError("PUT path resource type does not match the body's resourceType")
    event = _resource_event(doc, focus=focus, version=path_version)
    return Notification("resource", "r4-payload-put", None, None, None, (event,))


# --------------------------------------------------------------------------- Medplum


def _medplum_delete(h: Mapping[str, str], sub: str | None) -> Notification:
    """Medplum deletes send ``{}``; the deleted reference is only in a header."""
    raw = h.get("x-medplum-deleted-resource", "")
    target = normalise_reference(raw) if raw.strip() else None
    if target is None:
        raise InputError("Medplum delete without a Type/id X-Medplum-Deleted-Resource header")
    event = Event(None, None, target[0], None, target[1], None)
    return Notification("deletion", "medplum", sub, None, None, (event,))


# --------------------------------------------------------------------------- Bundles

_STATUS_TYPES = ("Parameters", "SubscriptionStatus")
_KINDS: dict[str, Kind] = {
    "handshake": "handshake",
    "heartbeat": "heartbeat",
    "event-notification": "event",
    "query-status": "query-status",
    "query-event": "query-event",
}


def _entries(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    entries = doc.get("entry", [])
    if not isinstance(entries, list):
        raise InputError("Bundle.entry is not a list")
    return [e for e in entries if isinstance(e, dict)]


def _bundle(doc: Mapping[str, Any], header_sub: str | None) -> Notification:
    btype = doc.get("type")
    if btype == "transaction":
        return _transaction(doc, header_sub)
    if btype in ("history", "subscription-notification"):
        return _topic(doc, str(btype), header_sub)
    if btype is None:
        raise InputError("Bundle has no type")
    raise InputError(f"Bundle.type {_code(btype)} is not a notification")


def _transaction(doc: Mapping[str, Any], header_sub: str | None) -> Notification:
    """HAPI payload-search: one PUT entry per resource its search found; take each as a change."""
    events: list[Event] = []
    for entry in _entries(doc):
        res = entry.get("resource")
        request = entry.get("request") if isinstance(entry.get("request"), dict) else {}
        url = _str(request.get("url")) if request else None
        target = normalise_reference(url) if url else None
        if isinstance(res, dict):
            if key_of(res) is None and target is None:
                raise InputError("transaction entry resource has neither id nor request.url")
            events.append(
                _resource_event(
                    res,
                    focus=key_of(res) or (target[0] if target else None),
                    version=target[1] if target else None,
                )
            )
        elif target is not None:
            events.append(Event(None, None, target[0], None, target[1], None))
        else:
            raise InputError("transaction entry has neither resource nor request.url Type/id")
    return Notification("resource", "hapi-transaction", header_sub, None, None, tuple(events))


def _topic(doc: Mapping[str, Any], btype: str, header_sub: str | None) -> Notification:
    """Topic notification: a status resource (entry 0, or the first one found) plus entries."""
    entries = _entries(doc)
    status_index = next(
        (
            i
            for i, e in enumerate(entries)
            if isinstance(e.get("resource"), dict)
            and e["resource"].get("resourceType") in _STATUS_TYPES
        ),
        None,
    )
    if status_index is None:
        raise InputError(
            f"Bundle.type {_code(btype)} has no Parameters or SubscriptionStatus status entry"
        )
    status_res: dict[str, Any] = entries[status_index]["resource"]
    others = entries[:status_index] + entries[status_index + 1 :]
    if status_res["resourceType"] == "Parameters":
        fields = _from_parameters(status_res)
        shape: Shape = "backport-r4"
    else:
        fields = _from_subscription_status(status_res)
        shape = "backport-r4b"
    if btype == "subscription-notification":
        shape = "r5"

    type_code = fields.type_code
    if type_code is None:
        raise InputError("notification status has no type")
    kind = _KINDS.get(type_code)
    if kind is None:
        raise InputError(f"notification type {_code(type_code)} is unknown")

    index = _EntryIndex(others)
    events = tuple(_resolve_event(raw, index) for raw in fields.events)
    return Notification(
        kind=kind,
        shape=shape,
        subscription_id=fields.subscription_id or header_sub,
        status=fields.status,
        events_since_start=fields.events_since_start,
        events=events,
        topic=fields.topic,
    )


@dataclass(frozen=True, slots=True)
class _RawEvent:
    event_number: int | None
    timestamp: str | None
    focus_ref: str | None
    context_patient: str | None


@dataclass(frozen=True, slots=True)
class _StatusFields:
    subscription_id: str | None
    topic: str | None
    status: str | None
    type_code: str | None
    events_since_start: int | None
    events: tuple[_RawEvent, ...]


_TIMESTAMP_KEYS = ("valueInstant", "valueDateTime", "valueDate")


def _param_value(param: Mapping[str, Any]) -> object:
    """The ``value[x]`` of a parameter, whatever its type suffix."""
    for key, value in param.items():
        if key.startswith("value"):
            return value
    return None


def _from_parameters(res: Mapping[str, Any]) -> _StatusFields:
    """Backport R4 status: ``Parameters`` with the backport-subscription-status-r4 names."""
    params = res.get("parameter", [])
    if not isinstance(params, list):
        raise InputError("Parameters.parameter is not a list")
    sub = topic = status = type_code = None
    since: int | None = None
    events: list[_RawEvent] = []
    for p in params:
        if not isinstance(p, dict):
            continue
        name = p.get("name")
        if name == "subscription":
            sub = _subscription_id(p.get("valueReference"))
        elif name == "topic":
            topic = _str(_param_value(p))
        elif name == "status":
            status = _str(p.get("valueCode"))
        elif name == "type":
            type_code = _str(p.get("valueCode"))
        elif name == "events-since-subscription-start":
            since = _int(_param_value(p), "events-since-subscription-start")
        elif name == "notification-event":
            events.append(_event_from_parts(p.get("part", [])))
    return _StatusFields(sub, topic, status, type_code, since, tuple(events))


def _event_from_parts(parts: object) -> _RawEvent:
    if not isinstance(parts, list):
        raise InputError("notification-event.part is not a list")
    number: int | None = None
    timestamp = focus = None
    context: list[object] = []
    for part in parts:
        if not isinstance(part, dict):
            continue
        name = part.get("name")
        if name == "event-number":
            number = _int(_param_value(part), "event-number")
        elif name == "timestamp":
            timestamp = next((_str(part.get(k)) for k in _TIMESTAMP_KEYS if k in part), None)
        elif name == "focus":
            focus = reference_of(part.get("valueReference"))
        elif name == "additional-context":
            context.append(part.get("valueReference"))
    return _RawEvent(number, timestamp, focus, patient_of(context))


def _from_subscription_status(res: Mapping[str, Any]) -> _StatusFields:
    """R4B / R5 ``SubscriptionStatus``: same codes as element names; integer64 as strings."""
    raw_events = res.get("notificationEvent", [])
    if not isinstance(raw_events, list):
        raise InputError("SubscriptionStatus.notificationEvent is not a list")
    events: list[_RawEvent] = []
    for ev in raw_events:
        if not isinstance(ev, dict):
            continue
        context = ev.get("additionalContext", [])
        events.append(
            _RawEvent(
                event_number=_int(ev.get("eventNumber"), "eventNumber"),
                timestamp=_str(ev.get("timestamp")),
                focus_ref=reference_of(ev.get("focus")),
                context_patient=patient_of(context if isinstance(context, list) else []),
            )
        )
    return _StatusFields(
        subscription_id=_subscription_id(res.get("subscription")),
        topic=_str(res.get("topic")),
        status=_str(res.get("status")),
        type_code=_str(res.get("type")),
        events_since_start=_int(
            res.get("eventsSinceSubscriptionStart"), "eventsSinceSubscriptionStart"
        ),
        events=tuple(events),
    )


class _EntryIndex:
    """Find the Bundle entry for a focus by fullUrl, resource Type/id or request/response URL."""

    def __init__(self, entries: list[dict[str, Any]]) -> None:
        self._by_full_url: dict[str, dict[str, Any]] = {}
        self._by_key: dict[str, dict[str, Any]] = {}
        for entry in entries:
            full_url = _str(entry.get("fullUrl"))
            if full_url:
                self._by_full_url.setdefault(full_url, entry)
            for key in self._keys(entry):
                self._by_key.setdefault(key, entry)

    @staticmethod
    def _keys(entry: Mapping[str, Any]) -> list[str]:
        keys: list[str] = []
        res = entry.get("resource")
        if isinstance(res, dict) and (k := key_of(res)):
            keys.append(k)
        request = entry.get("request")
        response = entry.get("response")
        candidates = [
            entry.get("fullUrl"),
            request.get("url") if isinstance(request, dict) else None,
            response.get("location") if isinstance(response, dict) else None,
        ]
        for c in candidates:
            if isinstance(c, str) and (parsed := normalise_reference(c)):
                keys.append(parsed[0])
        return keys

    def find(self, ref: str) -> dict[str, Any] | None:
        entry = self._by_full_url.get(ref)
        if entry is not None:
            return entry
        parsed = normalise_reference(ref)
        return self._by_key.get(parsed[0]) if parsed else None

    @staticmethod
    def entry_version(entry: Mapping[str, Any]) -> str | None:
        """A version from ``_history/n`` in the entry's URLs (id-only entries have no meta)."""
        request = entry.get("request")
        response = entry.get("response")
        for c in (
            response.get("location") if isinstance(response, dict) else None,
            entry.get("fullUrl"),
            request.get("url") if isinstance(request, dict) else None,
        ):
            if isinstance(c, str) and (parsed := normalise_reference(c)) and parsed[1]:
                return parsed[1]
        return None


def _resolve_event(raw: _RawEvent, index: _EntryIndex) -> Event:
    """Attach the included resource (full-resource) and the best version and patient we have."""
    if raw.focus_ref is None:
        return Event(raw.event_number, raw.timestamp, None, None, None, raw.context_patient)
    entry = index.find(raw.focus_ref)
    res = entry.get("resource") if entry else None
    resource = res if isinstance(res, dict) else None
    parsed = normalise_reference(raw.focus_ref)
    focus = parsed[0] if parsed else (key_of(resource) if resource else None)
    version = (
        (version_id(resource) if resource else None)
        or (parsed[1] if parsed else None)
        or (index.entry_version(entry) if entry else None)
    )
    patient = subject_patient(resource) or raw.context_patient
    if patient is None and focus is not None and focus.startswith("Patient/"):
        patient = focus
    return Event(raw.event_number, raw.timestamp, focus, resource, version, patient)


# --------------------------------------------------------------------------- authenticity


def check_secret(headers: Mapping[str, str], expected: Mapping[str, str]) -> None:
    """Verify the ``channel.header`` secrets we configured; R4 and the Backport IG have no other.

    Every configured pair must match, compared in constant time so response timing does not
    leak the secret. With nothing configured this refuses (fail closed): an endpoint that forgot
    its secret must not silently accept anyone.
    """
    if not expected:
        raise ConfigError("no notification secret headers are configured")
    h = _lower_headers(headers)
    ok = True
    for name, value in expected.items():
        got = h.get(name.lower())
        # Compare even when missing so every configured header costs the same time.
        match = hmac.compare_digest(
            (got if got is not None else "").strip().encode("utf-8", "replace"),
            value.strip().encode("utf-8"),
        )
        ok = ok and got is not None and match
    if not ok:
        raise AuthError("notification secret header missing or wrong")


def check_hmac(
    headers: Mapping[str, str],
    body: bytes,
    secret: str | bytes,
    header: str = "X-Signature",
) -> None:
    """Verify an HMAC-SHA256 of the exact body bytes (never of re-serialised JSON).

    Medplum sends lower-case hex in ``X-Signature``; ATH-style senders send ``sha256=<hex>`` in
    ``X-Hub-Signature``. Both spellings are accepted in either header; any other algorithm is
    refused.
    """
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    if not key:
        raise ConfigError("the notification HMAC secret is empty")
    received = _lower_headers(headers).get(header.lower())
    if received is None:
        raise AuthError(f"notification signature header {header} is missing")
    received = received.strip()
    algo, sep, digest = received.partition("=")
    if sep:
        if algo.strip().lower() != "sha256":
            raise AuthError(f"notification signature in {header} is not sha256")
        received = digest.strip()
    expected = hmac.new(key, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(received.lower().encode("utf-8", "replace"), expected.encode()):
        raise AuthError(f"notification signature in {header} does not match the body")
