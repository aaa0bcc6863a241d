"""ticket-api through its real entry point: commands applied once, poison dead-lettered, SIGTERM."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from deskstream import ids
from deskstream.events import TICKET_EVENT, DeadLetter
from deskstream.topics import TOPICS, Topics, ensure_topics

from tests.conftest import TEST_RUN_DIR, Infra, free_port, infra_cmd, infra_env
from tests.integration.test_ticket_api_kit import (
    append_cmd,
    assert_each_once,
    assign_cmd,
    create_cmd,
    deflect_cmd,
    inbound,
    publish_commands,
    queue_cmd,
    read_topic,
    start_service,
    stop_service,
    wait_ready,
)

pytestmark = pytest.mark.timeout(120)


async def wait_consumed(infra: Infra, group: str, topic: str, total: int, timeout: float) -> None:
    """Until the group's committed offsets on `topic` add up to `total` records."""
    partitions = next(t for t in TOPICS if topic.endswith(t.name)).partitions
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    # A consumer that never subscribes only asks the group coordinator; it does not join.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=infra.kafka, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        while True:
            done = sum([(await consumer.committed(tp)) or 0 for tp in tps])
            if done >= total:
                return
            assert time.monotonic() < deadline, f"consumed {done} of {total}"
            await asyncio.sleep(0.3)
    finally:
        await consumer.stop()


async def test_commands_are_applied_once_and_poison_is_dead_lettered(
    infra: Infra, topic_prefix: str, mongo_db: Any, tmp_path: Path
) -> None:
    topics = Topics(topic_prefix)
    commands_topic = topics.name("tickets.commands")
    cmds: list[Any] = []
    expected_types: list[str] = []
    for n in range(30):
        first = inbound(source_id=f"svc-{n}", subject=f"Printer {n}")
        tid = ids.ticket_id_for(first.event_id)
        follow_up = inbound(
            source_id=f"svc-{n}-again", conversation_key=first.conversation_key, text="Still."
        )
        cmds += [create_cmd(first, team="network"), append_cmd(tid, follow_up)]
        expected_types += ["created", "message_added", "message_added"]
        if n % 3 == 0:
            cmds.append(assign_cmd(tid, "alice", explanation={"score": n}))
            expected_types += ["assigned", "status_changed"]
        elif n % 3 == 1:
            cmds.append(queue_cmd(tid, "network", n))
            expected_types.append("queued")
        else:
            cmds.append(deflect_cmd(tid))
            expected_types.append("status_changed")
    poison = (b"DS-AAAAAAAA", b"\xff\xfe this is not a command")
    orphan = append_cmd("DS-BBBBBBBB", inbound(source_id="orphan"))
    # Everything twice, as a redelivery would hand it over: the second copy changes nothing.
    await publish_commands(infra, commands_topic, cmds, raw=[poison])
    await publish_commands(infra, commands_topic, [*cmds, orphan])
    total = 2 * len(cmds) + 2

    service = start_service(infra, topic_prefix, mongo_db.name, tmp_path)
    try:
        await wait_ready(service)
        events_topic = topics.name("tickets.events")
        records = await read_topic(
            infra, events_topic, until=lambda rs: len(rs) >= len(expected_types), timeout=45
        )
        got = assert_each_once(records)
        assert len(got) == len(expected_types)
        events = [TICKET_EVENT.validate_json(r.value) for r in records]
        assert sorted(e.type for e in events) == sorted(expected_types)
        assert all(e.event_id.startswith("router:") for e in events)  # derived from commands
        assert {r.key for r in records} == {c.ticket_id.encode() for c in cmds}

        db = mongo_db
        assert await db["tickets"].count_documents({}) == 30
        assert await db["messages"].count_documents({}) == 60
        assert await db["applied_commands"].count_documents({}) == len(cmds)
        assert await db["tickets"].count_documents({"status": "open", "assignee": "alice"}) == 10
        assert await db["tickets"].count_documents({"status": "pending"}) == 10
        assert await db["tickets"].count_documents({"queue.team": "network"}) == 10
        assert await db["tickets"].count_documents({"message_count": 2}) == 30
        assert await db["explanations"].count_documents({}) == 30

        letters = await read_topic(
            infra, topics.deadletter("ticket-api"), until=lambda rs: len(rs) >= 2, timeout=30
        )
        assert len(letters) == 2
        dead = {DeadLetter.model_validate_json(r.value).original_value(): r for r in letters}
        assert poison[1] in dead
        assert dead[poison[1]].key == poison[0]
        orphan_record = dead[orphan.model_dump_json().encode()]
        orphan_letter = DeadLetter.model_validate_json(orphan_record.value)
        assert "DS-BBBBBBBB does not exist" in orphan_letter.reason
        assert orphan_letter.event_id == orphan.command_id  # from the ce_id header

        group = f"{topic_prefix}ticket-api-commands"
        await wait_consumed(infra, group, commands_topic, total, timeout=30)
        # A third delivery, while running: still nothing new anywhere.
        await publish_commands(infra, commands_topic, cmds)
        await wait_consumed(infra, group, commands_topic, total + len(cmds), timeout=30)
        again = await read_topic(infra, events_topic, settle=1.0)
        assert len(again) == len(expected_types)
        assert await db["messages"].count_documents({}) == 60
        assert await db["outbox"].count_documents({"published": False}) == 0
    finally:
        code = stop_service(service)
    assert code == 0, service.output()  # SIGTERM: a clean stop
    assert '"ticket-api stopped"' in service.output()


async def readyz(url: str) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        try:
            resp = await client.get("/readyz")
        except httpx.HTTPError:
            return 0, {}
        return resp.status_code, resp.json().get("checks", {})


async def wait_readyz(url: str, status: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        code, checks = await readyz(url)
        if code == status:
            return checks
        assert time.monotonic() < deadline, f"/readyz not {status} in {timeout}s: {checks}"
        await asyncio.sleep(0.25)


async def test_readiness_is_honest_and_outages_pause_instead_of_losing(
    infra: Infra, tmp_path: Path
) -> None:
    """Private Kafka and MongoDB, so stopping them disturbs no other test."""
    ports = {"KAFKA": free_port(), "KAFKA_CONTROLLER": free_port(), "MONGO": free_port()}
    env_infra = infra_env(TEST_RUN_DIR / f"ticket-api-{uuid.uuid4().hex[:6]}", ports)
    await asyncio.to_thread(infra_cmd, "up", "kafka", "mongo", env=env_infra)
    kafka = f"127.0.0.1:{ports['KAFKA']}"
    private = replace(infra, kafka=kafka, mongodb_uri=f"mongodb://127.0.0.1:{ports['MONGO']}")
    prefix = f"t{uuid.uuid4().hex[:10]}."
    await asyncio.to_thread(ensure_topics, kafka, prefix)
    topics = Topics(prefix)
    service = start_service(private, prefix, "deskstream_ready", tmp_path)
    try:
        checks = await wait_readyz(service.url, 200, 60)
        assert set(checks) == {"mongodb", "kafka", "producer", "store", "commands consumer"}

        await asyncio.to_thread(infra_cmd, "down", "mongo", env=env_infra)
        checks = await wait_readyz(service.url, 503, 10)
        assert checks["mongodb"].startswith("failing")
        # Commands arriving meanwhile wait (the runner pauses); none is dead-lettered.
        cmds = [create_cmd(inbound(source_id=f"outage-{n}")) for n in range(10)]
        await publish_commands(private, topics.name("tickets.commands"), cmds)
        await asyncio.sleep(3)
        await asyncio.to_thread(infra_cmd, "up", "mongo", env=env_infra)
        await wait_readyz(service.url, 200, 30)
        records = await read_topic(
            private, topics.name("tickets.events"), until=lambda rs: len(rs) >= 20, timeout=45
        )
        assert len(assert_each_once(records)) == 20
        assert await read_topic(private, topics.deadletter("ticket-api"), settle=0.5) == []

        await asyncio.to_thread(infra_cmd, "down", "kafka", env=env_infra)
        checks = await wait_readyz(service.url, 503, 10)
        assert checks["kafka"].startswith("failing")
        await asyncio.to_thread(infra_cmd, "up", "kafka", env=env_infra)
        await wait_readyz(service.url, 200, 30)
    finally:
        code = stop_service(service)
        await asyncio.to_thread(infra_cmd, "down", "kafka", "mongo", env=env_infra)
        shutil.rmtree(env_infra["DESKSTREAM_RUN_DIR"], ignore_errors=True)
    assert code == 0, service.output()
