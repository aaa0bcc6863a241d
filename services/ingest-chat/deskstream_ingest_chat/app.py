"""ingest-chat's FastAPI application: web chat, Slack Events, the signed webhook, ops routes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from deskstream.health import KafkaProbe, Readiness, fastapi_router
from deskstream.metrics import Meter
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from deskstream_ingest_chat import inbound_http, webchat_routes
from deskstream_ingest_chat.runtime import Runtime
from deskstream_ingest_chat.settings import IngestChatSettings


def create_app(settings: IngestChatSettings) -> FastAPI:
    rt = Runtime.build(settings)
    readiness = Readiness(meter=Meter.of(settings))
    kafka = KafkaProbe(settings.kafka_bootstrap_servers, settings.service_name)
    readiness.add("kafka", kafka, connection="kafka")
    readiness.add("producer", rt.producer.check)
    readiness.add("webchat-feed", rt.check_feed)
    readiness.add("reply-delivery", rt.check_delivery)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        rt.begin()
        try:
            yield
        finally:
            await rt.close()
            await kafka.close()

    app = FastAPI(title="deskstream ingest-chat", version="0.1.0", lifespan=lifespan)
    app.include_router(fastapi_router(readiness))
    app.include_router(inbound_http.router(rt))
    app.include_router(webchat_routes.router(rt))
    app.state.runtime = rt

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(
            {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
        )

    return app
