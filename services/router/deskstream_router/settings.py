"""Settings of the router (env prefix `ROUTER_`)."""

from __future__ import annotations

from pathlib import Path

from deskstream.settings import ServiceSettings
from pydantic import Field
from pydantic_settings import SettingsConfigDict


class RouterSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ROUTER_", extra="ignore", frozen=True)

    service_name: str = "router"
    http_port: int = 8082
    # Where Faust keeps its table stores; "memory://" rebuilds tables from changelogs.
    store: str = "memory://"
    # Faust's own files (table stores other than memory, its lock); one per worker.
    data_dir: Path = Path("router-data")
    # The versioned classification rules (see rules/classification.toml).
    rules_path: Path = Path(__file__).resolve().parent / "rules" / "classification.toml"
    # A team's queue lives in one changelog record (4 MiB at most, ~70,000 entries). Past
    # this many queued tickets a new one is dead-lettered with the reason, never silently
    # lost with a refused changelog write; replay it once the queue has drained.
    max_queued_per_team: int = Field(default=60_000, ge=1)
