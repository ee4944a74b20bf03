"""Settings are checked when they load: types, ranges, orderings, secrets, unknown variables."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fhir_leuko.clinical.thresholds import DEFAULT_THRESHOLDS
from fhir_leuko.config import OTHER_ENV, SERVICE_CHECKS, ServiceSettings, load_settings
from fhir_leuko.errors import ConfigError


def toml(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "leuko.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FHIR_LEUKO_WORKER_LEASE_S": "-5"}, "FHIR_LEUKO_WORKER_LEASE_S must be greater than 0"),
        ({"FHIR_LEUKO_PORT": "0"}, "FHIR_LEUKO_PORT must be a port number from 1 to 65535"),
        ({"FHIR_LEUKO_PORT": "65536"}, "FHIR_LEUKO_PORT must be a port number"),
        ({"FHIR_LEUKO_WORKERS": "0"}, "FHIR_LEUKO_WORKERS must be 1 or more"),
        ({"FHIR_LEUKO_WORKER_CONCURRENCY": "0"}, "FHIR_LEUKO_WORKER_CONCURRENCY must be 1 or"),
        ({"FHIR_LEUKO_DB_TIMEOUT_S": "0"}, "FHIR_LEUKO_DB_TIMEOUT_S must be greater than 0"),
        ({"FHIR_LEUKO_DB_TIMEOUT_S": "inf"}, "FHIR_LEUKO_DB_TIMEOUT_S must be a finite number"),
        ({"FHIR_LEUKO_HEADER_TIMEOUT_S": "-1"}, "FHIR_LEUKO_HEADER_TIMEOUT_S must be greater"),
        ({"FHIR_LEUKO_BODY_TIMEOUT_S": "0"}, "FHIR_LEUKO_BODY_TIMEOUT_S must be greater"),
        ({"FHIR_LEUKO_READYZ_MAX_QUEUE_DEPTH": "-1"}, "FHIR_LEUKO_READYZ_MAX_QUEUE_DEPTH must"),
        ({"FHIR_LEUKO_LOG_FORMAT": "xml"}, "FHIR_LEUKO_LOG_FORMAT must be one of text, json"),
        ({"FHIR_LEUKO_WORKERS": "two"}, "FHIR_LEUKO_WORKERS must be a whole number, got 'two'"),
        ({"FHIR_LEUKO_INSECURE_DEV": "maybe"}, "FHIR_LEUKO_INSECURE_DEV must be a boolean"),
        ({"FHIR_LEUKO_DATABASE_URL": "mysql://h/db"}, "FHIR_LEUKO_DATABASE_URL must be a postgres"),
        ({"FHIR_LEUKO_PUBLIC_BASE_URL": "cds.example.org"}, "must be an http:// or https:// URL"),
        (
            {"FHIR_LEUKO_WORKER_BACKOFF_S": "7200"},
            "'service.worker_backoff_cap_s' (default) must be at least worker_backoff_s (7200.0)",
        ),
    ],
)
def test_a_bad_environment_value_is_refused_naming_the_variable(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(env=env)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[service]\nport = true\n", "'service.port' in {file} must be a whole number, got True"),
        ("[service]\nport = 0\n", "'service.port' in {file} must be a port number"),
        ("[service]\nworker_lease_s = -5\n", "'service.worker_lease_s' in {file} must be greater"),
        ("[service]\nhost = 5\n", "'service.host' in {file} must be a string, got 5"),
        ('[service]\nfhir_server_allowlist = "ftp://x"\n', "must be http(s) URLs"),
        ("[thresholds]\nwbc_lln_adult = 0\n", "'thresholds.wbc_lln_adult' in {file} must be"),
        ('[thresholds]\nplatelets_low = "low"\n', "must be a finite number, got 'low'"),
        ("[service]\nprot = 80\n", "unknown setting 'service.prot' in {file} (did you mean port?)"),
        ("service = 3\n", "[service] must be a table"),
        (
            '[endpoints.hapi]\nfhir_base = "https://h/fhir"\nheader_value = ""\n',
            "'endpoints.hapi.header_value' in {file} is empty",
        ),
        (
            '[endpoints.hapi]\nfhir_base = "h/fhir"\nheader_value = "s"\n',
            "'endpoints.hapi.fhir_base' in {file} must be an http:// or https:// URL",
        ),
        (
            '[endpoints.hapi]\nfhir_base = "https://h/fhir"\nsmart_algorithm = "HS256"\n',
            "'endpoints.hapi.smart_algorithm' in {file} must be RS384 or ES384",
        ),
    ],
)
def test_a_bad_file_value_is_refused_naming_the_key_and_file(
    tmp_path: Path, text: str, message: str
) -> None:
    path = toml(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_settings(path, env={})
    assert message.format(file=path) in str(err.value)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"FHIR_LEUKO_T_ANC_MILD_FLOOR": "0.4"},
            "'thresholds.anc_moderate_floor' (default) = 0.5 must be below "
            "FHIR_LEUKO_T_ANC_MILD_FLOOR = 0.4",
        ),
        (
            {"FHIR_LEUKO_T_ANC_SEVERE_FLOOR": "0.5"},
            "FHIR_LEUKO_T_ANC_SEVERE_FLOOR = 0.5 must be below",
        ),
        (
            {"FHIR_LEUKO_T_ANC_LLN_ADULT": "0.9"},
            "must be at most FHIR_LEUKO_T_ANC_LLN_ADULT = 0.9",
        ),
        ({"FHIR_LEUKO_T_FEVER_SUSTAINED_C": "38.5"}, "FHIR_LEUKO_T_FEVER_SUSTAINED_C = 38.5"),
        (
            {"FHIR_LEUKO_T_REPEAT_MILD_END_D": "3"},
            "'thresholds.repeat_mild_start_d' (default) = 7 must be at most",
        ),
        ({"FHIR_LEUKO_T_DECLINE_MIN_DRAWS": "1"}, "FHIR_LEUKO_T_DECLINE_MIN_DRAWS must be 2"),
        ({"FHIR_LEUKO_T_REPEAT_SEVERE_END_D": "-1"}, "must be 0 or more, got -1"),
    ],
)
def test_thresholds_must_be_positive_and_keep_their_order(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(env=env)
    assert message in str(err.value)


def test_zero_day_offsets_and_equal_limits_are_allowed() -> None:
    env = {
        "FHIR_LEUKO_T_REPEAT_MILD_START_D": "0",
        "FHIR_LEUKO_T_ANC_MILD_FLOOR": "1.5",  # mild floor may equal the adult LLN
        "FHIR_LEUKO_T_FEVER_SUSTAINED_C": "38.3",
    }
    t = load_settings(env=env).thresholds
    assert (t.repeat_mild_start_d, t.anc_mild_floor, t.fever_sustained_c) == (0, 1.5, 38.3)


def test_the_defaults_pass_every_check() -> None:
    settings = load_settings(env={})
    assert settings.thresholds == DEFAULT_THRESHOLDS
    assert dataclasses.replace(settings.service, public_base_url="") == ServiceSettings()
    # Every service setting has a check; a new one without a range is a test failure.
    assert set(SERVICE_CHECKS) == {f.name for f in dataclasses.fields(ServiceSettings)} - {
        "insecure_dev",
        "public_discovery",
        "write_back",
        "worker_enabled",
    }


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("FHIR_LEUKO_PROT", "FHIR_LEUKO_PORT"),
        ("FHIR_LEUKO_WORKER_LEASE", "FHIR_LEUKO_WORKER_LEASE_S"),
        ("FHIR_LEUKO_T_WBC_LNN_ADULT", "FHIR_LEUKO_T_WBC_LLN_ADULT"),
        ("FHIR_LEUKO_ENDPOINT__HAPI__TOKN", "FHIR_LEUKO_ENDPOINT__HAPI__TOKEN"),
        ("FHIR_LEUKO_CONFG", "FHIR_LEUKO_CONFIG"),
    ],
)
def test_an_unknown_variable_is_refused_with_a_close_match(name: str, suggestion: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(env={name: "1"})
    assert str(err.value) == f"unknown environment variable {name} (did you mean {suggestion}?)"


def test_an_unknown_variable_far_from_any_is_refused_without_a_guess() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(env={"FHIR_LEUKO_SOMETHING_ELSE_ENTIRELY": "1"})
    assert str(err.value) == "unknown environment variable FHIR_LEUKO_SOMETHING_ELSE_ENTIRELY"


def test_variables_the_project_reads_elsewhere_are_accepted(tmp_path: Path) -> None:
    env = {name: "x" for name in OTHER_ENV}
    env["FHIR_LEUKO_CONFIG"] = str(toml(tmp_path, "[service]\nport = 9001\n"))
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path)  # not ours: never looked at
    env["FHIR_LEUKOCYTE"] = "1"  # another prefix
    assert load_settings(env=env).service.port == 9001


@pytest.mark.parametrize(
    "name",
    [
        "FHIR_LEUKO_DATABASE_URL",
        "FHIR_LEUKO_ENDPOINT__HAPI__HEADER_VALUE",
        "FHIR_LEUKO_ENDPOINT__HAPI__HMAC_SECRET",
        "FHIR_LEUKO_ENDPOINT__HAPI__TOKEN",
    ],
)
@pytest.mark.parametrize("empty", ["", "  "])
def test_an_empty_secret_is_refused_not_read_as_unset(name: str, empty: str) -> None:
    env = {"FHIR_LEUKO_ENDPOINT__HAPI__FHIR_BASE": "https://h/fhir", name: empty}
    with pytest.raises(ConfigError, match=f"{name} is empty"):
        load_settings(env=env)


def test_secrets_left_out_are_unset() -> None:
    settings = load_settings(env={"FHIR_LEUKO_ENDPOINT__HAPI__FHIR_BASE": "https://h/fhir"})
    endpoint = settings.endpoints["hapi"]
    assert (endpoint.header_value, endpoint.hmac_secret, endpoint.token) == (None, None, None)
    assert settings.service.database_url == ""


def test_origins_still_say_where_each_value_came_from(tmp_path: Path) -> None:
    path = toml(tmp_path, "[service]\nport = 9001\nworkers = 2\n")
    settings = load_settings(path, env={"FHIR_LEUKO_WORKERS": "3"})
    assert (settings.service.port, settings.service.workers) == (9001, 3)
    assert settings.origins["service.port"] == str(path)
    assert settings.origins["service.workers"] == "environment"


def test_a_byte_order_mark_in_the_toml_file_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf[service]\nport = 9002\n")
    assert load_settings(path, env={}).service.port == 9002
