"""One error shape for every failure the API reports: ``{"error": {"code", "message"[, "details"]}}``.

Codes are part of the public contract (clients branch on them, not on messages): never rename one,
only add. Input errors reuse the codes of :mod:`pikfix.errors`, so a photo refused at upload and a
job that failed in a worker for the same reason carry the same code. Bad input never becomes a 500:
every exception type a caller can provoke is mapped here, and only genuine bugs reach the generic
``internal_error`` handler.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from db.models import InvalidCursor, InvalidOptions, InvalidTransition, NotFound
from pikfix.errors import PikFixInputError
from pikfix.storage import InvalidKey, StorageUnavailable

log = logging.getLogger(__name__)

# Input codes that mean "this is not a kind of file we take" (415) rather than "a damaged image" (422).
UNSUPPORTED_MEDIA_CODES = frozenset({"not_an_image", "unsupported_format", "not_an_archive"})

# Codes for the statuses Starlette/FastAPI raise themselves (unknown path, wrong method, ...).
_HTTP_STATUS_CODES = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    503: "service_unavailable",
}


class ApiError(Exception):
    """An error the API answers with ``status`` and a stable ``code``; raise it from any handler."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers


def not_found(what: str = "resource") -> ApiError:
    """404 for a missing id *and* for another tenant's id: the two must be indistinguishable."""
    return ApiError(404, "not_found", f"{what} not found")


def unauthorized(message: str = "missing or invalid API key") -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


def input_error(exc: PikFixInputError, name: str | None = None) -> ApiError:
    """Map a bad-input error to 415 (not a kind of file we take) or 422 (a damaged or oversized image)."""
    status = 415 if exc.code in UNSUPPORTED_MEDIA_CODES else 422
    message = f"{name}: {exc.message}" if name else exc.message
    return ApiError(status, exc.code, message)


def status_for_code(code: str) -> int:
    """HTTP status of a per-file rejection code, for answers where every file was refused."""
    if code in UNSUPPORTED_MEDIA_CODES:
        return 415
    if code == "file_too_large":
        return 413
    return 422


_DESCRIPTIONS = {
    401: "missing or invalid API key (code `unauthorized`)",
    404: "no such resource for this tenant (code `not_found`)",
    409: "the resource is in a state that does not allow this",
    413: "a file or the request is too large (`file_too_large`, `request_too_large`)",
    415: "not a kind of file this route takes (`not_an_image`, `unsupported_format`, ...)",
    422: "invalid request or damaged file (`validation_error`, `truncated_image`, `too_many_pixels`, ...)",
    503: "a dependency (database, object store, broker) is not reachable; retry later",
}


ERROR_SCHEMA_REF = "#/components/schemas/ErrorResponse"


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting the JSON error shape for each status a route can answer.

    422 and 503 are always included: FastAPI would otherwise document its own validation-error shape, which
    this API never sends, and any route reading the database can answer 503. The content is spelled out (rather than ``model=``) so routes that answer
    HTML or images still document their errors as JSON; ``create_app`` adds the schema to components.
    """
    content = {"application/json": {"schema": {"$ref": ERROR_SCHEMA_REF}}}
    return {
        status: {"description": _DESCRIPTIONS.get(status, "error"), "content": content}
        for status in sorted({*statuses, 422, 503})
    }


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return {"error": body}


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, message, details), status_code=status, headers=headers)


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Location, message and type of each problem; the offending input is left out (it may be bytes)."""
    return [
        {"loc": [str(part) for part in err.get("loc", ())], "msg": str(err.get("msg", "")), "type": err.get("type")}
        for err in exc.errors()
    ]


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = _validation_details(exc)
    first = details[0] if details else {"loc": [], "msg": "invalid request"}
    where = ".".join(first["loc"][1:] or first["loc"]) or "request"
    return error_response(422, "validation_error", f"{where}: {first['msg']}", details)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:
        # The framework's only 400 is a body it could not parse (bytes that are not JSON text): bad input,
        # reported like every other invalid request.
        return error_response(422, "validation_error", f"malformed request body: {exc.detail}")
    code = _HTTP_STATUS_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    if exc.status_code == 404 and message == "Not Found":
        message = "no such route"
    return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))


async def _db_not_found(_: Request, exc: Exception) -> JSONResponse:
    return error_response(404, "not_found", "resource not found")


async def _invalid_transition(_: Request, exc: Exception) -> JSONResponse:
    return error_response(409, "invalid_state", str(exc))


async def _invalid_options(_: Request, exc: Exception) -> JSONResponse:
    return error_response(422, "validation_error", str(exc))


async def _invalid_cursor(_: Request, exc: Exception) -> JSONResponse:
    return error_response(422, "invalid_cursor", str(exc))


async def _invalid_key(_: Request, exc: Exception) -> JSONResponse:
    # A key built from client input (a file name) that the store refuses: the input is at fault.
    return error_response(422, "validation_error", str(exc))


async def _input_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PikFixInputError)
    err = input_error(exc)
    return error_response(err.status, err.code, err.message)


async def _storage_unavailable(_: Request, exc: Exception) -> JSONResponse:
    log.warning("object store unavailable: %s", exc)
    return error_response(503, "storage_unavailable", "the object store is not reachable; try again later",
                          headers={"Retry-After": "5"})


async def _database_unavailable(_: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable: %s", exc)
    return error_response(503, "database_unavailable", "the database is not reachable; try again later",
                          headers={"Retry-After": "5"})


async def _client_disconnect(request: Request, exc: Exception) -> JSONResponse:
    # The client went away mid-upload: nobody will read this answer, and it is not a server fault.
    log.info("client disconnected during %s %s", request.method, request.url.path)
    return error_response(400, "client_disconnected", "the client closed the connection before the body ended")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(NotFound, _db_not_found)
    app.add_exception_handler(InvalidTransition, _invalid_transition)
    app.add_exception_handler(InvalidCursor, _invalid_cursor)
    app.add_exception_handler(InvalidOptions, _invalid_options)
    app.add_exception_handler(InvalidKey, _invalid_key)
    app.add_exception_handler(PikFixInputError, _input_error)
    app.add_exception_handler(StorageUnavailable, _storage_unavailable)
    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_exception_handler(PoolTimeout, _database_unavailable)
    app.add_exception_handler(ClientDisconnect, _client_disconnect)
    app.add_exception_handler(Exception, _unexpected)


__all__ = [
    "ApiError",
    "error_body",
    "error_response",
    "error_responses",
    "input_error",
    "install_error_handlers",
    "not_found",
    "status_for_code",
    "unauthorized",
]
