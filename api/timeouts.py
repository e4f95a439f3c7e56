"""A time limit on reads: a GET that has not started its answer within the limit gets a 503.

A database or object store that accepts connections but never answers would otherwise hang the client
(server-side statement timeouts never fire when the query never arrives). The limit covers only the time
to the first response byte, so a long download, once started, is never cut. The handler's thread may
still finish in the background; the client has its answer.
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.uploads import send_error

EXEMPT_PATHS = ("/healthz", "/readyz", "/metrics")  # they bound their own checks


def _consume(task: asyncio.Future) -> None:
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.exception()


class ReadRequestTimeout:
    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD") or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        started = asyncio.Event()
        timed_out = False

        async def tracking_send(message: Message) -> None:
            if timed_out:
                return  # the client already has its 503; a late answer goes nowhere
            if message["type"] == "http.response.start":
                started.set()
            await send(message)

        handler = asyncio.ensure_future(self.app(scope, receive, tracking_send))
        waiter = asyncio.ensure_future(started.wait())
        done, _ = await asyncio.wait({handler, waiter}, timeout=self.seconds, return_when=asyncio.FIRST_COMPLETED)
        if not done:
            timed_out = True
            waiter.cancel()
            # Not awaited: a handler blocked in a worker thread cannot be interrupted, only abandoned.
            handler.cancel()
            handler.add_done_callback(_consume)
            await send_error(send, "dependency_timeout",
                             f"no answer within {self.seconds:.0f}s: the database or object store is not responding")
            return
        waiter.cancel()
        await handler
