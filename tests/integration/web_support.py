"""Running fhir-leuko's service on 127.0.0.1 for tests that need a real HTTP server (a
browser, or links followed as a user would)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from tests.serve_process import serve_process

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples"


@contextmanager
def running_service(workdir: Path, **env: str) -> Iterator[str]:
    """``fhir-leuko serve`` (insecure dev: no JWT) on a free port; yields its base URL."""
    with serve_process(workdir, **env) as (base, _):
        yield base


_TIMES = frozenset(
    {
        "effectiveDateTime",
        "effectiveInstant",
        "issued",
        "authoredOn",
        "onsetDateTime",
        "start",
        "end",
    }
)


def _shift(node: Any, delta: timedelta) -> Any:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k in _TIMES and isinstance(v, str) and "T" in v:
                t = datetime.fromisoformat(v.replace("Z", "+00:00")) + delta
                out[k] = t.astimezone(UTC).isoformat().replace("+00:00", "Z")
            else:
                out[k] = _shift(v, delta)
        return out
    if isinstance(node, list):
        return [_shift(v, delta) for v in node]
    return node


def sample_resources(name: str, now: datetime | None = None) -> list[dict[str, Any]]:
    """The sample's resources; with ``now``, every time moved so that the sample's evaluation
    time (samples/expectations.json) falls on ``now`` (the app evaluates at the real now)."""
    import orjson

    doc = orjson.loads((SAMPLES / f"{name}.json").read_bytes())
    resources = [e["resource"] for e in doc.get("entry", ())]
    if now is None:
        return resources
    then = orjson.loads((SAMPLES / "expectations.json").read_bytes())["evaluation_time"]
    delta = now - datetime.fromisoformat(then.replace("Z", "+00:00"))
    return [_shift(r, delta) for r in resources]


def load_into(fhir_base: str, resources: list[dict[str, Any]]) -> None:
    """PUT the resources (with their ids) in one transaction."""
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": r,
                "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
            }
            for r in resources
        ],
    }
    with httpx.Client(trust_env=False, timeout=30) as http:
        response = http.post(
            fhir_base, json=bundle, headers={"Content-Type": "application/fhir+json"}
        )
        response.raise_for_status()
