"""`make run` brings up everything, reports five healthy services, and Ctrl-C leaves nothing."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

from tests.conftest import REPO, TEST_RUN_DIR, free_port


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def processes_in_group(pgid: int) -> list[str]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:  # field 5 of /proc/<pid>/stat: the process group
            found.append(stat.parent.name)
    return found


def test_make_run_starts_everything_and_sigint_stops_it() -> None:
    infra_ports = {
        "KAFKA": free_port(),
        "KAFKA_CONTROLLER": free_port(),
        "MONGO": free_port(),
        "IMAP": free_port(),
        "SMTP": free_port(),
    }
    # Five consecutive free service ports.
    base = 18180 + (os.getpid() % 50) * 10
    while any(listening(base + i) for i in range(5)):
        base += 10
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if k not in {"KAFKA_BOOTSTRAP_SERVERS", "MONGODB_URI"}
        },
        # Under the repo, not tmp_path: Dovecot's unprivileged processes must traverse it.
        "DESKSTREAM_RUN_DIR": str(TEST_RUN_DIR / f"makerun-{uuid.uuid4().hex[:6]}"),
        "DESKSTREAM_SERVICE_PORT_BASE": str(base),
        **{f"DESKSTREAM_{k}_PORT": str(v) for k, v in infra_ports.items()},
    }
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "run"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, as a terminal would give it
        text=True,
    )
    output: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 240
        for line in proc.stdout:
            output.append(line)
            if "services healthy" in line or time.monotonic() > deadline:
                break
        healthy = [line for line in output if re.search(r"^\s+\S+\s+healthy\s+http://", line)]
        assert len(healthy) == 5, "".join(output)
        assert "all 5 services healthy" in output[-1]
        assert all(listening(base + i) for i in range(5))

        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        rest, _ = proc.communicate(timeout=90)
        output.append(rest)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "deskstream: stopped" in "".join(output)
    assert processes_in_group(proc.pid) == []
    still = [p for p in [*infra_ports.values(), *range(base, base + 5)] if listening(p)]
    assert still == [], f"still listening: {still}"
