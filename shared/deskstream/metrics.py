"""The shared Prometheus metric families: one naming scheme for every deskstream service.

Names: `deskstream_` + what is counted + its base unit (`_seconds`, `_records`); counters
end in `_total` (Prometheus' naming conventions). Every family here carries a `service`
label (the service's `service_name`, which is also its dead-letter stage) and lives in the
process's default registry, which `/metrics` serves.

Why a `service` label rather than one registry per service: each service is its own
process, so Prometheus' `job` and `instance` labels tell them apart too — but only as the
scrape configuration happens to name them (compose, Kubernetes annotations and the
Prometheus Operator all name jobs differently). With the label, the Grafana dashboard
(`deploy/grafana/deskstream.json`) and any alert select `service="router"` wherever they
run, and a process that hosts several parts (a test, a combined deployment) still keeps
their series apart.

Label values stay bounded: topics are registry names without the installation's prefix
(`tickets.commands`, so one dashboard fits every installation), channels are the four
channels or `none` (a topic that carries every channel, where the record's channel is not
at hand), dead-letter reasons are the error's type name (never its message), and groups,
teams, mailboxes and accounts come from the desk's configuration.

Service-specific families (ticket-api's routing decisions and queues, ...) live in the
service's own `metrics.py` under the same scheme; `FAMILIES`
lists the shared ones (the dashboard test checks every name the dashboard uses).

Hot paths count per batch (`Meter.consumed(topic, n)`), never with an await.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter as Tally
from collections.abc import Iterable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from deskstream.events import Channel

NO_CHANNEL = "none"
_CHANNELS = frozenset(ch.value for ch in Channel)
# Batches take milliseconds to seconds; IMAP batches and SMTP sessions up to half a minute.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# A record's age when handled: milliseconds on a healthy pipeline, minutes in a backlog.
AGE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

EVENTS_CONSUMED = Counter(
    "deskstream_events_consumed_total",
    "Records read from Kafka and handled, by topic (registry name) and channel",
    ["service", "topic", "channel"],
)
EVENTS_PRODUCED = Counter(
    "deskstream_events_produced_total",
    "Records Kafka acknowledged, by topic (registry name) and channel",
    ["service", "topic", "channel"],
)
DEAD_LETTERS = Counter(
    "deskstream_dead_letters_total",
    "Records sent to the service's dead-letter topic, by reason (the error's type)",
    ["service", "reason"],
)
PROCESSING_SECONDS = Histogram(
    "deskstream_processing_duration_seconds",
    "Time to handle one batch, by step (a consumer's topic, imap, a router agent, ...)",
    ["service", "step"],
    buckets=DURATION_BUCKETS,
)
EVENT_AGE_SECONDS = Histogram(
    "deskstream_event_age_seconds",
    "Time from a record's Kafka timestamp to the end of its handling, by step",
    ["service", "step"],
    buckets=AGE_BUCKETS,
)
RETRIES = Counter(
    "deskstream_batch_retries_total",
    "Batches handed over again after a transient failure (a dependency was down), by step",
    ["service", "step"],
)
CONSUMER_LAG = Gauge(
    "deskstream_consumer_lag_records",
    "Records on a partition not yet handed to the consumer group's handler",
    ["service", "group", "topic", "partition"],
)
CONNECTION_UP = Gauge(
    "deskstream_connection_up",
    "1 while the service's connection of this kind answers (kafka, mongodb, imap, x, "
    "slack, smtp), 0 when it does not",
    ["service", "kind", "target"],
)
CONNECTION_ERRORS = Counter(
    "deskstream_connection_errors_total",
    "Sessions or requests ended by a connection error, by kind and error type",
    ["service", "kind", "error"],
)
LEASE_HELD = Gauge(
    "deskstream_lease_held",
    "1 while this replica holds the lease (a mailbox, an X account, the outbox relay)",
    ["service", "lease"],
)
INPUTS_IGNORED = Counter(
    "deskstream_inputs_ignored_total",
    "Inputs recognised and deliberately not published (auto-replies, own posts, ...), by reason",
    ["service", "reason"],
)
REPLIES = Counter(
    "deskstream_replies_total",
    "Agents' replies handled by a channel service, by route and outcome "
    "(delivered, failed, retried, repeat, invalid)",
    ["service", "route", "outcome"],
)

FAMILIES: tuple[MetricWrapperBase, ...] = (
    EVENTS_CONSUMED,
    EVENTS_PRODUCED,
    DEAD_LETTERS,
    PROCESSING_SECONDS,
    EVENT_AGE_SECONDS,
    RETRIES,
    CONSUMER_LAG,
    CONNECTION_UP,
    CONNECTION_ERRORS,
    LEASE_HELD,
    INPUTS_IGNORED,
    REPLIES,
)


def channel_of_topic(topic: str) -> str:
    """The channel a registry topic is about (`inbound.email` -> email), else `none`."""
    family, _, rest = topic.partition(".")
    if family in ("inbound", "outbound") and rest in _CHANNELS:
        return rest
    return NO_CHANNEL


def channel_of(value: Any) -> str | None:
    """The channel a record's model names (ticket events, replies, create/append commands)."""
    channel = getattr(value, "channel", None)
    if channel is None:
        channel = getattr(getattr(value, "message", None), "channel", None)
    return channel.value if isinstance(channel, Channel) else None


class Meter:
    """One service's handle on the shared families: its `service` label bound, topic names
    reduced to registry names. Cheap to make; make one per component."""

    def __init__(self, service: str, topic_prefix: str = "") -> None:
        self.service = service
        self.prefix = topic_prefix

    @classmethod
    def of(cls, settings: Any) -> Meter:
        """The meter of a service's settings (`ServiceSettings`)."""
        return cls(settings.service_name, settings.topics.prefix)

    def bare(self, name: str) -> str:
        """A topic's registry name (or a group's name): the installation's prefix removed."""
        return name[len(self.prefix) :] if self.prefix and name.startswith(self.prefix) else name

    # --- records in and out --------------------------------------------------------

    def consumed(self, topic: str, n: int = 1, channel: str | None = None) -> None:
        t = self.bare(topic)
        EVENTS_CONSUMED.labels(self.service, t, channel or channel_of_topic(t)).inc(n)

    def produced(self, topic: str, n: int = 1, channel: str | None = None) -> None:
        t = self.bare(topic)
        EVENTS_PRODUCED.labels(self.service, t, channel or channel_of_topic(t)).inc(n)

    def produced_each(self, records: Iterable[tuple[str, str | None]]) -> None:
        """Count (topic, channel or None) pairs, one increment per distinct pair."""
        for (topic, channel), n in Tally(records).items():
            self.produced(topic, n, channel)

    def handled(self, step: str, records: Iterable[tuple[str, int]], seconds: float) -> None:
        """One handled batch of (topic, Kafka timestamp in ms) records: records consumed per
        topic, the batch's handling time and each record's age under `step`."""
        records = list(records)
        for topic, n in Tally(topic for topic, _ in records).items():
            self.consumed(topic, n)
        self.processing(step, seconds)
        self.ages(step, (ts for _, ts in records))

    def dead_letter(self, reason: str, n: int = 1) -> None:
        DEAD_LETTERS.labels(self.service, reason).inc(n)

    # --- time ----------------------------------------------------------------------

    def processing(self, step: str, seconds: float) -> None:
        PROCESSING_SECONDS.labels(self.service, step).observe(seconds)

    def ages(self, step: str, timestamps_ms: Iterable[int], now: float | None = None) -> None:
        """Observe each record's age (now minus its Kafka timestamp) at the end of handling."""
        child = EVENT_AGE_SECONDS.labels(self.service, step)
        now_ms = (now if now is not None else time.time()) * 1000
        for ts in timestamps_ms:
            if ts > 0:
                child.observe(max(0.0, (now_ms - ts) / 1000))

    def retried(self, step: str) -> None:
        RETRIES.labels(self.service, step).inc()

    # --- state ---------------------------------------------------------------------

    def lag(self, group: str, topic: str, partition: int, records: int) -> None:
        CONSUMER_LAG.labels(self.service, self.bare(group), self.bare(topic), str(partition)).set(
            max(0, records)
        )

    def forget_lag(self, group: str, topic: str, partition: int) -> None:
        """A partition that moved to another consumer is no longer this one's to report."""
        labels = (self.service, self.bare(group), self.bare(topic), str(partition))
        with contextlib.suppress(KeyError):
            CONSUMER_LAG.remove(*labels)

    def connection(self, kind: str, up: bool, target: str = "") -> None:
        CONNECTION_UP.labels(self.service, kind, target).set(1 if up else 0)

    def forget_connection(self, kind: str, target: str = "") -> None:
        """A connection this replica no longer holds (a lease moved) is not its to report."""
        with contextlib.suppress(KeyError):
            CONNECTION_UP.remove(self.service, kind, target)

    def connection_error(self, kind: str, error: BaseException | str) -> None:
        name = error if isinstance(error, str) else type(error).__name__
        CONNECTION_ERRORS.labels(self.service, kind, name).inc()

    def lease(self, name: str, held: bool) -> None:
        LEASE_HELD.labels(self.service, name).set(1 if held else 0)

    def ignored(self, reason: str, n: int = 1) -> None:
        INPUTS_IGNORED.labels(self.service, reason).inc(n)

    def reply(self, route: str, outcome: str) -> None:
        REPLIES.labels(self.service, route, outcome).inc()
