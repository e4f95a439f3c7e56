"""The HTTP API for bureaus: FastAPI, versioned under ``/v1``, one bearer API key per tenant.

``create_app(settings)`` builds the application; ``pikfix api`` serves it with uvicorn. The factory
is imported lazily so ``pikfix api`` can prepare the process environment (Prometheus multiprocess
folder) before anything of the app, FastAPI or prometheus_client is imported.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from api.app import create_app

        return create_app
    raise AttributeError(f"module 'api' has no attribute {name!r}")
