"""The one settings base: every service subclasses `ServiceSettings` with its own env prefix.

Infrastructure settings shared by all services keep their well-known unprefixed names
(`KAFKA_BOOTSTRAP_SERVERS`, `MONGODB_URI`, `DESKSTREAM_TOPIC_PREFIX`), so an operator sets
them once; a service's own settings use its prefix (e.g. `TICKET_API_HTTP_PORT`).
Secrets are `SecretStr` (never printed) and a service refuses to start with a weak one.
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from deskstream.topics import Topics

# Values seen in templates and tutorials: a service refuses them as secrets.
_KNOWN_DEFAULTS = {"changeme", "change-me", "changethis", "secret", "password", "admin", "test"}
MIN_SECRET_LENGTH = 16


class WeakSecretError(ValueError):
    pass


class ServiceSettings(BaseSettings):
    # An empty variable counts as unset (compose passes `${VAR:-}` for optional settings).
    model_config = SettingsConfigDict(
        env_prefix="DESKSTREAM_", extra="ignore", frozen=True, env_ignore_empty=True
    )

    service_name: str = "deskstream"
    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:19092",
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "kafka_bootstrap_servers"),
    )
    topic_prefix: str = Field(
        default="",
        validation_alias=AliasChoices("DESKSTREAM_TOPIC_PREFIX", "topic_prefix"),
    )
    log_level: str = Field(default="INFO", validation_alias=AliasChoices("LOG_LEVEL", "log_level"))
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    # Producer batching: wait this long to fill a batch (latency traded for throughput).
    kafka_linger_ms: int = 5

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    @model_validator(mode="after")
    def _refuse_weak_secrets(self) -> Self:
        for name, value in self:
            if isinstance(value, SecretStr):
                check_secret(self.env_name(name), value)
        return self

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable an operator sets for `field`."""
        alias = cls.model_fields[field].validation_alias
        if isinstance(alias, AliasChoices) and isinstance(alias.choices[0], str):
            return alias.choices[0]
        return f"{cls.model_config.get('env_prefix', '')}{field}".upper()


class MongoSettingsMixin(BaseSettings):
    mongodb_uri: SecretStr = Field(
        default=SecretStr("mongodb://127.0.0.1:27117"),
        validation_alias=AliasChoices("MONGODB_URI", "mongodb_uri"),
    )
    mongodb_database: str = Field(
        default="deskstream",
        validation_alias=AliasChoices("MONGODB_DATABASE", "mongodb_database"),
    )
    # A reply that does not come within this fails the operation, which is then retried: a
    # server that keeps the connection open but never answers must not hang a consumer.
    mongodb_socket_timeout_ms: int = Field(
        default=60_000,
        ge=1000,
        validation_alias=AliasChoices("MONGODB_SOCKET_TIMEOUT_MS", "mongodb_socket_timeout_ms"),
    )


def check_secret(name: str, value: SecretStr | None) -> None:
    """Refuse a missing, known-default or short secret, naming the setting but not the value."""
    if name == "MONGODB_URI" or value is None:
        return  # a URI is a secret to hide, not a key to judge by length
    raw = value.get_secret_value()
    if raw.strip().lower() in _KNOWN_DEFAULTS or len(raw) < MIN_SECRET_LENGTH:
        raise WeakSecretError(
            f"{name} is a default or shorter than {MIN_SECRET_LENGTH} characters; "
            "set a strong random value in the environment"
        )


def safe_dump(settings: BaseSettings) -> dict[str, Any]:
    """Settings as a dict for a start-up log line, secrets masked."""
    return {k: ("**********" if isinstance(v, SecretStr) else v) for k, v in settings}
