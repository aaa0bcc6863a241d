"""What an adapter makes of one input: a message to publish, or a reason to ignore it."""

from __future__ import annotations

from dataclasses import dataclass

from deskstream.events import InboundMessage


@dataclass(frozen=True)
class Publish:
    message: InboundMessage
    # What recognises a redelivery of the same input (e.g. Slack's envelope event_id).
    dedupe_key: str


@dataclass(frozen=True)
class Ignored:
    reason: str


@dataclass(frozen=True)
class Challenge:
    """Slack's url_verification handshake: answer with the challenge, publish nothing."""

    challenge: str


class Invalid(ValueError):
    """An input that is missing what it must carry (answered 400, not ingested)."""


def subject_of(text: str, fallback: str) -> str:
    """A ticket subject from a chat message: its first line, shortened."""
    lines = text.strip().splitlines()
    return lines[0].strip()[:120] if lines else fallback
