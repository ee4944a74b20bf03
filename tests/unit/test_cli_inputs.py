"""``evaluate`` over several inputs in one process, byte order marks, and a light import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import orjson

from tests.builders import TEMP, at, bundle, cbc, obs, patient

NOW = "2026-03-10T12:00:00Z"
BOM = b"\xef\xbb\xbf"


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "fhir_leuko", "evaluate", *args, "--now", NOW],
        input=stdin,
        capture_output=True,
        check=False,
        timeout=60,
    )


def febrile() -> object:
    return bundle(patient(), cbc(1.2, 0.4), obs(TEMP, 38.6, at()))


def normal() -> object:
    return bundle(patient(), cbc(6.5, 3.8))


def codes(out_bundle: dict[str, object]) -> list[str]:
    """The resource types an output Bundle holds (none for a normal CBC)."""
    return [e["resource"]["resourceType"] for e in out_bundle.get("entry", [])]  # type: ignore[attr-defined]


def single_output(doc: object, tmp_path: Path) -> dict[str, object]:
    f = tmp_path / "one.json"
    f.write_bytes(orjson.dumps(doc))
    r = run(str(f))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def test_several_files_give_one_ndjson_line_each_in_order(tmp_path: Path) -> None:
    fev, nor = febrile(), normal()
    (tmp_path / "a.json").write_bytes(orjson.dumps(fev))
    (tmp_path / "b.json").write_bytes(orjson.dumps(nor))
    r = run(str(tmp_path / "b.json"), str(tmp_path / "a.json"))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2
    outs = [json.loads(line) for line in lines]
    # Each line is the Bundle a single-file run prints for that input, in argument order.
    assert outs[0] == single_output(nor, tmp_path) and codes(outs[0]) == []
    assert outs[1] == single_output(fev, tmp_path) and "RiskAssessment" in codes(outs[1])


def test_a_directory_is_its_json_and_ndjson_files_by_name(tmp_path: Path) -> None:
    (tmp_path / "2-normal.json").write_bytes(orjson.dumps(normal()))
    (tmp_path / "1-febrile.json").write_bytes(orjson.dumps(febrile()))
    (tmp_path / "3-two.ndjson").write_bytes(
        orjson.dumps(normal()) + b"\n\n" + orjson.dumps(febrile()) + b"\n"
    )
    (tmp_path / "notes.txt").write_text("not an input")
    r = run(str(tmp_path))
    assert r.returncode == 0, r.stderr
    outs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [bool(codes(o)) for o in outs] == [True, False, False, True]


def test_text_reports_come_under_a_header_naming_each_input(tmp_path: Path) -> None:
    f = tmp_path / "two.ndjson"
    f.write_bytes(orjson.dumps(febrile()) + b"\n" + orjson.dumps(normal()) + b"\n")
    r = run(str(f), "--format", "text")
    assert r.returncode == 0, r.stderr
    text = r.stdout.decode()
    first, second = text.index(f"==> {f}:1 <=="), text.index(f"==> {f}:2 <==")
    assert first < text.index("Febrile neutropenia") < second


def test_a_bad_input_is_named_and_the_others_still_evaluated(tmp_path: Path) -> None:
    f = tmp_path / "mixed.ndjson"
    f.write_bytes(orjson.dumps(febrile()) + b"\n" + b'{"hello": "world"}\n')
    r = run(str(f), str(tmp_path / "missing.json"))
    assert r.returncode == 2
    outs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [o["resourceType"] for o in outs] == ["Bundle", "OperationOutcome", "OperationOutcome"]
    assert codes(outs[0])
    assert outs[1]["issue"][0]["diagnostics"].startswith(f"{f}:2: ")
    assert outs[2]["issue"][0]["diagnostics"] == f"{tmp_path / 'missing.json'}: no such file"
    stderr = r.stderr.decode().splitlines()
    assert len(stderr) == 2 and f"{f}:2" in stderr[0] and "missing.json" in stderr[1]


def test_standard_input_as_ndjson(tmp_path: Path) -> None:
    r = run("-", "--ndjson", stdin=orjson.dumps(normal()) + b"\n" + orjson.dumps(febrile()))
    assert r.returncode == 0, r.stderr
    assert [bool(codes(json.loads(line))) for line in r.stdout.splitlines()] == [False, True]


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    doc = febrile()
    plain = single_output(doc, tmp_path)
    f = tmp_path / "bom.json"
    f.write_bytes(BOM + orjson.dumps(doc))
    r = run(str(f))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == plain
    stdin = run("-", stdin=BOM + orjson.dumps(doc))
    assert stdin.returncode == 0 and json.loads(stdin.stdout) == plain
    nd = tmp_path / "bom.ndjson"
    nd.write_bytes(BOM + orjson.dumps(doc) + b"\n" + orjson.dumps(doc) + b"\n")
    r = run(str(nd))
    assert r.returncode == 0, r.stderr
    assert [json.loads(line) for line in r.stdout.splitlines()] == [plain, plain]


def test_evaluate_does_not_import_the_server_or_http_stack(tmp_path: Path) -> None:
    """httpx, PyJWT and FastAPI cost most of the CLI's start; ``evaluate`` needs none."""
    f = tmp_path / "in.json"
    f.write_bytes(orjson.dumps(febrile()))
    probe = (
        "import io, sys\n"
        "from fhir_leuko import cli\n"
        "sys.stdout = io.TextIOWrapper(io.BytesIO())\n"
        f"code = cli.main(['evaluate', {str(f)!r}, '--now', {NOW!r}])\n"
        "sys.stdout = sys.__stdout__\n"
        "heavy = ('httpx', 'jwt', 'fastapi', 'starlette', 'uvicorn', 'cryptography')\n"
        "print(code, sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, check=False, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().split() == ["0", "[]"]


def test_load_json_skips_a_byte_order_mark_in_bytes_and_text() -> None:
    from fhir_leuko.fhirio.ingest import load_json

    assert load_json(BOM + b'{"a": 1}') == {"a": 1} == load_json('\ufeff{"a": 1}')
