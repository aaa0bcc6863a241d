"""Faust's Kafka consumer, with guards that keep a rebalance or a restart from losing records.

Two router workers lost about 40% of a burst of requests when the second worker joined
while the burst arrived, and a restarted worker lost a record now and then
(faust-streaming 0.15.3, aiokafka 0.14). Traced per record:

1. **A partition with no committed offset kept the prefetched position.** Before the
   rebalance the first worker had fetched records it then discarded (Faust drops a fetched
   batch when flow stops), so aiokafka's position was already past them. After the
   rebalance Faust seeks every partition "to committed", but aiokafka skips partitions
   whose committed offset is missing or 0 — the worker went on from the prefetch position.
   Such partitions are now sought to their beginning, as `auto_offset_reset="earliest"`
   says for a partition without a committed offset.
2. **Skipped records were acknowledged.** While flow is suspended, or for records of an
   older consumer generation, a Faust stream skips the record and acks it "so the lag does
   not grow"; when the partition came back, those acks were committed. Such acks are
   refused: the records stay uncommitted and are read again after the seek.
3. **A hole of one record at the head was committed over.** Faust commits the first run
   of consecutive acknowledged offsets and tolerates one missing offset before it (a
   transaction marker takes an offset). A record that reached no batch — after a restart,
   one per partition now and then — was committed over that way. The router's own
   topics and the inbound topics are written without transactions, so their offsets have
   no holes: for them the run must start exactly at the committed offset (or at the
   partition's beginning), else nothing is committed. One agent reads each of them, in
   order, and acks a batch in order, so a later offset acknowledged before an earlier one
   means the earlier record was lost on the way: if the hole is still there after
   `HOLE_REREAD_S`, the partition is read again from it (what follows is replayed, which
   the router's idempotent commands allow). After a rebalance this happens: the seek to
   the committed offset does not always stop records fetched before it from arriving.
4. **Records fetched again after a seek were dropped as already read.** Faust remembers
   the last offset it handed to a stream and drops any record below it. A fetch still in
   flight when the rebalance's seek ran handed over records past the seek point, so the
   records fetched again from the seek point were dropped (and the ones fetched before the
   seek had been cleared from the streams' buffers). For the dense topics nothing is
   dropped that way: a record seen twice is handled twice, idempotently.

Every refused commit only delays a commit; nothing here can skip a record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

log = logging.getLogger(__name__)

HOLE_REREAD_S = 2.0


class _ReadOffsets(defaultdict[TP, int | None]):
    """Faust's "last offset handed to a stream" per partition, never kept for dense topics."""

    def __init__(self, dense: Callable[[], frozenset[str]]) -> None:
        super().__init__(lambda: None)
        self._dense = dense

    def __setitem__(self, tp: TP, offset: int | None) -> None:
        if tp.topic not in self._dense():
            super().__setitem__(tp, offset)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for tp, offset in dict(*args, **kwargs).items():
            self[tp] = offset


class RebalanceSafeConsumer(faust_aiokafka.Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_offset = _ReadOffsets(lambda: self._dense_topics)
        # Dense partitions without a committed offset: the offset their first record has.
        self._beginning: dict[TP, int] = {}
        self._hole_since: dict[TP, float] = {}
        self._rereads: set[asyncio.Future[None]] = set()

    @property
    def _dense_topics(self) -> frozenset[str]:
        return getattr(self.app, "dense_topics", frozenset())

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
            await self._thread.seek_to_beginning(*never)
            beginning = await self.earliest_offsets(*never)
            self._beginning.update({TP(tp.topic, tp.partition): o for tp, o in beginning.items()})
        return committed

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        for tp in revoked:
            self._beginning.pop(tp, None)
            self._hole_since.pop(tp, None)
        await super().on_partitions_revoked(revoked)

    def _new_offset(self, tp: TP) -> int | None:
        if tp.topic in self._dense_topics and self._hole_at_head(tp):
            return None
        self._hole_since.pop(tp, None)
        new: int | None = super()._new_offset(tp)
        return new

    def _hole_at_head(self, tp: TP) -> bool:
        acked = self._acked[tp]
        start = self._committed_offset[tp]
        if start is None:
            start = self._beginning.get(tp)
        if not acked or start is None:
            return False
        acked.sort()
        stale = [o for o in acked if o < start]
        if stale:
            del acked[: len(stale)]
            self._acked_index[tp].difference_update(stale)
        if not acked or acked[0] == start:
            return False
        now = time.monotonic()
        since = self._hole_since.setdefault(tp, now)
        if now - since >= HOLE_REREAD_S:
            log.warning(
                "a record was acknowledged by no batch; reading the partition again from it",
                extra={"topic": tp.topic, "partition": tp.partition, "offset": start},
            )
            self._hole_since[tp] = now
            self._rereads.add(task := asyncio.ensure_future(self.seek(tp, start)))
            task.add_done_callback(self._rereads.discard)
        return True


class RouterTransport(faust_aiokafka.Transport):
    Consumer = RebalanceSafeConsumer


class RouterApp(faust.App):
    """A Faust app whose consumer is `RebalanceSafeConsumer`; `dense_topics` are the
    topics written without transactions (their offsets have no holes)."""

    dense_topics: frozenset[str] = frozenset()

    def set_dense_topics(self, topics: Iterable[str]) -> None:
        self.dense_topics = frozenset(topics)

    def _new_transport(self) -> Any:
        return RouterTransport(self.conf.broker_consumer, self)
