"""Per-job system overhead: jobs/s through API -> Redis -> worker -> PostgreSQL -> S3 with the null model,
against a bare Celery task round trip on the same Redis, measured in the same run, round by round.

Subject, one round: a batch is created over HTTP, ``--jobs`` small photos are uploaded in multipart
requests of ``--chunk`` files to ``pikfix api`` (one uvicorn process; ``POST /v1/batches/{id}/photos``:
stored in S3, job rows committed, tasks sent), and one ``pikfix worker`` (prefork, concurrency 1, ``PIKFIX_CHECKPOINT=null``) runs
every job: claim, fetch from S3, decode, reference choice, the null model, PNG encode, upload, metrics,
completion, metering of the next jobs. The round ends when the database shows every job finished.

Peer, one round: the same number of tasks of a bare Celery app (same Redis, same reliability settings:
JSON, late acks, prefetch 1, concurrency 1, prefork) whose task returns its argument; the client sends
them all and waits for every result (Redis result backend).

Rounds alternate (peer first on even rounds, subject first on odd ones) after one warm-up round of
each, so both see the same load. The ratio subject/peer and the per-job overhead
``1/subject - 1/peer`` are the figures to compare across machines.

    python bench/job_overhead.py [--jobs 200] [--rounds 3] [--chunk 50] [--size 128x96]
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid

from common import (
    LoadSampler,
    load_average,
    median,
    print_table,
    ratio,
    service_stack,
    small_photo,
    wait_until,
    write_results,
)

PEER_QUEUE = "bench-peer"
PEER_TASK = "bench.echo"
ROUND_TIMEOUT_S = 600.0


# --------------------------------------------------------------------------- the peer: a bare Celery app


def peer_app(broker_url: str, backend_url: str):
    """A Celery app with the production app's reliability settings and a task that does nothing."""
    from celery import Celery

    app = Celery("bench-peer", broker=broker_url, backend=backend_url)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=200,
        task_default_queue=PEER_QUEUE,
        broker_connection_retry_on_startup=True,
        worker_send_task_events=True,
        task_send_sent_event=True,
    )

    @app.task(name=PEER_TASK)
    def echo(job_id: str) -> str:
        return job_id

    return app


def run_peer_worker(broker_url: str, backend_url: str) -> None:
    """Entry point of the peer worker process (``--peer-worker``)."""
    app = peer_app(broker_url, backend_url)
    app.worker_main(["worker", "-Q", PEER_QUEUE, "-c", "1", "-n", "peer@bench", "-P", "prefork",
                     "--loglevel", "INFO", "-E"])


def peer_round(app, n: int) -> dict:
    from celery.result import ResultSet

    start = time.perf_counter()
    results = ResultSet([app.send_task(PEER_TASK, args=[str(uuid.uuid4())], queue=PEER_QUEUE) for _ in range(n)])
    sent = time.perf_counter()
    values = results.get(timeout=ROUND_TIMEOUT_S)
    done = time.perf_counter()
    assert len(values) == n
    results.forget()
    return {"kind": "peer", "jobs": n, "seconds": done - start, "send_s": sent - start,
            "jobs_per_s": n / (done - start)}


# --------------------------------------------------------------------------- the subject: pikfix


def batch_counts(database_url: str, batch_id: str) -> dict[str, int]:
    from db import repository as repo
    from db.session import session_scope

    with session_scope(database_url, readonly=True) as s:
        return repo.batch_status_counts(s, batch_id)


def worker_durations(database_url: str, batch_id: str) -> list[float]:
    """Seconds each job spent in the worker (claim to completion), from the job rows."""
    from sqlalchemy import select

    from db.models import Job
    from db.session import session_scope

    with session_scope(database_url, readonly=True) as s:
        return [d for d in s.scalars(select(Job.duration_s).where(Job.batch_id == batch_id)) if d is not None]


def subject_round(http, database_url: str, photos: list[bytes], chunk: int, tag: str) -> dict:
    n = len(photos)
    batch = http.post("/v1/batches", json={"name": f"overhead {tag}"})
    batch.raise_for_status()
    batch_id = batch.json()["id"]
    start = time.perf_counter()
    for i in range(0, n, chunk):
        files = [("files", (f"p{j:05d}.jpg", photos[j], "image/jpeg")) for j in range(i, min(n, i + chunk))]
        r = http.post(f"/v1/batches/{batch_id}/photos", files=files)
        if r.status_code != 201:
            raise RuntimeError(f"upload failed: {r.status_code} {r.text[:300]}")
    uploaded = time.perf_counter()
    r = http.post(f"/v1/batches/{batch_id}/submit")
    r.raise_for_status()

    def finished() -> bool:
        counts = batch_counts(database_url, batch_id)
        return sum(counts.get(k, 0) for k in ("succeeded", "failed", "cancelled")) >= n

    done = wait_until(finished, ROUND_TIMEOUT_S, interval=0.05, what=f"{n} jobs")
    counts = batch_counts(database_url, batch_id)
    if counts.get("succeeded", 0) != n:
        raise RuntimeError(f"not every job succeeded: {counts}")
    durations = worker_durations(database_url, batch_id)
    return {"kind": "subject", "jobs": n, "seconds": done - start, "upload_s": uploaded - start,
            "jobs_per_s": n / (done - start), "worker_job_s_median": median(durations)}


# --------------------------------------------------------------------------- the run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200, help="jobs (and peer tasks) per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=50, help="photos per upload request")
    parser.add_argument("--size", default="128x96", help="photo size WxH (small JPEGs)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the services' logs (printed folder)")
    parser.add_argument("--peer-worker", nargs=2, metavar=("BROKER", "BACKEND"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer_worker:
        run_peer_worker(*args.peer_worker)
        return

    import httpx

    width, height = (int(v) for v in args.size.lower().split("x"))
    photos = [small_photo(seed, width, height) for seed in range(args.jobs)]
    started = time.perf_counter()
    rounds: list[dict] = []
    with service_stack(keep_logs=args.keep_logs) as stack, LoadSampler() as sampler:
        backend_url = stack.redis.url_for_db(1)
        stack.group.start_process(
            [sys.executable, __file__, "--peer-worker", stack.broker_url, backend_url],
            env=stack.env, ready=lambda proc: "ready." in proc.log_text(), timeout=180, name="peer-worker",
        )
        stack.start_worker("subject@bench", queues="restore", concurrency=1)
        port = stack.free_port()
        stack.start_api(port, workers=1)  # one upload stream: a second uvicorn process would only idle
        _, key = stack.create_tenant_key()
        app = peer_app(stack.broker_url, backend_url)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"},
                          timeout=120) as http:
            warm = min(20, args.jobs)
            peer_round(app, warm)
            subject_round(http, stack.database_url, photos[:warm], args.chunk, "warm-up")
            for r in range(args.rounds):
                order = ("peer", "subject") if r % 2 == 0 else ("subject", "peer")
                for kind in order:
                    load = load_average()[0]
                    if kind == "peer":
                        row = peer_round(app, args.jobs)
                    else:
                        row = subject_round(http, stack.database_url, photos, args.chunk, f"round {r}")
                    rounds.append({"round": r, **row, "load_1min": load})
                    print(f"round {r} {kind:>7}: {row['jobs_per_s']:7.1f} jobs/s ({row['seconds']:.1f} s, load {load})")
    elapsed = time.perf_counter() - started

    subject = [x for x in rounds if x["kind"] == "subject"]
    peer = [x for x in rounds if x["kind"] == "peer"]
    subject_rate = median([x["jobs_per_s"] for x in subject])
    peer_rate = median([x["jobs_per_s"] for x in peer])
    summary = {
        "subject_jobs_per_s": subject_rate,
        "peer_tasks_per_s": peer_rate,
        "ratio_subject_to_peer": ratio(subject_rate, peer_rate),
        "per_job_overhead_ms": 1000 * (1 / subject_rate - 1 / peer_rate),
        "subject_worker_job_s_median": median([x["worker_job_s_median"] for x in subject]),
        "subject_upload_photos_per_s": median([x["jobs"] / x["upload_s"] for x in subject]),
        "load_1min": sampler.summary(),
        "wall_s": round(elapsed, 1),
    }
    print()
    print_table(
        ["path", "jobs/s", "ms/job", "vs peer", "load avg"],
        [
            ["bare Celery round trip (peer)", peer_rate, 1000 / peer_rate, 1.0, sampler.summary()["mean"]],
            ["pikfix job, null model (subject)", subject_rate, 1000 / subject_rate, summary["ratio_subject_to_peer"],
             sampler.summary()["mean"]],
        ],
    )
    print(f"per-job system overhead over a bare Celery round trip: {summary['per_job_overhead_ms']:.1f} ms; "
          f"worker time per job (claim to completion, median): {summary['subject_worker_job_s_median'] * 1000:.1f} ms")
    write_results("job_overhead", {
        "setup": {
            "jobs_per_round": args.jobs, "rounds": args.rounds, "upload_chunk": args.chunk,
            "photo": f"{width}x{height} grey JPEG, ~{sum(map(len, photos)) // len(photos)} bytes",
            "subject": "HTTP upload (pikfix api, 1 uvicorn worker) -> S3 (moto) + PostgreSQL rows -> Redis -> "
                       "pikfix worker (prefork, concurrency 1, PIKFIX_CHECKPOINT=null) -> S3 + PostgreSQL; "
                       "round ends when every job row is finished",
            "peer": "bare Celery task (returns its argument), same Redis, same reliability settings, "
                    "concurrency 1 prefork, Redis result backend; round ends when every result is back",
            "order": "one warm-up round each, then alternating (peer first on even rounds)",
        },
        "summary": summary,
        "rounds": rounds,
    })


if __name__ == "__main__":
    main()
