"""ticket-api: REST for agents, admins and portals; stores tickets in MongoDB."""

from __future__ import annotations

from deskstream.service import run_fastapi

from deskstream_ticket_api.app import create_app
from deskstream_ticket_api.settings import TicketApiSettings


def main() -> None:
    settings = TicketApiSettings()
    run_fastapi(create_app(settings), settings)


if __name__ == "__main__":
    main()
