"""ingest-chat through its real entry point: Slack Events, the signed webhook, the web-chat
WebSocket and reply delivery, against the real broker and a local Slack Web API server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from aiohttp import web
from aiokafka import AIOKafkaProducer
from deskstream.events import (
    Channel,
    DeadLetter,
    OutboundReply,
    SenderIdentity,
    TicketAssigned,
    TicketCreated,
    TicketQueued,
)
from deskstream.ids import event_id, ticket_id_for
from deskstream.topics import Topics
from deskstream_ingest_chat.signing import webhook_signature, webhook_valid

from tests import slackapi
from tests.conftest import Infra, free_port
from tests.kafka_helpers import Collector, publish
from tests.services import start_service, stop_all, wait_status

pytestmark = pytest.mark.timeout(180)

SIGNING_SECRET = "slack-signing-secret-0123456789abcdef"
BOT_TOKEN = "xoxb-local-test-token-0123456789"
WEBHOOK_SECRET = "webhook-secret-0123456789abcdef"
SUPPORT = "C0SUPPORT01"
OTHER = "C0RANDOM001"


class ToolEndpoint:
    """The other chat tool's side of the webhook: receives the desk's signed replies."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/desk-replies"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/desk-replies", self._receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _receive(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.read()))
        return web.json_response({"ok": True})


@dataclass
class Chat:
    port: int
    prefix: str
    kafka: str
    slack: slackapi.SlackApi
    tool: ToolEndpoint
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def topics(self) -> Topics:
        return Topics(self.prefix)

    async def post(
        self, path: str, body: bytes, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as http:
            return await http.post(path, content=body, headers=headers)

    async def slack_post(self, body: bytes, **headers: str) -> httpx.Response:
        signed = {**slackapi.sign(SIGNING_SECRET, body), **headers}
        return await self.post("/slack/events", body, signed)

    async def webhook_post(
        self, body: bytes, *, secret: str = WEBHOOK_SECRET, age_s: int = 0
    ) -> httpx.Response:
        return await self.post("/webhooks/chat", body, webhook_headers(body, secret, age_s))


def webhook_headers(body: bytes, secret: str = WEBHOOK_SECRET, age_s: int = 0) -> dict[str, str]:
    """The headers of a signed generic-webhook request (`age_s` old)."""
    ts = str(int(time.time()) - age_s)
    return {
        "Content-Type": "application/json",
        "X-Deskstream-Timestamp": ts,
        "X-Deskstream-Signature": webhook_signature(secret=secret, body=body, timestamp=ts),
    }


@pytest.fixture
async def chat(infra: Infra, topic_prefix: str, tmp_path: Path) -> AsyncIterator[Chat]:
    slack = slackapi.SlackApi(token=BOT_TOKEN, channels={SUPPORT})
    await slack.start()
    tool = ToolEndpoint()
    await tool.start()
    port = free_port()
    env = infra.service_env(
        topic_prefix,
        INGEST_CHAT_SLACK_SIGNING_SECRET=SIGNING_SECRET,
        INGEST_CHAT_SLACK_BOT_TOKEN=BOT_TOKEN,
        INGEST_CHAT_SLACK_API_BASE_URL=slack.base_url,
        INGEST_CHAT_SLACK_CHANNELS=SUPPORT,
        INGEST_CHAT_WEBHOOK_SECRET=WEBHOOK_SECRET,
        INGEST_CHAT_WEBHOOK_REPLY_URL=tool.url,
        INGEST_CHAT_DELIVERY_BACKOFF_S="0.2",
        INGEST_CHAT_DELIVERY_ATTEMPTS="3",
        LOG_LEVEL="INFO",
    )
    proc = start_service("ingest-chat", env, port, tmp_path / "ingest-chat.log")
    try:
        await asyncio.to_thread(wait_status, [port], 200, 120)
        yield Chat(port, topic_prefix, infra.kafka, slack, tool, proc)
    finally:
        stop_all([proc])
        await slack.stop()
        await tool.stop()


def _values(records: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(r.value) for r in records]


async def test_slack_events_are_verified_and_each_message_ingested_once(chat: Chat) -> None:
    # The url_verification handshake answers the challenge.
    resp = await chat.slack_post(
        slackapi.url_verification("3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P")
    )
    assert resp.status_code == 200
    assert resp.json() == {"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}

    first = slackapi.message_event(
        event_id="Ev0FIRST001",
        channel=SUPPORT,
        user="U0MARIA001",
        text="My VPN drops every ten minutes",
        ts="1764061200.000100",
    )
    # Bad signature, wrong secret, stale timestamp (with a correct HMAC): 401, nothing taken.
    bad = {**slackapi.sign(SIGNING_SECRET, first), "X-Slack-Signature": "v0=" + "0" * 64}
    assert (await chat.post("/slack/events", first, bad)).status_code == 401
    wrong = slackapi.sign("another-secret-0123456789abcdef", first)
    assert (await chat.post("/slack/events", first, wrong)).status_code == 401
    stale = slackapi.sign(SIGNING_SECRET, first, timestamp=int(time.time()) - 6 * 60)
    assert (await chat.post("/slack/events", first, stale)).status_code == 401
    unsigned = await chat.post("/slack/events", first)
    assert unsigned.status_code == 401
    # Oversized (signed) and malformed JSON (signed): 413 and 400 with a message.
    assert (
        await chat.slack_post(b'{"type": "x", "pad": "' + b"a" * 70_000 + b'"}')
    ).status_code == 413
    malformed = await chat.slack_post(b'{"type": "event_callback", ')
    assert malformed.status_code == 400
    assert "malformed JSON" in malformed.json()["detail"]

    # The message, then Slack's retry of the same delivery: one record.
    assert (await chat.slack_post(first)).json() == {"ok": True, "duplicate": False}
    retry = await chat.slack_post(
        first, **{"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
    )
    assert retry.status_code == 200
    assert retry.json()["duplicate"] is True

    # Not for the desk: a bot, the app itself, an edit, another channel.
    ignored = [
        slackapi.message_event(
            event_id="Ev0BOT00001",
            channel=SUPPORT,
            user="U0OTHERBOT",
            text="build passed",
            ts="1764061201.000100",
            bot_id="B0CI000001",
        ),
        slackapi.message_event(
            event_id="Ev0OWN00001",
            channel=SUPPORT,
            user=slackapi.BOT_USER,
            text="We are on it",
            ts="1764061202.000100",
        ),
        slackapi.message_event(
            event_id="Ev0EDIT0001",
            channel=SUPPORT,
            user="U0MARIA001",
            text="edited",
            ts="1764061203.000100",
            subtype="message_changed",
        ),
        slackapi.message_event(
            event_id="Ev0OTHER001",
            channel=OTHER,
            user="U0MARIA001",
            text="lunch?",
            ts="1764061204.000100",
        ),
    ]
    for body in ignored:
        resp = await chat.slack_post(body)
        assert resp.status_code == 200
        assert "ignored" in resp.json()
    # A reply in the thread, and a direct message to the app.
    in_thread = slackapi.message_event(
        event_id="Ev0THREAD01",
        channel=SUPPORT,
        user="U0MARIA001",
        text="Still dropping",
        ts="1764061300.000200",
        thread_ts="1764061200.000100",
    )
    dm = slackapi.message_event(
        event_id="Ev0DM000001",
        channel="D0MARIA001",
        user="U0MARIA001",
        text="Can you reset my password?",
        ts="1764061400.000300",
        channel_type="im",
    )
    assert (await chat.slack_post(in_thread)).status_code == 200
    assert (await chat.slack_post(dm)).status_code == 200

    async with Collector(chat.kafka, chat.topics.inbound(Channel.CHAT)) as inbound:
        await inbound.wait_for(lambda rs: len(rs) >= 3)
        await asyncio.sleep(2)  # anything wrongly published would be there by now
        # Sorted by Slack's ts: records of different conversations sit in different partitions.
        values = sorted(_values(inbound.records), key=lambda v: v["received_at"])
    assert [v["text"] for v in values] == [
        "My VPN drops every ten minutes",
        "Still dropping",
        "Can you reset my password?",
    ]
    team = slackapi.TEAM
    assert values[0]["conversation_key"] == f"slack:{team}:{SUPPORT}:1764061200.000100"
    assert values[1]["conversation_key"] == values[0]["conversation_key"]
    assert values[2]["conversation_key"] == f"slack:{team}:D0MARIA001:1764061400.000300"
    assert values[0]["channel"] == "chat"
    assert values[0]["sender"] == {
        "channel": "chat",
        "kind": "slack",
        "id": f"{team}:U0MARIA001",
        "display_name": None,
        "handle": None,
    }
    assert values[0]["event_id"] == event_id("slack", team, SUPPORT, "1764061200.000100")


async def test_webhook_requires_a_fresh_valid_signature_and_a_complete_payload(chat: Chat) -> None:
    def payload(message_id: str, **changes: Any) -> bytes:
        body = {
            "source": "mattermost",
            "message_id": message_id,
            "conversation_id": "town-square/abc123",
            "sender": {"id": "u-42", "name": "Li Wei", "handle": "liwei"},
            "text": "The printer on the 3rd floor jams",
            **changes,
        }
        return json.dumps(body).encode()

    assert (
        await chat.webhook_post(payload("m1"), secret="not-the-secret-0123456789")
    ).status_code == 401
    assert (await chat.webhook_post(payload("m1"), age_s=600)).status_code == 401
    missing = await chat.webhook_post(json.dumps({"source": "mattermost", "text": "hi"}).encode())
    assert missing.status_code == 400
    assert "message_id" in missing.json()["detail"]
    assert (await chat.webhook_post(b"[1, 2")).status_code == 400
    assert (await chat.webhook_post(payload("m1", text="x" * 70_000))).status_code == 413

    ok = await chat.webhook_post(payload("m1"))
    assert ok.status_code == 202, ok.text
    assert ok.json()["conversation_key"] == "webhook:mattermost:town-square/abc123"
    assert (await chat.webhook_post(payload("m1"))).json()["duplicate"] is True

    async with Collector(chat.kafka, chat.topics.inbound(Channel.CHAT)) as inbound:
        await inbound.wait_for(lambda rs: len(rs) >= 1)
        await asyncio.sleep(2)
        values = _values(inbound.records)
    assert len(values) == 1
    assert values[0]["sender"]["display_name"] == "Li Wei"
    assert values[0]["event_id"] == event_id("webhook", "mattermost", "m1")


def _reply(conversation_key: str, text: str, ticket: str | None = None) -> OutboundReply:
    return OutboundReply(
        reply_id=f"msg-{uuid.uuid4().hex[:12]}",
        ticket_id=ticket or ticket_id_for(f"chat-test:{uuid.uuid4().hex}"),
        channel=Channel.CHAT,
        conversation_key=conversation_key,
        recipient=SenderIdentity(channel=Channel.CHAT, kind="slack", id="T:U0MARIA001"),
        subject="VPN",
        text=text,
        author_agent_id="ana",
    )


async def test_slack_replies_go_to_the_thread_and_their_delivery_is_reported(chat: Chat) -> None:
    team = slackapi.TEAM
    chat.slack.fail_next = ["ratelimited"]  # the first attempt is rate-limited, then retried
    good = _reply(f"slack:{team}:{SUPPORT}:1764061200.000100", "Please restart the VPN client.")
    gone = _reply(f"slack:{team}:C0ARCHIVED1:1764061300.000100", "Hello?")
    async with Collector(chat.kafka, chat.topics.name("tickets.commands")) as commands:
        await publish(
            chat.kafka,
            chat.topics.outbound(Channel.CHAT),
            [(good.conversation_key, good), (gone.conversation_key, gone)],
        )
        results = await commands.wait_for(
            lambda rs: len(rs) >= 2 and {json.loads(r.value)["reply_id"]: r for r in rs}
        )
    assert chat.slack.posted() == [
        {
            "channel": SUPPORT,
            "text": "Please restart the VPN client.",
            "thread_ts": "1764061200.000100",
        }
    ]
    assert [c["auth_ok"] for c in chat.slack.calls] == [True, True, True]
    ok = json.loads(results[good.reply_id].value)
    assert results[good.reply_id].key.decode() == good.ticket_id
    assert (ok["type"], ok["delivered"], ok["ticket_id"]) == ("delivery", True, good.ticket_id)
    failed = json.loads(results[gone.reply_id].value)
    assert failed["delivered"] is False
    assert "channel_not_found" in failed["detail"]


async def test_web_chat_socket_ingests_shows_status_and_replies_and_resumes(chat: Chat) -> None:
    ws_url = f"ws://127.0.0.1:{chat.port}/webchat/ws"
    visitor, conversation = "visitor" + uuid.uuid4().hex, "conv" + uuid.uuid4().hex
    key = f"webchat:{conversation}"
    ticket = ticket_id_for(event_id("webchat", conversation, "m1"))
    events = chat.topics.name("tickets.events")

    async def frame(ws: Any) -> dict[str, Any]:
        return dict(json.loads(await asyncio.wait_for(ws.recv(), 60)))

    async def until(ws: Any, kind: str, **match: Any) -> dict[str, Any]:
        while True:
            got = await frame(ws)
            if got["type"] == kind and all(got.get(k) == v for k, v in match.items()):
                return got

    async with websockets.connect(ws_url) as ws:
        await ws.send("{not json")
        assert (await frame(ws))["type"] == "error"
        await ws.send(
            json.dumps(
                {
                    "type": "hello",
                    "visitor_id": visitor,
                    "conversation_id": conversation,
                    "name": "Maria",
                }
            )
        )
        assert await frame(ws) == {
            "type": "welcome",
            "visitor_id": visitor,
            "conversation_id": conversation,
        }
        await ws.send(json.dumps({"type": "message", "id": "m1", "text": "My VPN drops"}))
        assert await until(ws, "ack") == {"type": "ack", "id": "m1"}
        # The same message again (a page that lost the ack) is acknowledged, not resent.
        await ws.send(json.dumps({"type": "message", "id": "m1", "text": "My VPN drops"}))
        await until(ws, "ack", id="m1")
        async with Collector(chat.kafka, chat.topics.inbound(Channel.CHAT)) as inbound:
            await inbound.wait_for(lambda rs: len(rs) >= 1)
            await asyncio.sleep(1)
            values = _values(inbound.records)
        assert len(values) == 1
        assert values[0]["conversation_key"] == key
        assert values[0]["sender"]["kind"] == "chat"
        assert values[0]["sender"]["id"] == visitor
        assert values[0]["sender"]["display_name"] == "Maria"

        # What the ticket-api publishes reaches the socket: queued, then an agent joined.
        requester = SenderIdentity(channel=Channel.CHAT, kind="chat", id=visitor)
        await publish(
            chat.kafka,
            events,
            [
                (
                    ticket,
                    TicketCreated(
                        event_id="e1",
                        ticket_id=ticket,
                        channel=Channel.CHAT,
                        subject="My VPN drops",
                        requester=requester,
                        conversation_key=key,
                    ),
                ),
                (
                    ticket,
                    TicketQueued(
                        event_id="e2",
                        ticket_id=ticket,
                        team="network",
                        position=2,
                        channel=Channel.CHAT,
                        estimated_wait_s=240,
                    ),
                ),
            ],
        )
        queued = await until(ws, "status", state="queued")
        assert (queued["position"], queued["estimated_wait_s"]) == (2, 240)
        await publish(
            chat.kafka,
            events,
            [
                (
                    ticket,
                    TicketAssigned(
                        event_id="e3", ticket_id=ticket, agent_id="ana", channel=Channel.CHAT
                    ),
                ),
            ],
        )
        assert (await until(ws, "status", state="assigned"))["agent_id"] == "ana"
        first = _reply(key, "Hi Maria, I am looking at it.", ticket)
        await publish(chat.kafka, chat.topics.outbound(Channel.CHAT), [(key, first)])
        shown = await until(ws, "reply")
        assert (shown["reply_id"], shown["text"]) == (first.reply_id, first.text)

    # The visitor is away: the next reply waits for them, and reaches them on reconnect.
    second = _reply(key, "Could you try the other gateway?", ticket)
    async with Collector(chat.kafka, chat.topics.name("tickets.commands")) as commands:
        await publish(chat.kafka, chat.topics.outbound(Channel.CHAT), [(key, second)])
        await asyncio.sleep(2)
        async with websockets.connect(ws_url) as ws:
            await ws.send(
                json.dumps(
                    {"type": "hello", "visitor_id": visitor, "conversation_id": conversation}
                )
            )
            await until(ws, "welcome")
            assert (await until(ws, "status"))["state"] == "assigned"
            replies = [await until(ws, "reply"), await until(ws, "reply")]
            assert [r["reply_id"] for r in replies] == [first.reply_id, second.reply_id]
            await ws.send(json.dumps({"type": "delivered", "reply_id": second.reply_id}))
            result = await commands.wait_for(
                lambda rs: [
                    json.loads(r.value)
                    for r in rs
                    if json.loads(r.value)["reply_id"] == second.reply_id
                ]
            )
            assert (result[0]["delivered"], result[0]["ticket_id"]) == (True, ticket)

            # A frame over the size limit closes the socket with 1009.
            await ws.send(json.dumps({"type": "message", "id": "m2", "text": "x" * 70_000}))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await until(ws, "never")
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1009

    async with httpx.AsyncClient(base_url=chat.url) as http:
        metrics = (await http.get("/metrics")).text
    assert "deskstream_chat_webchat_sockets" in metrics


async def test_replies_to_webhook_conversations_are_posted_signed(chat: Chat) -> None:
    reply = _reply("webhook:mattermost:town-square/abc123", "Which printer exactly?")
    async with Collector(chat.kafka, chat.topics.name("tickets.commands")) as commands:
        await publish(
            chat.kafka, chat.topics.outbound(Channel.CHAT), [(reply.conversation_key, reply)]
        )
        results = await commands.wait_for(lambda rs: [json.loads(r.value) for r in rs])
    assert (results[0]["reply_id"], results[0]["delivered"]) == (reply.reply_id, True)
    [(headers, body)] = chat.tool.received
    assert webhook_valid(
        secret=WEBHOOK_SECRET,
        body=body,
        timestamp=headers["X-Deskstream-Timestamp"],
        signature=headers["X-Deskstream-Signature"],
    )
    sent = json.loads(body)
    assert (sent["source"], sent["conversation_id"]) == ("mattermost", "town-square/abc123")
    assert (sent["text"], sent["ticket_id"]) == ("Which printer exactly?", reply.ticket_id)


async def test_a_visitor_resumes_on_another_replica(
    chat: Chat, infra: Infra, tmp_path: Path
) -> None:
    # A second replica: every replica reads the ticket events and replies itself, so the
    # visitor's reconnect may land anywhere.
    port = free_port()
    env = infra.service_env(chat.prefix, LOG_LEVEL="INFO")
    other = start_service("ingest-chat", env, port, tmp_path / "replica-2.log")
    try:
        await asyncio.to_thread(wait_status, [port], 200, 120)
        conversation = "conv" + uuid.uuid4().hex
        key = f"webchat:{conversation}"
        ticket = ticket_id_for(event_id("webchat", conversation, "m1"))
        hello = json.dumps({"type": "hello", "conversation_id": conversation})

        async def frames(ws: Any, n: int) -> list[dict[str, Any]]:
            return [json.loads(await asyncio.wait_for(ws.recv(), 60)) for _ in range(n)]

        async with websockets.connect(f"ws://127.0.0.1:{chat.port}/webchat/ws") as ws:
            await ws.send(hello)
            await ws.send(json.dumps({"type": "message", "id": "m1", "text": "Laptop broken"}))
            assert [f["type"] for f in await frames(ws, 2)] == ["welcome", "ack"]
        requester = SenderIdentity(channel=Channel.CHAT, kind="chat", id="v")
        await publish(
            chat.kafka,
            chat.topics.name("tickets.events"),
            [
                (
                    ticket,
                    TicketCreated(
                        event_id="e1",
                        ticket_id=ticket,
                        channel=Channel.CHAT,
                        subject="Laptop broken",
                        requester=requester,
                        conversation_key=key,
                    ),
                ),
                (
                    ticket,
                    TicketAssigned(
                        event_id="e2", ticket_id=ticket, agent_id="dev", channel=Channel.CHAT
                    ),
                ),
            ],
        )
        reply = _reply(key, "Bring it to room 4.12, please.", ticket)
        await publish(chat.kafka, chat.topics.outbound(Channel.CHAT), [(key, reply)])
        async with websockets.connect(f"ws://127.0.0.1:{port}/webchat/ws") as ws:
            await ws.send(hello)
            got = await frames(ws, 1)
            # The two topics are read side by side: wait for both, in whatever order.
            while not (
                any(f["type"] == "reply" for f in got)
                and any(f.get("state") == "assigned" for f in got)
            ):
                got += await frames(ws, 1)
        assert got[0]["type"] == "welcome"
        assigned = next(f for f in got if f.get("state") == "assigned")
        assert (assigned["agent_id"], assigned["ticket_id"]) == ("dev", ticket)
        shown = next(f for f in got if f["type"] == "reply")
        assert shown["text"] == "Bring it to room 4.12, please."
    finally:
        stop_all([other])


async def test_a_record_that_is_not_a_reply_is_dead_lettered_with_its_bytes(chat: Chat) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=chat.kafka)
    await producer.start()
    try:
        await producer.send_and_wait(
            chat.topics.outbound(Channel.CHAT), b'{"reply_id": "r1"}', key=b"slack:T:C:1.2"
        )
    finally:
        await producer.stop()
    async with Collector(chat.kafka, chat.topics.deadletter("ingest-chat")) as letters:
        [record] = await letters.wait_for(lambda rs: rs)
    letter = DeadLetter.model_validate_json(record.value)
    assert letter.original_value() == b'{"reply_id": "r1"}'
    assert letter.stage == "ingest-chat"
    assert "ticket_id" in letter.reason
    assert chat.slack.calls == []
