"""The parts of a running ingest-chat and their lifecycle: producer, web-chat feed, delivery.

Each part starts in the background and is retried until its dependency answers, so the
service starts while Kafka is down and reports not-ready meanwhile instead of crash-looping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from deskstream.events import Channel
from deskstream.lifecycle import BackgroundStart, start_with_retry
from deskstream.metrics import Meter
from deskstream.producer import Publisher
from deskstream.runner import BatchRunner

from deskstream_ingest_chat.delivery import Backoff, Delivery, Sender
from deskstream_ingest_chat.feed import Feed
from deskstream_ingest_chat.hub import Hub
from deskstream_ingest_chat.ingest import Ingestor
from deskstream_ingest_chat.senders import SlackSender, WebhookReplySender
from deskstream_ingest_chat.settings import IngestChatSettings

log = logging.getLogger(__name__)
STAGE = "ingest-chat"


@dataclass
class Runtime:
    settings: IngestChatSettings
    publisher: Publisher
    producer: BackgroundStart
    ingestor: Ingestor
    hub: Hub
    feed: Feed
    delivery: Delivery
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    feed_running: bool = False
    delivery_running: bool = False
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    def build(cls, settings: IngestChatSettings) -> Runtime:
        publisher = Publisher(settings)
        hub = Hub(
            max_conversations=settings.webchat_max_conversations,
            max_replies=settings.webchat_max_replies,
        )
        senders: dict[str, Sender] = {}
        if settings.slack_bot_token is not None:
            senders["slack"] = SlackSender(
                token=settings.slack_bot_token.get_secret_value(),
                base_url=settings.slack_api_base_url,
                timeout_s=settings.delivery_timeout_s,
            )
        if settings.webhook_reply_url and settings.webhook_secret is not None:
            senders["webhook"] = WebhookReplySender(
                url=settings.webhook_reply_url,
                secret=settings.webhook_secret.get_secret_value(),
                timeout_s=settings.delivery_timeout_s,
            )
        return cls(
            settings=settings,
            publisher=publisher,
            producer=BackgroundStart("kafka producer", publisher.start, publisher.stop),
            ingestor=Ingestor(
                publisher,
                settings.topics,
                ack_timeout_s=settings.ack_timeout_s,
                max_entries=settings.dedupe_entries,
                ttl_s=settings.dedupe_ttl_s,
            ),
            hub=hub,
            feed=Feed(settings, hub),
            delivery=Delivery(
                publisher=publisher,
                topics=settings.topics,
                senders=senders,
                backoff=Backoff(
                    settings.delivery_attempts,
                    settings.delivery_backoff_s,
                    settings.delivery_backoff_max_s,
                ),
                meter=Meter.of(settings),
            ),
        )

    def begin(self) -> None:
        self.producer.begin()
        self._tasks = [
            asyncio.create_task(self._run_feed(), name="webchat-feed"),
            asyncio.create_task(self._run_delivery(), name="reply-delivery"),
        ]

    async def close(self) -> None:
        self.stop.set()
        for task in self._tasks:
            try:
                await asyncio.wait_for(task, 20)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            except (Exception, asyncio.CancelledError) as exc:  # stopping anyway
                log.warning("part failed at stop", extra={"error": repr(exc)})
        await self.producer.close()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)

    async def _run_feed(self) -> None:
        while not self.stop.is_set():
            if not await start_with_retry(self.feed.start, "web-chat feed", self.stop):
                return
            self.feed_running = True
            try:
                await self.feed.run(self.stop)
            except Exception as exc:  # a fresh feed starts over from the window
                log.error("web-chat feed failed; restarting", extra={"error": repr(exc)})
                await self._sleep(1)
            finally:
                self.feed_running = False
                await self.feed.stop()

    async def _run_delivery(self) -> None:
        settings = self.settings
        delay = 0.5
        while not self.stop.is_set():
            runner = BatchRunner(
                settings=settings,
                stage=STAGE,
                topics=[settings.topics.outbound(Channel.CHAT)],
                group_id=f"{settings.topic_prefix}ingest-chat-delivery",
                handler=self.delivery.handle,
                max_batch=100,
                max_wait_ms=100,
            )
            try:
                await runner.start()
            except Exception as exc:  # Kafka not reachable yet: a new runner, later
                log.warning("reply delivery cannot start", extra={"error": repr(exc)})
                await self._sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            delay = 0.5
            self.delivery_running = True
            run = asyncio.create_task(runner.run())
            stopper = asyncio.create_task(self.stop.wait())
            try:
                await asyncio.wait({run, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if not run.done():
                    runner.stop()  # finish the batch in hand and commit it
                    await asyncio.wait_for(asyncio.shield(run), 15)
                run.result()
            except Exception as exc:  # a new runner resumes from the committed offsets
                log.error("reply delivery failed; restarting", extra={"error": repr(exc)})
                await self._sleep(1)
            finally:
                stopper.cancel()
                self.delivery_running = False

    async def check_feed(self) -> None:
        if not self.feed_running:
            raise RuntimeError("web-chat feed not running")

    async def check_delivery(self) -> None:
        if not self.delivery_running:
            raise RuntimeError("reply delivery consumer not running")
