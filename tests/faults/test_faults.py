"""Fault injection (`make test-faults`): a steady stream of events through the whole desk,
one fault at a time, then count — zero lost, zero duplicated, every poison record
dead-lettered with a reason, every service healthy again without a human.

Each fault runs over EVENTS events (webhooks, mail and X mentions in turn) on a fresh topic
prefix and database; the fault starts once 30% of them were sent and the rest keep coming
while it lasts. Recovery is the time from lifting the fault (the restart, the server
started again) until every service is ready and a new event, sent then, is a ticket in
MongoDB. The table is printed at the end of the run (tests/faults/conftest.py); the raw
rows go to `.run/faults/results.json`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from aiokafka import AIOKafkaProducer
from deskstream.events import Channel

from tests.faults.conftest import FAULT_RUN_DIR, FaultInfra
from tests.faults.pipeline import (
    RESULTS,
    SERVICES,
    FaultDesk,
    Row,
    Traffic,
    dead_letters,
    outcome,
    where,
)
from tests.integration.test_ingest_social_e2e import x  # noqa: F401  (the local X fixture)
from tests.xapi import XServer

EVENTS = int(os.environ.get("DESKSTREAM_FAULT_EVENTS", "1000"))
RATE = float(os.environ.get("DESKSTREAM_FAULT_RATE", "50"))  # events offered per second

pytestmark = pytest.mark.timeout(900)


@pytest.fixture
async def desk(
    infra: FaultInfra,
    topic_prefix: str,
    mongo_db: Any,
    tmp_path: Path,
    x: XServer,  # noqa: F811 (the fixture imported above)
) -> AsyncIterator[FaultDesk]:
    desk = FaultDesk(infra, topic_prefix, mongo_db.name, tmp_path)
    desk.x = x
    try:
        desk.start(*SERVICES)
        await desk.load_demo_org()
        yield desk
    finally:
        desk.stop()


async def run(
    name: str,
    desk: FaultDesk,
    db: Any,
    inject: Callable[[], Awaitable[None]],
    *,
    poison: list[tuple[str, bytes]] | None = None,
) -> Row:
    async def fault() -> float:
        print(f"fault {name}: injecting", flush=True)
        await inject()
        lifted = time.monotonic()
        print(f"fault {name}: lifted; waiting for every service to be ready", flush=True)
        await desk.until_ready()
        # Recovered = a new event, sent now, is a ticket in MongoDB.
        await traffic.canary(db)
        seconds = time.monotonic() - lifted
        print(f"fault {name}: a new event became a ticket {seconds:.1f} s after", flush=True)
        return seconds

    traffic = Traffic(desk, EVENTS, RATE)
    supervisor = asyncio.create_task(desk.supervise())
    try:
        recovery = await traffic.drive(fault)
        counts = await outcome(desk, db, traffic.accepted)
    finally:
        supervisor.cancel()
    letters = await dead_letters(desk)
    row = Row(
        fault=name,
        sent=traffic.accepted + len(poison or []),
        persisted=counts["tickets"],
        lost=counts["lost"],
        duplicates=counts["duplicates"],
        dead_lettered=len(letters),
        recovery_s=recovery,
        restarts=sum(desk.restarts.values()),
    )
    RESULTS.append(row)
    print(f"{row} retries {dict(traffic.retries)} restarts {dict(desk.restarts)} counts {counts}")
    assert traffic.accepted == EVENTS + 1  # and the canary
    if counts["lost"] or counts["duplicates"]:
        print("by channel:", await where(desk, db))
    assert counts["lost"] == 0, counts
    assert counts["duplicates"] == 0, counts
    assert not desk.dead_processes(), desk.dead_processes()
    expected = {base64.b64encode(value).decode() for _, value in poison or []}
    got = {letter["original_value_b64"] for letter in letters}
    assert got == expected, f"{len(got)} dead letters for {len(expected)} poison records"
    assert all(letter["reason"] for letter in letters)
    return row


def sigkill_and_restart(desk: FaultDesk, service: str) -> Callable[[], Awaitable[None]]:
    async def inject() -> None:
        desk.sigkill(service)
        await asyncio.sleep(2)
        desk.restart(service)

    return inject


@pytest.mark.parametrize("service", SERVICES)
async def test_sigkill_each_service_mid_stream(
    desk: FaultDesk, mongo_db: Any, service: str
) -> None:
    await run(f"SIGKILL {service}", desk, mongo_db, sigkill_and_restart(desk, service))


def outage(desk: FaultDesk, component: str, seconds: float) -> Callable[[], Awaitable[None]]:
    """Stop one server of the fault infrastructure, wait, start it again."""
    infra = desk.infra
    assert isinstance(infra, FaultInfra)

    async def inject() -> None:
        await asyncio.to_thread(infra.stop, component)
        await asyncio.sleep(seconds)
        await asyncio.to_thread(infra.start, component)

    return inject


async def test_kafka_broker_stopped_for_30_seconds(desk: FaultDesk, mongo_db: Any) -> None:
    await run("Kafka stopped 30 s", desk, mongo_db, outage(desk, "kafka", 30))


async def test_mongodb_stopped_and_started(desk: FaultDesk, mongo_db: Any) -> None:
    await run("MongoDB stopped 10 s", desk, mongo_db, outage(desk, "mongo", 10))


def _drop_imap_connections() -> int:
    """Kill the fault Dovecot's connection processes: every client sees its socket drop."""
    master = psutil.Process(int((FAULT_RUN_DIR / "imap" / "pid").read_text()))
    dropped = 0
    for child in master.children(recursive=True):
        try:
            if "imap" in child.name() or any("imap" in part for part in child.cmdline()[:1]):
                child.kill()
                dropped += 1
        except psutil.Error:
            pass
    return dropped


async def test_imap_server_drops_the_connection(desk: FaultDesk, mongo_db: Any) -> None:
    drops: list[int] = []

    async def inject() -> None:
        for _ in range(3):  # dropped three times, 3 s apart
            drops.append(await asyncio.to_thread(_drop_imap_connections))
            await asyncio.sleep(3)

    await run("IMAP connections dropped x3", desk, mongo_db, inject)
    assert sum(drops) > 0, "no IMAP connection was there to drop"


def poison_records() -> list[tuple[str, bytes]]:
    """Per inbound topic: invalid JSON, a future schema version, an oversized record."""
    records: list[tuple[str, bytes]] = []
    for channel in Channel:
        valid_shape = {
            "event_id": f"poison-{channel.value}",
            "channel": channel.value,
            "conversation_key": f"poison:{channel.value}",
            "sender": {"channel": channel.value, "kind": "email", "id": "p@example.com"},
            "text": "poison",
            "received_at": "2026-11-25T00:00:00Z",
        }
        records.append((channel.value, b'{"event_id": "broken'))
        records.append((channel.value, json.dumps({**valid_shape, "schema_version": 99}).encode()))
        oversized = {**valid_shape, "subject": "x" * 900_000}  # over the 1000-char limit
        records.append((channel.value, json.dumps(oversized).encode()))
    return records


async def test_poison_records_in_every_inbound_topic(desk: FaultDesk, mongo_db: Any) -> None:
    poison = poison_records()

    async def inject() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=desk.infra.kafka, max_request_size=4 * 1024 * 1024
        )
        await producer.start()
        try:
            for channel, value in poison:
                await producer.send_and_wait(
                    f"{desk.prefix}inbound.{channel}", value, key=f"poison:{channel}".encode()
                )
        finally:
            await producer.stop()

    await run("poison records", desk, mongo_db, inject, poison=poison)
