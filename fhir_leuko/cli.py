"""Command line: ``fhir-leuko evaluate | serve | config | fetch | subscribe | check-server``.

Exit codes: 0 success (also when nothing is found), 2 unreadable or non-FHIR input or bad
configuration (one line on stderr), 3 a FHIR server failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from fhir_leuko import __version__, logs
from fhir_leuko.config import DERIVED_BASE_URL, load_settings, local_base_url
from fhir_leuko.errors import ConfigError, FhirServerError, InputError, LeukoError
from fhir_leuko.fhirio import emit
from fhir_leuko.fhirio.ingest import load_json
from fhir_leuko.render import text_report
from fhir_leuko.service import evaluate

if TYPE_CHECKING:
    from fhir_leuko.fhirio.client import FhirClient

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

    ev = sub.add_parser(
        "evaluate",
        help="evaluate FHIR Bundle (or list of resources) files",
        description="Evaluates each input: a FHIR JSON file (a Bundle, a list of resources or"
        " one resource), each line of an NDJSON file (*.ndjson, *.jsonl, or any file with"
        " --ndjson), and the *.json, *.ndjson and *.jsonl files directly in a directory (by"
        " name). One FILE that is a JSON file or -: one output Bundle, indented. Anything else:"
        " one output per input, in input order - with --format json one line per input (NDJSON:"
        " the output Bundle, or an OperationOutcome naming the input that could not be read),"
        " with --format text each report under a '==> NAME <==' header. Exit 0 when every"
        " input was evaluated, 2 when any could not be (the others are still evaluated).",
    )
    ev.add_argument(
        "file", nargs="+", help="FHIR JSON or NDJSON file, directory, or - for standard input"
    )
    ev.add_argument(
        "--ndjson", action="store_true", help="read every FILE (and -) as NDJSON, one input a line"
    )
    ev.add_argument("--now", type=_parse_now, help="evaluation time, ISO-8601 (default: now, UTC)")
    ev.add_argument(
        "--patient",
        metavar="ID",
        help="evaluate this patient (the Patient id): needed when an input holds several"
        " patients' data; the others' resources are left out and counted in the output",
    )
    ev.add_argument(
        "--format",
        choices=("json", "text", "html"),
        default="json",
        help="json: the output Bundle; text: a summary; html: one self-contained page with the "
        "CBC trend chart and the assessment",
    )
    ev.add_argument("--config", help="TOML configuration file")

    sv = sub.add_parser("serve", help="run the HTTP service (CDS Hooks and notifications)")
    sv.add_argument("--host")
    sv.add_argument("--port", type=int)
    sv.add_argument("--workers", type=int, help="server processes (default 1)")
    sv.add_argument("--config", help="TOML configuration file")
    sv.add_argument(
        "--insecure-dev",
        action="store_true",
        help="accept CDS calls without a JWT (local development only)",
    )

    cf = sub.add_parser("config", help="print the effective configuration (secrets redacted)")
    cf.add_argument("--config", help="TOML configuration file")
    _add_fhir_commands(sub)
    return p


def _add_fhir_commands(sub: Any) -> None:
    """``fetch`` and ``subscribe``: the two commands that talk to a FHIR server."""
    fe = sub.add_parser(
        "fetch",
        help="read a patient's data from a FHIR server and evaluate it",
        description="Reads what the CDS prefetch reads (Patient, CBC, temperatures, B12/folate,"
        " medications, conditions, open orders), evaluates, prints the result; with"
        " --write-back also writes the RiskAssessment and ServiceRequests (conditional"
        " creates: running it twice creates nothing new).",
    )
    fe.add_argument("--fhir-base", required=True, help="FHIR R4 base URL")
    fe.add_argument("--patient", required=True, help="Patient id on that server")
    fe.add_argument("--write-back", action="store_true", help="write the results to the server")
    fe.add_argument("--now", type=_parse_now, help="evaluation time, ISO-8601 (default: now)")
    fe.add_argument("--format", choices=("json", "text"), default="json")
    fe.add_argument("--config", help="TOML configuration file (thresholds)")
    fe.add_argument("--token", help=f"bearer token (default: ${TOKEN_ENV})")
    fe.add_argument("--timeout", type=float, default=30.0, help="seconds per request")

    su = sub.add_parser(
        "subscribe",
        help="create the Subscription that notifies us of new CBC results",
        description="Creates an R4 criteria Subscription (or, with --topic, a Backport IG"
        " topic Subscription) whose rest-hook calls ENDPOINT with a secret header, then prints"
        " the [endpoints.NAME] configuration the service needs. Does nothing when the server"
        " already has a Subscription to ENDPOINT.",
    )
    su.add_argument("--fhir-base", required=True, help="FHIR R4 base URL")
    su.add_argument(
        "--endpoint", required=True, help="our notification URL, e.g. https://host/notify/NAME"
    )
    su.add_argument(
        "--secret",
        help=f"the notification secret (default: ${SECRET_ENV}, else a new one is made and "
        "printed once on standard error)",
    )
    su.add_argument("--header-name", default="Authorization", help="header carrying the secret")
    su.add_argument("--topic", help="SubscriptionTopic URL: create a Backport IG Subscription")
    su.add_argument(
        "--content",
        choices=("empty", "id-only", "full-resource"),
        default="id-only",
        help="Backport payload content (with --topic)",
    )
    su.add_argument(
        "--heartbeat", type=int, default=3600, help="Backport heartbeat period, seconds"
    )
    su.add_argument(
        "--no-payload",
        action="store_true",
        help="R4: ask for empty pings instead of the resource",
    )
    su.add_argument("--token", help=f"bearer token (default: ${TOKEN_ENV})")
    su.add_argument("--dry-run", action="store_true", help="print the Subscription, create nothing")

    ck = sub.add_parser(
        "check-server",
        help="check that a FHIR server gives fhir-leuko what it needs",
        description="Read-only checks of every search fhir-leuko sends (sort order, paging,"
        " LOINC tokens, errors, transactions, Subscriptions), each pass/warn/fail with the"
        " request that showed it. --write also loads the synthetic scenarios, runs fetch,"
        " evaluate and write-back twice, compares with the expected output and deletes what"
        " it created. Exit 0: every required check passed; 1: one failed; 2: bad usage.",
    )
    ck.add_argument("--fhir-base", required=True, help="FHIR R4 base URL")
    ck.add_argument("--patient", help="Patient id to check with (default: found by a CBC search)")
    ck.add_argument(
        "--write", action="store_true", help="also write, evaluate and delete synthetic patients"
    )
    ck.add_argument("--format", choices=("text", "json", "junit"), default="text")
    ck.add_argument("--output", help="write the report to this file instead of standard output")
    ck.add_argument("--samples", help="scenario directory for --write (default: the bundled one)")
    ck.add_argument("--config", help="TOML configuration file (thresholds)")
    ck.add_argument("--token", help=f"bearer token (default: ${TOKEN_ENV})")
    ck.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    smart = ck.add_argument_group("SMART Backend Services (instead of --token)")
    smart.add_argument("--smart-token-url", default="", help="the authorisation server's token URL")
    smart.add_argument("--smart-client-id", default="")
    smart.add_argument("--smart-key-file", default="", help="PEM private key (RS384 or ES384)")
    smart.add_argument("--smart-kid", default="", help="key id of that key in your JWKS")
    smart.add_argument("--smart-algorithm", choices=("RS384", "ES384"), default="RS384")
    smart.add_argument("--smart-scope", help="scopes to ask for (default: what the checks need)")


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


NDJSON_SUFFIXES = (".ndjson", ".jsonl")


def _inputs(args: argparse.Namespace) -> Iterator[tuple[str, bytes | InputError]]:
    """Each input of ``evaluate`` as (name, raw JSON), or (name, why it cannot be read)."""
    for arg in args.file:
        paths = [arg]
        if arg != "-" and Path(arg).is_dir():
            paths = sorted(
                str(p)
                for p in Path(arg).iterdir()
                if p.suffix in (".json", *NDJSON_SUFFIXES) and p.is_file()
            )
        for path in paths:
            try:
                data = _read(path)
            except InputError as exc:
                yield path, exc
                continue
            if not (args.ndjson or path.endswith(NDJSON_SUFFIXES)):
                yield path, data
                continue
            # NDJSON: one resource or Bundle a line; a byte order mark only before the first.
            lines = data.removeprefix(b"\xef\xbb\xbf").split(b"\n")
            for number, line in enumerate(lines, 1):
                if line.strip():
                    yield f"{path}:{number}", line


def _evaluate(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    single = (
        len(args.file) == 1
        and not args.ndjson
        and (
            args.file[0] == "-"
            or not (args.file[0].endswith(NDJSON_SUFFIXES) or Path(args.file[0]).is_dir())
        )
    )
    if args.format == "html" and not single:
        raise InputError("--format html writes one page: give one input file")
    failed = False
    out = sys.stdout.buffer
    for name, data in _inputs(args):
        if not single and args.format == "text":
            out.write(f"==> {name} <==\n".encode())
        try:
            if isinstance(data, InputError):
                raise data
            assessment = evaluate(
                data, now=args.now, thresholds=settings.thresholds, patient_id=args.patient
            )
        except InputError as exc:
            message = str(exc) if str(exc).startswith(name) else f"{name}: {exc}"
            if single:
                raise InputError(message) from None
            failed = True
            print(f"fhir-leuko: error: {message}", file=sys.stderr)
            if args.format == "json":
                out.write(orjson.dumps(_outcome(message)) + b"\n")
            else:
                out.write(f"error: {message}\n\n".encode())
            continue
        if args.format == "text":
            out.write(text_report(assessment).encode())
            if not single:
                out.write(b"\n")
        elif args.format == "html":
            from fhir_leuko.web.report import html_report

            configured = settings.origins.get("service.public_base_url") != DERIVED_BASE_URL
            rules = f"{settings.service.public_base_url.rstrip('/')}/rules" if configured else None
            doc = load_json(data) if isinstance(data, bytes | str) else data
            out.write(html_report(assessment, doc, settings.thresholds, rules).encode("utf-8"))
        elif single:
            out.write(orjson.dumps(emit.bundle(assessment), option=orjson.OPT_INDENT_2) + b"\n")
        else:
            out.write(orjson.dumps(emit.bundle(assessment)) + b"\n")
    return EXIT_INPUT if failed else 0


def _outcome(message: str) -> dict[str, Any]:
    """The NDJSON line standing for an input that could not be evaluated."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "invalid", "diagnostics": message}],
    }


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from fhir_leuko import serving
    from fhir_leuko.app import create_app

    settings = load_settings(args.config)
    svc = settings.service
    if args.insecure_dev:
        svc = dataclasses.replace(svc, insecure_dev=True)
        settings = dataclasses.replace(settings, service=svc)
    workers = args.workers or svc.workers
    host, port = args.host or svc.host, args.port or svc.port
    if settings.origins.get("service.public_base_url") == DERIVED_BASE_URL:
        # No public URL configured: JWT aud is this process's own URL, with the flags' port.
        svc = dataclasses.replace(svc, public_base_url=local_base_url(host, port))
        settings = dataclasses.replace(settings, service=svc)
    level = logs.check_level(svc.log_level)
    # The service logs one line per call itself (docs/cds-hooks.md, "Logs"): no access log.
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_config": logs.configure(level, svc.log_format),
        "log_level": level,
        "access_log": False,
        **serving.uvicorn_options(svc),
    }
    if workers > 1:
        # Each process builds its own app from the environment: pass what the flags said.
        # WORKERS matters for safety: with more than one process the JWT replay cache must be
        # the shared SQLite one, or a replayed token could reach a process that has not seen it.
        if args.config:
            os.environ["FHIR_LEUKO_CONFIG"] = str(Path(args.config).resolve())
        if args.insecure_dev:
            os.environ["FHIR_LEUKO_INSECURE_DEV"] = "1"
        os.environ["FHIR_LEUKO_WORKERS"] = str(workers)
        os.environ["FHIR_LEUKO_HOST"] = host
        os.environ["FHIR_LEUKO_PORT"] = str(port)
        os.environ["FHIR_LEUKO_PUBLIC_BASE_URL"] = svc.public_base_url
        _metrics_directory()
        create_app(settings)  # fail here, once, on a bad configuration
        uvicorn.run(
            "fhir_leuko.app:create_app_from_environment", factory=True, workers=workers, **common
        )
        return 0
    uvicorn.run(create_app(settings), **common)
    return 0


def _metrics_directory() -> None:
    """Prometheus multiprocess mode for ``--workers N``: each process writes its samples to
    files in one directory and ``/metrics`` sums them, whichever process answers. Set before
    the processes start (they read it when they import prometheus_client); an operator's own
    ``PROMETHEUS_MULTIPROC_DIR`` is emptied of the last run's files, a fresh one is made
    otherwise."""
    import tempfile

    from fhir_leuko.metrics import MULTIPROC_ENV

    existing = os.environ.get(MULTIPROC_ENV)
    if existing:
        for stale in Path(existing).glob("*.db"):
            stale.unlink(missing_ok=True)
    else:
        os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="fhir-leuko-metrics-")


TOKEN_ENV = "FHIR_LEUKO_FHIR_TOKEN"
SECRET_ENV = "FHIR_LEUKO_NOTIFY_SECRET"


def _fhir_client(base: str, token: str | None, timeout: float = 30.0) -> FhirClient:
    # Imported here: httpx and PyJWT cost most of a short command's start (`evaluate`).
    from fhir_leuko.fhirio.client import FhirClient

    return FhirClient(base, auth=token or os.environ.get(TOKEN_ENV) or None, timeouts=timeout)


def _fetch(args: argparse.Namespace) -> int:
    from fhir_leuko.fhirio.server import fetch_patient_data, write_back

    settings = load_settings(args.config)
    now = args.now or datetime.now(UTC)
    with _fhir_client(args.fhir_base, args.token, args.timeout) as client:
        data = fetch_patient_data(client, args.patient, now)
        assessment = evaluate(
            data,
            now=now,
            thresholds=settings.thresholds,
            patient_id=args.patient,
            fhir_base=args.fhir_base,
        )
        if args.format == "text":
            sys.stdout.write(text_report(assessment))
        else:
            out = emit.bundle(assessment)
            sys.stdout.buffer.write(orjson.dumps(out, option=orjson.OPT_INDENT_2) + b"\n")
        sys.stdout.flush()
        resources = emit.resources(assessment)
        if args.write_back:
            if not resources:
                print("fhir-leuko: nothing to write back (no finding)", file=sys.stderr)
            else:
                created = write_back(client, resources)
                print(
                    f"fhir-leuko: wrote back {len(resources)} resource(s): {created} created, "
                    f"{len(resources) - created} already there",
                    file=sys.stderr,
                )
    return 0


def _subscribe(args: argparse.Namespace) -> int:
    from fhir_leuko.subscriptions import subscribe as sub

    secret = args.secret or os.environ.get(SECRET_ENV)
    made = secret is None
    header = sub.channel_header(secret or sub.new_secret(), args.header_name)
    if args.topic:
        resource = sub.backport_subscription(
            args.endpoint, header, args.topic, content=args.content, heartbeat_s=args.heartbeat
        )
    else:
        resource = sub.r4_subscription(args.endpoint, header, payload=not args.no_payload)
    if args.dry_run:
        sys.stdout.buffer.write(orjson.dumps(resource, option=orjson.OPT_INDENT_2) + b"\n")
        return 0
    with _fhir_client(args.fhir_base, args.token) as client:
        on_server, created = sub.create_subscription(client, resource)
    sid = on_server.get("id", "?")
    status = on_server.get("status", "?")
    if created:
        print(f"created Subscription/{sid} (status {status})")
        if made:
            print(
                f"fhir-leuko: the new notification secret (shown once): {header}",
                file=sys.stderr,
            )
    else:
        print(f"Subscription/{sid} already notifies this endpoint (status {status}); unchanged")
    name = args.endpoint.rstrip("/").rsplit("/", 1)[-1]
    print("\nConfigure the service with:\n")
    print(sub.endpoint_config(name, args.fhir_base, header))
    return 0


def _check_server(args: argparse.Namespace) -> int:
    from fhir_leuko import checkserver
    from fhir_leuko.config import SubscriptionEndpoint
    from fhir_leuko.fhirio.server import endpoint_auth as _auth

    settings = load_settings(args.config)
    endpoint = SubscriptionEndpoint(
        args.fhir_base,
        token=args.token or os.environ.get(TOKEN_ENV) or None,
        smart_token_url=args.smart_token_url,
        smart_client_id=args.smart_client_id,
        smart_key_file=args.smart_key_file,
        smart_kid=args.smart_kid,
        smart_algorithm=args.smart_algorithm,
        smart_scope=args.smart_scope
        or (checkserver.WRITE_SCOPE if args.write else SubscriptionEndpoint.smart_scope),
    )
    options = checkserver.Options(
        args.fhir_base,
        auth=_auth(endpoint),
        patient=args.patient,
        write=args.write,
        samples_dir=Path(args.samples) if args.samples else None,
        timeout=args.timeout,
        thresholds=settings.thresholds,
    )
    report = checkserver.run(options)
    if args.format == "json":
        out = checkserver.render_json(report)
    elif args.format == "junit":
        out = checkserver.render_junit(report)
    else:
        out = checkserver.render_text(report).encode()
    if args.output:
        Path(args.output).write_bytes(out)
        sys.stdout.write(checkserver.render_text(report))
    else:
        sys.stdout.buffer.write(out)
    return report.exit_code


def _config(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    sys.stdout.buffer.write(orjson.dumps(settings.audit(), option=orjson.OPT_INDENT_2) + b"\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command != "serve":  # serve configures uvicorn's logging and ours itself
        logs.configure_cli()
    try:
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "serve":
            return _serve(args)
        if args.command == "fetch":
            return _fetch(args)
        if args.command == "subscribe":
            return _subscribe(args)
        if args.command == "check-server":
            return _check_server(args)
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
