"""The router's metrics: the shared families (deskstream.metrics) with `service="router"`.

Faust consumes for the router, so what the shared runner counts by itself is gathered here
in three ways, none with an await per record:

- `RouterSensor`, a Faust sensor (added in app.py): records produced per topic once Kafka
  acknowledged them (commands, routing records, dead letters, table changelogs);
- `RouterMetrics.sample_lag`, on a timer (app.py): the router group's committed-offset
  lag per partition, asked from the broker (two requests, whatever the partitions);
- `RouterMetrics.batch` and `RouterMetrics.dead_letter`, called by the topology after each
  agent batch (records consumed per topic, handling time, ages — once per batch, as the
  shared runner counts) and for each dead letter (by reason).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import faust
from deskstream.lag import GroupLag
from deskstream.metrics import Meter

from deskstream_router.settings import RouterSettings

LAG_INTERVAL_S = 10.0


class RouterSensor(faust.Sensor):
    """Counts what Faust's producer got acks for (records in are counted per batch)."""

    def __init__(self, meter: Meter, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.meter = meter

    def on_send_completed(self, producer: Any, state: Any, metadata: Any) -> None:
        self.meter.produced(metadata.topic)


def stream_step(stream: Any) -> str:
    """The metrics step of a stream: its agent's name (thread_and_classify, assign, ...)."""
    name = getattr(stream, "prefix", "") or ""
    return name.rsplit(".", 1)[-1] or "stream"


class RouterMetrics:
    """The router's handle on the shared families; cheap to make, no state of its own."""

    def __init__(self, settings: RouterSettings) -> None:
        self.settings = settings
        self.meter = Meter.of(settings)
        self.group = f"{settings.topics.prefix}router"  # the Faust app id is its group
        self._lag: GroupLag | None = None

    def sensor(self) -> RouterSensor:
        return RouterSensor(self.meter)

    # --- called by the topology --------------------------------------------------------

    def batch(self, stream: Any, events: Sequence[Any], started: float) -> None:
        """After an agent's batch (`started`: time.monotonic() before it): its records per
        topic, its handling time and the records' ages, under the agent's name as the step."""
        if events:
            self.meter.handled(
                stream_step(stream),
                ((e.message.topic, int((e.message.timestamp or 0) * 1000)) for e in events),
                time.monotonic() - started,
            )

    def dead_letter(self, error: BaseException) -> None:
        """For each record sent to deadletter.router: counted by the error's type."""
        self.meter.dead_letter(type(error).__name__)

    # --- on a timer ----------------------------------------------------------------------

    async def sample_lag(self) -> None:
        """Set the router group's lag per partition from its committed offsets."""
        if self._lag is None:
            self._lag = GroupLag(self.settings.kafka_bootstrap_servers, self.settings.service_name)
        try:
            partitions = await asyncio.wait_for(self._lag.lag(self.group), LAG_INTERVAL_S / 2)
        except Exception:  # Kafka away: the connection gauge says so; keep the last values
            await self._lag.close()
            return
        for p in partitions:
            self.meter.lag(self.group, p.topic, p.partition, p.lag)

    async def close(self) -> None:
        if self._lag is not None:
            await self._lag.close()
