"""The desk's reply as a mail: one `OutboundReply` -> one RFC 5322 message (pure, stdlib).

Everything in it is derived from the reply alone, so a reply composed again after a crash
is the same mail: the same Message-ID (`deskstream.ids.desk_message_id`, naming the ticket,
so the requester's answer threads back onto it whatever their client does to the subject),
the same Date (the reply's creation time), the same subject with the ticket token once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

from deskstream.events import Channel, OutboundReply
from deskstream.ids import desk_message_id

from deskstream_ingest_email.reply_thread import ThreadHeaders

# SMTP's CRLF line ends; bodies quoted-printable or base64, so no 8BITMIME is needed.
POLICY = policy.SMTP.clone(cte_type="7bit")
_TOKEN = re.compile(r"\[#?DS-[A-Z2-7]{8}\]", re.IGNORECASE)
# Reply and forward prefixes as mail clients write them (English, German, Nordic, Dutch).
_PREFIX = re.compile(r"^\s*(?:(?:re|aw|sv|vs|antw|fwd?|wg)\s*(?:\[\d+\])?\s*:\s*)+", re.I)
_ADDRESS = re.compile(r"^[!#-'*+\-/-9=?A-Z^-~.]+@[A-Za-z0-9.\-\[\]:]+$")


class InvalidReply(ValueError):
    """The reply can never be sent as a mail (e.g. its recipient is no email address)."""


@dataclass(frozen=True)
class DeskSender:
    """Who the desk's mail is from, and the right-hand side of its Message-IDs."""

    address: str
    name: str
    message_id_domain: str


def reply_subject(subject: str, ticket_id: str) -> str:
    """`Re: <subject> [#DS-…]`: earlier prefixes and tokens removed, the token exactly once."""
    base = _TOKEN.sub(" ", subject)
    base = " ".join(_PREFIX.sub("", base).split())
    return f"Re: {base} [#{ticket_id}]" if base else f"Re: [#{ticket_id}]"


def recipient_address(reply: OutboundReply) -> str:
    """The requester's address; InvalidReply if the reply cannot go out as a mail."""
    if reply.channel is not Channel.EMAIL:
        raise InvalidReply(f"channel {reply.channel.value!r} is not email")
    if reply.recipient.channel is not Channel.EMAIL:
        raise InvalidReply(f"recipient is a {reply.recipient.channel.value} identity")
    address = reply.recipient.id.strip()
    if not _ADDRESS.match(address):
        # Also refuses CR/LF (header injection) and non-ASCII (would need SMTPUTF8).
        raise InvalidReply(f"recipient {address[:80]!r} is not an ASCII email address")
    return address


def compose(reply: OutboundReply, *, sender: DeskSender, thread: ThreadHeaders) -> EmailMessage:
    """The mail for `reply`; InvalidReply when its recipient or a header cannot be written."""
    to = recipient_address(reply)
    msg = EmailMessage(policy=POLICY)
    try:
        msg["From"] = Address(display_name=sender.name, addr_spec=sender.address)
        msg["To"] = Address(display_name=reply.recipient.display_name or "", addr_spec=to)
        msg["Subject"] = reply_subject(reply.subject, reply.ticket_id)
        msg["Date"] = format_datetime(reply.created_at)
        msg["Message-ID"] = message_id_of(reply, sender)
        if thread.in_reply_to:
            msg["In-Reply-To"] = thread.in_reply_to
        if thread.references:
            msg["References"] = " ".join(thread.references)
        msg["X-Deskstream-Ticket"] = reply.ticket_id
        msg.set_content(reply.text)
        if reply.html:
            msg.add_alternative(reply.html, subtype="html")
        msg.as_bytes()  # any header the policy cannot write fails here, not in the SMTP session
    except (ValueError, TypeError, UnicodeError) as exc:
        raise InvalidReply(f"cannot write the mail: {exc}") from exc
    return msg


def message_id_of(reply: OutboundReply, sender: DeskSender) -> str:
    return desk_message_id(reply.ticket_id, reply.reply_id, sender.message_id_domain)
