"""Observability end to end: all five services on the real servers, their /metrics and
`GET /v1/ops/status` after a mail, a chat message and a poison record went through.

One desk for the whole module (starting five services costs most of the time); each test
reads what the traffic of the first left behind.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from deskstream.topics import ensure_topics
from pymongo import MongoClient

from tests import prom
from tests.conftest import Infra, _delete_topics
from tests.desk import Desk
from tests.integration.test_e2e_email import mail
from tests.integration.test_ingest_chat import webhook_headers
from tests.services import ALL

pytestmark = pytest.mark.timeout(400)

WEBHOOK_SECRET = "observability-webhook-secret-0123"


class ObservedDesk(Desk):
    def env(self) -> dict[str, str]:
        return {
            **super().env(),
            "INGEST_CHAT_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "TICKET_API_OPS_REFRESH_S": "1",
        }

    def metrics(self, of: str) -> list[prom.Sample]:
        """Every sample of the service's /metrics."""
        return prom.samples(prom.scrape(f"http://127.0.0.1:{self.ports[of]}"))

    def value(self, of: str, name: str, /, **labels: str) -> float:
        """The sum of the samples of `name` on service `of` whose labels include `labels`."""
        return prom.value(self.metrics(of), name, **labels)

    def until(self, check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            found = check()
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"never: {what}")
            time.sleep(0.5)


@pytest.fixture(scope="module")
async def desk(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Any]:
    prefix = f"t{uuid.uuid4().hex[:10]}."
    database = f"t_{uuid.uuid4().hex[:10]}"
    ensure_topics(infra.kafka, prefix)
    desk = ObservedDesk(infra, prefix, database, tmp_path_factory.mktemp("observability"))
    started = time.monotonic()
    try:
        await asyncio.to_thread(desk.start, *ALL)
        await desk.load_demo_org()
        traffic = await _traffic(desk)
        print(f"desk up and traffic through in {time.monotonic() - started:.1f}s")
        yield desk, traffic
    finally:
        await asyncio.to_thread(desk.stop)
        _delete_topics(infra.kafka, prefix)
        mongo: MongoClient[dict[str, Any]] = MongoClient(infra.mongodb_uri)
        with mongo:
            mongo.drop_database(database)


async def _traffic(desk: ObservedDesk) -> dict[str, Any]:
    """A mail that has to wait (its team is offline), a chat message, a poison command."""
    with desk.client() as http:
        assert http.put("/v1/agents/dev/presence", json={"presence": "offline"}).status_code == 200
    raw, _ = mail("Printer jams on every page", "The printer in room 4.12 jams.")
    desk.deliver(raw)
    body = json.dumps(
        {
            "source": "mattermost",
            "message_id": "obs-1",
            "conversation_id": "town-square/obs",
            "sender": {"id": "u-7", "name": "Li Wei"},
            "text": "I forgot my password and cannot log in",
        }
    ).encode()
    async with httpx.AsyncClient(timeout=30) as http:
        url = f"http://127.0.0.1:{desk.ports['ingest-chat']}/webhooks/chat"
        resp = await http.post(url, content=body, headers=webhook_headers(body, WEBHOOK_SECRET))
        assert resp.status_code == 202, resp.text

    queued = await asyncio.to_thread(
        desk.wait_ticket, lambda t: t["queue"] is not None, 90, channel="email"
    )
    chat = await asyncio.to_thread(
        desk.wait_ticket, lambda t: t["assignee"] is not None, 90, channel="chat"
    )
    # A record the ticket-api can never apply: its dead letter is counted by reason.
    producer = AIOKafkaProducer(bootstrap_servers=desk.infra.kafka)
    await producer.start()
    try:
        await producer.send_and_wait(
            f"{desk.prefix}tickets.commands", b'{"type": "nonsense"}', key=b"DS-AAAAAAAA"
        )
    finally:
        await producer.stop()
    return {"queued": queued, "chat": chat}


def test_every_service_reports_kafka_and_its_records(desk: Any) -> None:
    d, _ = desk
    for service in ALL:
        assert d.value(service, "deskstream_connection_up", kind="kafka", service=service) == 1, (
            service
        )
    produced = "deskstream_events_produced_total"
    consumed = "deskstream_events_consumed_total"
    assert d.value("ingest-email", produced, topic="inbound.email", channel="email") >= 1
    assert d.value("ingest-email", "deskstream_connection_up", kind="imap") == 1
    assert d.value("ingest-email", "deskstream_lease_held") == 1
    assert d.value("ingest-chat", produced, topic="inbound.chat", channel="chat") >= 1
    # Every replica's web-chat feed reads tickets.events in full.
    assert d.value("ingest-chat", consumed, topic="tickets.events") >= 1
    assert d.value("ingest-social", "deskstream_connection_up", kind="mongodb") == 1
    # The router, through its Faust sensor: both inbound records in, commands out.
    assert d.value("router", consumed, topic="inbound.email", channel="email") >= 1
    assert d.value("router", consumed, topic="inbound.chat", channel="chat") >= 1
    assert d.value("router", produced, topic="tickets.commands") >= 4  # 2 creates, queue, assign
    assert d.value("router", "deskstream_event_age_seconds_count") >= 2
    # The ticket-api: commands in, events out through the relay, MongoDB up.
    assert d.value("ticket-api", consumed, topic="tickets.commands") >= 4
    assert d.value("ticket-api", produced, topic="tickets.events", channel="chat") >= 1
    assert d.value("ticket-api", produced, topic="tickets.events", channel="email") >= 1
    assert d.value("ticket-api", "deskstream_connection_up", kind="mongodb") == 1
    assert (
        d.value(
            "ticket-api", "deskstream_processing_duration_seconds_count", step="tickets.commands"
        )
        >= 1
    )


def test_dead_letters_are_counted_by_reason(desk: Any) -> None:
    d, _ = desk
    d.until(
        lambda: (
            d.value("ticket-api", "deskstream_dead_letters_total", reason="ValidationError") == 1
        ),
        "the poison command dead-lettered",
    )
    assert (
        d.value("ticket-api", "deskstream_events_produced_total", topic="deadletter.ticket-api")
        == 1
    )


def test_routing_decisions_queues_and_lag(desk: Any) -> None:
    d, traffic = desk
    decisions = "deskstream_routing_decisions_total"
    assert d.value("ticket-api", decisions, outcome="queued", channel="email", team="field") == 1
    assert d.value("ticket-api", decisions, outcome="assigned", channel="chat") == 1
    # The queue gauges, read from MongoDB every second.
    d.until(
        lambda: d.value("ticket-api", "deskstream_queue_depth", team="field") == 1,
        "the field team's queue in the gauge",
    )
    assert d.value("ticket-api", "deskstream_tickets_waiting", team="field") == 1
    assert d.value("ticket-api", "deskstream_oldest_waiting_ticket_age_seconds", team="field") > 0
    assert d.value("ticket-api", "deskstream_tickets_waiting", team="service-desk") == 0
    # Consumer lag: the ticket-api's runner from its fetch state, the router's from the broker.
    lag = "deskstream_consumer_lag_records"
    d.until(
        lambda: any(
            n == lag and ls.get("group") == "ticket-api-commands"
            for n, ls, _ in d.metrics("ticket-api")
        ),
        "the commands consumer's lag",
    )
    d.until(
        lambda: any(n == lag and ls.get("group") == "router" for n, ls, _ in d.metrics("router")),
        "the router group's lag",
        timeout=30,
    )
    assert d.value("ticket-api", lag, group="ticket-api-commands", topic="tickets.commands") == 0
    assert traffic["queued"]["team"] == "field"


# Written by the ticket-api's relay in Kafka transactions: the commit marker after the last
# record takes an offset, so a group that committed everything still shows 1 there.
TRANSACTIONAL = {"tickets.events", "agents.state", "catalogue.services"}


def _settled(d: ObservedDesk) -> dict[str, Any] | None:
    with d.client() as http:
        status: dict[str, Any] = http.get("/v1/ops/status").json()
    router = next(g for g in status["consumer_lag"] if g["group"] == "router")
    topics = {p["topic"] for p in router["partitions"]}
    caught_up = all(
        p["lag"] <= (1 if p["topic"] in TRANSACTIONAL else 0) for p in router["partitions"]
    )
    return status if caught_up and {"inbound.email", "inbound.chat"} <= topics else None


def test_ops_status_reports_lag_and_the_oldest_unassigned_ticket(desk: Any) -> None:
    d, traffic = desk
    with d.client() as http:
        assert http.get("/v1/ops/status", headers={"Authorization": ""}).status_code == 401
        resp = http.get("/v1/ops/status")
    assert resp.status_code == 200, resp.text
    # Faust commits the router's offsets every few seconds: read until it caught up.
    status = d.until(lambda: _settled(d), "the router group committed the traffic", timeout=30)
    groups = {g["group"]: g for g in status["consumer_lag"]}
    assert set(groups) == {"router", "ticket-api-commands"}
    own = groups["ticket-api-commands"]
    assert own["error"] is None
    assert {p["topic"] for p in own["partitions"]} == {"tickets.commands"}
    assert own["lag"] == 0
    router = groups["router"]
    assert router["error"] is None
    assert {"inbound.email", "inbound.chat"} <= {p["topic"] for p in router["partitions"]}
    teams = {t["team"]: t for t in status["teams"]}
    field = teams["field"]
    assert (field["waiting"], field["queued"]) == (1, 1)
    assert field["oldest_unassigned"]["ticket_id"] == traffic["queued"]["ticket_id"]
    assert field["oldest_unassigned"]["age_s"] > 0
    assert "service-desk" not in teams  # the chat was assigned at once
