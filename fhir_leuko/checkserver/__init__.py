"""``fhir-leuko check-server``: does a FHIR server give fhir-leuko what it needs?

Why a command of its own: before a go-live (or a CI run against a vendor sandbox) an
integration engineer needs one answer per capability fhir-leuko relies on, each with the
request that showed it, not a stack trace from the first thing that broke. The read-only
checks send exactly the searches fhir-leuko sends (``fhirio.queries``), through the project's
own client, and look at what comes back: is it sorted as asked, do the pages link up, does a
LOINC token match only LOINC. ``--write`` goes further: it loads the bundled synthetic
scenarios (``samples/``), runs the same fetch, evaluation and write-back as ``fhir-leuko fetch
--write-back`` for each, compares the clinical result with the sample's expected output, runs it
again to show nothing is written twice, and deletes what it wrote.

Every check ends ``pass``, ``warn`` or ``fail`` (``skip`` when an earlier check made it
impossible). Only a required check can fail; exit status 1 says one did.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Final

import httpx

from fhir_leuko.checkserver.model import (
    CHECK_TAG_SYSTEM,
    FAIL,
    PASS,
    SKIP,
    WARN,
    WRITE_SCOPE,
    Check,
    Options,
    Report,
)
from fhir_leuko.checkserver.reads import Checker, Recorder
from fhir_leuko.checkserver.report import render_json, render_junit, render_text
from fhir_leuko.checkserver.write import (
    Writer,
    default_samples_dir,
    evaluation_time,
    richest,
    sample_inputs,
)
from fhir_leuko.errors import InputError
from fhir_leuko.fhirio.client import FhirClient

__all__ = [
    "CHECK_TAG_SYSTEM",
    "FAIL",
    "PASS",
    "SKIP",
    "WARN",
    "WRITE_SCOPE",
    "Check",
    "Options",
    "Report",
    "default_samples_dir",
    "render_json",
    "render_junit",
    "render_text",
    "run",
]

_LOOPBACK: Final = frozenset({"127.0.0.1", "localhost", "::1"})


def run(
    options: Options,
    *,
    http: httpx.Client | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Report:
    """Run every check against ``options.base_url``; the Report says what passed.

    ``http``: an httpx.Client to send through (tests); its event hooks get our recorder.
    """
    samples_dir = options.samples_dir or default_samples_dir()
    if options.write and not sample_inputs(samples_dir):
        raise InputError(f"--write needs the sample scenarios; none found in {samples_dir}")
    report = Report(options.base_url, options.write)
    recorder = Recorder()
    owns = http is None
    if http is None:
        host = httpx.URL(options.base_url).host
        # A proxy from the environment must not see (or break) traffic to this machine.
        http = httpx.Client(follow_redirects=False, trust_env=host not in _LOOPBACK)
    http.event_hooks["request"].append(recorder.on_request)
    http.event_hooks["response"].append(recorder.on_response)
    try:
        with FhirClient(
            options.base_url,
            auth=options.auth,
            timeouts=options.timeout,
            max_retries=2,
            max_retry_after=30.0,
            client=http,
            sleep=sleep,
        ) as client:
            checker = Checker(options, report, client, recorder)
            checker.check_capability()
            checker.check_access()
            writer: Writer | None = None
            pid: str | None = None
            if options.write and not checker.no_access:
                run_id = f"{datetime.now().strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"
                report.run_tag = f"{CHECK_TAG_SYSTEM}|{run_id}"
                checker.now = evaluation_time(samples_dir)
                writer = Writer(checker, samples_dir, checker.now, run_id)
                writer.load()
                pid = options.patient or richest(writer.scenarios)
                if pid and not options.patient:
                    report.patient = f"Patient/{pid} (loaded scenario with most CBC results)"
            if pid is None and not checker.no_access:
                pid = checker.find_patient()
            checker.read_only(pid)
            if writer is None:
                checker.check_declared_writes()
            checker.check_subscriptions()
            if writer is not None:
                try:
                    writer.evaluate_all()
                    writer.check_conditional_create()
                    writer.rerun()
                finally:
                    writer.cleanup()
            elif options.write:
                checker.skip(
                    "write.load", "load the synthetic scenarios", checker.no_access, group="write"
                )
    finally:
        if owns:
            http.close()
    return report
