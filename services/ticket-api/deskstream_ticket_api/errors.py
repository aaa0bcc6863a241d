"""Typed errors of the service functions, and how the API answers each of them.

Service functions raise these instead of HTTP exceptions, so they stay usable outside a
request (the commands consumer, tests); the app maps them to status codes in one place.
A 422 names the offending field in FastAPI's own `detail` shape, so clients parse one form.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pymongo.errors import ConnectionFailure, PyMongoError

from deskstream_ticket_api.db import Retry


class ApiError(Exception):
    status_code = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"detail": self.message}


class NotFound(ApiError):
    status_code = 404

    def __init__(self, what: str, ident: str) -> None:
        super().__init__(f"{what} {ident!r} not found")


class Conflict(ApiError):
    """The request is valid but clashes with the current state (a lifecycle rule, a duplicate)."""

    status_code = 409


class Invalid(ApiError):
    """A value that passed the schema but not the rules (an unknown team, a critical service)."""

    status_code = 422

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc

    def body(self) -> dict[str, Any]:
        return {"detail": [{"loc": list(self.loc), "msg": self.message, "type": "value_error"}]}


class Unavailable(ApiError):
    """A dependency (Kafka, MongoDB) did not answer in time; the client may retry."""

    status_code = 503


def install_handlers(app: FastAPI) -> None:
    async def handle(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        headers = {"Retry-After": "5"} if isinstance(exc, Unavailable) else None
        return JSONResponse(exc.body(), status_code=exc.status_code, headers=headers)

    async def handle_store(_: Request, exc: Exception) -> JSONResponse:
        # MongoDB away, or a conflict that outlasted the retries: the client may retry.
        if isinstance(exc, ConnectionFailure | Retry) or (
            isinstance(exc, PyMongoError) and exc.has_error_label("TransientTransactionError")
        ):
            return JSONResponse(
                {"detail": "the ticket store is busy or unavailable; retry"},
                status_code=503,
                headers={"Retry-After": "2"},
            )
        raise exc

    app.add_exception_handler(ApiError, handle)
    app.add_exception_handler(PyMongoError, handle_store)
    app.add_exception_handler(Retry, handle_store)
