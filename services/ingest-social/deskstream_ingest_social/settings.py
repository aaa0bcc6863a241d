"""Settings of ingest-social (env prefix `INGEST_SOCIAL_`)."""

from __future__ import annotations

from deskstream.settings import ServiceSettings
from pydantic_settings import SettingsConfigDict


class IngestSocialSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="INGEST_SOCIAL_", extra="ignore", frozen=True)

    service_name: str = "ingest-social"
    http_port: int = 8084
    x_api_base_url: str = "https://api.twitter.com"
