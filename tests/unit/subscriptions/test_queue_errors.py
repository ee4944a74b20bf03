"""The queue refuses bad settings and keyless jobs with the project's own errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from fhir_leuko.errors import ConfigError, InputError
from fhir_leuko.subscriptions.queue import Queue


@pytest.mark.parametrize(
    "bad", [{"max_attempts": 0}, {"backoff_base_s": -1.0}, {"backoff_cap_s": -0.5}]
)
def test_bad_queue_settings_are_a_config_error(tmp_path: Path, bad: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        Queue(str(tmp_path / "q.db"), **bad)  # type: ignore[arg-type]


def test_a_non_positive_lease_and_keyless_jobs_are_refused(tmp_path: Path) -> None:
    with Queue(str(tmp_path / "q.db")) as queue:
        with pytest.raises(ConfigError, match="lease"):
            queue.claim(1000.0, lease_s=-5)
        with pytest.raises(InputError):
            queue.enqueue("change", {}, dedupe_key="")
        with pytest.raises(InputError):
            queue.enqueue_patient("", "Observation/1")
        assert queue.claim(1000.0, lease_s=30) is None
