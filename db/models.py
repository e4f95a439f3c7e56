"""The schema as SQLAlchemy 2.x models, plus the vocabulary shared by every query module.

The tables are created only by the Alembic migrations in ``db/migrations``; this metadata is the
reference those migrations are checked against (tests compare them with ``compare_metadata``).
Statuses are plain strings guarded by CHECK constraints rather than database enums, so adding a
status is an ordinary migration on both SQLite and PostgreSQL.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    true,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# --- vocabulary -------------------------------------------------------------------------------

JOB_QUEUED, JOB_RUNNING, JOB_SUCCEEDED, JOB_FAILED, JOB_CANCELLED = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
)
# A result waiting for a person's decision (the review gate): not active (no worker holds it), not
# terminal (the batch cannot finish while one waits).
JOB_AWAITING_REVIEW = "awaiting_review"
JOB_STATUSES = (JOB_QUEUED, JOB_RUNNING, JOB_SUCCEEDED, JOB_FAILED, JOB_CANCELLED, JOB_AWAITING_REVIEW)
JOB_ACTIVE = (JOB_QUEUED, JOB_RUNNING)
JOB_TERMINAL = (JOB_SUCCEEDED, JOB_FAILED, JOB_CANCELLED)
JOB_UNSETTLED = (*JOB_ACTIVE, JOB_AWAITING_REVIEW)  # what keeps a batch from finishing

REVIEW_PENDING, REVIEW_APPROVED, REVIEW_REJECTED = "pending", "approved", "rejected"
REVIEW_STATES = (REVIEW_PENDING, REVIEW_APPROVED, REVIEW_REJECTED)
REVIEW_MODES = ("none", "flagged", "all")  # the batch option: which results wait for a person

# What a job event records: a status change, a fixity check, the ingestion of the original, a review
# decision or a cancel request; ``outcome`` says whether a check or step succeeded.
EVENT_STATUS, EVENT_FIXITY, EVENT_INGESTION, EVENT_REVIEW, EVENT_CANCEL = (
    "status",
    "fixity",
    "ingestion",
    "review",
    "cancel",
)
EVENT_KINDS = (EVENT_STATUS, EVENT_FIXITY, EVENT_INGESTION, EVENT_REVIEW, EVENT_CANCEL)
OUTCOME_SUCCESS, OUTCOME_FAILURE = "success", "failure"
EVENT_OUTCOMES = (OUTCOME_SUCCESS, OUTCOME_FAILURE)

BATCH_OPEN, BATCH_SUBMITTED, BATCH_FINISHED, BATCH_CANCELLED = "open", "submitted", "finished", "cancelled"
BATCH_STATUSES = (BATCH_OPEN, BATCH_SUBMITTED, BATCH_FINISHED, BATCH_CANCELLED)

REF_PENDING, REF_INDEXED, REF_FAILED, REF_DELETED = "pending", "indexed", "failed", "deleted"
REFERENCE_STATUSES = (REF_PENDING, REF_INDEXED, REF_FAILED, REF_DELETED)

ARCHIVE_PENDING, ARCHIVE_INGESTED, ARCHIVE_FAILED = "pending", "ingested", "failed"
ARCHIVE_STATUSES = (ARCHIVE_PENDING, ARCHIVE_INGESTED, ARCHIVE_FAILED)

REFERENCE_MODES = ("auto", "manual", "none")
OUTPUT_FORMATS = ("png", "jpeg", "tiff16", "jp2")
REFERENCE_SOURCES = ("retrieval", "manual", "fallback")

# Error code written by the dead-letter rule when a job keeps failing to finish.
TOO_MANY_ATTEMPTS = "too_many_attempts"
# Error codes of the archival checks: storage returned other bytes than were uploaded; a person
# rejected the result in review.
FIXITY_FAILED = "fixity_failed"
REJECTED_IN_REVIEW = "rejected_in_review"


# --- errors -----------------------------------------------------------------------------------


class DatabaseError(Exception):
    """Base of the errors the query functions raise for caller mistakes (not driver failures)."""


class NotFound(DatabaseError, LookupError):
    """The row does not exist or belongs to another tenant (callers answer 404 either way)."""


class TenantExists(DatabaseError):
    """A tenant with that name already exists."""


class InvalidTransition(DatabaseError):
    """The requested state change is not allowed from the row's current status."""


class JobStillRunning(InvalidTransition):
    """The job's worker is alive (recent heartbeat): resending it would only run it twice."""


class InvalidOptions(DatabaseError, ValueError):
    """Batch or job options outside the allowed values."""


class IdempotencyKeyReused(DatabaseError, ValueError):
    """An ``Idempotency-Key`` already named a batch created from a different request body."""


class InvalidCursor(DatabaseError, ValueError):
    """A pagination cursor that this code did not produce (or that was altered)."""


# --- helpers ----------------------------------------------------------------------------------


def utcnow() -> datetime:
    """Timezone-aware now in UTC; every timestamp in the schema is written through this."""
    return datetime.now(UTC)


def new_id() -> str:
    """36-character uuid4 string: portable across SQLite and PostgreSQL, safe to expose in URLs."""
    return str(uuid.uuid4())


def _status_check(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class UTCDateTime(TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that always hands back aware UTC datetimes.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones, so values are stored as naive
    UTC text (fixed width, so text order is time order) and re-tagged as UTC on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; use db.models.utcnow()")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# SQLite only auto-increments an ``INTEGER PRIMARY KEY``; PostgreSQL gets a 64-bit identity.
EventId = BigInteger().with_variant(Integer(), "sqlite")

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


Id = String(36)


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"Tenant(id={self.id!r}, name={self.name!r})"


class ApiKey(Base):
    """An API key; only ``sha256(full key)`` is stored (see ``db.tenants`` for why unsalted)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]

    tenant: Mapped[Tenant] = relationship(lazy="joined")


class Batch(Base):
    __tablename__ = "batches"
    __table_args__ = (
        CheckConstraint(_status_check("status", BATCH_STATUSES), name="status"),
        # A client's retried create answers the batch its first try made (``Idempotency-Key``). An index
        # rather than a constraint: SQLite adds one without rebuilding the table.
        Index("uq_batches_tenant_id_idempotency_key", "tenant_id", "idempotency_key", unique=True),
        Index("ix_batches_tenant_id_created_at", "tenant_id", "created_at"),
        Index("ix_batches_status", "status"),
    )

    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default=BATCH_OPEN)
    webhook_url: Mapped[str | None] = mapped_column(String(2000))
    total_jobs: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    submitted_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    report_key: Mapped[str | None] = mapped_column(String(1024))
    idempotency_key: Mapped[str | None] = mapped_column(String(128))


class BatchCounts(Base):
    """A batch's jobs per status, kept in step with every job transition (``db.counts``), so a status
    poll reads one row whatever the batch's size. ``ran`` counts jobs that finished (succeeded or
    failed) after running, between ``first_started_at`` and ``last_finished_at``: the throughput."""

    __tablename__ = "batch_counts"

    batch_id: Mapped[str] = mapped_column(Id, ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True)
    queued: Mapped[int] = mapped_column(default=0)
    running: Mapped[int] = mapped_column(default=0)
    succeeded: Mapped[int] = mapped_column(default=0)
    failed: Mapped[int] = mapped_column(default=0)
    cancelled: Mapped[int] = mapped_column(default=0)
    awaiting_review: Mapped[int] = mapped_column(default=0, server_default="0")
    ran: Mapped[int] = mapped_column(default=0)
    first_started_at: Mapped[datetime | None]
    last_finished_at: Mapped[datetime | None]


class Archive(Base):
    """A zip accepted into a batch, waiting to be unpacked; a batch cannot finish while one is pending."""

    __tablename__ = "archives"
    __table_args__ = (
        CheckConstraint(_status_check("status", ARCHIVE_STATUSES), name="status"),
        Index("ix_archives_batch_id_status", "batch_id", "status"),
        Index("ix_archives_status_sent_at", "status", "sent_at"),
    )

    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(500))
    object_key: Mapped[str] = mapped_column(String(1024))
    bytes: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default=ARCHIVE_PENDING)
    created_jobs: Mapped[int] = mapped_column(default=0)
    refused_members: Mapped[int] = mapped_column(default=0)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]
    ingested_at: Mapped[datetime | None]


class Reference(Base):
    """A colour photo in a tenant's reference corpus; ``descriptor`` is its retrieval feature blob."""

    __tablename__ = "references"
    __table_args__ = (
        CheckConstraint(_status_check("status", REFERENCE_STATUSES), name="status"),
        UniqueConstraint("tenant_id", "sha256"),
    )

    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(500))
    object_key: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=REF_PENDING)
    descriptor: Mapped[bytes | None] = mapped_column(LargeBinary)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    indexed_at: Mapped[datetime | None]


class Job(Base):
    """One photo to restore. ``attempts`` lives here because the broker cannot count redeliveries."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(_status_check("status", JOB_STATUSES), name="status"),
        CheckConstraint(f"review IS NULL OR {_status_check('review', REVIEW_STATES)}", name="review"),
        Index("ix_jobs_batch_id_status", "batch_id", "status"),
        Index("ix_jobs_status_sent_at", "status", "sent_at"),
        Index("ix_jobs_tenant_id_created_at", "tenant_id", "created_at"),
        # Keyset pagination of a batch's jobs in creation order.
        Index("ix_jobs_batch_id_created_at_id", "batch_id", "created_at", "id"),
        # Fair metering: a tenant's oldest unsent queued jobs without scanning other tenants.
        Index("ix_jobs_tenant_id_status_sent_at_created_at", "tenant_id", "status", "sent_at", "created_at"),
    )

    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    batch_id: Mapped[str | None] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default=JOB_QUEUED)
    attempts: Mapped[int] = mapped_column(default=0)
    input_key: Mapped[str] = mapped_column(String(1024))
    input_sha256: Mapped[str | None] = mapped_column(String(64))
    input_name: Mapped[str | None] = mapped_column(String(500))
    input_bytes: Mapped[int | None] = mapped_column(BigInteger)
    output_key: Mapped[str | None] = mapped_column(String(1024))
    output_format: Mapped[str] = mapped_column(String(16), default="png")
    reference_mode: Mapped[str] = mapped_column(String(16), default="auto")
    reference_id: Mapped[str | None] = mapped_column(ForeignKey("references.id", ondelete="SET NULL"))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    model_name: Mapped[str | None] = mapped_column(String(200))
    checkpoint_sha256: Mapped[str | None] = mapped_column(String(64))
    device: Mapped[str | None] = mapped_column(String(64))
    worker: Mapped[str | None] = mapped_column(String(255))
    width: Mapped[int | None]
    height: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    queued_at: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    duration_s: Mapped[float | None] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # Archival integrity: the result's own digest (the original's is ``input_sha256``), the options a
    # bureau controls per job, the review gate, the link of a redo to the job it redoes, and a cancel
    # asked for while the job ran (the worker stops at its next safe point).
    output_sha256: Mapped[str | None] = mapped_column(String(64))
    colourize: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    mark: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    review: Mapped[str | None] = mapped_column(String(16))
    review_note: Mapped[str | None] = mapped_column(Text)
    redo_of: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    cancel_requested_at: Mapped[datetime | None]

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, status={self.status!r}, attempts={self.attempts})"


class JobReference(Base):
    """A reference candidate scored for a job (or the manual choice); ``used`` marks the one applied."""

    __tablename__ = "job_references"
    __table_args__ = (
        UniqueConstraint("job_id", "rank"),
        CheckConstraint(_status_check("source", REFERENCE_SOURCES), name="source"),
    )

    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    reference_id: Mapped[str | None] = mapped_column(ForeignKey("references.id", ondelete="SET NULL"))
    rank: Mapped[int]
    total: Mapped[float | None] = mapped_column(Float)
    texture: Mapped[float | None] = mapped_column(Float)
    structure: Mapped[float | None] = mapped_column(Float)
    used: Mapped[bool] = mapped_column(Boolean, default=False)
    source: Mapped[str] = mapped_column(String(16), default="retrieval")


class QualityMetric(Base):
    __tablename__ = "quality_metrics"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[float] = mapped_column(Float)


class JobEvent(Base):
    """Audit trail: one row per job state change, fixity check, review decision or cancel request,
    written in the same transaction as the change. ``actor`` is who acted: a worker's name, or
    ``api:<key prefix>`` for a person through the API."""

    __tablename__ = "job_events"
    __table_args__ = (
        CheckConstraint(_status_check("kind", EVENT_KINDS), name="kind"),
        CheckConstraint(f"outcome IS NULL OR {_status_check('outcome', EVENT_OUTCOMES)}", name="outcome"),
    )

    id: Mapped[int] = mapped_column(EventId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    worker: Mapped[str | None] = mapped_column(String(255))
    detail: Mapped[str | None] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(16), default=EVENT_STATUS, server_default=EVENT_STATUS)
    outcome: Mapped[str | None] = mapped_column(String(16))
    actor: Mapped[str | None] = mapped_column(String(255))
