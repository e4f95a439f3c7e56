"""Model speed: forward time, peak memory, FLOPs and achieved FLOP/s of Pik-Fix on this machine's CPU.

One run measures, each case in a fresh child process (so its peak RSS is its own):

* ``colorize`` (similarity + SPHist + colorization, ``PikFix.colorize``: the like-for-like comparison
  with the authors' colorization-only release) and ``forward`` (the full graph, restore + colorize,
  ``PikFix.__call__``) for each configuration and square size, channels-last as ``pikfix.inference``
  runs them;
* with ``--baseline REF``, the ``paper`` cases at ``--baseline-size`` also with the code of git revision
  REF ("before"), interleaved with ours ("after") for every thread count in ``--threads``, plus the
  largest difference between the two versions' outputs (same seed, same weights);
* a full-resolution restore (``pikfix.inference.Restorer``: tiled restoration, colourization at the
  working size) of a synthetic scan of ``--fullres-mp`` megapixels with the lite configuration;
* this CPU's dense-kernel ceiling: the faster of a 2048^3 float32 matmul and a 64->64 3x3 convolution
  (batch 1, 256^2, both memory layouts), measured in the parent with the case's thread count just
  before every case, so each case is compared with the ceiling of that moment on a shared machine.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` in one extra pass per distinct
(config, stage, size), after the timed runs: it counts convolutions and matrix products (2 FLOPs per
multiply-add) and nothing else, so normalisation, activations, softmax, the histograms, pooling,
resizing and copies are work it does not see. ``seconds`` is the median wall time of ``--repeats`` runs
under ``torch.inference_mode`` after one warm-up; ``cpu_seconds`` the median process CPU time of the
same runs (on a shared machine, wall time also counts the time other jobs held the cores). Peak
memory is the child's ``ru_maxrss``; ``baseline_rss_mb`` is that high-water mark once torch is
imported and the model and inputs are built, ``net_rss_mb`` the difference. Weights are random
(timing does not depend on them).

    python bench/model_speed.py [--configs paper lite] [--sizes 256 512 1024] [--threads 1 2]
        [--repeats 3] [--baseline REF] [--fullres-mp 48] [--out bench/results/model_speed.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "model_speed.json"
# The authors' colorization-only release, colorizing one 512^2 image on this machine (as reported).
OFFICIAL_512 = {"seconds": 15.5, "peak_rss_mb": 2.8 * 1024}


# --- measurements shared by parent and children ----------------------------------------------------


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _timed(fn: Callable[[], object], repeats: int) -> tuple[list[float], list[float]]:
    """Wall and process-CPU seconds of ``repeats`` calls."""
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def dense_ceiling(threads: int, repeats: int = 5) -> dict[str, float]:
    """GFLOP/s of a 2048^3 float32 matmul and of a 64->64 3x3 convolution; ``ceiling`` is the fastest."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    x, w = torch.randn(1, 64, 256, 256), torch.randn(64, 64, 3, 3)
    x_cl, w_cl = (
        x.contiguous(memory_format=torch.channels_last),
        w.contiguous(memory_format=torch.channels_last),
    )
    conv_flops = 2 * 64 * 64 * 9 * 256 * 256

    def rate(flops: int, fn: Callable[[], object]) -> float:
        fn()  # warm-up
        return flops / statistics.median(_timed(fn, repeats)[0]) / 1e9

    with torch.inference_mode():
        matmul = rate(2 * n**3, lambda: a @ b)
        conv_nchw = rate(conv_flops, lambda: F.conv2d(x, w, padding=1))
        conv_nhwc = rate(conv_flops, lambda: F.conv2d(x_cl, w_cl, padding=1))
    return {
        "threads": threads,
        "matmul_2048_gflops": round(matmul, 1),
        "conv3x3_64_nchw_gflops": round(conv_nchw, 1),
        "conv3x3_64_channels_last_gflops": round(conv_nhwc, 1),
        "ceiling_gflops": round(max(matmul, conv_nchw, conv_nhwc), 1),
    }


# --- child processes --------------------------------------------------------------------------------


def _model_case(spec: dict[str, Any]) -> dict[str, Any]:
    """Time one (config, stage, size) case with the pikfix package found at ``spec['source']``."""
    sys.path.insert(0, spec["source"])
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pikfix.color import rgb_to_model_space
    from pikfix.config import PikFixConfig
    from pikfix.model import PikFix

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    layout = torch.channels_last if spec["channels_last"] else torch.contiguous_format
    build_start = time.perf_counter()
    model = PikFix(PikFixConfig.named(spec["config"])).eval().to(memory_format=layout)
    build_seconds = time.perf_counter() - build_start
    size = spec["size"]
    generator = torch.Generator().manual_seed(size)
    gray = torch.rand(1, 1, size, size, generator=generator)
    ref_rgb = torch.rand(1, 3, size, size, generator=generator).contiguous(memory_format=layout)
    ref_l, ref_ab = (t.contiguous(memory_format=layout) for t in rgb_to_model_space(ref_rgb))

    def colorize() -> dict[str, torch.Tensor]:
        return {"ab": model.colorize(gray, ref_l, ref_ab).ab}

    def forward() -> dict[str, torch.Tensor]:
        out = model(gray, ref_rgb)
        return {"ab": out.ab, "restored": out.restored}

    run = colorize if spec["stage"] == "colorize" else forward
    baseline = _maxrss_mb()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    with torch.inference_mode():
        outputs = run()  # warm-up
        if spec.get("dump"):
            torch.save({k: v.float().contiguous() for k, v in outputs.items()}, spec["dump"])
        del outputs
        wall, cpu = _timed(run, spec["repeats"])
        peak = _maxrss_mb()
        faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / (spec["repeats"] + 1)
        flops: dict[str, float] | None = None
        if spec.get("count_flops"):  # after the peak was read: the counter's own memory is not ours
            counter = FlopCounterMode(display=False)
            with counter:
                run()
            flops = {
                str(op).removeprefix("aten."): v / 1e9
                for op, v in counter.get_flop_counts()["Global"].items()
            }
    return {
        "parameters": model.num_parameters(),
        "build_seconds": round(build_seconds, 2),
        "seconds": round(statistics.median(wall), 3),
        "seconds_all": [round(t, 3) for t in wall],
        "cpu_seconds": round(statistics.median(cpu), 3),
        "page_faults_per_run": int(faults),
        "gflop_by_op": None if flops is None else {k: round(v, 2) for k, v in sorted(flops.items())},
        "peak_rss_mb": round(peak, 1),
        "baseline_rss_mb": round(baseline, 1),
        "net_rss_mb": round(peak - baseline, 1),
    }


def synthetic_scan(height: int, width: int) -> Any:
    """An 8-bit grey 'old photo' (smooth shapes, grain, scratches), built in row blocks to stay small."""
    import numpy as np

    rng = np.random.default_rng(0)
    scan = np.empty((height, width), dtype=np.uint8)
    xx = np.arange(width, dtype=np.float32)
    for y0 in range(0, height, 256):
        yy = np.arange(y0, min(height, y0 + 256), dtype=np.float32)[:, None]
        block = 120 + 60 * np.sin(xx / 89.0) * np.cos(yy / 53.0) + rng.normal(0, 5, (len(yy), width))
        scan[y0 : y0 + len(yy)] = np.clip(block, 0, 255).astype(np.uint8)
    scan[:, rng.integers(0, width, 10)] = 235  # vertical scratches
    return scan


def _fullres_case(spec: dict[str, Any]) -> dict[str, Any]:
    """``Restorer.restore`` of a synthetic grey scan of ``spec['megapixels']`` with a colour reference."""
    sys.path.insert(0, spec["source"])
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pikfix.config import PikFixConfig
    from pikfix.inference import Restorer, decoded_from_array
    from pikfix.model import PikFix

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    restorer = Restorer(PikFix(PikFixConfig.named(spec["config"])), device="cpu")
    reference = np.zeros((384, 512, 3), np.uint8)
    reference[:, :256] = (186, 142, 96)
    reference[:, 256:] = (64, 112, 168)
    height = round((spec["megapixels"] * 1e6 * 3 / 4) ** 0.5)
    width = round(height * 4 / 3)
    baseline = _maxrss_mb()
    scan = decoded_from_array(synthetic_scan(height, width))
    counter = FlopCounterMode(display=False)
    start, start_cpu = time.perf_counter(), time.process_time()
    with counter:  # per-op bookkeeping only; a few thousand ops against minutes of convolution
        result = restorer.restore(scan, reference)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    megapixels = height * width / 1e6
    peak = _maxrss_mb()
    flops = {str(op).removeprefix("aten."): v / 1e9 for op, v in counter.get_flop_counts()["Global"].items()}
    return {
        "height": height,
        "width": width,
        "megapixels": round(megapixels, 2),
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1),
        "seconds_per_mp": round(seconds / megapixels, 3),
        "timings": {k: round(v, 2) for k, v in result.timings.items()},
        "tile_size": restorer.tile_size,
        "tile_overlap": restorer.tile_overlap,
        "working_size": restorer.working_size,
        "gflop_by_op": {k: round(v, 1) for k, v in sorted(flops.items())},
        "peak_rss_mb": round(peak, 1),
        "baseline_rss_mb": round(baseline, 1),
        "net_rss_mb": round(peak - baseline, 1),
    }


def _child_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    result = _fullres_case(spec) if spec["kind"] == "fullres" else _model_case(spec)
    print(json.dumps(result))


# --- parent -----------------------------------------------------------------------------------------


def _run_child(spec: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(
        [sys.executable, __file__, "--case", json.dumps(spec)], capture_output=True, text=True, env=env
    )
    if proc.returncode:
        raise RuntimeError(f"case {spec} failed with {proc.returncode}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def export_revision(ref: str, into: Path) -> str:
    """Extract ``pikfix/`` as of git revision ``ref`` into ``into``; returns the full commit id."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", ref], capture_output=True, text=True, check=True
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit, "pikfix"], capture_output=True, check=True
    )
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return commit


def _max_abs_diff(path_a: str, path_b: str) -> float:
    import torch

    a, b = torch.load(path_a), torch.load(path_b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


class Runner:
    """Runs cases one at a time, each after a fresh ceiling measurement, and keeps the rows."""

    def __init__(self, repeats: int) -> None:
        self.repeats = repeats
        self.rows: list[dict[str, Any]] = []
        self.flops: dict[tuple[str, str, int], dict[str, float]] = {}

    def run(self, spec: dict[str, Any]) -> dict[str, Any]:
        spec = {"repeats": self.repeats, "source": str(ROOT), **spec}
        key = (spec["config"], spec.get("stage", "fullres"), spec.get("size", 0))
        if spec["kind"] == "model":
            spec["count_flops"] = key not in self.flops
        ceiling = dense_ceiling(spec["threads"])
        load_before = _load()
        result = _run_child(spec)
        if spec["kind"] == "model":
            if result["gflop_by_op"] is not None:
                self.flops[key] = result["gflop_by_op"]
            result["gflop_by_op"] = self.flops[key]
        gflop = sum(result["gflop_by_op"].values())
        row = {k: v for k, v in spec.items() if k not in ("source", "dump", "count_flops")}
        row.update(result)
        row["gflop"] = round(gflop, 2)
        row["achieved_gflops"] = round(gflop / result["seconds"], 1)
        row["achieved_gflops_per_cpu_second"] = round(gflop / result["cpu_seconds"], 1)
        row["ceiling"] = ceiling
        row["fraction_of_ceiling"] = round(row["achieved_gflops"] / ceiling["ceiling_gflops"], 3)
        row["load_average_1_5_15"] = {"before": load_before, "after": _load()}
        self.rows.append(row)
        where = (
            f"{row['config']} {row.get('stage', 'tiled restore')} {row.get('size', row.get('megapixels'))}"
        )
        layout = "" if spec["kind"] != "model" else ("cl" if spec["channels_last"] else "nchw")
        print(
            f"{row.get('version', ''):>6} {layout:>4} t{row['threads']} {where:<22} {row['seconds']:8.2f} s "
            f"(cpu {row['cpu_seconds']:7.2f})  {row['achieved_gflops']:6.1f} GFLOP/s = "
            f"{row['fraction_of_ceiling']:4.0%} of {ceiling['ceiling_gflops']:5.1f}  peak {row['peak_rss_mb']:6.0f} MB "
            f"(net {row['net_rss_mb']:5.0f})  load {load_before[0]:.1f}",
            flush=True,
        )
        return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--configs", nargs="+", default=["paper", "lite"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 512, 1024])
    parser.add_argument(
        "--stages", nargs="+", default=["colorize", "forward"], choices=["colorize", "forward"]
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", nargs="+", type=int, default=[1, 2], help="torch threads; the sweep uses the first"
    )
    parser.add_argument("--baseline", help="git revision whose pikfix/ is measured as 'before' (e.g. HEAD)")
    parser.add_argument("--baseline-size", type=int, default=512, help="size of the before/after cases")
    parser.add_argument(
        "--fullres-mp", type=float, default=48.0, help="megapixels of the tiled restore (0: skip)"
    )
    parser.add_argument("--fullres-config", default="lite")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.case:
        _child_main(args.case)
        return 0

    import torch

    started = datetime.now(UTC)
    runner = Runner(args.repeats)
    comparisons = []
    baseline_commit = None
    done: set[tuple[str, str, int, int]] = set()
    with tempfile.TemporaryDirectory(prefix="model_speed_") as tmp:
        if args.baseline:
            baseline_src = Path(tmp) / "baseline"
            baseline_commit = export_revision(args.baseline, baseline_src)
            size = args.baseline_size
            for threads in args.threads:
                # Before/after pairs run back to back so both see about the same machine load. The
                # extra colorize pairs separate the layout's share from the code's at one thread.
                variants = [("colorize", False, False), ("colorize", True, True)]
                if threads == args.threads[0]:
                    variants += [("colorize", False, True), ("colorize", True, False)]
                variants += [("forward", False, False), ("forward", True, True)]
                dumps = {}
                for stage, optimised, channels_last in variants:
                    version = "after" if optimised else "before"
                    dump = str(Path(tmp) / f"{stage}-{version}-{int(channels_last)}-{threads}.pt")
                    runner.run(
                        {
                            "kind": "model",
                            "version": version,
                            "config": "paper",
                            "stage": stage,
                            "size": size,
                            "threads": threads,
                            "channels_last": channels_last,
                            "source": str(ROOT) if optimised else str(baseline_src),
                            "dump": dump,
                        }
                    )
                    dumps[(stage, optimised, channels_last)] = dump
                    if optimised and channels_last:
                        done.add(("paper", stage, size, threads))
                for stage in ("colorize", "forward"):
                    comparison = {
                        "config": "paper",
                        "stage": stage,
                        "size": size,
                        "threads": threads,
                        "max_abs_difference_before_nchw_vs_after_channels_last": _max_abs_diff(
                            dumps[(stage, False, False)], dumps[(stage, True, True)]
                        ),
                    }
                    if (stage, False, True) in dumps:
                        comparison["max_abs_difference_same_layout"] = _max_abs_diff(
                            dumps[(stage, False, True)], dumps[(stage, True, True)]
                        )
                    comparisons.append(comparison)
                    print(f"outputs before vs after: {comparison}", flush=True)

        threads = args.threads[0]
        for config in args.configs:
            for size in args.sizes:
                for stage in args.stages:
                    if (config, stage, size, threads) in done:
                        continue
                    runner.run(
                        {
                            "kind": "model",
                            "version": "after",
                            "config": config,
                            "stage": stage,
                            "size": size,
                            "threads": threads,
                            "channels_last": True,
                        }
                    )
        if args.fullres_mp > 0:
            runner.run(
                {
                    "kind": "fullres",
                    "version": "after",
                    "config": args.fullres_config,
                    "megapixels": args.fullres_mp,
                    "threads": threads,
                    "repeats": 1,
                }
            )

    report = {
        "benchmark": "model_speed",
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu": _cpu_name(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "baseline_commit": baseline_commit,
        "official_release_colorize_512": OFFICIAL_512,
        "note": (
            "random weights; FLOPs count convolutions and matrix products only (FlopCounterMode); the "
            "ceiling is re-measured before each case with its thread count; the machine is shared: see "
            "the load averages, and cpu_seconds next to the wall-clock seconds"
        ),
        "before_after_outputs": comparisons,
        "results": runner.rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    raise SystemExit(main())
