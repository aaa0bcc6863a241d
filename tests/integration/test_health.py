"""Health is honest: /readyz follows the broker down and back up, for every service."""

from __future__ import annotations

import uuid
from pathlib import Path

from deskstream.topics import ensure_topics

from tests.conftest import TEST_RUN_DIR, Infra, free_port, infra_cmd, infra_env
from tests.services import ALL, start_service, stop_all, wait_status

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
