"""The CLI as a user runs it: exit codes, stdout only the Bundle, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import orjson

from tests.builders import TEMP, WBC, at, bundle, cbc, obs, patient


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "fhir_leuko", *args],
        input=stdin,
        capture_output=True,
        check=False,
        timeout=60,
    )


def write(tmp_path: Path, doc: object) -> str:
    p = tmp_path / "in.json"
    p.write_bytes(orjson.dumps(doc))
    return str(p)


def test_json_output_is_only_the_bundle(tmp_path: Path) -> None:
    f = write(tmp_path, bundle(patient(), cbc(1.2, 0.4), obs(TEMP, 38.6, at())))
    r = run("evaluate", f, "--now", "2026-03-10T12:00:00Z")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["resourceType"] == "Bundle" and out["type"] == "collection"
    assert r.stderr == b""


def test_text_output_reads_as_a_summary(tmp_path: Path) -> None:
    f = write(tmp_path, bundle(patient(), cbc(1.2, 0.4), obs(TEMP, 38.6, at())))
    r = run("evaluate", f, "--now", "2026-03-10T12:00:00Z", "--format", "text")
    text = r.stdout.decode()
    assert r.returncode == 0
    assert (
        "[CRITICAL]" in text
        and "Febrile neutropenia" in text
        and "[urgent-evaluation, stat]" in text
    )


def test_normal_cbc_exits_zero(tmp_path: Path) -> None:
    f = write(tmp_path, bundle(patient(), cbc(6.5, 3.8)))
    assert run("evaluate", f).returncode == 0


def test_non_fhir_input_exits_2_with_one_line(tmp_path: Path) -> None:
    f = write(tmp_path, {"hello": "world"})
    r = run("evaluate", f)
    assert r.returncode == 2 and r.stdout == b""
    assert r.stderr.decode().count("\n") == 1 and "not FHIR" in r.stderr.decode()


def test_unreadable_file_exits_2() -> None:
    r = run("evaluate", "/no/such/file.json")
    assert r.returncode == 2 and b"no such file" in r.stderr


def test_bad_now_is_rejected() -> None:
    r = run("evaluate", "-", "--now", "yesterday", stdin=b"{}")
    assert r.returncode == 2 and b"ISO-8601" in r.stderr


def test_config_override_changes_a_threshold(tmp_path: Path) -> None:
    cfg = tmp_path / "site.toml"
    cfg.write_text("[thresholds]\nwbc_lln_adult = 3.0\n")
    f = write(tmp_path, bundle(patient(), cbc(3.5, 2.0)))
    default = json.loads(run("evaluate", f).stdout)
    site = json.loads(run("evaluate", f, "--config", str(cfg)).stdout)
    assert "entry" in default and "entry" not in site


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    cfg = tmp_path / "site.toml"
    cfg.write_text("[thresholds]\nwbc_lnn_adult = 3.0\n")
    f = write(tmp_path, bundle(patient(), cbc(3.5, 2.0)))
    r = run("evaluate", f, "--config", str(cfg))
    assert r.returncode == 2 and b"unknown setting 'thresholds.wbc_lnn_adult'" in r.stderr


def test_config_command_redacts_nothing_it_should_not_and_shows_origins(tmp_path: Path) -> None:
    cfg = tmp_path / "site.toml"
    cfg.write_text("[thresholds]\nwbc_lln_adult = 3.5\n")
    r = run("config", "--config", str(cfg))
    out = json.loads(r.stdout)
    assert out["thresholds"]["wbc_lln_adult"] == 3.5
    assert out["origins"]["thresholds.wbc_lln_adult"] == str(cfg)


def test_an_input_with_two_patients_names_the_option_and_evaluates_the_one_named(
    tmp_path: Path,
) -> None:
    other = [obs(WBC, 6.0, at(), patient="p2"), obs(TEMP, 38.9, at(), patient="p2")]
    f = write(tmp_path, bundle(patient(), patient(pid="p2"), cbc(1.8, 0.35), other))
    refused = run("evaluate", f, "--now", "2026-03-10T12:00:00Z")
    assert refused.returncode == 2 and refused.stdout == b""
    assert b"more than one patient" in refused.stderr and b"--patient ID" in refused.stderr
    r = run("evaluate", f, "--now", "2026-03-10T12:00:00Z", "--patient", "p1", "--format", "text")
    assert r.returncode == 0, r.stderr
    text = r.stdout.decode()
    # p1's severe neutropenia, afebrile: p2's newer normal count and fever are not hers.
    assert "Patient/p1" in text and "Severe neutropenia" in text and "Febrile" not in text
    assert "2 Observation resources belong to another patient" in text
