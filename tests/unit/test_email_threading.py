"""Threading: reply_to, conversation key and ticket hint from a mail's headers alone."""

from __future__ import annotations

from deskstream.ids import desk_message_id, event_id, ticket_id_for
from deskstream_ingest_email.conversation import MAX_REPLY_TO, bounded_id, thread
from deskstream_ingest_email.parse import first_message_id, message_ids, normalise_message_id

EID = event_id("email", "servicedesk@example.com", "<x@example.com>")
TICKET = ticket_id_for(EID)


def test_message_ids_are_normalised_to_one_form() -> None:
    assert normalise_message_id(" <Abc.123@MAIL.Example.COM> ") == "<Abc.123@mail.example.com>"
    assert normalise_message_id("Abc.123@MAIL.Example.COM") == "<Abc.123@mail.example.com>"
    assert normalise_message_id("<>") is None
    assert first_message_id("<a@B.com> (comment)") == "<a@b.com>"
    # Folded and repeated references, and a Message-ID without brackets.
    assert message_ids("<a@X.com>\r\n <b@y.com> <a@x.com>") == ["<a@x.com>", "<b@y.com>"]
    assert message_ids("a@X.com") == ["<a@x.com>"]


def test_root_of_the_references_chain_is_the_conversation_key() -> None:
    t = thread(
        message_id="<c@x.com>",
        in_reply_to=["<b@x.com>"],
        references=["<a@x.com>", "<b@x.com>"],
        subject="Re: printer",
        event_id=EID,
    )
    assert t.conversation_key == "<a@x.com>"
    assert t.reply_to == ["<a@x.com>", "<b@x.com>"]
    assert t.ticket_hint is None
    only_irt = thread(
        message_id="<c@x.com>", in_reply_to=["<b@x.com>"], references=[], subject="", event_id=EID
    )
    assert only_irt.conversation_key == "<b@x.com>"
    first = thread(message_id="<c@x.com>", in_reply_to=[], references=[], subject="", event_id=EID)
    assert first.conversation_key == "<c@x.com>"
    nothing = thread(message_id=None, in_reply_to=[], references=[], subject="", event_id=EID)
    assert nothing.conversation_key == EID


def test_a_desk_message_id_names_the_ticket() -> None:
    desk = desk_message_id(TICKET, "reply-1", "desk.example.com")
    t = thread(
        message_id="<c@x.com>",
        in_reply_to=[desk],
        references=["<a@x.com>", desk],
        subject="Re: something else",
        event_id=EID,
    )
    assert t.ticket_hint == TICKET
    assert t.conversation_key == f"ticket:{TICKET}"
    via_references = thread(
        message_id="<c@x.com>",
        in_reply_to=["<unknown@x.com>"],
        references=[desk, "<unknown@x.com>"],
        subject="",
        event_id=EID,
    )
    assert via_references.ticket_hint == TICKET


def test_subject_token_names_the_ticket_and_headers_win_over_it() -> None:
    t = thread(
        message_id="<c@x.com>",
        in_reply_to=[],
        references=[],
        subject="RE: [#DS-7K2M6QXA] VPN",
        event_id=EID,
    )
    assert t.ticket_hint == "DS-7K2M6QXA"
    assert t.conversation_key == "ticket:DS-7K2M6QXA"
    desk = desk_message_id(TICKET, "reply-1", "desk.example.com")
    both = thread(
        message_id="<c@x.com>",
        in_reply_to=[desk],
        references=[],
        subject="RE: [#DS-7K2M6QXA] VPN",
        event_id=EID,
    )
    assert both.ticket_hint == TICKET


def test_ids_too_long_for_the_contract_are_hashed_and_chains_are_bounded() -> None:
    long = "<" + "x" * 300 + "@example.com>"
    assert len(bounded_id(long)) <= 200
    assert bounded_id(long) == bounded_id(long)
    chain = [f"<{i}@x.com>" for i in range(250)]
    t = thread(
        message_id="<c@x.com>",
        in_reply_to=[chain[-1]],
        references=chain,
        subject="",
        event_id=EID,
    )
    assert len(t.reply_to) == MAX_REPLY_TO
    assert t.reply_to[0] == chain[0]
    assert t.reply_to[-1] == chain[-1]
    assert t.conversation_key == chain[0]
