"""Core speed: full evaluation (bytes -> output Bundle bytes) against orjson.loads alone.

Target (issue "clinical core"): evaluation <= 3x the JSON parse of a 1,200-Observation
prefetch. Run: `make bench` or `.venv/bin/python benchmarks/bench_core.py [--n 1200]`.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.generate import make_patient, make_prefetch_bundle  # noqa: E402
from fhir_leuko.fhirio import emit  # noqa: E402
from fhir_leuko.service import evaluate  # noqa: E402

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    for _ in range(5):
        fn()
    times = []
    gc.disable()
    try:
        for _ in range(repeat):
            t0 = time.perf_counter_ns()
            fn()
            times.append(time.perf_counter_ns() - t0)
    finally:
        gc.enable()
    return statistics.median(times) / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1200, help="Observations in the prefetch")
    ap.add_argument("--repeat", type=int, default=200)
    args = ap.parse_args()
    doc = [make_patient(), make_prefetch_bundle(args.n)]
    # Make the latest draw abnormal so the full path (findings, ServiceRequests) runs.
    latest = doc[1]["entry"][0]["resource"]  # type: ignore[index]
    latest["valueQuantity"]["value"] = 2.6
    payload = orjson.dumps(
        {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": doc[0]}, {"resource": doc[1]}],
        }
    )

    def full() -> bytes:
        a = evaluate(payload, now=NOW)
        return orjson.dumps(emit.bundle(a))

    def full_validated() -> bytes:
        a = evaluate(payload, now=NOW)
        out = emit.bundle(a)
        for e in out.get("entry", ()):
            emit.validate(e["resource"])
        return orjson.dumps(out)

    out = orjson.loads(full())
    n_out = len(out.get("entry", []))
    parse = median_ms(lambda: orjson.loads(payload), args.repeat)
    evaluation = median_ms(full, args.repeat)
    validated = median_ms(full_validated, max(20, args.repeat // 4))
    print(f"payload: {len(payload) / 1e6:.2f} MB, {args.n} Observations; output: {n_out} resources")
    print(f"orjson.loads            median {parse:7.2f} ms")
    print(
        f"evaluate bytes->bytes   median {evaluation:7.2f} ms   "
        f"ratio {evaluation / parse:5.2f}x  (target <= 3x)"
    )
    print(
        f"  + R4B model validation median {validated:7.2f} ms   "
        f"ratio {validated / parse:5.2f}x  (tests only)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
