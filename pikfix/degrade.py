"""Synthetic old photos: turn a clean colour image into a damaged grey one (Pik-Fix §4.1).

Training pairs need an input that looks like a scanned old print and a clean target. The recipe
follows the paper (alpha-composited scratch/crack textures, Gaussian blur, white polygons for severe
damage, down- and up-sampling, grey conversion) plus the defects real scans show (fading, film grain,
noise, sepia/yellowed paper, JPEG artefacts). Textures are generated procedurally rather than read
from a texture library, so the module needs no data files.

Every step draws from its own generator spawned from ``seed``: the output is deterministic, and
switching one step off in :class:`DegradeConfig` leaves the randomness of all the others unchanged
(the tests rely on this to check that damage stays inside the mask).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

LUMA_601 = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# Orthochromatic film barely saw red: old photos render reds dark and blues light.
ORTHOCHROMATIC = np.array([0.05, 0.55, 0.40], dtype=np.float32)
# Row sums of the classic sepia matrix: how much a grey level is lifted in R, G and B by full toning.
SEPIA_GAIN = np.array([1.351, 1.203, 0.937], dtype=np.float32)
# Damage below this opacity would not survive 8-bit quantisation, so it is neither drawn nor masked.
MIN_ALPHA = 1.0 / 255.0
STEPS = ("tone", "fade", "resample", "blur", "noise", "defects", "polygons", "jpeg")


@dataclass(frozen=True)
class DegradeConfig:
    """Which steps may run and how often; intensities scale with the ``severity`` of each call."""

    tone: bool = True  # grey-conversion weights jitter, sepia toning, yellowed paper
    fade: bool = True
    resample: bool = True
    blur: bool = True
    noise: bool = True
    defects: bool = True  # scratches, cracks, dust, folds
    polygons: bool = True
    jpeg: bool = True
    p_tone: float = 0.6
    p_fade: float = 0.8
    p_resample: float = 0.5
    p_blur: float = 0.7
    p_noise: float = 0.8
    p_polygons: float = 0.35
    p_jpeg: float = 0.6
    max_polygon_fraction: float = 1.0 / 20.0  # paper: a damage polygon covers under 1/20 of the image
    central_fraction: float = 0.6  # paper: polygons stay out of the central 60 % of the frame


@dataclass
class Degraded:
    """``gray``: HxW float32 in [0, 1]; ``mask``: HxW bool, True where defects or polygons hit."""

    gray: np.ndarray
    mask: np.ndarray
    params: dict[str, Any]


def degrade(
    rgb: np.ndarray, seed: int, severity: float = 1.0, config: DegradeConfig | None = None
) -> Degraded:
    """Degrade ``rgb`` (HxWx3 float in [0, 1]) into a synthetic old grey photo, deterministically.

    ``severity`` 0 gives the plain grey conversion; 1 is the training default; larger values make
    every effect stronger. At severity > 0 at least one scratch, crack or speck is drawn, so the
    mask is never empty.
    """
    cfg = config or DegradeConfig()
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"degrade expects an HxWx3 image, got shape {rgb.shape}")
    if not (math.isfinite(severity) and severity >= 0):
        raise ValueError(f"severity must be a finite number >= 0, got {severity}")
    h, w = rgb.shape[:2]
    if h < 8 or w < 8:
        raise ValueError(f"image too small to degrade: {h}x{w}")
    rgb = np.clip(rgb.astype(np.float32, copy=False), 0.0, 1.0)
    children = np.random.SeedSequence(seed).spawn(len(STEPS))
    rngs = {step: np.random.default_rng(child) for step, child in zip(STEPS, children, strict=True)}
    sev = float(severity)
    chance = min(1.0, sev)  # probabilities saturate at severity 1; intensities keep growing
    params: dict[str, Any] = {"seed": int(seed), "severity": sev}

    toned = cfg.tone and _coin(rngs["tone"], cfg.p_tone * chance)
    gray, params["tone"] = _tone(rgb, rngs["tone"], sev, toned)
    if cfg.fade and _coin(rngs["fade"], cfg.p_fade * chance):
        gray, params["fade"] = _fade(gray, rngs["fade"], sev)
    if cfg.resample and _coin(rngs["resample"], cfg.p_resample * chance):
        gray, params["resample"] = _resample(gray, rngs["resample"], sev)
    if cfg.blur and _coin(rngs["blur"], cfg.p_blur * chance):
        sigma = float(rngs["blur"].uniform(0.3, 1.6) * sev)
        gray = gaussian_blur(gray, sigma)
        params["blur"] = {"sigma": sigma}
    if cfg.noise and _coin(rngs["noise"], cfg.p_noise * chance):
        gray, params["noise"] = _noise(gray, rngs["noise"], sev)
    mask = np.zeros((h, w), dtype=bool)
    if cfg.defects and sev > 0:
        gray, mask, params["defects"] = _defects(gray, rngs["defects"], sev)
    if cfg.polygons and _coin(rngs["polygons"], cfg.p_polygons * chance):
        poly = _polygons(h, w, rngs["polygons"], cfg)
        gray[poly] = 1.0
        mask |= poly
        params["polygons"] = {"pixels": int(poly.sum())}
    if cfg.jpeg and _coin(rngs["jpeg"], cfg.p_jpeg * chance):
        quality = int(rngs["jpeg"].integers(max(10, int(90 - 55 * sev)), 96))
        gray = _jpeg(gray, quality)
        params["jpeg"] = {"quality": quality}
    return Degraded(gray=np.clip(gray, 0.0, 1.0, out=gray), mask=mask, params=params)


def degrade_pil(img: Image.Image, seed: int, severity: float = 1.0) -> Image.Image:
    """Convenience wrapper: any PIL image in, an 8-bit grey ("L") synthetic old photo out."""
    rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    gray = degrade(rgb, seed, severity).gray
    return Image.fromarray(np.round(gray * 255.0).astype(np.uint8))


# ----------------------------------------------------------------------------- helpers


def _coin(rng: np.random.Generator, p: float) -> bool:
    return bool(rng.random() < p)


def gaussian_kernel(sigma: float, truncate: float = 3.0) -> np.ndarray:
    radius = max(1, int(truncate * sigma + 0.5))
    x = np.arange(-radius, radius + 1, dtype=np.float32)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an HxW float32 image, mirrored edges; a sum of shifted slices."""
    if sigma < 0.05:
        return img.astype(np.float32, copy=True)
    k = gaussian_kernel(sigma)
    r = len(k) // 2
    h, w = img.shape
    if r >= min(h, w):
        raise ValueError(f"blur sigma {sigma} too large for a {h}x{w} image")
    out = img.astype(np.float32, copy=False)
    for axis in (0, 1):
        padded = np.pad(out, [(r, r) if a == axis else (0, 0) for a in (0, 1)], mode="symmetric")
        n = out.shape[axis]

        def tap(i: int, padded: np.ndarray = padded, n: int = n, axis: int = axis) -> np.ndarray:
            return padded[i : i + n] if axis == 0 else padded[:, i : i + n]

        acc = tap(r) * k[r]
        tmp = np.empty_like(acc)
        for i in range(r):  # the kernel is symmetric: add the mirrored taps, then weight once
            np.add(tap(i), tap(2 * r - i), out=tmp)
            tmp *= k[i]
            acc += tmp
        out = acc
    return out


def _smooth_field(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency random field in [0, 1]: a small random grid up-sampled bicubically."""
    gh, gw = max(2, round(cells * h / max(h, w))), max(2, round(cells * w / max(h, w)))
    grid = rng.random((gh, gw), dtype=np.float32)
    field = np.asarray(Image.fromarray(grid).resize((w, h), Image.Resampling.BICUBIC))
    return np.clip(field, 0.0, 1.0)


def _tone(
    rgb: np.ndarray, rng: np.random.Generator, sev: float, enabled: bool
) -> tuple[np.ndarray, dict[str, Any]]:
    """Grey conversion with film-like channel weights, sepia toning and yellowed paper.

    Toning happens in colour and the result is read back as luminance: sepia lifts and compresses
    the highlights, yellowing darkens stained areas, both showing up in the grey output.
    """
    weights = LUMA_601.copy()
    info: dict[str, Any] = {"applied": enabled}
    if enabled:
        ortho = float(rng.uniform(0.0, 0.6) if rng.random() < 0.3 else 0.0) * min(1.0, sev)
        weights = (1 - ortho) * LUMA_601 + ortho * ORTHOCHROMATIC
        weights = np.clip(weights + rng.normal(0.0, 0.04 * sev, 3).astype(np.float32), 0.02, None)
        weights = (weights / weights.sum()).astype(np.float32)
        info["orthochromatic"] = ortho
    gray = rgb @ weights
    info["gray_weights"] = [float(x) for x in weights]
    if not enabled:
        return gray.astype(np.float32, copy=False), info
    h, w = gray.shape
    sepia = float(np.clip(rng.uniform(0.0, 0.6) * sev, 0.0, 1.0))
    yellow = float(np.clip(rng.uniform(0.0, 0.35) * sev, 0.0, 0.9))
    stain = _smooth_field(rng, h, w, int(rng.integers(2, 6))) * yellow
    stain_gain = np.array([0.0, 0.3, 1.0], dtype=np.float32)  # yellowing absorbs blue, a bit of green
    out = np.zeros_like(gray)
    for c in range(3):
        channel = gray * ((1 - sepia) + sepia * SEPIA_GAIN[c])
        if stain_gain[c] > 0:
            channel *= 1.0 - stain_gain[c] * stain
        out += LUMA_601[c] * np.clip(channel, 0.0, 1.0)
    info.update(sepia=sepia, yellowing=yellow)
    return out, info


def _fade(gray: np.ndarray, rng: np.random.Generator, sev: float) -> tuple[np.ndarray, dict[str, Any]]:
    """Contrast loss: lifted blacks, dulled whites, a gamma shift and uneven fading across the print."""
    lo = float(rng.uniform(0.0, 0.22) * sev)
    hi = float(1.0 - rng.uniform(0.0, 0.18) * sev)
    if hi - lo < 0.2:
        hi = lo + 0.2
    gamma = float(math.exp(rng.uniform(-0.35, 0.35) * min(1.0, sev)))
    uneven = float(rng.uniform(0.0, 0.08) * sev)
    h, w = gray.shape
    out = lo + (hi - lo) * np.power(np.clip(gray, 0.0, 1.0), gamma, dtype=np.float32)
    if uneven > 0:
        out += uneven * (_smooth_field(rng, h, w, int(rng.integers(2, 5))) - 0.5)
    return np.clip(out, 0.0, 1.0), {"black": lo, "white": hi, "gamma": gamma, "uneven": uneven}


_RESAMPLERS = {
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


def _resample(gray: np.ndarray, rng: np.random.Generator, sev: float) -> tuple[np.ndarray, dict[str, Any]]:
    """Lost resolution: shrink by a random factor and enlarge back with random filters."""
    h, w = gray.shape
    factor = float(1.0 + rng.uniform(0.5, 2.5) * sev)
    small = (max(4, round(w / factor)), max(4, round(h / factor)))
    down, up = rng.choice(list(_RESAMPLERS)), rng.choice(["bilinear", "bicubic"])
    img = Image.fromarray(gray).resize(small, _RESAMPLERS[down])
    out = np.asarray(img.resize((w, h), _RESAMPLERS[up]), dtype=np.float32)
    return np.clip(out, 0.0, 1.0), {"factor": factor, "down": str(down), "up": str(up)}


def _noise(gray: np.ndarray, rng: np.random.Generator, sev: float) -> tuple[np.ndarray, dict[str, Any]]:
    """Film grain (correlated, strongest in the mid-tones) plus white sensor/scan noise."""
    h, w = gray.shape
    grain_amp = float(rng.uniform(0.005, 0.04) * sev)
    grain_size = float(rng.uniform(0.5, 1.3))
    sigma = float(rng.uniform(0.0, 0.035) * sev)
    grain = gaussian_blur(rng.standard_normal((h, w), dtype=np.float32), grain_size)
    grain *= grain_amp / max(float(grain.std()), 1e-6)
    grain *= 0.3 + 2.8 * gray * (1.0 - gray)  # grain shows most in the mid-tones
    out = gray + grain
    if sigma > 0:
        out += sigma * rng.standard_normal((h, w), dtype=np.float32)
    return np.clip(out, 0.0, 1.0), {"grain": grain_amp, "grain_size": grain_size, "sigma": sigma}


# ----------------------------------------------------------------------------- defects


def _bezier(points: np.ndarray, n: int) -> np.ndarray:
    """Points on a cubic Bezier curve through four control points: a smooth random stroke."""
    t = np.linspace(0.0, 1.0, n, dtype=np.float64)[:, None]
    p0, p1, p2, p3 = points
    return (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3


def _scratch(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A long smooth curve; half of them run near-vertically, like scratches on film."""
    diag = math.hypot(h, w)
    start = rng.random(2) * (w, h)
    angle = math.pi / 2 + rng.normal(0.0, 0.12) if rng.random() < 0.5 else rng.uniform(0.0, math.pi)
    length = rng.uniform(0.15, 0.9) * diag
    direction = np.array([math.cos(angle), math.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    along = np.array([0.0, 1 / 3, 2 / 3, 1.0]) * length
    bend = rng.normal(0.0, 0.06 * length, 4)
    bend[0] = 0.0
    ctrl = start + along[:, None] * direction + bend[:, None] * normal
    return _bezier(ctrl, 48)


def _crack(rng: np.random.Generator, h: int, w: int, scale: float) -> list[np.ndarray]:
    """A branching random walk: the emulsion cracks of a bent or dried-out print."""
    paths: list[np.ndarray] = []
    walkers = [(rng.random(2) * (w, h), rng.uniform(0.0, 2 * math.pi))]
    steps = int(rng.integers(20, 70))
    while walkers and len(paths) < 8:
        pos, angle = walkers.pop()
        step_len = rng.uniform(2.0, 5.0, steps) * scale
        angles = angle + np.cumsum(rng.normal(0.0, 0.3, steps))
        deltas = np.stack([np.cos(angles), np.sin(angles)], axis=1) * step_len[:, None]
        path = np.vstack([pos, pos + np.cumsum(deltas, axis=0)])
        paths.append(path)
        for i in np.flatnonzero(rng.random(steps) < 0.04)[:2]:
            walkers.append((path[i + 1], angles[i] + rng.choice([-1.0, 1.0]) * rng.uniform(0.4, 1.2)))
        steps = max(8, steps // 2)
    return paths


def _draw_path(draw: ImageDraw.ImageDraw, path: np.ndarray, width: int, opacity: float) -> None:
    draw.line([tuple(p) for p in path.tolist()], fill=int(round(255 * opacity)), width=width, joint="curve")


def _defects(
    gray: np.ndarray, rng: np.random.Generator, sev: float
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Scratches, cracks, dust and folds drawn as light and dark alpha maps, composited over ``gray``."""
    h, w = gray.shape
    scale = max(1.0, min(h, w) / 256.0)  # stroke sizes follow the image size
    area_scale = h * w / 65536.0
    canvases = {"light": Image.new("L", (w, h), 0), "dark": Image.new("L", (w, h), 0)}
    draws = {k: ImageDraw.Draw(v) for k, v in canvases.items()}

    def polarity(p_light: float) -> str:
        return "light" if rng.random() < p_light else "dark"

    n_scratch = int(rng.integers(1, 2 + round(5 * sev)))
    n_crack = int(rng.integers(0, 1 + round(3 * sev)))
    n_dust = min(3000, int(rng.integers(0, 1 + round(40 * sev * area_scale))))
    n_fold = int(rng.random() < 0.3 * min(1.0, sev))
    for _ in range(n_scratch):
        width = max(1, round(rng.choice([1, 1, 2, 3]) * scale))
        _draw_path(draws[polarity(0.65)], _scratch(rng, h, w), width, rng.uniform(0.3, 1.0))
    for _ in range(n_crack):
        target = draws[polarity(0.5)]
        opacity = rng.uniform(0.4, 1.0)
        for path in _crack(rng, h, w, scale):
            _draw_path(target, path, max(1, round(scale)), opacity)
    if n_dust:
        centres = rng.random((n_dust, 2)) * (w, h)
        radii = rng.uniform(0.4, 2.5, (n_dust, 2)) * scale
        opacities = rng.uniform(0.4, 1.0, n_dust)
        light = rng.random(n_dust) < 0.5
        for (cx, cy), (rx, ry), op, is_light in zip(centres, radii, opacities, light, strict=True):
            draws["light" if is_light else "dark"].ellipse(
                (cx - rx, cy - ry, cx + rx, cy + ry), fill=int(round(255 * op))
            )
    for _ in range(n_fold):  # a crease: a thin light line along a wide faint shadow
        horizontal = rng.random() < 0.5
        a, b = rng.uniform(0.15, 0.85, 2) * (h if horizontal else w)
        ends = [(0.0, a), (w - 1.0, b)] if horizontal else [(a, 0.0), (b, h - 1.0)]
        draws["dark"].line(ends, fill=int(255 * rng.uniform(0.1, 0.25)), width=max(3, round(8 * scale)))
        draws["light"].line(ends, fill=int(255 * rng.uniform(0.5, 0.9)), width=max(1, round(scale)))

    softness = float(rng.uniform(0.4, 0.8) * scale)
    mask = np.zeros((h, w), dtype=bool)
    out = gray
    values = {"light": float(rng.uniform(0.85, 1.0)), "dark": float(rng.uniform(0.0, 0.18))}
    for kind, canvas in canvases.items():
        alpha = np.asarray(canvas, dtype=np.float32) * np.float32(1 / 255.0)
        if not alpha.any():
            continue
        alpha = gaussian_blur(alpha, softness)
        alpha *= 0.5 + 0.5 * _smooth_field(rng, h, w, int(rng.integers(3, 9)))  # strokes fade in and out
        alpha[alpha < MIN_ALPHA] = 0.0
        out = out * (1.0 - alpha) + values[kind] * alpha
        mask |= alpha > 0
    info = {
        "scratches": n_scratch,
        "cracks": n_crack,
        "dust": n_dust,
        "folds": n_fold,
        "softness": softness,
        "light_value": values["light"],
        "dark_value": values["dark"],
    }
    return out.astype(np.float32, copy=False), mask, info


# ----------------------------------------------------------------------------- severe damage


def _polygons(h: int, w: int, rng: np.random.Generator, cfg: DegradeConfig) -> np.ndarray:
    """One or two white tears along the border: each joins two image edges, stays outside the central
    ``central_fraction`` box and covers less than ``max_polygon_fraction`` of the image (paper §4.1)."""
    margin = (1.0 - cfg.central_fraction) / 2.0
    y0, y1 = int(math.ceil(margin * h)), int(math.floor((1 - margin) * h))
    x0, x1 = int(math.ceil(margin * w)), int(math.floor((1 - margin) * w))
    max_pixels = cfg.max_polygon_fraction * h * w
    result = np.zeros((h, w), dtype=bool)
    for _ in range(int(rng.integers(1, 3))):
        for _attempt in range(6):
            points = _corner_tear(rng, h, w, margin) if rng.random() < 0.7 else _edge_strip(rng, h, w, cfg)
            canvas = Image.new("1", (w, h), 0)
            ImageDraw.Draw(canvas).polygon([tuple(p) for p in points.tolist()], fill=1)
            poly = np.asarray(canvas, dtype=bool)
            if 0 < poly.sum() < max_pixels and not poly[y0:y1, x0:x1].any():
                result |= poly
                break
    return result


def _corner_tear(rng: np.random.Generator, h: int, w: int, margin: float) -> np.ndarray:
    """A jagged triangle cut from a corner: between the two edges that meet there."""
    while True:  # legs whose hypotenuse passes outside the central box's corner
        a, b = rng.uniform(0.06, 0.5, 2)
        if margin / a + margin / b >= 1.05 and a * b / 2 < 0.045:
            break
    p_a, p_b = np.array([a * w, 0.0]), np.array([0.0, b * h])
    t = np.sort(rng.random(int(rng.integers(4, 12))))[:, None]
    edge = p_a + t * (p_b - p_a)
    inward = rng.uniform(0.0, 0.25, t.shape) * edge  # jag toward the corner only: never into the centre
    jagged = np.vstack([p_a, edge - inward, p_b, [0.0, 0.0]])
    if rng.random() < 0.5:
        jagged[:, 0] = (w - 1) - jagged[:, 0]
    if rng.random() < 0.5:
        jagged[:, 1] = (h - 1) - jagged[:, 1]
    return jagged


def _edge_strip(rng: np.random.Generator, h: int, w: int, cfg: DegradeConfig) -> np.ndarray:
    """A torn strip along one border, joining the two edges at its ends."""
    horizontal = rng.random() < 0.5
    across, along = (h, w) if horizontal else (w, h)
    n = int(rng.integers(5, 14))
    s = np.linspace(0.0, along - 1.0, n)
    depth = rng.uniform(0.005, 1.6 * cfg.max_polygon_fraction, n) * across
    pts = np.vstack([np.stack([s, depth], axis=1), [[along - 1.0, 0.0], [0.0, 0.0]]])
    if rng.random() < 0.5:
        pts[:, 1] = (across - 1.0) - pts[:, 1]
    return pts if horizontal else pts[:, ::-1].copy()


def _jpeg(gray: np.ndarray, quality: int) -> np.ndarray:
    """Round-trip through an in-memory JPEG at ``quality`` to add block and ringing artefacts."""
    buf = io.BytesIO()
    Image.fromarray(np.round(np.clip(gray, 0.0, 1.0) * 255.0).astype(np.uint8)).save(
        buf, format="JPEG", quality=quality
    )
    buf.seek(0)
    with Image.open(buf) as img:
        return np.asarray(img, dtype=np.float32) * np.float32(1 / 255.0)
