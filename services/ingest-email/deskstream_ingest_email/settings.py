"""Settings of ingest-email (env prefix `INGEST_EMAIL_`; IMAP_* for the server, MONGODB_URI).

One worker runs per configured mailbox. `INGEST_EMAIL_MAILBOXES` lists them, either as a
comma list of `user:folder` (every user logs in with `IMAP_PASSWORD`) or as a JSON list of
objects `{"user": .., "folder": .., "password": .., "address": ..}`. Left empty, the one
mailbox `IMAP_USER` / `IMAP_FOLDER` is worked.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from typing import Annotated, Any, Self

from deskstream.settings import MongoSettingsMixin, ServiceSettings, check_secret
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic import field_validator as validator
from pydantic_settings import NoDecode, SettingsConfigDict


class MailboxConfig(BaseModel):
    """One mailbox (an IMAP account's folder) to read."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    user: str = Field(min_length=1)
    folder: str = Field(default="INBOX", min_length=1)
    password: SecretStr | None = Field(default=None, description="default: IMAP_PASSWORD")
    address: str | None = Field(
        default=None,
        description="the mailbox's identity in event ids (default user@IMAP_HOST); keep it "
        "stable, or redelivered mail is no longer recognised",
    )


class Mailbox(BaseModel):
    """A mailbox resolved against the server settings: everything a worker needs."""

    model_config = ConfigDict(frozen=True)
    host: str
    port: int
    ssl: bool
    user: str
    folder: str
    password: SecretStr
    address: str

    @property
    def key(self) -> str:
        """Identifies the physical folder: its checkpoint and lease document's id."""
        return f"{self.user}@{self.host}:{self.port}/{self.folder}"

    def url(self, uidvalidity: int | None = None, uid: int | None = None) -> str:
        """The RFC 5092 IMAP URL of the folder or of one message in it (no password)."""
        from urllib.parse import quote

        base = f"imap://{quote(self.user, safe='')}@{self.host}:{self.port}/{quote(self.folder)}"
        if uidvalidity is not None:
            base += f";UIDVALIDITY={uidvalidity}"
        if uid is not None:
            base += f"/;UID={uid}"
        return base


def _split_list(value: Any) -> Any:
    """A comma list or a JSON list from the environment; anything else is left to pydantic."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        if text.startswith("["):
            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


def _default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class IngestEmailSettings(ServiceSettings, MongoSettingsMixin):
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
    imap_folder: str = Field("INBOX", validation_alias=AliasChoices("IMAP_FOLDER", "imap_folder"))
    mailboxes: Annotated[list[MailboxConfig], NoDecode] = []

    # The desk's own addresses: mail from them is a loop, never a ticket (case-insensitive).
    # The configured mailboxes' addresses are always included.
    desk_addresses: Annotated[list[str], NoDecode] = []
    # List-Ids whose mail is wanted (e.g. an internal group that forwards to the desk);
    # any other mailing-list mail is bulk.
    allowed_list_ids: Annotated[list[str], NoDecode] = []
    # Attachments above this size are recorded with omitted=true (bytes stay at the source).
    attachment_limit_bytes: int = Field(10 * 1024 * 1024, ge=0)

    # Mail is fetched, published and acknowledged in batches of up to this many UIDs.
    batch_size: int = Field(100, ge=1, le=1000)
    # ...and of at most this many bytes, so a run of large mails cannot exhaust memory.
    batch_max_bytes: int = Field(64 * 1024 * 1024, ge=1)
    # IDLE is re-issued this often: RFC 2177 servers may drop a client idle for 30 minutes,
    # and NAT boxes often forget quiet connections sooner.
    idle_renew_s: float = Field(9 * 60, gt=0, le=29 * 60)
    # Where the server lacks IDLE, the folder is polled this often.
    poll_interval_s: float = Field(30, gt=0)
    imap_timeout_s: float = Field(30, gt=0)
    reconnect_backoff_max_s: float = Field(60, gt=0)
    kafka_flush_timeout_s: float = Field(30, gt=0)

    # The lease: one active worker per mailbox across every replica.
    lease_ttl_s: float = Field(30, gt=0)
    lease_heartbeat_s: float = Field(10, gt=0)
    instance_id: str = Field(default_factory=_default_instance_id, min_length=1)
    state_collection: str = "ingest_email_mailboxes"

    # --- Replies: OutboundReply on outbound.email -> SMTP (see outbound.py) ---------------
    replies_enabled: bool = True
    smtp_host: str = Field("127.0.0.1", validation_alias=AliasChoices("SMTP_HOST", "smtp_host"))
    smtp_port: int = Field(10025, validation_alias=AliasChoices("SMTP_PORT", "smtp_port"))
    # Implicit TLS (port 465) or STARTTLS on a plain connection (port 587); at most one.
    smtp_ssl: bool = Field(False, validation_alias=AliasChoices("SMTP_SSL", "smtp_ssl"))
    smtp_starttls: bool = Field(
        False, validation_alias=AliasChoices("SMTP_STARTTLS", "smtp_starttls")
    )
    smtp_user: str | None = Field(None, validation_alias=AliasChoices("SMTP_USER", "smtp_user"))
    # Only from the environment; never logged (SecretStr), refused when weak.
    smtp_password: SecretStr | None = Field(
        None, validation_alias=AliasChoices("SMTP_PASSWORD", "smtp_password")
    )
    smtp_timeout_s: float = Field(30, gt=0)
    # The desk's sender address; default: the address of the mailbox the request came in
    # through (or the first mailbox). It is one of the desk's own addresses (loop check).
    reply_from: str | None = None
    reply_from_name: str = Field("IT Service Desk", max_length=200)
    # The right-hand side of the desk's Message-IDs; default: the sender address's domain.
    message_id_domain: str | None = None
    # Replies handled per batch (one SMTP session per attempt of a batch).
    reply_batch: int = Field(50, ge=1, le=1000)
    # Transient failures (no connection, SMTP 4xx) are tried this often in all, waiting
    # reply_backoff_s, doubling up to reply_backoff_max_s, then reported as failed. Keep the
    # total wait well below Kafka's max.poll.interval.ms (5 min), or the consumer loses its
    # partitions in the middle of a batch.
    reply_attempts: int = Field(5, ge=1, le=20)
    reply_backoff_s: float = Field(2.0, gt=0, le=60)
    reply_backoff_max_s: float = Field(30.0, gt=0, le=120)
    sent_collection: str = "ingest_email_sent"

    _lists = validator("desk_addresses", "allowed_list_ids", mode="before")(_split_list)

    @validator("mailboxes", mode="before")
    @classmethod
    def _user_folder_pairs(cls, value: Any) -> Any:
        value = _split_list(value)
        if isinstance(value, list):
            return [_pair(item) if isinstance(item, str) else item for item in value]
        return value

    @model_validator(mode="after")
    def _check(self) -> Self:
        # The heartbeat must renew well before the lease runs out, or a healthy worker
        # would lose its mailbox to a standby between two renewals.
        if self.lease_heartbeat_s * 2 > self.lease_ttl_s:
            raise ValueError("INGEST_EMAIL_LEASE_HEARTBEAT_S must be at most half the lease TTL")
        for mailbox in self.mailboxes:
            if mailbox.password is not None:
                check_secret(f"password of mailbox {mailbox.user}", mailbox.password)
        if self.smtp_ssl and self.smtp_starttls:
            raise ValueError("SMTP_SSL and SMTP_STARTTLS exclude each other")
        if self.smtp_user and self.smtp_password is None:
            raise ValueError("SMTP_USER is set but SMTP_PASSWORD is not")
        if self.reply_from is not None and not _looks_like_address(self.reply_from):
            raise ValueError("INGEST_EMAIL_REPLY_FROM must be an email address")
        keys = [m.key for m in self.resolved_mailboxes()]
        if len(set(keys)) != len(keys):
            raise ValueError("INGEST_EMAIL_MAILBOXES names a mailbox twice")
        return self

    def resolved_mailboxes(self) -> list[Mailbox]:
        configured = self.mailboxes or [MailboxConfig(user=self.imap_user, folder=self.imap_folder)]
        return [
            Mailbox(
                host=self.imap_host,
                port=self.imap_port,
                ssl=self.imap_ssl,
                user=m.user,
                folder=m.folder,
                password=m.password or self.imap_password,
                address=(m.address or _default_address(m.user, self.imap_host)).lower(),
            )
            for m in configured
        ]

    def own_addresses(self) -> frozenset[str]:
        addresses = {a.strip().lower() for a in self.desk_addresses if a.strip()}
        addresses |= {m.address for m in self.resolved_mailboxes() if "@" in m.address}
        if self.reply_from:
            addresses.add(self.reply_from.strip().lower())
        return frozenset(addresses)


def _pair(item: str) -> dict[str, str]:
    user, sep, folder = item.partition(":")
    return {"user": user.strip(), "folder": folder.strip() or "INBOX"} if sep else {"user": item}


def _looks_like_address(value: str) -> bool:
    local, at, domain = value.strip().rpartition("@")
    return bool(at and local and domain) and not any(c in value for c in "<>\r\n\t ,;")


def _default_address(user: str, host: str) -> str:
    # Many servers log in with the full address; otherwise the account on this server.
    return user if "@" in user else f"{user}@{host}"
