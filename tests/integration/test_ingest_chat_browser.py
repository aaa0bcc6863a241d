"""A visitor in a real browser chats with the desk: the widget page in headless Chromium,
ingest-chat, the router and the ticket-api on the real broker and MongoDB-wire server.

The visitor writes; the router assigns the ticket (the page says an agent joined); the
agent answers through the ticket API; the page shows the answer, and the ticket records
that the browser showed it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from deskstream_ingest_chat.signing import webhook_valid
from playwright.async_api import Page, async_playwright, expect

from tests import slackapi
from tests.conftest import Infra
from tests.desk import Desk
from tests.integration.test_ingest_chat import WEBHOOK_SECRET, ToolEndpoint, webhook_headers

pytestmark = pytest.mark.timeout(420)

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


SIGNING_SECRET = "slack-signing-secret-0123456789abcdef"
BOT_TOKEN = "xoxb-local-test-token-0123456789"
SUPPORT = "C0SUPPORT01"


class ChatDesk(Desk):
    slack: slackapi.SlackApi
    tool: ToolEndpoint

    def env(self) -> dict[str, str]:
        return {
            **super().env(),
            "TICKET_API_PUBLISH_REPLIES": "true",
            "INGEST_CHAT_SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "INGEST_CHAT_SLACK_BOT_TOKEN": BOT_TOKEN,
            "INGEST_CHAT_SLACK_API_BASE_URL": self.slack.base_url,
            "INGEST_CHAT_SLACK_CHANNELS": SUPPORT,
            "INGEST_CHAT_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "INGEST_CHAT_WEBHOOK_REPLY_URL": self.tool.url,
        }

    @property
    def widget(self) -> str:
        return f"http://127.0.0.1:{self.ports['ingest-chat']}/webchat/"


@pytest.fixture
async def desk(
    infra: Infra, topic_prefix: str, mongo_db: Any, tmp_path: Path
) -> AsyncIterator[ChatDesk]:
    desk = ChatDesk(infra, topic_prefix, mongo_db.name, tmp_path)
    desk.slack = slackapi.SlackApi(token=BOT_TOKEN, channels={SUPPORT})
    await desk.slack.start()
    desk.tool = ToolEndpoint()
    await desk.tool.start()
    try:
        await asyncio.to_thread(desk.start, "ticket-api", "router", "ingest-chat")
        await desk.load_demo_org()
        yield desk
    finally:
        await asyncio.to_thread(desk.stop)
        await desk.slack.stop()
        await desk.tool.stop()


@pytest.fixture
async def page() -> AsyncIterator[Page]:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            yield await browser.new_page()
        finally:
            await browser.close()


async def _wait_ticket(desk: Desk, predicate: Any) -> dict[str, Any]:
    return dict(await asyncio.to_thread(desk.wait_ticket, predicate, 120, channel="chat"))


async def _until(check: Any, what: str) -> Any:
    """Poll `check()` (run in a thread) until it returns something truthy; 120 s guard."""
    for _ in range(240):
        found = await asyncio.to_thread(check)
        if found:
            return found
        await asyncio.sleep(0.5)
    raise AssertionError(f"never: {what}")


async def test_visitor_sees_the_agent_join_and_reply_live(desk: ChatDesk, page: Page) -> None:
    await page.goto(desk.widget)
    await expect(page.locator("#connection")).to_have_text("connected", timeout=30_000)
    await page.fill("#input", "My VPN drops every ten minutes")
    await page.click("#send")
    # Acknowledged once Kafka has it: no longer marked pending.
    await expect(page.locator("#log li.me")).to_have_text("My VPN drops every ten minutes")
    await expect(page.locator("#log li.me.pending")).to_have_count(0, timeout=30_000)

    ticket = await _wait_ticket(desk, lambda t: t["assignee"] is not None)
    assert (ticket["service_id"], ticket["assignee"]) == ("vpn", "ana")
    assert ticket["channel"] == "chat"
    await expect(page.locator("#status")).to_have_text(
        "An agent joined the chat (ana).", timeout=60_000
    )
    await expect(page.locator("#log li.system")).to_have_text(["An agent joined the chat (ana)."])

    with desk.client() as http:
        resp = http.post(
            f"/v1/tickets/{ticket['ticket_id']}/messages",
            json={"text": "Hi, I am Ana. Which VPN client version do you run?"},
        )
        assert resp.status_code == 201, resp.text
        note = http.post(
            f"/v1/tickets/{ticket['ticket_id']}/messages",
            json={"text": "internal: check the gateway logs", "internal": True},
        )
        assert note.status_code == 201, note.text
        reply_id = resp.json()["message_id"]
    await expect(page.locator("#log li.agent")).to_have_text(
        ["Hi, I am Ana. Which VPN client version do you run?"], timeout=60_000
    )

    # The browser's acknowledgement comes back to the ticket as a delivery result.
    def delivered() -> dict[str, Any] | None:
        messages = desk.messages(ticket["ticket_id"])
        reply = next(m for m in messages if m["message_id"] == reply_id)
        return reply if (reply.get("delivery") or {}).get("status") == "delivered" else None

    assert (await _until(delivered, "delivery reported"))["delivery"]["status"] == "delivered"

    # A reload resumes the same conversation: same transcript, a new message joins the ticket.
    await page.reload()
    await expect(page.locator("#connection")).to_have_text("connected", timeout=30_000)
    await expect(page.locator("#log li.agent")).to_have_count(1)
    await page.fill("#input", "Version 5.2, on Windows 11")
    await page.click("#send")
    await expect(page.locator("#log li.me.pending")).to_have_count(0, timeout=30_000)

    def two_inbound() -> list[dict[str, Any]]:
        inbound = [m for m in desk.messages(ticket["ticket_id"]) if m["kind"] == "inbound"]
        return inbound if len(inbound) >= 2 else []

    inbound = await _until(two_inbound, "the second chat message joined the ticket")
    assert [m["text"] for m in inbound] == [
        "My VPN drops every ten minutes",
        "Version 5.2, on Windows 11",
    ]
    assert len(await asyncio.to_thread(desk.tickets, channel="chat")) == 1
    # The internal note never reached the visitor.
    await expect(page.locator("#log")).not_to_contain_text("internal: check the gateway logs")


async def _chat(url: str, text: str) -> None:
    """A visitor on a plain WebSocket (no page): hello, one message, acknowledged."""
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"type": "hello"}))
        await ws.send(json.dumps({"type": "message", "id": "m1", "text": text}))
        while json.loads(await asyncio.wait_for(ws.recv(), 60))["type"] != "ack":
            pass


async def test_a_waiting_chat_sees_its_queue_place_and_gets_the_freed_agent(
    desk: ChatDesk, page: Page
) -> None:
    # Ana is the only agent with the VPN skill the requests need; three chats fill her.
    ws_url = desk.widget.replace("http://", "ws://") + "ws"
    for n in range(3):
        await _chat(ws_url, f"VPN problem number {n + 1}")
    for _ in range(240):
        busy = [
            t
            for t in await asyncio.to_thread(desk.tickets, channel="chat")
            if t["assignee"] == "ana"
        ]
        if len(busy) == 3:
            break
        await asyncio.sleep(0.5)
    assert len(busy) == 3, busy

    await page.goto(desk.widget)
    await expect(page.locator("#connection")).to_have_text("connected", timeout=30_000)
    await page.fill("#input", "The VPN rejects my token")
    await page.click("#send")
    status = page.locator("#status")
    await expect(status).to_have_attribute("data-state", "queued", timeout=90_000)
    await expect(status).to_contain_text("You are number 1 in the queue")

    # Ana resolves one chat: the router offers her the waiting one, no new message needed.
    with desk.client() as http:
        resp = http.patch(f"/v1/tickets/{busy[0]['ticket_id']}", json={"status": "resolved"})
        assert resp.status_code == 200, resp.text
    await expect(status).to_have_text("An agent joined the chat (ana).", timeout=90_000)
    waiting = await _wait_ticket(
        desk, lambda t: t["subject"] == "The VPN rejects my token" and t["assignee"] == "ana"
    )
    assert waiting["status"] == "open"


async def test_slack_thread_becomes_a_ticket_and_the_agent_answers_in_the_thread(
    desk: ChatDesk,
) -> None:
    url = f"http://127.0.0.1:{desk.ports['ingest-chat']}/slack/events"
    body = slackapi.message_event(
        event_id="Ev0E2E00001",
        channel=SUPPORT,
        user="U0MARIA001",
        text="Our VPN gateway refuses every login since 9:00",
        ts="1764061200.000100",
    )
    async with httpx.AsyncClient(timeout=30) as http:
        first = await http.post(url, content=body, headers=slackapi.sign(SIGNING_SECRET, body))
        assert first.status_code == 200, first.text
        # Slack's retry of the same delivery (it missed our answer): no second message.
        retry_headers = {**slackapi.sign(SIGNING_SECRET, body), "X-Slack-Retry-Num": "1"}
        assert (await http.post(url, content=body, headers=retry_headers)).status_code == 200

    ticket = await _wait_ticket(desk, lambda t: t["assignee"] is not None)
    assert (ticket["service_id"], ticket["assignee"]) == ("vpn", "ana")
    with desk.client() as api:
        resp = api.post(
            f"/v1/tickets/{ticket['ticket_id']}/messages",
            json={"text": "We are restarting the gateway, back in 5 minutes."},
        )
        assert resp.status_code == 201, resp.text
        reply_id = resp.json()["message_id"]

    posted = await _until(desk.slack.posted, "chat.postMessage reached Slack")
    assert posted == [
        {
            "channel": SUPPORT,
            "text": "We are restarting the gateway, back in 5 minutes.",
            "thread_ts": "1764061200.000100",
        }
    ]

    def delivered() -> dict[str, Any] | None:
        messages = desk.messages(ticket["ticket_id"])
        reply = next(m for m in messages if m["message_id"] == reply_id)
        return reply if (reply.get("delivery") or {}).get("status") == "delivered" else None

    assert (await _until(delivered, "delivery reported"))["delivery"]["status"] == "delivered"
    inbound = [m for m in desk.messages(ticket["ticket_id"]) if m["kind"] == "inbound"]
    assert len(inbound) == 1


async def test_a_webhook_message_becomes_a_ticket_and_the_reply_goes_back_signed(
    desk: ChatDesk,
) -> None:
    body = json.dumps(
        {
            "source": "mattermost",
            "message_id": "m-e2e-1",
            "conversation_id": "town-square/e2e",
            "sender": {"id": "u-42", "name": "Li Wei", "handle": "liwei"},
            "text": "The printer on the 3rd floor jams on every page",
        }
    ).encode()
    url = f"http://127.0.0.1:{desk.ports['ingest-chat']}/webhooks/chat"
    async with httpx.AsyncClient(timeout=30) as http:
        resp = await http.post(url, content=body, headers=webhook_headers(body))
        assert resp.status_code == 202, resp.text

    # Printing needs the hardware skill: the field team's Dev gets it.
    ticket = await _wait_ticket(desk, lambda t: t["assignee"] is not None)
    assert (ticket["service_id"], ticket["assignee"]) == ("printing", "dev")
    with desk.client() as api:
        resp = api.post(
            f"/v1/tickets/{ticket['ticket_id']}/messages",
            json={"text": "Which printer exactly? The label on its front, please."},
        )
        assert resp.status_code == 201, resp.text
        reply_id = resp.json()["message_id"]

    [(sent_headers, sent_body)] = await _until(lambda: desk.tool.received, "the reply reached")
    assert webhook_valid(
        secret=WEBHOOK_SECRET,
        body=sent_body,
        timestamp=sent_headers["X-Deskstream-Timestamp"],
        signature=sent_headers["X-Deskstream-Signature"],
    )
    sent = json.loads(sent_body)
    assert (sent["conversation_id"], sent["ticket_id"]) == ("town-square/e2e", ticket["ticket_id"])
    assert sent["text"] == "Which printer exactly? The label on its front, please."

    def delivered() -> dict[str, Any] | None:
        reply = next(m for m in desk.messages(ticket["ticket_id"]) if m["message_id"] == reply_id)
        return reply if (reply.get("delivery") or {}).get("status") == "delivered" else None

    assert await _until(delivered, "delivery reported")
