"""Health is honest: /readyz follows the broker down and back up; /healthz names a hang."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from deskstream.topics import ensure_topics

from tests.conftest import TEST_RUN_DIR, Infra, free_port, infra_cmd, infra_env
from tests.services import ALL, start_service, stop_all, wait_status

T = TypeVar("T")
SECRETS = {
    "TICKET_API_ADMIN_API_KEY": "health-test-admin-key-0123456789",
    "IMAP_USER": "desk",
}


def test_readyz_follows_the_broker_down_and_up(infra: Infra, tmp_path: Path) -> None:
    # A private broker, so stopping it disturbs no other test.
    ports = {"KAFKA": free_port(), "KAFKA_CONTROLLER": free_port()}
    env_infra = infra_env(TEST_RUN_DIR / f"health-{uuid.uuid4().hex[:6]}", ports)
    infra_cmd("up", "kafka", env=env_infra)
    ensure_topics(f"127.0.0.1:{ports['KAFKA']}")
    procs = []
    try:
        env = infra.service_env(
            "",
            KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{ports['KAFKA']}",
            IMAP_PASSWORD=infra.imap_users["desk"],
            **SECRETS,
        )
        service_ports = {name: free_port() for name in ALL}
        procs = [
            start_service(name, env, service_ports[name], tmp_path / f"{name}.log") for name in ALL
        ]
        wait_status(service_ports.values(), 200, timeout=90)

        infra_cmd("down", "kafka", env=env_infra)
        went_down = wait_status(service_ports.values(), 503, timeout=10)

        infra_cmd("up", "kafka", env=env_infra)
        came_back = wait_status(service_ports.values(), 200, timeout=30)
        print(f"not ready after {went_down:.1f}s, ready again after {came_back:.1f}s")

        # SIGTERM: every service stops cleanly, with exit status 0.
        codes = stop_all(procs)
        assert codes == [0] * len(ALL), dict(zip(ALL, codes, strict=True))
    finally:
        stop_all(procs)
        infra_cmd("down", "kafka", env=env_infra)


def test_healthz_names_a_hung_step_and_recovers(
    infra: Infra, topic_prefix: str, tmp_path: Path
) -> None:
    """A MongoDB that keeps the connection but never answers hangs the ticket-api's relay:
    /healthz says which step hangs (an orchestrator restarts the process), the log says
    where it waits, and both clear once the server answers again."""
    # A private SecantusDB, frozen with SIGSTOP: the TCP connection stays, no reply comes.
    ports = {"MONGO": free_port()}
    env_infra = infra_env(TEST_RUN_DIR / f"hang-{uuid.uuid4().hex[:6]}", ports)
    infra_cmd("up", "mongo", env=env_infra)
    mongo_pid = int((Path(env_infra["DESKSTREAM_RUN_DIR"]) / "mongo" / "pid").read_text())
    port = free_port()
    log = tmp_path / "ticket-api.log"
    env = infra.service_env(
        topic_prefix,
        MONGODB_URI=f"mongodb://127.0.0.1:{ports['MONGO']}",
        TICKET_API_STUCK_AFTER_S="3",
        TICKET_API_RELAY_POLL_MS="100",
        LOG_LEVEL="INFO",
        **SECRETS,
    )
    procs = [start_service("ticket-api", env, port, log)]
    try:
        wait_status([port], 200, timeout=90)
        assert healthz(port) == (200, {"status": "ok"})

        os.kill(mongo_pid, signal.SIGSTOP)
        try:
            stuck = poll(lambda: healthz(port), lambda r: r[0] == 503, timeout=30)
        finally:
            os.kill(mongo_pid, signal.SIGCONT)
        assert stuck[1]["status"] == "stuck"
        assert any(step.startswith("outbox relay") for step in stuck[1]["stuck_seconds"]), stuck

        poll(lambda: healthz(port), lambda r: r[0] == 200, timeout=90)
        hung = [e for e in json_lines(log) if e.get("msg") == "step stuck"]
        assert hung, "the hang was not logged"
        # The log line says where the relay waits: down through the relay into PyMongo.
        chain = hung[0]["waiting_in"]
        assert any("deskstream_ticket_api/relay.py" in frame for frame in chain), chain
        assert any("/pymongo/" in frame for frame in chain), chain
        assert stop_all(procs) == [0]
    finally:
        stop_all(procs)
        infra_cmd("down", "mongo", env=env_infra)


def healthz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return int(err.code), json.loads(err.read())


def poll(get: Callable[[], T], done: Callable[[T], bool], timeout: float) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = get()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"still {value!r} after {timeout} s"
        time.sleep(0.5)


def json_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out
