"""Faust's Kafka consumer, with two guards that keep a rebalance from losing records.

Two router workers lost about 40% of a burst of requests when the second worker joined
while the burst arrived (faust-streaming 0.15.3, aiokafka 0.14). Traced per record:

1. **A partition with no committed offset kept the prefetched position.** Before the
   rebalance the first worker had fetched records it then discarded (Faust drops a fetched
   batch when flow stops), so aiokafka's position was already past them. After the
   rebalance Faust seeks every partition "to committed", but aiokafka skips partitions
   whose committed offset is missing or 0 — the worker went on from the prefetch position,
   and since Faust checks for a gap at the head only against a committed offset, it then
   committed past records it never saw. Such partitions are now sought to their beginning,
   as `auto_offset_reset="earliest"` says for a partition without a committed offset.
2. **Skipped records were acknowledged.** While flow is suspended, or for records of an
   older consumer generation, a Faust stream skips the record and acks it "so the lag does
   not grow"; after the partition came back to the same worker those acks were committed.
   Such acks are refused here: the records stay uncommitted and are read again after the
   seek — by whichever worker owns them now. A batch the router finished during a
   rebalance is refused the same way and replayed, which its idempotent commands allow.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

log = logging.getLogger(__name__)


class RebalanceSafeConsumer(faust_aiokafka.Consumer):
    def ack(self, message: Any) -> bool:
        current = message.generation_id == self.app.consumer_generation_id
        if not (current and self.app.flow_control.is_active()):
            return False
        return bool(super().ack(message))

    async def seek_to_committed(self) -> Mapping[TP, int]:
        committed: Mapping[TP, int] = await super().seek_to_committed()
        never = [
            tp for tp, offset in committed.items() if not offset and not self._is_changelog_tp(tp)
        ]
        if never:
            log.debug(
                "seeking partitions without a committed offset to their beginning",
                extra={"partitions": len(never)},
            )
            await self._thread.seek_to_beginning(*never)
        return committed


class RouterTransport(faust_aiokafka.Transport):
    Consumer = RebalanceSafeConsumer


class RouterApp(faust.App):
    """A Faust app whose consumer is `RebalanceSafeConsumer`."""

    def _new_transport(self) -> Any:
        return RouterTransport(self.conf.broker_consumer, self)
