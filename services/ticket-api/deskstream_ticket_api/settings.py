"""Settings of ticket-api (prefix `TICKET_API_`; MONGODB_URI and MONGODB_DATABASE: the store)."""

from __future__ import annotations

from deskstream.settings import MongoSettingsMixin, ServiceSettings
from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict


class TicketApiSettings(ServiceSettings, MongoSettingsMixin):
    model_config = SettingsConfigDict(env_prefix="TICKET_API_", extra="ignore", frozen=True)

    service_name: str = "ticket-api"
    http_port: int = 8080
    # The first admin's API key; further keys are issued through the API.
    admin_api_key: SecretStr

    # The three parts of the service run in one process by default; a deployment can split
    # them (e.g. API replicas behind a load balancer, one consumer + relay elsewhere).
    api_enabled: bool = True
    consumer_enabled: bool = True
    relay_enabled: bool = True

    # tickets.commands: batch size and how long to wait to fill a batch.
    command_batch: int = Field(default=500, ge=1, le=10_000)
    command_wait_ms: int = Field(default=200, ge=1, le=10_000)
    # Commands applied per MongoDB transaction (a Kafka batch is split into such chunks, so
    # a transaction stays small even when the records carry large message bodies).
    command_chunk: int = Field(default=100, ge=1, le=1000)

    # Outbox relay: documents per Kafka transaction, the idle poll (writers in this process
    # also wake the relay at once), the lease that keeps one relay active per installation,
    # and how far before the oldest pending document the start-up read-back begins.
    relay_batch: int = Field(default=500, ge=1, le=10_000)
    relay_poll_ms: int = Field(default=500, ge=10, le=60_000)
    relay_lease_s: float = Field(default=10.0, ge=1.0, le=300.0)
    relay_readback_margin_ms: int = Field(default=60_000, ge=0)

    # Agent replies as OutboundReply on outbound.<channel>, for the channel's service to
    # deliver (email: ingest-email's reply sender). Off, replies are only stored and
    # announced with MessageAdded; internal notes are never published either way.
    publish_replies: bool = True

    # Operations (ops.py): how often the queue and SLA gauges are read from MongoDB (0: never),
    # the share of a service's target after which an open ticket counts as at risk, and the
    # consumer groups `GET /v1/ops/status` reports (without the topic prefix).
    ops_refresh_s: float = Field(default=15.0, ge=0, le=3600)
    sla_warn_fraction: float = Field(default=0.8, gt=0, le=1)
    ops_groups: list[str] = ["router", "ticket-api-commands"]

    # A batch, commit or relay turn under way longer than this fails /healthz (the process is
    # restarted) and logs where it waits; see deskstream.watchdog. The relay's start-up
    # read-back may take up to 120 s, so keep it above that.
    stuck_after_s: float = Field(default=300.0, ge=1.0)

    # REST limits.
    page_limit_max: int = Field(default=200, ge=1, le=1000)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
