"""Publishing a page of X items from the poller thread: send all, flush once, check every ack.

`Publish` outcomes go to `inbound.social` (key = conversation key), `Reject`s to
`deadletter.ingest-social` with the item's original JSON; ignored items are only counted.
The poller's client is blocking, so this uses the shared synchronous producer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from deskstream.cloudevents import Headers, ce_headers
from deskstream.events import Channel
from deskstream.events import DeadLetter as DeadLetterRecord
from deskstream.producer import ProducerHolder, encode
from deskstream.topics import Topics

from deskstream_ingest_social.normalise import EVENT_TYPE, Outcome, Publish, Reject

if TYPE_CHECKING:
    pass

STAGE = "ingest-social"
DEADLETTER_TYPE = "io.deskstream.deadletter.v1"


class PagePublisher:
    def __init__(
        self,
        producers: ProducerHolder,
        topics: Topics,
        *,
        source: str,
        endpoint: Callable[[str], str],
        flush_timeout_s: float,
    ) -> None:
        self._producers = producers
        self._inbound = topics.inbound(Channel.SOCIAL)
        self._deadletter = topics.deadletter(STAGE)
        self._source = source
        self._endpoint = endpoint  # kind -> "GET /2/..." named in dead letters
        self._flush_timeout_s = flush_timeout_s

    def publish(self, kind: str, outcomes: Sequence[Outcome]) -> None:
        """Send the outcomes' records and return once Kafka acknowledged all of them."""
        records = [r for o in outcomes if (r := self._record(kind, o)) is not None]
        self._producers.send_all(records, self._flush_timeout_s)

    def _record(
        self, kind: str, outcome: Outcome
    ) -> tuple[str, bytes | None, bytes, Headers] | None:
        if isinstance(outcome, Publish):
            msg = outcome.message
            headers = ce_headers(
                event_id=msg.event_id,
                event_type=EVENT_TYPE,
                source=self._source,
                time=msg.received_at,
            )
            if msg.raw_ref:
                headers.append(("raw_ref", msg.raw_ref.encode()))
            return self._inbound, msg.conversation_key.encode(), encode(msg), headers
        if isinstance(outcome, Reject):
            letter = DeadLetterRecord(
                stage=STAGE,
                reason=outcome.reason,
                error_type=outcome.error_type[:200],
                attempts=1,
                # The item came from X's API, not a topic: name the endpoint.
                original_topic=self._endpoint(kind)[:200],
                original_value_b64=DeadLetterRecord.b64(outcome.raw) or "",
                event_id=outcome.event_id,
            )
            headers = ce_headers(
                event_id=outcome.event_id or f"x-{kind}-invalid",
                event_type=DEADLETTER_TYPE,
                source=self._source,
            )
            return self._deadletter, None, encode(letter), headers
        return None
