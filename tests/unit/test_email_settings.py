"""ingest-email settings: mailboxes as a comma list or JSON, one identity per mailbox."""

from __future__ import annotations

import pytest
from deskstream_ingest_email.settings import IngestEmailSettings
from pydantic import ValidationError

PASSWORD = "a-long-enough-imap-password"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAP_PASSWORD", PASSWORD)
    monkeypatch.setenv("IMAP_HOST", "imap.example.com")
    monkeypatch.setenv("IMAP_PORT", "993")
    for name in ("INGEST_EMAIL_MAILBOXES", "INGEST_EMAIL_DESK_ADDRESSES", "IMAP_USER"):
        monkeypatch.delenv(name, raising=False)


def test_one_mailbox_by_default() -> None:
    (mailbox,) = IngestEmailSettings().resolved_mailboxes()
    assert (mailbox.user, mailbox.folder) == ("desk", "INBOX")
    assert mailbox.address == "desk@imap.example.com"
    assert mailbox.key == "desk@imap.example.com:993/INBOX"
    assert mailbox.url(7, 42) == "imap://desk@imap.example.com:993/INBOX;UIDVALIDITY=7/;UID=42"


def test_mailboxes_as_comma_list_and_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGEST_EMAIL_MAILBOXES", "desk:INBOX, servicedesk@example.com:Support")
    boxes = IngestEmailSettings().resolved_mailboxes()
    assert [(m.user, m.folder, m.address) for m in boxes] == [
        ("desk", "INBOX", "desk@imap.example.com"),
        ("servicedesk@example.com", "Support", "servicedesk@example.com"),
    ]
    assert all(m.password.get_secret_value() == PASSWORD for m in boxes)
    monkeypatch.setenv(
        "INGEST_EMAIL_MAILBOXES",
        '[{"user": "alice", "password": "another-long-imap-password", '
        '"address": "HR-Desk@example.com"}]',
    )
    settings = IngestEmailSettings()
    (alice,) = settings.resolved_mailboxes()
    assert alice.password.get_secret_value() == "another-long-imap-password"
    assert "hr-desk@example.com" in settings.own_addresses()
    assert "another-long-imap-password" not in repr(settings)


def test_desk_addresses_are_lowercased(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "INGEST_EMAIL_DESK_ADDRESSES", "ServiceDesk@Example.com,noreply@desk.example.com"
    )
    assert IngestEmailSettings().own_addresses() >= {
        "servicedesk@example.com",
        "noreply@desk.example.com",
    }


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("INGEST_EMAIL_MAILBOXES", "desk:INBOX,desk:INBOX"),
        ("INGEST_EMAIL_MAILBOXES", '[{"user": "alice", "password": "short"}]'),
        ("INGEST_EMAIL_LEASE_HEARTBEAT_S", "20"),  # more than half the 30 s lease
        ("INGEST_EMAIL_IDLE_RENEW_S", "1800"),  # past RFC 2177's 29 minutes
    ],
)
def test_bad_settings_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        IngestEmailSettings()
