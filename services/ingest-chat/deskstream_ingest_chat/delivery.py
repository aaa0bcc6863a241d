"""Replies on `outbound.chat`: delivered by their conversation's sender, the result reported.

The runner is the shared `BatchRunner` in one consumer group for all replicas, so each
reply is delivered by one replica. A batch's replies go out concurrently; each is tried
with back-off until it is delivered, refused for good, or out of attempts — and then a
`DeliveryResult` (delivered true or false, with the reason) goes to `tickets.commands`
before the batch's offsets are committed. A reply is never dropped without a result.

Web-chat replies are skipped here: the replica that holds the visitor's socket shows them
and reports the browser's acknowledgement (see hub.py and app.py).

Delivery is at least once: a crash after Slack took a reply but before the commit posts it
again when the batch is handed over; within a process, replies already delivered are
remembered and not posted twice when Kafka hands a batch over again.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from deskstream.events import DeliveryResult, OutboundReply
from deskstream.logs import correlation, event_context
from deskstream.metrics import Meter
from deskstream.producer import Publisher, command_record, delivery_result
from deskstream.runner import PoisonRecords, Record, TransientError, decode_all
from deskstream.topics import Topics

from deskstream_ingest_chat.senders import Permanent, Retryable
from deskstream_ingest_chat.webchat import PREFIX as WEBCHAT_PREFIX

log = logging.getLogger(__name__)


class Sender(Protocol):
    async def send(self, reply: OutboundReply) -> str: ...


@dataclass(frozen=True)
class Backoff:
    attempts: int
    first_s: float
    max_s: float


def chat_delivery(*, ticket_id: str, reply_id: str, delivered: bool, detail: str) -> DeliveryResult:
    """The DeliveryResult command of a reply; its id is the reply's and the outcome's."""
    return delivery_result(
        "chat",
        reply_id=reply_id,
        ticket_id=ticket_id,
        delivered=delivered,
        detail=detail,
        id_parts=("ok" if delivered else "failed",),
    )


async def report(publisher: Publisher, topics: Topics, results: Sequence[DeliveryResult]) -> None:
    commands_topic = topics.name("tickets.commands")
    await publisher.publish_many([command_record(commands_topic, r) for r in results])


class Delivery:
    def __init__(
        self,
        *,
        publisher: Publisher,
        topics: Topics,
        senders: dict[str, Sender],
        backoff: Backoff,
        meter: Meter,
        remember: int = 10_000,
    ) -> None:
        self.publisher = publisher
        self.meter = meter
        self.topics = topics
        self.senders = senders
        self.backoff = backoff
        self._remember = remember
        self._done: OrderedDict[str, DeliveryResult] = OrderedDict()

    async def handle(self, records: list[Record]) -> None:
        """The BatchRunner handler."""
        good, bad = decode_all(records, OutboundReply)
        pending = [
            reply for _, reply in good if not reply.conversation_key.startswith(WEBCHAT_PREFIX)
        ]
        results = await asyncio.gather(*(self._deliver_one(reply) for reply in pending))
        if results:
            try:
                await report(self.publisher, self.topics, results)
            except Exception as exc:  # Kafka down: the batch comes again; sent ones are known
                raise TransientError(f"delivery results not published: {exc!r}") from exc
        if bad:
            raise PoisonRecords(bad)

    async def _deliver_one(self, reply: OutboundReply) -> DeliveryResult:
        with event_context(**correlation(reply)):  # each gathered task has its own context
            return await self._deliver(reply)

    async def _deliver(self, reply: OutboundReply) -> DeliveryResult:
        known = self._done.get(reply.reply_id)
        if known is not None:
            return known
        route = reply.conversation_key.partition(":")[0]
        sender = self.senders.get(route)
        if sender is None:
            result = self._result(
                reply, delivered=False, detail=f"no delivery route for {route!r} conversations"
            )
            self.meter.reply(route, "failed")
            return self._keep(reply, result)
        delay = self.backoff.first_s
        for attempt in range(1, self.backoff.attempts + 1):
            try:
                detail = await sender.send(reply)
            except Permanent as exc:
                self.meter.connection(route, True)  # it answered, with a refusal
                self.meter.reply(route, "failed")
                return self._keep(reply, self._result(reply, delivered=False, detail=str(exc)))
            except Retryable as exc:
                self.meter.connection(route, not exc.unreachable)
                if attempt == self.backoff.attempts:
                    self.meter.reply(route, "failed")
                    detail = f"{exc} (gave up after {attempt} attempts)"
                    return self._keep(reply, self._result(reply, delivered=False, detail=detail))
                self.meter.reply(route, "retried")
                wait = max(delay, min(exc.retry_after_s or 0, self.backoff.max_s))
                log.warning(
                    "reply not delivered yet; retrying",
                    extra={"reply_id": reply.reply_id, "error": str(exc), "retry_in_s": wait},
                )
                await asyncio.sleep(wait)
                delay = min(delay * 2, self.backoff.max_s)
            else:
                self.meter.connection(route, True)
                self.meter.reply(route, "delivered")
                return self._keep(reply, self._result(reply, delivered=True, detail=detail))
        raise AssertionError("unreachable")

    @staticmethod
    def _result(reply: OutboundReply, delivered: bool, detail: str) -> DeliveryResult:
        return chat_delivery(
            ticket_id=reply.ticket_id, reply_id=reply.reply_id, delivered=delivered, detail=detail
        )

    def _keep(self, reply: OutboundReply, result: DeliveryResult) -> DeliveryResult:
        self._done[reply.reply_id] = result
        while len(self._done) > self._remember:
            self._done.popitem(last=False)
        return result
