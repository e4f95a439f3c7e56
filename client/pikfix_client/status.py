"""``status``: a batch on one screen (counts, progress, rate, ETA, failures with their reasons)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pikfix_client.http import Http
from pikfix_client.names import decode_name
from pikfix_client.results import BatchStatus, Failure

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
SHOWN_FAILURES = 20


def pages(http: Http, batch_id: str, status: str | None = None, limit: int = 1000) -> Iterator[dict[str, Any]]:
    """Every job of the batch (optionally of one status), page by page in upload order."""
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        if cursor:
            params["cursor"] = cursor
        page = http.json("GET", f"/v1/batches/{batch_id}/jobs", "listing the batch's jobs", params=params)
        yield from page["items"]
        cursor = page.get("next_cursor")
        if not cursor:
            return


def batch_status(http: Http, batch_id: str, failures: bool = True) -> BatchStatus:
    batch = http.json("GET", f"/v1/batches/{batch_id}", "reading the batch")
    p = batch["progress"]
    failed = []
    if failures and p["counts"].get("failed", 0):
        failed = [
            Failure(j["id"], decode_name(j["input_name"]) if j.get("input_name") else None,
                    (j.get("error") or {}).get("code", "unknown"), (j.get("error") or {}).get("message"))
            for j in pages(http, batch_id, "failed")
        ]
    return BatchStatus(
        id=batch["id"], name=batch["name"], status=batch["status"], counts=dict(p["counts"]), total=p["total"],
        done=p["done"], done_fraction=p["done_fraction"], throughput_per_min=p.get("throughput_per_min"),
        eta_s=p.get("eta_s"), pending_archives=batch.get("pending_archives", 0), failures=failed,
    )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def render(s: BatchStatus, width: int = 40) -> str:
    """The one-screen text of a batch's status."""
    filled = int(round(s.done_fraction * width))
    rate = f"{s.throughput_per_min:.1f} photos/min" if s.throughput_per_min else "no photo finished yet"
    lines = [
        f"batch {s.id}  {s.name!r}  [{s.status}]",
        f"[{'#' * filled}{'.' * (width - filled)}] {s.done}/{s.total} done ({s.done_fraction:.1%})",
        "  ".join(f"{name}: {s.counts.get(name, 0)}"
                  for name in [*STATUSES, *sorted(set(s.counts) - set(STATUSES))]),
        f"rate: {rate}   ETA: {_duration(s.eta_s) if s.status not in ('finished', 'cancelled') else '-'}",
    ]
    if s.pending_archives:
        lines.append(f"archives still to unpack: {s.pending_archives}")
    if s.failures:
        lines.append(f"failures ({len(s.failures)}):")
        for f in s.failures[:SHOWN_FAILURES]:
            lines.append(f"  {f.name or f.job_id}: {f.code}" + (f" - {f.message}" if f.message else ""))
        if len(s.failures) > SHOWN_FAILURES:
            lines.append(f"  ... and {len(s.failures) - SHOWN_FAILURES} more")
    return "\n".join(lines)
