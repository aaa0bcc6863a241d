"""Settings of the router (env prefix `ROUTER_`)."""

from __future__ import annotations

from pathlib import Path

from deskstream.settings import ServiceSettings
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
