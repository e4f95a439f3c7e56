"""Status polling: requests/s and p50/p99 latency of ``GET /v1/batches/{id}`` under concurrent load, against
a bare FastAPI endpoint serving the same JSON, measured in the same run with wrk (a separate process,
real HTTP, keep-alive connections).

Subject: ``pikfix api`` (2 uvicorn processes, as shipped) answering for a batch of ``--jobs`` jobs in
PostgreSQL (60 % succeeded with their metrics, 5 % failed, 5 % running, 30 % queued). Every request
authenticates its API key (a database lookup), reads the batch and its per-status counts, computes
throughput and ETA, and passes the request-size and Prometheus middlewares.

Peer: a bare FastAPI app (the same uvicorn settings: 2 processes, log level warning) whose endpoint at
the same path is a plain ``def`` returning the subject's response body, captured once: the same bytes
on the wire, none of the work.

Rounds alternate between peer and subject (``--rounds`` each, ``--duration`` seconds each) after a
short warm-up of both. wrk is preferred; without it (``apt-get install wrk``) an asyncio/httpx load
generator in this process stands in and the JSON says so.

    python bench/status_polling.py [--jobs 2000] [--connections 16] [--duration 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import (
    LoadSampler,
    load_average,
    median,
    percentile,
    print_table,
    ratio,
    service_stack,
    write_results,
)

PEER_BODY_ENV = "PIKFIX_BENCH_PEER_BODY"


# --------------------------------------------------------------------------- the peer: a bare FastAPI app


def peer_app():
    """The peer (``uvicorn --factory status_polling:peer_app``): one route, a canned body, no middleware."""
    from fastapi import FastAPI

    body = json.loads(Path(os.environ[PEER_BODY_ENV]).read_text())
    app = FastAPI()

    @app.get("/v1/batches/{batch_id}")
    def get_batch(batch_id: str) -> dict:
        return body

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    return app


# --------------------------------------------------------------------------- the batch being polled


def populate_batch(database_url: str, tenant_id: str, batch_id: str, jobs: int) -> dict[str, int]:
    """Fill the batch with ``jobs`` jobs in a realistic mix of states, through the repository functions."""
    from db import repository as repo
    from db.session import session_scope

    metrics = {"colourfulness": 12.5, "sharpness": 0.031, "noise_sigma": 0.004, "out_of_gamut_rate": 0.0}
    with session_scope(database_url) as s:
        ids = [repo.create_job(s, tenant_id, batch_id, f"{tenant_id}/originals/{i:064x}.jpg", f"{i:064x}",
                               f"scan-{i:05d}.jpg", 2000).id for i in range(jobs)]
        repo.submit_batch(s, tenant_id, batch_id)
    n_ok, n_failed, n_running = int(jobs * 0.60), int(jobs * 0.05), int(jobs * 0.05)
    with session_scope(database_url) as s:
        for i, job_id in enumerate(ids[: n_ok + n_failed + n_running]):
            attempt = repo.claim_job(s, job_id, "bench@worker", 5).attempt
            if i < n_ok:
                repo.complete_job(s, job_id, attempt, f"{tenant_id}/results/{job_id}.png", model_name="null",
                                  checkpoint_sha256="0" * 64, device="cpu", width=64, height=48,
                                  metrics=metrics, references=[])
            elif i < n_ok + n_failed:
                repo.fail_job(s, job_id, attempt, "corrupt_image", "the JPEG header is damaged")
    with session_scope(database_url, readonly=True) as s:
        return repo.batch_status_counts(s, batch_id)


# --------------------------------------------------------------------------- load generators


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(number) * _UNITS[unit]


def run_wrk(url: str, key: str, connections: int, duration: float) -> dict:
    """One wrk run: requests/s, p50/p90/p99 latency (ms); non-2xx answers or socket errors fail the run."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration:.0f}s", "--latency", "--timeout", "10s",
           "-H", f"Authorization: Bearer {key}", url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    latency = dict(re.findall(r"^\s+(50|90|99)%\s+(\S+)$", out, re.M))
    return {
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "p50_ms": _ms(latency["50"]),
        "p90_ms": _ms(latency["90"]),
        "p99_ms": _ms(latency["99"]),
    }


def run_httpx(url: str, key: str, connections: int, duration: float) -> dict:
    """The fallback load generator: ``connections`` asyncio clients, each keeping one connection busy."""
    import httpx

    async def client(deadline: float, latencies: list[float]) -> None:
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, limits=limits, timeout=10) as c:
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                r = await c.get(url)
                if r.status_code != 200:
                    raise RuntimeError(f"{r.status_code} {r.text[:200]}")
                latencies.append((time.perf_counter() - t) * 1000)

    async def run() -> tuple[list[float], float]:
        latencies: list[float] = []
        start = time.perf_counter()
        await asyncio.gather(*(client(start + duration, latencies) for _ in range(connections)))
        return latencies, time.perf_counter() - start

    latencies, seconds = asyncio.run(run())
    return {
        "requests_per_s": len(latencies) / seconds,
        "requests": len(latencies),
        "p50_ms": percentile(latencies, 50),
        "p90_ms": percentile(latencies, 90),
        "p99_ms": percentile(latencies, 99),
    }


# --------------------------------------------------------------------------- the run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000, help="jobs in the polled batch")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--generator", choices=["auto", "wrk", "httpx"], default="auto")
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args()

    generator = args.generator
    if generator == "auto":
        generator = "wrk" if shutil.which("wrk") else "httpx"
    load = run_wrk if generator == "wrk" else run_httpx
    import httpx

    started = time.perf_counter()
    rows: list[dict] = []
    with service_stack(keep_logs=args.keep_logs) as stack, LoadSampler() as sampler:
        port, peer_port = stack.free_port(), stack.free_port()
        stack.start_api(port, workers=2)
        tenant_id, key = stack.create_tenant_key()
        base = f"http://127.0.0.1:{port}"
        auth = {"Authorization": f"Bearer {key}"}
        batch = httpx.post(f"{base}/v1/batches", json={"name": "polled"}, headers=auth, timeout=60)
        batch.raise_for_status()
        batch_id = batch.json()["id"]
        counts = populate_batch(stack.database_url, tenant_id, batch_id, args.jobs)
        body = httpx.get(f"{base}/v1/batches/{batch_id}", headers=auth, timeout=60)
        body.raise_for_status()
        body_path = stack.workdir / "peer-body.json"
        body_path.write_text(body.text)

        stack.group.start_process(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(__file__).resolve().parent), "--factory",
             "status_polling:peer_app", "--host", "127.0.0.1", "--port", str(peer_port), "--workers", "2",
             "--log-level", "warning"],
            env={**stack.env, PEER_BODY_ENV: str(body_path)},
            ready=lambda: httpx.get(f"http://127.0.0.1:{peer_port}/healthz", timeout=2).status_code == 200,
            timeout=120, name="peer-api",
        )
        urls = {"subject": f"{base}/v1/batches/{batch_id}",
                "peer": f"http://127.0.0.1:{peer_port}/v1/batches/{batch_id}"}
        peer_body = httpx.get(urls["peer"], timeout=10)
        assert peer_body.json() == body.json(), "the peer must serve the subject's response"
        for kind in ("peer", "subject"):  # warm-up: every uvicorn process, its pools and caches
            load(urls[kind], key, args.connections, 3)
        for r in range(args.rounds):
            for kind in (("peer", "subject") if r % 2 == 0 else ("subject", "peer")):
                load_1min = load_average()[0]
                row = {"round": r, "kind": kind, **load(urls[kind], key, args.connections, args.duration),
                       "load_1min": load_1min}
                rows.append(row)
                print(f"round {r} {kind:>7}: {row['requests_per_s']:7.0f} req/s, p50 {row['p50_ms']:.1f} ms, "
                      f"p99 {row['p99_ms']:.1f} ms (load {load_1min})")
    elapsed = time.perf_counter() - started

    def med(kind: str, field: str) -> float:
        return median([x[field] for x in rows if x["kind"] == kind])

    summary = {kind: {f: med(kind, f) for f in ("requests_per_s", "p50_ms", "p90_ms", "p99_ms")}
               for kind in ("subject", "peer")}
    summary["ratio_requests_per_s"] = ratio(summary["subject"]["requests_per_s"], summary["peer"]["requests_per_s"])
    summary["ratio_p50"] = ratio(summary["subject"]["p50_ms"], summary["peer"]["p50_ms"])
    summary["ratio_p99"] = ratio(summary["subject"]["p99_ms"], summary["peer"]["p99_ms"])
    summary["load_1min"] = sampler.summary()
    summary["wall_s"] = round(elapsed, 1)
    print()
    print_table(
        ["endpoint", "req/s", "p50 ms", "p90 ms", "p99 ms", "req/s vs peer"],
        [
            ["bare FastAPI, same body (peer)", summary["peer"]["requests_per_s"], summary["peer"]["p50_ms"],
             summary["peer"]["p90_ms"], summary["peer"]["p99_ms"], 1.0],
            ["GET /v1/batches/{id} (subject)", summary["subject"]["requests_per_s"], summary["subject"]["p50_ms"],
             summary["subject"]["p90_ms"], summary["subject"]["p99_ms"], summary["ratio_requests_per_s"]],
        ],
    )
    print(f"load average {sampler.summary()['mean']} (max {sampler.summary()['max']}) on {os.cpu_count()} CPUs")
    write_results("status_polling" if args.jobs == 2000 else f"status_polling_{args.jobs}", {
        "setup": {
            "generator": "wrk -t1 (separate process, keep-alive)" if generator == "wrk" else "asyncio httpx",
            "connections": args.connections,
            "duration_s": args.duration,
            "rounds": args.rounds,
            "batch_jobs": args.jobs,
            "batch_counts": counts,
            "response_bytes": len(body.content),
            "subject": "pikfix api (2 uvicorn processes), PostgreSQL, API-key auth per request",
            "peer": "bare FastAPI app, 2 uvicorn processes, plain def returning the subject's captured body",
            "order": "3 s warm-up each, then alternating rounds (peer first on even rounds)",
        },
        "summary": summary,
        "rounds": rows,
    })


if __name__ == "__main__":
    main()
