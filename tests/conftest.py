"""Test fixtures: real infrastructure for the session, a fresh topic prefix and database per test.

Where KAFKA_BOOTSTRAP_SERVERS / MONGODB_URI / IMAP_HOST / SMTP_HOST are set, the tests use
those servers. Otherwise, where a Docker engine answers, Kafka and MongoDB come from
testcontainers; everything else is started from `deploy/local/infra.py` on test ports under
`.run/test` and stopped again at the end of the session. Nothing is ever mocked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from deskstream.topics import ensure_topics
from pymongo import AsyncMongoClient

REPO = Path(__file__).resolve().parent.parent
INFRA = REPO / "deploy" / "local" / "infra.py"
TEST_RUN_DIR = REPO / ".run" / "test"
# DESKSTREAM_TEST_PORT_OFFSET moves every test port, so two checkouts can test side by side.
_OFFSET = int(os.environ.get("DESKSTREAM_TEST_PORT_OFFSET", "0"))


def offset_ports(kafka: int, mongo: int, imap: int, smtp: int) -> dict[str, int]:
    """An infrastructure's ports (the Kafka controller next to the broker), moved by the offset."""
    base = {
        "KAFKA": kafka,
        "KAFKA_CONTROLLER": kafka + 1,
        "MONGO": mongo,
        "IMAP": imap,
        "SMTP": smtp,
    }
    return {name: port + _OFFSET for name, port in base.items()}


TEST_PORTS = offset_ports(kafka=29092, mongo=27217, imap=10243, smtp=10225)
IMAP_USERS = {"desk": "desk-local-imap-password", "alice": "alice-local-imap-password"}

# The fault-injection suite stops Kafka, MongoDB and Dovecot on its own infrastructure and
# takes about 15 minutes: `make test-faults` runs it (DESKSTREAM_FAULTS=1), `make test` not.
collect_ignore = [] if os.environ.get("DESKSTREAM_FAULTS") else ["faults"]


def infra_env(run_dir: Path = TEST_RUN_DIR, ports: dict[str, int] = TEST_PORTS) -> dict[str, str]:
    env = {**os.environ, "DESKSTREAM_RUN_DIR": str(run_dir)}
    env.update({f"DESKSTREAM_{k}_PORT": str(v) for k, v in ports.items()})
    return env


def infra_cmd(action: str, *components: str, env: dict[str, str] | None = None) -> None:
    subprocess.run(
        [sys.executable, str(INFRA), action, *components], env=env or infra_env(), check=True
    )


@dataclass
class Infra:
    kafka: str
    mongodb_uri: str
    imap_host: str
    imap_port: int
    smtp_host: str
    smtp_port: int
    smtp_maildir: Path | None
    imap_users: dict[str, str] = field(default_factory=lambda: dict(IMAP_USERS))
    local_kafka: bool = False

    def service_env(self, prefix: str, **extra: str) -> dict[str, str]:
        """The environment a service process needs to use this infrastructure."""
        return {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka,
            "MONGODB_URI": self.mongodb_uri,
            "IMAP_HOST": self.imap_host,
            "IMAP_PORT": str(self.imap_port),
            "SMTP_HOST": self.smtp_host,
            "SMTP_PORT": str(self.smtp_port),
            "DESKSTREAM_TOPIC_PREFIX": prefix,
            **extra,
        }


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _process_alive(name: str) -> bool:
    """Whether the infra process of `name` runs (a loaded one may not answer in time)."""
    try:
        os.kill(int((TEST_RUN_DIR / name / "pid").read_text()), 0)
    except (OSError, ValueError):
        return False
    return True


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    given = {
        "kafka": os.environ.get("KAFKA_BOOTSTRAP_SERVERS"),
        "mongo": os.environ.get("MONGODB_URI"),
        "imap": os.environ.get("IMAP_HOST"),
        "smtp": os.environ.get("SMTP_HOST"),
    }
    containers: list[Any] = []
    if (not given["kafka"] or not given["mongo"]) and _docker_answers():
        from testcontainers.kafka import KafkaContainer
        from testcontainers.mongodb import MongoDbContainer

        if not given["kafka"]:
            kafka = KafkaContainer("apache/kafka:4.1.1").with_kraft()
            containers.append(kafka.start())
            given["kafka"] = kafka.get_bootstrap_server()
        if not given["mongo"]:
            mongo = MongoDbContainer("mongo:8.0")
            containers.append(mongo.start())
            given["mongo"] = mongo.get_connection_url()
    local = [name for name, value in given.items() if not value]
    # Several test sessions may share the test infrastructure: stop only what this one
    # started.
    port_of = {"kafka": "KAFKA", "mongo": "MONGO", "imap": "IMAP", "smtp": "SMTP"}
    started = [
        name
        for name in local
        if not _listening(TEST_PORTS[port_of[name]]) and not _process_alive(name)
    ]
    if started:
        infra_cmd("up", *started)
    try:
        yield Infra(
            kafka=given["kafka"] or f"127.0.0.1:{TEST_PORTS['KAFKA']}",
            mongodb_uri=given["mongo"] or f"mongodb://127.0.0.1:{TEST_PORTS['MONGO']}",
            imap_host=given["imap"] or "127.0.0.1",
            imap_port=int(os.environ.get("IMAP_PORT", TEST_PORTS["IMAP"])),
            smtp_host=given["smtp"] or "127.0.0.1",
            smtp_port=int(os.environ.get("SMTP_PORT", TEST_PORTS["SMTP"])),
            smtp_maildir=TEST_RUN_DIR / "smtp" / "maildir" if "smtp" in local else None,
            local_kafka="kafka" in local,
        )
    finally:
        # `.run/test/keep-running`: a developer shares this infrastructure between parallel
        # test sessions; whichever session happened to start it must not stop it.
        if started and not (TEST_RUN_DIR / "keep-running").exists():
            infra_cmd("down", *started)
        for container in containers:
            container.stop()


@pytest.fixture
def topic_prefix(infra: Infra) -> Iterator[str]:
    """A fresh prefix with every registry topic created under it; deleted afterwards.

    Deleting keeps a long-lived test broker light: thousands of leftover partitions make
    its start-up and every topic creation slow.
    """
    prefix = f"t{uuid.uuid4().hex[:10]}."
    ensure_topics(infra.kafka, prefix)
    yield prefix
    _delete_topics(infra.kafka, prefix)


def _delete_topics(bootstrap: str, prefix: str) -> None:
    from kafka.admin import KafkaAdminClient

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
        try:
            mine = [t for t in admin.list_topics() if t.startswith(prefix)]
            if mine:
                admin.delete_topics(mine)
        finally:
            admin.close()
    except Exception as exc:  # best effort: a leftover topic harms nothing but speed
        print(f"could not delete the topics of {prefix}: {exc!r}")


@pytest.fixture
async def mongo_db(infra: Infra) -> AsyncIterator[Any]:
    """A fresh database on the MongoDB-wire server, dropped afterwards."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(infra.mongodb_uri, tz_aware=True)
    name = f"t_{uuid.uuid4().hex[:10]}"
    try:
        yield client[name]
    finally:
        await client.drop_database(name)
        await client.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With CI=true a skipped test fails the run: no integration test may be silently skipped."""
    if os.environ.get("CI", "").lower() not in {"1", "true", "yes"}:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped:
        if reporter:
            reporter.write_line(f"CI=true: {skipped} skipped test(s) fail the run", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def free_port() -> int:
    """A TCP port nobody listens on right now (for a service started by a test)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
