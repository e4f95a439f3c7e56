"""How much luminance PSNR a restoration net can win back on the evaluation photos, by kind of error.

``pikfix eval`` scores the restored luminance against the clean photo. The synthetic damage has a
global part (grey-conversion weights, sepia, yellowing, fading: one tone curve per photo) and a local
part (noise, grain, blur, resampling, scratches, polygons, JPEG). A restoration net sees a window of
the photo, not its history, so it can undo the global part only as far as the picture itself gives the
curve away. This script measures, on the validation photos degraded exactly as ``pikfix eval`` degrades
them (same seeds, same severity), the L-PSNR of:

* ``input``: the degraded photo, as the evaluation scores it;
* ``no tone/fade``: the same seeds with the tone and fade steps switched off, so only the plain grey
  conversion (Rec. 601 luma, which is not CIE L for saturated colours) and the local damage remain;
* ``best fixed curve``: one tone curve for every photo (a degree-5 polynomial fitted by least squares
  on the training photos under many degradation draws): what undoing the *average* tone change gives;
* ``oracle affine`` / ``oracle curve``: the best per-photo affine map / cubic curve, fitted against the
  clean photo itself; unreachable without the answer, they bound what tone correction is worth.

Usage: ``python bench/restoration_ceiling.py [--photos ../shared/data/photos] [--draws 4]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, print_table, write_results  # noqa: E402

from pikfix.datasets import load_photo, split_photos  # noqa: E402
from pikfix.degrade import DegradeConfig, degrade  # noqa: E402
from pikfix.evaluate import photo_seed  # noqa: E402
from pikfix.inference import luminance_of  # noqa: E402
from pikfix.metrics import psnr  # noqa: E402

FIXED_DEGREE = 5
ORACLE_DEGREE = 3


def _powers(x: np.ndarray, degree: int) -> np.ndarray:
    return np.stack([x.ravel() ** k for k in range(degree + 1)], axis=1)


def _grey_luminance(gray: np.ndarray) -> np.ndarray:
    return luminance_of(np.repeat(gray[..., None], 3, axis=2))


def fit_fixed_curve(train: list[Path], draws: int, seed: int) -> np.ndarray:
    """Least-squares polynomial from degraded to clean L over the training photos (every 3rd pixel)."""
    xs, ys = [], []
    for index, path in enumerate(train):
        rgb = load_photo(path)
        truth = luminance_of(rgb)[::3, ::3]
        for draw in range(draws):
            degraded = degrade(rgb, seed=seed * 7919 + index * 101 + draw).gray
            xs.append(_grey_luminance(degraded)[::3, ::3].ravel())
            ys.append(truth.ravel())
    x, y = np.concatenate(xs), np.concatenate(ys)
    coefficients, *_ = np.linalg.lstsq(_powers(x, FIXED_DEGREE), y, rcond=None)
    return coefficients


def oracle(x: np.ndarray, truth: np.ndarray, degree: int) -> np.ndarray:
    a = _powers(x, degree)
    coefficients, *_ = np.linalg.lstsq(a, truth.ravel(), rcond=None)
    return np.clip(a @ coefficients, 0.0, 1.0).reshape(x.shape)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, default=ROOT.parent / "shared" / "data" / "photos")
    parser.add_argument("--val-fraction", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=0, help="the evaluation's degradation seed")
    parser.add_argument("--draws", type=int, default=4, help="degradation draws per training photo")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    train, val = split_photos(args.photos, args.val_fraction)
    curve = fit_fixed_curve(train, args.draws, args.seed)
    local_only = DegradeConfig(tone=False, fade=False)
    methods = ("input", "no tone/fade", "best fixed curve", "oracle affine", "oracle curve")
    rows: list[dict[str, object]] = []
    for path in val:
        rgb = load_photo(path)
        truth = luminance_of(rgb)
        seed = photo_seed(args.seed, path.name)
        x = _grey_luminance(degrade(rgb, seed=seed).gray)
        local = _grey_luminance(degrade(rgb, seed=seed, config=local_only).gray)
        fixed = np.clip(_powers(x, FIXED_DEGREE) @ curve, 0.0, 1.0).reshape(x.shape)
        scores = {
            "input": psnr(x, truth),
            "no tone/fade": psnr(local, truth),
            "best fixed curve": psnr(fixed, truth),
            "oracle affine": psnr(oracle(x, truth, 1), truth),
            "oracle curve": psnr(oracle(x, truth, ORACLE_DEGREE), truth),
        }
        rows.append({"name": path.name, **{m: float(v) for m, v in scores.items()}})
    mean = {m: float(np.mean([r[m] for r in rows])) for m in methods}
    table = [[r["name"], *(r[m] for m in methods)] for r in rows]
    table.append(["mean", *(mean[m] for m in methods)])
    table.append(["gain over input", *(mean[m] - mean["input"] for m in methods)])
    print("L-PSNR (dB) of the validation photos, degraded as `pikfix eval` degrades them")
    print_table(["photo", *methods], table)
    write_results(
        "restoration_ceiling",
        {
            "settings": {"photos": args.photos.name, "val_fraction": args.val_fraction, "seed": args.seed,
                         "draws": args.draws, "fixed_degree": FIXED_DEGREE, "oracle_degree": ORACLE_DEGREE},
            "fixed_curve_coefficients": [float(c) for c in curve],
            "images": rows,
            "mean": mean,
            "gain_over_input_db": {m: mean[m] - mean["input"] for m in methods},
            "seconds": time.perf_counter() - started,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
