"""Regenerate the shipped sample photos: old-looking grey scans and colour references.

The originals are free-licence colour photographs (see samples/LICENSES.md); the inputs are made
old with the same synthetic degradation the model is trained on, with fixed seeds.
Run: python samples/make_samples.py PHOTOS_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from pikfix.degrade import degrade

INPUTS = {"Garden.jpg": 11, "LadyBird.jpg": 12, "FreshFlower.jpg": 13, "Wood.jpg": 14}
REFERENCES = ["YellowFlower.jpg", "GreenMeadow.jpg", "Dragonfly_by_Bolly.jpg", "FallenLeaf.jpg", "Storm.jpg"]
LONG_SIDE = 384


def load_small(path: Path) -> Image.Image:
    image = Image.open(path).convert("RGB")
    image.thumbnail((LONG_SIDE, LONG_SIDE), Image.Resampling.LANCZOS)
    return image


def main(photos: Path, out: Path) -> None:
    (out / "references").mkdir(parents=True, exist_ok=True)
    for name, seed in INPUTS.items():
        rgb = np.asarray(load_small(photos / name), dtype=np.float32) / 255.0
        old = degrade(rgb, seed=seed).gray
        Image.fromarray(np.round(old * 255).astype(np.uint8), "L").save(out / (Path(name).stem + ".jpg"), quality=90)
    for name in REFERENCES:
        load_small(photos / name).save(out / "references" / name, quality=90)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(__file__).parent)
