"""Real local infrastructure without Docker: Kafka (KRaft), SecantusDB, Dovecot IMAP, SMTP.

Usage: python deploy/local/infra.py up|down|status [component ...]

Every component runs as a detached process with its data and log under one run directory
(`DESKSTREAM_RUN_DIR`, default `<repo>/.run`); `up` is idempotent and returns only once each
component answers on its port, `down` stops what `up` started. Ports come from the
environment (`DESKSTREAM_KAFKA_PORT`, ...). `up` writes `<run dir>/infra.env` with the
connection settings the services and tests read.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
RUN_DIR = Path(os.environ.get("DESKSTREAM_RUN_DIR", REPO / ".run")).resolve()
VENV_BIN = Path(sys.executable).parent

# Test users of the local Dovecot; the desk's own mailbox first. Local-only credentials.
IMAP_USERS = {"desk": "desk-local-imap-password", "alice": "alice-local-imap-password"}


def _port(name: str, default: int) -> int:
    return int(os.environ.get(f"DESKSTREAM_{name}_PORT", default))


KAFKA_PORT = _port("KAFKA", 19092)
KAFKA_CONTROLLER_PORT = _port("KAFKA_CONTROLLER", 19093)
MONGO_PORT = _port("MONGO", 27117)
IMAP_PORT = _port("IMAP", 10143)
SMTP_PORT = _port("SMTP", 10025)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_until(check: Callable[[], bool], what: str, timeout: float, proc_dir: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        if not _alive(proc_dir):
            raise SystemExit(f"{what} exited during start; see {proc_dir / 'out.log'}")
        time.sleep(0.3)
    raise SystemExit(f"{what} did not answer within {timeout:.0f}s; see {proc_dir / 'out.log'}")


def _pid(proc_dir: Path) -> int | None:
    try:
        return int((proc_dir / "pid").read_text())
    except (FileNotFoundError, ValueError):
        return None


def _alive(proc_dir: Path) -> bool:
    pid = _pid(proc_dir)
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours counts as dead.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
    return True


def spawn(proc_dir: Path, argv: list[str], env: dict[str, str] | None = None) -> None:
    """Start argv detached in its own session; its output goes to out.log."""
    proc_dir.mkdir(parents=True, exist_ok=True)
    with open(proc_dir / "out.log", "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **(env or {})},
            cwd=proc_dir,
        )
    (proc_dir / "pid").write_text(str(proc.pid))


def terminate(proc_dir: Path, timeout: float = 20) -> bool:
    """SIGTERM the component's process group, SIGKILL it after `timeout`."""
    pid = _pid(proc_dir)
    if pid is None or not _alive(proc_dir):
        (proc_dir / "pid").unlink(missing_ok=True)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(proc_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(proc_dir):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        while _alive(proc_dir):
            time.sleep(0.1)
    (proc_dir / "pid").unlink(missing_ok=True)
    return True


@dataclass(frozen=True)
class Component:
    name: str
    port: int
    start: Callable[[Path], None]
    ready: Callable[[], bool]
    timeout: float = 60
    stop: Callable[[Path], bool] = terminate

    @property
    def dir(self) -> Path:
        return RUN_DIR / self.name

    def up(self) -> None:
        if _alive(self.dir):
            # Ours and running, perhaps slow to answer on a loaded machine: wait for it
            # rather than start a second one that cannot bind the port.
            wait_until(self.ready, self.name, self.timeout, self.dir)
            print(f"{self.name}: already up on 127.0.0.1:{self.port}")
            return
        if port_open(self.port):
            raise SystemExit(f"{self.name}: port {self.port} is taken by another process")
        self.start(self.dir)
        wait_until(self.ready, self.name, self.timeout, self.dir)
        print(f"{self.name}: up on 127.0.0.1:{self.port} (logs: {self.dir / 'out.log'})")

    def down(self) -> None:
        if self.stop(self.dir):
            print(f"{self.name}: stopped")


# --- Kafka ------------------------------------------------------------------------------

KAFKA_LIBS = HERE / "kafka" / "target" / "kafka-libs"


def _kafka_libs() -> Path:
    if not any(KAFKA_LIBS.glob("kafka_2.13-*.jar")):
        subprocess.run(
            ["mvn", "-q", "-B", "-f", str(HERE / "kafka" / "pom.xml"), "package"], check=True
        )
    return KAFKA_LIBS


def _java(main: str, *args: str, heap: str = "512m") -> list[str]:
    return [
        "java",
        f"-Xmx{heap}",
        f"-Xms{heap}",
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={HERE / 'kafka' / 'log4j2.properties'}",
        "-cp",
        f"{_kafka_libs()}/*",
        main,
        *args,
    ]


def _start_kafka(proc_dir: Path) -> None:
    data = proc_dir / "data"
    proc_dir.mkdir(parents=True, exist_ok=True)
    props = proc_dir / "server.properties"
    props.write_text(
        (HERE / "kafka" / "server.properties")
        .read_text()
        .format(
            port=KAFKA_PORT,
            controller_port=KAFKA_CONTROLLER_PORT,
            log_dirs=data,
        )
    )
    cluster_id_file = proc_dir / "cluster.id"
    if not cluster_id_file.exists():
        cid = subprocess.run(
            _java("kafka.tools.StorageTool", "random-uuid", heap="128m"),
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()[-1]
        cluster_id_file.write_text(cid)
    subprocess.run(
        _java(
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id_file.read_text().strip(),
            "-c",
            str(props),
            "--ignore-formatted",
            heap="128m",
        ),
        check=True,
        capture_output=True,
    )
    spawn(proc_dir, _java("kafka.Kafka", str(props)))


def kafka_ready() -> bool:
    if not port_open(KAFKA_PORT):
        return False
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(
        bootstrap_servers=f"127.0.0.1:{KAFKA_PORT}", request_timeout_ms=3000, client_id="infra"
    )
    try:
        admin.list_topics()
        return True
    finally:
        admin.close()


# --- SecantusDB (MongoDB wire protocol) -------------------------------------------------


def _start_mongo(proc_dir: Path) -> None:
    spawn(
        proc_dir,
        [
            str(VENV_BIN / "secantusd-py"),
            "--host",
            "127.0.0.1",
            "--port",
            str(MONGO_PORT),
            "--storage-path",
            str(proc_dir / "data"),
            "--log-level",
            "WARNING",
        ],
    )


def mongo_ready() -> bool:
    if not port_open(MONGO_PORT):
        return False
    from pymongo import MongoClient

    client: MongoClient[dict[str, object]] = MongoClient(
        f"mongodb://127.0.0.1:{MONGO_PORT}", serverSelectionTimeoutMS=1000
    )
    with client:
        client.admin.command("ping")
    return True


# --- Dovecot IMAP ---------------------------------------------------------------------


def _dovecot_conf(proc_dir: Path) -> Path:
    return proc_dir / "dovecot.conf"


def _start_dovecot(proc_dir: Path) -> None:
    if shutil.which("dovecot") is None:
        raise SystemExit("dovecot is missing: apt-get install dovecot-imapd (make deps does it)")
    mail = proc_dir / "mail"
    blocked = [p for p in proc_dir.parents if p.exists() and not p.stat().st_mode & 0o001]
    if blocked:
        raise SystemExit(
            f"Dovecot's unprivileged processes cannot traverse {blocked[0]}; "
            "use a DESKSTREAM_RUN_DIR whose parents are world-executable"
        )
    for sub in ("base", "state", "mail"):
        (proc_dir / sub).mkdir(parents=True, exist_ok=True)
    # Dovecot refuses to touch mail as root: the users live as nobody/nogroup.
    shutil.chown(mail, "nobody", "nogroup")
    (proc_dir / "users").write_text(
        "".join(f"{user}:{{PLAIN}}{pw}::::::\n" for user, pw in IMAP_USERS.items())
    )
    _dovecot_conf(proc_dir).write_text(
        (HERE / "dovecot" / "dovecot.conf")
        .read_text()
        .format(port=IMAP_PORT, dir=proc_dir, mail=mail)
    )
    spawn(proc_dir, ["dovecot", "-F", "-c", str(_dovecot_conf(proc_dir))])


def _stop_dovecot(proc_dir: Path) -> bool:
    if not _alive(proc_dir):
        return terminate(proc_dir)
    subprocess.run(
        ["doveadm", "-c", str(_dovecot_conf(proc_dir)), "stop"],
        capture_output=True,
        check=False,
    )
    terminate(proc_dir)
    return True


def imap_ready() -> bool:
    with socket.create_connection(("127.0.0.1", IMAP_PORT), timeout=1) as sock:
        return sock.recv(64).startswith(b"* OK")


# --- SMTP sink ------------------------------------------------------------------------


def _start_smtp(proc_dir: Path) -> None:
    maildir = proc_dir / "maildir"
    spawn(
        proc_dir,
        [
            str(VENV_BIN / "python"),
            "-m",
            "aiosmtpd",
            "-n",
            "-l",
            f"127.0.0.1:{SMTP_PORT}",
            "-c",
            "aiosmtpd.handlers.Mailbox",
            str(maildir),
        ],
    )


def smtp_ready() -> bool:
    with socket.create_connection(("127.0.0.1", SMTP_PORT), timeout=1) as sock:
        return sock.recv(64).startswith(b"220")


COMPONENTS: dict[str, Component] = {
    c.name: c
    for c in (
        Component("kafka", KAFKA_PORT, _start_kafka, kafka_ready, timeout=90),
        Component("mongo", MONGO_PORT, _start_mongo, mongo_ready),
        Component("imap", IMAP_PORT, _start_dovecot, imap_ready, stop=_stop_dovecot),
        Component("smtp", SMTP_PORT, _start_smtp, smtp_ready),
    )
}


def env_lines() -> dict[str, str]:
    """The connection settings of the local infrastructure, as environment variables."""
    return {
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{KAFKA_PORT}",
        "MONGODB_URI": f"mongodb://127.0.0.1:{MONGO_PORT}",
        "IMAP_HOST": "127.0.0.1",
        "IMAP_PORT": str(IMAP_PORT),
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(SMTP_PORT),
        "SMTP_MAILDIR": str(RUN_DIR / "smtp" / "maildir"),
    }


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"up", "down", "status", "env"}:
        print(__doc__)
        return 2
    action, names = argv[0], argv[1:] or list(COMPONENTS)
    unknown = set(names) - set(COMPONENTS)
    if unknown:
        print(f"unknown component(s): {', '.join(sorted(unknown))}")
        return 2
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    if action == "up":
        for name in names:
            COMPONENTS[name].up()
        (RUN_DIR / "infra.env").write_text("".join(f"{k}={v}\n" for k, v in env_lines().items()))
    elif action == "down":
        for name in reversed(names):
            COMPONENTS[name].down()
    elif action == "env":
        for k, v in env_lines().items():
            print(f"export {k}={v}")
    else:
        for name in names:
            c = COMPONENTS[name]
            state = "up" if _alive(c.dir) and port_open(c.port) else "down"
            print(f"{name}: {state} (127.0.0.1:{c.port})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
