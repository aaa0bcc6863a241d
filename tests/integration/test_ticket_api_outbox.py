"""The transactional outbox survives crashes: no event lost, none published twice.

Every read of a topic here is `read_committed`, as every deskstream consumer reads: a relay
killed inside a Kafka transaction leaves records that its successor aborts.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from deskstream.events import TICKET_EVENT
from deskstream.topics import Topics
from deskstream_ticket_api.outbox import Pending, Waker
from deskstream_ticket_api.relay import OutboxRelay, TransactionalPublisher

from tests.conftest import Infra
from tests.integration.test_ticket_api_kit import (
    ADMIN_KEY,
    CuttingProxy,
    assert_each_once,
    create_cmd,
    inbound,
    kill_service,
    publish_commands,
    read_topic,
    running_api,
    settings_for,
    start_service,
    stop_service,
    wait_ready,
)

pytestmark = pytest.mark.timeout(120)


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


async def test_crash_after_write_before_publish_loses_nothing(
    infra: Infra, topic_prefix: str, mongo_db: Any, tmp_path: Path
) -> None:
    """Changes committed with their outbox documents, then SIGKILL before any publish."""
    topics = Topics(topic_prefix)
    cmds = [create_cmd(inbound(source_id=f"pre-{n}")) for n in range(20)]
    first = start_service(
        infra, topic_prefix, mongo_db.name, tmp_path, TICKET_API_RELAY_ENABLED="false"
    )
    try:
        await wait_ready(first)
        await publish_commands(infra, topics.name("tickets.commands"), cmds)
        # REST writes go the same way: the state change and its AgentState together.
        async with httpx.AsyncClient(
            base_url=first.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        ) as client:
            assert (await client.post("/v1/teams", json={"team_id": "t", "name": "T"})).is_success
            resp = await client.post(
                "/v1/agents", json={"agent_id": "alice", "name": "Alice", "teams": ["t"]}
            )
            assert resp.status_code == 201, resp.text

        async def all_written() -> bool:
            return bool(await mongo_db["outbox"].count_documents({"published": False}) == 41)

        await wait_for(all_written, 30, "outbox documents were not written")
    finally:
        kill_service(first)
    assert await read_topic(infra, topics.name("tickets.events"), settle=0.5) == []

    second = start_service(infra, topic_prefix, mongo_db.name, tmp_path)
    try:
        await wait_ready(second)
        events = await read_topic(
            infra, topics.name("tickets.events"), until=lambda rs: len(rs) >= 40
        )
        agents = await read_topic(infra, topics.name("agents.state"), until=lambda rs: len(rs) >= 1)
        got = assert_each_once(events) + assert_each_once(agents)
        outbox_ids = {d["_id"] async for d in mongo_db["outbox"].find({}, {"_id": 1})}
        assert sorted(got) == sorted(outbox_ids)
        assert await mongo_db["outbox"].count_documents({"published": False}) == 0
    finally:
        assert stop_service(second) == 0, second.output()


async def test_killed_after_kafka_commit_before_the_mark(
    infra: Infra, topic_prefix: str, mongo_db: Any, tmp_path: Path
) -> None:
    """The real process, killed in the exact window: Kafka committed a batch, no mark sent.

    The relay reaches MongoDB through a proxy that swallows its first `update` of the
    outbox; the service is SIGKILLed while it waits for that mark. Its successor must find
    the batch on Kafka, mark it without sending it again, and publish the rest.
    """
    topics = Topics(topic_prefix)
    cmds = [create_cmd(inbound(source_id=f"mark-{n}")) for n in range(50)]
    await publish_commands(infra, topics.name("tickets.commands"), cmds)
    writer = start_service(
        infra, topic_prefix, mongo_db.name, tmp_path, TICKET_API_RELAY_ENABLED="false"
    )
    try:
        await wait_ready(writer)

        async def applied() -> bool:
            return bool(await mongo_db["applied_commands"].count_documents({}) == len(cmds))

        await wait_for(applied, 30, "commands were not applied")
    finally:
        assert stop_service(writer) == 0, writer.output()

    host, port = infra.mongodb_uri.removeprefix("mongodb://").split("/")[0].rsplit(":", 1)
    proxy = CuttingProxy(host, int(port), marker=b"\x02update\x00\x07\x00\x00\x00outbox\x00")
    await proxy.start()
    proxy.armed = True
    relay_only = {"TICKET_API_CONSUMER_ENABLED": "false", "TICKET_API_RELAY_BATCH": "25"}
    victim = start_service(
        infra, topic_prefix, mongo_db.name, tmp_path, MONGODB_URI=proxy.uri(), **relay_only
    )
    try:
        await asyncio.wait_for(proxy.cut.wait(), 30)
    finally:
        kill_service(victim)
        await proxy.stop()
    events_topic = topics.name("tickets.events")
    on_kafka = await read_topic(infra, events_topic, until=lambda rs: len(rs) >= 25)
    assert len(on_kafka) == 25  # the first batch is out ...
    assert await mongo_db["outbox"].count_documents({"published": True}) == 0  # ... unmarked

    successor = start_service(infra, topic_prefix, mongo_db.name, tmp_path, **relay_only)
    try:
        await wait_ready(successor)
        records = await read_topic(infra, events_topic, until=lambda rs: len(rs) >= 100)
        got = assert_each_once(records)
        assert len(got) == 100
        assert await mongo_db["outbox"].count_documents({"published": False}) == 0
    finally:
        assert stop_service(successor) == 0, successor.output()
    readback = [
        json.loads(line)
        for line in successor.log.read_text().splitlines()
        if "outbox read-back done" in line
    ]
    assert [(r["pending"], r["already_published"]) for r in readback] == [(100, 25)]


async def test_crash_between_publish_and_mark_publishes_nothing_twice(
    infra: Infra, topic_prefix: str, mongo_db: Any
) -> None:
    """The exact window, made deterministic: Kafka has the batch, MongoDB does not know.

    A first relay publishes a batch; then its marks are undone, as if it died right after
    Kafka's commit. It also leaves a transaction open with a copy of a later record, as if
    it died mid-publish. A successor must publish each record exactly once.
    """
    settings = settings_for(infra, topic_prefix, mongo_db.name, relay_enabled=False)
    topic = settings.topics.name("tickets.events")
    async with running_api(settings) as api:
        outbox = api.runtime.store["outbox"]
        assert await api.apply(*[create_cmd(inbound(source_id=f"win-{n}")) for n in range(5)]) == {}
        assert await outbox.count_documents({"published": False}) == 10

        first = OutboxRelay(store=api.runtime.store, settings=settings, waker=Waker())
        crashed = TransactionalPublisher(settings, first.transactional_id)
        await crashed.start()
        assert await first.lease.acquire()
        assert await first.publish_once(crashed) == 10
        await outbox.update_many({}, {"$set": {"published": False, "published_at": None}})
        assert (
            await api.apply(*[create_cmd(inbound(source_id=f"win2-{n}")) for n in range(5)]) == {}
        )
        later = Pending.from_doc(
            await outbox.find_one({"published": False}, sort=[("order", -1)]) or {}
        )
        await crashed.producer.begin_transaction()
        await crashed.producer.send(
            later.topic,
            key=later.key.encode() if later.key else None,
            value=b"{}",
            headers=[("ce_id", later.event_id.encode())],
        )
        await crashed.producer.flush()
        await first.lease.release()  # its lease lapses, as a dead holder's does

        second = OutboxRelay(store=api.runtime.store, settings=settings, waker=Waker())
        publisher = TransactionalPublisher(settings, second.transactional_id)
        await publisher.start()  # fences the first producer and aborts its open transaction
        try:
            assert await second.lease.acquire()
            assert await second.recover(publisher) == 10  # found on Kafka, marked, not resent
            while await second.publish_once(publisher):
                pass
        finally:
            await publisher.stop()
        with pytest.raises(Exception, match=r"(?i)fenced|epoch"):
            await crashed.producer.commit_transaction()
        await crashed.stop()

        records = await read_topic(infra, topic, until=lambda rs: len(rs) >= 20)
        got = assert_each_once(records)
        assert len(got) == 20
        assert all(TICKET_EVENT.validate_json(r.value) for r in records)
        assert await outbox.count_documents({"published": False}) == 0


async def test_sigkill_at_random_points_while_the_relay_publishes(
    infra: Infra, topic_prefix: str, mongo_db: Any, tmp_path: Path
) -> None:
    """Kill the service at random moments while the relay publishes 1,200 events.

    The changes are applied first (relay off), so the kills land in the relay's cycle of
    Kafka transaction -> mark, many times over in small batches. (A kill inside a MongoDB
    transaction is covered by the first test; its successor would wait for the server to
    reap the orphaned transaction, which takes 60 s.)
    """
    topics = Topics(topic_prefix)
    cmds = [create_cmd(inbound(source_id=f"flow-{n}")) for n in range(600)]
    await publish_commands(infra, topics.name("tickets.commands"), cmds)
    writer = start_service(
        infra, topic_prefix, mongo_db.name, tmp_path, TICKET_API_RELAY_ENABLED="false"
    )
    try:
        await wait_ready(writer)

        async def applied() -> bool:
            return bool(await mongo_db["applied_commands"].count_documents({}) == len(cmds))

        await wait_for(applied, 45, "commands were not applied")
    finally:
        assert stop_service(writer) == 0, writer.output()
    assert await mongo_db["outbox"].count_documents({"published": False}) == 1200

    relay_only = {
        "TICKET_API_CONSUMER_ENABLED": "false",
        "TICKET_API_RELAY_BATCH": "15",  # many short Kafka transactions: many windows
        "TICKET_API_RELAY_LEASE_S": "1",  # a killed holder's lease lapses quickly
    }
    rng = random.Random()
    kills = 0
    while kills < 4:
        marked = await mongo_db["outbox"].count_documents({"published": True})
        if marked > 1000:
            break
        service = start_service(infra, topic_prefix, mongo_db.name, tmp_path, **relay_only)

        async def relaying(before: int = marked) -> bool:
            published = await mongo_db["outbox"].count_documents({"published": True})
            return bool(published > before)

        await wait_for(relaying, 30, "the relay did not start publishing")
        await asyncio.sleep(rng.uniform(0, 0.4))
        kill_service(service)
        kills += 1
    service = start_service(infra, topic_prefix, mongo_db.name, tmp_path, **relay_only)
    try:
        await wait_ready(service)
        records = await read_topic(
            infra, topics.name("tickets.events"), until=lambda rs: len(rs) >= 1200, timeout=45
        )
        got = assert_each_once(records)
        assert len(got) == 1200
        assert await mongo_db["outbox"].count_documents({"published": False}) == 0
    finally:
        assert stop_service(service) == 0, service.output()
    readbacks = [
        json.loads(line)
        for log in tmp_path.glob("*.log")
        for line in log.read_text(errors="replace").splitlines()
        if "outbox read-back done" in line
    ]
    found = sum(r["already_published"] for r in readbacks)
    print(f"{kills} kill(s); read-backs found {found} record(s) published but not marked")
