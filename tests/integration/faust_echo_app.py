"""A Faust worker for the round-trip test, built on the router's real app factory.

It reads `inbound.chat`, counts messages per conversation in a changelog-backed table,
and writes each message to `outbound.chat` with the count so far.
"""

import weakref
from typing import Any

import faust
from deskstream.logs import configure_logging
from deskstream_router.app import create_app
from deskstream_router.settings import RouterSettings
from faust.streams import _current_event

settings = RouterSettings()
configure_logging("faust-echo", "WARNING")
app = create_app(settings)
source = app.topic(settings.topics.name("inbound.chat"), value_serializer="raw")
sink = app.topic(settings.topics.name("outbound.chat"), value_serializer="raw")
counts = app.Table("echo-counts", default=int, partitions=6)


@app.agent(source)
async def echo(stream: Any) -> None:
    async for events in stream.take_events(100, within=0.5):
        for event in events:
            # Tables need the current event to pick the changelog partition; take_events
            # hands a batch, so it is set per event (stream.take() cannot update tables).
            _current_event.set(weakref.ref(event))
            key = event.key.decode()
            counts[key] += 1
            await sink.send(key=event.key, value=event.value + f"|{counts[key]}".encode())


if __name__ == "__main__":
    faust.Worker(
        app, loglevel="WARNING", override_logging=False, quiet=True
    ).execute_from_commandline()
