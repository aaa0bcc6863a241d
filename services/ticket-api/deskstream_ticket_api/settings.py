"""Settings of ticket-api (env prefix `TICKET_API_`; MONGODB_URI for the store)."""

from __future__ import annotations

from deskstream.settings import MongoSettingsMixin, ServiceSettings
from pydantic import SecretStr
from pydantic_settings import SettingsConfigDict


class TicketApiSettings(ServiceSettings, MongoSettingsMixin):
    model_config = SettingsConfigDict(env_prefix="TICKET_API_", extra="ignore", frozen=True)

    service_name: str = "ticket-api"
    http_port: int = 8080
    # The first admin's API key; further keys are issued through the API.
    admin_api_key: SecretStr
