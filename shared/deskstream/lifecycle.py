"""Process lifecycle: SIGTERM/SIGINT set a stop event so a service finishes its batch and exits."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


def stop_on_signals(loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (the orchestrator's and the terminal's stop)."""
    loop = loop or asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def start_with_retry(
    start: Callable[[], Awaitable[None]], what: str, stop: asyncio.Event | None = None
) -> bool:
    """Call `start` until it succeeds, backing off up to 10 s; False if `stop` came first.

    A service starts even while a dependency is down: it reports not-ready meanwhile
    instead of crash-looping.
    """
    delay = 0.5
    while stop is None or not stop.is_set():
        try:
            await start()
            return True
        except Exception as exc:  # the dependency is not there yet; say so and wait
            log.warning("waiting for a dependency", extra={"what": what, "error": repr(exc)})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
    return False


class BackgroundStart:
    """Starts a component (e.g. a Kafka producer) in the background, retrying until it is up.

    `check` is a readiness check that fails until the start succeeded; `close` stops the
    start attempts, and the component if it came up.
    """

    def __init__(
        self,
        what: str,
        start: Callable[[], Awaitable[None]],
        stop: Callable[[], Awaitable[None]],
    ) -> None:
        self.what = what
        self._start = start
        self._stop = stop
        self._up = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def begin(self) -> None:
        async def run() -> None:
            await start_with_retry(self._start, self.what)
            self._up.set()

        self._task = asyncio.create_task(run())

    async def check(self) -> None:
        if not self._up.is_set():
            raise RuntimeError(f"{self.what} not started yet")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._up.is_set():
            await self._stop()
