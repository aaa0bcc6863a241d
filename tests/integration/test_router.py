"""The router through the real broker: threading, classification, explained assignment, queues.

The test feeds the router's inputs as the other services would publish them (agents.state
and catalogue.services from the ticket-api, inbound.* from the ingestors) and reads its
commands from tickets.commands. The whole path with the real ticket-api is in test_e2e_*.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
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
