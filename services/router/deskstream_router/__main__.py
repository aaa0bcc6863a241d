"""router: threads, classifies and assigns every inbound message (a Faust worker)."""

from __future__ import annotations

import faust
from deskstream.logs import configure_logging

from deskstream_router.app import create_app, ensure_internal_topics
from deskstream_router.settings import RouterSettings


def main() -> None:
    settings = RouterSettings()
    configure_logging(settings.service_name, settings.log_level)
    app = create_app(settings)
    ensure_internal_topics(app, settings)
    # Faust's worker handles SIGTERM/SIGINT itself: it stops the agents, commits offsets
    # and exits. Our JSON logging stays in place (override_logging=False).
    worker = faust.Worker(app, loglevel=settings.log_level, override_logging=False, quiet=True)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
