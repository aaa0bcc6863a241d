"""Run `make run` as a person would, on ports and a run dir of its own, and stop it again."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import INFRA, REPO, TEST_RUN_DIR, free_port

INFRA_PORTS = ("KAFKA", "KAFKA_CONTROLLER", "MONGO", "IMAP", "SMTP")


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


@dataclass
class MakeRun:
    proc: subprocess.Popen[str]
    env: dict[str, str]
    infra_ports: dict[str, int]
    base: int  # the first of five consecutive service ports

    def ports(self) -> list[int]:
        return [*self.infra_ports.values(), *range(self.base, self.base + 5)]

    def interrupt(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does

    def stop(self) -> None:
        """After a failure too: Ctrl-C first, as the infrastructure runs in sessions of its
        own that a SIGKILL of the group would leave behind; then `infra.py down`."""
        if self.proc.poll() is None:
            self.interrupt()
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        subprocess.run(
            [sys.executable, str(INFRA), "down"], env=self.env, capture_output=True, check=False
        )


def start_make_run(tag: str, first_port: int, **extra_env: str) -> MakeRun:
    infra_ports = {name: free_port() for name in INFRA_PORTS}
    base = first_port + (os.getpid() % 50) * 10
    while any(listening(base + i) for i in range(5)):
        base += 10
    drop = {"KAFKA_BOOTSTRAP_SERVERS", "MONGODB_URI", *extra_env}
    env = {
        **{k: v for k, v in os.environ.items() if k not in drop},
        # Under the repo, not tmp_path: Dovecot's unprivileged processes must traverse it.
        "DESKSTREAM_RUN_DIR": str(TEST_RUN_DIR / f"{tag}-{uuid.uuid4().hex[:6]}"),
        "DESKSTREAM_SERVICE_PORT_BASE": str(base),
        **{f"DESKSTREAM_{k}_PORT": str(v) for k, v in infra_ports.items()},
        **{k: v for k, v in extra_env.items() if v},
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
    return MakeRun(proc, env, infra_ports, base)
