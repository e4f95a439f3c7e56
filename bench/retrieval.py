"""Benchmark reference retrieval: query time against corpus size, and descriptor extraction time.

Corpora are random descriptors of the real dimension (the default extractor's layout), so the
timing is that of the production scoring path. Extraction is timed on sample photos when they are
available, otherwise on random images of the same size. Results go to bench/results/retrieval.json.

    python bench/retrieval.py [--sizes 1000 10000 100000] [--runs 7] [--images 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pikfix.retrieval import DescriptorExtractor, DescriptorLayout, ReferenceIndex  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "retrieval.json"
PHOTO_DIRS = (ROOT / "samples", ROOT.parent / "shared" / "data" / "photos")


def random_descriptors(layout: DescriptorLayout, n: int, rng: np.random.Generator) -> np.ndarray:
    """Descriptors with the real value structure: μ, σ >= 0 and pooled parts of norm σ."""
    c, g = layout.channels, layout.cells
    mu = rng.random((n, c), dtype=np.float32)
    sd = rng.random((n, c), dtype=np.float32)
    unit = rng.standard_normal((n, g, c), dtype=np.float32)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    return np.concatenate([mu, sd, (unit * sd[:, None, :]).reshape(n, g * c)], axis=1)


def median_time(fn, runs: int) -> tuple[float, float]:
    """Median wall-clock and CPU seconds (all threads) of ``fn``; CPU time is the figure that stays
    meaningful when other processes share the machine."""
    fn()  # warm-up
    walls, cpus = [], []
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def sample_images(count: int, size: int) -> tuple[list[np.ndarray], str]:
    for folder in PHOTO_DIRS:
        paths = sorted(folder.glob("*.jpg"))[:count] if folder.is_dir() else []
        if len(paths) >= count:
            images = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255.0 for p in paths]
            return images, f"{len(paths)} photos from {folder.name}/"
    rng = np.random.default_rng(0)
    return [rng.random((size, size, 3), dtype=np.float32) for _ in range(count)], "random images"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--k", type=int, default=5)
    args = parser.parse_args()

    extractor = DescriptorExtractor()
    layout = extractor.layout
    rng = np.random.default_rng(0)
    query = random_descriptors(layout, 1, rng)[0]
    queries8 = random_descriptors(layout, 8, rng)
    rows = []
    for n in args.sizes:
        index = ReferenceIndex(layout)
        index.add([f"ref-{i}" for i in range(n)], random_descriptors(layout, n, rng))
        one, one_cpu = median_time(lambda index=index: index.query(query, k=args.k), args.runs)
        eight, _ = median_time(
            lambda index=index: index.query_batch(queries8, k=args.k), max(3, args.runs // 2)
        )
        rows.append(
            {
                "corpus": n,
                "query_s": one,
                "query_cpu_s": one_cpu,
                "batch8_per_query_s": eight / 8,
                "index_mb": n * layout.dim * 2 / 1e6,
            }
        )
        del index

    images, source = sample_images(args.images, extractor.size)
    single, single_cpu = median_time(lambda: extractor.describe(images[0]), max(3, args.runs // 2))
    batch, batch_cpu = median_time(lambda: extractor.describe_batch(images), 3)
    batch, batch_cpu = batch / len(images), batch_cpu / len(images)

    result = {
        "layout": {
            **layout.to_dict(),
            "channels": layout.channels,
            "dim": layout.dim,
            "bytes": layout.dim * 2,
        },
        "extractor": {"size": extractor.size, "backbone": extractor.backbone_id, "images": source},
        "query": rows,
        "extraction": {
            "single_s_per_image": single,
            "single_cpu_s_per_image": single_cpu,
            "batch_s_per_image": batch,
            "batch_cpu_s_per_image": batch_cpu,
            "batch_size": extractor.batch_size,
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
        },
        "runs": args.runs,
        "k": args.k,
    }
    print(f"descriptor: {layout.dim} values ({layout.channels} channels x (2 + {layout.cells})), float16")
    print(f"{'corpus':>8} {'query ms':>10} {'query CPU ms':>13} {'batch-8 ms/query':>17} {'index MB':>9}")
    for row in rows:
        print(
            f"{row['corpus']:>8} {row['query_s'] * 1e3:>10.1f} {row['query_cpu_s'] * 1e3:>13.1f} "
            f"{row['batch8_per_query_s'] * 1e3:>17.1f} {row['index_mb']:>9.1f}"
        )
    print(
        f"extraction at {extractor.size}px ({source}): {single * 1e3:.0f} ms single "
        f"({single_cpu * 1e3:.0f} ms CPU), {batch * 1e3:.0f} ms/image batched ({batch_cpu * 1e3:.0f} ms CPU)"
    )
    print(f"load average during the run: {result['machine']['load_average']} on {os.cpu_count()} CPUs")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(RESULTS)
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
