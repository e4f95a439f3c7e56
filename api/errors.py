"""One error shape for every failure the API reports: ``{"error": {"code", "message"[, "details"]}}``.

Codes are part of the public contract (clients branch on them, not on messages): never rename one,
only add. Every code is registered in ``API_ERRORS`` with its one status and meaning; handlers and raise
sites take the status from there, and docs/api.md's tables are generated from it
(``python -m api.errors --write docs/api.md``), so the documentation cannot disagree with the code.
Input errors reuse the codes of :mod:`pikfix.errors`, so a photo refused at upload and a job that failed
in a worker for the same reason carry the same code. Bad input never becomes a 500: every exception type
a caller can provoke is mapped here, and only genuine bugs reach the generic ``internal_error`` handler.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from db.models import InvalidCursor, InvalidOptions, InvalidTransition, NotFound
from pikfix.errors import ERROR_CODES as INPUT_ERROR_CODES
from pikfix.errors import PikFixInputError
from storage import InvalidKey, StorageUnavailable

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class ErrorCode:
    """One code the API can answer: its HTTP status and what it means, in one line."""

    status: int
    meaning: str


# Input codes that mean "this is not a kind of file we take" (415) rather than "a damaged image" (422).
UNSUPPORTED_MEDIA_CODES = frozenset({"not_an_image", "unsupported_format", "not_an_archive"})


def _input_codes() -> dict[str, ErrorCode]:
    """The codes of ``pikfix.errors``: a photo refused at upload and a job failed in a worker for the same
    reason carry the same code, so a new input code is registered here without being listed twice."""
    return {
        code: ErrorCode(415 if code in UNSUPPORTED_MEDIA_CODES else 422, meaning)
        for code, meaning in INPUT_ERROR_CODES.items()
    }


# Every code an HTTP answer can carry, and its status: the one source for handlers, raise sites, the
# OpenAPI descriptions and the table in docs/api.md (``python -m api.errors --markdown``).
API_ERRORS: dict[str, ErrorCode] = {
    "client_disconnected": ErrorCode(400, "the client closed the connection before the request body ended"),
    "unauthorized": ErrorCode(401, "missing, malformed, unknown or revoked API key"),
    "not_found": ErrorCode(404, "no such route, or no such resource for this tenant (another tenant's ids too)"),
    "report_not_ready": ErrorCode(404, "the batch's report is written once the batch has finished or, "
                                       "cancelled, has no running job left"),
    "result_missing": ErrorCode(404, "the job succeeded but its result is no longer in storage; retry the job"),
    "method_not_allowed": ErrorCode(405, "the path does not take this method; the `Allow` header lists those it takes"),
    "batch_not_open": ErrorCode(409, "the batch was submitted or cancelled and takes no more files"),
    "batch_finished": ErrorCode(409, "the batch has finished; there is nothing left to cancel"),
    "invalid_state": ErrorCode(409, "the resource changed state while the request ran; read it and try again"),
    "job_not_finished": ErrorCode(409, "the job has not succeeded, so it has no result yet"),
    "job_not_retryable": ErrorCode(409, "only a failed job can be retried"),
    "job_not_resendable": ErrorCode(409, "only a queued or running job can be resent"),
    "job_still_running": ErrorCode(409, "the job's worker still reports progress; resend with `force=true` to "
                                        "override"),
    "job_not_cancellable": ErrorCode(409, "only a queued or running job can be cancelled; this one has ended or "
                                          "awaits review"),
    "job_not_awaiting_review": ErrorCode(409, "the job is not awaiting review: it was never gated, or another "
                                              "decision landed first"),
    "presigned_unavailable": ErrorCode(409, "presigned uploads need S3 storage; upload through `/photos` or "
                                            "`/archive`"),
    "file_too_large": ErrorCode(413, "a file is larger than the upload limit"),
    "request_too_large": ErrorCode(413, "the request body, or its number of files, is over the limit"),
    "archive_too_large": ErrorCode(413, "the archive's members add up to more than the uncompressed limit"),
    "archive_too_many_members": ErrorCode(413, "the archive has more members than the limit"),
    "unsupported_media_type": ErrorCode(415, "the body is not of the content type the route takes "
                                             "(`multipart/form-data` for uploads)"),
    "not_an_archive": ErrorCode(415, "the file sent as an archive is not a zip"),
    **_input_codes(),
    "validation_error": ErrorCode(422, "the request is malformed or breaks a rule of the API (`details` lists "
                                       "each problem)"),
    "invalid_cursor": ErrorCode(422, "the pagination cursor was not issued by this API"),
    "unknown_reference": ErrorCode(422, "the named colour reference is not one of the tenant's"),
    "reference_not_colour": ErrorCode(422, "a reference photo has no colour to transfer (details give the "
                                           "measured colourfulness)"),
    "webhook_url_not_allowed": ErrorCode(422, "the webhook URL has credentials or points at a private, loopback "
                                              "or reserved address"),
    "digest_mismatch": ErrorCode(422, "a file's SHA-256 is not the digest the client sent (`Content-Digest` or "
                                      "`digests`); nothing was stored"),
    "idempotency_key_reused": ErrorCode(422, "the `Idempotency-Key` already created a batch from a different "
                                             "body; use a new key for a new batch"),
    "upload_missing": ErrorCode(422, "a file named at submit was not uploaded through its presigned URL"),
    "batch_empty": ErrorCode(422, "the batch has no photos, archives or uploads to submit"),
    "archive_empty": ErrorCode(422, "the archive holds no photos"),
    "bad_archive": ErrorCode(422, "the zip archive cannot be read"),
    "zip_bomb": ErrorCode(422, "the archive's compression ratio is over the limit"),
    "internal_error": ErrorCode(500, "a bug in the service; the request may be retried"),
    "broker_unavailable": ErrorCode(503, "the task queue is not reachable; nothing was kept, retry"),
    "storage_unavailable": ErrorCode(503, "the object store is not reachable; retry"),
    "database_unavailable": ErrorCode(503, "the database is not reachable; retry"),
    "dependency_timeout": ErrorCode(503, "a read got no answer from the database or object store within "
                                         "`PIKFIX_API_READ_TIMEOUT_S`"),
    "not_ready": ErrorCode(503, "`/readyz`: a dependency failed (the body names which)"),
}

# Codes a job can end ``failed`` with (``error.code`` of the job, not an HTTP answer): the input codes,
# plus what only a worker finds out.
JOB_ERRORS: dict[str, str] = {
    **INPUT_ERROR_CODES,
    "input_missing": "the original is no longer in storage",
    "out_of_memory": "the device ran out of memory restoring this photo",
    "time_limit": "the job ran past its time limit",
    "too_many_attempts": "the job was started too many times (its workers kept dying): moved to failed",
    "transient_error_exhausted": "storage or database errors persisted through every retry",
    "skipped_member": "an archive member that is not a photo (the message gives the reason)",
    "archive_empty": "an archive with no photos in it",
    "bad_archive": "an archive that cannot be read",
    "zip_bomb": "an archive whose members inflate past their declared sizes or the ratio limit",
    "archive_too_large": "an archive whose members add up to more than the uncompressed limit",
    "archive_too_many_members": "an archive with more members than the limit",
    "fixity_failed": "storage returned other bytes for the original than were uploaded (its SHA-256 differs); "
                     "nothing was written",
    "rejected_in_review": "a person rejected the result in review (the message holds the note, or the redo's id)",
    "internal_error": "a bug in the service",
}

# The code of each status the framework raises by itself (unknown path, wrong method, body size).
_FRAMEWORK_CODES = {
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
}


def status_of(code: str) -> int:
    """The HTTP status of a registered code; an unregistered code is a bug and raises ``KeyError``."""
    try:
        return API_ERRORS[code].status
    except KeyError:
        raise KeyError(f"error code {code!r} is not in api.errors.API_ERRORS; register it there") from None


class ApiError(Exception):
    """An error the API answers with a registered ``code``; its status comes from ``API_ERRORS``.

    Raise ``ApiError(code, message)``. The older ``ApiError(status, code, message)`` is still taken while
    callers move over, but the status must be the registry's: a disagreement raises at once.
    """

    def __init__(
        self,
        code: str | int,
        message: str,
        *legacy: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if isinstance(code, int):
            given, code, message = code, message, legacy[0]
            if given != status_of(code):
                raise ValueError(f"{code!r} is registered with status {status_of(code)}, not {given}")
        super().__init__(message)
        self.status = status_of(code)
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers


def not_found(what: str = "resource") -> ApiError:
    """404 for a missing id *and* for another tenant's id: the two must be indistinguishable."""
    return ApiError("not_found", f"{what} not found")


def unauthorized(message: str = "missing or invalid API key") -> ApiError:
    return ApiError("unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


def input_error(exc: PikFixInputError, name: str | None = None) -> ApiError:
    """A bad-input error as an answer: 415 (not a kind of file we take) or 422 (a damaged or oversized image)."""
    message = f"{name}: {exc.message}" if name else exc.message
    return ApiError(exc.code, message)


def status_for_code(code: str) -> int:
    """HTTP status of a per-file rejection code, for answers where every file was refused."""
    return status_of(code)


def _description(status: int) -> str:
    codes = ", ".join(f"`{code}`" for code, spec in API_ERRORS.items() if spec.status == status)
    return codes or "error"


ERROR_SCHEMA_REF = "#/components/schemas/ErrorResponse"


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting the JSON error shape for each status a route can answer.

    422 and 503 are always included: FastAPI would otherwise document its own validation-error shape, which
    this API never sends, and any route reading the database can answer 503. The content is spelled out
    (rather than ``model=``) so routes that answer HTML or images still document their errors as JSON;
    ``create_app`` adds the schema to components. Each description lists the registered codes of its status.
    """
    content = {"application/json": {"schema": {"$ref": ERROR_SCHEMA_REF}}}
    return {
        status: {"description": _description(status), "content": content}
        for status in sorted({*statuses, 422, 503})
    }


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return {"error": body}


def error_response(
    code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The JSON answer of a registered code, with the registry's status."""
    return JSONResponse(error_body(code, message, details), status_code=status_of(code), headers=headers)


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Location, message and type of each problem; the offending input is left out (it may be bytes)."""
    return [
        {"loc": [str(part) for part in err.get("loc", ())], "msg": str(err.get("msg", "")), "type": err.get("type")}
        for err in exc.errors()
    ]


# The methods a path is probed for when building a 405's ``Allow`` header.
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route takes at this request's path.

    Starlette's 405 names only the methods of the first route whose path matched, while one path is often
    served by several routes (``GET`` and ``DELETE /v1/references/{id}`` are two), so the router is asked,
    method by method, whether the path would match in full.
    """
    allowed = []
    for method in _METHODS:
        probe = {**request.scope, "method": method}
        if any(route.matches(probe)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return allowed


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.code, exc.message, exc.details, exc.headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = _validation_details(exc)
    first = details[0] if details else {"loc": [], "msg": "invalid request"}
    where = ".".join(first["loc"][1:] or first["loc"]) or "request"
    return error_response("validation_error", f"{where}: {first['msg']}", details)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:
        # The framework's only 400 is a body it could not parse (bytes that are not JSON text): bad input,
        # reported like every other invalid request.
        return error_response("validation_error", f"malformed request body: {exc.detail}")
    code = _FRAMEWORK_CODES.get(exc.status_code)
    if code is None:  # a status no route of this API raises: a bug, answered as one
        log.error("unexpected HTTP %d from the framework on %s %s: %s", exc.status_code, request.method,
                  request.url.path, exc.detail)
        return error_response("internal_error", "internal server error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 404 and message == "Not Found":
        message = "no such route"
    if exc.status_code == 405:
        allowed = allowed_methods(request) or [m.strip() for m in headers.get("Allow", "").split(",") if m.strip()]
        headers["Allow"] = ", ".join(allowed)
        message = f"{request.method} is not allowed here; allowed: {headers['Allow']}"
    return error_response(code, message, headers=headers or None)


async def _db_not_found(_: Request, exc: Exception) -> JSONResponse:
    return error_response("not_found", "resource not found")


async def _invalid_transition(_: Request, exc: Exception) -> JSONResponse:
    return error_response("invalid_state", str(exc))


async def _invalid_options(_: Request, exc: Exception) -> JSONResponse:
    return error_response("validation_error", str(exc))


async def _invalid_cursor(_: Request, exc: Exception) -> JSONResponse:
    return error_response("invalid_cursor", str(exc))


async def _invalid_key(_: Request, exc: Exception) -> JSONResponse:
    # A key built from client input (a file name) that the store refuses: the input is at fault.
    return error_response("validation_error", str(exc))


async def _data_error(request: Request, exc: Exception) -> JSONResponse:
    # The database refused a value (text it cannot hold, a number out of range). Inputs are checked before
    # they get this far, so this is a check that is missing, but the input is still at fault, not the server.
    log.warning("the database refused a value on %s %s: %s", request.method, request.url.path, exc)
    return error_response("validation_error", "a value in the request cannot be stored")


async def _input_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PikFixInputError)
    err = input_error(exc)
    return error_response(err.code, err.message)


async def _storage_unavailable(_: Request, exc: Exception) -> JSONResponse:
    log.warning("object store unavailable: %s", exc)
    return error_response("storage_unavailable", "the object store is not reachable; try again later",
                          headers={"Retry-After": "5"})


async def _database_unavailable(_: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable: %s", exc)
    return error_response("database_unavailable", "the database is not reachable; try again later",
                          headers={"Retry-After": "5"})


async def _client_disconnect(request: Request, exc: Exception) -> JSONResponse:
    # The client went away mid-upload: nobody will read this answer, and it is not a server fault.
    log.info("client disconnected during %s %s", request.method, request.url.path)
    return error_response("client_disconnected", "the client closed the connection before the body ended")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response("internal_error", "internal server error")


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
    app.add_exception_handler(DataError, _data_error)
    app.add_exception_handler(ClientDisconnect, _client_disconnect)
    app.add_exception_handler(Exception, _unexpected)


# --------------------------------------------------------------------------- docs/api.md


TABLE_BEGIN = "<!-- errors:begin (generated by `python -m api.errors --write docs/api.md`; do not edit) -->"
TABLE_END = "<!-- errors:end -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_tables() -> str:
    """The error tables of docs/api.md: every HTTP code with its status, then every job failure code."""
    lines = ["| code | status | meaning |", "|---|---|---|"]
    for code, spec in sorted(API_ERRORS.items(), key=lambda item: (item[1].status, item[0])):
        lines.append(f"| `{code}` | {spec.status} | {_cell(spec.meaning)} |")
    lines += [
        "",
        "A job that fails keeps one of these codes in `error.code` (the input codes are the same as at upload):",
        "",
        "| job error code | meaning |",
        "|---|---|",
    ]
    lines += [f"| `{code}` | {_cell(meaning)} |" for code, meaning in sorted(JOB_ERRORS.items())]
    return "\n".join(lines)


def with_tables(document: str) -> str:
    """``document`` with the text between the markers replaced by :func:`markdown_tables`."""
    head, sep, rest = document.partition(TABLE_BEGIN)
    _, sep_end, tail = rest.partition(TABLE_END)
    if not sep or not sep_end:
        raise ValueError("the document has no error table markers")
    return f"{head}{TABLE_BEGIN}\n{markdown_tables()}\n{TABLE_END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m api.errors", description="The API's error registry.")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--markdown", action="store_true", help="print the error tables")
    group.add_argument("--write", metavar="DOC", help="rewrite the tables between the markers of DOC")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown_tables())
        return 0
    path = Path(args.write)
    path.write_text(with_tables(path.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


__all__ = [
    "API_ERRORS",
    "ApiError",
    "ErrorCode",
    "JOB_ERRORS",
    "allowed_methods",
    "error_body",
    "error_response",
    "error_responses",
    "input_error",
    "install_error_handlers",
    "markdown_tables",
    "not_found",
    "status_for_code",
    "status_of",
    "unauthorized",
    "with_tables",
]


if __name__ == "__main__":
    raise SystemExit(main())
