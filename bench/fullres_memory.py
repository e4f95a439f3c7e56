"""Full-resolution restoration of large synthetic grey scans: seconds, s/MP and peak memory.

Each size runs in a fresh child process, so one size's peak RSS (``ru_maxrss``, the process
high-water mark) never mixes with another's. ``baseline_rss_mb`` is the high-water mark once the
model is built, before the scan exists; ``peak_rss_mb - baseline_rss_mb`` is what the photo cost.
The model is the lite configuration with random weights (timing does not depend on the weights);
the whole ``Restorer.restore`` runs: luminance, tiled restoration at full resolution, colourization
at the working size from a small colour reference, chroma up-sampling and Lab -> sRGB in strips.

    python bench/fullres_memory.py [--sizes 1 12 48] [--threads N] [--tile-size 768]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pikfix.config import PikFixConfig  # noqa: E402
from pikfix.inference import Restorer, decoded_from_array  # noqa: E402
from pikfix.model import PikFix  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "fullres_memory.json"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def scan_shape(megapixels: float) -> tuple[int, int]:
    """(height, width) of a 4:3 landscape scan with about this many megapixels."""
    height = round(math.sqrt(megapixels * 1e6 * 3 / 4))
    return height, round(height * 4 / 3)


def synthetic_scan(height: int, width: int) -> np.ndarray:
    """An 8-bit grey 'old photo': smooth shapes, grain and a few scratches, built row block by row block."""
    rng = np.random.default_rng(0)
    scan = np.empty((height, width), dtype=np.uint8)
    xx = np.arange(width, dtype=np.float32)
    for y0 in range(0, height, 512):
        yy = np.arange(y0, min(height, y0 + 512), dtype=np.float32)[:, None]
        block = 128 + 50 * np.sin(xx / 97.0) * np.cos(yy / 61.0) + rng.normal(0, 6, (len(yy), width))
        scan[y0 : y0 + len(yy)] = np.clip(block, 0, 255).astype(np.uint8)
    for x in rng.integers(0, width, 12):
        scan[:, x : x + 2] = 240  # vertical scratches
    return scan


def _case(megapixels: float, tile_size: int | None, threads: int | None, queue: mp.Queue) -> None:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    restorer = Restorer(PikFix(PikFixConfig.lite()), device="cpu", model_name="pikfix-lite", tile_size=tile_size)
    reference = np.zeros((300, 400, 3), np.uint8)
    reference[:, :200] = (190, 140, 90)
    reference[:, 200:] = (60, 110, 170)
    baseline = _rss_mb()
    height, width = scan_shape(megapixels)
    scan = decoded_from_array(synthetic_scan(height, width))
    start = time.perf_counter()
    result = restorer.restore(scan, reference)
    seconds = time.perf_counter() - start
    mp_actual = height * width / 1e6
    queue.put(
        {
            "megapixels": round(mp_actual, 2),
            "height": height,
            "width": width,
            "seconds": round(seconds, 2),
            "seconds_per_mp": round(seconds / mp_actual, 3),
            "timings": {k: round(v, 2) for k, v in result.timings.items()},
            "baseline_rss_mb": round(baseline, 1),
            "peak_rss_mb": round(_rss_mb(), 1),
            "tile_size": restorer.tile_size,
            "tile_overlap": restorer.tile_overlap,
            "working_size": restorer.working_size,
            "torch_threads": torch.get_num_threads(),
        }
    )


def run_case(megapixels: float, tile_size: int | None, threads: int | None) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=_case, args=(megapixels, tile_size, threads, queue))
    process.start()
    try:
        row = queue.get()
    finally:
        process.join()
    if process.exitcode:
        raise RuntimeError(f"{megapixels} MP case exited with {process.exitcode}")
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1, 12, 48], help="megapixels")
    parser.add_argument("--tile-size", type=int, default=None, help="default: the Restorer's CPU default")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    rows = []
    header = f"{'MP':>6} {'size':>11} {'seconds':>8} {'s/MP':>7} {'restore':>8} {'colorize':>8} {'peak RSS MB':>11} {'+photo MB':>9}"
    print(header)
    for size in args.sizes:
        row = run_case(size, args.tile_size, args.threads)
        rows.append(row)
        print(
            f"{row['megapixels']:>6.1f} {row['width']:>5}x{row['height']:<5} {row['seconds']:>8.1f} "
            f"{row['seconds_per_mp']:>7.2f} {row['timings']['restore']:>8.1f} {row['timings']['colorize']:>8.1f} "
            f"{row['peak_rss_mb']:>11.0f} {row['peak_rss_mb'] - row['baseline_rss_mb']:>9.0f}",
            flush=True,
        )
    report = {
        "benchmark": "fullres_memory",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": "cpu",
        "config": "lite (random init)",
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_average_at_end": os.getloadavg(),
        },
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
