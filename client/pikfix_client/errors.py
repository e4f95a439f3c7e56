"""The client's errors: every one carries a message a person can act on, printed as is by the CLI."""

from __future__ import annotations

from typing import Any


class ClientError(Exception):
    """Base of every failure the client reports; ``str(exc)`` says what went wrong and what to do."""


class ApiError(ClientError):
    """The API answered an error: its stable ``code`` (branch on it), HTTP ``status`` and message."""

    def __init__(self, status: int, code: str, message: str, details: Any = None, what: str = "") -> None:
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        prefix = f"{what}: " if what else ""
        super().__init__(f"{prefix}{message} (HTTP {status}, {code})")


class TransferError(ClientError):
    """The API or object store stayed unreachable or kept failing through every retry."""


class StateError(ClientError):
    """The state file cannot be used (unwritable, or it belongs to another API or batch options)."""


class DigestMismatch(ClientError):
    """A downloaded result's SHA-256 differs from the one the service recorded."""
