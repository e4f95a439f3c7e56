"""Forward time and peak memory of PikFix.restore() and PikFix.colorize() per configuration and size.

Each (config, stage, size) case runs in a fresh process so its peak RSS is its own: the figure is the
process high-water mark after the timed runs, and ``rss_increase_mb`` is how far the forward passes
pushed it above the level reached once the model and inputs were built. Times are the median of
``--repeats`` runs after one warm-up, under ``torch.inference_mode``.

    python bench/model_forward.py [--configs lite paper] [--sizes 256 512] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pikfix.config import PikFixConfig  # noqa: E402
from pikfix.model import PikFix  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "model_forward.json"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _case(
    config_name: str, stage: str, size: int, repeats: int, device_name: str, threads: int, queue: mp.Queue
) -> None:
    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    device = torch.device(device_name)
    model = PikFix(PikFixConfig.named(config_name)).eval().to(device)
    gray = torch.rand(1, 1, size, size, device=device)
    ref_l, ref_ab = (
        torch.rand(1, 1, size, size, device=device),
        torch.rand(1, 2, size, size, device=device) - 0.5,
    )

    def run() -> None:
        if stage == "restore":
            model.restore(gray)
        else:
            model.colorize(gray, ref_l, ref_ab)

    baseline = _rss_mb()
    times = []
    with torch.inference_mode():
        run()
        _sync(device)
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            _sync(device)
            times.append(time.perf_counter() - start)
    peak = _rss_mb()
    queue.put(
        {
            "config": config_name,
            "stage": stage,
            "size": size,
            "parameters": model.num_parameters(),
            "seconds": statistics.median(times),
            "seconds_all": times,
            "megapixels_per_second": size * size / 1e6 / statistics.median(times),
            "peak_rss_mb": round(peak, 1),
            "rss_increase_mb": round(peak - baseline, 1),
            "cuda_peak_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
            if device.type == "cuda"
            else None,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["lite", "paper"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 512])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads per case (0 = torch default)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    ctx = mp.get_context("spawn")
    rows = []
    for config_name in args.configs:
        for stage in ("restore", "colorize"):
            for size in args.sizes:
                queue = ctx.Queue()
                proc = ctx.Process(
                    target=_case,
                    args=(config_name, stage, size, args.repeats, args.device, args.threads, queue),
                )
                proc.start()
                row = queue.get()
                proc.join()
                rows.append(row)
                print(
                    f"{row['config']:>6} {row['stage']:>9} {row['size']:>5}px  {row['seconds']:8.3f} s  "
                    f"{row['megapixels_per_second']:7.3f} MP/s  peak RSS {row['peak_rss_mb']:8.1f} MB  "
                    f"(+{row['rss_increase_mb']:.1f} MB)",
                    flush=True,
                )

    report = {
        "benchmark": "model_forward",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": args.device,
        "torch": torch.__version__,
        "threads": args.threads or torch.get_num_threads(),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "cpu": platform.processor() or platform.machine(),
        "repeats": args.repeats,
        "note": "untrained weights; timings do not depend on weight values",
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
