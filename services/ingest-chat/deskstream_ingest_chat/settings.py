"""Settings of ingest-chat (env prefix `INGEST_CHAT_`); secrets only from the environment.

Each channel is switched on by its secret: without `INGEST_CHAT_SLACK_SIGNING_SECRET` the
Slack endpoint answers 404, without `INGEST_CHAT_WEBHOOK_SECRET` the webhook does. The
base refuses a set secret that is a known default or shorter than 16 characters.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Annotated, Any

from deskstream.settings import ServiceSettings
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict


def _default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class IngestChatSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="INGEST_CHAT_", extra="ignore", frozen=True)

    service_name: str = "ingest-chat"
    http_port: int = 8081

    # Size limits of every input (413 above them).
    max_body_bytes: int = Field(default=65_536, ge=1024, le=10_485_760)
    max_text_chars: int = Field(default=10_000, ge=1, le=100_000)
    # How long a request waits for Kafka's ack before answering 503 (Slack wants an answer
    # within 3 s and retries otherwise; the retry then finds the publish in flight).
    ack_timeout_s: float = Field(default=2.5, gt=0, le=30)
    # Event ids published recently, so a retried Slack event or webhook is not sent twice.
    dedupe_entries: int = Field(default=100_000, ge=100)
    dedupe_ttl_s: float = Field(default=3600, gt=0)

    # Slack: Events API signing secret, bot token for chat.postMessage, Web API base URL.
    slack_signing_secret: SecretStr | None = None
    slack_bot_token: SecretStr | None = None
    slack_api_base_url: str = "https://slack.com/api/"
    # Channel ids whose messages become tickets (besides direct messages to the app).
    slack_channels: Annotated[list[str], NoDecode] = []
    # The app's bot user id: its own messages are never ingested (also read from the
    # event's `authorizations`).
    slack_bot_user_id: str | None = None
    # Signed requests older (or newer) than this are refused as replays.
    signature_max_age_s: int = Field(default=300, ge=30, le=3600)

    # Generic webhook (HMAC-SHA256, see README).
    webhook_secret: SecretStr | None = None
    # Where replies to webhook conversations are POSTed (signed the same way); unset: such
    # replies are reported as not delivered.
    webhook_reply_url: str | None = None

    # Reply delivery (Slack, webhook): attempts and back-off before delivered=false.
    delivery_attempts: int = Field(default=5, ge=1, le=20)
    delivery_backoff_s: float = Field(default=0.5, gt=0, le=60)
    delivery_backoff_max_s: float = Field(default=30, gt=0, le=600)
    delivery_timeout_s: float = Field(default=10, gt=0, le=120)

    # Web chat: every replica reads tickets.events and outbound.chat from this far back at
    # start (no consumer group), so any replica can resume any recent conversation.
    webchat_window_s: int = Field(default=24 * 3600, ge=60)
    webchat_max_conversations: int = Field(default=50_000, ge=10)
    webchat_max_replies: int = Field(default=200, ge=1)
    webchat_max_sockets: int = Field(default=10_000, ge=1)
    instance_id: str = Field(default_factory=_default_instance_id, min_length=1)

    @field_validator("slack_channels", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("slack_api_base_url")
    @classmethod
    def _trailing_slash(cls, value: str) -> str:
        # slack-sdk joins method names onto the base URL: it must end with "/".
        return value if value.endswith("/") else value + "/"
