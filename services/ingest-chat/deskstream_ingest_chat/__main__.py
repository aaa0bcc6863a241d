"""ingest-chat: web chat, Slack and generic webhooks into `inbound.chat`."""

from __future__ import annotations

from deskstream.service import run_fastapi

from deskstream_ingest_chat.app import create_app
from deskstream_ingest_chat.settings import IngestChatSettings


def main() -> None:
    settings = IngestChatSettings()
    # WebSocket frames above the input limit are refused by the server itself (close 1009),
    # before they are buffered; the app checks the same limit again.
    run_fastapi(create_app(settings), settings, ws_max_size=settings.max_body_bytes)


if __name__ == "__main__":
    main()
