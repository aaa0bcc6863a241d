"""Agents' replies by email: `outbound.email` -> SMTP, and a DeliveryResult for each reply.

A BatchRunner hands over batches of `OutboundReply`. For each batch: replies settled before
(the sent log) are not sent again, only reported again; the rest are composed, sent in one
SMTP session per attempt, and recorded in the sent log right after the session; transient
failures (no connection, 4xx) are tried again with back-off up to `reply_attempts` times,
permanent ones (5xx) are given up at once; then one `DeliveryResult` per reply goes to
`tickets.commands` (key = ticket id, command id derived from the reply id). Records that are
no reply, or a reply that can never be a mail, go to `deadletter.ingest-email`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage

from deskstream.events import DeliveryResult, OutboundReply
from deskstream.lifecycle import start_with_retry
from deskstream.logs import correlation, event_context
from deskstream.metrics import Meter
from deskstream.producer import Publisher, command_record, delivery_result
from deskstream.runner import BatchRunner, PoisonRecords, Record, TransientError, decode_all
from pymongo import AsyncMongoClient

from deskstream_ingest_email.compose import (
    DeskSender,
    InvalidReply,
    compose,
    recipient_address,
)
from deskstream_ingest_email.reply_thread import find_parent, thread_headers
from deskstream_ingest_email.sent import Doc, SentLog, sent_doc
from deskstream_ingest_email.settings import IngestEmailSettings
from deskstream_ingest_email.smtp_send import Envelope, Outcome, SmtpConfig, send_batch

log = logging.getLogger(__name__)

STAGE = "ingest-email"
ROUTE = "email"
# Outcomes that mean no SMTP server answered (the others carry the server's reply).
_UNANSWERED = ("no SMTP session", "connection lost", "not tried")


@dataclass
class _Pending:
    """A reply on its way: its mail, and the outcome once it has one."""

    index: int
    reply: OutboundReply
    message: EmailMessage
    sender: str
    recipient: str
    outcome: Outcome | None = None

    @property
    def message_id(self) -> str:
        return str(self.message["Message-ID"])


def delivery_command(reply_id: str, ticket_id: str, delivered: bool, detail: str) -> DeliveryResult:
    # One id per reply: reported again after a redelivery, it is applied once.
    return delivery_result(
        "email", reply_id=reply_id, ticket_id=ticket_id, delivered=delivered, detail=detail
    )


class ReplySender:
    """The BatchRunner handler (see the module docstring)."""

    def __init__(
        self,
        *,
        settings: IngestEmailSettings,
        sent: SentLog,
        publisher: Publisher,
        smtp: SmtpConfig,
    ) -> None:
        self.settings = settings
        self.sent = sent
        self.publisher = publisher
        self.smtp = smtp
        self.commands_topic = settings.topics.name("tickets.commands")
        self.meter = Meter.of(settings)
        self.mailbox_addresses = [m.address for m in settings.resolved_mailboxes()]

    def desk_sender(self, mailbox_address: str | None) -> DeskSender:
        address = self.settings.reply_from or mailbox_address or self.mailbox_addresses[0]
        domain = self.settings.message_id_domain or address.rpartition("@")[2]
        return DeskSender(
            address=address, name=self.settings.reply_from_name, message_id_domain=domain
        )

    async def __call__(self, records: list[Record]) -> None:
        good, poison = decode_all(records, OutboundReply)
        replies: dict[str, tuple[int, OutboundReply]] = {}
        for index, reply in good:
            replies.setdefault(reply.reply_id, (index, reply))  # a repeat in one batch: once
        settled = await self.sent.settled(replies)
        earlier = await self.sent.earlier_message_ids(r.ticket_id for _, r in replies.values())
        results: list[DeliveryResult] = []
        pending: list[_Pending] = []
        for reply_id, (index, reply) in replies.items():
            done = settled.get(reply_id)
            if done is not None:
                self.meter.reply(ROUTE, "repeat")
                results.append(
                    delivery_command(
                        reply_id, reply.ticket_id, done["status"] == "sent", done["detail"]
                    )
                )
                continue
            before = earlier.setdefault(reply.ticket_id, [])
            try:
                pending.append(self._prepare(index, reply, before))
                # A later reply of the same ticket in this batch follows this one.
                before.append(pending[-1].message_id)
            except InvalidReply as exc:
                # Never deliverable: the ticket hears why, the record goes to the dead letters.
                self.meter.reply(ROUTE, "invalid")
                with event_context(**correlation(reply)):
                    log.warning("reply can never be a mail", extra={"error": str(exc)[:300]})
                poison[index] = exc
                results.append(
                    delivery_command(reply_id, reply.ticket_id, False, f"invalid: {exc}")
                )
        await self._deliver(pending)
        results.extend(
            delivery_command(
                p.reply.reply_id, p.reply.ticket_id, p.outcome.kind == "sent", p.outcome.detail
            )
            for p in pending
            if p.outcome is not None
        )
        await self._report(results)
        if poison:
            raise PoisonRecords(poison)

    def _prepare(self, index: int, reply: OutboundReply, earlier: Sequence[str]) -> _Pending:
        recipient = recipient_address(reply)
        parent = find_parent(reply, self.mailbox_addresses)
        sender = self.desk_sender(parent.mailbox_address)
        thread = thread_headers(reply, parent=parent.message_id, earlier_desk_ids=earlier)
        message = compose(reply, sender=sender, thread=thread)
        return _Pending(index, reply, message, sender.address, recipient)

    async def _deliver(self, pending: list[_Pending]) -> None:
        """Send with back-off until every reply has a final outcome; record each session."""
        delay = self.settings.reply_backoff_s
        todo = list(pending)
        for attempt in range(1, self.settings.reply_attempts + 1):
            if not todo:
                return
            envelopes = [Envelope(p.message, p.sender, p.recipient) for p in todo]
            outcomes = await asyncio.to_thread(send_batch, self.smtp, envelopes)
            answered = any(not o.detail.startswith(_UNANSWERED) for o in outcomes)
            self.meter.connection("smtp", answered)
            last = attempt == self.settings.reply_attempts
            retry: list[_Pending] = []
            for p, outcome in zip(todo, outcomes, strict=True):
                if outcome.kind == "transient" and not last:
                    self.meter.reply(ROUTE, "retried")
                    retry.append(p)
                    continue
                if outcome.kind == "transient":
                    outcome = Outcome(
                        "permanent", f"gave up after {attempt} attempts: {outcome.detail}"
                    )
                elif outcome.kind == "sent":
                    outcome = Outcome("sent", f"{outcome.detail}, Message-ID {p.message_id}")
                p.outcome = outcome
                self.meter.reply(ROUTE, "delivered" if outcome.kind == "sent" else "failed")
                if outcome.kind != "sent":
                    with event_context(**correlation(p.reply)):
                        log.warning("reply not delivered", extra={"detail": outcome.detail})
            await self._record([p for p in todo if p.outcome is not None])
            if retry:
                log.warning(
                    "replies not sent yet, trying again",
                    extra={
                        "replies": len(retry),
                        "attempt": attempt,
                        "retry_in_s": delay,
                        "error": next(o.detail for o in outcomes if o.kind == "transient"),
                    },
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.reply_backoff_max_s)
            todo = retry

    async def _record(self, done: list[_Pending]) -> None:
        """Write the settled replies to the sent log, insisting: a mail SMTP accepted and
        that is not recorded would be sent again if the batch were handed over again."""
        now = datetime.now(UTC)
        docs: list[Doc] = [
            sent_doc(
                reply_id=p.reply.reply_id,
                ticket_id=p.reply.ticket_id,
                status="sent" if p.outcome is not None and p.outcome.kind == "sent" else "failed",
                message_id=p.message_id,
                detail=p.outcome.detail if p.outcome is not None else "",
                at=now,
            )
            for p in done
        ]
        delay = 0.5
        for _ in range(8):
            try:
                await self.sent.record(docs)
                return
            except TransientError as exc:
                log.warning("sent log unavailable, retrying", extra={"error": str(exc)[:300]})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        await self.sent.record(docs)  # the last try raises: the batch is handed over again

    async def _report(self, results: list[DeliveryResult]) -> None:
        try:
            await self.publisher.publish_many(
                command_record(self.commands_topic, r) for r in results
            )
        except Exception as exc:  # not acknowledged: report again (the sent log stops resends)
            raise TransientError(f"delivery results not published: {exc!r}") from exc


class ReplyService:
    """Runs the reply consumer beside the IMAP workers, in the service's event loop."""

    def __init__(self, settings: IngestEmailSettings) -> None:
        self.settings = settings
        self.smtp = SmtpConfig(
            host=settings.smtp_host,
            port=settings.smtp_port,
            ssl=settings.smtp_ssl,
            starttls=settings.smtp_starttls,
            user=settings.smtp_user,
            password=settings.smtp_password,
            timeout_s=settings.smtp_timeout_s,
        )
        self.runner: BatchRunner | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set; waits (not fails) while Kafka or MongoDB are down."""
        settings = self.settings
        mongo: AsyncMongoClient[Doc] = AsyncMongoClient(
            settings.mongodb_uri.get_secret_value(),
            tz_aware=True,
            serverSelectionTimeoutMS=5000,
            socketTimeoutMS=settings.mongodb_socket_timeout_ms,
            appname=f"{settings.service_name}-replies",
        )
        sent = SentLog(mongo[settings.mongodb_database][settings.sent_collection])
        publisher = Publisher(settings)
        handler = ReplySender(settings=settings, sent=sent, publisher=publisher, smtp=self.smtp)

        async def start() -> None:
            # A fresh runner per attempt: a half-started one cannot be started again.
            await sent.ensure_indexes()
            await publisher.start()
            runner = BatchRunner(
                settings=settings,
                stage=STAGE,
                topics=[settings.topics.name("outbound.email")],
                group_id=f"{settings.topic_prefix}ingest-email-replies",
                handler=handler,
                max_batch=settings.reply_batch,
            )
            try:
                await runner.start()
            except BaseException:
                await publisher.stop()
                raise
            self.runner = runner

        try:
            if not await start_with_retry(start, "replies: kafka and mongodb", stop):
                return
            runner = self.runner
            assert runner is not None
            task = asyncio.create_task(runner.run())
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            runner.stop()
            stopper.cancel()
            await task  # re-raises if the runner failed
        finally:
            with contextlib.suppress(Exception):
                await publisher.stop()
            with contextlib.suppress(Exception):
                await mongo.close()
