"""Shared helpers for the job-system tests: a tiny model checkpoint, synthetic photos, zip archives,
polling and process inspection.

The checkpoint is the real Pik-Fix graph at toy widths (random weights): the job system only needs a
model that loads, runs and records provenance, and at these widths a 128 px photo takes a fraction of
a second on a shared CPU. Photos are generated, so no test depends on files outside the repository.
"""

from __future__ import annotations

import io
import os
import stat
import time
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from PIL import Image

from pikfix.config import PikFixConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLES = REPO_ROOT / "samples"

TINY_CONFIG = PikFixConfig.tiny()
# Workers take the colourization resolution from settings (PIKFIX_WORKING_SIZE), not from the config.
WORKING_SIZE = 64
TINY_MODEL_NAME = f"pikfix-{TINY_CONFIG.name}"

# The metrics every restore job records, whatever the reference (pikfix.metrics.no_reference_metrics).
ALWAYS_RECORDED_METRICS = {
    "colourfulness",
    "sharpness",
    "sharpness_input",
    "noise_sigma",
    "noise_sigma_input",
    "luminance_change",
    "out_of_gamut_rate",
}

NOT_AN_IMAGE = b"Dear bureau,\nplease find the scans attached.\n" * 20

T = TypeVar("T")


@dataclass(frozen=True)
class TinyCheckpoint:
    path: Path
    sha256: str


def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> TinyCheckpoint:
    """Build the tiny checkpoint once per test run (shared by every module through the base temp dir)."""
    import hashlib

    import torch

    from pikfix.checkpoint import save_checkpoint
    from pikfix.model import PikFix

    folder = tmp_path_factory.getbasetemp() / "tiny-checkpoint"
    path = folder / "pikfix-tiny.pt"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = PikFix(TINY_CONFIG)
        tmp = path.with_suffix(".part")
        save_checkpoint(tmp, model, metadata={"notes": "random tiny model for job-system tests"})
        os.replace(tmp, path)
    return TinyCheckpoint(path, hashlib.sha256(path.read_bytes()).hexdigest())


# --------------------------------------------------------------------------- photos


def photo_pixels(width: int, height: int, seed: int = 0, colour: bool = False) -> np.ndarray:
    """A smooth scene with a few shapes and film grain: compresses like a photo, not like noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 0.5 + 0.3 * np.sin(x / max(width, 1) * (3 + seed % 3)) * np.cos(y / max(height, 1) * 2)
    for _ in range(4):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.1, 0.3) * min(width, height)
        base = np.where((x - cx) ** 2 + (y - cy) ** 2 < r * r, rng.uniform(0.1, 0.9), base)
    base = np.clip(base + rng.normal(0, 0.03, base.shape), 0, 1)
    if not colour:
        return (base * 255).astype(np.uint8)
    tint = rng.uniform(0.4, 1.0, size=3).astype(np.float32)
    rgb = np.stack([np.clip(base * t + (1 - t) * 0.3, 0, 1) for t in tint], axis=-1)
    return (rgb * 255).astype(np.uint8)


def photo_bytes(width: int, height: int, seed: int = 0, fmt: str = "JPEG", colour: bool = False) -> bytes:
    """An encoded grey (or colour) photo of exactly ``width`` x ``height`` pixels."""
    out = io.BytesIO()
    Image.fromarray(photo_pixels(width, height, seed, colour)).save(out, fmt)
    return out.getvalue()


def truncated_jpeg(width: int = 96, height: int = 64) -> bytes:
    """A JPEG cut off half-way through its scan data (a failed upload or a broken disk)."""
    data = photo_bytes(width, height, seed=7)
    return data[: len(data) // 2]


# --------------------------------------------------------------------------- archives


@dataclass(frozen=True)
class ZipEntry:
    name: str
    data: bytes = b""
    symlink: bool = False
    compress: int = zipfile.ZIP_DEFLATED


def zip_bytes(entries: Iterable[ZipEntry]) -> bytes:
    """A zip archive with the given members written verbatim (unsafe names and symlinks included)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for entry in entries:
            info = zipfile.ZipInfo(entry.name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = entry.compress
            info.create_system = 3  # Unix, so the mode bits in external_attr mean what they say
            mode = (stat.S_IFLNK | 0o777) if entry.symlink else (stat.S_IFREG | 0o644)
            info.external_attr = mode << 16
            archive.writestr(info, entry.data)
    return out.getvalue()


# --------------------------------------------------------------------------- waiting and processes


def wait_for(probe: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll ``probe`` until it returns something truthy and return it; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last value: {last!r}")
        time.sleep(interval)


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc), e.g. a Celery worker's prefork pool processes."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children.extend(int(p) for p in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return sorted(set(children))


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"
