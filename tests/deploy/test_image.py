"""The one image recipe (services/Dockerfile) and its entry point (services/image.py)."""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services import image
from tests.conftest import free_port
from tests.deploy import image_checks, readers

VENV_BIN = Path(sys.executable).parent


def test_dockerfile_is_small_non_root_pinned_healthchecked_and_locked() -> None:
    assert image_checks.dockerfile_problems() == []


BROKEN_DOCKERFILES: dict[str, tuple[Callable[[str], str], str]] = {
    "floating base": (
        lambda t: t.replace("python:3.11.14-slim-trixie", "python:3.11-slim"),
        "is not pinned",
    ),
    "full-size base": (
        lambda t: t.replace("python:3.11.14-slim-trixie", "python:3.11.14-trixie"),
        "not a small",
    ),
    "runs as root": (lambda t: t.replace("USER 10001:10001", "USER root"), "non-root USER"),
    "no health check": (
        lambda t: t.replace("HEALTHCHECK --interval", "# HEALTHCHECK --interval").replace(
            '    CMD ["python", "/app/service/image.py", "healthz"]', ""
        ),
        "no HEALTHCHECK",
    ),
    "not from the lock": (lambda t: t.replace("uv sync --frozen", "uv sync"), "uv.lock"),
    "a member's manifest left out": (
        lambda t: t.replace("COPY services/router/pyproject.toml services/router/\n", ""),
        "services/router is not copied",
    ),
    "a file the context lacks": (
        lambda t: t.replace(
            "COPY services/image.py /app/service/image.py",
            "COPY services/router/README.md /app/service/README.md",
        ),
        ".dockerignore keeps it out",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN_DOCKERFILES))
def test_a_broken_dockerfile_is_reported(tmp_path: Path, case: str) -> None:
    edit, expected = BROKEN_DOCKERFILES[case]
    original = image_checks.DOCKERFILE.read_text()
    broken = tmp_path / "Dockerfile"
    broken.write_text(edit(original))
    assert broken.read_text() != original, "the edit did not apply"
    problems = image_checks.dockerfile_problems(broken)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize("service", readers.service_names())
def test_image_spec_is_read_from_the_service(tmp_path: Path, service: str) -> None:
    spec = image.prepare(service, readers.SERVICES / service, tmp_path)
    cls = image.settings_class(service)
    assert spec.env_prefix == cls.model_config["env_prefix"]
    assert spec.http_port == cls.model_fields["http_port"].default
    assert (VENV_BIN / spec.script).is_file()
    assert image.load(tmp_path) == spec


def test_prepare_fails_when_the_install_lacks_package_data(tmp_path: Path) -> None:
    source = tmp_path / "router"
    shutil.copytree(readers.SERVICES / "router" / "deskstream_router", source / "deskstream_router")
    (source / "deskstream_router" / "rules" / "extra.toml").write_text("")
    assert image.missing_package_data("router", source) == ["rules/extra.toml"]
    with pytest.raises(SystemExit, match=r"lacks \['rules/extra.toml'\]"):
        image.prepare("router", source, tmp_path / "out")


def _image_dir(tmp_path: Path, spec: image.ImageSpec) -> Path:
    """image.py as the image has it: beside the service.json that `prepare` wrote."""
    shutil.copy(Path(image.__file__), tmp_path / "image.py")
    (tmp_path / image.SPEC_FILE).write_text(json.dumps(spec.__dict__))
    return tmp_path / "image.py"


def test_run_becomes_the_service_and_listens_on_all_interfaces(tmp_path: Path) -> None:
    entry = _image_dir(tmp_path, image.ImageSpec("demo", "env", "DEMO_", 8099))
    out = subprocess.run(
        [sys.executable, str(entry), "run"],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "DEMO_HTTP_HOST=0.0.0.0" in out.splitlines()
    out = subprocess.run(
        [sys.executable, str(entry), "run"],
        env={"PATH": "/usr/bin:/bin", "DEMO_HTTP_HOST": "127.0.0.1"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "DEMO_HTTP_HOST=127.0.0.1" in out.splitlines()


@pytest.fixture
def healthz_server() -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def test_healthz_asks_the_service_port(
    tmp_path: Path, healthz_server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = image.ImageSpec("demo", "demo", "DEMO_", healthz_server)
    monkeypatch.delenv("DEMO_HTTP_PORT", raising=False)
    assert image.healthz(spec) == 0
    monkeypatch.setenv("DEMO_HTTP_PORT", str(free_port()))  # the operator moved the port
    assert image.healthz(spec, timeout_s=1) == 1
    entry = _image_dir(tmp_path, spec)
    assert subprocess.run([sys.executable, str(entry), "healthz"], check=False).returncode == 1
    monkeypatch.setenv("DEMO_HTTP_PORT", str(healthz_server))
    assert subprocess.run([sys.executable, str(entry), "healthz"], check=False).returncode == 0
