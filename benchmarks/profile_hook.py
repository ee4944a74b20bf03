"""Where one CDS Hooks call spends its CPU: the ASGI app driven in-process, no sockets.

Drives ``fhir_leuko.app`` (the same app ``fhir-leuko serve`` runs, JWT check off) through the
ASGI interface with the benchmark's ``patient-view`` body, so the figures are the server's own
Python cost per call without HTTP parsing or the load generator. Prints the time per call
(fastest block of 100), then (``--profile``) the top functions by cumulative and own time under
``cProfile``.

``--stages`` also times the same call with the service's handler cut short after each of its
steps (the request and its context parsed; the data gathered; the evaluation run; the cards
built), so the cost of each step is the difference between two lines, measured the way the
whole call is.

Run: ``.venv/bin/python benchmarks/profile_hook.py [--n 60] [--calls 2000] [--profile] [--stages]``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import pstats
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.http_bench import PARSE_PATH, SERVICE_PATH, bench_app, hook_body  # noqa: E402


async def call(app: Any, path: str, body: bytes) -> tuple[int, bytes]:
    """One POST through the ASGI interface; the status and the response body."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1:8080"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
    }
    sent = False
    status = 0
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


async def run(app: Any, path: str, body: bytes, calls: int, block: int = 100) -> float:
    """Milliseconds per call: the fastest block of ``block`` sequential calls.

    On a shared or virtual machine the mean moves by a third between runs; the fastest
    block is what the code costs when nothing else takes the core.
    """
    status, out = await call(app, path, body)
    if status != 200:
        raise SystemExit(f"{path}: HTTP {status}: {out[:300]!r}")
    best = float("inf")
    for _ in range(max(1, calls // block)):
        started = time.perf_counter()
        for _ in range(block):
            await call(app, path, body)
        best = min(best, (time.perf_counter() - started) * 1000 / block)
    return best


async def main_async(args: argparse.Namespace) -> None:
    app = bench_app()
    body = hook_body(args.n)
    async with app.router.lifespan_context(app):
        for _ in range(2):  # warm caches, then measure
            parse = await run(app, PARSE_PATH, body, args.calls)
            service = await run(app, SERVICE_PATH, body, args.calls)
        print(
            f"{args.n} Observations ({len(body) // 1024} KB), {args.calls} calls: "
            f"parse-only {parse:.3f} ms/call, service {service:.3f} ms/call"
        )
        if args.stages:
            await stages(app, body, args.calls)
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            await run(app, SERVICE_PATH, body, args.calls)
            prof.disable()
            stats = pstats.Stats(prof)
            stats.sort_stats("cumulative").print_stats(args.top)
            stats.sort_stats("tottime").print_stats(args.top)


async def stages(app: Any, body: bytes, calls: int) -> None:
    """The call cut short after each step of the patient-view handler (see the docstring)."""
    from fhir_leuko.cdshooks import handlers
    from fhir_leuko.cdshooks import models as m

    key = next(k for k, s in handlers.REGISTRY.items() if s.definition.hook == "patient-view")
    real = handlers.REGISTRY[key]

    async def parsed(call: handlers.HookCall) -> m.CdsResponse:
        call.context(m.PatientViewContext)
        return m.CdsResponse(cards=[])

    async def gathered(call: handlers.HookCall) -> m.CdsResponse:
        await call.gather(call.context(m.PatientViewContext).patientId)
        return m.CdsResponse(cards=[])

    async def assessed(call: handlers.HookCall) -> m.CdsResponse:
        ctx = call.context(m.PatientViewContext)
        call.assess(await call.gather(ctx.patientId), ctx.patientId)
        return m.CdsResponse(cards=[])

    steps = [
        ("request and context parsed, no cards", parsed),
        ("+ prefetch gathered", gathered),
        ("+ evaluation (ingest, cleaning, rules)", assessed),
        ("+ cards and FHIR resources (the service)", real.handle),
    ]
    try:
        parse = await run(app, PARSE_PATH, body, calls)
        print(f"  {'parse-only endpoint':<44} {parse:.3f} ms/call")
        for label, handle in steps:
            handlers.REGISTRY[key] = dataclasses.replace(real, handle=handle)
            took = await run(app, SERVICE_PATH, body, calls)
            print(f"  {label:<44} {took:.3f} ms/call  ({parse / took:.2f} x parse-only)")
    finally:
        handlers.REGISTRY[key] = real


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=60, help="Observations in the prefetch")
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--profile", action="store_true", help="also print a cProfile report")
    ap.add_argument("--stages", action="store_true", help="also time the call step by step")
    ap.add_argument("--top", type=int, default=40, help="rows of each cProfile table")
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
