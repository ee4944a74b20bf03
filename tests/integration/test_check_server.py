"""``fhir-leuko check-server`` against a real FHIR server (Medplum's router, on 127.0.0.1).

Every check passes (the only warning allowed is the one this server earns: it sends no
Subscription notifications, and a loaded machine may make a query slow), and ``--write``
leaves nothing behind: after the run the store holds nothing at all. The same server with one
capability switched off fails or warns on exactly the check that names it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fhirserver.harness import fhir_server, fresh_fhir_server, start_fhir_server  # noqa: F401

from fhir_leuko.checkserver import FAIL, PASS, WARN
from fhir_leuko.cli import main
from fhir_leuko.fhirio.client import FhirClient

pytestmark = pytest.mark.integration

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
# Several CBC dates (sort and paging), medications and conditions, an open order, a normal CBC.
SUBSET = (
    "02-febrile-neutropenia-celsius",
    "13-progressive-decline",
    "24-open-repeat-cbc-order",
    "25-normal-cbc",
)
ALLOWED_WARNINGS = {"subscriptions", "speed"}
TYPES = (
    "Patient",
    "Observation",
    "DiagnosticReport",
    "Specimen",
    "MedicationRequest",
    "Condition",
    "ServiceRequest",
    "RiskAssessment",
)


@pytest.fixture
def client(fresh_fhir_server: str) -> Iterator[FhirClient]:  # noqa: F811
    with httpx.Client(trust_env=False) as http, FhirClient(fresh_fhir_server, client=http) as c:
        yield c


def copy_samples(out: Path, stems: tuple[str, ...]) -> Path:
    out.mkdir()
    shutil.copy(SAMPLES / "expectations.json", out)
    for stem in stems:
        shutil.copy(SAMPLES / f"{stem}.json", out)
        shutil.copy(SAMPLES / f"{stem}.expected.json", out)
    return out


@pytest.fixture
def samples(tmp_path: Path) -> Path:
    return copy_samples(tmp_path / "samples", SUBSET)


@pytest.fixture
def one_sample(tmp_path: Path) -> Path:
    """The scenario with most CBC dates: enough to exercise sort, paging and write-back."""
    return copy_samples(tmp_path / "one-sample", ("13-progressive-decline",))


def run_cli(args: list[str], report: Path) -> tuple[int, dict[str, Any]]:
    code = main(["check-server", *args, "--format", "json", "--output", str(report)])
    doc: dict[str, Any] = orjson.loads(report.read_bytes())
    return code, doc


def statuses(doc: dict[str, Any]) -> dict[str, str]:
    return {c["id"]: c["status"] for c in doc["checks"]}


def everything_on(client: FhirClient) -> dict[str, int]:
    return {t: len(client.search(t, {"_count": 100})) for t in TYPES}


def test_write_run_passes_every_check_and_leaves_nothing_behind(
    client: FhirClient, samples: Path, tmp_path: Path
) -> None:
    code, doc = run_cli(
        ["--fhir-base", client.base_url, "--write", "--samples", str(samples)],
        tmp_path / "report.json",
    )

    seen = statuses(doc)
    assert code == 0, [c for c in doc["checks"] if c["status"] != PASS]
    assert {k for k, v in seen.items() if v == FAIL} == set()
    assert {k for k, v in seen.items() if v == WARN} <= ALLOWED_WARNINGS
    for stem in SUBSET:
        assert seen[f"scenario.{stem}"] == PASS
    for cid in ("search.sort", "search.paging", "write.transaction", "write.rerun"):
        assert seen[cid] == PASS
    assert seen["write.cleanup"] == PASS
    assert doc["remaining"] == []
    assert everything_on(client) == dict.fromkeys(TYPES, 0)


def load_sample(client: FhirClient, stem: str) -> str:
    """PUT a sample's resources with their own ids (references stay valid); the patient id."""
    bundle = orjson.loads((SAMPLES / f"{stem}.json").read_bytes())
    resources = [e["resource"] for e in bundle["entry"]]
    client.transaction(
        {
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
    )
    return str(next(r["id"] for r in resources if r["resourceType"] == "Patient"))


def test_read_only_run_passes_every_check_and_writes_nothing(
    client: FhirClient, tmp_path: Path
) -> None:
    pid = load_sample(client, "13-progressive-decline")
    load_sample(client, "02-febrile-neutropenia-celsius")
    before = everything_on(client)
    assert before["Observation"] > 0 and before["Patient"] == 2

    code, doc = run_cli(["--fhir-base", client.base_url], tmp_path / "report.json")

    seen = statuses(doc)
    assert code == 0
    assert {k for k, v in seen.items() if v in (WARN, FAIL)} <= ALLOWED_WARNINGS
    assert doc["patient"] == f"Patient/{pid} (most CBC results of the first 100 found)"
    assert seen["search.sort"] == seen["search.paging"] == PASS
    assert seen["write.transaction"] == seen["write.conditional-create"] == PASS  # declared
    assert everything_on(client) == before


def test_junit_for_ci(
    client: FhirClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pid = load_sample(client, "13-progressive-decline")
    junit = tmp_path / "check-server.xml"

    code = main(
        [
            "check-server",
            "--fhir-base",
            client.base_url,
            "--patient",
            pid,
            "--format",
            "junit",
            "--output",
            str(junit),
        ]
    )

    assert code == 0
    assert junit.read_text().startswith("<?xml")
    assert "<failure" not in junit.read_text()
    assert "PASS:" in capsys.readouterr().out


# -- the same server with one capability switched off ------------------------------------------

CRIPPLED = [
    # (what the server lacks, the one check that must not pass, its status, words it must say)
    ("no-next-links", "search.paging", FAIL, "no next link"),
    ("no-sort", "search.sort", FAIL, "_sort=-date ignored"),
    ("no-transaction", "write.transaction", FAIL, "405"),
    ("html-errors", "errors.operation-outcome", WARN, "text/html, not an OperationOutcome"),
]


@pytest.mark.parametrize(("lacks", "check_id", "status", "words"), CRIPPLED, ids=lambda v: v)
def test_a_server_lacking_one_capability_fails_or_warns_exactly_that_check(
    lacks: str, check_id: str, status: str, words: str, one_sample: Path, tmp_path: Path
) -> None:
    with start_fhir_server(lacks=[lacks]) as base:
        code, doc = run_cli(
            ["--fhir-base", base, "--write", "--samples", str(one_sample)],
            tmp_path / "report.json",
        )
        with httpx.Client(trust_env=False) as http, FhirClient(base, client=http) as client:
            left = everything_on(client)

    seen = statuses(doc)
    not_passing = {k: v for k, v in seen.items() if v in (WARN, FAIL) and k not in ALLOWED_WARNINGS}
    assert not_passing == {check_id: status}
    reason = next(c["reason"] for c in doc["checks"] if c["id"] == check_id)
    assert words in reason
    assert code == (1 if status == FAIL else 0)
    assert left == dict.fromkeys(TYPES, 0)  # cleaned up even so
