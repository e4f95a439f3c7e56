"""``pikfix worker``, ``pikfix beat`` and ``pikfix flower``: thin wrappers over Celery's own commands.

Beat's schedule and Flower's task history live in ``PIKFIX_STATE_DIR`` (default ``data_dir/state``),
never in whatever folder the command was started from.
"""

from __future__ import annotations

import socket
from pathlib import Path
from types import SimpleNamespace

from service.settings import get_settings

BEAT_SCHEDULE_FILE = "celerybeat-schedule"
FLOWER_DB_FILE = "flower.db"


def worker_command(args: SimpleNamespace) -> int:
    from workers.app import app

    if get_settings().eager:
        raise SystemExit("error: PIKFIX_BROKER_URL is not set; a worker needs a broker (e.g. redis://host:6379/0)")
    hostname = args.hostname or f"{args.queues.replace(',', '+')}@{socket.gethostname()}"
    argv = ["worker", "-Q", args.queues, "-c", str(args.concurrency), "-n", hostname, "--loglevel", args.loglevel, "-E"]
    app.worker_main(argv)
    return 0


def state_file(name: str) -> Path:
    """A file in the state folder, which is created if missing."""
    folder = get_settings().resolved_state_dir
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def beat_command(args: SimpleNamespace) -> int:
    from workers.app import app

    schedule = Path(args.schedule_file) if args.schedule_file else state_file(BEAT_SCHEDULE_FILE)
    argv = ["beat", "--loglevel", args.loglevel, "--schedule", str(schedule)]
    app.start(argv)
    return 0


def flower_command(args: SimpleNamespace) -> int:
    from workers.app import app

    settings = get_settings()
    db = state_file(FLOWER_DB_FILE)
    argv = ["flower", f"--port={args.port}", f"--address={args.address}", "--persistent=True", f"--db={db}"]
    if settings.flower_basic_auth:
        argv.append(f"--basic-auth={settings.flower_basic_auth}")
    app.start(argv)
    return 0


def resend_command(args: SimpleNamespace) -> int:
    """``pikfix jobs resend``: exit 2 for an unknown job, 3 when refused (finished, or its worker alive)."""
    import sys

    from db import repository as repo
    from db.models import InvalidTransition, NotFound
    from db.session import session_scope
    from workers.dispatch import dispatch
    from workers.runtime import get_runtime

    runtime = get_runtime()
    try:
        with session_scope(runtime.database_url) as s:
            job = repo.resend_job(s, None, args.job_id, alive_within_s=runtime.settings.job_heartbeat_timeout_s,
                                  force=args.force)
            tenant_id = job.tenant_id
    except NotFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except InvalidTransition as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 3
    try:
        dispatch(runtime)
    except Exception as exc:  # the broker is down: the job waits queued; beat sends it once it is back
        print(f"job {args.job_id} (tenant {tenant_id}) is queued; sending it failed ({exc}), beat will send it")
        return 0
    print(f"job {args.job_id} (tenant {tenant_id}) sent again")
    return 0


def resend_stuck_command(args: SimpleNamespace) -> int:
    """``pikfix batches resend-stuck``: exit 2 for an unknown batch; prints each job it resent."""
    import sys

    from db import repository as repo
    from db.models import NotFound
    from db.session import session_scope
    from workers.dispatch import dispatch
    from workers.runtime import get_runtime

    runtime = get_runtime()
    silent = runtime.settings.job_heartbeat_timeout_s if args.silent_for is None else args.silent_for
    try:
        with session_scope(runtime.database_url) as s:
            resent = repo.resend_stuck_batch_jobs(s, None, args.batch_id, silent_for_s=silent)
    except NotFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for job_id in resent:
        print(job_id)
    if not resent:
        print(f"batch {args.batch_id}: no job silent for {silent:.0f} s", file=sys.stderr)
        return 0
    try:
        dispatch(runtime)
    except Exception as exc:  # the broker is down: the jobs wait queued; beat sends them once it is back
        print(f"{len(resent)} jobs queued; sending them failed ({exc}), beat will send them", file=sys.stderr)
        return 0
    print(f"{len(resent)} jobs of batch {args.batch_id} sent again", file=sys.stderr)
    return 0
