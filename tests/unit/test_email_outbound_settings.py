"""The reply sender's settings: SMTP from the environment, the password never shown."""

from __future__ import annotations

import pytest
from deskstream.settings import WeakSecretError, safe_dump
from deskstream_ingest_email.settings import IngestEmailSettings
from pydantic import ValidationError

SMTP_PASSWORD = "a-long-enough-smtp-password"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAP_PASSWORD", "a-long-enough-imap-password")
    monkeypatch.setenv("IMAP_HOST", "imap.example.com")
    for name in (
        "INGEST_EMAIL_MAILBOXES",
        "INGEST_EMAIL_DESK_ADDRESSES",
        "INGEST_EMAIL_REPLY_FROM",
        "IMAP_USER",
        "SMTP_HOST",
        "SMTP_PORT",
        "SMTP_USER",
        "SMTP_PASSWORD",
        "SMTP_STARTTLS",
        "SMTP_SSL",
    ):
        monkeypatch.delenv(name, raising=False)


def test_smtp_from_the_environment_and_the_password_never_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SMTP_HOST", "smtp.example.com")
    monkeypatch.setenv("SMTP_PORT", "587")
    monkeypatch.setenv("SMTP_STARTTLS", "true")
    monkeypatch.setenv("SMTP_USER", "desk@example.com")
    monkeypatch.setenv("SMTP_PASSWORD", SMTP_PASSWORD)
    settings = IngestEmailSettings()
    assert (settings.smtp_host, settings.smtp_port, settings.smtp_starttls) == (
        "smtp.example.com",
        587,
        True,
    )
    assert settings.smtp_password is not None
    assert settings.smtp_password.get_secret_value() == SMTP_PASSWORD
    assert SMTP_PASSWORD not in repr(settings)
    assert SMTP_PASSWORD not in str(safe_dump(settings))


def test_a_weak_smtp_password_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_USER", "desk@example.com")
    monkeypatch.setenv("SMTP_PASSWORD", "changeme")
    with pytest.raises((WeakSecretError, ValidationError), match="SMTP_PASSWORD"):
        IngestEmailSettings()


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"SMTP_USER": "desk@example.com"}, "SMTP_PASSWORD is not"),
        ({"SMTP_SSL": "true", "SMTP_STARTTLS": "true"}, "exclude each other"),
        ({"INGEST_EMAIL_REPLY_FROM": "Desk <desk@example.com>"}, "must be an email address"),
    ],
)
def test_contradictory_smtp_settings_are_refused(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], problem: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=problem):
        IngestEmailSettings()


def test_the_reply_address_is_one_of_the_desks_own(monkeypatch: pytest.MonkeyPatch) -> None:
    # Mail from it coming back (a bounce, a loop) is never a new ticket.
    monkeypatch.setenv("INGEST_EMAIL_REPLY_FROM", "ServiceDesk@example.com")
    assert "servicedesk@example.com" in IngestEmailSettings().own_addresses()
