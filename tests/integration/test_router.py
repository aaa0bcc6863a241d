"""The router through the real broker: threading, classification, explained assignment, queues.

The test feeds the router's inputs as the other services would publish them (agents.state
and catalogue.services from the ticket-api, inbound.* from the ingestors) and reads its
commands from tickets.commands. The whole path with the real ticket-api is in test_e2e_*.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from deskstream.events import (
    AgentState,
    Channel,
    ChannelCapacity,
    InboundMessage,
    Presence,
    SenderIdentity,
    ServiceEntry,
    TicketAssigned,
)
from deskstream.ids import event_id, ticket_id_for
from deskstream_router.classify import Rules
from deskstream_router.models import PlaceTicket

from bench.pipeline import changelog_stats
from tests.conftest import Infra, free_port
from tests.kafka_helpers import Collector, publish, roster_reached
from tests.services import start_service, stop_all, wait_status

RULES_VERSION = Rules.load().version


def email(
    n: str, subject: str, text: str, conversation: str | None = None, hint: str | None = None
) -> InboundMessage:
    mid = f"<{n}@mail.example.com>"
    return InboundMessage(
        event_id=event_id("email", "desk@example.com", mid),
        channel=Channel.EMAIL,
        conversation_key=conversation or mid,
        sender=SenderIdentity(channel=Channel.EMAIL, kind="email", id=f"{n}@example.com"),
        subject=subject,
        text=text,
        received_at=datetime.now(UTC),
        ticket_hint=hint,
    )


def agent(agent_id: str, presence: Presence, vpn: int, email_cap: int = 10) -> AgentState:
    return AgentState(
        agent_id=agent_id,
        name=agent_id.title(),
        teams=["network"],
        skills={"vpn": vpn},
        presence=presence,
        capacity=ChannelCapacity(email=email_cap, total=20),
    )


def commands(records: list[Any], kind: str, ticket_id: str) -> list[dict[str, Any]]:
    out = []
    for r in records:
        value = json.loads(r.value)
        if value["type"] == kind and value["ticket_id"] == ticket_id:
            out.append(value)
    return out


def placements(name: str, n: int) -> list[PlaceTicket]:
    """`n` new email tickets for team network, as the router's first stage sends them."""
    start = datetime.now(UTC)
    return [
        PlaceTicket(
            ticket_id=ticket_id_for(f"{name}-{i}"),
            team="network",
            channel=Channel.EMAIL,
            service_id="printing",
            created_at=start + timedelta(milliseconds=i),
        )
        for i in range(n)
    ]


@pytest.fixture
def router(infra: Infra, topic_prefix: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    port = free_port()
    proc = start_service("router", infra.service_env(topic_prefix), port, tmp_path / "router.log")
    try:
        wait_status([port], 200, timeout=90)
        yield proc
    finally:
        stop_all([proc])


async def test_routing_filters_and_explains(
    infra: Infra, topic_prefix: str, router: subprocess.Popen[bytes]
) -> None:
    p = topic_prefix
    await publish(
        infra.kafka,
        f"{p}catalogue.services",
        [
            (
                "vpn",
                ServiceEntry(
                    service_id="vpn",
                    name="Remote access",
                    team="network",
                    required_skills={"vpn": 3},
                    criticality="high",
                ),
            )
        ],
    )
    await publish(
        infra.kafka,
        f"{p}agents.state",
        [
            ("a1-junior", agent("a1-junior", Presence.ONLINE, vpn=2)),
            ("a2-offline", agent("a2-offline", Presence.OFFLINE, vpn=5)),
            ("a3-full", agent("a3-full", Presence.ONLINE, vpn=4, email_cap=1)),
            ("a4-right", agent("a4-right", Presence.ONLINE, vpn=3)),
        ],
    )
    # a3 already holds one open email ticket: its email cap of 1 is used up.
    busy = TicketAssigned(
        event_id="evt:busy",
        ticket_id="DS-AAAAAAAA",
        agent_id="a3-full",
        team="network",
        channel=Channel.EMAIL,
    )
    await publish(infra.kafka, f"{p}tickets.events", [("DS-AAAAAAAA", busy)])

    # The roster and a3's load reach the team's partition through the ledger; wait for that
    # (in production the ticket-api's events come long before the next request).
    await roster_reached(
        infra.kafka, p, "a3-full", lambda snap: "DS-AAAAAAAA" in snap["open_tickets"]
    )
    async with Collector(infra.kafka, f"{p}tickets.commands") as out:
        first = email("m1", "VPN drops every 10 minutes", "AnyConnect disconnects")
        await publish(infra.kafka, f"{p}inbound.email", [(first.conversation_key, first)])
        tid = ticket_id_for(first.event_id)
        assigned = await out.wait_for(lambda rs: commands(rs, "assign", tid))

        created = commands(out.records, "create", tid)[0]
        assert (created["service_id"], created["team"]) == ("vpn", "network")
        assert created["classification_rule"] == f"vpn@v{RULES_VERSION}"
        assert assigned[0]["agent_id"] == "a4-right"
        why = {c["agent_id"]: c["filtered_by"] for c in assigned[0]["explanation"]["candidates"]}
        assert why == {
            "a1-junior": "skill: vpn 2 < 3",
            "a2-offline": "presence: offline",
            "a3-full": "capacity: email 1/1",
            "a4-right": None,
        }

        # A follow-up in the same conversation and a reply naming the ticket both append.
        follow = email(
            "m2", "Re: VPN drops", "still happening", conversation="<m1@mail.example.com>"
        )
        hinted = email(
            "m3", f"RE: [#{tid}] VPN", "and again", conversation=f"ticket:{tid}", hint=tid
        )
        await publish(
            infra.kafka,
            f"{p}inbound.email",
            [(follow.conversation_key, follow), (hinted.conversation_key, hinted)],
        )
        appended = await out.wait_for(
            lambda rs: len(commands(rs, "append", tid)) == 2 and commands(rs, "append", tid)
        )
        assert {a["message"]["event_id"] for a in appended} == {follow.event_id, hinted.event_id}
        assert len(commands(out.records, "create", tid)) == 1
        assert len(commands(out.records, "assign", tid)) == 1


async def test_queued_ticket_is_assigned_when_an_agent_comes_online(
    infra: Infra, topic_prefix: str, router: subprocess.Popen[bytes]
) -> None:
    p = topic_prefix
    await publish(
        infra.kafka,
        f"{p}catalogue.services",
        [
            (
                "printing",
                ServiceEntry(
                    service_id="printing", name="Printing", team="network", required_skills={}
                ),
            )
        ],
    )
    await publish(infra.kafka, f"{p}agents.state", [("b1", agent("b1", Presence.OFFLINE, vpn=1))])
    await roster_reached(infra.kafka, p, "b1", lambda snap: True)
    async with Collector(infra.kafka, f"{p}tickets.commands") as out:
        msg = email("q1", "Printer jams", "third floor printer jams on every page")
        await publish(infra.kafka, f"{p}inbound.email", [(msg.conversation_key, msg)])
        tid = ticket_id_for(msg.event_id)
        queued = await out.wait_for(lambda rs: commands(rs, "queue", tid))
        assert queued[0]["position"] == 1
        assert queued[0]["explanation"]["candidates"][0]["filtered_by"] == "presence: offline"
        assert not commands(out.records, "assign", tid)

        # Only a presence change arrives — no new message — and the queue drains.
        await publish(
            infra.kafka, f"{p}agents.state", [("b1", agent("b1", Presence.ONLINE, vpn=1))]
        )
        assigned = await out.wait_for(lambda rs: commands(rs, "assign", tid))
        assert assigned[0]["agent_id"] == "b1"


async def test_a_team_queue_past_one_megabyte_keeps_routing(
    infra: Infra, topic_prefix: str, router: subprocess.Popen[bytes]
) -> None:
    """An outage storm: 18,000 tickets wait in one team with nobody online. The team's
    changelog record grows past Kafka's default 1 MB; the router keeps queueing, and when an
    agent comes online the oldest tickets are assigned first."""
    p = topic_prefix
    await publish(infra.kafka, f"{p}agents.state", [("s1", agent("s1", Presence.OFFLINE, vpn=1))])
    await roster_reached(infra.kafka, p, "s1", lambda snap: True)
    storm = placements("storm", 18_000)
    async with Collector(infra.kafka, f"{p}tickets.commands") as out:
        await publish(infra.kafka, f"{p}routing.requests", [("network", t) for t in storm])
        await out.wait_for(
            lambda rs: sum(b'"type":"queue"' in r.value for r in rs) >= len(storm), timeout=300
        )
        teams = changelog_stats(infra.kafka, p)["router-teams-changelog"]
        assert teams["newest_record_bytes_max"] > 1_048_576, teams

        await publish(
            infra.kafka, f"{p}agents.state", [("s1", agent("s1", Presence.ONLINE, vpn=1))]
        )
        # s1 takes 10 email tickets (its cap): the 10 oldest, whichever partition says so first.
        assigned = await out.wait_for(
            lambda rs: (
                len(a := [json.loads(r.value) for r in rs if b'"type":"assign"' in r.value]) >= 10
                and a
            )
        )
        assert {a["ticket_id"] for a in assigned} == {t.ticket_id for t in storm[:10]}
    assert router.poll() is None


async def test_a_full_team_queue_dead_letters_new_tickets_with_the_reason(
    infra: Infra, topic_prefix: str, tmp_path: Path
) -> None:
    p = topic_prefix
    port = free_port()
    env = infra.service_env(p, ROUTER_MAX_QUEUED_PER_TEAM="3")
    proc = start_service("router", env, port, tmp_path / "router.log")
    try:
        wait_status([port], 200, timeout=90)
        await publish(
            infra.kafka, f"{p}agents.state", [("f1", agent("f1", Presence.OFFLINE, vpn=1))]
        )
        await roster_reached(infra.kafka, p, "f1", lambda snap: True)
        tickets = placements("full", 5)
        async with Collector(infra.kafka, f"{p}tickets.commands", f"{p}deadletter.router") as out:
            await publish(infra.kafka, f"{p}routing.requests", [("network", t) for t in tickets])
            letters = await out.wait_for(
                lambda rs: len(dl := [r for r in rs if r.topic.endswith("router")]) == 2 and dl
            )
            queued = [json.loads(r.value) for r in out.records if b'"type":"queue"' in r.value]
        # Commands are keyed by ticket, so they come from several partitions: no order.
        assert {q["ticket_id"] for q in queued} == {t.ticket_id for t in tickets[:3]}
        reasons = [json.loads(r.value)["reason"] for r in letters]
        assert all("already has 3 queued tickets" in reason for reason in reasons), reasons
        for ticket in tickets[3:]:
            assert sum(ticket.ticket_id in reason for reason in reasons) == 1, reasons
        assert proc.poll() is None
    finally:
        stop_all([proc])
