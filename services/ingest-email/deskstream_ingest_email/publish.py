"""Batched publishing of a mailbox batch: send every record, flush once, check every ack.

Only `Publish` outcomes go to `inbound.email` and only `DeadLetter`s to
`deadletter.ingest-email`; ignored mail is not published anywhere (it is counted and
logged), because nothing downstream may act on it and the raw mail stays in the mailbox.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from deskstream.cloudevents import Headers, ce_headers
from deskstream.events import Channel
from deskstream.events import DeadLetter as DeadLetterRecord
from deskstream.producer import ProducerHolder, encode
from deskstream.topics import Topics

from deskstream_ingest_email.normalise import EVENT_TYPE, DeadLetter, MailSource, Outcome, Publish

if TYPE_CHECKING:
    pass

STAGE = "ingest-email"
DEADLETTER_TYPE = "io.deskstream.deadletter.v1"
# base64 grows by a third: this keeps a dead letter below Kafka's default 1 MiB record.
MAX_DEADLETTER_BYTES = 600_000


@dataclass(frozen=True)
class Fetched:
    """One mail of a batch: where it came from, its bytes, and what it became."""

    source: MailSource
    raw: bytes
    outcome: Outcome


class BatchPublisher:
    def __init__(
        self, producers: ProducerHolder, topics: Topics, *, source: str, flush_timeout_s: float
    ) -> None:
        self._producers = producers
        self._inbound = topics.inbound(Channel.EMAIL)
        self._deadletter = topics.deadletter(STAGE)
        self._source = source
        self._flush_timeout_s = flush_timeout_s

    def publish(self, batch: Sequence[Fetched]) -> None:
        """Send the batch's records and return once Kafka acknowledged all of them."""
        records = [r for item in batch if (r := self._record(item)) is not None]
        self._producers.send_all(records, self._flush_timeout_s)

    def _record(self, item: Fetched) -> tuple[str, bytes | None, bytes, Headers] | None:
        outcome, source = item.outcome, item.source
        raw_ref = [("raw_ref", source.raw_ref.encode())]
        if isinstance(outcome, Publish):
            msg = outcome.message
            headers = ce_headers(
                event_id=msg.event_id,
                event_type=EVENT_TYPE,
                source=self._source,
                time=msg.received_at,
            )
            return self._inbound, msg.conversation_key.encode(), encode(msg), headers + raw_ref
        if isinstance(outcome, DeadLetter):
            raw, reason = item.raw, (outcome.error or outcome.error_type)[:3900]
            if len(raw) > MAX_DEADLETTER_BYTES:
                # Too big for one record: the start goes along, the whole stays at raw_ref.
                reason += f" (original cut to {MAX_DEADLETTER_BYTES} of {len(raw)} bytes)"
                raw = raw[:MAX_DEADLETTER_BYTES]
            letter = DeadLetterRecord(
                stage=STAGE,
                reason=reason,
                error_type=outcome.error_type[:200],
                attempts=1,
                # The mail came from IMAP, not a topic: name its folder there.
                original_topic=source.mailbox.url(source.uidvalidity)[:200],
                original_value_b64=DeadLetterRecord.b64(raw) or "",
                raw_ref=source.raw_ref,
                event_id=outcome.event_id,
            )
            headers = ce_headers(
                event_id=outcome.event_id, event_type=DEADLETTER_TYPE, source=self._source
            )
            return self._deadletter, None, encode(letter), headers + raw_ref
        return None  # ignored mail: counted and logged by the worker, never published
