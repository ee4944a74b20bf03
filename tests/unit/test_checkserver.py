"""``fhir-leuko check-server`` against in-memory servers that each lack one capability.

Each crippled server differs from the complete one in one respect; the test asserts that the
checks which do not pass are exactly the one that names that respect, so a check that
blames the wrong thing (or a server problem that slips through) fails here.
"""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import jwt
import orjson
import pytest
import respx

from fhir_leuko import checkserver
from fhir_leuko.checkserver import FAIL, PASS, SKIP, WARN, Options, Report
from fhir_leuko.cli import main
from tests.jwtkeys import RSA_KEY, private_pem
from tests.unit.checkserver_fake import BASE, FakeFhirServer

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
# Several CBC dates (sort, paging), medications and conditions, an open order.
SUBSET = (
    "13-progressive-decline",
    "02-febrile-neutropenia-celsius",
    "24-open-repeat-cbc-order",
)
PRELOADED = "13-progressive-decline"


@pytest.fixture
def samples(tmp_path: Path) -> Path:
    """A few of the bundled scenarios with their expected outputs (all 27 are slow here)."""
    out = tmp_path / "samples"
    out.mkdir()
    shutil.copy(SAMPLES / "expectations.json", out)
    for stem in SUBSET:
        shutil.copy(SAMPLES / f"{stem}.json", out)
        shutil.copy(SAMPLES / f"{stem}.expected.json", out)
    return out


def preload(fake: FakeFhirServer, stem: str = PRELOADED) -> str:
    """Store a sample's resources as they are; the patient's id."""
    bundle = orjson.loads((SAMPLES / f"{stem}.json").read_bytes())
    stored = [fake.add(e["resource"]) for e in bundle["entry"]]
    return str(next(r["id"] for r in stored if r["resourceType"] == "Patient"))


def check(fake: FakeFhirServer, **options: object) -> tuple[Report, list[float]]:
    slept: list[float] = []
    with fake.mocked():
        report = checkserver.run(Options(BASE, **options), sleep=slept.append)  # type: ignore[arg-type]
    return report, slept


def not_passing(report: Report) -> dict[str, str]:
    return {c.id: c.status for c in report.checks if c.status in (WARN, FAIL)}


def by_id(report: Report, cid: str) -> checkserver.Check:
    return next(c for c in report.checks if c.id == cid)


# -- the complete server -----------------------------------------------------------------------


def test_complete_server_passes_every_check_and_write_leaves_nothing(samples: Path) -> None:
    fake = FakeFhirServer()

    report, _ = check(fake, write=True, samples_dir=samples)

    assert not_passing(report) == {}
    assert report.exit_code == 0
    scenarios = [c for c in report.checks if c.group == "scenario"]
    assert [c.id for c in scenarios] == [f"scenario.{s}" for s in sorted(SUBSET)]
    assert all(c.status == PASS for c in scenarios)
    assert by_id(report, "write.rerun").status == PASS
    assert fake.all() == []  # everything created was deleted
    # The data checks ran on a loaded patient with several CBC dates, so sort and paging
    # were really exercised (not "not enough data").
    assert "newest first" in by_id(report, "search.sort").reason
    assert "pages of 2" in by_id(report, "search.paging").reason


def test_read_only_run_writes_nothing_and_checks_the_given_patient() -> None:
    fake = FakeFhirServer()
    pid = preload(fake)
    before = len(fake.all())

    report, _ = check(fake, patient=pid)

    assert not_passing(report) == {}
    assert {r.method for r in fake.requests} == {"GET"}
    assert len(fake.all()) == before
    assert by_id(report, "search.cbc").request.startswith(f"GET Observation?patient={pid}&code=")


def test_read_only_run_finds_a_patient_by_a_cbc_search() -> None:
    fake = FakeFhirServer()
    pid = preload(fake)

    report, _ = check(fake)

    assert report.patient.startswith(f"Patient/{pid}")
    assert by_id(report, "read.patient").status == PASS


def test_an_empty_server_says_the_data_checks_could_not_run_and_does_not_fail() -> None:
    report, _ = check(FakeFhirServer())

    assert not_passing(report) == {"find-patient": WARN}
    assert "--patient" in by_id(report, "find-patient").reason
    assert by_id(report, "search.sort").status == SKIP
    assert report.exit_code == 0


# -- servers lacking one capability ------------------------------------------------------------


def test_server_ignoring_sort_fails_the_sort_check_only(samples: Path) -> None:
    report, _ = check(FakeFhirServer(sort=False), write=True, samples_dir=samples)

    assert not_passing(report) == {"search.sort": FAIL}
    sort = by_id(report, "search.sort")
    assert "_sort=-date ignored" in sort.reason
    assert sort.request.startswith("GET Observation?") and "_sort=-date" in sort.request
    assert report.exit_code == 1


def test_server_always_answering_newest_first_only_warns_on_sort(samples: Path) -> None:
    report, _ = check(
        FakeFhirServer(sort=False, newest_first=True), write=True, samples_dir=samples
    )

    assert not_passing(report) == {"search.sort": WARN}
    assert "newest first whatever _sort says" in by_id(report, "search.sort").reason
    assert report.exit_code == 0


def test_server_refusing_sort_fails_each_search_that_sends_it_and_says_so() -> None:
    fake = FakeFhirServer(reject_sort=True)
    pid = preload(fake)

    report, _ = check(fake, patient=pid)

    sorted_searches = {
        "search.cbc",
        "search.labReports",
        "search.temperatures",
        "search.vitaminLevels",
    }
    assert not_passing(report) == dict.fromkeys(
        sorted_searches | {"search.sort", "search.paging"}, FAIL
    )
    for cid in sorted_searches:
        assert by_id(report, cid).reason.startswith("refused because of _sort=-date")
    assert by_id(report, "search.medications").status == PASS  # sends no _sort


def test_cleanup_deletes_only_what_carries_its_identifiers(samples: Path) -> None:
    fake = FakeFhirServer(identifier_search=False)  # identifier=... matches everything
    someone_elses = fake.add(
        {
            "resourceType": "RiskAssessment",
            "status": "final",
            "identifier": [{"system": "urn:other", "value": "theirs"}],
        }
    )

    report, _ = check(fake, write=True, samples_dir=samples)

    assert fake.all() == [someone_elses]
    assert by_id(report, "write.cleanup").status == PASS


def test_server_without_next_links_fails_the_paging_check_only(samples: Path) -> None:
    report, _ = check(FakeFhirServer(paging=False), write=True, samples_dir=samples)

    assert not_passing(report) == {"search.paging": FAIL}
    paging = by_id(report, "search.paging")
    assert "no next link" in paging.reason
    assert "_count=2" in paging.request
    assert report.exit_code == 1


def test_server_without_transactions_fails_the_transaction_check_with_write(
    samples: Path,
) -> None:
    fake = FakeFhirServer(transaction=False)

    report, _ = check(fake, write=True, samples_dir=samples)

    assert not_passing(report) == {"write.transaction": FAIL}
    tx = by_id(report, "write.transaction")
    assert "405" in tx.reason and "transaction" in tx.reason
    # Loading fell back to single creates; the rerun needs write-back, so it says why not.
    assert "one create at a time" in by_id(report, "write.load").reason
    assert by_id(report, "write.rerun").status == SKIP
    assert fake.all() == []


def test_server_without_transactions_warns_when_read_only() -> None:
    fake = FakeFhirServer(transaction=False)
    pid = preload(fake)

    report, _ = check(fake, patient=pid)

    assert not_passing(report) == {"write.transaction": WARN}
    assert "not declared" in by_id(report, "write.transaction").reason
    assert report.exit_code == 0


def test_server_answering_401_fails_the_access_check_and_skips_the_data_checks(
    samples: Path,
) -> None:
    fake = FakeFhirServer(token="the-right-token")

    report, _ = check(fake, write=True, samples_dir=samples)

    assert not_passing(report) == {"access": FAIL}
    access = by_id(report, "access")
    assert "401" in access.reason and "credentials" in access.reason
    assert access.request == "GET Patient?_count=1"
    assert by_id(report, "search.cbc").status == SKIP
    assert by_id(report, "write.load").status == SKIP
    assert report.exit_code == 1


def test_the_same_server_with_its_token_passes(samples: Path) -> None:
    report, _ = check(
        FakeFhirServer(token="the-right-token"),
        auth="the-right-token",
        write=True,
        samples_dir=samples,
    )

    assert not_passing(report) == {}


def test_server_answering_429_with_retry_after_warns_on_that_query_and_waits(
    samples: Path,
) -> None:
    fake = FakeFhirServer(rate_limit=1, retry_after="3")

    report, slept = check(fake, write=True, samples_dir=samples)

    assert not_passing(report) == {"search.cbc": WARN}
    cbc = by_id(report, "search.cbc")
    assert "HTTP 429 with Retry-After 3 s" in cbc.reason
    assert cbc.http_status == 429
    assert 3.0 in slept


def test_server_that_keeps_answering_429_fails_that_query_naming_the_rate_limit() -> None:
    fake = FakeFhirServer()
    pid = preload(fake)
    fake.rate_limit = 3  # the client tries three times

    report, slept = check(fake, patient=pid)

    assert not_passing(report) == {"search.cbc": FAIL}
    assert "rate limited: HTTP 429 with Retry-After 3 s" in by_id(report, "search.cbc").reason
    assert slept == [3.0, 3.0]


def test_server_with_html_error_pages_warns_on_the_operation_outcome_check_only(
    samples: Path,
) -> None:
    report, _ = check(FakeFhirServer(html_errors=True), write=True, samples_dir=samples)

    assert not_passing(report) == {"errors.operation-outcome": WARN}
    reason = by_id(report, "errors.operation-outcome").reason
    assert "text/html, not an OperationOutcome" in reason
    assert report.exit_code == 0


def test_scenario_differing_from_its_expected_output_fails_with_the_difference(
    samples: Path,
) -> None:
    stem = "13-progressive-decline"
    expected_file = samples / f"{stem}.expected.json"
    expected = orjson.loads(expected_file.read_bytes())
    for entry in expected["entry"]:
        for p in entry["resource"].get("prediction", []):
            p["qualitativeRisk"]["coding"][0]["code"] = "certain"
    expected_file.write_bytes(orjson.dumps(expected))

    report, _ = check(FakeFhirServer(), write=True, samples_dir=samples)

    assert not_passing(report) == {f"scenario.{stem}": FAIL}
    assert "expected certain" in by_id(report, f"scenario.{stem}").reason


# -- reports and the command line --------------------------------------------------------------


def test_junit_report_has_a_testcase_per_check_and_fails_only_the_failed_ones() -> None:
    fake = FakeFhirServer(sort=False)
    pid = preload(fake)
    report, _ = check(fake, patient=pid)

    root = ET.fromstring(checkserver.render_junit(report))

    suite = root.find("testsuite")
    assert suite is not None
    cases = suite.findall("testcase")
    assert len(cases) == len(report.checks)
    failed = [c.get("name") for c in cases if c.find("failure") is not None]
    assert failed == ["search.sort"]
    assert suite.get("failures") == "1"


def test_text_report_is_one_screen_and_names_the_failure() -> None:
    fake = FakeFhirServer(sort=False)
    pid = preload(fake)
    report, _ = check(fake, patient=pid)

    text = checkserver.render_text(report)

    assert len(text.splitlines()) <= 30
    assert "FAIL  _sort=-date honoured" in text
    assert text.rstrip().endswith("Failed: search.sort")


def test_cli_exit_codes_and_json_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeFhirServer(sort=False)
    pid = preload(fake)
    out = tmp_path / "report.json"

    with fake.mocked():
        code = main(
            [
                "check-server",
                "--fhir-base",
                BASE,
                "--patient",
                pid,
                "--format",
                "json",
                "--output",
                str(out),
            ]
        )

    assert code == 1
    doc = orjson.loads(out.read_bytes())
    assert doc["result"] == "fail" and doc["exitCode"] == 1
    assert [c["id"] for c in doc["checks"] if c["status"] == FAIL] == ["search.sort"]
    assert "Failed: search.sort" in capsys.readouterr().out  # the summary still on screen


def test_cli_exits_0_when_every_required_check_passes() -> None:
    fake = FakeFhirServer()
    pid = preload(fake)

    with fake.mocked():
        assert main(["check-server", "--fhir-base", BASE, "--patient", pid]) == 0


def test_cli_bad_usage_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as missing:
        main(["check-server"])
    assert missing.value.code == 2
    assert main(["check-server", "--fhir-base", "ftp://example.org/fhir"]) == 2
    empty = tmp_path / "none"
    empty.mkdir()
    assert main(["check-server", "--fhir-base", BASE, "--write", "--samples", str(empty)]) == 2
    assert "--write needs the sample scenarios" in capsys.readouterr().err


def test_cli_smart_backend_services_gets_a_token_and_asks_for_write_scopes(
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(private_pem())
    token_url = "https://auth.example.org/token"
    fake = FakeFhirServer(token="smart-token")
    samples = tmp_path / "samples"
    samples.mkdir()
    for name in ("expectations.json", f"{PRELOADED}.json", f"{PRELOADED}.expected.json"):
        shutil.copy(SAMPLES / name, samples)

    with fake.mocked() as router:
        token = router.post(token_url).mock(
            return_value=httpx.Response(
                200, json={"access_token": "smart-token", "token_type": "bearer", "expires_in": 300}
            )
        )
        code = main(
            [
                "check-server",
                "--fhir-base",
                BASE,
                "--write",
                "--samples",
                str(samples),
                "--smart-token-url",
                token_url,
                "--smart-client-id",
                "leuko-check",
                "--smart-key-file",
                str(key_file),
                "--smart-kid",
                "k1",
            ]
        )

    assert code == 0
    form = httpx.QueryParams(token.calls.last.request.content.decode())
    assert form["scope"] == checkserver.WRITE_SCOPE
    claims = jwt.decode(
        form["client_assertion"], RSA_KEY.public_key(), algorithms=["RS384"], audience=token_url
    )
    assert claims["iss"] == "leuko-check"
    assert fake.all() == []


def test_unreachable_server_fails_the_capability_check_and_skips_the_rest() -> None:
    slept: list[float] = []
    with respx.mock(assert_all_mocked=True) as router:
        router.route(url__startswith=BASE).mock(side_effect=httpx.ConnectError("refused"))
        report = checkserver.run(Options(BASE, write=True), sleep=slept.append)

    assert not_passing(report) == {"capability": FAIL}
    assert "could not be reached" in by_id(report, "capability").reason
    assert {c.status for c in report.checks if c.id != "capability"} == {SKIP}
    assert report.exit_code == 1


def test_paging_follows_a_few_pages_of_a_long_history_not_all_of_them() -> None:
    fake = FakeFhirServer()
    fake.add({"resourceType": "Patient", "id": "long"})
    for day in range(1, 29):
        fake.add(
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "6690-2"}]},
                "subject": {"reference": "Patient/long"},
                "effectiveDateTime": f"2026-02-{day:02d}T08:00:00Z",
                "valueQuantity": {"value": 3.1, "unit": "10*3/uL"},
            }
        )

    report, _ = check(fake, patient="long")

    paging = by_id(report, "search.paging")
    assert paging.status == PASS
    assert "more than 10 results; the first 5 pages of 2 followed" in paging.reason
    paged = [r for r in fake.requests if r.url.params.get("_count") == "2"]
    assert len(paged) == 5
