"""The ticket API's FastAPI application: the runtime's lifespan, limits, errors and routes."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from deskstream.health import fastapi_router
from deskstream.settings import safe_dump
from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse

from deskstream_ticket_api import routes
from deskstream_ticket_api.auth import ANY, Principal
from deskstream_ticket_api.errors import install_handlers
from deskstream_ticket_api.limits import BodySizeLimit
from deskstream_ticket_api.runtime import Runtime
from deskstream_ticket_api.settings import TicketApiSettings

log = logging.getLogger(__name__)


def create_app(settings: TicketApiSettings) -> FastAPI:
    runtime = Runtime(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        log.info(
            "ticket-api starting",
            extra={
                "settings": safe_dump(settings),
                "parts": {
                    "api": settings.api_enabled,
                    "consumer": settings.consumer_enabled,
                    "relay": settings.relay_enabled,
                },
            },
        )
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()
            log.info("ticket-api stopped")

    # Only /healthz, /readyz and /metrics answer without a key, so the OpenAPI document
    # is served under /v1 with authentication rather than at FastAPI's public default.
    app = FastAPI(
        title="deskstream ticket API",
        version="0.1.0",
        lifespan=lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.runtime = runtime
    app.state.settings = settings
    app.state.mongo = runtime.client
    app.state.publisher = runtime.publisher
    install_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    # Out of the schema: shared/health.py's route annotations name locally imported
    # response classes, which FastAPI cannot resolve when it builds the document.
    app.include_router(fastapi_router(runtime.readiness, runtime.watchdog), include_in_schema=False)
    if settings.api_enabled:
        app.include_router(routes.v1())

        @app.get("/v1/openapi.json", include_in_schema=False, response_model=None)
        async def openapi(_: Annotated[Principal, Depends(ANY)]) -> JSONResponse:
            schema: dict[str, Any] = app.openapi()
            return JSONResponse(schema)

    return app
