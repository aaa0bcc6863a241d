"""ingest-email: turns mail in IMAP mailboxes into `InboundMessage`s on `inbound.email`."""

from __future__ import annotations

import asyncio

from deskstream.health import KafkaProbe, Readiness
from deskstream.producer import sync_producer
from deskstream.service import run_worker
from imapclient import IMAPClient

from deskstream_ingest_email.settings import IngestEmailSettings


def imap_login(settings: IngestEmailSettings) -> None:
    with IMAPClient(
        settings.imap_host, port=settings.imap_port, ssl=settings.imap_ssl, timeout=5
    ) as client:
        client.login(settings.imap_user, settings.imap_password.get_secret_value())
        client.logout()


async def serve(settings: IngestEmailSettings) -> None:
    readiness = Readiness()
    readiness.add("kafka", KafkaProbe(settings.kafka_bootstrap_servers, settings.service_name))
    readiness.add("imap", lambda: asyncio.to_thread(imap_login, settings))

    async def body(stop: asyncio.Event) -> None:
        # The IMAP client is blocking, so the mailbox workers run in threads and publish
        # with kafka-python's synchronous producer.
        producer = await asyncio.to_thread(sync_producer, settings)
        try:
            await stop.wait()
        finally:
            await asyncio.to_thread(producer.close, 10)

    await run_worker(settings, readiness, body)


def main() -> None:
    asyncio.run(serve(IngestEmailSettings()))


if __name__ == "__main__":
    main()
