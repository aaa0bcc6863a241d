"""The common skeleton of a worker service: JSON logs, ops routes, a body, a clean stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from deskstream.health import Readiness, ops_server
from deskstream.lifecycle import stop_on_signals
from deskstream.logs import configure_logging
from deskstream.settings import ServiceSettings, safe_dump

log = logging.getLogger(__name__)

Body = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


async def run_worker(settings: ServiceSettings, readiness: Readiness, body: Body) -> None:
    """Serve /healthz, /readyz, /metrics and run `body(stop)` until SIGTERM/SIGINT.

    The body gets the stop event and should return soon after it is set; if the body
    fails, the service exits non-zero instead of pretending to be healthy.
    """
    configure_logging(settings.service_name, settings.log_level)
    stop = stop_on_signals()
    ops = await ops_server(readiness, settings.http_host, settings.http_port)
    log.info(
        "service started",
        extra={
            "settings": safe_dump(settings),
            "ops": f"{settings.http_host}:{settings.http_port}",
        },
    )
    task = asyncio.create_task(body(stop))
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        try:
            await asyncio.wait_for(task, timeout=30)
        except TimeoutError:
            log.warning("body did not stop within 30 s; cancelling")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        stopper.cancel()
        await ops.cleanup()
        log.info("service stopped")


def run_fastapi(app: object, settings: ServiceSettings, **uvicorn_options: Any) -> None:
    """Serve a FastAPI app with uvicorn, JSON logs, and a graceful stop on SIGTERM (exit 0).

    `uvicorn_options` go to `uvicorn.Config` (e.g. `ws_max_size` for a WebSocket service).
    """
    import uvicorn

    class Server(uvicorn.Server):
        # After its graceful shutdown uvicorn raises the stop signal again, so a clean stop
        # would end as "killed by SIGTERM" (-15), which orchestrators read as a crash.
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                try:
                    yield
                finally:
                    self._captured_signals.clear()

    configure_logging(settings.service_name, settings.log_level)
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        **uvicorn_options,
    )
    Server(config).run()
