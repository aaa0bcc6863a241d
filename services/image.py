"""Entry point and health check of the container image, for whichever service it carries.

One recipe (services/Dockerfile) builds every service: its build argument SERVICE names a
folder under services/. The folder, its distribution (`deskstream-<service>`), its package
(`deskstream_<service>`) and its console script (`deskstream-<service>`) share that name.
The env prefix and the port are not given to the build again: `prepare` reads them from
the service's settings class, so the image cannot disagree with the code.

    python image.py prepare SERVICE SOURCE_DIR OUT_DIR   build time: check, write service.json
    python image.py run [ARG...]                         ENTRYPOINT: exec the console script
    python image.py healthz                              HEALTHCHECK: GET /healthz

`run` replaces itself with the service (os.execv), so the service is PID 1 and receives
SIGTERM directly. It listens on all interfaces unless `<PREFIX>HTTP_HOST` says otherwise
(the settings default, 127.0.0.1, is right for a laptop and wrong in a container).
"""

from __future__ import annotations

import importlib
import importlib.resources
import inspect
import json
import os
import shutil
import sys
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deskstream.settings import ServiceSettings

SPEC_FILE = "service.json"


@dataclass(frozen=True)
class ImageSpec:
    """What one image runs, recorded at build time."""

    service: str
    script: str
    env_prefix: str
    http_port: int


def package_of(service: str) -> str:
    return "deskstream_" + service.replace("-", "_")


def settings_class(service: str) -> type[ServiceSettings]:
    """The one `ServiceSettings` subclass that `deskstream_<service>.settings` defines."""
    from deskstream.settings import ServiceSettings

    module = importlib.import_module(f"{package_of(service)}.settings")
    classes = [
        cls
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, ServiceSettings) and cls.__module__ == module.__name__
    ]
    if len(classes) != 1:
        raise SystemExit(f"{module.__name__} defines {len(classes)} settings classes, not one")
    return classes[0]


def describe(service: str) -> ImageSpec:
    """The service's console script, env prefix and default port, from its settings class."""
    cls = settings_class(service)
    return ImageSpec(
        service=service,
        script=f"deskstream-{service}",
        env_prefix=str(cls.model_config.get("env_prefix", "")),
        http_port=int(cls.model_fields["http_port"].default),
    )


def missing_package_data(service: str, source_dir: Path) -> list[str]:
    """Files of the source package (other than Python code) that the installed one lacks."""
    package = package_of(service)
    source = source_dir / package
    installed = Path(str(importlib.resources.files(package)))
    missing = []
    for path in sorted(source.rglob("*")):
        if not path.is_file() or path.suffix in {".py", ".pyc"} or "__pycache__" in path.parts:
            continue
        relative = path.relative_to(source)
        if not (installed / relative).is_file():
            missing.append(str(relative))
    return missing


def prepare(service: str, source_dir: Path, out_dir: Path) -> ImageSpec:
    """Build time: fail on a broken install, else record what the image runs."""
    spec = describe(service)
    if shutil.which(spec.script, path=str(Path(sys.executable).parent)) is None:
        raise SystemExit(f"console script {spec.script} is not installed")
    missing = missing_package_data(service, source_dir)
    if missing:
        raise SystemExit(f"the installed {package_of(service)} lacks {missing}")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SPEC_FILE).write_text(json.dumps(asdict(spec), indent=2) + "\n")
    return spec


def load(spec_dir: Path) -> ImageSpec:
    return ImageSpec(**json.loads((spec_dir / SPEC_FILE).read_text()))


def run(spec: ImageSpec, args: list[str]) -> None:
    os.environ.setdefault(f"{spec.env_prefix}HTTP_HOST", "0.0.0.0")
    script = shutil.which(spec.script, path=str(Path(sys.executable).parent)) or spec.script
    os.execvp(script, [spec.script, *args])  # noqa: S606 (the point: become the service)


def healthz(spec: ImageSpec, timeout_s: float = 4.0) -> int:
    port = os.environ.get(f"{spec.env_prefix}HTTP_PORT") or str(spec.http_port)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout_s) as r:
            return 0 if r.status == 200 else 1
    except (OSError, urllib.error.URLError) as exc:
        print(f"healthz on port {port}: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str]) -> int:
    here = Path(__file__).resolve().parent
    match argv:
        case ["prepare", service, source_dir, out_dir]:
            print(json.dumps(asdict(prepare(service, Path(source_dir), Path(out_dir)))))
            return 0
        case ["run", *args]:
            run(load(here), args)
            return 1  # not reached: run() replaces the process
        case ["healthz"]:
            return healthz(load(here))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
