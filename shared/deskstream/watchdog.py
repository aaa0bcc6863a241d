"""Notices work that stopped moving, says where it waits, and fails the liveness probe.

A consumer loop can hang with the process otherwise healthy: one await whose answer never
comes (a server that keeps the connection but never replies, a client library's lost
wake-up). `/readyz` stays green because every dependency answers its ping, and nothing is
logged, so nobody notices until the backlog does. A `Watchdog` times each step of such a
loop (a batch, a commit, a relay turn). A step under way longer than `stuck_after_s`:

- is logged once at ERROR with the chain of awaits it hangs in (file:line of each
  coroutine down to the future it waits for), so the hang can be diagnosed afterwards;
- makes `/healthz` answer 503, so an orchestrator restarts the process; offsets committed
  only after the work and the transactional outbox make that restart lose and double nothing.

A step is one attempt: a loop that waits out a dependency outage with back-off starts a new
step per attempt, so an outage shows on `/readyz`, not as a hang.

`kill -USR1 <pid>` (`dump_tasks_on_sigusr1`) logs the await chain of every task at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


def await_chain(task: asyncio.Task[Any]) -> list[str]:
    """Where a task waits: each coroutine on the way down, then what it waits for."""
    chain: list[str] = []
    obj: Any = task.get_coro()
    while obj is not None:
        frame = getattr(obj, "cr_frame", None) or getattr(obj, "gi_frame", None)
        if frame is None:
            break
        code = frame.f_code
        chain.append(f"{code.co_filename}:{frame.f_lineno} in {code.co_name}")
        obj = getattr(obj, "cr_await", None) or getattr(obj, "gi_yieldfrom", None)
    # The future the task is suspended on (asyncio keeps it on the task; no public accessor).
    waiter = getattr(task, "_fut_waiter", None)
    if waiter is not None:
        chain.append(f"waiting for {waiter!r}"[:300])
    return chain


@dataclass
class _Step:
    name: str
    task: asyncio.Task[Any] | None
    started: float
    reported: bool = False


@dataclass
class Watchdog:
    # The default never reports: the null watchdog of code run without one.
    stuck_after_s: float = float("inf")
    _steps: dict[int, _Step] = field(default_factory=dict)
    _next: int = 0

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Time one attempt at a piece of work done by the current task."""
        self._next += 1
        key = self._next
        self._steps[key] = _Step(name, asyncio.current_task(), time.monotonic())
        try:
            yield
        finally:
            done = self._steps.pop(key)
            if done.reported:
                log.warning(
                    "stuck step finished after all",
                    extra={"step": name, "seconds": round(time.monotonic() - done.started, 1)},
                )

    def stuck(self) -> dict[str, float]:
        """The steps under way for longer than `stuck_after_s` (name -> seconds); logs new ones."""
        now = time.monotonic()
        out: dict[str, float] = {}
        for step in list(self._steps.values()):
            seconds = now - step.started
            if seconds <= self.stuck_after_s:
                continue
            out[step.name] = round(seconds, 1)
            if not step.reported:
                step.reported = True
                log.error(
                    "step stuck",
                    extra={
                        "step": step.name,
                        "seconds": round(seconds, 1),
                        "waiting_in": await_chain(step.task) if step.task else [],
                    },
                )
        return out

    async def watch(self, interval_s: float = 10.0) -> None:
        """Check every `interval_s`, so a hang is logged even when no probe asks."""
        while True:
            await asyncio.sleep(interval_s)
            self.stuck()


def dump_tasks_on_sigusr1(loop: asyncio.AbstractEventLoop | None = None) -> None:
    """`kill -USR1 <pid>` logs every asyncio task of the process with where it waits."""
    loop = loop or asyncio.get_running_loop()

    def dump() -> None:
        for task in asyncio.all_tasks(loop):
            log.warning(
                "task dump", extra={"task": task.get_name(), "waiting_in": await_chain(task)}
            )

    loop.add_signal_handler(signal.SIGUSR1, dump)
