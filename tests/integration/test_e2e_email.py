"""The first whole path: mail in a real IMAP mailbox becomes a routed ticket in MongoDB.

ingest-email (Dovecot) -> inbound.email -> router -> tickets.commands -> ticket-api (MongoDB)
-> tickets.events, all through the real entry points and the real broker.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Infra
from tests.desk import Desk


def mail(
    subject: str, body: str, sender: str = "maria.lopez@example.com", **headers: str
) -> tuple[bytes, str]:
    msg = EmailMessage()
    message_id = f"<{uuid.uuid4().hex}@mail.example.com>"
    msg["From"] = f"Maria Lopez <{sender}>"
    msg["To"] = "IT Service Desk <servicedesk@example.com>"
    msg["Subject"] = subject
    msg["Message-ID"] = message_id
    msg["Date"] = "Wed, 25 Nov 2026 09:14:03 +0000"
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg.as_bytes(), message_id


@pytest.fixture
async def desk(
    infra: Infra, topic_prefix: str, mongo_db: Any, tmp_path: Path
) -> AsyncIterator[Desk]:
    desk = Desk(infra, topic_prefix, mongo_db.name, tmp_path)
    try:
        desk.start("ticket-api", "router", "ingest-email")
        await desk.load_demo_org()
        yield desk
    finally:
        desk.stop()


async def test_email_becomes_a_ticket_for_the_skilled_agent_and_replies_thread(
    desk: Desk,
) -> None:
    first, first_id = mail(
        "VPN drops every ten minutes",
        "Hi, since this morning my VPN connection drops every ten minutes. Maria",
    )
    desk.deliver(first)
    ticket = desk.wait_ticket(lambda t: t["assignee"] is not None, channel="email")
    tid = ticket["ticket_id"]
    assert (ticket["service_id"], ticket["team"], ticket["status"]) == ("vpn", "network", "open")
    # Ana holds vpn 4; Ben (vpn 2) is in the team but below the required level 3.
    assert ticket["assignee"] == "ana"
    with desk.client() as http:
        decisions = http.get(f"/v1/tickets/{tid}/explanation").json()["decisions"]
    why = {c["agent_id"]: c["filtered_by"] for c in decisions[-1]["explanation"]["candidates"]}
    assert why["ben"] == "skill: vpn 2 < 3"
    assert why["ana"] is None

    # A reply with In-Reply-To lands on the same ticket.
    reply, _ = mail(
        "Re: VPN drops every ten minutes",
        "It happened again at 11:02.",
        In_Reply_To=first_id,
        References=first_id,
    )
    desk.deliver(reply)
    # A reply whose client dropped the headers but kept the token in the subject too.
    token_reply, _ = mail(f"RE: [#{tid}] VPN drops every ten minutes", "And once more after lunch.")
    desk.deliver(token_reply)
    # An out-of-office answer to the desk makes no ticket and no message.
    ooo, _ = mail(
        f"Automatic reply: [#{tid}] VPN",
        "I am out of the office until Monday.",
        sender="tom.berg@example.com",
        Auto_Submitted="auto-replied",
    )
    desk.deliver(ooo)
    # A sentinel after them: once it is a ticket, everything before it was processed.
    sentinel, _ = mail(
        "Printer on the 3rd floor jams",
        "Paper jam on every second page.",
        sender="li.wei@example.com",
    )
    desk.deliver(sentinel)
    desk.wait_ticket(lambda t: t["subject"] == "Printer on the 3rd floor jams", channel="email")

    texts = [m["text"] for m in desk.messages(tid)]
    assert len(texts) == 3, texts
    assert any("11:02" in t for t in texts)
    assert any("after lunch" in t for t in texts)
    subjects = {t["subject"] for t in desk.tickets(channel="email")}
    assert subjects == {"VPN drops every ten minutes", "Printer on the 3rd floor jams"}


async def test_queued_ticket_is_assigned_when_an_agent_comes_online(desk: Desk) -> None:
    with desk.client() as http:
        assert http.put("/v1/agents/dev/presence", json={"presence": "offline"}).status_code == 200
    desk.deliver(mail("Printer jams again", "The printer in room 4.12 jams.")[0])
    queued = desk.wait_ticket(lambda t: t["queue"] is not None, channel="email")
    assert queued["assignee"] is None
    assert queued["queue"]["team"] == "field"

    # No new message: only Dev coming online makes the router drain the queue.
    with desk.client() as http:
        assert http.put("/v1/agents/dev/presence", json={"presence": "online"}).status_code == 200
    assigned = desk.wait_ticket(
        lambda t: t["ticket_id"] == queued["ticket_id"] and t["assignee"] == "dev"
    )
    assert assigned["status"] == "open"
