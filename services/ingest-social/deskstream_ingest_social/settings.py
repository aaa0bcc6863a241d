"""Settings of ingest-social (env prefix `INGEST_SOCIAL_`; MONGODB_URI for leases and state).

Credentials come only from the environment and are never logged:
- `INGEST_SOCIAL_X_BEARER_TOKEN`: the desk account's OAuth 2.0 user access token (mentions,
  DMs and replies all work with it), or an app-only bearer token (mentions only).
- or OAuth 1.0a user context: `INGEST_SOCIAL_X_CONSUMER_KEY`, `..._X_CONSUMER_SECRET`,
  `..._X_ACCESS_TOKEN`, `..._X_ACCESS_TOKEN_SECRET` (then used for every call).
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Self

from deskstream.settings import MongoSettingsMixin, ServiceSettings
from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict


def _default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class IngestSocialSettings(ServiceSettings, MongoSettingsMixin):
    model_config = SettingsConfigDict(env_prefix="INGEST_SOCIAL_", extra="ignore", frozen=True)

    service_name: str = "ingest-social"
    http_port: int = 8084

    # Where the X API answers; only tests and proxies change it (see xclient.py).
    x_api_base_url: str = "https://api.twitter.com"
    # Without an account (e.g. `make run` on a laptop) the service runs idle: it polls
    # nothing and reports every reply on outbound.social as undelivered, with the reason.
    x_user_id: str | None = Field(
        None, pattern=r"^[0-9]{1,20}$", description="the desk account's user id"
    )
    x_username: str = Field("", max_length=50, description="the desk account's handle")
    x_bearer_token: SecretStr | None = None
    x_consumer_key: SecretStr | None = None
    x_consumer_secret: SecretStr | None = None
    x_access_token: SecretStr | None = None
    x_access_token_secret: SecretStr | None = None
    x_request_timeout_s: float = Field(15, gt=0, le=120)

    poll_mentions: bool = True
    poll_dms: bool = True
    # Mentions allow 300 requests per 15 minutes per user, DM events 300 per 15 minutes.
    poll_interval_s: float = Field(30, gt=0)
    page_size: int = Field(100, ge=5, le=100)
    # X serves at most the 800 newest mentions and 30 days of DMs: a sweep never needs more.
    max_pages_per_sweep: int = Field(50, ge=1, le=1000)
    # On the very first start (no checkpoint yet): true reads what X still serves (the 800
    # newest mentions, 30 days of DMs) into tickets; false starts from now, publishing nothing
    # older than the first sweep.
    initial_backfill: bool = True
    # A 429 is waited out until x-rate-limit-reset, but never longer than this per wait.
    rate_limit_max_wait_s: float = Field(15 * 60 + 5, gt=0)
    reconnect_backoff_max_s: float = Field(60, gt=0)
    kafka_flush_timeout_s: float = Field(30, gt=0)

    # The lease: one active poller per X account across every replica.
    lease_ttl_s: float = Field(30, gt=0)
    lease_heartbeat_s: float = Field(10, gt=0)
    instance_id: str = Field(default_factory=_default_instance_id, min_length=1)
    state_collection: str = "ingest_social_accounts"
    # What each published event was at X (post or DM, ids), so a reply finds its target.
    sources_collection: str = "ingest_social_sources"
    # Replies sent (or being sent): a reply id is delivered at most once.
    deliveries_collection: str = "ingest_social_deliveries"

    # Replies: transient failures (429, 5xx, no connection) are retried this often...
    delivery_attempts: int = Field(4, ge=1, le=20)
    delivery_backoff_s: float = Field(1.0, gt=0)
    delivery_backoff_max_s: float = Field(30, gt=0)
    reply_group_id: str = "ingest-social-replies"

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.lease_heartbeat_s * 2 > self.lease_ttl_s:
            raise ValueError("INGEST_SOCIAL_LEASE_HEARTBEAT_S must be at most half the lease TTL")
        oauth1 = [
            self.x_consumer_key,
            self.x_consumer_secret,
            self.x_access_token,
            self.x_access_token_secret,
        ]
        if any(oauth1) and not all(oauth1):
            raise ValueError(
                "OAuth 1.0a needs all four of INGEST_SOCIAL_X_CONSUMER_KEY, _X_CONSUMER_SECRET, "
                "_X_ACCESS_TOKEN and _X_ACCESS_TOKEN_SECRET"
            )
        has_token = any(oauth1) or self.x_bearer_token is not None
        if self.x_user_id is not None and not has_token:
            raise ValueError(
                "set INGEST_SOCIAL_X_BEARER_TOKEN or the four OAuth 1.0a INGEST_SOCIAL_X_* tokens"
            )
        if self.x_user_id is None and has_token:
            raise ValueError("X tokens are set but INGEST_SOCIAL_X_USER_ID is not")
        return self

    @property
    def x_enabled(self) -> bool:
        return self.x_user_id is not None

    @property
    def x_user_auth(self) -> bool:
        """True: OAuth 1.0a user context for every call; False: the bearer token."""
        return self.x_access_token is not None

    @property
    def account_key(self) -> str:
        """The lease and checkpoint document of the desk account."""
        if self.x_user_id is None:
            raise ValueError("no X account configured (INGEST_SOCIAL_X_USER_ID)")
        return f"x:{self.x_user_id}"
