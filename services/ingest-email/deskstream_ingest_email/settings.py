"""Settings of ingest-email (env prefix `INGEST_EMAIL_`; IMAP_* for the server)."""

from __future__ import annotations

from deskstream.settings import ServiceSettings
from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict


class IngestEmailSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="INGEST_EMAIL_", extra="ignore", frozen=True)

    service_name: str = "ingest-email"
    http_port: int = 8083
    imap_host: str = Field("127.0.0.1", validation_alias=AliasChoices("IMAP_HOST", "imap_host"))
    imap_port: int = Field(10143, validation_alias=AliasChoices("IMAP_PORT", "imap_port"))
    imap_ssl: bool = Field(False, validation_alias=AliasChoices("IMAP_SSL", "imap_ssl"))
    imap_user: str = Field("desk", validation_alias=AliasChoices("IMAP_USER", "imap_user"))
    imap_password: SecretStr = Field(
        validation_alias=AliasChoices("IMAP_PASSWORD", "imap_password")
    )
