"""FHIR references, ids and resource keys: the one place that reads them.

A reference arrives relative (``Patient/1``), absolute (``https://x/fhir/Patient/1``),
versioned (``.../_history/2``), as a ``urn:uuid:`` (bundle-local) or as ``#id`` (contained).
Two readings are needed, and both live here:

* :func:`parse_reference` / :func:`normalise_reference`: strict, for keys that leave the
  input (queue keys, notification focus, URLs we build). Type and id must match the R4
  grammar; ``urn:`` and ``#`` references have no ``Type/id`` and give ``None``.
* :func:`relative` / :func:`split_base`: lenient and cached, for matching references
  *within one input* (an Observation's report, a request's Medication, a subject): whatever
  the sender wrote must meet its own ``fullUrl`` or ``Type/id``, valid or not. This runs
  for every resource of a large prefetch, so it is memoised.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "ID_RE",
    "TYPE_RE",
    "Reference",
    "key_of",
    "label_of",
    "last_updated",
    "normalise_reference",
    "parse_reference",
    "patient_of",
    "reference_of",
    "relative",
    "split_base",
    "subject_patient",
    "subject_reference",
    "type_and_id",
    "version_id",
]

#: FHIR R4 id: 1-64 of ``[A-Za-z0-9-.]``.
ID_RE: Final = re.compile(r"[A-Za-z0-9\-.]{1,64}")
#: A resource type name: UpperCamelCase letters.
TYPE_RE: Final = re.compile(r"[A-Z][A-Za-z]{1,63}")


@dataclass(frozen=True, slots=True)
class Reference:
    """A literal reference read strictly. ``base`` is the server part of an absolute URL
    (``None`` for a relative one); ``version`` the ``_history`` version, if any."""

    type: str
    id: str
    base: str | None = None
    version: str | None = None

    @property
    def relative(self) -> str:
        """``Type/id``."""
        return f"{self.type}/{self.id}"


def parse_reference(ref: str) -> Reference | None:
    """The last valid ``Type/id`` of a reference, with its base and ``_history`` version.

    Servers build references by string concatenation (HAPI) or send absolute URLs, so the
    last ``Type/id`` pair counts and a trailing ``_history/n`` is the version. A query or
    fragment is ignored; ``urn:uuid:`` and ``#contained`` references give ``None``.
    """
    ref = ref.strip().split("?", 1)[0].split("#", 1)[0]
    if not ref or ref.startswith(("urn:", "#")):
        return None
    parts = [p for p in ref.split("/") if p]
    for i in range(len(parts) - 2, -1, -1):
        rtype, rid = parts[i], parts[i + 1]
        if TYPE_RE.fullmatch(rtype) and ID_RE.fullmatch(rid):
            rest = parts[i + 2 :]
            version = rest[1] if len(rest) >= 2 and rest[0] == "_history" else None
            if version is not None and not ID_RE.fullmatch(version):
                version = None
            cut = ref.rfind(f"/{rtype}/{rid}") if "://" in ref else -1
            base = ref[:cut] if cut > 0 else None
            return Reference(rtype, rid, base, version)
    return None


def normalise_reference(ref: str) -> tuple[str, str | None] | None:
    """``(Type/id, version)`` from a relative, absolute or versioned reference, else ``None``
    (see :func:`parse_reference`)."""
    parsed = parse_reference(ref)
    return None if parsed is None else (parsed.relative, parsed.version)


@functools.lru_cache(maxsize=4096)
def relative(reference: str) -> str:
    """Lenient ``Type/id``: ``'https://x/fhir/Observation/1/_history/2'`` -> ``'Observation/1'``;
    a reference of fewer than two segments is returned as it is."""
    parts = [p for p in reference.split("/") if p]
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    return "/".join(parts[-2:]) if len(parts) >= 2 else reference


@functools.lru_cache(maxsize=1024)
def split_base(reference: str) -> tuple[str | None, str]:
    """Lenient ``(base, Type/id)``: ``'https://x/fhir/Patient/1/_history/2'`` ->
    ``('https://x/fhir', 'Patient/1')``; ``'Patient/1'`` -> ``(None, 'Patient/1')``."""
    rel = relative(reference)
    if "://" not in reference:
        return None, rel
    cut = reference.find("/" + rel)
    return (reference[:cut] if cut > 0 else ""), rel


def type_and_id(reference: str) -> tuple[str, str] | None:
    """Lenient ``(Type, id)`` of a reference (see :func:`relative`); None without both."""
    rtype, sep, rid = relative(reference).partition("/")
    return (rtype, rid) if sep and rtype and rid and "/" not in rid else None


# --------------------------------------------------------------------------- of a resource


def reference_of(value: object) -> str | None:
    """The ``reference`` string of a Reference element, if it has one."""
    if isinstance(value, dict):
        ref = value.get("reference")
        if isinstance(ref, str):
            return ref
    return None


def key_of(resource: Mapping[str, Any]) -> str | None:
    """``Type/id`` of a resource whose id is a valid FHIR id, else ``None``."""
    rtype, rid = resource.get("resourceType"), resource.get("id")
    if isinstance(rtype, str) and isinstance(rid, str) and ID_RE.fullmatch(rid):
        return f"{rtype}/{rid}"
    return None


def label_of(resource: Mapping[str, Any]) -> str:
    """How messages name a resource of the input: ``Type/id``, else its ``fullUrl``
    (kept as ``_fullUrl`` when the bundle was read), else ``Type/(no id)``."""
    rid = resource.get("id")
    if isinstance(rid, str):
        return f"{resource['resourceType']}/{rid}"
    return str(resource.get("_fullUrl") or f"{resource['resourceType']}/(no id)")


def subject_reference(resource: Mapping[str, Any]) -> str | None:
    """The ``subject`` (else ``patient``) reference a resource names, as sent; None when none."""
    subj = resource.get("subject")
    if subj is None:
        subj = resource.get("patient")
    if isinstance(subj, dict):
        ref = subj.get("reference")
        if isinstance(ref, str) and ref:
            return ref
    return None


def patient_of(refs: Iterable[object]) -> str | None:
    """The first ``Patient/id`` among Reference elements (read strictly)."""
    for value in refs:
        ref = reference_of(value)
        parsed = parse_reference(ref) if ref else None
        if parsed is not None and parsed.type == "Patient":
            return parsed.relative
    return None


def subject_patient(resource: Mapping[str, Any] | None) -> str | None:
    """``Patient/id`` of a resource: itself when it is a Patient, else its ``subject`` or
    ``patient`` when that is a Patient."""
    if resource is None:
        return None
    if resource.get("resourceType") == "Patient":
        return key_of(resource)
    return patient_of([resource.get("subject"), resource.get("patient")])


def _meta_str(resource: Mapping[str, Any], key: str) -> str | None:
    meta = resource.get("meta")
    value = meta.get(key) if isinstance(meta, dict) else None
    return value if isinstance(value, str) and value else None


def version_id(resource: Mapping[str, Any]) -> str | None:
    """``meta.versionId``, when a non-empty string."""
    return _meta_str(resource, "versionId")


def last_updated(resource: Mapping[str, Any]) -> str | None:
    """``meta.lastUpdated`` as sent, when a non-empty string."""
    return _meta_str(resource, "lastUpdated")
