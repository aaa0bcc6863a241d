"""The ticket API's FastAPI application: lifespan wiring of MongoDB and Kafka, and routes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from deskstream.health import KafkaProbe, Readiness, fastapi_router, mongo_probe
from deskstream.lifecycle import BackgroundStart
from deskstream.producer import Publisher
from fastapi import FastAPI
from pymongo import AsyncMongoClient

from deskstream_ticket_api.settings import TicketApiSettings


def create_app(settings: TicketApiSettings) -> FastAPI:
    readiness = Readiness()
    mongo: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
        settings.mongodb_uri.get_secret_value(), serverSelectionTimeoutMS=2000, tz_aware=True
    )
    publisher = Publisher(settings)
    producer = BackgroundStart("kafka producer", publisher.start, publisher.stop)

    readiness.add("mongodb", mongo_probe(mongo))
    readiness.add("kafka", KafkaProbe(settings.kafka_bootstrap_servers, settings.service_name))
    readiness.add("producer", producer.check)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        producer.begin()
        try:
            yield
        finally:
            await producer.close()
            await mongo.close()

    app = FastAPI(title="deskstream ticket API", version="0.1.0", lifespan=lifespan)
    app.include_router(fastapi_router(readiness))
    app.state.settings = settings
    app.state.mongo = mongo
    app.state.publisher = publisher
    return app
