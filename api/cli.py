"""``pikfix api``: serve the HTTP API with uvicorn (default: 2 worker processes).

Several worker processes share one set of Prometheus figures through prometheus_client's
multiprocess mode: a fresh ``PROMETHEUS_MULTIPROC_DIR`` is made before the workers start, unless
the environment already names one (e.g. a volume in Kubernetes).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from types import SimpleNamespace

DEFAULT_WORKERS = 2


def _prepare_multiprocess_metrics() -> str | None:
    existing = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if existing:
        os.makedirs(existing, exist_ok=True)
        for name in os.listdir(existing):  # figures of a previous run must not be summed in
            if name.endswith(".db"):
                os.unlink(os.path.join(existing, name))
        return None
    path = tempfile.mkdtemp(prefix="pikfix-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


def api_command(args: SimpleNamespace) -> int:
    import uvicorn

    workers = int(getattr(args, "workers", None) or DEFAULT_WORKERS)
    if workers < 1:
        raise SystemExit("error: --workers must be at least 1")
    created = _prepare_multiprocess_metrics() if workers > 1 else None
    try:
        uvicorn.run(
            "api.app:create_app",
            factory=True,
            host=getattr(args, "host", "127.0.0.1"),
            port=int(getattr(args, "port", 8000)),
            workers=workers,
            proxy_headers=True,
            forwarded_allow_ips=os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1"),
            timeout_graceful_shutdown=30,
            log_level=os.environ.get("PIKFIX_LOG_LEVEL", "info").lower(),
        )
    finally:
        if created:
            shutil.rmtree(created, ignore_errors=True)
    return 0


__all__ = ["api_command"]
