"""Routing under load with two router workers: caps hold, load matches MongoDB, queues drain."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from deskstream.events import (
    TICKET_EVENT,
    Channel,
    ChannelCapacity,
    InboundMessage,
    SenderIdentity,
    StatusChanged,
    TicketAssigned,
)
from deskstream.ids import event_id
from deskstream.lag import GroupLag
from pydantic import BaseModel

from tests.conftest import Infra, free_port
from tests.desk import DEMO_ORG, Desk
from tests.integration.test_ticket_api_kit import (
    assert_each_once,
    created_per_ticket,
    read_topic,
)
from tests.kafka_helpers import Collector, publish
from tests.services import start_service, wait_status

REQUESTS = 500
OPEN = {"new", "open", "pending"}
SUBJECTS = {  # subject -> the service the rules give it
    "VPN will not connect": "vpn",
    "Printer jams on every page": "printing",
    "Need a new laptop for a starter": "hardware-request",
    "SAP invoice posting fails": "finance-apps",
    "Account locked after password change": "password-reset",
}


def request(n: int) -> InboundMessage:
    subject = list(SUBJECTS)[n % len(SUBJECTS)]
    channel = Channel.EMAIL if n % 2 else Channel.PORTAL
    sender = f"user{n}@example.com"
    return InboundMessage(
        event_id=event_id(channel.value, "load-test", str(n)),
        channel=channel,
        conversation_key=f"load-{n}",
        sender=SenderIdentity(channel=channel, kind="email" if n % 2 else "portal", id=sender),
        subject=f"{subject} #{n}",
        text=f"{subject}. Request number {n}.",
        received_at=datetime.now(UTC),
        service_hint=SUBJECTS[subject] if channel is Channel.PORTAL else None,
    )


@pytest.fixture
async def desk(
    infra: Infra, topic_prefix: str, mongo_db: Any, tmp_path: Path
) -> AsyncIterator[Desk]:
    desk = Desk(infra, topic_prefix, mongo_db.name, tmp_path)
    try:
        desk.start("ticket-api", "router")
        await desk.load_demo_org()
        yield desk
    finally:
        desk.stop()


def caps() -> dict[str, dict[str, int]]:
    return {
        a["agent_id"]: ChannelCapacity(**a.get("capacity", {})).model_dump()
        for a in DEMO_ORG.AGENTS
    }


def assert_caps_never_exceeded(records: list[Any]) -> int:
    """Replay tickets.events in publication order; every agent stays within every cap."""
    limits = caps()
    open_by_agent: dict[str, dict[str, str]] = {}
    assignments = 0
    for r in sorted(records, key=lambda r: (r.timestamp, r.partition, r.offset)):
        event = TICKET_EVENT.validate_json(r.value)
        if isinstance(event, TicketAssigned):
            assignments += 1
            if event.previous_agent_id:
                open_by_agent.get(event.previous_agent_id, {}).pop(event.ticket_id, None)
            if event.status.value in OPEN:
                open_by_agent.setdefault(event.agent_id, {})[event.ticket_id] = event.channel
        elif isinstance(event, StatusChanged) and event.assignee:
            if event.new.value in OPEN:
                open_by_agent.setdefault(event.assignee, {})[event.ticket_id] = event.channel
            else:
                open_by_agent.get(event.assignee, {}).pop(event.ticket_id, None)
        else:
            continue
        for agent_id, tickets in open_by_agent.items():
            per_channel = Counter(Channel(ch).value for ch in tickets.values())
            assert len(tickets) <= limits[agent_id]["total"], (agent_id, tickets)
            for channel, count in per_channel.items():
                assert count <= limits[agent_id][channel], (agent_id, channel, count)
    return assignments


async def mongo_open_sets(db: Any) -> dict[str, set[str]]:
    docs = (
        await db["tickets"]
        .find({"assignee": {"$ne": None}, "status": {"$in": list(OPEN)}}, {"assignee": 1})
        .to_list(None)
    )
    out: dict[str, set[str]] = {}
    for d in docs:
        out.setdefault(d["assignee"], set()).add(d["_id"])
    return out


async def settle(db: Any, expected: int, timeout: float = 180) -> None:
    """Wait until every request is a ticket that is either assigned or queued."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        total = await db["tickets"].count_documents({})
        placed = await db["tickets"].count_documents(
            {"$or": [{"assignee": {"$ne": None}}, {"queue": {"$ne": None}}]}
        )
        if total == expected and placed == expected:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"not settled: {total} tickets, {placed} placed of {expected}")


async def where_they_stopped(desk: Desk, db: Any) -> str:
    """Which hop the missing requests did not pass: for a failure message."""
    p, kafka = desk.prefix, desk.infra.kafka
    async with Collector(kafka, f"{p}tickets.commands", f"{p}routing.requests") as seen:
        await asyncio.sleep(5)
    by_type: dict[str, set[str]] = {}
    for r in seen.records:
        value = json.loads(r.value)
        by_type.setdefault(f"{r.topic.rsplit('.', 1)[-1]}:{value['type']}", set()).add(
            value.get("ticket_id", "")
        )
    stored = {d["_id"] for d in await db["tickets"].find({}, {"_id": 1}).to_list(None)}
    counts = {k: len(v) for k, v in by_type.items()}
    unstored = by_type.get("commands:create", set()) - stored
    unplaced = by_type.get("commands:create", set()) - by_type.get("requests:place", set())
    group_lag = GroupLag(kafka, "e2e-routing")
    try:
        lag = {
            f"{x.topic.removeprefix(p)}[{x.partition}]": x.lag
            for x in await group_lag.lag(f"{p}router")
            if x.lag
        }
    finally:
        await group_lag.close()
    return (
        f"tickets per record type {counts}; created not stored {len(unstored)}; "
        f"created not placed {len(unplaced)}; router lag by partition {lag}"
    )


def start_second_router(desk: Desk) -> None:
    port = free_port()
    env = {**desk.env(), "ROUTER_DATA_DIR": str(desk.logs / "router-b-data")}
    desk.procs["router-b"] = start_service("router", env, port, desk.logs / "router-b.log")
    wait_status([port], 200, timeout=120)


async def send(desk: Desk, numbers: range) -> None:
    messages = [request(n) for n in numbers]
    for channel in (Channel.EMAIL, Channel.PORTAL):
        batch: list[tuple[str, BaseModel | None]] = [
            (m.conversation_key, m) for m in messages if m.channel is channel
        ]
        await publish(desk.infra.kafka, f"{desk.prefix}inbound.{channel.value}", batch)


async def settled(desk: Desk, db: Any, expected: int = REQUESTS) -> None:
    try:
        await settle(db, expected)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; {await where_they_stopped(desk, db)}") from None


async def assert_each_request_once(desk: Desk, db: Any) -> list[Any]:
    """One ticket with one message per request in MongoDB, and on tickets.events one
    `created` per ticket and no event published twice. Returns the events read."""
    assert await db["tickets"].count_documents({}) == REQUESTS
    messages = await db["messages"].count_documents({})
    assert messages == REQUESTS, f"{messages} messages for {REQUESTS} requests"
    records = await read_topic(
        desk.infra,
        f"{desk.prefix}tickets.events",
        until=lambda got: len(created_per_ticket(got)) >= REQUESTS,
        timeout=60,
        settle=3,  # anything published twice would arrive now
    )
    assert_each_once(records)
    created = created_per_ticket(records)
    assert len(created) == REQUESTS
    assert set(created.values()) == {1}
    return records


async def assert_load_matches_mongodb(desk: Desk, db: Any) -> dict[str, set[str]]:
    """Every agent's load, as the router derived it from tickets.events, equals the open
    tickets assigned to them in MongoDB."""

    def router_view(records: list[Any]) -> dict[str, set[str]]:
        latest: dict[str, tuple[int, set[str]]] = {}
        for r in records:
            value = json.loads(r.value)
            if value["type"] == "agent":
                agent, seq = value["state"]["agent_id"], value.get("seq", 0)
                if agent not in latest or seq >= latest[agent][0]:
                    latest[agent] = (seq, set(value["open_tickets"]))
        return {a: s for a, (_, s) in latest.items() if s}

    deadline = time.monotonic() + 60
    async with Collector(desk.infra.kafka, f"{desk.prefix}routing.requests") as snaps:
        await asyncio.sleep(3)  # the snapshots so far
        while (view := router_view(snaps.records)) != (truth := await mongo_open_sets(db)):
            assert time.monotonic() < deadline, {
                agent: (
                    sorted(view.get(agent, set()) - truth.get(agent, set())),
                    sorted(truth.get(agent, set()) - view.get(agent, set())),
                )
                for agent in set(view) | set(truth)
            }
            await asyncio.sleep(1)
    return truth


async def test_two_router_workers_never_exceed_a_cap_and_load_matches_mongodb(
    desk: Desk, mongo_db: Any
) -> None:
    start_second_router(desk)
    # Both workers decide at once: each owns some teams' partitions.
    await send(desk, range(REQUESTS))
    await settled(desk, mongo_db)
    records = await assert_each_request_once(desk, mongo_db)
    assigned = assert_caps_never_exceeded(records)
    online = [a for a in DEMO_ORG.AGENTS if a["presence"] == "online"]
    queued = await mongo_db["tickets"].count_documents({"assignee": None})
    print(f"routing: {assigned} assignments, {queued} tickets queued of {REQUESTS}")
    assert assigned >= len(online)  # work was assigned, not only queued
    assert queued > 0  # and the caps were reached: there was a last slot to fight over
    truth = await assert_load_matches_mongodb(desk, mongo_db)

    # Resolving tickets frees capacity, and the queue drains into it with no new message.
    ana = sorted(truth["ana"])[:2]
    with desk.client() as http:
        for tid in ana:
            resp = http.patch(f"/v1/tickets/{tid}", json={"status": "resolved"})
            assert resp.status_code == 200, resp.text
    deadline = time.monotonic() + 60
    while len((await mongo_open_sets(mongo_db)).get("ana", set()) - set(ana)) < len(truth["ana"]):
        assert time.monotonic() < deadline, "ana's freed slots were not refilled"
        await asyncio.sleep(0.5)
    assert_caps_never_exceeded(
        await read_topic(desk.infra, f"{desk.prefix}tickets.events", timeout=60, settle=3)
    )


async def test_router_sigkill_mid_stream_loses_nothing_and_load_matches_mongodb(
    desk: Desk, mongo_db: Any
) -> None:
    start_second_router(desk)
    wave = REQUESTS // 5
    await send(desk, range(0, 2 * wave))
    await asyncio.sleep(1.5)  # the workers are deciding
    desk.sigkill("router")  # the other worker takes its partitions after the session timeout
    await send(desk, range(2 * wave, 4 * wave))
    await asyncio.sleep(3)
    desk.start("router")  # on its old port: and they are shared again
    await send(desk, range(4 * wave, REQUESTS))
    await settled(desk, mongo_db)
    records = await assert_each_request_once(desk, mongo_db)
    assigned = assert_caps_never_exceeded(records)
    assert assigned > 0
    await assert_load_matches_mongodb(desk, mongo_db)


async def test_ticket_api_sigkill_mid_stream_applies_and_publishes_each_change_once(
    desk: Desk, mongo_db: Any
) -> None:
    wave = REQUESTS // 5
    await send(desk, range(0, 2 * wave))
    await asyncio.sleep(1.5)  # commands are being applied and relayed
    desk.sigkill("ticket-api")
    await send(desk, range(2 * wave, 4 * wave))
    await asyncio.sleep(2)
    desk.start("ticket-api")
    await send(desk, range(4 * wave, REQUESTS))
    await settled(desk, mongo_db)
    records = await assert_each_request_once(desk, mongo_db)
    assert_caps_never_exceeded(records)
    await assert_load_matches_mongodb(desk, mongo_db)
