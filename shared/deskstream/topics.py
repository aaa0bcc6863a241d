"""The one topic registry: every topic deskstream uses, its key, value model and settings.

All names live under a configurable prefix (`DESKSTREAM_TOPIC_PREFIX`), so several
installations or test runs share one cluster without seeing each other's records.
`ensure_topics()` creates them idempotently; it is the bootstrap step of `make topics`,
`make run` and the test fixtures.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from deskstream.events import (
    AgentState,
    Channel,
    DeadLetter,
    InboundMessage,
    OutboundReply,
    ServiceEntry,
)

log = logging.getLogger(__name__)

WEEK_MS = 7 * 24 * 3600 * 1000
# A dead letter carries the original record base64-encoded: a record near Kafka's default
# 1 MB limit makes a letter of about 1.4 MB. Dead-letter topics accept up to this, and every
# producer may send that much (the broker still holds every other topic to its limit).
DEAD_LETTER_MAX_BYTES = 4 * 1024 * 1024
STAGES = ("ingest-email", "ingest-social", "ingest-chat", "router", "ticket-api")


@dataclass(frozen=True)
class TopicSpec:
    """One topic: its unprefixed name, what its key is, what its values are, how it is kept."""

    name: str
    key: str
    value: type[BaseModel] | str
    partitions: int
    cleanup: Literal["delete", "compact"] = "delete"
    retention_ms: int = WEEK_MS
    extra_config: dict[str, str] = field(default_factory=dict)

    def config(self) -> dict[str, str]:
        cfg = {"cleanup.policy": self.cleanup, **self.extra_config}
        if self.cleanup == "delete":
            cfg["retention.ms"] = str(self.retention_ms)
        return cfg

    @property
    def value_name(self) -> str:
        return self.value if isinstance(self.value, str) else self.value.__name__


def _registry() -> tuple[TopicSpec, ...]:
    inbound = tuple(
        TopicSpec(f"inbound.{ch.value}", "conversation key", InboundMessage, 6) for ch in Channel
    )
    outbound = tuple(
        TopicSpec(f"outbound.{ch.value}", "conversation key", OutboundReply, 3)
        for ch in Channel
        if ch is not Channel.PORTAL  # portal users read their replies through the API
    )
    deadletter = tuple(
        TopicSpec(
            f"deadletter.{stage}",
            "original key",
            DeadLetter,
            1,
            retention_ms=4 * WEEK_MS,
            extra_config={"max.message.bytes": str(DEAD_LETTER_MAX_BYTES)},
        )
        for stage in STAGES
    )
    return (
        *inbound,
        # Router-internal: stage 2 input keyed by team (tickets to place, agent snapshots),
        # and load changes keyed by agent (partitioned like agents.state, which it joins).
        TopicSpec("routing.requests", "team", "RoutingInput (router-internal)", 6),
        TopicSpec("routing.agent-load", "agent id", "LoadDelta (router-internal)", 3),
        TopicSpec("tickets.commands", "ticket id", "TicketCommand", 6),
        TopicSpec("tickets.events", "ticket id", "TicketEvent", 6, retention_ms=4 * WEEK_MS),
        TopicSpec("agents.state", "agent id", AgentState, 3, cleanup="compact"),
        TopicSpec("catalogue.services", "service id", ServiceEntry, 1, cleanup="compact"),
        *outbound,
        *deadletter,
    )


TOPICS: tuple[TopicSpec, ...] = _registry()
BY_NAME: dict[str, TopicSpec] = {t.name: t for t in TOPICS}

# Faust creates its own internal topics (table changelogs, repartitions) under the app id;
# the router's app id starts with the prefix, so these patterns name them for operators.
INTERNAL_TOPIC_PATTERNS = ("{prefix}router-*-changelog", "{prefix}router-*-repartition")


class Topics:
    """Resolves registry names under one prefix: `Topics("t1.").name("tickets.events")`."""

    def __init__(self, prefix: str = "") -> None:
        if prefix and not prefix.endswith((".", "-", "_")):
            prefix += "."
        self.prefix = prefix

    def name(self, unprefixed: str) -> str:
        if unprefixed not in BY_NAME:
            raise KeyError(f"{unprefixed!r} is not in the topic registry")
        return self.prefix + unprefixed

    def inbound(self, channel: Channel) -> str:
        return self.name(f"inbound.{channel.value}")

    def outbound(self, channel: Channel) -> str:
        return self.name(f"outbound.{channel.value}")

    def deadletter(self, stage: str) -> str:
        return self.name(f"deadletter.{stage}")

    def all(self) -> dict[str, TopicSpec]:
        return {self.prefix + t.name: t for t in TOPICS}


def ensure_topics(bootstrap_servers: str, prefix: str = "", timeout_s: float = 30) -> list[str]:
    """Create every registry topic under `prefix` that does not exist yet; returns the new ones.

    Idempotent: existing topics are left as they are (a different partition count is
    reported, not changed, because changing it would move keys between partitions).
    Returns once every partition of every registry topic has a leader.
    """
    wanted = Topics(prefix).all()
    created = ensure_named_topics(
        bootstrap_servers,
        {name: (spec.partitions, spec.config()) for name, spec in wanted.items()},
        timeout_s,
        check_partitions=True,
    )
    return created


def ensure_named_topics(
    bootstrap_servers: str,
    topics: dict[str, tuple[int, dict[str, str]]],
    timeout_s: float = 30,
    *,
    check_partitions: bool = False,
) -> list[str]:
    """Create the topics that do not exist yet, and wait until every partition has a leader.

    Also used for the router's Faust changelogs: left to Faust, they are created while the
    worker joins its group, racing the broker's metadata, and a worker that sees a changelog
    with 0 partitions fails every table write for minutes.
    """
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        client_id="deskstream-bootstrap",
        request_timeout_ms=int(timeout_s * 1000),
    )
    try:
        existing = set(admin.list_topics())
        created: list[str] = []
        for name, (partitions, config) in topics.items():
            if name in existing:
                continue
            try:
                admin.create_topics(
                    [NewTopic(name, partitions, 1, topic_configs=config)],
                    timeout_ms=int(timeout_s * 1000),
                )
                created.append(name)
            except TopicAlreadyExistsError:
                pass
        _wait_until_led(admin, list(topics), timeout_s)
        if check_partitions:
            for desc in admin.describe_topics([n for n in topics if n in existing]):
                if len(desc["partitions"]) != topics[desc["name"]][0]:
                    log.warning(
                        "topic has a different partition count than the registry",
                        extra={"topic": desc["name"], "registry": topics[desc["name"]][0]},
                    )
        return created
    finally:
        admin.close()


def _wait_until_led(admin: Any, names: list[str], timeout_s: float) -> None:
    """Return once every partition of `names` has a leader in the broker's metadata.

    create_topics returns when the controller has the topics; a client that subscribes a
    moment later can still miss them in the broker's metadata and then waits for its next
    metadata refresh (minutes) before consuming.
    """
    deadline = time.monotonic() + timeout_s
    pending = list(names)
    while pending:
        described = admin.describe_topics(pending)
        pending = [
            d["name"]
            for d in described
            if d["error_code"] != 0
            or not d["partitions"]
            or any(p["leader_id"] < 0 for p in d["partitions"])
        ]
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"topics without a leader after {timeout_s}s: {pending}")
        if pending:
            time.sleep(0.1)


def main() -> None:
    """`python -m deskstream.topics`: create the topics for the environment's settings."""
    import os

    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092")
    prefix = os.environ.get("DESKSTREAM_TOPIC_PREFIX", "")
    created = ensure_topics(bootstrap, prefix)
    print(f"{len(created)} topic(s) created, {len(TOPICS) - len(created)} already there")


if __name__ == "__main__":
    main()
