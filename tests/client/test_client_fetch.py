"""``status`` and ``fetch`` over the real service with a worker running the tiny checkpoint: failures
shown with their codes, a fetch killed (SIGKILL) mid-way that resumes, and a bag that the ``bagit``
package's own validator accepts."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import time
from pathlib import Path

import bagit
import numpy as np
from conftest import client_command, jpeg, make_folder
from PIL import Image

FETCH_TIMEOUT_S = 180


def corrupt_png() -> bytes:
    """Header and end marker intact, pixel data damaged: accepted at upload, failed by the worker."""
    pixels = np.random.default_rng(5).integers(0, 256, size=(48, 64), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "L").save(out, "PNG")
    data = bytearray(out.getvalue())
    start = data.find(b"IDAT") + 20
    for i in range(start, start + 40):
        data[i] ^= 0x5A
    return bytes(data)


def wait_finished(stack, batch_id: str, timeout: float):
    deadline = time.monotonic() + timeout
    with stack.client() as c:
        while time.monotonic() < deadline:
            status = c.status(batch_id)
            if status.finished:
                return status
            time.sleep(0.5)
    raise AssertionError(f"batch {batch_id} did not finish: {status}\n{stack.cluster.log_tail()}")


def kill_after_first_result(cmd: list[str], env: dict[str, str], data: Path) -> int:
    """Start a fetch and SIGKILL it as soon as its first result is in place."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if data.is_dir() and any(p.suffix == ".png" for p in data.rglob("*.png")):
            proc.kill()
            break
        time.sleep(0.002)
    proc.wait(timeout=30)
    return proc.returncode


def test_status_then_fetch_killed_midway_resumes_into_a_valid_bag(stack, tmp_path):
    folder = tmp_path / "scans"
    good = make_folder(folder, 0, bad=False)
    for i in range(40):
        rel = f"box{i % 3}/sleeve {i % 2}/photo-{i:02d}.jpg"
        good[rel] = jpeg(40 + i % 5, 32 + i % 3, seed=100 + i)
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(good[rel])
    (folder / "damaged.png").write_bytes(corrupt_png())
    stack.cluster.start_worker(concurrency=2)
    stack.cluster.start_beat({"PIKFIX_MAINTENANCE_INTERVAL_S": "1"})  # finishes the batch and writes its report
    with stack.client() as c:
        submitted = c.submit(folder, reference_mode="none", batch_name="sleeves")
    assert submitted.registered == 41
    status = wait_finished(stack, submitted.batch_id, FETCH_TIMEOUT_S)
    assert status.counts.get("succeeded") == 40 and status.counts.get("failed") == 1
    assert [(f.name, f.code) for f in status.failures] == [("damaged.png", "corrupt_image")]

    shown = subprocess.run([*client_command(), "status", submitted.batch_id], env=stack.client_env(),
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "41/41 done" in shown.stdout and "succeeded: 40" in shown.stdout
    assert "damaged.png: corrupt_image" in shown.stdout

    out = tmp_path / "bag"
    cmd = [*client_command(), "fetch", submitted.batch_id, "--out", str(out), "--concurrency", "1"]
    assert kill_after_first_result(cmd, stack.client_env(), out / "data") == -9
    partial = [p for p in (out / "data").rglob("*.png")]
    assert 1 <= len(partial) < 40 and not (out / "bagit.txt").exists()
    (out / "data" / "box0" / ".photo-03.png.pikfix-part").write_bytes(b"half")  # as a kill mid-write leaves

    done = subprocess.run(cmd, env=stack.client_env(), capture_output=True, text=True, timeout=FETCH_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    assert f"{40 - len(partial)} result(s) downloaded, {len(partial)} already present" in done.stderr

    validated = subprocess.run([str(Path(sys.executable).with_name("bagit.py")), "--validate", str(out)],
                               capture_output=True, text=True, timeout=60)
    assert validated.returncode == 0, validated.stderr
    bag = bagit.Bag(str(out))
    payload = sorted(p.removeprefix("data/") for p in bag.payload_files())
    assert payload == sorted(rel.removesuffix(".jpg") + ".png" for rel in good)
    for rel, data in good.items():
        with Image.open(io.BytesIO(data)) as original, Image.open(out / "data" / (rel[:-4] + ".png")) as restored:
            assert restored.size == original.size
    info = bag.info
    assert info["Batch-Id"] == submitted.batch_id
    assert info["Checkpoint-Sha256"] == stack.cluster.checkpoint.sha256
    assert info["Pikfix-Version"] != "unknown"
    assert (info["Jobs-Total"], info["Jobs-Succeeded"], info["Jobs-Failed"]) == ("41", "40", "1")
    assert (out / "pikfix-report.html").read_bytes().lstrip().lower().startswith(b"<!doctype html")
    assert "pikfix-report.html" in bag.tagfile_entries() and "pikfix-jobs.tsv" in bag.tagfile_entries()
    manifest = (out / "manifest-sha256.txt").read_text()
    for rel in list(good)[:3]:
        digest = hashlib.sha256((out / "data" / (rel[:-4] + ".png")).read_bytes()).hexdigest()
        assert f"{digest}  data/{rel[:-4]}.png" in manifest or f"{digest} data/{rel[:-4]}.png" in manifest

    again = subprocess.run(cmd, env=stack.client_env(), capture_output=True, text=True, timeout=FETCH_TIMEOUT_S)
    assert again.returncode == 0 and "0 result(s) downloaded, 40 already present" in again.stderr
    assert bagit.Bag(str(out)).is_valid()
