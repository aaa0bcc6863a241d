"""End to end on X: a mention and a DM become assigned tickets, and agents' replies reach X.

local X server -> ingest-social -> inbound.social -> router -> tickets.commands ->
ticket-api (MongoDB); an agent's reply through the REST API -> outbound.social ->
ingest-social -> the local X server (a reply to the post, or a DM) -> DeliveryResult ->
the ticket's message shows "delivered". Every service runs through its real entry point.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from deskstream.ids import event_id

from tests.conftest import Infra
from tests.desk import Desk
from tests.xapi import XApi, XServer

TOKEN = "local-x-bearer-token-0123456789"


class SocialDesk(Desk):
    """The desk with ingest-social pointed at the local X server, replies published."""

    x: XServer

    def env(self) -> dict[str, str]:
        return {
            **super().env(),
            "TICKET_API_PUBLISH_REPLIES": "true",
            "INGEST_SOCIAL_X_API_BASE_URL": self.x.base_url,
            "INGEST_SOCIAL_X_USER_ID": self.x.api.desk_id,
            "INGEST_SOCIAL_X_USERNAME": self.x.api.desk_username,
            "INGEST_SOCIAL_X_BEARER_TOKEN": TOKEN,
            "INGEST_SOCIAL_POLL_INTERVAL_S": "1",
        }


@pytest.fixture
def x() -> Iterator[XServer]:
    with XServer(XApi()) as server:
        yield server


@pytest.fixture
async def desk(
    infra: Infra, topic_prefix: str, mongo_db: Any, tmp_path: Path, x: XServer
) -> AsyncIterator[Desk]:
    desk = SocialDesk(infra, topic_prefix, mongo_db.name, tmp_path)
    desk.x = x
    try:
        desk.start("ticket-api", "router", "ingest-social")
        await desk.load_demo_org()
        yield desk
    finally:
        desk.stop()


async def wait_until(check: Any, timeout: float, what: str) -> Any:
    """Poll `check()` until it returns something truthy; `timeout` is a guard."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        await asyncio.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def delivery_of(desk: Desk, ticket_id: str, message_id: str) -> dict[str, Any] | None:
    (msg,) = [m for m in desk.messages(ticket_id) if m["message_id"] == message_id]
    delivery = msg["delivery"]
    return delivery if delivery and delivery["status"] != "queued" else None


async def test_a_mention_and_a_dm_become_assigned_tickets_and_replies_reach_x(
    desk: Desk, x: XServer
) -> None:
    api = x.api
    maria = api.user("2244994945", "maria_l", "Maria Lopez")
    mention = api.mention(maria, "@itdesk is the VPN down for everyone? It keeps dropping")
    dm = api.dm(maria, "Hi, I forgot my password and my account is locked. Can you reset it?")

    public = desk.wait_ticket(
        lambda t: t["assignee"] is not None and t["subject"].startswith("is the VPN down"),
        timeout=120,
        channel="social",
    )
    private = desk.wait_ticket(
        lambda t: t["assignee"] is not None and t["subject"].startswith("Hi, I forgot"),
        timeout=120,
        channel="social",
    )
    assert public["ticket_id"] != private["ticket_id"]
    assert public["requester"]["handle"] == "maria_l"
    assert public["requester"]["id"] == maria
    # The router's public-social rule: public posts go to the social team (Sol).
    assert (public["team"], public["assignee"]) == ("social", "sol")
    (first,) = desk.messages(public["ticket_id"])
    assert first["message_id"] == event_id("x-mention", mention["id"])
    (first_dm,) = desk.messages(private["ticket_id"])
    assert first_dm["message_id"] == event_id("x-dm", dm["id"])

    with desk.client() as http:
        answer = http.post(
            f"/v1/tickets/{public['ticket_id']}/messages",
            json={"text": "Hi Maria, we are looking into the VPN drops right now. Sol"},
        )
        assert answer.status_code == 201, answer.text
        note = http.post(
            f"/v1/tickets/{private['ticket_id']}/messages",
            json={"text": "Internal: identity checked by phone.", "internal": True},
        )
        assert note.status_code == 201, note.text
        direct = http.post(
            f"/v1/tickets/{private['ticket_id']}/messages",
            json={"text": "Your password is reset; the new one is in your manager's inbox."},
        )
        assert direct.status_code == 201, direct.text

    # The public answer is a reply to the mention; the private one a DM to Maria.
    (posted,) = await wait_until(lambda: list(api.posts), 120, "the reply post")
    assert posted["referenced_tweets"] == [{"type": "replied_to", "id": mention["id"]}]
    assert "looking into the VPN drops" in posted["text"]
    (sent,) = await wait_until(lambda: list(api.dms_sent), 120, "the DM")
    assert sent["participant_id"] == maria
    assert "password is reset" in sent["text"]

    # Delivery comes back to the ticket-api, and the internal note was never sent.
    public_delivery = await wait_until(
        lambda: delivery_of(desk, public["ticket_id"], answer.json()["message_id"]),
        120,
        "the public delivery result",
    )
    assert public_delivery["status"] == "delivered", public_delivery
    private_delivery = await wait_until(
        lambda: delivery_of(desk, private["ticket_id"], direct.json()["message_id"]),
        120,
        "the DM delivery result",
    )
    assert private_delivery["status"] == "delivered", private_delivery
    assert len(api.posts) == 1
    assert len(api.dms_sent) == 1
    # The desk's own reply post and DM come back through X's timelines: no new tickets.
    await asyncio.sleep(3)
    assert len(desk.tickets(channel="social")) == 2
