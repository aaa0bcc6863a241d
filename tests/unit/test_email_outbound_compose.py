"""The desk's reply mail: headers, the ticket token once, threading, non-ASCII, bad recipients."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest
from deskstream.events import Channel, OutboundReply, SenderIdentity
from deskstream.ids import desk_message_id, event_id
from deskstream_ingest_email.compose import (
    DeskSender,
    InvalidReply,
    compose,
    recipient_address,
    reply_subject,
)
from deskstream_ingest_email.conversation import thread
from deskstream_ingest_email.parse import parse
from deskstream_ingest_email.reply_thread import ThreadHeaders, find_parent, thread_headers

TICKET = "DS-7K2M6QXA"
DESK = DeskSender(
    address="servicedesk@example.com", name="IT Service Desk", message_id_domain="desk.example.com"
)
MAILBOX = "servicedesk@example.com"
FIRST = "<CAF1x9Zq@mail.gmail.com>"


def reply(**changes: object) -> OutboundReply:
    fields: dict[str, object] = {
        "reply_id": "api:0f3c",
        "ticket_id": TICKET,
        "channel": Channel.EMAIL,
        "conversation_key": FIRST,
        "recipient": SenderIdentity(
            channel=Channel.EMAIL,
            kind="email",
            id="maria.lopez@example.com",
            display_name="Maria López",
        ),
        "subject": "VPN drops every ten minutes",
        "text": "Hi Maria,\nplease update the VPN client to 5.2.\nAna",
        "in_reply_to": event_id("email", MAILBOX, FIRST),
        "created_at": datetime(2026, 11, 25, 10, 30, tzinfo=UTC),
    }
    fields.update(changes)
    return OutboundReply.model_validate(fields)


def composed(r: OutboundReply, earlier: tuple[str, ...] = ()) -> EmailMessage:
    parent = find_parent(r, [MAILBOX])
    headers = thread_headers(r, parent=parent.message_id, earlier_desk_ids=earlier)
    return compose(r, sender=DESK, thread=headers)


def reread(msg: EmailMessage) -> EmailMessage:
    """The mail as the requester's client reads it from the wire."""
    parsed = message_from_bytes(msg.as_bytes(), policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def test_headers_name_the_desk_the_requester_and_the_ticket() -> None:
    got = reread(composed(reply()))
    assert got["From"].addresses[0].addr_spec == "servicedesk@example.com"
    assert got["From"].addresses[0].display_name == "IT Service Desk"
    assert got["To"].addresses[0].addr_spec == "maria.lopez@example.com"
    assert got["To"].addresses[0].display_name == "Maria López"
    assert got["Subject"] == f"Re: VPN drops every ten minutes [#{TICKET}]"
    assert got["Message-ID"] == desk_message_id(TICKET, "api:0f3c", "desk.example.com")
    assert got["Date"] == "Wed, 25 Nov 2026 10:30:00 +0000"
    assert got.get_content_type() == "text/plain"
    assert got.get_content().strip().endswith("Ana")


def test_the_same_reply_is_the_same_mail() -> None:
    # A redelivered reply that had to be sent again would be recognisable as a repeat.
    assert composed(reply()).as_bytes() == composed(reply()).as_bytes()


@pytest.mark.parametrize(
    "subject",
    [
        "VPN drops every ten minutes",
        f"Re: VPN drops every ten minutes [#{TICKET}]",
        f"RE: [#{TICKET}] VPN drops every ten minutes",
        f"AW: Re: Fwd: VPN drops every ten minutes [#{TICKET.lower()}] [#{TICKET}]",
        f"VPN drops every ten minutes [{TICKET}]",
    ],
)
def test_the_token_appears_exactly_once(subject: str) -> None:
    got = reply_subject(subject, TICKET)
    assert got == f"Re: VPN drops every ten minutes [#{TICKET}]"
    assert got.upper().count(TICKET) == 1


def test_an_empty_subject_still_carries_the_token() -> None:
    assert reply_subject("", TICKET) == f"Re: [#{TICKET}]"


def test_a_reply_to_the_request_answers_its_message_id() -> None:
    got = reread(composed(reply()))
    assert got["In-Reply-To"] == FIRST
    assert got["References"] == FIRST


def test_later_replies_chain_the_desks_earlier_mails() -> None:
    earlier = desk_message_id(TICKET, "api:0a01", "desk.example.com")
    # The requester answered the desk's mail; its Message-ID is not in the reply.
    later = reply(in_reply_to=event_id("email", MAILBOX, "<unknown@mail.gmail.com>"))
    got = reread(composed(later, (earlier,)))
    assert got["References"].split() == [FIRST, earlier]
    assert got["In-Reply-To"] == earlier


def test_a_message_id_in_the_reply_is_used_as_it_is() -> None:
    r = reply(in_reply_to="<parent@example.org>", references=["<root@example.org>"])
    headers = thread_headers(r, parent=find_parent(r, [MAILBOX]).message_id, earlier_desk_ids=())
    assert headers == ThreadHeaders(
        "<parent@example.org>", (FIRST, "<root@example.org>", "<parent@example.org>")
    )


def test_the_parent_names_the_mailbox_to_answer_from() -> None:
    other = "hr@example.com"
    r = reply(in_reply_to=event_id("email", other, FIRST))
    parent = find_parent(r, [MAILBOX, other])
    assert (parent.message_id, parent.mailbox_address) == (FIRST, other)


def test_a_ticket_keyed_conversation_has_no_references_until_the_desk_wrote() -> None:
    r = reply(conversation_key=f"ticket:{TICKET}", in_reply_to=None)
    got = reread(composed(r))
    assert got["In-Reply-To"] is None
    assert got["References"] is None


def test_the_requesters_answer_threads_back_onto_the_ticket() -> None:
    desk_mail = reread(composed(reply()))
    answer = EmailMessage()
    answer["From"] = "maria.lopez@example.com"
    answer["To"] = "servicedesk@example.com"
    answer["Subject"] = "Re: VPN drops every ten minutes"  # the client dropped the token
    answer["Message-ID"] = "<answer@mail.gmail.com>"
    answer["In-Reply-To"] = desk_mail["Message-ID"]
    answer["References"] = f"{desk_mail['References']} {desk_mail['Message-ID']}"
    answer.set_content("Updated, works now.")
    parsed = parse(answer.as_bytes(), attachment_limit=1_000_000)
    threading = thread(
        message_id=parsed.message_id,
        in_reply_to=parsed.in_reply_to,
        references=parsed.references,
        subject=parsed.subject,
        event_id="email:x",
    )
    assert (threading.ticket_hint, threading.conversation_key) == (TICKET, f"ticket:{TICKET}")


def test_non_ascii_subject_and_body_survive_the_wire() -> None:
    r = reply(
        subject="Зарплата не пришла — 给我发工资",
        text="Hola María,\nla nómina llegará mañana. 😀\nAna",
        html="<p>Hola María, la nómina llegará <b>mañana</b>.</p>",
    )
    raw = composed(r).as_bytes()
    assert raw.isascii()  # 7-bit on the wire: encoded words and quoted-printable/base64
    assert b"\r\n" in raw
    assert b"\n" not in raw.replace(b"\r\n", b"")
    got = reread(composed(r))
    assert got["Subject"] == f"Re: Зарплата не пришла — 给我发工资 [#{TICKET}]"
    assert got.get_content_type() == "multipart/alternative"
    plain = got.get_body(("plain",))
    html = got.get_body(("html",))
    assert plain is not None
    assert html is not None
    assert "la nómina llegará mañana. 😀" in plain.get_content()
    assert "<b>mañana</b>" in html.get_content()


@pytest.mark.parametrize(
    "identity",
    [
        SenderIdentity(channel=Channel.EMAIL, kind="email", id="not-an-address"),
        SenderIdentity(channel=Channel.EMAIL, kind="email", id="a@b.com\r\nBcc: all@example.com"),
        SenderIdentity(channel=Channel.EMAIL, kind="email", id="maría@example.com"),
        SenderIdentity(channel=Channel.SOCIAL, kind="x", id="12345"),
    ],
)
def test_a_recipient_that_is_no_address_is_refused(identity: SenderIdentity) -> None:
    with pytest.raises(InvalidReply):
        recipient_address(reply(recipient=identity))


def test_a_reply_for_another_channel_is_refused() -> None:
    with pytest.raises(InvalidReply, match="not email"):
        composed(reply(channel=Channel.CHAT))
