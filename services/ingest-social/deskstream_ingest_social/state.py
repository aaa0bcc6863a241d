"""The X connection as this replica last saw it, for `/readyz` and `deskstream_connection_up`.

The poller ("read") and the replier ("write") report every answer (or its absence);
readiness then says "failing" while the last request of either found no X (no
connection, 5xx, refused credentials), instead of asking X again on every probe, which
would spend the account's rate limit. A rate-limited answer is an answer: X is there,
the service is only waiting. Reads and writes are kept apart because X can serve
timelines while refusing posts, and an operator needs to see that.
"""

from __future__ import annotations

import threading

from deskstream.metrics import Meter


class XState:
    def __init__(self, meter: Meter | None = None) -> None:
        self._lock = threading.Lock()
        self._errors: dict[str, str] = {}
        self._meter = meter

    def answered(self, path: str) -> None:
        with self._lock:
            self._errors.pop(path, None)
            up = not self._errors
        if self._meter is not None:
            self._meter.connection("x", up)

    def failed(self, path: str, reason: str) -> None:
        with self._lock:
            self._errors[path] = reason[:300]
        if self._meter is not None:
            self._meter.connection("x", False)

    async def check(self) -> None:
        with self._lock:
            errors = dict(self._errors)
        if errors:
            raise RuntimeError(
                "; ".join(f"X API {path}: {e}" for path, e in sorted(errors.items()))
            )
