"""``submit`` over the real service: every photo once, bad files skipped with their reason, a rerun
that changes nothing, large files through multipart presigned uploads, and 2,000 files with the
client process killed (SIGKILL) three times on the way."""

from __future__ import annotations

import hashlib
import io
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
from conftest import BAD_FILES, client_command, make_folder
from pikfix_client.names import decode_name
from PIL import Image

MiB = 1024 * 1024


def batch_jobs(stack, batch_id: str) -> list[dict]:
    with stack.client() as c:
        from pikfix_client.status import pages

        return list(pages(c.http, batch_id))


def tenant_batches(stack) -> list[dict]:
    answer = httpx.get(f"{stack.url}/v1/batches", headers={"Authorization": f"Bearer {stack.key}"}, timeout=30)
    answer.raise_for_status()
    return answer.json()["items"]


def test_submit_folder_once_and_rerun_is_a_no_op(stack, tmp_path):
    folder = tmp_path / "scans"
    good = make_folder(folder, 30)
    with stack.client() as c:
        first = c.submit(folder, reference_mode="none", batch_name="album 1931")
        again = c.submit(folder, reference_mode="none", batch_name="album 1931")

    assert first.registered == 30 and first.uploaded == 30 and not first.already_submitted
    assert {s.path for s in first.skipped} == set(BAD_FILES)
    reasons = {s.path: s.reason for s in first.skipped}
    assert reasons["empty.jpg"].startswith("empty file")
    assert reasons["notes/readme.jpg"].startswith("not an image")
    assert reasons["box3/cut.jpg"].startswith("truncated JPEG")
    assert reasons["box1/scan.txt"].startswith("not a photo")
    jobs = batch_jobs(stack, first.batch_id)
    assert sorted(decode_name(j["input_name"]) for j in jobs) == sorted(good)
    for job in jobs:
        assert job["input_sha256"] == hashlib.sha256(good[decode_name(job["input_name"])]).hexdigest()

    assert again.already_submitted and again.batch_id == first.batch_id and again.uploaded == 0
    assert len(tenant_batches(stack)) == 1


def noisy_png(width: int, height: int) -> bytes:
    pixels = np.random.default_rng(3).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, "PNG", compress_level=0)
    return out.getvalue()


def test_large_file_goes_up_in_parts_and_arrives_intact(stack, tmp_path):
    folder = tmp_path / "large"
    big = noisy_png(1900, 1900)  # ~10.3 MiB: three parts of 5 MiB
    assert 10 * MiB < len(big) < 15 * MiB
    (folder / "maps").mkdir(parents=True)
    (folder / "maps" / "big map.png").write_bytes(big)
    small = make_folder(folder, 3, bad=False)
    with stack.client() as c:
        result = c.submit(folder, reference_mode="none", multipart_threshold=6 * MiB, part_size=5 * MiB)
    assert result.registered == 4 and result.bytes_uploaded == len(big) + sum(map(len, small.values()))
    by_name = {decode_name(j["input_name"]): j for j in batch_jobs(stack, result.batch_id)}
    assert by_name["maps/big map.png"]["input_sha256"] == hashlib.sha256(big).hexdigest()
    assert by_name["maps/big map.png"]["input_bytes"] == len(big)


def test_multipart_routes_refuse_bad_completions(stack):
    headers = {"Authorization": f"Bearer {stack.key}"}
    with httpx.Client(base_url=stack.url, headers=headers, timeout=30) as http:
        batch = http.post("/v1/batches", json={"name": "parts"}).json()
        started = http.post(f"/v1/batches/{batch['id']}/multipart", json={"name": "a.tif", "size": 12 * MiB,
                                                                         "part_size": 5 * MiB})
        assert started.status_code == 200, started.text
        assert [p["part_number"] for p in started.json()["parts"]] == [1, 2, 3]
        too_small = http.post(f"/v1/batches/{batch['id']}/multipart", json={"name": "a.tif", "size": 9,
                                                                           "part_size": 1024})
        assert too_small.status_code == 422 and too_small.json()["error"]["code"] == "validation_error"
        wrong = http.post(f"/v1/batches/{batch['id']}/multipart/complete", json={
            "name": "a.tif", "upload_id": started.json()["upload_id"], "parts": [{"part_number": 1, "etag": '"x"'}]})
        assert wrong.status_code == 422, wrong.text
        assert "cannot be completed" in wrong.json()["error"]["message"]


# --------------------------------------------------------------------------- killed three times


def _run_client(stack, folder: Path, kill_after: float | None) -> subprocess.CompletedProcess | None:
    cmd = [*client_command(), "submit", str(folder), "--reference-mode", "none", "--concurrency", "8"]
    proc = subprocess.Popen(cmd, env=stack.client_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if kill_after is None:
        out, err = proc.communicate(timeout=240)
        return subprocess.CompletedProcess(cmd, proc.returncode, out.decode(), err.decode())
    try:
        proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    return None


def test_submit_killed_three_times_ends_with_each_photo_once(stack, tmp_path):
    folder = tmp_path / "bureau"
    good = make_folder(folder, 2000 - 4)  # and the four bad files: 2,000 in all
    assert sum(1 for p in folder.rglob("*") if p.is_file()) == 2000
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    delays = [rng.uniform(0.5, 6.0) for _ in range(3)]
    started = time.monotonic()
    for delay in delays:
        _run_client(stack, folder, kill_after=delay)
    done = _run_client(stack, folder, kill_after=None)
    context = f"kills after {[round(d, 2) for d in delays]} s (seed {seed})"
    assert done is not None and done.returncode == 0, f"{context}\n{done.stderr[-3000:]}"
    batch_id = done.stdout.strip().splitlines()[-1]
    resumed = re.search(r"uploading (\d+) of 1996 files \((\d+) already uploaded\)", done.stderr)
    if resumed:  # else an earlier run uploaded everything (and maybe submitted)
        assert int(resumed.group(1)) + int(resumed.group(2)) == 1996, context

    batches = tenant_batches(stack)
    assert [b["id"] for b in batches] == [batch_id], context
    jobs = batch_jobs(stack, batch_id)
    names = [decode_name(j["input_name"]) for j in jobs]
    assert len(names) == len(good) == 1996 and sorted(names) == sorted(good), context
    assert batches[0]["status"] in ("submitted", "finished")
    print(f"2,000 files, {context}: {time.monotonic() - started:.1f}s; last run: "
          f"{resumed.group(0) if resumed else 'nothing left to upload'}")
