"""A whole desk for end-to-end tests: ticket-api, router and ingest-email on the real servers.

Each test gets its own topic prefix, database and IMAP folder, starts the services through
their real entry points, loads the demo organisation through the API, and talks to the desk
the way people do: mail into the mailbox, requests and agent actions over REST.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from imapclient import IMAPClient

from tests.conftest import REPO, Infra, free_port
from tests.kafka_helpers import roster_reached
from tests.services import start_service, stop_all, wait_status

ADMIN_KEY = "e2e-admin-key-0123456789abcdef"
DESK_ADDRESSES = "servicedesk@example.com,noreply@desk.example.com"


def _demo_org() -> Any:
    spec = importlib.util.spec_from_file_location("demo_org", REPO / "deploy/local/demo_org.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DEMO_ORG = _demo_org()


@dataclass
class Desk:
    infra: Infra
    prefix: str
    database: str
    logs: Path
    folder: str = field(default_factory=lambda: f"e2e-{uuid.uuid4().hex[:8]}")
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.ports['ticket-api']}"

    def env(self) -> dict[str, str]:
        return self.infra.service_env(
            self.prefix,
            MONGODB_DATABASE=self.database,
            TICKET_API_ADMIN_API_KEY=ADMIN_KEY,
            IMAP_USER="desk",
            IMAP_PASSWORD=self.infra.imap_users["desk"],
            IMAP_FOLDER=self.folder,
            INGEST_EMAIL_DESK_ADDRESSES=DESK_ADDRESSES,
            INGEST_EMAIL_POLL_INTERVAL_S="2",
            LOG_LEVEL=os.environ.get("DESKSTREAM_TEST_SERVICE_LOG_LEVEL", "WARNING"),
        )

    def start(self, *names: str) -> None:
        with self.imap() as client:
            if not client.folder_exists(self.folder):
                client.create_folder(self.folder)
        for name in names:
            self.launch(name)
        wait_status([self.ports[n] for n in names], 200, timeout=120)

    def launch(self, name: str) -> None:
        """Start `name` (again, after a kill: on its old port), without waiting for it."""
        self.ports.setdefault(name, free_port())
        log = self.logs / f"{name}-{len(self.procs)}-{time.monotonic():.0f}.log"
        self.procs[name] = start_service(name, self.env(), self.ports[name], log)

    def sigkill(self, name: str) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)

    def stop(self) -> None:
        stop_all(self.procs.values())

    async def load_demo_org(self) -> None:
        DEMO_ORG.load(self.api, ADMIN_KEY)
        # The router places work only once the roster reached its team partitions.
        for agent in DEMO_ORG.AGENTS:
            await roster_reached(self.infra.kafka, self.prefix, agent["agent_id"], lambda s: True)

    def imap(self) -> IMAPClient:
        client = IMAPClient(self.infra.imap_host, port=self.infra.imap_port, ssl=False, timeout=10)
        client.login("desk", self.infra.imap_users["desk"])
        return client

    def deliver(self, raw: bytes) -> None:
        with self.imap() as client:
            client.append(self.folder, raw)

    def client(self, key: str = ADMIN_KEY) -> httpx.Client:
        return httpx.Client(
            base_url=self.api, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )

    def tickets(self, **filters: str) -> list[dict[str, Any]]:
        with self.client() as http:
            resp = http.get("/v1/tickets", params={"limit": "200", **filters})
            resp.raise_for_status()
            return list(resp.json()["items"])

    def wait_ticket(self, predicate: Any, timeout: float = 60, **filters: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [t for t in self.tickets(**filters) if predicate(t)]
            if found:
                return found[0]
            time.sleep(0.3)
        raise AssertionError(f"no ticket matched within {timeout}s: {self.tickets(**filters)}")

    def messages(self, ticket_id: str) -> list[dict[str, Any]]:
        with self.client() as http:
            resp = http.get(f"/v1/tickets/{ticket_id}/messages", params={"limit": "200"})
            resp.raise_for_status()
            return list(resp.json()["items"])
