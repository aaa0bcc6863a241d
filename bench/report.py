"""Summaries, the printed table and the JSON file of raw results."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from collections.abc import Sequence
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

RESULTS = Path(__file__).resolve().parent / "results"
PACKAGES = ("aiokafka", "pymongo", "faust-streaming", "pydantic", "secantusdb", "kafka-python")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return float(sorted_values[rank - 1])


def latency_summary(values_ms: Sequence[float]) -> dict[str, float]:
    xs = sorted(values_ms)
    if not xs:
        return {"count": 0}
    return {
        "count": len(xs),
        "min": round(xs[0], 1),
        "p50": round(percentile(xs, 50), 1),
        "p95": round(percentile(xs, 95), 1),
        "p99": round(percentile(xs, 99), 1),
        "max": round(xs[-1], 1),
        "mean": round(sum(xs) / len(xs), 1),
    }


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], capture_output=True, text=True, check=False, cwd=RESULTS.parent.parent
    ).stdout.strip()


def _java_version() -> str:
    out = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False)
    return (out.stderr or out.stdout).splitlines()[0] if (out.stderr or out.stdout) else ""


def environment() -> dict[str, Any]:
    """The facts a reader needs to compare two result files."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    kafka_jar = next(
        (
            p.name
            for p in (RESULTS.parent.parent / "deploy/local/kafka/target/kafka-libs").glob(
                "kafka_2.13-*.jar"
            )
        ),
        None,
    )
    return {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "machine": {
            "nproc": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(),
            "cpu": platform.processor() or platform.machine(),
            "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "versions": {
            "python": platform.python_version(),
            "java": _java_version(),
            "kafka": kafka_jar,
            **versions,
        },
    }


def save(results: dict[str, Any], started: datetime) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    sha = str(results.get("git_commit") or "nogit")[:7]  # the commit measured, not today's
    path = RESULTS / f"{started.strftime('%Y%m%dT%H%M%SZ')}-{sha}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def _fmt(x: Any, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:,.{digits}f}"


def table(results: dict[str, Any]) -> str:
    """Rows K, M, pipeline@offered, pipeline@saturation; then the ratios."""
    k, m = results["kafka_raw"], results["mongo_raw"]
    rows: list[tuple[str, str, str, str, str, str, str]] = [
        (
            "K  raw Kafka produce->consume",
            _fmt(k["records"]),
            _fmt(k["records_per_s"]),
            f"{k['mb_per_s']:.1f} MB/s",
            "-",
            "-",
            "-",
        ),
        (
            "M  raw MongoDB, ticket-api op mix",
            _fmt(m["tickets"]),
            _fmt(m["tickets_per_s"]),
            f"{m['transactions']} tx",
            "-",
            "-",
            "-",
        ),
    ]
    for name, p in results["pipeline"].items():
        lat = p["latency_ms"]["persisted"]
        label = (
            f"pipeline @ {p['offered_rate']:g}/s offered"
            if p["offered_rate"]
            else "pipeline @ saturation"
        )
        rows.append(
            (
                label if name in ("offered", "saturation") else f"pipeline {name}",
                _fmt(p["events"]),
                _fmt(p["events_per_s"]),
                f"{p['wall_s']:.1f} s",
                _fmt(lat.get("p50")),
                _fmt(lat.get("p95")),
                _fmt(lat.get("p99")),
            )
        )
    head = ("run", "n", "per second", "detail", "p50 ms", "p95 ms", "p99 ms")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [head, *rows]
    ]
    lines.insert(1, "-" * len(lines[0]))
    sat = results["pipeline"].get("saturation")
    if sat:
        lines.append("")
        lines.append(
            f"pipeline/K = {sat['events_per_s'] / k['records_per_s']:.3f}   "
            f"pipeline/M = {sat['events_per_s'] / m['tickets_per_s']:.3f}   "
            "(saturation events/s over each raw baseline)"
        )
    for name, p in results["pipeline"].items():
        lat, d, cpu = p["latency_ms"], p["decisions"], p["cpu_cores"]
        teams = p.get("router_changelogs", {}).get("router-teams-changelog", {})
        lines += [
            "",
            f"{name}: p50 per hop: router {_fmt(lat['router_hop'].get('p50'))} ms, "
            f"ticket-api + relay {_fmt(lat['ticket_api_hop'].get('p50'))} ms",
            f"  routing decision p50/p99 {_fmt(lat['decision'].get('p50'))}/"
            f"{_fmt(lat['decision'].get('p99'))} ms ({d['assigned']} assigned, "
            f"{d['queued']} queued, {d['missing']} missing); assigned p50/p99 "
            f"{_fmt(lat['assigned'].get('p50'))}/{_fmt(lat['assigned'].get('p99'))} ms",
            "  cpu cores used (waiting for a core): "
            + ", ".join(
                f"{k} {v:.2f}"
                + (f" ({cpu['runqueue_wait'][k]:.2f})" if k in cpu["runqueue_wait"] else "")
                for k, v in cpu["cpu"].items()
            ),
            f"  router teams changelog: {_fmt(teams.get('records'))} records written, "
            f"newest {_fmt(teams.get('newest_record_bytes_max', 0) / 1024)} KB",
        ]
    return "\n".join(lines)
