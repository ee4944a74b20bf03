"""``fhir-leuko serve`` as a real process on 127.0.0.1, for tests that need one."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_process(workdir: Path, *argv: str, **env: str) -> Iterator[tuple[str, Path]]:
    """Start ``serve`` (insecure dev, no worker) in ``workdir`` on a free port; yield its base
    URL and log file once it answers; stop it on exit. ``env`` adds FHIR_LEUKO_* settings."""
    port = free_port()
    log = workdir / "serve.log"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_LEUKO_")} | {
        "FHIR_LEUKO_INSECURE_DEV": "1",
        "FHIR_LEUKO_PORT": str(port),
        "FHIR_LEUKO_WORKER_ENABLED": "0",
        # This checkout's fhir_leuko, whatever the environment has installed.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        **env,
    }
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fhir_leuko", "serve", *argv],
            cwd=workdir,  # the SQLite files land here
            env=environ,
            stdout=err,
            stderr=err,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"serve exited with {proc.returncode}: {log.read_text()[-2000:]}"
                )
            try:
                # Any answer will do: discovery may rightly want a JWT (401).
                if httpx.get(f"{base}/cds-services", timeout=1, trust_env=False).status_code < 500:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"serve did not answer within 30 s: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield base, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
