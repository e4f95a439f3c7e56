"""Dependencies of the route handlers: the app's context (settings, database, store, task sending)
and the caller's tenant, resolved from ``Authorization: Bearer <api key>``.

Database work happens in short ``ctx.session()`` blocks inside handlers rather than in one session
per request: tasks must only be sent after the rows they refer to are committed, and on SQLite a
thread may not open a second write transaction while its first is open (in eager mode the task
runs right there, in the request's thread, with sessions of its own).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.errors import ApiError, not_found, unauthorized
from api.prometheus import ApiMetrics
from db import repository as repo
from db.session import session_scope
from service.settings import Settings
from storage import ObjectStore
from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)

_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

# Eager mode: how many metering rounds one request may run (each round sends up to the tenant's backlog).
EAGER_DISPATCH_ROUNDS = 1000


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: every query a handler makes is scoped by ``tenant_id``."""

    tenant_id: str
    tenant_name: str
    key_prefix: str | None = None

    @property
    def actor(self) -> str:
        """Who acts, as events record it: ``api:<key prefix>`` (the prefix is public; the key is not)."""
        return f"api:{self.key_prefix or 'unknown'}"


class ApiContext:
    """Per-app state: one per ``create_app`` call, so tests can run apps with different settings."""

    def __init__(self, settings: Settings, runtime: WorkerRuntime) -> None:
        self.settings = settings
        self.runtime = runtime
        self.database_url = settings.resolved_database_url
        self.metrics = ApiMetrics(self.database_url, settings.broker_url)

    @property
    def eager(self) -> bool:
        return self.settings.eager

    @cached_property
    def store(self) -> ObjectStore:
        return self.runtime.store

    @contextmanager
    def session(self, readonly: bool = False) -> Iterator[Session]:
        """A transaction on the configured database, committed when the block ends normally."""
        with session_scope(self.database_url, readonly=readonly) as s:
            yield s

    # -- sending work after commit ---------------------------------------------------------------

    def dispatch(self, tenant_id: str, *, must_send: str | None = None) -> int:
        """Meter the tenant's committed queued jobs into the broker.

        If the broker is down the jobs stay queued (unsent) in the database and the maintenance task
        sends them within ``maintenance_interval_s`` of its return; the request still succeeds. With
        ``must_send`` (a single-photo upload) that job is withdrawn instead and the client gets 503
        ``broker_unavailable`` to retry, unless it was sent meanwhile. In eager mode the jobs run here
        and now, and batches whose jobs are all done are finished (report, webhook) because no beat
        process does it.
        """
        from workers.dispatch import dispatch_tenant

        sent = 0
        try:
            for _ in range(EAGER_DISPATCH_ROUNDS if self.eager else 1):
                n = dispatch_tenant(self.runtime, tenant_id)
                sent += n
                if n == 0:
                    break
        except Exception as exc:
            log.exception("sending jobs of tenant %s failed; the maintenance task will send them", tenant_id)
            if must_send and not self.eager:
                with self.session() as s:
                    withdrawn = repo.forget_unsent_job(s, must_send)
                if withdrawn:
                    raise ApiError("broker_unavailable", "the task queue is not reachable; try again later",
                                   headers={"Retry-After": "5"}) from exc
        if self.eager:
            self.finish_batches()
        return sent

    def finish_batches(self) -> None:
        """Eager mode only: what the beat task does in the distributed mode."""
        from workers.maintenance import finish_batches

        try:
            finish_batches.apply()
        except Exception:
            log.exception("finishing batches failed")

    def send_index(self, reference_ids: list[str], *, strict: bool = False) -> None:
        """Index freshly added references (their retrieval descriptor).

        With ``strict`` a broker outage answers 503: uploading the same photos again is idempotent
        and sends the task again. Otherwise (the reference came with a job, which is already
        committed and must not be duplicated by a client retry) the failure is only logged.
        """
        from workers.tasks import index_reference

        for ref_id in reference_ids:
            try:
                index_reference.apply_async(args=[ref_id])
            except Exception as exc:
                log.exception("indexing reference %s failed", ref_id)
                if strict and self.eager:  # the task ran here and broke: a bug, not an outage
                    raise
                if strict:
                    raise ApiError("broker_unavailable", "the task queue is not reachable; try again later",
                                   headers={"Retry-After": "5"}) from exc

    def send_ingest(self, archive_id: str, *, strict: bool = True) -> None:
        """Send an accepted archive's ingest task.

        The archive row is committed first. With ``strict``, if the broker refuses, the row is dropped
        again (while no task was sent nothing else can have touched it) and the client gets 503 to
        retry; if the drop fails too, or without ``strict`` (the archive came with a submit that has
        committed), the row stays pending and the maintenance task sends the ingest within a minute.
        """
        from workers.tasks import ingest_archive

        try:
            ingest_archive.apply_async(args=[archive_id])
        except Exception as exc:
            if self.eager:  # the task ran here: an archive's own problems are recorded by it, so this is a bug
                raise
            log.exception("sending the ingest task of archive %s failed", archive_id)
            if not strict:
                return
            try:
                with self.session() as s:
                    repo.forget_unsent_archive(s, archive_id)
            except Exception:
                log.exception("archive %s stays pending; the maintenance task will send it", archive_id)
                return
            raise ApiError("broker_unavailable", "the task queue is not reachable; try again later",
                           headers={"Retry-After": "5"}) from exc
        with self.session() as s:
            repo.mark_archives_sent(s, [archive_id])
        if self.eager:
            self.finish_batches()


def checked_id(value: str, what: str) -> str:
    """A path id, or 404: a malformed id names nothing, and must not reach the database as odd text."""
    if not _ID_RE.match(value or ""):
        raise not_found(what)
    return value


def _key_prefix(plaintext: str) -> str | None:
    """The public prefix of a ``pk_<prefix>_<secret>`` key."""
    parts = plaintext.split("_", 2)
    return parts[1] if len(parts) == 3 else None


def get_context(request: Request) -> ApiContext:
    return request.app.state.ctx


_bearer = HTTPBearer(auto_error=False, description="an API key: `Authorization: Bearer pk_...`")


def require_tenant(
    credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
    ctx: ApiContext = Depends(get_context),
) -> Principal:
    """401 unless the request carries a valid, unrevoked API key."""
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise unauthorized()
    with ctx.session() as s:
        tenant = repo.authenticate(s, credentials.credentials.strip())
        if tenant is None:
            raise unauthorized()
        principal = Principal(tenant_id=tenant.id, tenant_name=tenant.name,
                              key_prefix=_key_prefix(credentials.credentials.strip()))
    return principal


__all__ = ["ApiContext", "Principal", "checked_id", "get_context", "require_tenant"]
