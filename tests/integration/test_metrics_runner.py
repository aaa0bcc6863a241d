"""The shared runner's metrics on the real broker: records in, dead letters by reason, lag.

One BatchRunner in this process consumes a fresh topic; the default registry is read
directly (the same one every service's /metrics serves), comparing before and after.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from aiokafka import AIOKafkaProducer
from deskstream.events import Channel, InboundMessage, SenderIdentity
from deskstream.lag import GroupLag
from deskstream.metrics import Meter
from deskstream.runner import BatchRunner, PoisonRecords, Record, decode_all
from deskstream.settings import ServiceSettings
from prometheus_client import REGISTRY

from tests.conftest import Infra

SERVICE = f"metrics-test-{uuid.uuid4().hex[:6]}"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"service": SERVICE, **labels}) or 0.0


def message(n: int) -> InboundMessage:
    return InboundMessage(
        event_id=f"metrics-{n}",
        channel=Channel.CHAT,
        conversation_key=f"webchat:c{n}",
        sender=SenderIdentity(channel=Channel.CHAT, kind="chat", id=f"v{n}"),
        text=f"hello {n}",
        received_at="2026-01-01T00:00:00Z",
    )


async def until(check: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


async def test_runner_counts_records_dead_letters_and_lag(infra: Infra, topic_prefix: str) -> None:
    settings = ServiceSettings(
        service_name=SERVICE, kafka_bootstrap_servers=infra.kafka, topic_prefix=topic_prefix
    )
    topic = settings.topics.inbound(Channel.CHAT)
    group = f"{topic_prefix}{SERVICE}"
    handled: list[str] = []

    async def handle(records: list[Record]) -> None:
        good, bad = decode_all(records, InboundMessage)
        handled.extend(m.event_id for _, m in good)
        if bad:
            raise PoisonRecords(bad)

    # In a transaction, as the ticket-api's relay writes: each commit marker takes an offset
    # that no record has, and the lag must still come out 0 once everything is handled.
    producer = AIOKafkaProducer(
        bootstrap_servers=infra.kafka, transactional_id=f"{SERVICE}-{uuid.uuid4().hex[:6]}"
    )
    await producer.start()
    try:
        await producer.begin_transaction()
        sends = [
            await producer.send(topic, message(n).model_dump_json().encode(), key=f"c{n}".encode())
            for n in range(5)
        ]
        sends.append(await producer.send(topic, b"\xff not json", key=b"c0"))
        await asyncio.gather(*sends)
        await producer.commit_transaction()
    finally:
        await producer.stop()

    runner = BatchRunner(
        settings=settings, stage="ingest-chat", topics=[topic], group_id=group, handler=handle
    )
    await runner.start()
    task = asyncio.create_task(runner.run())
    lag = GroupLag(infra.kafka, SERVICE)
    try:
        consumed = {"topic": "inbound.chat", "channel": "chat"}
        await until(lambda: sample("deskstream_events_consumed_total", **consumed) == 6)
        assert sorted(handled) == [f"metrics-{n}" for n in range(5)]
        assert sample("deskstream_dead_letters_total", reason="ValidationError") == 1
        assert (
            sample(
                "deskstream_events_produced_total", topic="deadletter.ingest-chat", channel="none"
            )
            == 1
        )
        step = {"step": "inbound.chat"}
        assert sample("deskstream_processing_duration_seconds_count", **step) >= 1
        assert sample("deskstream_event_age_seconds_count", **step) == 6

        # Lag from the runner's own fetch state: every partition caught up.
        def lags() -> dict[str, float]:
            return {
                s.labels["partition"]: s.value
                for m in REGISTRY.collect()
                if m.name == "deskstream_consumer_lag_records"
                for s in m.samples
                if s.labels["service"] == SERVICE
            }

        await until(lambda: len(lags()) >= 1)
        assert set(lags().values()) == {0.0}
        assert {
            s.labels["group"]
            for m in REGISTRY.collect()
            if m.name.endswith("lag_records")
            for s in m.samples
            if s.labels["service"] == SERVICE
        } == {SERVICE}

        # Lag from the broker: committed offsets against the end of every partition written.
        # The runner commits "last offset + 1", so the transaction's commit marker (one
        # offset, no record) still counts there: at most 1, never more.
        partitions = await lag.lag(group)
        assert partitions
        assert {p.topic for p in partitions} == {topic}
        assert sum(p.committed for p in partitions) == 6
        assert all(p.lag <= 1 for p in partitions)
        assert sum(p.end for p in partitions) == 6 + len(partitions)
    finally:
        runner.stop()
        await task
        await lag.close()


def test_meter_names_topics_by_registry_name() -> None:
    meter = Meter("unit", "t1.")
    assert meter.bare("t1.tickets.events") == "tickets.events"
    assert meter.bare("other.topic") == "other.topic"
    meter.produced("t1.outbound.email", 2)
    assert (
        REGISTRY.get_sample_value(
            "deskstream_events_produced_total",
            {"service": "unit", "topic": "outbound.email", "channel": "email"},
        )
        == 2
    )
