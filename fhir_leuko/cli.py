"""Command line: ``fhir-leuko evaluate | serve | config``.

Exit codes: 0 success (also when nothing is found), 2 unreadable or non-FHIR input or bad
configuration (one line on stderr), 3 a FHIR server failed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import orjson

from fhir_leuko import __version__
from fhir_leuko.config import load_settings
from fhir_leuko.errors import ConfigError, FhirServerError, InputError, LeukoError
from fhir_leuko.fhirio import emit
from fhir_leuko.render import text_report
from fhir_leuko.service import evaluate

EXIT_INPUT = 2
EXIT_SERVER = 3


def _parse_now(raw: str) -> datetime:
    try:
        dt = datetime.fromisoformat(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--now '{raw}' is not an ISO-8601 date-time") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fhir-leuko", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"fhir-leuko {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("evaluate", help="evaluate a FHIR Bundle (or list of resources) file")
    ev.add_argument("file", help="FHIR JSON file, or - for standard input")
    ev.add_argument("--now", type=_parse_now, help="evaluation time, ISO-8601 (default: now, UTC)")
    ev.add_argument("--format", choices=("json", "text"), default="json")
    ev.add_argument("--config", help="TOML configuration file")

    sv = sub.add_parser("serve", help="run the HTTP service (CDS Hooks and notifications)")
    sv.add_argument("--host")
    sv.add_argument("--port", type=int)
    sv.add_argument("--config", help="TOML configuration file")
    sv.add_argument(
        "--insecure-dev",
        action="store_true",
        help="accept CDS calls without a JWT (local development only)",
    )

    cf = sub.add_parser("config", help="print the effective configuration (secrets redacted)")
    cf.add_argument("--config", help="TOML configuration file")
    return p


def _read(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a FHIR JSON file") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None


def _evaluate(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    data = _read(args.file)
    try:
        assessment = evaluate(data, now=args.now, thresholds=settings.thresholds)
    except InputError as exc:
        raise InputError(f"{args.file}: {exc}") from None
    if args.format == "text":
        sys.stdout.write(text_report(assessment))
    else:
        out = emit.bundle(assessment)
        sys.stdout.buffer.write(orjson.dumps(out, option=orjson.OPT_INDENT_2) + b"\n")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from fhir_leuko.app import create_app

    settings = load_settings(args.config)
    svc = settings.service
    if args.insecure_dev:
        import dataclasses

        svc = dataclasses.replace(svc, insecure_dev=True)
        settings = dataclasses.replace(settings, service=svc)
    app = create_app(settings)
    uvicorn.run(
        app,
        host=args.host or svc.host,
        port=args.port or svc.port,
        log_level="info",
        access_log=False,
    )
    return 0


def _config(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    sys.stdout.buffer.write(orjson.dumps(settings.audit(), option=orjson.OPT_INDENT_2) + b"\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "serve":
            return _serve(args)
        return _config(args)
    except (InputError, ConfigError) as exc:
        print(f"fhir-leuko: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except FhirServerError as exc:
        print(f"fhir-leuko: FHIR server error: {exc}", file=sys.stderr)
        return EXIT_SERVER
    except LeukoError as exc:
        print(f"fhir-leuko: error: {exc}", file=sys.stderr)
        return EXIT_INPUT


if __name__ == "__main__":
    raise SystemExit(main())
