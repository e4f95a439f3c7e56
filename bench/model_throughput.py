"""Model throughput: photos/hour per worker at 1, 12 and 48 megapixels with peak memory, ``lite`` and
``paper``, on this machine's CPU. Sizes too slow to run here are extrapolated and labelled so.

A case is one photo through the steps a worker runs, in a fresh child process (so its peak RSS,
``ru_maxrss``, is its own): decode the uploaded JPEG, ``Restorer.restore`` with a colour reference
(luminance, tiled full-resolution restoration, colourization at the working size, chroma up-sampling
and Lab -> sRGB), PNG encode with provenance, and the per-job quality metrics. Storage and database
are left out (``bench/job_overhead.py`` measures them). Weights are random: time does not depend on
their values. ``baseline_rss_mb`` is the high-water mark once the model is built, before the photo
exists; photos/hour per worker is 3600 / seconds per photo with all of this machine's cores.

Peers measured in the same run:

* the null model (``pikfix.null_model``) through the same steps at the same size: what a photo costs
  without the model, so model time = case - null;
* a calibration kernel (a 64->64 3x3 convolution on 256x256, float32, median of 5) timed just before
  each case, because the machine is shared: ``case seconds / calibration seconds`` compares runs taken
  under different loads.

Extrapolation (rows marked ``extrapolated``), from the largest measured size of the same configuration:
restoration time scales with the pixels the tiles actually compute (``pikfix.tiling.plan_spans``, so
tile overlap is counted), colourization is nearly constant (the networks run at the fixed working size;
only its antialiased down-scale grows, by the per-megapixel slope measured between two sizes of one
configuration), the remaining steps (decode, luminance, compose, encode, metrics) scale linearly with pixels
from the largest measured case of any configuration, and peak memory grows by the per-megapixel slope
measured between two sizes of one configuration.

    python bench/model_throughput.py [--cases lite:1 paper:1 lite:12] [--null-sizes 1 12] [--threads N]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing as mp
import resource
import statistics
import time
from datetime import UTC, datetime
from typing import Any

from common import RESULTS_DIR, load_average, print_table, write_results

TARGET_MP = (1, 12, 48)
DEFAULT_CASES = ("lite:1", "paper:1", "lite:12")
EARLIER_48MP = RESULTS_DIR / "fullres_memory.json"  # an earlier 48 MP lite restore (shown beside ours)


# --------------------------------------------------------------------------- one case, in a child process


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def scan_shape(megapixels: float) -> tuple[int, int]:
    """(height, width) of a 4:3 landscape scan with about this many megapixels."""
    height = round(math.sqrt(megapixels * 1e6 * 3 / 4))
    return height, round(height * 4 / 3)


def synthetic_scan_jpeg(height: int, width: int) -> bytes:
    """An 8-bit grey 'old photo' (smooth shapes, grain, scratches) as the JPEG a bureau would upload."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    scan = np.empty((height, width), dtype=np.uint8)
    xx = np.arange(width, dtype=np.float32)
    for y0 in range(0, height, 512):
        yy = np.arange(y0, min(height, y0 + 512), dtype=np.float32)[:, None]
        block = 128 + 50 * np.sin(xx / 97.0) * np.cos(yy / 61.0) + rng.normal(0, 6, (len(yy), width))
        scan[y0 : y0 + len(yy)] = np.clip(block, 0, 255).astype(np.uint8)
    for x in rng.integers(0, width, 12):
        scan[:, x : x + 2] = 240
    out = io.BytesIO()
    Image.fromarray(scan).save(out, "JPEG", quality=92)
    return out.getvalue()


def colour_reference():
    import numpy as np

    from pikfix.inference import decoded_from_array

    ref = np.zeros((300, 400, 3), np.uint8)
    ref[:, :200] = (190, 140, 90)
    ref[:150, 200:] = (60, 110, 170)
    ref[150:, 200:] = (70, 150, 60)
    return decoded_from_array(ref)


def computed_megapixels(height: int, width: int, tile: int, overlap: int) -> float:
    """Pixels the tiled restoration computes (overlaps counted twice), in megapixels."""
    from pikfix.tiling import plan_spans

    rows = sum(b - a for a, b in plan_spans(height, tile, overlap))
    cols = sum(b - a for a, b in plan_spans(width, tile, overlap))
    return rows * cols / 1e6


def run_case(config: str, megapixels: float, threads: int | None, queue: mp.Queue) -> None:
    """Child process: build the model, then time one photo through the worker's steps."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    from pikfix import imageio
    from pikfix.config import PikFixConfig
    from pikfix.inference import Restorer
    from pikfix.metrics import no_reference_metrics
    from pikfix.model import PikFix
    from pikfix.null_model import NullRestorer
    from workers.pipeline import _resize_plane  # the worker's own helper for the metrics' luminance

    torch.manual_seed(0)
    if config == "null":
        restorer: Any = NullRestorer()
    else:
        restorer = Restorer(PikFix(PikFixConfig.named(config)), device="cpu", model_name=f"pikfix-{config}")
    reference = colour_reference()
    height, width = scan_shape(megapixels)
    data = synthetic_scan_jpeg(height, width)
    baseline = _maxrss_mb()

    t0 = time.perf_counter()
    decoded = imageio.decode_image(data)
    t1 = time.perf_counter()
    result = restorer.restore(decoded, reference=reference, reference_id="ref")
    del decoded
    t2 = time.perf_counter()
    encoded = imageio.encode_image(result.rgb, "png", provenance=result.provenance)
    t3 = time.perf_counter()
    no_reference_metrics(result.rgb, input_gray=result.input_luminance, restored_gray=result.restored_luminance,
                         L01=_resize_plane(result.restored_luminance, result.ab_working.shape[:2]),
                         ab=result.ab_working, reference_score=0.5)
    t4 = time.perf_counter()
    model_t = result.timings
    tile = getattr(restorer, "tile_size", None)
    overlap = getattr(restorer, "tile_overlap", None)
    queue.put({
        "config": config,
        "megapixels": round(height * width / 1e6, 3),
        "height": height,
        "width": width,
        "seconds": t4 - t0,
        "steps_s": {
            "decode": t1 - t0,
            "restore": model_t["restore"],  # luminance + tiled restoration
            "colorize": model_t["colorize"],
            "compose": model_t["compose"] + model_t["decode"],
            "encode_png": t3 - t2,
            "metrics": t4 - t3,
        },
        "computed_megapixels": computed_megapixels(height, width, tile, overlap) if tile else None,
        "tile_size": tile,
        "tile_overlap": overlap,
        "working_size": restorer.working_size,
        "input_bytes": len(data),
        "output_bytes": len(encoded),
        "baseline_rss_mb": round(baseline, 1),
        "peak_rss_mb": round(_maxrss_mb(), 1),
        "torch_threads": torch.get_num_threads(),
    })


def measure(config: str, megapixels: float, threads: int | None) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=run_case, args=(config, megapixels, threads, queue))
    child.start()
    result = queue.get()  # before join: a large result must not block the child's exit
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"{config} at {megapixels} MP: child exited with {child.exitcode}")
    return result


def calibration_seconds(threads: int | None) -> float:
    """Median time of a fixed convolution: how fast this shared machine is right now."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1)
    x = torch.randn(1, 64, 256, 256)
    times = []
    with torch.inference_mode():
        conv(x)
        for _ in range(5):
            t = time.perf_counter()
            conv(x)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


# --------------------------------------------------------------------------- extrapolation


def _value(case: dict, name: str) -> float:
    if name == "net_rss_mb":
        return case["peak_rss_mb"] - case["baseline_rss_mb"]
    return case["steps_s"][name]


def _two_sizes(models: list[dict]) -> list[tuple[dict, dict]]:
    pairs = []
    for name in sorted({m["config"] for m in models}):
        sizes = sorted((m for m in models if m["config"] == name), key=lambda m: m["megapixels"])
        if len(sizes) >= 2 and sizes[-1]["megapixels"] > sizes[0]["megapixels"]:
            pairs.append((sizes[0], sizes[-1]))
    return pairs


def _has_two_sizes(models: list[dict]) -> bool:
    return bool(_two_sizes(models))


def _slope(models: list[dict], name: str) -> float:
    """Growth per megapixel of a step's seconds (or of net memory) between the smallest and largest
    measured sizes of one configuration; the largest over configurations, 0 if none has two sizes.
    Colourization grows a little with size: it includes the antialiased down-scale to the working size."""
    slopes = [(_value(hi, name) - _value(lo, name)) / (hi["megapixels"] - lo["megapixels"])
              for lo, hi in _two_sizes(models)]
    return max(0.0, *slopes) if slopes else 0.0


def extrapolate(measured: list[dict], config: str, megapixels: int) -> dict | None:
    """A case estimated from this run's measurements (see the module docstring), or None if impossible."""
    own = [m for m in measured if m["config"] == config]
    models = [m for m in measured if m["config"] != "null"]
    if not own or not models:
        return None
    base = max(own, key=lambda m: m["megapixels"])
    largest = max(models, key=lambda m: m["megapixels"])
    height, width = scan_shape(megapixels)
    mp_actual = height * width / 1e6
    computed = computed_megapixels(height, width, base["tile_size"], base["tile_overlap"])
    other_keys = ("decode", "compose", "encode_png", "metrics")
    other_per_mp = sum(largest["steps_s"][k] for k in other_keys) / largest["megapixels"]
    steps = {
        "restore": base["steps_s"]["restore"] * computed / base["computed_megapixels"],
        "colorize": base["steps_s"]["colorize"] + _slope(models, "colorize") * (mp_actual - base["megapixels"]),
        "other": other_per_mp * mp_actual,
    }
    # Peak memory: this configuration's footprint at its measured size, plus the full-size planes' growth.
    slope = _slope(models, "net_rss_mb") if _has_two_sizes(models) else None
    peak = None if slope is None else base["peak_rss_mb"] + slope * (mp_actual - base["megapixels"])
    seconds = sum(steps.values())
    return {
        "config": config, "megapixels": round(mp_actual, 3), "seconds": seconds, "steps_s": steps,
        "peak_rss_mb": None if peak is None else round(peak, 1), "computed_megapixels": computed,
        "basis": f"{config} at {base['megapixels']:.2f} MP; other steps from {largest['config']} at "
                 f"{largest['megapixels']:.2f} MP; memory slope {slope:.1f} MB/MP" if slope is not None else
                 f"{config} at {base['megapixels']:.2f} MP (no memory slope: one size measured)",
    }


def earlier_48mp() -> dict | None:
    """The 48 MP lite restore of bench/fullres_memory.py, if it was run (another run, another load)."""
    try:
        data = json.loads(EARLIER_48MP.read_text())
    except (OSError, ValueError):
        return None
    for row in data.get("results", []):
        if round(row.get("megapixels", 0)) == 48:
            return {"seconds": row["seconds"], "peak_rss_mb": row["peak_rss_mb"], "created_at": data.get("created_at"),
                    "load_average": data.get("machine", {}).get("load_average_at_end"),
                    "scope": "Restorer.restore only (no decode, encode or metrics)"}
    return None


# --------------------------------------------------------------------------- the run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES), help="config:megapixels to measure")
    parser.add_argument("--null-sizes", type=float, nargs="*", default=[1, 12], help="null-model peer sizes")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--recompute", action="store_true",
                        help="rebuild the table and extrapolations from the measurements in the last results file")
    args = parser.parse_args()

    if args.recompute:  # the table again from the last run's measurements (e.g. after changing the model)
        previous = json.loads((RESULTS_DIR / "model_throughput.json").read_text())
        measured, measured_at = previous["measured"], previous["measured_at"]
        wall_s, load_at_end = previous["wall_s"], previous["load_average_at_measurement_end"]
    else:
        cases = [(c.split(":")[0], float(c.split(":")[1])) for c in args.cases]
        cases += [("null", s) for s in args.null_sizes]
        cases.sort(key=lambda c: (c[1], c[0] != "null"))  # small first; the null peer right before its size
        started = time.perf_counter()
        measured = []
        for config, megapixels in cases:
            calib = calibration_seconds(args.threads)
            load = load_average()[0]
            row = measure(config, megapixels, args.threads)
            row.update(calibration_s=calib, calibration_units=row["seconds"] / calib, load_1min=load,
                       kind="measured")
            measured.append(row)
            print(f"{config:>5} {row['megapixels']:6.2f} MP: {row['seconds']:8.1f} s, peak {row['peak_rss_mb']:.0f} "
                  f"MB (calibration {calib * 1000:.0f} ms, load {load})", flush=True)
        measured_at = datetime.now(UTC).isoformat(timespec="seconds")
        wall_s, load_at_end = round(time.perf_counter() - started, 1), load_average()

    table: list[dict] = []
    for config in ("lite", "paper"):
        for target in TARGET_MP:
            hit = [m for m in measured if m["config"] == config and round(m["megapixels"]) == target]
            row = dict(hit[0]) if hit else extrapolate(measured, config, target)
            if row is None:
                continue
            if not hit:
                row["kind"] = "extrapolated"
            null = [m for m in measured if m["config"] == "null" and round(m["megapixels"]) == target]
            row["null_seconds"] = null[0]["seconds"] if null else None
            row["photos_per_hour"] = 3600 / row["seconds"]
            row["seconds_per_mp"] = row["seconds"] / row["megapixels"]
            table.append(row)
    print()
    print_table(
        ["config", "MP", "kind", "s/photo", "photos/h", "s/MP", "peak MB", "null s/photo"],
        [[r["config"], round(r["megapixels"]), r["kind"], r["seconds"], r["photos_per_hour"], r["seconds_per_mp"],
          r["peak_rss_mb"], r["null_seconds"]] for r in table],
    )
    earlier = earlier_48mp()
    if earlier:
        print(f"earlier measurement, lite 48 MP restore only ({earlier['created_at']}, load {earlier['load_average']}): "
              f"{earlier['seconds']:.0f} s, peak {earlier['peak_rss_mb']:.0f} MB")
    write_results("model_throughput", {
        "device": "cpu",
        "weights": "random init (timing does not depend on weight values)",
        "steps": "decode JPEG -> Restorer.restore with a colour reference -> PNG encode -> quality metrics",
        "extrapolation": "restore ~ pixels computed by the tiles; colorize constant (fixed working size) plus the "
                         "measured per-MP slope of its down-scale; other steps linear in pixels; peak memory + "
                         "measured MB/MP slope",
        "measured_at": measured_at,
        "load_average_at_measurement_end": load_at_end,
        "table": table,
        "measured": measured,
        "earlier_lite_48mp": earlier,
        "wall_s": wall_s,
    })


if __name__ == "__main__":
    main()
