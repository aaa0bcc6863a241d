"""The transactional outbox: events are written beside the state change they announce.

A writer never publishes to Kafka itself. It inserts one outbox document per record in the
same MongoDB transaction as the change (`write`), keyed by the record's event id (its
`ce_id`), so the change and its events commit together and a re-applied change cannot add
an event twice. The relay (`relay.py`) publishes pending documents in order and marks them.

The value is stored as the exact JSON the contract model produces (a string, not BSON):
BSON would cut timestamps to milliseconds and reorder nothing, but a string is what goes
on the wire, byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from deskstream.events import (
    TICKET_EVENT,
    AgentState,
    OutboundReply,
    ServiceEntry,
)
from deskstream.producer import OutRecord
from pydantic import BaseModel

from deskstream_ticket_api.db import Doc, Session, Store


class Schema(StrEnum):
    """Which contract a stored value is, so the relay can rebuild the model."""

    TICKET_EVENT = "ticket_event"
    AGENT_STATE = "agent_state"
    SERVICE_ENTRY = "service_entry"
    OUTBOUND_REPLY = "outbound_reply"


def _decoder(schema: Schema, raw: str) -> BaseModel:
    if schema is Schema.TICKET_EVENT:
        event: BaseModel = TICKET_EVENT.validate_json(raw)
        return event
    models: dict[Schema, type[BaseModel]] = {
        Schema.AGENT_STATE: AgentState,
        Schema.SERVICE_ENTRY: ServiceEntry,
        Schema.OUTBOUND_REPLY: OutboundReply,
    }
    model = models[schema]
    return model.model_validate_json(raw)


def event_type(value: BaseModel) -> str:
    """The CloudEvents `type` of a record: `deskstream.<kind>[.<event>]`."""
    if isinstance(value, AgentState):
        return "deskstream.agent.state"
    if isinstance(value, ServiceEntry):
        return "deskstream.catalogue.service"
    if isinstance(value, OutboundReply):
        return "deskstream.outbound.reply"
    return f"deskstream.ticket.{value.type}"  # type: ignore[attr-defined]


def _schema_of(value: BaseModel) -> Schema:
    if isinstance(value, AgentState):
        return Schema.AGENT_STATE
    if isinstance(value, ServiceEntry):
        return Schema.SERVICE_ENTRY
    if isinstance(value, OutboundReply):
        return Schema.OUTBOUND_REPLY
    return Schema.TICKET_EVENT


class _Order:
    """Strictly increasing integers from the clock: the publish order of outbox documents.

    Nanoseconds keep the order across processes roughly by time; within this process two
    calls never return the same value, even inside one clock tick.
    """

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            self._last = max(self._last + 1, time.time_ns())
            return self._last


_order = _Order()


@dataclass(frozen=True)
class Entry:
    """One record to publish later: where, under which key, what, and its event id."""

    topic: str
    key: str | None
    event_id: str
    value: BaseModel | None  # None: a tombstone, which deletes the key on a compacted topic
    type: str
    compacted: bool = False

    def document(self, *, now: datetime) -> Doc:
        schema = None if self.value is None else _schema_of(self.value)
        return {
            "_id": self.event_id,
            "topic": self.topic,
            "key": self.key,
            "schema": schema.value if schema else None,
            "value": None if self.value is None else self.value.model_dump_json(),
            "type": self.type,
            "compacted": self.compacted,
            "order": _order.next(),
            "created_at": now,
            "published": False,
            "published_at": None,
        }


def record(
    *,
    topic: str,
    key: str | None,
    value: BaseModel,
    event_id: str,
    compacted: bool = False,
) -> Entry:
    return Entry(topic, key, event_id, value, event_type(value), compacted)


def tombstone(*, topic: str, key: str, event_id: str, type: str) -> Entry:
    return Entry(topic, key, event_id, None, type, compacted=True)


async def write(*, store: Store, session: Session, entries: Sequence[Entry]) -> None:
    """Insert the entries in the caller's transaction (a duplicate event id aborts it)."""
    if not entries:
        return
    now = datetime.now(UTC)
    await store["outbox"].insert_many([e.document(now=now) for e in entries], session=session)


@dataclass(frozen=True)
class Pending:
    """An outbox document as the relay reads it back."""

    event_id: str
    topic: str
    key: str | None
    value: BaseModel | None
    type: str
    compacted: bool
    order: int
    created_at: datetime

    @classmethod
    def from_doc(cls, doc: Doc) -> Pending:
        value = None if doc["value"] is None else _decoder(Schema(doc["schema"]), doc["value"])
        return cls(
            event_id=doc["_id"],
            topic=doc["topic"],
            key=doc["key"],
            value=value,
            type=doc["type"],
            compacted=bool(doc.get("compacted")),
            order=int(doc["order"]),
            created_at=doc["created_at"],
        )

    def out_record(self) -> OutRecord:
        assert self.value is not None
        return OutRecord(self.topic, self.key, self.value, self.event_id, self.type)


class Waker:
    """Lets writers in this process nudge the relay, so it need not poll to be prompt."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def wake(self) -> None:
        self._event.set()

    async def wait(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout_s)
        self._event.clear()


def summary(entries: Sequence[Entry]) -> dict[str, Any]:
    """For logs: how many records per topic a write queued."""
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.topic] = counts.get(e.topic, 0) + 1
    return counts
