"""Bulk submission: a 10,000-photo batch registered and enqueued through the API, in jobs/s, against raw
kombu publishing of the same number of messages to the same Redis, measured in the same run.

Subject: ``--photos`` distinct small JPEGs are uploaded to one batch in multipart requests of 1,000 files
(the API's per-request maximum), ``--streams`` requests at a time, to ``pikfix api`` (2 uvicorn
processes). Each request checks every file (format sniffing, header decode), stores it in S3 (moto)
under its content address, commits one job row per photo in PostgreSQL and meters the jobs into Redis
(one Celery message per job). The batch is then submitted. ``PIKFIX_TENANT_BACKLOG_LIMIT`` is raised to
the batch size so every job is enqueued here, not held back in the database by the per-tenant metering
(production keeps 200 in the broker and meters the rest in as jobs finish). No worker runs, so the
messages stay in Redis and are counted there afterwards.

Peer: ``kombu.Producer.publish`` of the same number of small persistent JSON messages to a queue of the
same Redis, one by one, from this process: the floor of what enqueueing costs.

Order: peer, subject, peer (the subject is one long run); the peer figure is the median of the two.

    python bench/bulk_submit.py [--photos 10000] [--streams 2] [--size 64x48]
"""

from __future__ import annotations

import argparse
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from common import (
    LoadSampler,
    load_average,
    median,
    print_table,
    ratio,
    service_stack,
    small_photo,
    write_results,
)

FILES_PER_REQUEST = 1000  # api.routers.batches.MAX_FILES_PER_REQUEST
PEER_QUEUE = "bench-kombu"
RESTORE_QUEUE = "restore"


def kombu_peer(broker_url: str, n: int) -> dict:
    """Publish ``n`` persistent JSON messages, one call each, and check they all arrived."""
    from kombu import Connection, Exchange, Producer, Queue

    exchange = Exchange(PEER_QUEUE, type="direct")
    queue = Queue(PEER_QUEUE, exchange, routing_key=PEER_QUEUE)
    with Connection(broker_url) as conn:
        channel = conn.channel()
        queue(channel).declare()
        producer = Producer(channel, exchange=exchange, routing_key=PEER_QUEUE, serializer="json")
        start = time.perf_counter()
        for _ in range(n):
            producer.publish({"job_id": str(uuid.uuid4())}, delivery_mode=2)
        seconds = time.perf_counter() - start
        arrived = queue(channel).queue_declare(passive=True).message_count
        queue(channel).purge()
    if arrived != n:
        raise RuntimeError(f"kombu peer: {arrived} of {n} messages arrived")
    return {"kind": "peer", "messages": n, "seconds": seconds, "per_s": n / seconds}


def queued_messages(redis_client, queue: str) -> int:
    """Messages waiting in a kombu Redis queue (its list, plus priority sub-lists if any)."""
    return sum(redis_client.llen(key) for key in redis_client.scan_iter(match=f"{queue}*")
               if redis_client.type(key) == b"list")


def upload_batch(base_url: str, key: str, photos: list[bytes], streams: int,
                 per_request: int = FILES_PER_REQUEST) -> tuple[str, list[float]]:
    """Create a batch, upload every photo (``streams`` requests in flight, each on its own connection),
    submit it; returns the batch id and each upload request's seconds."""
    import httpx

    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=600) as http:
        r = http.post("/v1/batches", json={"name": f"bulk {len(photos)}"})
        r.raise_for_status()
        batch_id = r.json()["id"]

    def send(first: int) -> float:
        files = [("files", (f"scan-{j:06d}.jpg", photos[j], "image/jpeg"))
                 for j in range(first, min(len(photos), first + per_request))]
        t = time.perf_counter()
        with httpx.Client(base_url=base_url, headers=headers, timeout=600) as http:
            r = http.post(f"/v1/batches/{batch_id}/photos", files=files)
        if r.status_code != 201 or r.json()["rejected"]:
            raise RuntimeError(f"upload failed: {r.status_code} {r.text[:300]}")
        return time.perf_counter() - t

    with ThreadPoolExecutor(streams) as pool:
        times = list(pool.map(send, range(0, len(photos), per_request)))
    with httpx.Client(base_url=base_url, headers=headers, timeout=600) as http:
        r = http.post(f"/v1/batches/{batch_id}/submit")
        r.raise_for_status()
    return batch_id, times


def warm_up(base_url: str, key: str) -> None:
    """Small uploads on many parallel connections, so every uvicorn process has loaded its lazy imports
    (the task module pulls in torch) and opened its connections before the timed run."""
    for round_ in range(2):
        photos = [small_photo(10_000_000 + round_ * 100 + i) for i in range(40)]
        upload_batch(base_url, key, photos, streams=4, per_request=5)


def job_counts(database_url: str, batch_id: str) -> dict[str, int]:
    from sqlalchemy import func, select

    from db.models import Job
    from db.session import session_scope

    with session_scope(database_url, readonly=True) as s:
        total = s.scalar(select(func.count()).select_from(Job).where(Job.batch_id == batch_id))
        sent = s.scalar(select(func.count()).select_from(Job).where(Job.batch_id == batch_id,
                                                                     Job.sent_at.is_not(None)))
    return {"jobs": int(total or 0), "sent": int(sent or 0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=10_000)
    parser.add_argument("--streams", type=int, default=2, help="upload requests in flight at once")
    parser.add_argument("--size", default="64x48", help="photo size WxH (small JPEGs)")
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args()

    width, height = (int(v) for v in args.size.lower().split("x"))
    t = time.perf_counter()
    photos = [small_photo(seed, width, height) for seed in range(args.photos)]
    print(f"{len(photos)} photos of {width}x{height} ({sum(map(len, photos)) / 1e6:.1f} MB) made in "
          f"{time.perf_counter() - t:.1f} s")
    started = time.perf_counter()
    rows: list[dict] = []
    extra = {"PIKFIX_TENANT_BACKLOG_LIMIT": str(args.photos)}
    with service_stack(extra_env=extra, keep_logs=args.keep_logs) as stack, LoadSampler() as sampler:
        port = stack.free_port()
        stack.start_api(port, workers=2)
        _, key = stack.create_tenant_key()
        _, warm_key = stack.create_tenant_key("warm-up")  # its jobs must not use up the bench tenant's backlog
        base_url = f"http://127.0.0.1:{port}"
        warm_up(base_url, warm_key)
        with stack.redis.client() as redis_client:
            redis_client.delete(RESTORE_QUEUE)  # the warm-up's messages
            for kind in ("peer", "subject", "peer"):
                load = load_average()[0]
                if kind == "peer":
                    row = kombu_peer(stack.broker_url, args.photos)
                else:
                    start = time.perf_counter()
                    batch_id, request_times = upload_batch(base_url, key, photos, args.streams)
                    seconds = time.perf_counter() - start
                    counts = job_counts(stack.database_url, batch_id)
                    enqueued = queued_messages(redis_client, RESTORE_QUEUE)
                    if counts["jobs"] != args.photos or counts["sent"] != args.photos or enqueued < args.photos:
                        raise RuntimeError(f"not every photo was registered and enqueued: {counts}, "
                                           f"{enqueued} messages in Redis")
                    row = {"kind": "subject", "photos": args.photos, "seconds": seconds,
                           "per_s": args.photos / seconds, "request_s": request_times,
                           "jobs_registered": counts["jobs"], "jobs_marked_sent": counts["sent"],
                           "messages_in_redis": enqueued}
                rows.append({**row, "load_1min": load})
                print(f"{kind:>7}: {row['per_s']:8.1f}/s ({row['seconds']:.1f} s, load {load})")
    elapsed = time.perf_counter() - started

    subject = next(r for r in rows if r["kind"] == "subject")
    peer_rate = median([r["per_s"] for r in rows if r["kind"] == "peer"])
    summary = {
        "subject_jobs_per_s": subject["per_s"],
        "peer_messages_per_s": peer_rate,
        "ratio_subject_to_peer": ratio(subject["per_s"], peer_rate),
        "subject_ms_per_photo": 1000 / subject["per_s"],
        "peer_ms_per_message": 1000 / peer_rate,
        "subject_seconds": subject["seconds"],
        "duplicate_messages": subject["messages_in_redis"] - args.photos,
        "load_1min": sampler.summary(),
        "wall_s": round(elapsed, 1),
    }
    print()
    print_table(
        ["path", "items/s", "ms/item", "vs peer", "total s"],
        [
            ["raw kombu publish (peer)", peer_rate, 1000 / peer_rate, 1.0, args.photos / peer_rate],
            [f"{args.photos}-photo batch via API (subject)", subject["per_s"], 1000 / subject["per_s"],
             summary["ratio_subject_to_peer"], subject["seconds"]],
        ],
    )
    print(f"{subject['messages_in_redis']} messages in Redis for {args.photos} jobs; "
          f"load average {sampler.summary()['mean']} (max {sampler.summary()['max']}) on this run")
    write_results("bulk_submit", {
        "setup": {
            "photos": args.photos,
            "photo": f"{width}x{height} grey JPEG, distinct, ~{sum(map(len, photos)) // len(photos)} bytes",
            "files_per_request": FILES_PER_REQUEST,
            "streams": args.streams,
            "api_workers": 2,
            "tenant_backlog_limit": args.photos,
            "subject": "POST /v1/batches/{id}/photos x N/1000 + submit: sniff + header check, S3 put (moto), "
                       "PostgreSQL job rows, one Celery message per job in Redis (no worker running)",
            "peer": "kombu Producer.publish of N persistent JSON messages, one call each, same Redis",
            "order": "peer, subject, peer",
        },
        "summary": summary,
        "runs": rows,
    })


if __name__ == "__main__":
    main()
