"""ingest-chat's FastAPI application: web chat, Slack Events and signed webhooks (to come)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from deskstream.health import KafkaProbe, Readiness, fastapi_router
from deskstream.lifecycle import BackgroundStart
from deskstream.producer import Publisher
from fastapi import FastAPI

from deskstream_ingest_chat.settings import IngestChatSettings


def create_app(settings: IngestChatSettings) -> FastAPI:
    readiness = Readiness()
    publisher = Publisher(settings)
    producer = BackgroundStart("kafka producer", publisher.start, publisher.stop)

    readiness.add("kafka", KafkaProbe(settings.kafka_bootstrap_servers, settings.service_name))
    readiness.add("producer", producer.check)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        producer.begin()
        try:
            yield
        finally:
            await producer.close()

    app = FastAPI(title="deskstream ingest-chat", version="0.1.0", lifespan=lifespan)
    app.include_router(fastapi_router(readiness))
    app.state.publisher = publisher
    return app
