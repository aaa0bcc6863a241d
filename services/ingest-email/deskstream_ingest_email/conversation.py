"""Threading facts of a mail: what it answers, its conversation key, the ticket it names.

Threading must work without looking anything up (the conversation key is the Kafka key, so
it decides the partition before anybody could ask a database). So the key is derived from
the mail alone: the root of its References chain (or In-Reply-To, or its own Message-ID),
which every reply in a well-behaved thread shares. Where the mail names a ticket, the key is
`ticket:<id>` instead, so it lands with that ticket whatever its headers look like.

A ticket is named by a desk Message-ID it answers (`<DS-XXXXXXXX.<hex>@domain>`, made by
`deskstream.ids.desk_message_id`) or by the subject token (`[#DS-XXXXXXXX]`). The headers win
over the subject: they are made by machines, the subject is edited by people.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from deskstream.ids import find_ticket_token

MAX_ID = 200  # `Id` of the event models
MAX_REPLY_TO = 100
_DESK_MESSAGE_ID = re.compile(r"^<(DS-[A-Z2-7]{8})\.[0-9a-f]{16}@[^>]+>$")


@dataclass(frozen=True)
class Threading:
    reply_to: list[str]
    conversation_key: str
    ticket_hint: str | None


def bounded_id(message_id: str) -> str:
    """A Message-ID that fits an `Id` field; longer ones become a stable digest of themselves."""
    if len(message_id) <= MAX_ID:
        return message_id
    return f"<sha256.{hashlib.sha256(message_id.encode()).hexdigest()}@long-message-id.invalid>"


def ticket_from_message_id(message_id: str) -> str | None:
    match = _DESK_MESSAGE_ID.match(message_id)
    return match.group(1) if match else None


def thread(
    *,
    message_id: str | None,
    in_reply_to: list[str],
    references: list[str],
    subject: str,
    event_id: str,
) -> Threading:
    """Threading facts from normalised Message-IDs; `event_id` keys a mail without any."""
    chain = [*references, *(m for m in in_reply_to if m not in references)]
    chain = [bounded_id(m) for m in chain if m != message_id]
    if len(chain) > MAX_REPLY_TO:
        # The root names the conversation and the newest the parent; the middle can go.
        chain = [chain[0], *chain[-(MAX_REPLY_TO - 1) :]]
    hint = _ticket_hint(in_reply_to, references, subject)
    if hint is not None:
        key = f"ticket:{hint}"
    elif references:
        key = bounded_id(references[0])
    elif in_reply_to:
        key = bounded_id(in_reply_to[0])
    elif message_id:
        key = bounded_id(message_id)
    else:
        key = event_id
    return Threading(reply_to=chain, conversation_key=key, ticket_hint=hint)


def _ticket_hint(in_reply_to: list[str], references: list[str], subject: str) -> str | None:
    for message_id in [*in_reply_to, *reversed(references)]:
        ticket = ticket_from_message_id(message_id)
        if ticket is not None:
            return ticket
    return find_ticket_token(subject)
