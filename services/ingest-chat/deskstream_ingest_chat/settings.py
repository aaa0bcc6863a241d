"""Settings of ingest-chat (env prefix `INGEST_CHAT_`)."""

from __future__ import annotations

from deskstream.settings import ServiceSettings
from pydantic_settings import SettingsConfigDict


class IngestChatSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="INGEST_CHAT_", extra="ignore", frozen=True)

    service_name: str = "ingest-chat"
    http_port: int = 8081
