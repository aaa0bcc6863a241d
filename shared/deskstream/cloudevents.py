"""CloudEvents 1.0 attributes carried as Kafka headers (the Kafka binding's binary mode)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

SPEC_VERSION = "1.0"
Headers = list[tuple[str, bytes]]


def ce_headers(
    *, event_id: str, event_type: str, source: str, time: datetime | None = None
) -> Headers:
    """Headers for one event: `ce_id`, `ce_type`, `ce_source`, `ce_time`, `ce_specversion`."""
    when = (time or datetime.now(UTC)).astimezone(UTC).isoformat().replace("+00:00", "Z")
    return [
        ("ce_specversion", SPEC_VERSION.encode()),
        ("ce_id", event_id.encode()),
        ("ce_type", event_type.encode()),
        ("ce_source", source.encode()),
        ("ce_time", when.encode()),
        ("content-type", b"application/json"),
    ]


def header(headers: Sequence[tuple[str, bytes]] | None, name: str) -> str | None:
    """The value of one header as text, or None."""
    for key, value in headers or ():
        if key == name:
            return value.decode("utf-8", "replace")
    return None
