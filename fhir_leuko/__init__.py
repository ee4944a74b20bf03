"""fhir-leuko: leukopenia and neutropenia decision support over FHIR R4."""

from __future__ import annotations

__version__ = "0.1.0"
