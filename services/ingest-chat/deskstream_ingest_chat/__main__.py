"""ingest-chat: web chat, Slack and generic webhooks into `inbound.chat`."""

from __future__ import annotations

from deskstream.service import run_fastapi

from deskstream_ingest_chat.app import create_app
from deskstream_ingest_chat.settings import IngestChatSettings


def main() -> None:
    settings = IngestChatSettings()
    run_fastapi(create_app(settings), settings)


if __name__ == "__main__":
    main()
