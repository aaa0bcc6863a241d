"""ticket-api: REST for agents, admins and portals, the tickets.commands consumer, the outbox relay.

`python -m deskstream_ticket_api` runs all three in one process (uvicorn serves the API;
the lifespan runs the consumer and the relay); `TICKET_API_API_ENABLED`,
`TICKET_API_CONSUMER_ENABLED` and `TICKET_API_RELAY_ENABLED` split them across
deployments. SIGTERM stops the server, finishes the batch in hand and exits 0.
"""

from __future__ import annotations

from deskstream.service import run_fastapi

from deskstream_ticket_api.app import create_app
from deskstream_ticket_api.settings import TicketApiSettings


def main() -> None:
    settings = TicketApiSettings()
    run_fastapi(create_app(settings), settings)


if __name__ == "__main__":
    main()
