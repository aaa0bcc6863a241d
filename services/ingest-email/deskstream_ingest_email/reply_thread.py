"""Threading headers of the desk's reply: which mail it answers, and the References chain.

The ticket-api names the requester's mail a reply answers by its event id
(`event_id("email", mailbox address, Message-ID)`), not by its Message-ID, and the event id
cannot be turned back. But the conversation key of an email ticket is the Message-ID of the
thread's root (see conversation.py), so where the root is the mail being answered — the
desk's first answer to a request, the common case — hashing the candidates the reply
carries recognises it, and also names the mailbox it came to (the address to answer from).
Otherwise the reply answers the desk's own latest mail of the ticket (its Message-IDs are
deterministic and recorded in the sent log), which the requester's client threads the same.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from deskstream.events import OutboundReply
from deskstream.ids import event_id

# RFC 5322 msg-id, as ingest-email normalises it: `<left@right>`, no blanks or brackets.
_MESSAGE_ID = re.compile(r"^<[^<>\s@]+@[^<>\s@]+>$")
# Enough for any client to find the thread: the root plus the newest ones (RFC 5322 allows
# dropping the middle of a long chain).
MAX_REFERENCES = 20


def is_message_id(value: str | None) -> bool:
    return bool(value) and _MESSAGE_ID.match(value or "") is not None


@dataclass(frozen=True)
class Parent:
    """The mail a reply answers, where it could be recognised, and the mailbox it came to."""

    message_id: str | None
    mailbox_address: str | None = None


@dataclass(frozen=True)
class ThreadHeaders:
    in_reply_to: str | None
    references: tuple[str, ...]


def find_parent(reply: OutboundReply, mailbox_addresses: Iterable[str]) -> Parent:
    """The Message-ID `reply.in_reply_to` stands for, if the reply lets us recognise it."""
    answered = reply.in_reply_to
    if answered is None:
        return Parent(None)
    if is_message_id(answered):
        return Parent(answered)
    candidates = [c for c in (reply.conversation_key, *reply.references) if is_message_id(c)]
    for address in mailbox_addresses:
        for candidate in candidates:
            if event_id("email", address, candidate) == answered:
                return Parent(candidate, address)
    return Parent(None)


def thread_headers(
    reply: OutboundReply, *, parent: str | None, earlier_desk_ids: Sequence[str]
) -> ThreadHeaders:
    """In-Reply-To and References: root first, the desk's earlier mails, the parent last."""
    chain: list[str] = []

    def add(message_id: str | None) -> None:
        if is_message_id(message_id) and message_id not in chain:
            chain.append(message_id)  # type: ignore[arg-type]

    add(reply.conversation_key)
    for ref in reply.references:
        add(ref)
    for desk_id in earlier_desk_ids:
        add(desk_id)
    if parent is not None and parent in chain and chain[0] != parent:
        chain.remove(parent)  # the parent goes last, where clients look for it
    add(parent)
    if len(chain) > MAX_REFERENCES:
        chain = [chain[0], *chain[-(MAX_REFERENCES - 1) :]]
    in_reply_to = parent if is_message_id(parent) else (chain[-1] if chain else None)
    return ThreadHeaders(in_reply_to=in_reply_to, references=tuple(chain))
