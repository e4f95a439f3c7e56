"""Shared helpers of the service benchmarks: real services, the machine's load, tables and results.

Every service benchmark measures a subject (pikfix's own path) and a peer (the bare mechanism it is
built on: a Celery round trip, kombu publishing, a bare FastAPI endpoint) in the same run, interleaved
round by round, on a machine that other work shares. The ratio subject/peer is the figure that
survives that sharing; absolute figures are printed beside the load average they were taken under.

Services are real processes, started with the same classes the test suite uses (``tests/fixtures``):
a private redis-server, moto's S3 server with a fresh bucket, a fresh database on the local
PostgreSQL server, and ``pikfix api`` / ``pikfix worker`` subprocesses with ``PIKFIX_CHECKPOINT=null``
(``pikfix.null_model``), so a job costs what the system costs and not what the model costs.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS_DIR = ROOT / "bench" / "results"
CLI = [sys.executable, "-m", "service.cli"]


# --------------------------------------------------------------------------- the machine


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (all processes of the machine, ours included)."""
    return [round(x, 2) for x in os.getloadavg()]


def machine_info() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


class LoadSampler:
    """Samples the 1-minute load average every ``interval`` seconds while a benchmark runs."""

    def __init__(self, interval: float = 2.0) -> None:
        self.interval = interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(self.interval)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float | None]:
        if not self.samples:
            return {"mean": None, "max": None}
        return {"mean": round(statistics.fmean(self.samples), 2), "max": round(max(self.samples), 2)}


# --------------------------------------------------------------------------- statistics and output


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def ratio(subject: float, peer: float) -> float:
    return subject / peer if peer else math.nan


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Print (and return) a plain aligned table; floats get three significant decimals."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            if math.isnan(value):
                return "-"
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return "-" if value is None else str(value)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    text = "\n".join(lines)
    print(text)
    return text


def write_results(name: str, payload: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>.json`` atomically, stamped with time, machine and load."""
    record = {
        "benchmark": name,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {**machine_info(), "load_average_at_end": load_average()},
        **payload,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)
    print(f"wrote {path.relative_to(ROOT)}")
    return path


# --------------------------------------------------------------------------- photos


def small_photo(seed: int, width: int = 64, height: int = 48, fmt: str = "JPEG") -> bytes:
    """A small grey photo, different for every seed (storage is content-addressed: equal bytes would
    be stored once, which is not what a real batch of distinct scans costs)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 128 + 60 * np.sin(x / (5 + seed % 7)) * np.cos(y / (4 + seed % 5)) + rng.normal(0, 8, (height, width))
    out = io.BytesIO()
    Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(out, fmt)
    return out.getvalue()


# --------------------------------------------------------------------------- services


def _fixtures():
    """The test suite's service classes (plain Python, no pytest needed)."""
    from tests.fixtures import moto_service, postgres_service, processes, redis_service

    return moto_service, postgres_service, processes, redis_service


def _base_env() -> dict[str, str]:
    """This process's environment without settings that would leak into the services."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PIKFIX_") and k != "PROMETHEUS_MULTIPROC_DIR"}


@dataclass
class Stack:
    """Running services and the environment that points pikfix processes at them."""

    workdir: Path
    redis: Any  # tests.fixtures.redis_service.RedisServer
    database_url: str
    s3_env: dict[str, str]
    group: Any  # tests.fixtures.processes.ProcessGroup
    env: dict[str, str] = field(default_factory=dict)

    @property
    def broker_url(self) -> str:
        return self.redis.url

    def free_port(self) -> int:
        _, _, processes, _ = _fixtures()
        return processes.free_port()

    def start_api(self, port: int, workers: int = 2, extra_env: dict[str, str] | None = None):
        """``pikfix api`` (uvicorn) on ``port``, ready once /healthz answers."""
        env = {**self.env, **(extra_env or {})}  # `pikfix api` sets up Prometheus' multiprocess folder itself
        return self.group.start_process(
            [*CLI, "api", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)],
            env=env, ready=lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), timeout=180, name=f"api-{port}",
        )

    def start_worker(self, hostname: str, queues: str = "restore", concurrency: int = 1):
        """``pikfix worker`` (Celery prefork), ready once it logs `` ready.``."""
        return self.group.start_process(
            [*CLI, "worker", "--queues", queues, "--hostname", hostname, "--concurrency", str(concurrency),
             "--loglevel", "INFO"],
            env=self.env, ready=lambda proc: "ready." in proc.log_text(), timeout=180, name=f"worker-{hostname}",
        )

    def create_tenant_key(self, name: str = "bench") -> tuple[str, str]:
        """A tenant and an API key for it, written straight into the database: (tenant_id, key)."""
        from db import repository as repo
        from db.session import session_scope

        with session_scope(self.database_url) as s:
            tenant = repo.create_tenant(s, name)
            key, _ = repo.create_api_key(s, tenant.id, "benchmark")
            return tenant.id, key


def http_ok(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _ProductionRedis(base: type) -> type:
    """The tests' RedisServer with docker-compose.yml's durability: AOF fsynced every second, not on every
    write (the tests want ``always`` to survive SIGKILL; a benchmark wants production's figures)."""

    class ProductionRedis(base):  # type: ignore[misc, valid-type]
        def _command(self) -> list[str]:
            cmd = super()._command()
            cmd[cmd.index("--appendfsync") + 1] = "everysec"
            return cmd

    return ProductionRedis


@contextlib.contextmanager
def service_stack(extra_env: dict[str, str] | None = None, keep_logs: bool = False) -> Iterator[Stack]:
    """redis-server (AOF, fsync every second), moto S3 (fresh bucket) and a fresh PostgreSQL database,
    migrated; all torn down on exit. ``extra_env`` adds ``PIKFIX_*`` settings for the pikfix processes
    started from the stack."""
    moto_service, postgres_service, processes, redis_service = _fixtures()
    workdir = Path(tempfile.mkdtemp(prefix="pikfix-bench-"))
    group = processes.ProcessGroup(workdir / "logs")
    redis = _ProductionRedis(redis_service.RedisServer)(workdir / "redis")
    moto = moto_service.MotoServer(workdir / "moto")
    admin = postgres_service.find_postgres_admin()
    try:
        os.environ.update(moto_service.AWS_TEST_ENV)  # boto3 in this process must never reach real AWS
        redis.start()
        moto.start()
        bucket = moto_service.S3Bucket(moto.endpoint_url, moto.create_bucket())
        with admin.fresh_database() as database_url:
            from db.migrate import upgrade
            from db.session import dispose_engine

            upgrade(database_url)
            env = {
                **_base_env(),
                **bucket.env,
                "PIKFIX_DATABASE_URL": database_url,
                "PIKFIX_BROKER_URL": redis.url,
                "PIKFIX_CHECKPOINT": "null",
                "PIKFIX_DEVICE": "cpu",
                "PIKFIX_DATA_DIR": str(workdir / "data"),
                "PIKFIX_LOG_LEVEL": "warning",
                "PYTHONUNBUFFERED": "1",
                **(extra_env or {}),
            }
            stack = Stack(workdir, redis, database_url, bucket.env, group, env)
            try:
                yield stack
            finally:
                group.close()
                dispose_engine(database_url)
    finally:
        group.close()
        moto.stop()
        redis.stop()
        if keep_logs:
            print(f"service logs kept in {workdir}")
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)


def wait_until(predicate, timeout: float, interval: float = 0.1, what: str = "a condition") -> float:
    """Poll until ``predicate()`` is true; returns ``time.perf_counter()`` at that moment, else raises."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return time.perf_counter()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


__all__ = [
    "CLI",
    "LoadSampler",
    "RESULTS_DIR",
    "ROOT",
    "Stack",
    "http_ok",
    "load_average",
    "machine_info",
    "median",
    "percentile",
    "print_table",
    "ratio",
    "service_stack",
    "small_photo",
    "wait_until",
    "write_results",
]
