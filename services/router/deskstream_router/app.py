"""The router's Faust application: its app object, topics and ops routes.

Faust's own web server (aiohttp) serves /healthz, /readyz and /metrics; the metrics come
from a Faust sensor and a lag timer (metrics.py).
"""

from __future__ import annotations

from typing import Any

import faust
from deskstream.events import Channel
from deskstream.health import KafkaProbe, Readiness, scrape
from deskstream.topics import DEAD_LETTER_MAX_BYTES, ensure_named_topics
from faust.web import Request, Response, View

from deskstream_router.classify import Rules
from deskstream_router.consumer import RouterApp
from deskstream_router.metrics import LAG_INTERVAL_S
from deskstream_router.settings import RouterSettings
from deskstream_router.topology import Topology


def create_app(settings: RouterSettings) -> faust.App:
    app = RouterApp(
        f"{settings.topics.prefix}router",
        broker=f"kafka://{settings.kafka_bootstrap_servers}",
        store=settings.store,
        datadir=str(settings.data_dir),
        web_host=settings.http_host,
        web_port=settings.http_port,
        web_in_thread=False,
        topic_replication_factor=1,
        topic_allow_declare=True,  # Faust declares only its own changelog/repartition topics
        producer_acks=-1,
        producer_linger_ms=settings.kafka_linger_ms,
        producer_max_request_size=DEAD_LETTER_MAX_BYTES,  # a dead letter of a ~1 MB record
        consumer_auto_offset_reset="earliest",
        # On shutdown or rebalance do not wait for events still in a take_events() buffer:
        # they are not committed, so they come back, and processing them is idempotent.
        # (Waiting hangs the worker: Faust acks a batch only when the next one is asked for.)
        stream_wait_empty=False,
        # A worker that died is noticed after this long and its partitions move on.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        autodiscover=False,
    )
    t = settings.topics
    # Written without transactions, so their offsets have no holes (see consumer.py).
    app.set_dense_topics(
        [
            *(t.inbound(ch) for ch in Channel),
            t.name("routing.requests"),
            t.name("routing.agent-load"),
        ]
    )
    topology = Topology(app, settings, Rules.load(settings.rules_path))
    metrics = topology.metrics  # one RouterMetrics: the topology counts batches with it
    app.sensors.add(metrics.sensor())
    app.timer(LAG_INTERVAL_S, name="consumer-lag")(metrics.sample_lag)
    readiness = Readiness(meter=metrics.meter)
    readiness.add(
        "kafka",
        KafkaProbe(settings.kafka_bootstrap_servers, settings.service_name),
        connection="kafka",
    )
    readiness.add("catalogue", topology.catalogue.check)

    @app.page("/healthz")
    class Healthz(View):
        async def get(self, request: Request) -> Response:
            return self.json({"status": "ok"})

    @app.page("/readyz")
    class Readyz(View):
        async def get(self, request: Request) -> Response:
            ready, detail = await readiness.report()
            body: dict[str, Any] = {"status": "ready" if ready else "not ready", "checks": detail}
            return self.json(body, status=200 if ready else 503)

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            body, ctype = await scrape(readiness)
            return self.bytes(body, content_type=ctype.split(";")[0])

    return app


def ensure_internal_topics(app: faust.App, settings: RouterSettings) -> None:
    """Create the tables' changelog topics (compacted) before the worker joins its group.

    A team's `teams` value holds its whole queue's sort entries, so a long queue makes a big
    record: the changelogs take what the producer may send (4 MiB, about 70,000 queued
    tickets in one team) instead of the broker's default 1 MB (about 17,000). A write
    refused for size is only logged by Faust, and the table would come back without it
    after a restart.
    """
    topics = {
        table.changelog_topic.get_topic_name(): (
            table.partitions or 6,
            {"cleanup.policy": "compact", "max.message.bytes": str(DEAD_LETTER_MAX_BYTES)},
        )
        for table in app.tables.values()
    }
    topics[f"{app.conf.id}-__assignor-__leader"] = (1, {"cleanup.policy": "compact"})
    ensure_named_topics(settings.kafka_bootstrap_servers, topics)
