"""Prometheus metrics of ingest-email: one counter per outcome, ignored mail by reason."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MESSAGES = Counter(
    "deskstream_email_messages_total",
    "Mail handled, by mailbox and outcome (published, ignored, deadlettered)",
    ["mailbox", "outcome"],
)
IGNORED = Counter(
    "deskstream_email_ignored_total",
    "Mail recognised as automatic and not published, by mailbox and reason",
    ["mailbox", "reason"],
)
BATCH_SECONDS = Histogram(
    "deskstream_email_batch_seconds",
    "Time to fetch, publish, checkpoint and acknowledge one batch",
    ["mailbox"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
LEASE_HELD = Gauge(
    "deskstream_email_lease_held", "1 while this replica works the mailbox", ["mailbox"]
)
RECONNECTS = Counter(
    "deskstream_email_reconnects_total",
    "Sessions ended by an error and retried after a back-off, by mailbox and error type",
    ["mailbox", "error"],
)
