"""Collects a batch's jobs, references and metrics from the database and renders its report."""

from __future__ import annotations

import logging
from typing import Any

from db import repository as repo
from db.session import session_scope
from storage import ObjectNotFound, report_key
from workers.report import build_report, render_html, report_json

log = logging.getLogger(__name__)


def _iso(value) -> str | None:
    return value.isoformat() if value else None


def collect_report(runtime, batch_id: str) -> tuple[dict[str, Any], dict[str, dict[str, str | None]]]:
    """The report dict and, per job id, the object keys of its original, result and reference."""
    keys: dict[str, dict[str, str | None]] = {}
    jobs: list[dict[str, Any]] = []
    model: dict[str, Any] = {"name": None, "checkpoint_sha256": None}
    with session_scope(runtime.database_url) as s:
        batch = repo.get_batch_any_tenant(s, batch_id)
        batch_info = {
            "id": batch.id,
            "name": batch.name,
            "status": batch.status,
            "created_at": _iso(batch.created_at),
            "finished_at": _iso(batch.finished_at),
        }
        for job in repo.iter_batch_jobs(s, batch_id):
            refs = repo.job_reference_rows(s, job.id)
            used = next((r for r in refs if r.used), None)
            ref_obj = repo.get_reference(s, job.tenant_id, used.reference_id) if used and used.reference_id else None
            names = {r.reference_id: repo.reference_name(s, r.reference_id) for r in refs if r.reference_id}
            if job.model_name and not model["name"]:
                model = {"name": job.model_name, "checkpoint_sha256": job.checkpoint_sha256}
            jobs.append(
                {
                    "id": job.id,
                    "input_name": job.input_name,
                    "status": job.status,
                    "error_code": job.error_code,
                    "error_message": job.error_message,
                    "width": job.width,
                    "height": job.height,
                    "duration_s": job.duration_s,
                    "output_key": job.output_key,
                    "input_sha256": job.input_sha256,
                    "output_sha256": job.output_sha256,
                    "review": job.review,
                    "review_note": job.review_note,
                    "redo_of": job.redo_of,
                    "colourize": job.colourize,
                    "started_at": _iso(job.started_at),
                    "finished_at": _iso(job.finished_at),
                    "reference": None
                    if used is None
                    else {
                        "id": used.reference_id,
                        "name": names.get(used.reference_id),
                        "total": used.total,
                        "texture": used.texture,
                        "structure": used.structure,
                        "source": used.source,
                    },
                    "candidates": [
                        {"id": r.reference_id, "name": names.get(r.reference_id), "rank": r.rank, "total": r.total}
                        for r in refs
                    ],
                    "metrics": repo.job_metrics(s, job.id),
                }
            )
            keys[job.id] = {
                "original": job.input_key,
                "restored": job.output_key,
                "reference": ref_obj.object_key if ref_obj else None,
            }
    return build_report(batch_info, model, jobs), keys


def image_loader(runtime, keys: dict[str, dict[str, str | None]]):
    def load(job: dict[str, Any], kind: str) -> bytes | None:
        key = keys.get(job["id"], {}).get(kind)
        if not key:
            return None
        try:
            return runtime.store.get_bytes(key)
        except ObjectNotFound:
            return None

    return load


def publish_batch_report(runtime, batch_id: str) -> str:
    """Render report.json and report.html into storage; returns the HTML key."""
    report, keys = collect_report(runtime, batch_id)
    with session_scope(runtime.database_url) as s:
        tenant_id = repo.get_batch_any_tenant(s, batch_id).tenant_id
    html_key = report_key(tenant_id, batch_id)
    json_key = html_key.rsplit(".", 1)[0] + ".json"
    runtime.store.put_bytes(json_key, report_json(report).encode(), content_type="application/json")
    html = render_html(report, image_loader(runtime, keys))
    runtime.store.put_bytes(html_key, html.encode(), content_type="text/html; charset=utf-8")
    with session_scope(runtime.database_url) as s:
        repo.set_batch_report(s, batch_id, html_key)
    return html_key
