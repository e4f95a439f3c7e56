"""pikfix-client: hand a folder of scans to a pikfix service, follow the batch, fetch a BagIt bag.

``Client(url, key).submit(folder)``, ``.status(batch_id)`` and ``.fetch(batch_id, out)`` return typed
results; the ``pikfix-client`` command runs the same functions. Nothing here imports torch, numpy or
the service's packages: it installs on any PC with Python.
"""

from __future__ import annotations

__version__ = "0.1.0"

from pikfix_client.client import Client  # noqa: E402
from pikfix_client.errors import ApiError, ClientError, DigestMismatch, StateError, TransferError  # noqa: E402
from pikfix_client.results import (  # noqa: E402
    BatchStatus,
    Failure,
    FetchResult,
    Rejection,
    Skipped,
    SubmitResult,
)

__all__ = [
    "ApiError",
    "BatchStatus",
    "Client",
    "ClientError",
    "DigestMismatch",
    "Failure",
    "FetchResult",
    "Rejection",
    "Skipped",
    "StateError",
    "SubmitResult",
    "TransferError",
    "__version__",
]
