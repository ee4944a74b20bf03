"""The report: one screen of text, JSON, or JUnit XML for CI."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import asdict
from typing import Final

import orjson

from fhir_leuko.checkserver.model import FAIL, PASS, SKIP, WARN, Check, Report, plural

_MAX_SHOWN: Final = 160


_MARK: Final = {PASS: "PASS", WARN: "WARN", FAIL: "FAIL", SKIP: "skip"}


def render_text(report: Report) -> str:
    """One screen: a line per check, the request under what did not pass, the verdict."""
    lines = [f"fhir-leuko check-server  {report.base_url}"]
    about = [x for x in (report.server, report.patient and f"patient {report.patient}") if x]
    if about:
        lines.append("  " + " · ".join(about))
    if report.run_tag:
        lines.append(f"  --write run tag: {report.run_tag}")
    lines.append("")
    scenarios = [c for c in report.checks if c.group == "scenario"]
    others = [c for c in report.checks if c.group != "scenario"]
    i = 0
    while i < len(others):
        c = others[i]
        same = 1
        while (
            c.status == SKIP
            and i + same < len(others)
            and (others[i + same].status, others[i + same].reason) == (SKIP, c.reason)
        ):
            same += 1
        if same > 1:
            lines.append(_line(SKIP, f"{same} checks ({c.id}, …)", None, c.reason))
        else:
            lines.append(_line(c.status, c.title, c.ms, c.reason))
            if c.status in (FAIL, WARN) and c.request:
                status = f" -> HTTP {c.http_status}" if c.http_status else ""
                lines.append(f"{'':{_INDENT}}{_short_request(c.request)}{status}")
        if scenarios and c.id == "write.load":
            lines.extend(_scenario_lines(scenarios))
        i += same
    counts = Counter(c.status for c in report.checks)
    verdict = "FAIL" if report.failed else "PASS"
    lines.append("")
    lines.append(
        f"{verdict}: {counts[PASS]} passed, {plural(counts[WARN], 'warning')}, "
        f"{counts[FAIL]} failed, {counts[SKIP]} skipped (exit {report.exit_code})"
    )
    if report.failed:
        lines.append("Failed: " + ", ".join(c.id for c in report.failed))
    return "\n".join(lines) + "\n"


_TITLE_WIDTH: Final = 34
_INDENT: Final = 8


def _line(status: str, title: str, ms: float | None, reason: str) -> str:
    took = f"{ms:6.0f} ms" if ms else ""
    return f"{_MARK[status]}  {title[:_TITLE_WIDTH]:<{_TITLE_WIDTH}} {took:>9}  {reason}"


def _short_request(request: str) -> str:
    """For the screen: a long code list as its first code and a count, then cut to fit."""

    def fold(m: re.Match[str]) -> str:
        values = m.group(2).split(",")
        return m.group(1) + (f"{values[0]},…+{len(values) - 1}" if len(values) > 2 else m.group(2))

    text = re.sub(r"((?:^|[?&])code=)([^&]*)", fold, request)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 1] + "…"


def _scenario_lines(scenarios: list[Check]) -> list[str]:
    """The scenarios as one line (a line each for those that did not pass)."""
    bad = [c for c in scenarios if c.status in (FAIL, WARN, SKIP)]
    ok = sum(1 for c in scenarios if c.status == PASS)
    status = FAIL if any(c.status == FAIL for c in bad) else (WARN if bad else PASS)
    total_ms = sum(c.ms or 0 for c in scenarios)
    reason = f"{ok}/{len(scenarios)} match their expected output (risk, findings, actions)"
    lines = [_line(status, "scenarios (fetch, evaluate)", total_ms, reason)]
    for c in bad[:6]:
        lines.append(f"{'':{_INDENT}}{_MARK[c.status]} {c.title}: {c.reason}")
    if len(bad) > 6:
        lines.append(f"{'':{_INDENT}}… and {len(bad) - 6} more (see --format json)")
    return lines


def render_json(report: Report) -> bytes:
    doc = {
        "base": report.base_url,
        "result": "fail" if report.failed else "pass",
        "exitCode": report.exit_code,
        "server": report.server,
        "fhirVersion": report.fhir_version,
        "patient": report.patient,
        "write": report.write,
        "runTag": report.run_tag,
        "remaining": report.remaining,
        "checks": [asdict(c) for c in report.checks],
    }
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"


def render_junit(report: Report) -> bytes:
    """JUnit XML: a testcase per check; fail is a failure, skip is skipped, warn passes
    (with the warning in system-out) so a CI pipeline fails only on what fhir-leuko needs."""
    suite = ET.Element(
        "testsuite",
        name="fhir-leuko check-server",
        tests=str(len(report.checks)),
        failures=str(len(report.failed)),
        errors="0",
        skipped=str(sum(1 for c in report.checks if c.status == SKIP)),
        time=f"{sum(c.ms or 0 for c in report.checks) / 1000:.3f}",
    )
    props = ET.SubElement(suite, "properties")
    for name, value in (
        ("base", report.base_url),
        ("server", report.server),
        ("runTag", report.run_tag),
    ):
        ET.SubElement(props, "property", name=name, value=value)
    for c in report.checks:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"check-server.{c.group}",
            name=c.id,
            time=f"{(c.ms or 0) / 1000:.3f}",
        )
        detail = f"{c.reason}\nrequest: {c.request or '-'}" + (
            f" -> HTTP {c.http_status}" if c.http_status else ""
        )
        if c.status == FAIL:
            ET.SubElement(case, "failure", message=c.reason, type="check-failed").text = detail
        elif c.status == SKIP:
            ET.SubElement(case, "skipped", message=c.reason)
        else:
            ET.SubElement(case, "system-out").text = f"{c.status.upper()}: {detail}"
    root = ET.Element(
        "testsuites",
        name="fhir-leuko check-server",
        tests=suite.get("tests", "0"),
        failures=suite.get("failures", "0"),
    )
    root.append(suite)
    ET.indent(root)
    xml: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return xml + b"\n"
