"""Honest health: `/healthz` (the process makes progress), `/readyz` (its dependencies answer),
`/metrics`.

`/healthz` answers 503 only when a `Watchdog` (deskstream.watchdog) sees a step of work hang
past its limit: restarting the process is then the cure. A dependency that is down makes
`/readyz` fail instead, since a restart would not bring it back.

A `Readiness` holds named async checks; each runs with a short timeout on every request,
so `/readyz` turns 503 within seconds of a dependency going away and 200 once it is back.
Two thin adapters serve it: `ops_server` (aiohttp, for workers without a web framework)
and `fastapi_router` (for the FastAPI services); the router's Faust views use `scrape`.

A check added with `connection=<kind>` (kafka, mongodb) also sets
`deskstream_connection_up{kind}`: every `/readyz` and every `/metrics` scrape runs those
checks first, so the gauge is as fresh as the scrape without a timer of its own.
Connections a service holds itself (IMAP sessions, X, Slack, SMTP) are reported by the
code that uses them, not probed here: a probe would log in to the mailbox on every scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaClient
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from deskstream.metrics import Meter
from deskstream.watchdog import Watchdog

if TYPE_CHECKING:
    from aiohttp import web
    from fastapi import APIRouter

Check = Callable[[], Awaitable[Any]]


class Readiness:
    def __init__(self, timeout_s: float = 2.0, meter: Meter | None = None) -> None:
        self.timeout_s = timeout_s
        self.meter = meter
        self.checks: dict[str, Check] = {}
        self.connections: dict[str, str] = {}  # check name -> connection kind

    def add(self, name: str, check: Check, *, connection: str | None = None) -> None:
        """Add a check; with `connection` (and a meter) its result is also a connection gauge."""
        self.checks[name] = check
        if connection is not None:
            self.connections[name] = connection

    async def _run(self, check: Check) -> str:
        try:
            await asyncio.wait_for(check(), self.timeout_s)
            return "ok"
        except Exception as exc:  # any failure of a dependency means "not ready"
            return (
                f"failing: {type(exc).__name__}: {exc}"[:300]
                if str(exc)
                else (f"failing: {type(exc).__name__}")
            )

    async def report(self) -> tuple[bool, dict[str, str]]:
        names = list(self.checks)
        results = await asyncio.gather(*(self._run(self.checks[n]) for n in names))
        detail = dict(zip(names, results, strict=True))
        self._gauge(detail)
        return all(r == "ok" for r in results), detail

    async def refresh_connections(self) -> None:
        """Run only the connection checks, setting their gauges (before a scrape)."""
        if self.meter is None or not self.connections:
            return
        names = list(self.connections)
        results = await asyncio.gather(*(self._run(self.checks[n]) for n in names))
        self._gauge(dict(zip(names, results, strict=True)))

    def _gauge(self, detail: dict[str, str]) -> None:
        if self.meter is None:
            return
        for name, kind in self.connections.items():
            if name in detail:
                self.meter.connection(kind, detail[name] == "ok")


def failed_dependency(exc: BaseException, own: str) -> str:
    """Which dependency an exception of a worker's session is about: `kafka` (a publish
    Kafka did not acknowledge), `mongodb`, or the worker's own connection `own` (imap, x).

    So a Kafka or MongoDB outage is not reported as the mailbox or the X account being down.
    """
    from pymongo.errors import PyMongoError

    from deskstream.producer import PublishFailed

    if isinstance(exc, PublishFailed):
        return "kafka"
    if isinstance(exc, PyMongoError):
        return "mongodb"
    return own


class KafkaProbe:
    """Asks the cluster for its metadata: answers only while a broker does."""

    def __init__(self, bootstrap_servers: str, client_id: str) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.client_id = client_id
        self._client: AIOKafkaClient | None = None

    async def __call__(self) -> None:
        if self._client is None:
            client = AIOKafkaClient(
                bootstrap_servers=self.bootstrap_servers,
                client_id=f"{self.client_id}-health",
                request_timeout_ms=2000,
            )
            await client.bootstrap()
            self._client = client
        try:
            await self._client.fetch_all_metadata()
        except Exception:
            # Start afresh next time: a broker that restarted may have a new identity.
            await self.close()
            raise

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()


def mongo_probe(client: Any) -> Check:
    """A check that pings a PyMongo `AsyncMongoClient`."""

    async def ping() -> None:
        await client.admin.command("ping")

    return ping


def metrics_body() -> tuple[bytes, str]:
    return generate_latest(), CONTENT_TYPE_LATEST


async def scrape(readiness: Readiness | None) -> tuple[bytes, str]:
    """The `/metrics` body, with the connection gauges refreshed first."""
    if readiness is not None:
        await readiness.refresh_connections()
    return metrics_body()


def liveness(watchdog: Watchdog | None) -> tuple[int, dict[str, Any]]:
    """The `/healthz` status and body: 503 naming the stuck steps, else 200."""
    stuck = watchdog.stuck() if watchdog is not None else {}
    if stuck:
        return 503, {"status": "stuck", "stuck_seconds": stuck}
    return 200, {"status": "ok"}


def ops_app(readiness: Readiness) -> web.Application:
    """An aiohttp app with the three ops routes (the workers have no watchdog yet)."""
    from aiohttp import web

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        ready, detail = await readiness.report()
        return web.json_response(
            {"status": "ready" if ready else "not ready", "checks": detail},
            status=200 if ready else 503,
        )

    async def metrics(_: web.Request) -> web.Response:
        body, ctype = await scrape(readiness)
        return web.Response(body=body, headers={"Content-Type": ctype})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def ops_server(readiness: Readiness, host: str, port: int) -> web.AppRunner:
    """Start the ops routes on host:port; stop with `await runner.cleanup()`."""
    from aiohttp import web

    runner = web.AppRunner(ops_app(readiness), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


def fastapi_router(readiness: Readiness, watchdog: Watchdog | None = None) -> APIRouter:
    """The ops routes for a FastAPI app (no authentication: probes and scrapers call them)."""
    from fastapi import APIRouter, Response
    from fastapi.responses import JSONResponse

    router = APIRouter(tags=["ops"])

    @router.get("/healthz", response_model=None)
    async def healthz() -> JSONResponse:
        status, body = liveness(watchdog)
        return JSONResponse(body, status_code=status)

    @router.get("/readyz", response_model=None)
    async def readyz() -> JSONResponse:
        ready, detail = await readiness.report()
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "checks": detail},
            status_code=200 if ready else 503,
        )

    @router.get("/metrics", response_model=None)
    async def metrics() -> Response:
        body, ctype = await scrape(readiness)
        return Response(content=body, media_type=ctype)

    return router
