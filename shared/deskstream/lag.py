"""A consumer group's lag as the broker sees it: its committed offsets against the end offsets.

For consumers whose fetch state is not at hand: the router (Faust consumes for it) and the
ticket-api's `GET /v1/ops/status`, which reports other services' groups. Two requests per
call, whatever the number of partitions: one OffsetFetch to the group's coordinator and
one ListOffsets (`read_committed`, so the end is the last stable offset and an open
transaction is not counted as waiting). Called on a timer or on request, never per record.
The shared `BatchRunner` reports its own lag from its fetch state instead (no request).

Only partitions the group has committed for are reported: a group that never committed on
a partition has no position there to measure from. A partition written in Kafka
transactions (the ticket-api relay's topics) ends in a commit marker that takes an offset
but holds no record; a group that commits "last record + 1" (Faust, the shared runner)
shows a lag of 1 there while idle. The runner's own gauge, from its fetch position, does not.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient


@dataclass(frozen=True)
class PartitionLag:
    group: str
    topic: str
    partition: int
    committed: int
    end: int

    @property
    def lag(self) -> int:
        return max(0, self.end - self.committed)


class GroupLag:
    """Asks the broker for groups' lag; the clients are made on first use and kept."""

    def __init__(self, bootstrap_servers: str, client_id: str, timeout_ms: int = 5000) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.client_id = client_id
        self.timeout_ms = timeout_ms
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._admin is None or self._consumer is None:
            admin = AIOKafkaAdminClient(
                bootstrap_servers=self.bootstrap_servers,
                client_id=f"{self.client_id}-lag",
                request_timeout_ms=self.timeout_ms,
            )
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap_servers,
                client_id=f"{self.client_id}-lag",
                group_id=None,
                enable_auto_commit=False,
                isolation_level="read_committed",
                request_timeout_ms=self.timeout_ms,
            )
            try:
                await admin.start()
                await consumer.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await admin.close()
                with contextlib.suppress(Exception):
                    await consumer.stop()
                raise
            self._admin, self._consumer = admin, consumer
        return self._admin, self._consumer

    async def lag(self, group_id: str) -> list[PartitionLag]:
        """Every partition `group_id` committed for, with its committed and end offsets."""
        try:
            admin, consumer = await self._clients()
            committed = await admin.list_consumer_group_offsets(group_id)
            committed = {tp: o for tp, o in committed.items() if o.offset >= 0}
            if not committed:
                return []
            ends = await consumer.end_offsets(list(committed))
        except Exception:
            await self.close()  # a broker that came back may have a new identity
            raise
        return sorted(
            (
                PartitionLag(group_id, tp.topic, tp.partition, committed[tp].offset, ends[tp])
                for tp in committed
                if tp in ends
            ),
            key=lambda p: (p.topic, p.partition),
        )

    async def close(self) -> None:
        admin, consumer = self._admin, self._consumer
        self._admin = self._consumer = None
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.close()
        if consumer is not None:
            with contextlib.suppress(Exception):
                await consumer.stop()
