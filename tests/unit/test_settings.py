"""One settings base: shared infrastructure names, per-service prefixes, and no weak secrets."""

import pytest
from deskstream_ingest_email.settings import IngestEmailSettings
from deskstream_router.settings import RouterSettings
from deskstream_ticket_api.settings import TicketApiSettings
from pydantic import ValidationError


def test_service_reads_shared_and_prefixed_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker-1:9092")
    monkeypatch.setenv("DESKSTREAM_TOPIC_PREFIX", "acme.")
    monkeypatch.setenv("ROUTER_HTTP_PORT", "9999")
    monkeypatch.setenv("TICKET_API_HTTP_PORT", "7777")
    settings = RouterSettings()
    assert settings.kafka_bootstrap_servers == "broker-1:9092"
    assert settings.http_port == 9999
    assert settings.topics.name("tickets.events") == "acme.tickets.events"


@pytest.mark.parametrize("weak", ["changeme", "secret", "short-key"])
def test_service_refuses_a_default_or_short_secret(
    monkeypatch: pytest.MonkeyPatch, weak: str
) -> None:
    monkeypatch.setenv("TICKET_API_ADMIN_API_KEY", weak)
    with pytest.raises(ValidationError, match="TICKET_API_ADMIN_API_KEY is a default"):
        TicketApiSettings()


def test_missing_secret_is_an_error_and_secrets_are_never_printed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("IMAP_PASSWORD", raising=False)
    with pytest.raises(ValidationError, match="IMAP_PASSWORD"):
        IngestEmailSettings()
    monkeypatch.setenv("IMAP_PASSWORD", "a-long-enough-imap-password")
    settings = IngestEmailSettings()
    assert "a-long-enough-imap-password" not in repr(settings)
    assert "a-long-enough-imap-password" not in str(settings.model_dump())
