"""The fault-injection suite runs on its own infrastructure: it stops Kafka, MongoDB and
Dovecot, which must never disturb another test session. Ports and run directory differ
from the regular test infrastructure (`.run/faults`, ports 30xxx). All ports lie below the
ephemeral range (32768-60999): a restarted broker could otherwise find its port taken as
the local port of some client's connection."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import REPO, Infra, infra_cmd, infra_env, offset_ports
from tests.faults.pipeline import RESULTS

FAULT_RUN_DIR = REPO / ".run" / "faults"
FAULT_PORTS = offset_ports(kafka=30092, mongo=30217, imap=30243, smtp=30225)


class FaultInfra(Infra):
    def stop(self, component: str) -> None:
        infra_cmd("down", component, env=infra_env(FAULT_RUN_DIR, FAULT_PORTS))

    def start(self, component: str) -> None:
        infra_cmd("up", component, env=infra_env(FAULT_RUN_DIR, FAULT_PORTS))


@pytest.fixture(scope="session")
def infra() -> Iterator[FaultInfra]:
    env = infra_env(FAULT_RUN_DIR, FAULT_PORTS)
    infra_cmd("up", env=env)
    try:
        yield FaultInfra(
            kafka=f"127.0.0.1:{FAULT_PORTS['KAFKA']}",
            mongodb_uri=f"mongodb://127.0.0.1:{FAULT_PORTS['MONGO']}",
            imap_host="127.0.0.1",
            imap_port=FAULT_PORTS["IMAP"],
            smtp_host="127.0.0.1",
            smtp_port=FAULT_PORTS["SMTP"],
            smtp_maildir=FAULT_RUN_DIR / "smtp" / "maildir",
            local_kafka=True,
        )
    finally:
        infra_cmd("down", env=env)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    header = (
        "fault",
        "events sent",
        "persisted",
        "lost",
        "duplicates",
        "dead-lettered",
        "recovery s",
        "restarts",
    )
    out = FAULT_RUN_DIR / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps([r.__dict__ for r in RESULTS], indent=2))
    rows = [header] + [r.cells() for r in RESULTS]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    terminalreporter.section("fault injection")
    for n, row in enumerate(rows):
        terminalreporter.write_line(
            "  ".join(
                str(c).ljust(w) if i == 0 else str(c).rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            terminalreporter.write_line("  ".join("-" * w for w in widths))
    terminalreporter.write_line(f"raw results: {out}")
