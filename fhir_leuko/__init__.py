"""fhir-leuko: leukopenia and neutropenia decision support over FHIR R4."""

from __future__ import annotations

from fhir_leuko.clinical.model import Assessment
from fhir_leuko.service import evaluate, evaluate_to_bundle

__version__ = "0.1.0"
__all__ = ["Assessment", "evaluate", "evaluate_to_bundle", "__version__"]
