"""``python -m fhir_leuko``."""

from fhir_leuko.cli import main

raise SystemExit(main())
