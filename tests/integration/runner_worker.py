"""A consumer process for the runner's crash test, built on the real BatchRunner.

Each record `{"event_id": ..., "n": ...}` has one effect: a document in MongoDB keyed by its
event id (insert_many guarded by the unique _id, so a redelivered record changes nothing).
Records that are not JSON are poison by decoding; `{"explode": true}` makes the handler
fail, so the runner must narrow the batch down to it. With CRASH_AFTER_BATCHES=N the
process SIGKILLs itself right after handling batch N — after its writes, before the commit.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

from deskstream.lifecycle import stop_on_signals
from deskstream.logs import configure_logging
from deskstream.runner import BatchRunner, PoisonRecords, Record, decode_all
from deskstream.settings import ServiceSettings
from pydantic import BaseModel, ConfigDict
from pymongo import AsyncMongoClient
from pymongo.errors import BulkWriteError


class Effect(BaseModel):
    model_config = ConfigDict(extra="allow")
    event_id: str
    n: int = 0
    explode: bool = False


async def main() -> None:
    settings = ServiceSettings(service_name="runner-test")
    configure_logging("runner-test", "WARNING")
    crash_after = int(os.environ.get("CRASH_AFTER_BATCHES", "0"))
    stats_file = Path(os.environ["STATS_FILE"])
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(os.environ["MONGODB_URI"])
    effects = client[os.environ["MONGODB_DATABASE"]]["effects"]
    stats = {"handled": 0, "duplicates": 0, "batches": 0}

    async def handle(records: list[Record]) -> None:
        good, bad = decode_all(records, Effect)
        if any(effect.explode for _, effect in good):
            raise ValueError("this record makes the handler fail")
        docs = [{"_id": e.event_id, "n": e.n} for _, e in good]
        if docs:
            try:
                await effects.insert_many(docs, ordered=False)
            except BulkWriteError as err:
                dups = [e for e in err.details["writeErrors"] if e["code"] == 11000]
                if len(dups) != len(err.details["writeErrors"]):
                    raise
                stats["duplicates"] += len(dups)
        stats["handled"] += len(records)
        stats["batches"] += 1
        stats_file.write_text(json.dumps(stats))
        if crash_after and stats["batches"] == crash_after:
            os.kill(os.getpid(), signal.SIGKILL)  # after the effects, before the commit
        if bad:
            raise PoisonRecords(bad)

    runner = BatchRunner(
        settings=settings,
        stage="router",
        topics=[settings.topics.name("inbound.chat")],
        group_id=f"{settings.topic_prefix}runner-test",
        handler=handle,
        max_batch=500,
    )
    stop = stop_on_signals()
    await runner.start()
    task = asyncio.create_task(runner.run())
    await stop.wait()
    runner.stop()
    await task
    await client.close()


if __name__ == "__main__":
    asyncio.run(main())
