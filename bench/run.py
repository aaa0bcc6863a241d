"""`make bench`: start the bench's own Kafka and SecantusDB, measure K, M and the pipeline.

    python -m bench.run [--kafka-records N] [--mongo-tickets N] [--events N] [--rate R]

Prints a table and writes the raw results to bench/results/<UTC time>-<git sha>.json.
Everything it started is stopped again, also on Ctrl-C or a failed measurement; a
pipeline run that loses a ticket fails the bench (exit 1).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from bench import kafka_raw, mongo_raw, pipeline, report, services, workload
from bench.infra import BenchInfra


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="make bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--kafka-records", type=int, default=50_000, help="K: records (50,000)")
    p.add_argument("--mongo-tickets", type=int, default=10_000, help="M: tickets (10,000)")
    p.add_argument(
        "--events", type=int, default=10_000, help="pipeline: events per measurement (10,000)"
    )
    p.add_argument("--rate", type=float, default=40.0, help="pipeline: offered events/s (40)")
    p.add_argument(
        "--warmup",
        type=int,
        default=20,
        help="pipeline: warm-up events (20: leaves most agent capacity for measured tickets)",
    )
    p.add_argument(
        "--mongodb-uri",
        default=os.environ.get("BENCH_MONGODB_URI"),
        help="measure this MongoDB (a replica set) instead of starting SecantusDB",
    )
    p.add_argument(
        "--service-log-level",
        default="WARNING",
        help="LOG_LEVEL of the services (INFO shows transaction retries; for investigating)",
    )
    p.add_argument(
        "--skip",
        choices=("kafka", "mongo", "offered", "saturation"),
        action="append",
        default=[],
        help="leave a measurement out (repeatable; for investigating, not for results)",
    )
    return p.parse_args(argv)


def _say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def _meter(infra: BenchInfra) -> services.CpuMeter:
    meter = services.CpuMeter(
        {"kafka": infra.pid("kafka"), "mongo": infra.pid("mongo"), "bench": os.getpid()}
    )
    meter.start()
    return meter


async def measure(args: argparse.Namespace, infra: BenchInfra, run_id: str) -> dict[str, Any]:
    results: dict[str, Any] = {}
    if "kafka" not in args.skip:
        _say(f"K: {args.kafka_records:,} records produce -> consume")
        records = workload.inbound(f"{run_id}-k", args.kafka_records)
        cpu = _meter(infra)
        results["kafka_raw"] = await kafka_raw.run(
            bootstrap=infra.kafka, prefix=f"bench-{run_id}-k.", records=records
        )
        results["kafka_raw"]["cpu_cores"] = cpu.stop()
        _say(f"K: {results['kafka_raw']['records_per_s']:,.0f} records/s")
    if "mongo" not in args.skip:
        _say(f"M: {args.mongo_tickets:,} tickets with the ticket-api's operation mix")
        writes = mongo_raw.build(workload.inbound(f"{run_id}-m", args.mongo_tickets))
        cpu = _meter(infra)
        results["mongo_raw"] = await mongo_raw.run(
            uri=infra.mongodb_uri, database=f"bench_{run_id}_m", writes=writes
        )
        results["mongo_raw"]["cpu_cores"] = cpu.stop()
        _say(f"M: {results['mongo_raw']['tickets_per_s']:,.0f} tickets/s")
    results["pipeline"] = {}
    for name, rate in (("offered", args.rate), ("saturation", None)):
        if name in args.skip:
            continue
        how = f"paced at {rate:g}/s" if rate else "as fast as possible"
        _say(f"pipeline {name}: {args.events:,} events {how} (fresh services and database)")
        results["pipeline"][name] = p = await pipeline.run_phase(
            infra=infra,
            name=name,
            run_id=run_id,
            warmup=workload.inbound(f"{run_id}-{name}-warmup", args.warmup),
            measured=workload.inbound(f"{run_id}-{name}", args.events),
            rate=rate,
            log_level=args.service_log_level,
        )
        lat = p["latency_ms"]["persisted"]
        _say(
            f"pipeline {name}: {p['events_per_s']:,.0f} events/s, "
            f"p50 {lat['p50']:,.0f} ms, p99 {lat['p99']:,.0f} ms"
        )
    return results


def _service_defaults() -> dict[str, Any]:
    """The batching settings the services ran with (their defaults: the bench sets none)."""
    from deskstream.settings import ServiceSettings
    from deskstream_ticket_api.settings import TicketApiSettings

    fields = TicketApiSettings.model_fields
    names = ("command_batch", "command_wait_ms", "command_chunk", "relay_batch", "relay_poll_ms")
    return {
        "kafka_linger_ms": ServiceSettings.model_fields["kafka_linger_ms"].default,
        **{f"ticket_api_{n}": fields[n].default for n in names},
    }


def _server_version(uri: str) -> str:
    from pymongo import MongoClient

    client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=5000)
    with client:
        info = client.admin.command("buildInfo")
    return str(info.get("version"))  # SecantusDB answers with the MongoDB version it speaks


def _stop_on_sigterm(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str]) -> int:
    args = _args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    started = datetime.now(UTC)
    run_id = uuid.uuid4().hex[:6]
    infra = BenchInfra(external_mongodb_uri=args.mongodb_uri)
    env = report.environment()
    _say(
        f"bench {run_id} on {env['machine']['nproc']} cores, commit {env['git_commit'][:10]}"
        f"{' (dirty)' if env['git_dirty'] else ''}; infrastructure in {infra.run_dir}"
    )
    try:
        infra.up()
        env["versions"]["mongodb_server"] = _server_version(infra.mongodb_uri)
        results = asyncio.run(measure(args, infra, run_id))
    except KeyboardInterrupt:
        _say("interrupted; stopping what the bench started")
        return 130
    finally:
        # Second Ctrl-Cs must not interrupt the clean-up.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        services.stop(list(services.RUNNING))
        infra.down()
    doc = {
        "run_id": run_id,
        "started_at": started.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        **env,
        "settings": {
            **vars(args),
            # A URI may carry credentials: record only which kind of server it was.
            "mongodb_uri": "external" if args.mongodb_uri else "local SecantusDB",
            "ports": infra.ports,
            "service_defaults": _service_defaults(),
        },
        **results,
    }
    path = report.save(doc, started)
    if "kafka_raw" in results and "mongo_raw" in results:
        print()
        print(report.table(doc))
    print(f"\nraw results: {path.relative_to(path.parent.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
