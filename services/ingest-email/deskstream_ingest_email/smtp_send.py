"""Hands composed mails to the SMTP server (stdlib smtplib, blocking: run it in a thread).

One session per batch; each mail's outcome is classified the way SMTP means its replies:
2xx sent, 4xx (and a lost or refused connection) transient — worth another try later —,
5xx permanent. A connection lost in the middle leaves the rest of the batch transient and
untried, so nothing is reported sent that the server did not accept with 250.
"""

from __future__ import annotations

import contextlib
import smtplib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Literal

from pydantic import SecretStr

Kind = Literal["sent", "transient", "permanent"]


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    ssl: bool = False
    starttls: bool = False
    user: str | None = None
    password: SecretStr | None = None
    timeout_s: float = 30.0

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Envelope:
    message: EmailMessage
    sender: str
    recipient: str


@dataclass(frozen=True)
class Outcome:
    kind: Kind
    detail: str


def _kind_of(code: int | None) -> Kind:
    return "permanent" if code is not None and 500 <= code < 600 else "transient"


def _text(reply: bytes | str) -> str:
    raw = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    return " ".join(raw.split())[:300]


def connect(config: SmtpConfig) -> smtplib.SMTP:
    """An open, greeted (and, as configured, encrypted and logged-in) session."""
    context = ssl.create_default_context()
    client: smtplib.SMTP
    if config.ssl:
        client = smtplib.SMTP_SSL(
            config.host, config.port, timeout=config.timeout_s, context=context
        )
    else:
        client = smtplib.SMTP(config.host, config.port, timeout=config.timeout_s)
    try:
        client.ehlo()
        if config.starttls:
            client.starttls(context=context)
            client.ehlo()
        if config.user and config.password is not None:
            client.login(config.user, config.password.get_secret_value())
    except BaseException:
        with contextlib.suppress(Exception):
            client.close()
        raise
    return client


def probe(config: SmtpConfig) -> None:
    """Readiness: the server greets, answers EHLO (and STARTTLS/login as configured)."""
    client = connect(config)
    with contextlib.suppress(Exception):
        client.quit()


def send_batch(config: SmtpConfig, envelopes: Sequence[Envelope]) -> list[Outcome]:
    """Send each envelope in one session; one outcome per envelope, in order."""
    if not envelopes:
        return []
    try:
        client = connect(config)
    except smtplib.SMTPResponseException as exc:
        # E.g. 554 at the greeting or 535 at login: it holds for every mail of the batch.
        outcome = Outcome(
            _kind_of(exc.smtp_code),
            f"{config.where} refused the session: {exc.smtp_code} {_text(exc.smtp_error)}",
        )
        return [outcome] * len(envelopes)
    except (OSError, smtplib.SMTPException) as exc:
        outcome = Outcome("transient", f"no SMTP session with {config.where}: {exc!r}"[:500])
        return [outcome] * len(envelopes)
    outcomes: list[Outcome] = []
    try:
        for envelope in envelopes:
            outcome = _send_one(client, config, envelope)
            outcomes.append(outcome)
            if outcome.kind == "transient" and outcome.detail.startswith("connection lost"):
                break
    finally:
        with contextlib.suppress(Exception):
            client.quit()
    untried = Outcome("transient", f"not tried: the session with {config.where} ended")
    return outcomes + [untried] * (len(envelopes) - len(outcomes))


def _send_one(client: smtplib.SMTP, config: SmtpConfig, envelope: Envelope) -> Outcome:
    try:
        # smtplib resets the transaction (RSET) itself after a refused sender, recipient or data.
        client.send_message(
            envelope.message, from_addr=envelope.sender, to_addrs=[envelope.recipient]
        )
    except smtplib.SMTPRecipientsRefused as exc:
        code, reply = next(iter(exc.recipients.values()), (None, b""))
        return Outcome(_kind_of(code), f"recipient refused: {code} {_text(reply)}")
    except smtplib.SMTPSenderRefused as exc:
        return Outcome(
            _kind_of(exc.smtp_code), f"sender refused: {exc.smtp_code} {_text(exc.smtp_error)}"
        )
    except smtplib.SMTPResponseException as exc:
        return Outcome(_kind_of(exc.smtp_code), f"refused: {exc.smtp_code} {_text(exc.smtp_error)}")
    except smtplib.SMTPNotSupportedError as exc:
        return Outcome("permanent", f"not supported by {config.where}: {exc}")
    except (smtplib.SMTPServerDisconnected, OSError) as exc:
        return Outcome("transient", f"connection lost: {exc!r}"[:500])
    return Outcome("sent", f"250 accepted by {config.where}")
