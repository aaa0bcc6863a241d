"""The demo `make run` plays once the services are healthy: an organisation, mail, portal requests.

1. The demo organisation (`demo_org.py`: teams, agents with skills, a service catalogue),
   through the ticket API with the admin key; then it waits until the ticket-api has
   published the catalogue on `catalogue.services` and the router has taken in every
   agent (its snapshot on `routing.requests`, as the end-to-end tests wait too), so the
   first requests meet a router that knows the services and agents (else a VPN mail would
   be classified against an empty catalogue and land with the default team).
2. A portal API key for a demo portal user, kept in the run dir's secrets file (mode 600)
   and reused by the next run while the ticket API still accepts it.
3. A few mails from the test corpus (`tests/fixtures/email/`), APPENDed to the desk's IMAP
   mailbox, one of them an out-of-office reply that must make no ticket. Each copy gets a
   fresh Message-ID and Date: event ids derive from the Message-ID, so without a fresh one
   a rerun on the same data would be recognised as redelivered mail and open nothing.
4. A few portal requests for different catalogue services, each with an Idempotency-Key
   unique to this run (a retry within the run is the same request).

Every step reports a failure and lets `make run` go on: the services keep running.
"""

from __future__ import annotations

import asyncio
import imaplib
import json
import os
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.parser import BytesHeaderParser
from email.utils import format_datetime, make_msgid, parseaddr
from pathlib import Path
from typing import Any

import demo_org
import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from deskstream.topics import BY_NAME, Topics

REPO = Path(__file__).resolve().parent.parent.parent
CORPUS = REPO / "tests" / "fixtures" / "email"
PORTAL_KEY_NAME = "DEMO_PORTAL_API_KEY"
PORTAL_USER = "maria.santos@example.com"
PUBLISHED_TIMEOUT_S = 60.0
# The router's catalogue reader has no state to observe; this pause gives it time to take
# in what was just published before the first portal request reaches it.
ROUTER_SETTLE_S = 1.0
HTTP_TIMEOUT_S = 30.0
IMAP_TIMEOUT_S = 30.0
PORTAL_ATTEMPTS = 3

Say = Callable[[str], None]


@dataclass(frozen=True)
class DemoMail:
    file: str
    makes_ticket: bool = True


# Different services (VPN, account, printer, hardware) and one automatic reply in between.
DEMO_MAILS = (
    DemoMail("04-alternative-gmail-vpn-dropping.eml"),
    DemoMail("01-plain-thunderbird-account-locked.eml"),
    DemoMail("22-autoreply-exchange-out-of-office.eml", makes_ticket=False),
    DemoMail("02-alternative-outlook-printer-jam.eml"),
    DemoMail("03-html-only-intranet-form-docking-station.eml"),
)


@dataclass(frozen=True)
class PortalRequest:
    service_id: str
    subject: str
    description: str


PORTAL_REQUESTS = (
    PortalRequest(
        "finance-apps",
        "SAP: supplier invoices cannot be posted",
        "Since this morning FB60 stops with 'Posting period 003 2024 is not open' when I "
        "post supplier invoices. Month-end closing is on Friday.",
    ),
    PortalRequest(
        "hardware-request",
        "Headset and second monitor for a new starter",
        "Jonas Weber joins Accounts Payable on Monday (desk 4.12). He needs a USB headset "
        "for Teams calls and a second 24-inch monitor.",
    ),
    PortalRequest(
        "password-reset",
        "MFA: new phone, authenticator codes no longer accepted",
        "I replaced my phone yesterday and the authenticator app on the new one shows codes "
        "the sign-in page rejects. Please reset my MFA registration.",
    ),
)


@dataclass(frozen=True)
class DemoConfig:
    api_url: str
    admin_key: str
    secrets_file: Path
    kafka: str
    topics: Topics
    imap_host: str
    imap_port: int
    imap_user: str
    imap_password: str


# --- the run dir's secrets file ---------------------------------------------------------


def read_env_file(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def set_env_value(path: Path, name: str, value: str) -> None:
    """Set `name=value` in the env file: written to a new mode-600 file, then renamed."""
    values = {**read_env_file(path), name: value}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("".join(f"{k}={v}\n" for k, v in values.items()))
    os.replace(tmp, path)


# --- 1. the organisation ----------------------------------------------------------------


def load_organisation(config: DemoConfig, say: Say) -> None:
    demo_org.load(config.api_url, config.admin_key)
    asyncio.run(wait_catalogue_published(config))
    asyncio.run(wait_router_roster(config))
    time.sleep(ROUTER_SETTLE_S)
    say(
        f"demo: organisation loaded: {len(demo_org.TEAMS)} teams, {len(demo_org.AGENTS)} agents, "
        f"{len(demo_org.SERVICES)} catalogue services"
    )


def _consumer(config: DemoConfig) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=config.kafka,
        enable_auto_commit=False,
        isolation_level="read_committed",  # the relay writes in transactions: skip aborted ones
        client_id="deskstream-demo",
    )


async def _from_beginning(consumer: AIOKafkaConsumer, config: DemoConfig, name: str) -> None:
    topic = config.topics.name(name)
    partitions = [TopicPartition(topic, p) for p in range(BY_NAME[name].partitions)]
    consumer.assign(partitions)
    await consumer.seek_to_beginning(*partitions)


async def wait_catalogue_published(config: DemoConfig) -> None:
    """Until every demo service has a live (non-tombstone) record on catalogue.services."""
    wanted = {s["service_id"] for s in demo_org.SERVICES}
    consumer = _consumer(config)
    await consumer.start()
    try:
        await _from_beginning(consumer, config, "catalogue.services")
        live: set[str] = set()
        deadline = time.monotonic() + PUBLISHED_TIMEOUT_S
        while not wanted <= live:
            if time.monotonic() > deadline:
                missing = ", ".join(sorted(wanted - live))
                raise RuntimeError(f"services not on catalogue.services in time: {missing}")
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for r in records:
                    key = r.key.decode("utf-8", "replace") if r.key else ""
                    if r.value is None:  # a tombstone: the service was deleted
                        live.discard(key)
                    else:
                        live.add(key)
    finally:
        await consumer.stop()


def _snapshot_agent(value: bytes | None) -> str | None:
    """The agent a `routing.requests` record is the router's snapshot of, if it is one."""
    try:
        record = json.loads(value or b"null")
        if isinstance(record, dict) and record.get("type") == "agent":
            return str(record["state"]["agent_id"])
    except (ValueError, KeyError, TypeError):
        pass
    return None


async def wait_router_roster(config: DemoConfig) -> None:
    """Until the router has sent a snapshot of every demo agent to its team's partition."""
    missing = {a["agent_id"] for a in demo_org.AGENTS}
    consumer = _consumer(config)
    await consumer.start()
    try:
        await _from_beginning(consumer, config, "routing.requests")
        deadline = time.monotonic() + PUBLISHED_TIMEOUT_S
        while missing:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the router has taken in no snapshot of {', '.join(sorted(missing))}; "
                    "see router.log and the topic deadletter.router"
                )
            for records in (await consumer.getmany(timeout_ms=500)).values():
                missing -= {_snapshot_agent(r.value) for r in records}
    finally:
        await consumer.stop()


# --- 2. the portal user's key -----------------------------------------------------------


def portal_key(config: DemoConfig) -> str:
    """The demo portal user's key: the stored one while the API accepts it, else a new one."""
    stored = read_env_file(config.secrets_file).get(PORTAL_KEY_NAME)
    with httpx.Client(base_url=config.api_url, timeout=HTTP_TIMEOUT_S) as client:
        if stored and _accepted(client, stored):
            return stored
        resp = client.post(
            "/v1/api-keys",
            headers=_bearer(config.admin_key),
            json={"role": "portal", "subject": PORTAL_USER, "name": "make run demo portal user"},
        )
        resp.raise_for_status()
        key = str(resp.json()["key"])
    set_env_value(config.secrets_file, PORTAL_KEY_NAME, key)
    return key


def _accepted(client: httpx.Client, key: str) -> bool:
    # A wiped database forgets the key; 401 means "issue a new one", anything else is real.
    resp = client.get("/v1/portal/services", params={"limit": 1}, headers=_bearer(key))
    if resp.status_code == 401:
        return False
    resp.raise_for_status()
    return True


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# --- 3. mail ----------------------------------------------------------------------------


def _header_end(raw: bytes) -> int:
    ends = [i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0]
    return min(ends) if ends else len(raw)


def replace_header(raw: bytes, name: str, value: str) -> bytes:
    """`raw` with the header `name` (folded lines included) set to `value`; added if absent."""
    end = _header_end(raw)
    head, body = raw[:end], raw[end:]
    pattern = re.compile(
        rb"(?im)^" + re.escape(name.encode()) + rb":[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*"
    )
    line = f"{name}: {value}".encode()
    if pattern.search(head):
        head = pattern.sub(lambda _: line, head, count=1)
    else:
        newline = b"\r\n" if b"\r\n" in head else b"\n"
        head = line + newline + head
    return head + body


def fresh_copy(raw: bytes, tag: str) -> bytes:
    """The mail as if it had just been sent: a new Message-ID (same domain) and Date."""
    found = re.search(rb"(?im)^Message-ID:\s*<[^@>]*@([^>\s]+)>", raw[: _header_end(raw)])
    domain = found.group(1).decode("ascii", "replace") if found else "example.com"
    raw = replace_header(raw, "Message-ID", make_msgid(idstring=tag, domain=domain))
    return replace_header(raw, "Date", format_datetime(datetime.now().astimezone()))


def describe(raw: bytes) -> tuple[str, str]:
    """(subject, sender address) of a mail, for the terminal."""
    headers = BytesHeaderParser(policy=policy.default).parsebytes(raw)
    return str(headers.get("subject", "")), parseaddr(str(headers.get("from", "")))[1]


def deliver_mails(config: DemoConfig, run_tag: str, say: Say) -> None:
    mails = [
        (mail, fresh_copy((CORPUS / mail.file).read_bytes(), f"demo-{run_tag}-{n}"))
        for n, mail in enumerate(DEMO_MAILS, 1)
    ]
    with imaplib.IMAP4(config.imap_host, config.imap_port, timeout=IMAP_TIMEOUT_S) as imap:
        imap.login(config.imap_user, config.imap_password)
        for mail, raw in mails:
            status, detail = imap.append("INBOX", "", imaplib.Time2Internaldate(time.time()), raw)
            if status != "OK":
                raise RuntimeError(f"APPEND {mail.file} answered {status} {detail!r}")
            subject, sender = describe(raw)
            note = "" if mail.makes_ticket else "   (an out-of-office reply: must make no ticket)"
            say(f"demo: mail    {sender:<28} {subject[:60]!r}{note}")
    say(
        f"demo: {len(mails)} mails delivered to the IMAP mailbox "
        f"{config.imap_user}@{config.imap_host}:{config.imap_port}/INBOX"
    )


# --- 4. portal requests -----------------------------------------------------------------


def submit_portal_requests(config: DemoConfig, run_tag: str, say: Say) -> None:
    key = portal_key(config)
    with httpx.Client(
        base_url=config.api_url, headers=_bearer(key), timeout=HTTP_TIMEOUT_S
    ) as client:
        for n, request in enumerate(PORTAL_REQUESTS, 1):
            body = {
                "service_id": request.service_id,
                "subject": request.subject,
                "description": request.description,
            }
            accepted = _submit(client, body, idempotency_key=f"demo-{run_tag}-{n}")
            say(
                f"demo: portal  {PORTAL_USER:<28} {request.subject[:60]!r} "
                f"-> {accepted['ticket_id']} ({request.service_id})"
            )


def _submit(client: httpx.Client, body: dict[str, str], idempotency_key: str) -> dict[str, Any]:
    # 503: Kafka did not acknowledge in time; the same Idempotency-Key makes the retry safe.
    for attempt in range(1, PORTAL_ATTEMPTS + 1):
        resp = client.post(
            "/v1/portal/requests", json=body, headers={"Idempotency-Key": idempotency_key}
        )
        if resp.status_code != 503 or attempt == PORTAL_ATTEMPTS:
            break
        time.sleep(attempt)
    resp.raise_for_status()
    accepted: dict[str, Any] = resp.json()
    return accepted


# --- all of it --------------------------------------------------------------------------


def _step(what: str, action: Callable[[], None], say: Say) -> bool:
    try:
        action()
    except Exception as exc:  # a failing demo must never take the running desk down
        first_line = (str(exc).splitlines() or [""])[0]  # httpx adds a line of advice
        say(f"demo: {what} FAILED: {type(exc).__name__}: {first_line}")
        return False
    return True


def seed(config: DemoConfig, say: Say) -> bool:
    """Play the demo; True when every step worked. Failures are reported, never raised."""
    run_tag = uuid.uuid4().hex[:12]
    if not _step("loading the demo organisation", lambda: load_organisation(config, say), say):
        # Without agents and catalogue the requests would only queue or land misclassified.
        say("demo: skipped the mails and portal requests; the services keep running")
        return False
    mails_ok = _step("delivering the demo mails", lambda: deliver_mails(config, run_tag, say), say)
    portal_ok = _step(
        "submitting the portal requests",
        lambda: submit_portal_requests(config, run_tag, say),
        say,
    )
    if not (mails_ok and portal_ok):
        say("demo: incomplete (see above); the services keep running")
    return mails_ok and portal_ok
