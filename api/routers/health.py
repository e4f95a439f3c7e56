"""Liveness and readiness probes.

``/healthz`` says the process serves requests and touches nothing else (a liveness probe must not
restart the API because the database is down). ``/readyz`` checks the database, the broker and the
object store in parallel, each with a short timeout, and answers 503 naming what failed; a dependency
that hangs cannot make the probe hang, because each check runs in a thread the probe stops waiting for.
The object store's check also runs once at start-up, so a missed setup step (no bucket) is in the log
before the first request fails on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import JSONResponse

from api.deps import ApiContext, get_context
from api.errors import status_of
from api.schemas import Check, ErrorInfo, Health, Readiness
from db import repository as repo
from storage import StorageError

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 2.0
# Each dependency has its own small pool, outside the request thread pool: a hung dependency must
# neither starve the API's handlers nor make the healthy ones look failed. While a dependency's earlier
# checks are still hanging, new probes report it failed at once instead of queueing behind them.
_POOL_SIZE = 2
_POOLS: dict[str, ThreadPoolExecutor] = {}
_IN_FLIGHT: dict[str, int] = {}
_LOCK = threading.Lock()


def _pool(name: str) -> ThreadPoolExecutor:
    with _LOCK:
        if name not in _POOLS:
            _POOLS[name] = ThreadPoolExecutor(max_workers=_POOL_SIZE, thread_name_prefix=f"readyz-{name}")
        return _POOLS[name]


async def _log_storage_check(ctx: ApiContext) -> None:
    check = await _run_check("storage", _check_storage, ctx)
    if check.ok:
        log.info("object store: %s", check.detail)
    else:
        log.error("object store: %s", check.detail)


@contextlib.asynccontextmanager
async def _startup_checks(app: FastAPI) -> AsyncIterator[None]:
    """Check the object store in the background: start-up neither waits for it nor fails on it."""
    task = asyncio.create_task(_log_storage_check(app.state.ctx))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


router = APIRouter(tags=["health"], lifespan=_startup_checks)


@router.get("/healthz", response_model=Health, summary="Liveness: the process is up")
def healthz() -> Health:
    return Health()


def _check_database(ctx: ApiContext) -> str:
    with ctx.session(readonly=True) as s:
        repo.ping(s)
    return "SELECT 1 answered"


def _check_broker(ctx: ApiContext) -> str:
    url = ctx.settings.broker_url
    if not url:
        return "no broker configured: tasks run in-process (eager)"
    if url.startswith(("redis://", "rediss://")):
        import redis

        client = redis.Redis.from_url(url, socket_timeout=CHECK_TIMEOUT_S, socket_connect_timeout=CHECK_TIMEOUT_S)
        try:
            if not client.ping():
                raise ConnectionError("PING was not answered")
        finally:
            client.close()
        return "redis PING answered"
    from kombu import Connection

    with Connection(url, connect_timeout=CHECK_TIMEOUT_S) as conn:
        conn.ensure_connection(max_retries=1, timeout=CHECK_TIMEOUT_S)
    return "broker connection opened"


class _Unready(Exception):
    """A check's failure whose message is already the whole explanation (shown without a class name)."""


def _check_storage(ctx: ApiContext) -> str:
    try:
        ctx.store.check()
    except StorageError as exc:
        raise _Unready(str(exc)) from exc
    return f"{ctx.store.url} answered"


def _tracked(name: str, check: Callable[[ApiContext], str], ctx: ApiContext) -> str:
    try:
        return check(ctx)
    finally:
        with _LOCK:
            _IN_FLIGHT[name] -= 1


async def _run_check(name: str, check: Callable[[ApiContext], str], ctx: ApiContext) -> Check:
    start = time.perf_counter()
    loop = asyncio.get_running_loop()
    with _LOCK:
        busy = _IN_FLIGHT.get(name, 0) >= _POOL_SIZE
        if not busy:
            _IN_FLIGHT[name] = _IN_FLIGHT.get(name, 0) + 1
    if busy:
        return Check(ok=False, detail="earlier checks are still waiting for an answer", duration_ms=0.0)
    try:
        detail = await asyncio.wait_for(
            loop.run_in_executor(_pool(name), _tracked, name, check, ctx), timeout=CHECK_TIMEOUT_S
        )
        ok = True
    except TimeoutError:
        ok, detail = False, f"no answer within {CHECK_TIMEOUT_S:.0f}s"
    except _Unready as exc:
        ok, detail = False, str(exc)[:300]
    except Exception as exc:
        ok, detail = False, f"{type(exc).__name__}: {exc}".strip()[:300]
    return Check(ok=ok, detail=detail, duration_ms=round((time.perf_counter() - start) * 1000, 1))


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "a dependency failed"}},
    summary="Readiness: database, broker and object store answer",
)
async def readyz(ctx: ApiContext = Depends(get_context)) -> JSONResponse:
    names = ("database", "broker", "storage")
    results = await asyncio.gather(
        _run_check("database", _check_database, ctx),
        _run_check("broker", _check_broker, ctx),
        _run_check("storage", _check_storage, ctx),
    )
    checks = dict(zip(names, results, strict=True))
    failed = [name for name, check in checks.items() if not check.ok]
    if not failed:
        return JSONResponse(Readiness(status="ready", checks=checks).model_dump(mode="json"))
    error = ErrorInfo(code="not_ready", message=f"not ready: {', '.join(failed)} failed", details=failed)
    body = Readiness(status="unavailable", checks=checks, error=error)
    return JSONResponse(body.model_dump(mode="json", exclude_none=False), status_code=status_of("not_ready"))
