"""Prometheus metrics of ingest-social's own: X polls and rate-limit waits.

Records published, dead letters, ignored items, replies, the lease and X's connection
state are the shared families (deskstream.metrics) with `service="ingest-social"`.
"""

from __future__ import annotations

from prometheus_client import Counter

POLLS = Counter(
    "deskstream_social_polls_total",
    "Requests made to X's read endpoints, by endpoint and outcome",
    ["endpoint", "outcome"],
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
