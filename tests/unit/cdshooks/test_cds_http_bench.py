"""The HTTP benchmark's inputs and comparison routes still work, so its figures stay meaningful."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from cds_conformance import assert_conformant
from fastapi.testclient import TestClient

from benchmarks.http_bench import (
    NOOP_PATH,
    PARSE_PATH,
    SERVICE_PATH,
    bench_app,
    hook_body,
    host_steal,
)


@pytest.mark.parametrize("n", [60, 1200])
def test_benchmark_request_gets_cards_and_the_no_ops_answer(
    n: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BENCH_FEEDBACK_DB", str(tmp_path / "fb.sqlite3"))
    body = hook_body(n)
    headers = {"Content-Type": "application/json"}
    with TestClient(bench_app()) as client:
        answer = client.post(SERVICE_PATH, content=body, headers=headers)
        assert answer.status_code == 200
        cards = answer.json()
        assert_conformant(cards)
        assert cards["cards"], "the benchmark would time a call that finds nothing"
        for path in (NOOP_PATH, PARSE_PATH):
            r = client.post(path, content=body, headers=headers)
            assert (r.status_code, orjson.loads(r.content)) == (200, {"cards": []})


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="steal is read from Linux /proc/stat")
def test_host_steal_counts_forward_and_within_the_machine_total() -> None:
    steal_0, all_0 = host_steal()
    sum(i * i for i in range(200_000))  # let the clock tick
    steal_1, all_1 = host_steal()
    assert all_0 > 0
    assert 0 <= steal_0 <= all_0
    assert steal_1 >= steal_0
    assert all_1 >= all_0


def test_the_benchmark_prefetches_every_key_so_nothing_is_fetched_or_missing() -> None:
    from fhir_leuko.cdshooks.services import PATIENT_VIEW

    prefetch = orjson.loads(hook_body(60))["prefetch"]
    assert set(prefetch) == {q.key for q in PATIENT_VIEW.prefetch}
