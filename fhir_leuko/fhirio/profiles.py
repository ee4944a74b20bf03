"""Codes defined by the CodeSystems we publish under ``profiles/``.

The published CodeSystems are the one source of truth for the project codes (findings,
actions) that emitted resources carry. Tests of the emit code check every emitted project code
with :func:`codes_of`, so a code that is emitted but never published fails loudly instead of
reaching a FHIR server that cannot validate it.

``profiles/`` sits beside the package in the source tree, not inside it: this module is for
tests and tooling run from a checkout, not for the installed runtime.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import lru_cache
from pathlib import Path

import orjson

#: The folder of published conformance resources (repository root / profiles).
PROFILES_DIR: Path = Path(__file__).resolve().parents[2] / "profiles"


def _concept_codes(concepts: object) -> Iterator[str]:
    """Yield every code of a ``CodeSystem.concept`` list, nested concepts included."""
    if not isinstance(concepts, list):
        return
    for concept in concepts:
        if not isinstance(concept, dict):
            continue
        code = concept.get("code")
        if isinstance(code, str):
            yield code
        yield from _concept_codes(concept.get("concept"))


@lru_cache(maxsize=1)
def _code_systems() -> Mapping[str, frozenset[str]]:
    """Read every CodeSystem under ``profiles/`` once: canonical url -> its codes."""
    systems: dict[str, frozenset[str]] = {}
    for path in sorted(PROFILES_DIR.glob("*.json")):
        resource: object = orjson.loads(path.read_bytes())
        if not isinstance(resource, dict) or resource.get("resourceType") != "CodeSystem":
            continue
        url = resource.get("url")
        if not isinstance(url, str):
            raise ValueError(f"{path.name}: CodeSystem without a url")
        if url in systems:
            raise ValueError(f"{path.name}: CodeSystem url {url} is published twice")
        systems[url] = frozenset(_concept_codes(resource.get("concept")))
    return systems


@lru_cache(maxsize=32)
def codes_of(system_url: str) -> frozenset[str]:
    """Return the codes of the published CodeSystem with canonical url ``system_url``.

    Raises ``KeyError`` when no CodeSystem under ``profiles/`` has that url, so a typo in a
    system url is an error rather than an empty (and silently passing) set.
    """
    systems = _code_systems()
    if system_url not in systems:
        raise KeyError(f"no CodeSystem {system_url} under {PROFILES_DIR}")
    return systems[system_url]
