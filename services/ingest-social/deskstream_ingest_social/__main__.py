"""ingest-social: turns X mentions and direct messages into `InboundMessage`s."""

from __future__ import annotations

import asyncio

from deskstream.health import KafkaProbe, Readiness
from deskstream.lifecycle import start_with_retry
from deskstream.producer import Publisher
from deskstream.service import run_worker

from deskstream_ingest_social.settings import IngestSocialSettings


async def serve(settings: IngestSocialSettings) -> None:
    readiness = Readiness()
    readiness.add("kafka", KafkaProbe(settings.kafka_bootstrap_servers, settings.service_name))

    async def body(stop: asyncio.Event) -> None:
        publisher = Publisher(settings)
        if not await start_with_retry(publisher.start, "kafka producer", stop):
            return
        try:
            await stop.wait()
        finally:
            await publisher.stop()

    await run_worker(settings, readiness, body)


def main() -> None:
    asyncio.run(serve(IngestSocialSettings()))


if __name__ == "__main__":
    main()
