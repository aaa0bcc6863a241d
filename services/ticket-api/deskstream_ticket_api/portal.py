"""Portal requests: a form becomes an InboundMessage on inbound.portal, routed like any channel.

The request is published directly (not through the outbox): nothing is stored here, the
router opens the ticket. The answer waits for Kafka's acknowledgement, so a 202 means the
request is durable. The event id is derived from the user and the request id (the
client's Idempotency-Key when it sends one), so a retried submission is the same event and
the router opens one ticket, whose id the 202 already names.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

from aiokafka.errors import KafkaError
from deskstream import ids
from deskstream.events import Channel, InboundMessage, SenderIdentity, Visibility
from deskstream.producer import OutRecord, Publisher
from deskstream.topics import Topics
from pymongo.asynchronous.database import AsyncDatabase

from deskstream_ticket_api.db import Doc
from deskstream_ticket_api.errors import Invalid, Unavailable
from deskstream_ticket_api.models import PortalRequestAccepted, PortalRequestCreate

PUBLISH_TIMEOUT_S = 15.0


def request_id_for(idempotency_key: str | None) -> str:
    return idempotency_key or uuid.uuid4().hex


def inbound_message(
    *, user_id: str, request_id: str, body: PortalRequestCreate, now: datetime
) -> InboundMessage:
    return InboundMessage(
        event_id=ids.event_id("portal", user_id, request_id),
        channel=Channel.PORTAL,
        conversation_key=f"portal:{request_id}",
        sender=SenderIdentity(channel=Channel.PORTAL, kind="portal", id=user_id),
        subject=body.subject,
        text=body.description,
        received_at=now,
        visibility=Visibility.PRIVATE,
        service_hint=body.service_id,
    )


async def submit(
    *,
    db: AsyncDatabase[Doc],
    publisher: Publisher,
    topics: Topics,
    user_id: str,
    request_id: str,
    body: PortalRequestCreate,
) -> PortalRequestAccepted:
    if await db["services"].find_one({"_id": body.service_id}, {"_id": 1}) is None:
        raise Invalid(("body", "service_id"), f"unknown service {body.service_id!r}")
    message = inbound_message(
        user_id=user_id, request_id=request_id, body=body, now=datetime.now(UTC)
    )
    record = OutRecord(
        topic=topics.inbound(Channel.PORTAL),
        key=message.conversation_key,
        value=message,
        event_id=message.event_id,
        event_type="deskstream.inbound.message",
    )
    try:
        await asyncio.wait_for(publisher.publish_many([record]), PUBLISH_TIMEOUT_S)
    except (KafkaError, TimeoutError, RuntimeError) as exc:
        # RuntimeError: the producer has not started yet (Kafka was down at start-up).
        raise Unavailable(f"the request could not be queued ({type(exc).__name__}); retry") from exc
    return PortalRequestAccepted(
        request_id=request_id,
        ticket_id=ids.ticket_id_for(message.event_id),
        event_id=message.event_id,
    )
