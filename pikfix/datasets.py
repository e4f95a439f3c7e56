"""Training samples for Pik-Fix: degraded grey crops, their clean Lab targets and a colour reference.

A sample is a random crop of a colour photo degraded into a synthetic old grey photo, with the crop's
luminance and chroma in model space (L/100, ab/110) and a reference chosen by the epoch's strategy
(paper section 4.1): a jittered, warped crop of the same photo on even epochs, another photo on odd
ones. Every random draw is seeded by ``(seed, epoch, index)``, so runs are reproducible and a resumed
run skips samples for free. docs/model.md section 2 ("Data") and "Notes on the code" give the details.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from pikfix.color import rgb_to_gray01, rgb_to_model_space
from pikfix.degrade import degrade
from pikfix.imageio import decode_image

PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png")
REFERENCE_STRATEGIES = ("same", "other")


class DatasetError(ValueError):
    """The photo folder is missing, empty, or cannot give the requested split or crop."""


@dataclass(frozen=True)
class ReferenceJitter:
    """Colour jitter and affine warp ranges of a same-photo reference (docs/model.md section 2, "Data")."""

    hue_degrees: float = 20.0
    saturation: tuple[float, float] = (0.8, 1.2)
    contrast: tuple[float, float] = (0.75, 1.25)
    scale: tuple[float, float] = (0.8, 1.2)
    translate: float = 0.2  # fraction of the crop size, each axis
    rotate_degrees: float = 25.0
    shear_degrees: float = 8.0


def list_photos(folder: str | Path) -> list[Path]:
    """The jpg/png photos directly inside ``folder``, sorted by name."""
    root = Path(folder)
    if not root.is_dir():
        raise DatasetError(f"photo folder not found: {root}")
    return sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_EXTENSIONS)


def name_fraction(name: str) -> float:
    """A stable pseudo-random number in [0, 1) from a file name (sha256, so it never changes)."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_photos(folder: str | Path, val_fraction: float = 0.15) -> tuple[list[Path], list[Path]]:
    """Split a photo folder into (train, validation) by a hash of each file name.

    Photos are ranked by the sha256 of their names and the first ``round(n * val_fraction)`` (at
    least one when the fraction is positive and there are two photos or more) go to validation. The
    split depends on nothing but the names: not on file order, time or machine. Adding photos can
    only move photos whose hash lies near the cut-off, never reshuffle the whole set.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be in [0, 1), got {val_fraction}")
    photos = list_photos(folder)
    if not photos:
        raise DatasetError(f"no jpg/png photos in {folder}")
    count = round(len(photos) * val_fraction)
    if val_fraction > 0 and len(photos) >= 2:
        count = min(max(count, 1), len(photos) - 1)
    ranked = sorted(photos, key=lambda p: (name_fraction(p.name), p.name))
    val = set(ranked[:count])
    return [p for p in photos if p not in val], [p for p in photos if p in val]


def load_photo(path: str | Path) -> np.ndarray:
    """Decode a photo to float32 sRGB (H, W, 3), upright, in sRGB (via ``pikfix.imageio``)."""
    return np.ascontiguousarray(decode_image(Path(path)).rgb, dtype=np.float32)


def _to_chw(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).contiguous()


def _random_crop(rgb: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    h, w = rgb.shape[:2]
    y = int(rng.integers(0, h - size + 1))
    x = int(rng.integers(0, w - size + 1))
    return rgb[y : y + size, x : x + size]


class PhotoDataset(Dataset):
    """Degraded/clean crop pairs with a colour reference, deterministic per (seed, epoch, index).

    ``scales`` keeps each photo at several sizes and draws one per sample: small crops of a
    down-scaled photo see a whole scene, as the colorization does at its working resolution, while
    full-scale crops keep the pixel-level damage the restoration sees on real scans.
    ``crops_per_photo`` sets the epoch length (``len(self)`` = photos x crops_per_photo): with a few
    dozen photos an epoch of one crop per photo would be a handful of steps, too short for the
    per-epoch learning-rate decay and reference alternation to mean anything.
    """

    def __init__(
        self,
        photos: Sequence[str | Path] | Sequence[np.ndarray],
        crop: int = 256,
        seed: int = 0,
        severity: float = 1.0,
        crops_per_photo: int = 4,
        strategy: str = "alternate",
        jitter: ReferenceJitter | None = None,
        flip: bool = True,
        scales: Sequence[float] = (1.0,),
    ) -> None:
        if crop < 16:
            raise DatasetError(f"crop must be at least 16 pixels, got {crop}")
        if strategy not in ("alternate", *REFERENCE_STRATEGIES):
            raise DatasetError(f"unknown reference strategy {strategy!r}")
        if not photos:
            raise DatasetError("a dataset needs at least one photo")
        if crops_per_photo < 1:
            raise DatasetError("crops_per_photo must be >= 1")
        if not scales or any(not 0.0 < s <= 1.0 for s in scales):
            raise DatasetError(f"scales must be in (0, 1], got {list(scales)}")
        self.crop = crop
        self.seed = seed
        self.severity = severity
        self.crops_per_photo = crops_per_photo
        self.strategy = strategy
        self.jitter = jitter or ReferenceJitter()
        self.flip = flip
        self.scales = tuple(float(s) for s in scales)
        self.epoch = 0
        # A same-photo reference is cut from a window larger than the crop so that the affine warp
        # (down to scale 0.8, 25 degrees of rotation) is filled with picture, not padding.
        self._reference_window = math.ceil(crop * 1.5)
        self.names: list[str] = []
        self.images: list[list[np.ndarray]] = []  # per photo, one copy per scale
        for index, item in enumerate(photos):
            if isinstance(item, np.ndarray):
                self.names.append(f"array-{index}")
                image = item.astype(np.float32, copy=False)
            else:
                self.names.append(Path(item).name)
                image = load_photo(item)
            self.images.append([self._rescale(image, s) for s in self.scales])

    def _rescale(self, image: np.ndarray, scale: float) -> np.ndarray:
        """``image`` resized by ``scale`` (antialiased), never below the reference window."""
        short = min(image.shape[:2])
        scale = max(scale, self._reference_window / short)
        if scale == 1.0:
            return np.ascontiguousarray(image)
        t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).unsqueeze(0)
        size = [max(self._reference_window, round(image.shape[0] * scale)),
                max(self._reference_window, round(image.shape[1] * scale))]
        t = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=scale < 1.0)
        return np.ascontiguousarray(t[0].permute(1, 2, 0).clamp(0.0, 1.0).numpy())

    def _pick(self, photo: int, rng: np.random.Generator) -> np.ndarray:
        """One scale of a photo (a draw only when several scales are configured)."""
        copies = self.images[photo]
        return copies[int(rng.integers(0, len(copies)))] if len(copies) > 1 else copies[0]

    def __len__(self) -> int:
        return len(self.images) * self.crops_per_photo

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def strategy_for(self, epoch: int) -> str:
        """Which reference strategy an epoch uses: "same" on even epochs, "other" on odd ones."""
        if self.strategy != "alternate":
            return self.strategy
        if len(self.images) < 2:
            return "same"
        return REFERENCE_STRATEGIES[epoch % 2]

    def order(self, epoch: int) -> list[int]:
        """The sample order of an epoch: a permutation seeded by (seed, epoch)."""
        rng = np.random.default_rng([self.seed, epoch, 0x5EED])
        return [int(i) for i in rng.permutation(len(self))]

    def sample(self, index: int, epoch: int) -> dict[str, torch.Tensor]:
        """Sample ``index`` of ``epoch``; the same arguments always give the same tensors."""
        rng = np.random.default_rng([self.seed, epoch, index])
        photo = index % len(self.images)
        image = self._pick(photo, rng)
        target = _random_crop(image, self.crop, rng)
        flip = self.flip and bool(rng.random() < 0.5)
        if flip:
            target = target[:, ::-1]
        target = np.ascontiguousarray(target)
        degraded = degrade(target, seed=int(rng.integers(0, 2**31 - 1)), severity=self.severity)

        strategy = self.strategy_for(epoch)
        if strategy == "same":
            reference = self._same_photo_reference(image, rng)
        else:
            other = int(rng.integers(0, len(self.images) - 1))
            other += other >= photo  # any photo but this one
            reference = _to_chw(_random_crop(self._pick(other, rng), self.crop, rng))
            if self.flip and rng.random() < 0.5:
                reference = reference.flip(-1)

        rgb = _to_chw(target).unsqueeze(0)
        target_l, target_ab = rgb_to_model_space(rgb)
        gray = torch.from_numpy(degraded.gray).expand(3, -1, -1).unsqueeze(0)
        return {
            "gray": rgb_to_gray01(gray)[0],
            "target_l": target_l[0],
            "target_ab": target_ab[0],
            "target_rgb": rgb[0],
            "reference": reference.clamp(0.0, 1.0).contiguous(),
            "mask": torch.from_numpy(degraded.mask).unsqueeze(0),
            "strategy": torch.tensor(REFERENCE_STRATEGIES.index(strategy)),
        }

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.sample(index, self.epoch)

    def _same_photo_reference(self, image: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        """Strategy (a): a jittered, affinely warped crop of the same photo at another location."""
        j = self.jitter
        window = _to_chw(_random_crop(image, self._reference_window, rng))
        angle = float(rng.uniform(-j.rotate_degrees, j.rotate_degrees))
        shift = [int(round(rng.uniform(-j.translate, j.translate) * self.crop)) for _ in range(2)]
        scale = float(rng.uniform(*j.scale))
        shear = [float(rng.uniform(-j.shear_degrees, j.shear_degrees)) for _ in range(2)]
        warped = TF.affine(
            window,
            angle=angle,
            translate=shift,
            scale=scale,
            shear=shear,
            interpolation=InterpolationMode.BILINEAR,
        )
        reference = TF.center_crop(warped, [self.crop, self.crop])
        reference = TF.adjust_hue(reference, float(rng.uniform(-j.hue_degrees, j.hue_degrees)) / 360.0)
        reference = TF.adjust_saturation(reference, float(rng.uniform(*j.saturation)))
        reference = TF.adjust_contrast(reference, float(rng.uniform(*j.contrast)))
        if self.flip and rng.random() < 0.5:
            reference = reference.flip(-1)
        return reference


def batch_iterator(
    dataset: PhotoDataset, epoch: int, batch_size: int, start_batch: int = 0
) -> list[list[int]]:
    """The index batches of an epoch (incomplete last batch dropped), from ``start_batch`` on."""
    order = dataset.order(epoch)
    batches = [order[i : i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
    return batches[start_batch:]


def collate(samples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([s[key] for s in samples]) for key in samples[0]}


def load_batch(dataset: PhotoDataset, indices: Sequence[int], epoch: int) -> dict[str, torch.Tensor]:
    """Build one batch in the calling process (the training sets are small; no worker processes)."""
    return collate([dataset.sample(i, epoch) for i in indices])
