"""What the alerts say, where they go, and how their settings fail closed."""

from __future__ import annotations

import pytest

from consent_gate import alerts

pytestmark = pytest.mark.unit


def test_the_message_names_the_day_the_failed_checks_and_the_evidence():
    attempt = {"checks": [{"name": "content_reconciles", "passed": True}, {"name": "gx_content", "passed": False},
                          {"name": "quarantine_ratio", "passed": False}], "failure": "checks failed"}  # fmt: skip
    message = alerts.nothing_published_message("2026-11-02", attempt, "s3://b/_audit/dt=2026-11-02/attempts/a.json")
    assert message == (
        "day 2026-11-02 published nothing: checks gx_content, quarantine_ratio failed, "
        "evidence at s3://b/_audit/dt=2026-11-02/attempts/a.json"
    )


def test_a_failure_before_the_checks_says_so_in_one_line():
    attempt = {"checks": [], "failure": "OSError: landing zone unreachable\nTraceback ..."}
    message = alerts.nothing_published_message("2026-11-02", attempt, "x.json")
    assert "before its checks passed (OSError: landing zone unreachable)" in message and "Traceback" not in message
    assert "no attempt manifest" in alerts.nothing_published_message("2026-11-02", None, None)


def test_the_sweep_deadline_is_configurable_and_refuses_nonsense():
    assert alerts.sweep_deadline_minutes({}) == 60
    assert alerts.sweep_deadline_minutes({alerts.SWEEP_DEADLINE_ENV: "45"}) == 45
    for bad in ("0", "-5", "an hour"):
        with pytest.raises(ValueError, match=alerts.SWEEP_DEADLINE_ENV):
            alerts.sweep_deadline_minutes({alerts.SWEEP_DEADLINE_ENV: bad})


def test_a_notifier_is_named_module_colon_attribute():
    assert alerts.load_notifier("tests.test_alerts:RECORDER.record") == RECORDER.record
    for bad in ("tests.test_alerts", "tests.test_alerts:NOT_CALLABLE"):
        with pytest.raises(ValueError):
            alerts.load_notifier(bad)


def test_a_broken_notifier_never_raises(monkeypatch, capsys, caplog):
    monkeypatch.setenv(alerts.NOTIFIER_ENV, "tests.test_alerts:broken")
    alerts.send("day 2026-11-02 published nothing", {})
    # the log goes to logging, or to stdout once Airflow's structlog setup has been imported
    captured = capsys.readouterr()
    assert "could not send the alert 'day 2026-11-02 published nothing'" in caplog.text + captured.out + captured.err


class Recorder:
    def __init__(self) -> None:
        self.sent: list = []

    def record(self, message, details) -> None:
        self.sent.append((message, details))


RECORDER = Recorder()
NOT_CALLABLE = 3


def broken(message, details) -> None:
    raise ConnectionError("on-call channel unreachable")
