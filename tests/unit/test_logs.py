"""JSON log lines carry the correlation ids of the event they are about."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime

from deskstream.events import (
    AssignTicket,
    Channel,
    CreateTicket,
    InboundMessage,
    OutboundReply,
    SenderIdentity,
)
from deskstream.logs import JsonFormatter, correlation, event_context

SENDER = SenderIdentity(channel=Channel.EMAIL, kind="email", id="maria@example.com")
MESSAGE = InboundMessage(
    event_id="ev-1",
    channel=Channel.EMAIL,
    conversation_key="<root@mail.example.com>",
    sender=SENDER,
    received_at=datetime.now(UTC),
)


def line(message: str, **extra: object) -> dict[str, object]:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, message, (), None)
    record.__dict__.update(extra)
    parsed: dict[str, object] = json.loads(JsonFormatter("test").format(record))
    return parsed


def test_correlation_of_each_kind_of_record() -> None:
    assert correlation(MESSAGE) == {
        "event_id": "ev-1",
        "conversation_key": MESSAGE.conversation_key,
    }
    create = CreateTicket(command_id="create:ev-1", ticket_id="DS-AAAAAAAA", message=MESSAGE)
    # A command names the inbound event it carries: the id the ingest service logged.
    assert correlation(create) == {
        "event_id": "ev-1",
        "conversation_key": MESSAGE.conversation_key,
        "ticket_id": "DS-AAAAAAAA",
        "command_id": "create:ev-1",
    }
    assign = AssignTicket(command_id="route:x", ticket_id="DS-AAAAAAAA", agent_id="ana")
    assert correlation(assign) == {"ticket_id": "DS-AAAAAAAA", "command_id": "route:x"}
    reply = OutboundReply(
        reply_id="r-1",
        ticket_id="DS-AAAAAAAA",
        channel=Channel.EMAIL,
        conversation_key="c",
        recipient=SENDER,
        text="hi",
    )
    assert correlation(reply) == {
        "ticket_id": "DS-AAAAAAAA",
        "conversation_key": "c",
        "reply_id": "r-1",
    }


def test_lines_inside_a_context_carry_its_ids_and_extra_wins() -> None:
    assert "event_id" not in line("outside")
    with event_context(**correlation(MESSAGE)):
        inside = line("inside")
        assert inside["event_id"] == "ev-1"
        assert inside["conversation_key"] == MESSAGE.conversation_key
        with event_context(ticket_id="DS-AAAAAAAA", event_id=None):
            nested = line("nested", event_id="explicit")
            assert nested["ticket_id"] == "DS-AAAAAAAA"
            assert nested["event_id"] == "explicit"
        assert "ticket_id" not in line("back out")
    assert "event_id" not in line("after")


async def test_concurrent_tasks_keep_their_own_ids() -> None:
    async def handle(n: int) -> object:
        with event_context(event_id=f"ev-{n}"):
            await asyncio.sleep(0.01 * (3 - n))
            return line("handled")["event_id"]

    assert await asyncio.gather(*(handle(n) for n in range(3))) == ["ev-0", "ev-1", "ev-2"]
