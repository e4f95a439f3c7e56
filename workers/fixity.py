"""On-demand fixity check of a batch: every stored original and result is read back, hashed and compared
with the SHA-256 recorded for it (``jobs.input_sha256`` / ``jobs.output_sha256``).

Archives must prove at any time that what they hold is what was ingested. Each object checked gets a
fixity event on its job (outcome success or failure, both digests in the detail), so the PREMIS export
shows every check. The check's summary (status, counts, what failed) is a small JSON object stored next
to the batch report: the latest check is what ``GET /v1/batches/{id}/fixity-check`` answers, without a
table of its own. Reading twice is harmless, so a retried task simply checks again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from db import repository as repo
from db.session import session_scope
from storage import ObjectNotFound, ObjectStore
from storage.base import MiB
from storage.keys import report_key
from workers.app import app
from workers.pipeline import TRANSIENT_ERRORS
from workers.runtime import WorkerRuntime, get_runtime
from workers.tasks import TRANSIENT_RETRY

log = logging.getLogger(__name__)

SUMMARY_NAME = "fixity-check.json"
QUEUED, RUNNING, FINISHED = "queued", "running", "finished"
RECORD_EVERY = 200  # fixity events written per transaction


@dataclass(frozen=True)
class Target:
    """One stored object of a job and the digest recorded for it (``None``: none was recorded)."""

    job_id: str
    obj: str  # "original" or "result"
    key: str
    expected: str | None


# --------------------------------------------------------------------------- the summary


def summary_key(tenant_id: str, batch_id: str) -> str:
    """Beside the batch report, in the batch's report folder."""
    return f"{report_key(tenant_id, batch_id).rsplit('/', 1)[0]}/{SUMMARY_NAME}"


def _now() -> str:
    return datetime.now(UTC).isoformat()


def new_summary(batch_id: str) -> dict[str, Any]:
    """A freshly requested check: queued, nothing counted yet."""
    return {"id": str(uuid.uuid4()), "batch_id": batch_id, "status": QUEUED, "requested_at": _now(),
            "started_at": None, "finished_at": None,
            "counts": {"checked": 0, "passed": 0, "failed": 0, "unrecorded": 0}, "failures": []}


def read_summary(store: ObjectStore, tenant_id: str, batch_id: str) -> dict[str, Any] | None:
    """The latest check's summary, or ``None`` when the batch was never checked."""
    try:
        return json.loads(store.get_bytes(summary_key(tenant_id, batch_id)))
    except ObjectNotFound:
        return None


def write_summary(store: ObjectStore, tenant_id: str, summary: dict[str, Any]) -> None:
    data = json.dumps(summary, indent=1).encode()
    store.put_bytes(summary_key(tenant_id, summary["batch_id"]), data, content_type="application/json")


# --------------------------------------------------------------------------- the check


def sha256_of(store: ObjectStore, key: str) -> str | None:
    """SHA-256 of the stored object read in chunks (a large scan never sits in memory); ``None`` if missing."""
    h = hashlib.sha256()
    try:
        with store.open_stream(key) as stream:
            while block := stream.read(MiB):
                h.update(block)
    except ObjectNotFound:
        return None
    return h.hexdigest()


def batch_targets(runtime: WorkerRuntime, batch_id: str) -> list[Target]:
    """Every original and every stored result of the batch's jobs."""
    targets = []
    with session_scope(runtime.database_url, readonly=True) as s:
        for job in repo.iter_batch_jobs(s, batch_id):
            targets.append(Target(job.id, "original", job.input_key, job.input_sha256))
            if job.output_key:
                targets.append(Target(job.id, "result", job.output_key, job.output_sha256))
    return targets


def _tally(summary: dict[str, Any], target: Target, actual: str | None) -> None:
    counts = summary["counts"]
    counts["checked"] += 1
    if actual is not None and target.expected in (None, actual):
        counts["passed"] += 1
        counts["unrecorded"] += target.expected is None
        return
    counts["failed"] += 1
    summary["failures"].append({"job_id": target.job_id, "object": target.obj, "key": target.key,
                                "expected": target.expected, "actual": actual,
                                "reason": "missing" if actual is None else "mismatch"})


def _record(runtime: WorkerRuntime, checked: list[tuple[Target, str | None]], actor: str) -> None:
    """One fixity event per object; a missing object is a failure even when no digest was recorded."""
    with session_scope(runtime.database_url) as s:
        for target, actual in checked:
            expected = target.expected or ("none recorded" if actual is None else None)
            repo.record_fixity(s, target.job_id, target.obj, expected, actual or "nothing (object missing)",
                               actor=actor)


def run_fixity_check(runtime: WorkerRuntime, batch_id: str, check_id: str, actor: str) -> dict[str, Any] | None:
    """Check every object of the batch, record the events, store and return the summary."""
    with session_scope(runtime.database_url, readonly=True) as s:
        batch = repo.get_batch_any_tenant(s, batch_id)
        tenant_id = batch.tenant_id if batch is not None else None
    if tenant_id is None:
        log.warning("fixity check %s: batch %s does not exist", check_id, batch_id)
        return None
    store = runtime.store
    summary = read_summary(store, tenant_id, batch_id)
    if summary is None or summary["id"] != check_id:  # sent by hand, or a newer request replaced it
        summary = {**new_summary(batch_id), "id": check_id}
    summary.update(status=RUNNING, started_at=_now())
    write_summary(store, tenant_id, summary)
    digests: dict[str, str | None] = {}  # a content-addressed original shared by jobs is read once
    pending: list[tuple[Target, str | None]] = []
    for target in batch_targets(runtime, batch_id):
        if target.key not in digests:
            digests[target.key] = sha256_of(store, target.key)
        _tally(summary, target, digests[target.key])
        pending.append((target, digests[target.key]))
        if len(pending) >= RECORD_EVERY:
            _record(runtime, pending, actor)
            pending = []
    _record(runtime, pending, actor)
    summary.update(status=FINISHED, finished_at=_now())
    write_summary(store, tenant_id, summary)
    log.info("fixity check %s of batch %s: %s", check_id, batch_id, summary["counts"])
    return summary


@app.task(name="pikfix.maintenance.fixity_check", bind=True, autoretry_for=TRANSIENT_ERRORS, retry_jitter=True,
          **TRANSIENT_RETRY)
def fixity_check(self, batch_id: str, check_id: str) -> dict[str, Any] | None:
    """Re-verify a batch's stored objects (``POST /v1/batches/{id}/fixity-check`` sends it)."""
    runtime = get_runtime()
    return run_fixity_check(runtime, batch_id, check_id, actor=self.request.hostname or runtime.hostname)


__all__ = ["fixity_check", "new_summary", "read_summary", "run_fixity_check", "summary_key", "write_summary"]
