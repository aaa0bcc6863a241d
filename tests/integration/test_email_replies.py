"""Agents' replies by email: outbound.email -> SMTP -> the requester, and back to the ticket.

The reply sender runs in this process (its real `ReplyService`) against the real broker,
MongoDB-wire server and SMTP servers: the shared aiosmtpd sink writing into a Maildir, or an
aiosmtpd server in the test that answers 4xx/5xx like a real relay would. The end-to-end
test runs the whole desk through its entry points.
"""

from __future__ import annotations

import asyncio
import json
import mailbox
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiosmtpd.controller import Controller
from deskstream.events import Channel, OutboundReply, SenderIdentity
from deskstream.ids import desk_message_id, event_id
from deskstream_ingest_email.outbound import ReplyService
from deskstream_ingest_email.settings import IngestEmailSettings

from tests.conftest import Infra, free_port
from tests.desk import Desk
from tests.kafka_helpers import Collector, publish

DESK_FROM = "servicedesk@example.com"
TICKET = "DS-7K2M6QXA"


def settings_for(infra: Infra, prefix: str, database: str, **overrides: Any) -> IngestEmailSettings:
    values: dict[str, Any] = {
        "kafka_bootstrap_servers": infra.kafka,
        "topic_prefix": prefix,
        "mongodb_uri": infra.mongodb_uri,
        "mongodb_database": database,
        "imap_password": "not-used-by-the-reply-sender",
        "smtp_host": infra.smtp_host,
        "smtp_port": infra.smtp_port,
        "reply_from": DESK_FROM,
        "message_id_domain": "desk.example.com",
        "reply_backoff_s": 0.2,
        "reply_backoff_max_s": 1.0,
        "reply_attempts": 3,
        **overrides,
    }
    return IngestEmailSettings(**values)


@asynccontextmanager
async def reply_sender(settings: IngestEmailSettings) -> AsyncIterator[ReplyService]:
    service = ReplyService(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


def outbound(recipient: str = "maria.lopez@example.com", **changes: Any) -> OutboundReply:
    fields: dict[str, Any] = {
        "reply_id": f"api:{uuid.uuid4().hex}",
        "ticket_id": TICKET,
        "channel": Channel.EMAIL,
        "conversation_key": f"<{uuid.uuid4().hex}@mail.example.com>",
        "recipient": SenderIdentity(
            channel=Channel.EMAIL, kind="email", id=recipient, display_name="María López"
        ),
        "subject": "VPN drops every ten minutes",
        "text": "Hola María, please update the VPN client. Ana",
        "author_agent_id": "ana",
        "created_at": datetime(2026, 11, 25, 10, 30, tzinfo=UTC),
    }
    fields.update(changes)
    return OutboundReply.model_validate(fields)


def deliveries(records: list[Any], reply_id: str) -> list[dict[str, Any]]:
    found = [json.loads(r.value) for r in records]
    return [c for c in found if c.get("type") == "delivery" and c["reply_id"] == reply_id]


def maildir_mails(infra: Infra, message_id: str) -> list[EmailMessage]:
    """The mails in the shared SMTP sink's Maildir with this Message-ID."""
    assert infra.smtp_maildir is not None, "the tests' own SMTP sink writes the Maildir"
    found = []
    for _, raw in mailbox.Maildir(str(infra.smtp_maildir), factory=None, create=False).items():
        msg = message_from_bytes(raw.as_bytes(), policy=policy.default)
        if msg["Message-ID"] == message_id:
            assert isinstance(msg, EmailMessage)
            found.append(msg)
    return found


async def wait_mail(infra: Infra, message_id: str, timeout: float = 60) -> list[EmailMessage]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = maildir_mails(infra, message_id)
        if found:
            return found
        await asyncio.sleep(0.3)
    raise AssertionError(f"no mail {message_id} in the Maildir within {timeout}s")


# --- delivered once ------------------------------------------------------------------


async def test_a_reply_is_mailed_once_even_when_redelivered(
    infra: Infra, topic_prefix: str, mongo_db: Any
) -> None:
    settings = settings_for(infra, topic_prefix, mongo_db.name)
    reply = outbound()
    message_id = desk_message_id(TICKET, reply.reply_id, "desk.example.com")
    topic = f"{topic_prefix}outbound.email"
    # The relay published it twice (a crash between its publish and its bookkeeping).
    await publish(infra.kafka, topic, [(reply.conversation_key, reply)] * 2)
    async with Collector(infra.kafka, f"{topic_prefix}tickets.commands") as commands:
        async with reply_sender(settings):
            (first, *_) = await commands.wait_for(lambda rs: deliveries(rs, reply.reply_id))
        assert first["delivered"] is True, first
        assert first["ticket_id"] == TICKET
        assert first["detail"].startswith("250 accepted")
        assert message_id in first["detail"]
        reported = len(deliveries(commands.records, reply.reply_id))

        # Handed over again after a restart (as after a crash before the offset commit).
        await publish(infra.kafka, topic, [(reply.conversation_key, reply)])
        async with reply_sender(settings):
            await commands.wait_for(lambda rs: len(deliveries(rs, reply.reply_id)) > reported)
        results = deliveries(commands.records, reply.reply_id)
        # Every report is the same command: the ticket-api applies it once.
        assert {(r["command_id"], r["delivered"]) for r in results} == {
            (event_id("email-delivery", reply.reply_id), True)
        }
        keys = {r.key for r in commands.records if json.loads(r.value)["type"] == "delivery"}
        assert keys == {TICKET.encode()}

    (mail,) = await wait_mail(infra, message_id)
    assert mail["Subject"] == f"Re: VPN drops every ten minutes [#{TICKET}]"
    assert mail["From"].addresses[0].addr_spec == DESK_FROM
    assert mail["To"].addresses[0].addr_spec == "maria.lopez@example.com"
    assert "please update the VPN client" in mail.get_content()
    assert (await mongo_db["ingest_email_sent"].find_one({"_id": reply.reply_id}))[
        "status"
    ] == "sent"


# --- failures ------------------------------------------------------------------------


async def test_no_smtp_server_is_retried_then_reported_failed(
    infra: Infra, topic_prefix: str, mongo_db: Any
) -> None:
    settings = settings_for(infra, topic_prefix, mongo_db.name, smtp_port=free_port())
    reply = outbound()
    await publish(infra.kafka, f"{topic_prefix}outbound.email", [(reply.conversation_key, reply)])
    async with (
        Collector(infra.kafka, f"{topic_prefix}tickets.commands") as commands,
        reply_sender(settings),
    ):
        (result,) = await commands.wait_for(lambda rs: deliveries(rs, reply.reply_id))
    assert result["delivered"] is False
    assert "gave up after 3 attempts" in result["detail"]
    assert "no SMTP session" in result["detail"]
    logged = await mongo_db["ingest_email_sent"].find_one({"_id": reply.reply_id})
    assert logged["status"] == "failed"


class Relay:
    """An SMTP server answering like a relay: 451 for a greylisted address until its
    second try, 550 for an unknown one, 250 for the rest (aiosmtpd, in this process)."""

    def __init__(self) -> None:
        self.rcpt: dict[str, int] = {}
        self.accepted: list[bytes] = []

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        self.rcpt[address] = self.rcpt.get(address, 0) + 1
        if address.startswith("greylisted@") and self.rcpt[address] < 2:
            return "451 4.7.1 Greylisted, try again later"
        if address.startswith("unknown@"):
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.accepted.append(envelope.content)
        return "250 2.0.0 Message accepted for delivery"


@contextmanager
def relay() -> Iterator[tuple[Relay, int]]:
    handler, port = Relay(), free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


async def test_4xx_is_retried_and_5xx_reported_at_once(
    infra: Infra, topic_prefix: str, mongo_db: Any
) -> None:
    greylisted = outbound("greylisted@example.net")
    unknown = outbound("unknown@example.net")
    fine = outbound("fine@example.net")
    await publish(
        infra.kafka,
        f"{topic_prefix}outbound.email",
        [(r.conversation_key, r) for r in (greylisted, unknown, fine)],
    )
    with relay() as (server, port):
        settings = settings_for(infra, topic_prefix, mongo_db.name, smtp_port=port)
        async with (
            Collector(infra.kafka, f"{topic_prefix}tickets.commands") as commands,
            reply_sender(settings),
        ):
            await commands.wait_for(
                lambda rs: all(deliveries(rs, r.reply_id) for r in (greylisted, unknown, fine))
            )
        results = {
            r.reply_id: deliveries(commands.records, r.reply_id)[0]
            for r in (greylisted, unknown, fine)
        }
    assert results[fine.reply_id]["delivered"] is True
    assert results[greylisted.reply_id]["delivered"] is True
    assert server.rcpt["greylisted@example.net"] == 2
    assert results[unknown.reply_id]["delivered"] is False
    assert "550" in results[unknown.reply_id]["detail"]
    assert server.rcpt["unknown@example.net"] == 1  # permanent: never tried again
    assert len(server.accepted) == 2


async def test_records_that_are_no_mail_go_to_the_dead_letters(
    infra: Infra, topic_prefix: str, mongo_db: Any
) -> None:
    settings = settings_for(infra, topic_prefix, mongo_db.name)
    no_address = outbound("not-an-address")
    topic = f"{topic_prefix}outbound.email"
    producer = AIOKafkaProducer(bootstrap_servers=infra.kafka)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b'{"reply_id": "broken"', key=b"k")
    finally:
        await producer.stop()
    await publish(infra.kafka, topic, [(no_address.conversation_key, no_address)])
    async with (
        Collector(infra.kafka, f"{topic_prefix}tickets.commands") as commands,
        Collector(infra.kafka, f"{topic_prefix}deadletter.ingest-email") as letters,
        reply_sender(settings),
    ):
        dead = await letters.wait_for(lambda rs: rs if len(rs) >= 2 else None)
        (result,) = await commands.wait_for(lambda rs: deliveries(rs, no_address.reply_id))
    reasons = sorted(json.loads(r.value)["reason"] for r in dead)
    assert any("not an ASCII email address" in r for r in reasons), reasons
    assert any("Invalid JSON" in r or "EOF" in r for r in reasons), reasons
    originals = {json.loads(r.value)["original_value_b64"] for r in dead}
    assert len(originals) == 2
    assert result["delivered"] is False
    assert result["detail"].startswith("invalid:")


# --- end to end ----------------------------------------------------------------------


class ReplyingDesk(Desk):
    """The desk with the ticket-api publishing agents' replies."""

    def env(self) -> dict[str, str]:
        return {
            **super().env(),
            "TICKET_API_PUBLISH_REPLIES": "true",
            "INGEST_EMAIL_REPLY_FROM": "servicedesk@example.com",
            "INGEST_EMAIL_MESSAGE_ID_DOMAIN": "desk.example.com",
        }


@pytest.fixture
async def desk(
    infra: Infra, topic_prefix: str, mongo_db: Any, tmp_path: Path
) -> AsyncIterator[Desk]:
    desk = ReplyingDesk(infra, topic_prefix, mongo_db.name, tmp_path)
    try:
        desk.start("ticket-api", "router", "ingest-email")
        await desk.load_demo_org()
        yield desk
    finally:
        desk.stop()


def request_mail(subject: str, body: str, **headers: str) -> tuple[bytes, str]:
    msg = EmailMessage()
    message_id = f"<{uuid.uuid4().hex}@mail.example.com>"
    msg["From"] = "María López <maria.lopez@example.com>"
    msg["To"] = "IT Service Desk <servicedesk@example.com>"
    msg["Subject"] = subject
    msg["Message-ID"] = message_id
    msg["Date"] = "Wed, 25 Nov 2026 09:14:03 +0000"
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg.as_bytes(), message_id


async def wait_delivery(desk: Desk, ticket_id: str, message_id: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        (msg,) = [m for m in desk.messages(ticket_id) if m["message_id"] == message_id]
        if msg["delivery"] and msg["delivery"]["status"] != "queued":
            return msg["delivery"]
        await asyncio.sleep(0.3)
    raise AssertionError(f"delivery of {message_id} not reported within {timeout}s")


async def test_an_agents_reply_reaches_the_requester_and_the_answer_threads_back(
    desk: Desk, infra: Infra
) -> None:
    request, request_id = request_mail(
        "VPN drops every ten minutes", "Since this morning my VPN drops every ten minutes."
    )
    desk.deliver(request)
    ticket = desk.wait_ticket(lambda t: t["assignee"] is not None, channel="email")
    tid = ticket["ticket_id"]

    async with Collector(infra.kafka, f"{desk.prefix}outbound.email") as outbound_topic:
        with desk.client() as http:
            note = http.post(
                f"/v1/tickets/{tid}/messages",
                json={"text": "Internal: her laptop is on the old client.", "internal": True},
            )
            assert note.status_code == 201, note.text
            posted = http.post(
                f"/v1/tickets/{tid}/messages",
                json={"text": "Hola María, please update the VPN client to 5.2. Ana"},
            )
            assert posted.status_code == 201, posted.text
        reply_id = posted.json()["message_id"]
        desk_id = desk_message_id(tid, reply_id, "desk.example.com")
        (mail,) = await wait_mail(infra, desk_id)
        # The note was written first: published, it would come before the reply (one key,
        # one partition, the outbox keeps order). The reply is the topic's only record.
        await outbound_topic.wait_for(
            lambda rs: any(json.loads(r.value)["reply_id"] == reply_id for r in rs)
        )
        published = [json.loads(r.value) for r in outbound_topic.records]
        assert [(p["reply_id"], p["ticket_id"]) for p in published] == [(reply_id, tid)]

    assert mail["To"].addresses[0].addr_spec == "maria.lopez@example.com"
    assert mail["From"].addresses[0].addr_spec == "servicedesk@example.com"
    assert mail["Subject"] == f"Re: VPN drops every ten minutes [#{tid}]"
    assert mail["In-Reply-To"] == request_id
    assert mail["References"] == request_id
    assert "update the VPN client to 5.2" in mail.get_content()
    delivery = await wait_delivery(desk, tid, reply_id)
    assert delivery["status"] == "delivered", delivery

    # The note was never sent: the only mail of this ticket in the sink is the reply.
    assert infra.smtp_maildir is not None
    of_ticket = [
        m
        for _, m in mailbox.Maildir(str(infra.smtp_maildir), factory=None, create=False).items()
        if f"[#{tid}]" in str(m["Subject"])
    ]
    assert len(of_ticket) == 1
    assert "old client" not in of_ticket[0].as_string()
    (note_doc,) = [m for m in desk.messages(tid) if m["internal"]]
    assert note_doc["delivery"] is None

    # María answers the desk's mail; her client dropped the token from the subject.
    answer, _ = request_mail(
        "Re: VPN drops every ten minutes",
        "Updated to 5.2, it works now. Thanks!",
        In_Reply_To=desk_id,
        References=f"{request_id} {desk_id}",
    )
    desk.deliver(answer)
    deadline = time.monotonic() + 60
    while not any("works now" in m["text"] for m in desk.messages(tid)):
        assert time.monotonic() < deadline, desk.messages(tid)
        await asyncio.sleep(0.3)
    assert [t["ticket_id"] for t in desk.tickets(channel="email")] == [tid]
