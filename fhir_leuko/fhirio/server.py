"""What every surface does with a FHIR server, below all of them.

The CLI (``fetch``), the Subscription worker and ``check-server`` read one patient's data
with the queries the CDS Hooks prefetch uses (``fhirio.queries``), evaluate it
(``fhir_leuko.service``) and write the results back in one idempotent transaction. The CDS
Hooks fallback fetch is the asynchronous reading of the same queries (``cdshooks.fetch``).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from fhir_leuko.config import SubscriptionEndpoint
from fhir_leuko.errors import ConfigError, FatalFhirServerError
from fhir_leuko.fhirio import queries
from fhir_leuko.fhirio.client import Auth, FhirClient, SmartBackendAuth, bundle_resources

__all__ = ["endpoint_auth", "fetch_patient_data", "transaction_for", "write_back"]

JSON = dict[str, Any]


# --------------------------------------------------------------------------- connecting


def endpoint_auth(endpoint: SubscriptionEndpoint) -> Auth:
    """How to authenticate to a configured server: SMART backend services when its keys are
    configured, else its bearer token (or none)."""
    smart = (endpoint.smart_token_url, endpoint.smart_client_id, endpoint.smart_key_file)
    if any(smart):
        if not all((*smart, endpoint.smart_kid)):
            raise ConfigError(
                "SMART backend services needs smart_token_url, smart_client_id, "
                "smart_key_file and smart_kid together"
            )
        try:
            key = Path(endpoint.smart_key_file).read_bytes()
        except OSError:
            raise ConfigError("the SMART private key file cannot be read") from None
        return SmartBackendAuth(
            token_url=endpoint.smart_token_url,
            client_id=endpoint.smart_client_id,
            private_key=key,
            kid=endpoint.smart_kid,
            scope=endpoint.smart_scope,
            algorithm=endpoint.smart_algorithm,
        )
    return endpoint.token


# --------------------------------------------------------------------------- write-back


def transaction_for(resources: list[JSON]) -> JSON:
    """One transaction Bundle: a conditional create per resource, on its identifier.

    ``ifNoneExist`` makes the second run of the same evaluation create nothing: the server
    finds the resource by identifier and answers 200 instead of 201. References between the
    entries use the ``urn:uuid`` fullUrls, which the server rewrites to the real ids (also to
    an existing resource's id when its conditional create matched). Our ``id`` is dropped:
    a create lets the server choose the id.
    """
    entries: list[JSON] = []
    for resource in resources:
        ident = resource["identifier"][0]
        body = {k: v for k, v in resource.items() if k != "id"}
        entries.append(
            {
                "fullUrl": f"urn:uuid:{resource['id']}",
                "resource": body,
                "request": {
                    "method": "POST",
                    "url": resource["resourceType"],
                    "ifNoneExist": f"identifier={ident['system']}|{ident['value']}",
                },
            }
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _created_count(response: Mapping[str, Any], expected: int) -> int:
    """How many entries the server created; raises unless every entry succeeded."""
    entries = response.get("entry") or []
    if len(entries) != expected:
        raise FatalFhirServerError(
            f"transaction-response has {len(entries)} entries for {expected} requests"
        )
    created = 0
    for entry in entries:
        status = str(((entry or {}).get("response") or {}).get("status", "")).strip()
        code = status.split(" ", 1)[0]
        if code == "201":
            created += 1
        elif code != "200":
            raise FatalFhirServerError(
                f"transaction-response entry has status {code[:3] or 'none'}, not 200/201"
            )
    return created


def write_back(client: FhirClient, resources: list[JSON]) -> int:
    """Write resources in one idempotent transaction; how many were new (the rest existed)."""
    response = client.transaction(transaction_for(resources))
    return _created_count(response, len(resources))


def fetch_patient_data(client: FhirClient, patient_id: str, now: datetime) -> list[JSON]:
    """What one evaluation reads: every query of ``queries.PATIENT_DATA`` (the CDS prefetch),
    paging a ``-date`` sorted search only until a whole page is outside its window.

    The queries are independent, so they go to the server at once (one round trip of wait
    instead of seven); the results keep the order of ``PATIENT_DATA``. The first failure is
    raised, as when they ran one after the other.
    """
    return [
        resource
        for found in _reader_pool().map(
            lambda query: _read_query(client, query, patient_id, now), queries.PATIENT_DATA
        )
        for resource in found
    ]


def _read_query(
    client: FhirClient, query: queries.PatientQuery, patient_id: str, now: datetime
) -> list[JSON]:
    if query.returns == "Patient":
        return [client.read("Patient", patient_id)]
    data: list[JSON] = []
    rtype, params = query.search(patient_id)
    for page in client.search_bundle_pages(rtype, params):
        found = bundle_resources(page)
        kept = queries.within_window(found, query, now)
        data.extend(kept)
        if queries.past_window(found, kept, query):
            break
    return data


_READERS: ThreadPoolExecutor | None = None
_READERS_LOCK = threading.Lock()


def _reader_pool() -> ThreadPoolExecutor:
    """Threads for the concurrent reads of evaluations, shared by the process (sync clients
    are thread-safe; a request's wait is I/O, so threads suffice)."""
    global _READERS
    with _READERS_LOCK:
        if _READERS is None:
            _READERS = ThreadPoolExecutor(max_workers=32, thread_name_prefix="fhir-leuko-read")
        return _READERS
