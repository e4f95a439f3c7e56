"""``pikfix restore``: a local batch through the same tasks, database and storage code as the service.

Embedded mode: a SQLite file and a local object folder under the data folder, the Celery tasks executed
in-process (``Task.apply``), a progress bar per photo with ETA, then the restored photos, report.html and
report.json written to the output folder.
"""

from __future__ import annotations

import logging
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

from tqdm import tqdm

from db import repository as repo
from db.migrate import upgrade
from db.session import session_scope
from service.settings import Settings
from storage import put_content_addressed
from workers.archive import IMAGE_EXTENSIONS
from workers.runtime import WorkerRuntime, set_runtime

log = logging.getLogger(__name__)

LOCAL_TENANT = "local"


def collect_inputs(paths: list[str]) -> list[Path]:
    """Photos named directly, plus every image file (by extension) in named folders, sorted."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS))
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return found


def _store_reference(runtime: WorkerRuntime, tenant_id: str, path: Path) -> str:
    key, sha, _ = put_content_addressed(runtime.store, tenant_id, path.read_bytes(), path.suffix.lower(), kind="reference")
    with session_scope(runtime.database_url) as s:
        return repo.add_reference(s, tenant_id, path.name, key, sha).id


def _prepare_references(runtime: WorkerRuntime, tenant_id: str, args: SimpleNamespace) -> dict:
    from workers.tasks import index_reference

    if args.reference:
        ref_id = _store_reference(runtime, tenant_id, Path(args.reference))
        return {"reference_mode": "manual", "reference_id": ref_id}
    if args.references:
        ref_paths = collect_inputs([args.references])
        ref_ids = [_store_reference(runtime, tenant_id, p) for p in ref_paths]
        for ref_id in tqdm(ref_ids, desc="indexing references", unit="ref", disable=None):
            index_reference.apply(args=[ref_id])
        return {"reference_mode": "auto"}
    log.warning("no --reference or --references given: photos are restored but stay grey")
    return {"reference_mode": "none"}


def _unique_output_path(out_dir: Path, name: str, ext: str, taken: set[str]) -> Path:
    stem = Path(name).stem or "photo"
    candidate, n = f"{stem}.restored.{ext}", 1
    while candidate in taken:
        n += 1
        candidate = f"{stem}-{n}.restored.{ext}"
    taken.add(candidate)
    return out_dir / candidate


def _quiet_library_logs() -> None:
    """The progress bar is the interface here: per-task and migration chatter only with --verbose."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for name in ("alembic", "celery", "workers.tasks", "workers.runtime", "workers.dispatch"):
            logging.getLogger(name).setLevel(logging.WARNING)


def restore_command(args: SimpleNamespace) -> int:
    from workers.batch_report import collect_report, image_loader
    from workers.report import write_report
    from workers.tasks import restore_job

    overrides = {"data_dir": Path(args.data_dir or ".pikfix"), "broker_url": None, "database_url": None, "storage_url": None}
    if args.checkpoint:
        overrides["checkpoint"] = args.checkpoint
    if args.device:
        overrides["device"] = args.device
    settings = Settings(**overrides)
    _quiet_library_logs()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    runtime = WorkerRuntime(settings, hostname="embedded")
    set_runtime(runtime)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    try:
        inputs = collect_inputs(args.paths)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not inputs:
        print("error: no photos found", file=sys.stderr)
        return 2

    upgrade(runtime.database_url)
    with session_scope(runtime.database_url) as s:
        tenant_id = repo.get_or_create_tenant(s, LOCAL_TENANT).id
    options = {"output_format": args.format}
    if getattr(args, "no_colour", False):  # restore-only: no reference is read, chosen or stored
        options |= {"reference_mode": "none", "colourize": False}
    else:
        options |= _prepare_references(runtime, tenant_id, args)

    with session_scope(runtime.database_url) as s:
        batch_id = repo.create_batch(s, tenant_id, f"local {datetime.now(UTC):%Y-%m-%d %H:%M:%S}", options).id
    job_ids: list[str] = []
    for path in inputs:
        data = path.read_bytes()
        key, sha, _ = put_content_addressed(runtime.store, tenant_id, data, path.suffix.lower(), kind="original")
        with session_scope(runtime.database_url) as s:
            job_ids.append(repo.create_job(s, tenant_id, batch_id, key, sha, path.name, len(data), options).id)
    with session_scope(runtime.database_url) as s:
        repo.submit_batch(s, tenant_id, batch_id)

    runtime.restorer  # noqa: B018 - load the model before the progress bar starts
    for job_id in tqdm(job_ids, desc="restoring", unit="photo", disable=None):
        restore_job.apply(args=[job_id])

    with session_scope(runtime.database_url) as s:
        repo.finish_batches(s)
    report, keys = collect_report(runtime, batch_id)
    taken: set[str] = set()
    ext = {"png": "png", "jpeg": "jpg", "tiff16": "tif"}[args.format]
    for job in report["jobs"]:
        if job["status"] == "succeeded":
            target = _unique_output_path(out_dir, job["input_name"], ext, taken)
            with open(target, "wb") as fh:
                fh.write(runtime.store.get_bytes(job["output_key"]))
            job["output_file"] = target.name
    write_report(report, image_loader(runtime, keys), out_dir)

    summary = report["summary"]
    counts = summary.get("counts", {})
    print(
        f"{counts.get('succeeded', 0)} restored, {counts.get('failed', 0)} failed -> {out_dir}/ "
        f"(report: {out_dir / 'report.html'})"
    )
    for job in report["jobs"]:
        if job["status"] == "failed":
            print(f"  failed: {job['input_name']}: {job['error_code']}: {job['error_message']}", file=sys.stderr)
    shutil.rmtree(settings.data_dir / "tmp", ignore_errors=True)
    return 0 if counts.get("failed", 0) == 0 else 1
