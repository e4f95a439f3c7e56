"""Reference retrieval: pick colour photos whose content resembles a grey input (Pik-Fix §3.5).

Each photo is reduced once to a fixed-size descriptor of DISTS-style VGG19 feature statistics, so a
query scores a whole corpus in one vectorised pass instead of one VGG pass per (query, candidate)
pair. Only colourful photos are accepted as references (:func:`check_reference_colour`): the model
transfers a reference's colours. The descriptor, how it approximates DISTS, and its costs are in
docs/model.md, "Notes on the code".
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import warnings
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pikfix.backbones import VGG19Features, gray_to_rgb
from pikfix.color import srgb_to_linear
from pikfix.errors import PikFixInputError
from pikfix.imageio import decode_pil_image, open_image
from pikfix.metrics import colourfulness
from pikfix.uri import read_uri_bytes, write_uri_bytes

log = logging.getLogger(__name__)

INDEX_FORMAT = "pikfix-reference-index"
INDEX_VERSION = 1
RANDOM_INIT_SEED = 0
FLOAT16_MAX = float(np.finfo(np.float16).max)
BLOCK = 1024  # references per scoring block: keeps the float32 temporaries in cache
QUERY_CHUNK = 16  # queries scored together in query_batch
EXACT_MAX = 8192  # corpora up to this size are scored exactly (about 20 ms per query at this size)
SHORTLIST = 1024  # larger corpora: this many nearest by the sketch are then scored exactly
SKETCH_DIM = 64  # principal axes kept by the sketch
SKETCH_SAMPLE = 4096  # descriptors the sketch's axes are fitted on
SCORING_THREADS = min(
    4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
)

ImageLike = np.ndarray | Image.Image


class DescriptorMismatchError(ValueError):
    """A descriptor does not fit the index (another layout, backbone or size)."""


class IndexFormatError(ValueError):
    """Bytes or a file that are not a reference index this code can read."""


@dataclass(frozen=True)
class DescriptorLayout:
    """Shape of a descriptor: kept channels per layer and the pooling grid side.

    A descriptor is ``[μ (C) | σ (C) | pooled maps (G x C, cell-major)]`` with C = sum of
    ``layer_channels`` and G = grid².
    """

    layer_channels: tuple[int, ...]
    grid: int

    @property
    def channels(self) -> int:
        return sum(self.layer_channels)

    @property
    def cells(self) -> int:
        return self.grid * self.grid

    @property
    def dim(self) -> int:
        return self.channels * (2 + self.cells)

    def channel_weights(self) -> np.ndarray:
        """Weights that average over the channels of each layer and then over layers."""
        n = len(self.layer_channels)
        return np.concatenate([np.full(c, 1.0 / (n * c), dtype=np.float32) for c in self.layer_channels])

    def to_dict(self) -> dict[str, Any]:
        return {"layer_channels": list(self.layer_channels), "grid": self.grid}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DescriptorLayout:
        return cls(tuple(int(c) for c in data["layer_channels"]), int(data["grid"]))


@dataclass(frozen=True)
class ScoringConfig:
    """Texture/structure weights of the total score and the DISTS stabilising constants."""

    texture_weight: float = 0.5
    structure_weight: float = 0.5
    c1: float = 1e-6
    c2: float = 1e-6


@dataclass(frozen=True)
class Candidate:
    """One scored reference; ``rank`` starts at 1 (the best)."""

    id: str
    rank: int
    total: float
    texture: float
    structure: float


@dataclass
class Scores:
    """Per-reference scores, aligned with ``ids``."""

    ids: list[str]
    total: np.ndarray
    texture: np.ndarray
    structure: np.ndarray


# ----------------------------------------------------------------------------- colour references

# Hasler & Süsstrunk (2003) colourfulness M on the 0-255 scale, below which a photo is no colour
# reference. Their scale reads 0 "not colourful" and 15 "slightly colourful". A grey photo measures
# 0; a grey photo with independent chroma noise of 3 levels per channel (more than a scanner or a JPEG
# of a grey image adds) about 5.4; a grey photo under a light sepia cast about 5; the least colourful
# of 273 ordinary colour photos measured (a muted bark texture) 8.7, and muted photos mostly 10-30.
# 7 lies between the two groups. A fully sepia-toned print (M 14-27) is as colourful as a muted colour
# photo by any chroma statistic, so it is not refused by this test.
MIN_REFERENCE_COLOURFULNESS = 7.0
COLOUR_CHECK_SIDE = 512  # the check decodes a photo at about this size: M is a global statistic
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


@dataclass(frozen=True)
class ColourCheck:
    """A photo's colourfulness against the threshold a colour reference must reach."""

    colourfulness: float
    threshold: float = MIN_REFERENCE_COLOURFULNESS

    @property
    def is_colour(self) -> bool:
        return self.colourfulness >= self.threshold

    def reason(self) -> str:
        """Why the photo was refused, for error messages and the reference's stored error."""
        return (
            f"not a colour photo: colourfulness {self.colourfulness:.1f} is below {self.threshold:g} "
            "(Hasler-Süsstrunk M); a grey or toned photo has no colours to transfer"
        )


def check_reference_colour(rgb: np.ndarray, threshold: float = MIN_REFERENCE_COLOURFULNESS) -> ColourCheck:
    """Colourfulness of decoded pixels (HxW grey, or HxWx3 float in [0, 1], uint8 or uint16)."""
    arr = np.asarray(rgb)
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] < 3):
        return ColourCheck(0.0, threshold)
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32) / np.float32(np.iinfo(arr.dtype).max)
    return ColourCheck(round(colourfulness(arr[..., :3]), 2), threshold)


def check_reference_colour_file(
    fp: IO[bytes], fmt: str, threshold: float = MIN_REFERENCE_COLOURFULNESS, side: int = COLOUR_CHECK_SIDE
) -> ColourCheck:
    """The colour check of an encoded photo whose header was already checked (``fmt``: its sniffed format).

    Decoded at about ``side`` pixels (JPEG in the DCT domain), so a scan of a hundred megapixels costs
    a fraction of its full decode; grey pixel modes answer without decoding. The ICC profile is
    applied as the worker's decoder applies it. Damaged pixel data raises ``PikFixInputError``.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with open_image(fp, fmt) as image:  # the first frame is the photo, as in the worker
                if image.mode in _GREY_MODES:
                    return ColourCheck(0.0, threshold)
                image.draft("RGB", (side, side))
                image.thumbnail((side, side), Image.Resampling.BOX)
                decoded = decode_pil_image(image, max_pixels=max(image.width * image.height, 1))
    except (PikFixInputError, MemoryError):
        raise
    except Exception as exc:  # Pillow raises many types for damaged pixel data; all mean bad input
        raise PikFixInputError("corrupt_image", f"the {fmt.upper()} data is damaged ({type(exc).__name__})") from exc
    return check_reference_colour(decoded.rgb, threshold)


# ----------------------------------------------------------------------------- descriptors


def _srgb_to_l01(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] to CIE L/100: the luminance the pipeline's grey input is expressed in."""
    lin = srgb_to_linear(rgb)
    y = lin[..., 0] * 0.212671 + lin[..., 1] * 0.715160 + lin[..., 2] * 0.072169
    f = np.where(y > 0.008856, np.cbrt(y), 7.787 * y + 16.0 / 116.0)
    return ((116.0 * f - 16.0) / 100.0).astype(np.float32)


def _box_reduce(arr: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor`` x ``factor`` blocks into float32 (a reshaped view: no full-size float copy)."""
    h, w = (arr.shape[0] // factor) * factor, (arr.shape[1] // factor) * factor
    blocks = arr[:h, :w].reshape(h // factor, factor, w // factor, factor, *arr.shape[2:])
    return blocks.mean(axis=(1, 3), dtype=np.float32)


def to_gray01(image: ImageLike, size: int | None = None) -> np.ndarray:
    """Any supported image to an HxW float32 grey in [0, 1], resized to ``size`` x ``size`` if given.

    Grey inputs are taken as they are (the pipeline's grey is already L/100); colour is converted to
    CIE L/100 so grey queries and colour candidates are compared on the same scale. Big PIL images
    are box-reduced before conversion so a scan never becomes a full-size float array here.
    """
    if isinstance(image, Image.Image):
        if size and min(image.size) > 4 * size:
            image = image.reduce(max(1, min(image.size) // (2 * size)))
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(image, dtype=np.float32) / 65535.0
        elif image.mode == "F":
            arr = np.asarray(image, dtype=np.float32)
        elif image.mode in ("L", "LA"):
            arr = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
        else:
            arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    else:
        arr = np.asarray(image)
        scales = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}
        if arr.dtype not in scales and not np.issubdtype(arr.dtype, np.floating):
            raise TypeError(f"unsupported image dtype {arr.dtype}")
        scale = np.float32(scales.get(arr.dtype, 1.0))
        if size and arr.ndim >= 2 and min(arr.shape[:2]) > 4 * size:
            arr = _box_reduce(arr, min(arr.shape[:2]) // (2 * size))
        arr = arr.astype(np.float32, copy=False) / scale
    if arr.ndim == 3 and arr.shape[2] in (1, 2):  # grey or grey + alpha
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        arr = _srgb_to_l01(np.clip(arr[..., :3], 0.0, 1.0))
    if arr.ndim != 2:
        raise ValueError(f"expected an HxW or HxWx3 image, got shape {arr.shape}")
    arr = np.clip(arr, 0.0, 1.0)
    if size:
        arr = np.asarray(Image.fromarray(arr).resize((size, size), Image.Resampling.BILINEAR), np.float32)
    return arr


def _channel_subset(channels: int, keep: int) -> np.ndarray:
    """Evenly spaced channel indices, so every part of a layer is represented."""
    if keep >= channels:
        return np.arange(channels)
    return np.unique(np.linspace(0, channels - 1, keep).round().astype(np.int64))


def _layer_statistics(maps: torch.Tensor, grid: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """μ, σ (N,K) and σ-scaled unit pooled maps (N,K,G) of feature maps (N,K,H,W)."""
    mu = maps.mean(dim=(2, 3))
    centred = maps - mu[:, :, None, None]
    sigma = centred.pow(2).mean(dim=(2, 3)).sqrt()
    pooled = F.adaptive_avg_pool2d(centred, grid).flatten(2)
    norm = pooled.norm(dim=2, keepdim=True)
    unit = torch.where(norm > 1e-12, pooled / norm.clamp_min(1e-12), torch.zeros_like(pooled))
    return mu, sigma, unit * sigma[:, :, None]


class DescriptorExtractor:
    """Turns images into retrieval descriptors with VGG19 features (see the module docstring).

    ``weights``: a torchvision vgg19 ImageNet state_dict (path or s3:// URI). Without it the backbone
    is randomly initialised with a fixed seed and a warning is logged.
    """

    def __init__(
        self,
        weights: str | None = None,
        device: str = "cpu",
        size: int = 224,
        channels_per_layer: int = 32,
        grid: int = 2,
        batch_size: int = 8,
    ) -> None:
        if size < 32:
            raise ValueError(f"size must be at least 32 pixels, got {size}")
        self.size = size
        self.grid = grid
        self.batch_size = batch_size
        self.device = torch.device(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)  # the same random backbone in every process
            net = VGG19Features(weights, stages=5)
        if not weights:
            log.warning(
                "VGG19 has no ImageNet weights (none supplied): reference retrieval ranks by low-level "
                "structure and tone, not by content"
            )
        self.net = net.to(self.device).eval()
        self.subsets = [np.arange(1)] + [_channel_subset(c, channels_per_layer) for c in net.channels]
        self.layout = DescriptorLayout(tuple(len(s) for s in self.subsets), grid)
        self.backbone_id = self._fingerprint(weights)

    def _fingerprint(self, weights: str | None) -> str:
        """Identify the backbone by content, so indexes built with other weights are detected."""
        digest = hashlib.sha256()
        for p in self.net.parameters():
            digest.update(p.detach().flatten()[:4096].cpu().numpy().tobytes())
        kind = "imagenet" if weights else f"random{RANDOM_INIT_SEED}"
        return f"vgg19-{kind}-{digest.hexdigest()[:16]}-s{self.size}-g{self.grid}"

    def new_index(self, scoring: ScoringConfig | None = None) -> ReferenceIndex:
        """An empty index for this extractor's descriptors."""
        return ReferenceIndex(self.layout, backbone=self.backbone_id, scoring=scoring)

    def describe(self, image: ImageLike) -> np.ndarray:
        """1-D float32 descriptor of one image (numpy HxW/HxWx3 in [0, 1] or uint8/16, or PIL)."""
        return self.describe_batch([image])[0]

    def describe_batch(self, images: Iterable[ImageLike]) -> np.ndarray:
        """(N, dim) float32 descriptors, computed ``batch_size`` images at a time."""
        grays = [to_gray01(img, self.size) for img in images]
        out = np.empty((len(grays), self.layout.dim), dtype=np.float32)
        for start in range(0, len(grays), self.batch_size):
            batch = torch.from_numpy(np.stack(grays[start : start + self.batch_size]))[:, None]
            out[start : start + len(batch)] = self._describe_tensor(batch.to(self.device))
        return out

    @torch.inference_mode()
    def _describe_tensor(self, gray: torch.Tensor) -> np.ndarray:
        maps = [gray, *self.net(gray_to_rgb(gray))]
        mus, sigmas, grids = [], [], []
        for feats, subset in zip(maps, self.subsets, strict=True):
            mu, sigma, pooled = _layer_statistics(
                feats[:, torch.as_tensor(subset, device=feats.device)], self.grid
            )
            mus.append(mu)
            sigmas.append(sigma)
            grids.append(pooled)
        pooled = torch.cat(grids, dim=1).transpose(1, 2).flatten(1)  # cell-major: G blocks of C
        return torch.cat([torch.cat(mus, 1), torch.cat(sigmas, 1), pooled], dim=1).float().cpu().numpy()


# ----------------------------------------------------------------------------- scoring


def dists_similarity(
    query: np.ndarray, reference: np.ndarray, layout: DescriptorLayout, scoring: ScoringConfig | None = None
) -> tuple[float, float, float]:
    """(total, texture, structure) of one pair of descriptors: the plain per-pair definition that
    :meth:`ReferenceIndex.score_all` computes for a whole corpus at once."""
    cfg = scoring or ScoringConfig()
    c, g = layout.channels, layout.cells
    q, r = np.asarray(query, np.float64), np.asarray(reference, np.float64)
    mu_q, mu_r = q[:c], r[:c]
    sd_q, sd_r = q[c : 2 * c], r[c : 2 * c]
    cov = (q[2 * c :].reshape(g, c) * r[2 * c :].reshape(g, c)).sum(axis=0)
    t = (2 * mu_q * mu_r + cfg.c1) / (mu_q**2 + mu_r**2 + cfg.c1)
    s = (2 * cov + cfg.c2) / (sd_q**2 + sd_r**2 + cfg.c2)
    w = layout.channel_weights().astype(np.float64)
    texture, structure = float(w @ t), float(w @ s)
    return cfg.texture_weight * texture + cfg.structure_weight * structure, texture, structure


class _Sketch:
    """A linear stand-in for the DISTS score, so a large corpus is shortlisted by one matrix product.

    Per channel, each DISTS term is ``1 - (x - y)^2 / (x^2 + y^2 + c)``. With the denominator fixed at
    the corpus's typical magnitude it is a weighted squared distance: scaling μ and the pooled maps by
    ``sqrt(weight / (2 E[x^2] + c))`` turns "highest score" into "nearest in Euclidean distance". The
    scaled descriptors are projected on their principal axes (``SKETCH_DIM``), fitted on a sample.
    """

    def __init__(self, layout: DescriptorLayout, scoring: ScoringConfig, sample: np.ndarray) -> None:
        c, g = layout.channels, layout.cells
        w = layout.channel_weights()
        mu, grid = sample[:, :c], sample[:, 2 * c :].reshape(len(sample), g, c)
        mu_scale = np.sqrt(scoring.texture_weight * w / (2 * np.mean(mu * mu, axis=0) + scoring.c1))
        sd_sq = np.mean(np.sum(grid * grid, axis=1), axis=0)
        grid_scale = np.sqrt(scoring.structure_weight * w / (2 * sd_sq + scoring.c2))
        self.scale = np.concatenate([mu_scale, np.zeros(c), np.tile(grid_scale, g)]).astype(np.float32)
        scaled = sample * self.scale
        self.mean = scaled.mean(axis=0)
        _, _, vt = np.linalg.svd(scaled - self.mean, full_matrices=False)
        self.axes = np.ascontiguousarray(vt[:SKETCH_DIM].T, dtype=np.float32)  # (dim, r)

    def project(self, descriptors: np.ndarray) -> np.ndarray:
        """(n, dim) float descriptors → (n, r) float32 sketch coordinates."""
        return (np.asarray(descriptors, dtype=np.float32) * self.scale - self.mean) @ self.axes


class ReferenceIndex:
    """A tenant's reference corpus: ids and float16 descriptors, scored by vectorised DISTS.

    Descriptors live column-wise in a (dim, capacity) float16 matrix that grows by doubling, so
    adding one reference is amortised O(dim) and removing one moves the last column into its place.
    Adding an id that is already present replaces its descriptor (re-indexing is idempotent).
    Above ``EXACT_MAX`` references a query scores exactly only the ``SHORTLIST`` nearest by a
    low-dimensional sketch (:class:`_Sketch`), refitted each time the corpus doubles.
    """

    def __init__(
        self, layout: DescriptorLayout, backbone: str = "", scoring: ScoringConfig | None = None
    ) -> None:
        self.layout = layout
        self.backbone = backbone
        self.scoring = scoring or ScoringConfig()
        self._ids: list[str] = []
        self._rows: dict[str, int] = {}
        self._data = np.zeros((layout.dim, 0), dtype=np.float16)
        self._sketch: _Sketch | None = None
        self._sketch_fit_size = 0
        self._points = np.zeros((0, SKETCH_DIM), dtype=np.float32)  # sketch rows, aligned with _ids

    # -- contents

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, ref_id: object) -> bool:
        return ref_id in self._rows

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    def is_compatible(self, extractor: DescriptorExtractor) -> bool:
        """Whether ``extractor`` makes descriptors this index can score."""
        return extractor.layout == self.layout and (
            not self.backbone or extractor.backbone_id == self.backbone
        )

    def descriptor(self, ref_id: str) -> np.ndarray:
        """The stored (float16-rounded) descriptor of ``ref_id``, as float32."""
        return self._data[:, self._rows[ref_id]].astype(np.float32)

    def _check(self, descriptors: np.ndarray) -> np.ndarray:
        arr = np.asarray(descriptors, dtype=np.float32)
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2 or arr.shape[1] != self.layout.dim:
            raise DescriptorMismatchError(
                f"descriptors of shape {np.shape(descriptors)} do not fit layout dim {self.layout.dim}"
            )
        if not np.isfinite(arr).all() or np.abs(arr).max(initial=0.0) > FLOAT16_MAX:
            raise DescriptorMismatchError("descriptor values are not finite or exceed the float16 range")
        return arr

    def add(self, ids: Sequence[str], descriptors: np.ndarray) -> None:
        arr = self._check(descriptors)
        ids = [str(i) for i in ids]
        if len(ids) != len(arr):
            raise ValueError(f"{len(ids)} ids for {len(arr)} descriptors")
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate ids in one add() call")
        new = [i for i in ids if i not in self._rows]
        needed = len(self._ids) + len(new)
        if needed > self._data.shape[1]:
            grown = np.zeros((self.layout.dim, max(needed, 2 * self._data.shape[1], 64)), dtype=np.float16)
            grown[:, : len(self._ids)] = self._data[:, : len(self._ids)]
            self._data = grown
        for ref_id in new:
            self._rows[ref_id] = len(self._ids)
            self._ids.append(ref_id)
        cols = np.fromiter((self._rows[i] for i in ids), dtype=np.int64, count=len(ids))
        self._data[:, cols] = arr.T.astype(np.float16)
        if self._sketch is not None:
            if self._points.shape[0] < self._data.shape[1]:
                grown = np.zeros((self._data.shape[1], self._points.shape[1]), dtype=np.float32)
                grown[: len(self._points)] = self._points
                self._points = grown
            self._points[cols] = self._sketch.project(arr.astype(np.float16))

    def remove(self, ref_id: str) -> None:
        """Drop ``ref_id``; raises KeyError when it is not in the index."""
        row = self._rows.pop(ref_id)
        last = len(self._ids) - 1
        if row != last:
            moved = self._ids[last]
            self._data[:, row] = self._data[:, last]
            if self._sketch is not None:
                self._points[row] = self._points[last]
            self._ids[row] = moved
            self._rows[moved] = row
        self._ids.pop()

    # -- scoring

    def score_all(self, descriptor: np.ndarray, scoring: ScoringConfig | None = None) -> Scores:
        """Total, texture and structure scores of every reference for one query descriptor."""
        query = self._check(descriptor)
        if len(query) != 1:
            raise DescriptorMismatchError(f"score_all takes one descriptor, got {len(query)}")
        texture, structure = self._score_many(query, scoring)
        cfg = scoring or self.scoring
        total = cfg.texture_weight * texture[0] + cfg.structure_weight * structure[0]
        return Scores(self.ids, total, texture[0], structure[0])

    def _score_many(
        self, queries: np.ndarray, scoring: ScoringConfig | None, cols: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(Q, N) texture and structure, one pass over the corpus (or its columns ``cols``) in blocks.

        Queries are rounded to float16 like the stored references, so a photo scores 1 against
        itself. Everything that depends on the query alone (its half of each denominator, and the
        channel weights folded into the numerators) is computed once; per block the float16 columns
        are widened once and reused by every query. Blocks are spread over a few threads: numpy
        releases the GIL in its loops and, unlike an OpenMP pool, never spin-waits on a busy CPU.
        """
        cfg = scoring or self.scoring
        c, g = self.layout.channels, self.layout.cells
        n = len(self._ids) if cols is None else len(cols)
        q = queries.astype(np.float16).astype(np.float32)
        w = self.layout.channel_weights()[:, None]
        q_mu, q_sd, q_grid = q[:, :c, None], q[:, c : 2 * c, None], q[:, 2 * c :].reshape(-1, g, c, 1)
        t_den = q_mu * q_mu + np.float32(cfg.c1)
        t_num = 2.0 * w * q_mu  # (2 μx μy + c1) w  =  μy (2 w μx) + w c1
        t_add = (w * np.float32(cfg.c1)).astype(np.float32)
        s_den = q_sd * q_sd + np.float32(cfg.c2)
        s_grid = 2.0 * w * q_grid  # (2 σxy + c2) w  =  Σ_g v_y (2 w v_x) + w c2
        s_add = (w * np.float32(cfg.c2)).astype(np.float32)
        texture = np.empty((len(q), n), dtype=np.float32)
        structure = np.empty((len(q), n), dtype=np.float32)

        def score_block(start: int) -> None:
            stop = min(n, start + BLOCK)
            picked = slice(start, stop) if cols is None else cols[start:stop]
            block = self._data[:, picked].astype(np.float32)
            mu, sd, grid = block[:c], block[c : 2 * c], block[2 * c :].reshape(g, c, -1)
            mu_sq, sd_sq = mu * mu, sd * sd
            den, num, tmp = np.empty_like(mu), np.empty_like(mu), np.empty_like(mu)
            for i in range(len(q)):
                np.add(mu_sq, t_den[i], out=den)
                np.multiply(mu, t_num[i], out=num)
                num += t_add
                num /= den
                np.add.reduce(num, axis=0, out=texture[i, start:stop])
                np.multiply(grid[0], s_grid[i, 0], out=num)
                for cell in range(1, g):
                    np.multiply(grid[cell], s_grid[i, cell], out=tmp)
                    num += tmp
                num += s_add
                np.add(sd_sq, s_den[i], out=den)
                num /= den
                np.add.reduce(num, axis=0, out=structure[i, start:stop])

        starts = range(0, n, BLOCK)
        if len(starts) > 1 and SCORING_THREADS > 1:
            with ThreadPoolExecutor(SCORING_THREADS) as pool:
                list(pool.map(score_block, starts))
        else:
            for start in starts:
                score_block(start)
        return texture, structure

    def _top_k(
        self, texture: np.ndarray, structure: np.ndarray, k: int, cfg: ScoringConfig,
        cols: np.ndarray | None = None,
    ) -> list[Candidate]:
        total = cfg.texture_weight * texture + cfg.structure_weight * structure
        ids = self._ids if cols is None else [self._ids[j] for j in cols]
        k = min(k, len(total))
        if k <= 0:
            return []
        best = np.argpartition(-total, k - 1)[:k] if k < len(total) else np.arange(len(total))
        order = sorted(best.tolist(), key=lambda j: (-total[j], ids[j]))  # ties broken by id
        return [
            Candidate(ids[j], rank, float(total[j]), float(texture[j]), float(structure[j]))
            for rank, j in enumerate(order, start=1)
        ]

    def _ensure_sketch(self) -> None:
        """Fit the sketch on a sample once the corpus outgrows exact scoring, and again when it doubles."""
        n = len(self._ids)
        if self._sketch is not None and n < 2 * self._sketch_fit_size:
            return
        rng = np.random.default_rng(0)
        sample = rng.choice(n, size=min(n, SKETCH_SAMPLE), replace=False)
        self._sketch = _Sketch(self.layout, self.scoring, self._data[:, np.sort(sample)].T.astype(np.float32))
        self._sketch_fit_size = n
        self._points = np.zeros((self._data.shape[1], self._sketch.axes.shape[1]), dtype=np.float32)
        for start in range(0, n, BLOCK * 8):
            stop = min(n, start + BLOCK * 8)
            self._points[start:stop] = self._sketch.project(self._data[:, start:stop].T)

    def _shortlist(self, query: np.ndarray) -> np.ndarray:
        """Column numbers of the ``SHORTLIST`` references nearest to ``query`` in sketch space."""
        n = len(self._ids)
        points = self._points[:n]
        q = self._sketch.project(query[None].astype(np.float16))[0]
        dist = np.einsum("ij,ij->i", points, points) - 2.0 * (points @ q)  # |p - q|^2 - |q|^2
        return np.sort(np.argpartition(dist, SHORTLIST - 1)[:SHORTLIST])

    def query(
        self, descriptor: np.ndarray, k: int = 5, scoring: ScoringConfig | None = None
    ) -> list[Candidate]:
        """The ``k`` best references for one query descriptor, best first."""
        return self.query_batch(self._check(descriptor), k, scoring)[0]

    def query_batch(
        self, descriptors: np.ndarray, k: int = 5, scoring: ScoringConfig | None = None
    ) -> list[list[Candidate]]:
        """:meth:`query` for several descriptors (Q, dim), sharing one pass over the corpus."""
        queries = self._check(descriptors)
        if not self._ids:
            return [[] for _ in queries]
        cfg = scoring or self.scoring
        if len(self._ids) > EXACT_MAX:
            self._ensure_sketch()
            results = []
            for query in queries:
                cols = self._shortlist(query)
                texture, structure = self._score_many(query[None], scoring, cols)
                results.append(self._top_k(texture[0], structure[0], k, cfg, cols))
            return results
        results: list[list[Candidate]] = []
        for start in range(0, len(queries), QUERY_CHUNK):  # bounds the (queries x corpus) score arrays
            texture, structure = self._score_many(queries[start : start + QUERY_CHUNK], scoring)
            results += [self._top_k(texture[i], structure[i], k, cfg) for i in range(len(texture))]
        return results

    # -- persistence

    def to_bytes(self) -> bytes:
        """The index as an uncompressed .npz (float16 descriptors plus JSON metadata); no pickles."""
        meta = {
            "format": INDEX_FORMAT,
            "version": INDEX_VERSION,
            "layout": self.layout.to_dict(),
            "backbone": self.backbone,
            "scoring": asdict(self.scoring),
            "ids": self._ids,
        }
        buf = io.BytesIO()
        np.savez(
            buf,
            descriptors=np.ascontiguousarray(self._data[:, : len(self._ids)].T),
            meta=np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8),
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ReferenceIndex:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                meta = json.loads(npz["meta"].tobytes().decode("utf-8"))
                descriptors = npz["descriptors"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise IndexFormatError(f"not a reference index: {exc}") from exc
        if meta.get("format") != INDEX_FORMAT or meta.get("version") != INDEX_VERSION:
            raise IndexFormatError(f"unsupported index format {meta.get('format')!r} v{meta.get('version')}")
        index = cls(
            DescriptorLayout.from_dict(meta["layout"]),
            meta.get("backbone", ""),
            ScoringConfig(**meta["scoring"]),
        )
        ids = [str(i) for i in meta["ids"]]
        if descriptors.dtype != np.float16 or descriptors.shape != (len(ids), index.layout.dim):
            raise IndexFormatError(
                f"descriptor matrix {descriptors.shape} {descriptors.dtype} does not fit metadata"
            )
        index._ids = ids
        index._rows = {ref_id: row for row, ref_id in enumerate(ids)}
        if len(index._rows) != len(ids):
            raise IndexFormatError("duplicate ids in index")
        index._data = np.ascontiguousarray(descriptors.T)
        return index

    def save(self, path: str | Path) -> None:
        """Write the index to a local path (atomically: temporary file then rename) or an s3:// URI."""
        write_uri_bytes(path, self.to_bytes())

    @classmethod
    def load(cls, path: str | Path) -> ReferenceIndex:
        return cls.from_bytes(read_uri_bytes(path))


def rank_references(
    query_image: ImageLike,
    reference_images: Mapping[str, ImageLike],
    extractor: DescriptorExtractor,
    k: int = 5,
    scoring: ScoringConfig | None = None,
) -> list[Candidate]:
    """Rank a small set of candidate photos for one grey (or colour) query image."""
    index = extractor.new_index(scoring)
    if reference_images:
        ids = list(reference_images)
        index.add(ids, extractor.describe_batch([reference_images[i] for i in ids]))
    return index.query(extractor.describe(query_image), k)
