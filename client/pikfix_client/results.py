"""The typed results of ``submit``, ``status`` and ``fetch``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Skipped:
    """A file of the folder that was not uploaded, and why (the API would refuse it, or it is unreadable)."""

    path: str
    reason: str


@dataclass(frozen=True)
class Rejection:
    """A file the API refused (at submit, or a reference), with the API's stable code."""

    name: str
    code: str
    message: str


@dataclass(frozen=True)
class SubmitResult:
    batch_id: str
    batch_name: str
    files: int = field(metadata={"doc": "files of the folder sent (uploaded now or in an earlier run)"})
    uploaded: int = field(metadata={"doc": "files uploaded by this run"})
    bytes_uploaded: int
    skipped: list[Skipped]
    registered: int | None = field(metadata={"doc": "jobs the submit created; None if an earlier run submitted"})
    rejected: list[Rejection]
    references: dict[str, str] = field(metadata={"doc": "reference file path -> reference id"})
    already_submitted: bool
    seconds: float


@dataclass(frozen=True)
class Failure:
    job_id: str
    name: str | None
    code: str
    message: str | None


@dataclass(frozen=True)
class BatchStatus:
    id: str
    name: str
    status: str
    counts: dict[str, int]
    total: int
    done: int
    done_fraction: float
    throughput_per_min: float | None
    eta_s: float | None
    pending_archives: int
    failures: list[Failure]

    @property
    def finished(self) -> bool:
        """No more work will happen: finished, or cancelled with nothing left running."""
        return self.status in ("finished", "cancelled") and not self.counts.get("running", 0)


@dataclass(frozen=True)
class FetchResult:
    batch_id: str
    out: Path
    downloaded: int = field(metadata={"doc": "results downloaded by this run"})
    already_present: int = field(metadata={"doc": "results found intact from an earlier run"})
    failed_jobs: int
    bagged: bool = field(metadata={"doc": "False while the batch still runs: nothing bagged yet"})
    tag_files: list[str]
