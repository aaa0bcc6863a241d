"""Deterministic identifiers: event ids from their source, ticket ids from a ticket's first event.

Every stage derives the same id from the same source fact, so a redelivered message is
recognised everywhere (unique indexes, compacted keys) and never makes a second ticket.
"""

from __future__ import annotations

import base64
import hashlib
import re

TICKET_ID_PREFIX = "DS-"
TICKET_ID_RE = re.compile(r"\bDS-[A-Z2-7]{8}\b")


def event_id(source: str, *parts: str) -> str:
    """A stable id for an event: `<source>:` + 32 hex chars of SHA-256 over its parts.

    `source` names the channel or stage (e.g. "email", "x-mention"); `parts` are the facts
    that identify the event at its source (mailbox + Message-ID, a post id, ...).
    """
    if not parts or any(p == "" for p in parts):
        raise ValueError("an event id needs at least one non-empty part")
    digest = hashlib.sha256("\x1f".join((source, *parts)).encode("utf-8")).hexdigest()
    return f"{source}:{digest[:32]}"


def ticket_id_for(first_event_id: str) -> str:
    """The ticket id a first event opens: `DS-` + 8 base32 chars (40 bits) of its hash.

    40 bits keep ids short enough to read out on the phone; at a million tickets the chance
    of any collision is below 0.05 %, and the ticket store rejects a clash by unique index.
    """
    digest = hashlib.sha256(first_event_id.encode("utf-8")).digest()
    return TICKET_ID_PREFIX + base64.b32encode(digest[:5]).decode("ascii")


def desk_message_id(ticket_id: str, reply_id: str, domain: str) -> str:
    """The Message-ID of a mail the desk sends: it names the ticket, so any reply finds it.

    `<DS-XXXXXXXX.<16 hex of the reply id>@domain>` (FreeScout-style thread ids).
    """
    digest = hashlib.sha256(reply_id.encode("utf-8")).hexdigest()[:16]
    return f"<{ticket_id}.{digest}@{domain}>"


def find_ticket_token(text: str) -> str | None:
    """The first ticket id written in `text` (e.g. a subject `RE: [#DS-7K2M6QXA] VPN`)."""
    match = TICKET_ID_RE.search(text.upper()) if text else None
    return match.group(0) if match else None
