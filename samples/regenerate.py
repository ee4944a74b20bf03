"""Regenerate ``samples/NN-name.expected.json`` from the engine — only after reviewing the diff.

The expected outputs are a regression record of what the engine said when a reviewer last
agreed with it. They are NOT the clinical truth: that is ``expectations.json``, written by hand
from ``docs/clinical-rules.md``. So:

1. Run ``.venv/bin/python samples/regenerate.py`` (dry run). It prints a unified diff of every
   output that would change and writes nothing.
2. Read the diff as a clinician. If a change is a wording or id change you intended, or the
   fix of a known engine disagreement, run again with ``--write``. If it changes a risk, a
   row, a finding or an action, check it against ``expectations.json`` and the rules first.
3. ``--write`` never writes an output for a sample marked ``engine_disagrees`` in
   ``expectations.json`` (we do not bless output we believe is wrong). When the engine is
   fixed, remove the mark, run the tests, then regenerate that sample.

Usage: ``python samples/regenerate.py [--write] [--check] [NAME ...]`` (NAME: a sample stem such
as ``06-pancytopenia``). ``--check`` exits 1 when any output differs (for CI). Every output is
``fhir-leuko evaluate FILE --now 2026-03-10T12:00:00Z --format json``, run as a subprocess of
this interpreter so the bytes are exactly what the CLI prints. A sample may carry its own
``evaluation_time`` in ``expectations.json``.
"""

from __future__ import annotations

import argparse
import difflib
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "expectations.json"


def sample_inputs() -> list[Path]:
    """Input Bundles: ``NN-name.json`` (not the expected outputs or the manifest)."""
    return sorted(
        p for p in HERE.glob("[0-9][0-9]-*.json") if not p.name.endswith(".expected.json")
    )


def expected_path(sample: Path) -> Path:
    return sample.with_name(sample.stem + ".expected.json")


def evaluate_cli(sample: Path, now: str) -> bytes:
    """What ``fhir-leuko evaluate SAMPLE --now NOW --format json`` prints."""
    proc = subprocess.run(
        [sys.executable, "-m", "fhir_leuko", "evaluate", str(sample), "--now", now,
         "--format", "json"],
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{sample.name}: fhir-leuko exited {proc.returncode}: "
                         f"{proc.stderr.decode().strip()}")
    return proc.stdout


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="sample stems to regenerate (default: all)")
    ap.add_argument("--write", action="store_true", help="write changed outputs (after review)")
    ap.add_argument("--check", action="store_true", help="exit 1 if any output differs")
    args = ap.parse_args(argv)

    manifest = json.loads(MANIFEST.read_text())
    now = manifest["evaluation_time"]
    samples = sample_inputs()
    if args.names:
        wanted = set(args.names)
        samples = [s for s in samples if s.stem in wanted]
        missing = wanted - {s.stem for s in samples}
        if missing:
            raise SystemExit(f"no such sample: {', '.join(sorted(missing))}")

    changed = 0
    for sample in samples:
        exp = manifest["samples"].get(sample.stem)
        if exp is None:
            print(f"{sample.name}: not in expectations.json - write its expectation first")
            changed += 1
            continue
        target = expected_path(sample)
        if "engine_disagrees" in exp:
            note = " (a stale expected output exists: delete it)" if target.exists() else ""
            print(f"{sample.stem}: skipped, engine disagrees with the rules{note}")
            continue
        new = evaluate_cli(sample, exp.get("evaluation_time", now))
        old = target.read_bytes() if target.exists() else b""
        if new == old:
            continue
        changed += 1
        diff = difflib.unified_diff(
            old.decode().splitlines(keepends=True),
            new.decode().splitlines(keepends=True),
            fromfile=f"{target.name} (current)",
            tofile=f"{target.name} (engine now)",
        )
        sys.stdout.writelines(diff)
        if args.write:
            target.write_bytes(new)
            print(f"{target.name}: written")
    if changed and not args.write:
        print(f"{changed} output(s) differ; review the diff above, then rerun with --write")
    return 1 if (args.check and changed) else 0


if __name__ == "__main__":
    raise SystemExit(main())
