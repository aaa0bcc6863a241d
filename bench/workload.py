"""The benchmark's inbound messages: realistic `InboundMessage` records, deterministic per seed.

Each message opens a new conversation (so each becomes one ticket), the channels mix email
and portal, and the subjects hit the router's classification rules
(services/router/deskstream_router/rules/classification.toml) so the tickets spread over
the demo organisation's teams. Bodies are ~1 KB of keyword-free filler around the subject's
topic, which puts an encoded record at ~1.5 KB — the size of a typical support mail.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime

from deskstream.cloudevents import Headers, ce_headers
from deskstream.events import Attachment, Channel, InboundMessage, SenderIdentity
from deskstream.ids import event_id, ticket_id_for

# (rule it should hit, subjects). The filler text below avoids every rule keyword, so the
# subject alone decides; "general" subjects match no rule and fall to the default service.
SUBJECTS: dict[str, list[str]] = {
    "vpn": [
        "VPN drops every few minutes",
        "Cannot connect to remote access from home",
        "AnyConnect asks for a certificate",
        "GlobalProtect stuck on connecting",
    ],
    "finance-apps": [
        "SAP transaction ME21N fails",
        "Expense report cannot be submitted",
        "Invoice approval workflow is stuck",
        "Payroll export shows an error",
    ],
    "accounts": [
        "Password expired and cannot change it",
        "Locked out after the weekend",
        "MFA prompt never arrives",
        "New phone, need to move 2FA",
    ],
    "printing": [
        "Printer on floor 3 jams",
        "Toner empty in the north wing",
        "Scanner sends blank pages",
    ],
    "hardware": [
        "Laptop battery swollen",
        "Docking station not detected",
        "Second monitor stays black",
        "Keyboard missing keys",
        "Headset for the new starter",
    ],
    "general": [
        "Question about the new intranet",
        "Teams channel for the project",
        "Access to the shared drive of marketing",
        "Software install request",
    ],
}
# Portal users pick a service on the form (the "portal-choice" rule keeps it).
PORTAL_SERVICES = ["general", "password-reset", "vpn", "printing", "hardware-request"]

FILLER = (
    "Hello service desk, since this morning I have been unable to work normally and my "
    "colleagues on the same floor see the same behaviour. I already restarted my machine "
    "twice, closed every application and tried again after lunch, but nothing changed. "
    "The problem started right after the update that was rolled out last night; before "
    "that everything worked for months without any complaint. I attached a screenshot of "
    "the message I get. Could someone please have a look today? We have a customer "
    "deadline on Friday and the team depends on this working. I am at my desk until six "
    "and can be reached on my mobile as well. If you need remote control of my machine, "
    "just tell me when and I will accept the session. Thank you very much in advance for "
    "your help, and sorry for the trouble."
)
FIRST_NAMES = ["alex", "maria", "jonas", "li", "priya", "omar", "sofia", "tom", "yuki", "nina"]
LAST_NAMES = ["berg", "garcia", "novak", "chen", "singh", "haddad", "rossi", "meyer", "sato"]


@dataclass(frozen=True)
class Inbound:
    """One message ready to produce: its topic channel, key, encoded value and headers."""

    channel: Channel
    key: bytes
    value: bytes
    headers: Headers
    event_id: str
    ticket_id: str


def _sender(rng: random.Random, channel: Channel, rule: str) -> SenderIdentity:
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    domain = "finance.example.com" if rule == "finance-apps" else "example.com"
    address = f"{first}.{last}{rng.randrange(1000)}@{domain}"
    kind = "email" if channel is Channel.EMAIL else "portal"
    return SenderIdentity(
        channel=channel,
        kind=kind,
        id=address,
        display_name=f"{first.title()} {last.title()}",
    )


def message(run: str, n: int, rng: random.Random, now: datetime) -> InboundMessage:
    """The `n`-th message of run `run`: ~70 % email, ~30 % portal, a new conversation each."""
    rule = rng.choice(list(SUBJECTS))
    subject = rng.choice(SUBJECTS[rule])
    channel = Channel.EMAIL if rng.random() < 0.7 else Channel.PORTAL
    text = f"{subject}.\n\n{FILLER}\n\n-- \nsent from the bench, message {n}"
    if channel is Channel.EMAIL:
        mid = f"<bench-{run}-{n}@mail.example.com>"
        return InboundMessage(
            event_id=event_id("email", "desk@example.com", mid),
            channel=channel,
            conversation_key=mid,
            sender=_sender(rng, channel, rule),
            subject=subject,
            text=text,
            attachments=[
                Attachment(filename="screenshot.png", content_type="image/png", size=48_213)
            ]
            if n % 3 == 0
            else [],
            received_at=now,
            raw_ref=f"imap://desk@127.0.0.1/INBOX;UID={n}",
            locale="en",
        )
    request = f"bench-{run}-{n}"
    return InboundMessage(
        event_id=event_id("portal", request),
        channel=channel,
        conversation_key=f"portal:{request}",
        sender=_sender(rng, channel, rule),
        subject=subject,
        text=text,
        received_at=now,
        locale="en",
        service_hint=rng.choice(PORTAL_SERVICES),
    )


def inbound(run: str, count: int, seed: int = 7) -> list[Inbound]:
    """`count` messages, encoded once up front so producing them costs the harness no CPU.

    The ids are unique to `run`; the mix of channels, subjects and teams depends only on
    `seed`, so every run and every measurement sees the same workload.
    """
    rng = random.Random(seed)
    now = datetime.now(UTC)
    out = []
    for n in range(count):
        msg = message(run, n, rng, now)
        out.append(
            Inbound(
                channel=msg.channel,
                key=msg.conversation_key.encode(),
                value=msg.model_dump_json().encode(),
                headers=ce_headers(
                    event_id=msg.event_id,
                    event_type=f"io.deskstream.inbound.{msg.channel.value}.v1",
                    source="/deskstream/bench",
                ),
                event_id=msg.event_id,
                ticket_id=ticket_id_for(msg.event_id),
            )
        )
    return out
