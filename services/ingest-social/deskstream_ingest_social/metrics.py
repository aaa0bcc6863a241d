"""Prometheus metrics of ingest-social: polls, items by outcome, rate-limit waits, replies."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

POLLS = Counter(
    "deskstream_social_polls_total",
    "Requests made to X's read endpoints, by endpoint and outcome",
    ["endpoint", "outcome"],
)
ITEMS = Counter(
    "deskstream_social_items_total",
    "Posts and DM events read, by kind and outcome (published, ignored, deadlettered)",
    ["kind", "outcome"],
)
RATE_LIMIT_WAITS = Counter(
    "deskstream_social_rate_limit_waits_total",
    "Times a rate limit was waited out until its reset, by endpoint",
    ["endpoint"],
)
RATE_LIMIT_WAIT_SECONDS = Counter(
    "deskstream_social_rate_limit_wait_seconds_total",
    "Seconds spent waiting for a rate-limit window to reset, by endpoint",
    ["endpoint"],
)
DELIVERIES = Counter(
    "deskstream_social_deliveries_total",
    "Replies handled, by how they were sent (reply, dm) and outcome",
    ["kind", "outcome"],
)
LEASE_HELD = Gauge(
    "deskstream_social_lease_held", "1 while this replica polls the X account", ["account"]
)
X_UP = Gauge("deskstream_social_x_up", "1 while the last request to X got an answer")
