"""The database layer: SQLAlchemy 2.x models, Alembic migrations and every query the service runs.

``from db import session_scope, claim_job, …`` is the whole interface for ``api/`` and
``workers/``. Works on PostgreSQL (distributed mode) and SQLite (the embedded default); the schema
is created only by the migrations (``pikfix db upgrade`` or :func:`db.migrate.upgrade`).
"""

from __future__ import annotations

from db.archives import *  # noqa: F403  (each query module lists its public functions in __all__)
from db.archives import __all__ as _archives
from db.batches import *  # noqa: F403
from db.batches import __all__ as _batches
from db.jobs import *  # noqa: F403
from db.jobs import __all__ as _jobs
from db.models import (
    JOB_ACTIVE,
    JOB_STATUSES,
    JOB_TERMINAL,
    TOO_MANY_ATTEMPTS,
    ApiKey,
    Batch,
    DatabaseError,
    InvalidCursor,
    InvalidOptions,
    InvalidTransition,
    Job,
    JobEvent,
    JobReference,
    NotFound,
    QualityMetric,
    Reference,
    Tenant,
    TenantExists,
    utcnow,
)
from db.references import *  # noqa: F403
from db.references import __all__ as _references
from db.session import dispose_engine, dispose_engines, get_engine, make_sessionmaker, session_scope
from db.tenants import *  # noqa: F403
from db.tenants import __all__ as _tenants
from db.workflow import *  # noqa: F403
from db.workflow import __all__ as _workflow

__all__ = [
    "JOB_ACTIVE",
    "JOB_STATUSES",
    "JOB_TERMINAL",
    "TOO_MANY_ATTEMPTS",
    "ApiKey",
    "Batch",
    "DatabaseError",
    "InvalidCursor",
    "InvalidOptions",
    "InvalidTransition",
    "Job",
    "JobEvent",
    "JobReference",
    "NotFound",
    "QualityMetric",
    "Reference",
    "Tenant",
    "TenantExists",
    "dispose_engine",
    "dispose_engines",
    "get_engine",
    "make_sessionmaker",
    "session_scope",
    "utcnow",
    *_archives,
    *_batches,
    *_jobs,
    *_references,
    *_tenants,
    *_workflow,
]
