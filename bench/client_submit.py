"""The bureau client's upload speed: ``pikfix-client submit`` of a folder, in files/s and MB/s, against
plain boto3-presigned PUTs of the same files at the same concurrency to the same moto server, in one run.

Subject: ``Client.submit`` (the library the ``pikfix-client`` command runs) of ``--files`` distinct
JPEGs of about ``--kb`` KiB in nested folders, ``--concurrency`` PUTs in flight: walk and sniff the
folder, create the batch (idempotency key), presign through the API 200 names at a time, read, hash
and PUT every file, record each in the SQLite state file, then submit. Its upload figure is the whole
call minus the submit request (the API reading back and registering every photo, which no peer does);
the end-to-end figure is given too.

Peer: the same files PUT to URLs that boto3 presigns locally (``generate_presigned_url``, no API
round trip), from a thread pool of the same size sharing one httpx connection pool; nothing recorded.

Order: peer, subject, peer; the peer figure is the median of its two runs.

    python bench/client_submit.py [--files 2000] [--kb 96] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from common import LoadSampler, load_average, median, print_table, ratio, service_stack, write_results
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "client"))  # the client, installed or not

from pikfix_client import Client  # noqa: E402


def make_folder(root: Path, files: int, kb: int) -> list[Path]:
    """Distinct noisy JPEGs of about ``kb`` KiB each, spread over nested folders."""
    side = int((kb * 1024 / 0.85) ** 0.5)  # grey noise at quality 90 costs ~0.85 bytes a pixel
    rng = np.random.default_rng(0)
    paths = []
    for i in range(files):
        path = root / f"box{i % 10}" / f"sleeve {i % 7}" / f"scan-{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        out = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8), "L").save(out, "JPEG", quality=90)
        path.write_bytes(out.getvalue())
        paths.append(path)
    return paths


def boto3_peer(s3_env: dict[str, str], paths: list[Path], root: Path, concurrency: int) -> dict:
    """Presign with boto3 in this process and PUT every file, ``concurrency`` at a time."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_env["PIKFIX_S3_ENDPOINT_URL"], region_name=s3_env["PIKFIX_S3_REGION"],
                      aws_access_key_id=s3_env["PIKFIX_S3_ACCESS_KEY_ID"],
                      aws_secret_access_key=s3_env["PIKFIX_S3_SECRET_ACCESS_KEY"])
    bucket = s3_env["PIKFIX_STORAGE_URL"].removeprefix("s3://").split("/", 1)[0]
    prefix = f"peer-{uuid.uuid4().hex[:8]}"
    http = httpx.Client(timeout=120, limits=httpx.Limits(max_connections=32, max_keepalive_connections=32))

    def put(path: Path) -> int:
        key = f"{prefix}/{path.relative_to(root).as_posix()}"
        url = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=3600)
        data = path.read_bytes()
        response = http.put(url, content=data)
        response.raise_for_status()
        return len(data)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        nbytes = sum(pool.map(put, paths))
    seconds = time.perf_counter() - start
    http.close()
    stored = sum(1 for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
                 for _ in page.get("Contents", []))
    if stored != len(paths):
        raise RuntimeError(f"peer: {stored} objects stored for {len(paths)} files")
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):  # keep moto small
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})
    return {"kind": "peer", "files": len(paths), "bytes": nbytes, "seconds": seconds}


def client_subject(url: str, key: str, root: Path, concurrency: int) -> dict:
    """``Client.submit`` end to end; the submit request's own time is taken out of the upload figure."""
    submit_s = [0.0]
    began: dict[int, float] = {}

    def on_request(request: httpx.Request) -> None:
        if request.url.path.endswith("/submit"):
            began[id(request)] = time.perf_counter()

    def on_response(response: httpx.Response) -> None:
        if id(response.request) in began:
            submit_s[0] += time.perf_counter() - began.pop(id(response.request))

    with Client(url, key) as client:
        client.http.api.event_hooks = {"request": [on_request], "response": [on_response]}
        start = time.perf_counter()
        result = client.submit(root, reference_mode="none", concurrency=concurrency, batch_name="bench")
        seconds = time.perf_counter() - start
    if result.registered != result.files or result.skipped:
        raise RuntimeError(f"subject: {result.registered} jobs for {result.files} files, skipped {result.skipped}")
    return {"kind": "subject", "files": result.uploaded, "bytes": result.bytes_uploaded,
            "seconds": seconds - submit_s[0], "end_to_end_s": seconds, "submit_request_s": submit_s[0],
            "jobs_registered": result.registered}


def rates(row: dict) -> dict:
    return {**row, "files_per_s": row["files"] / row["seconds"], "mb_per_s": row["bytes"] / 1e6 / row["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--kb", type=int, default=96, help="approximate size of each JPEG in KiB")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="pikfix-client-bench-"))
    t = time.perf_counter()
    paths = make_folder(workdir / "scans", args.files, args.kb)
    total = sum(p.stat().st_size for p in paths)
    print(f"{len(paths)} JPEGs, {total / 1e6:.1f} MB, made in {time.perf_counter() - t:.1f} s")
    started = time.perf_counter()
    rows = []
    with service_stack(keep_logs=args.keep_logs) as stack, LoadSampler() as sampler:
        port = stack.free_port()
        stack.start_api(port, workers=2)
        _, key = stack.create_tenant_key()
        url = f"http://127.0.0.1:{port}"
        for kind in ("peer", "subject", "peer"):
            load = load_average()[0]
            if kind == "peer":
                row = boto3_peer(stack.s3_env, paths, workdir / "scans", args.concurrency)
            else:
                row = client_subject(url, key, workdir / "scans", args.concurrency)
            row = {**rates(row), "load_1min": load}
            rows.append(row)
            print(f"{kind:>7}: {row['files_per_s']:7.1f} files/s {row['mb_per_s']:6.1f} MB/s "
                  f"({row['seconds']:.1f} s, load {load})")
    elapsed = time.perf_counter() - started

    subject = next(r for r in rows if r["kind"] == "subject")
    peer_files = median([r["files_per_s"] for r in rows if r["kind"] == "peer"])
    peer_mb = median([r["mb_per_s"] for r in rows if r["kind"] == "peer"])
    summary = {
        "subject_files_per_s": subject["files_per_s"],
        "subject_mb_per_s": subject["mb_per_s"],
        "peer_files_per_s": peer_files,
        "peer_mb_per_s": peer_mb,
        "ratio_files_per_s": ratio(subject["files_per_s"], peer_files),
        "ratio_mb_per_s": ratio(subject["mb_per_s"], peer_mb),
        "goal_ratio": 0.8,
        "subject_end_to_end_files_per_s": subject["files"] / subject["end_to_end_s"],
        "subject_submit_request_s": subject["submit_request_s"],
        "load_1min": sampler.summary(),
        "wall_s": round(elapsed, 1),
    }
    print()
    print_table(["path", "files/s", "MB/s", "vs peer"], [
        ["boto3 presigned PUTs (peer)", peer_files, peer_mb, 1.0],
        ["pikfix-client submit, uploads (subject)", subject["files_per_s"], subject["mb_per_s"],
         summary["ratio_files_per_s"]],
        ["pikfix-client submit, end to end", summary["subject_end_to_end_files_per_s"],
         subject["bytes"] / 1e6 / subject["end_to_end_s"], None],
    ])
    write_results("client_submit", {
        "setup": {
            "files": args.files, "bytes": total, "photo": f"distinct grey noise JPEGs, ~{total // args.files} bytes",
            "concurrency": args.concurrency, "api_workers": 2, "object_store": "moto server (same for both)",
            "subject": "Client.submit: scan + sniff, batch create, presign via API (200 names a call), read + "
                       "sha256 + PUT, SQLite state per file; upload figure excludes the submit request",
            "peer": "boto3 generate_presigned_url per file in-process + httpx PUT, thread pool of the same size",
            "order": "peer, subject, peer",
        },
        "summary": summary,
        "runs": rows,
    })


if __name__ == "__main__":
    main()
