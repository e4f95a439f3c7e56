"""Run a fully convolutional network over an image of any size in overlapping tiles.

Scans are far larger than any device's memory allows a network to see at once, and users want the
original resolution back. Each tile is processed alone and accumulated into one preallocated float32
output, so memory is bounded by the tile size, not by the image.

Why the seams vanish: tile origins are multiples of ``align`` (8 for the restoration net, whose
coarse levels average 8x8 blocks), so a tile sees exactly the down-sampled pixels the whole image
would give it; near a tile edge the network still differs (padding), so each tile's weight is zero
for the outer ``margin`` pixels of every interior edge and rises along a raised-cosine ramp across
the middle of the overlap. Weights are separable and normalised per axis, so together they sum to
exactly one at every pixel and need no second full-size buffer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TileLayout:
    """Tile spans along one axis: ``spans[i] = (start, stop)`` and their blending weights."""

    spans: tuple[tuple[int, int], ...]
    weights: tuple[torch.Tensor, ...]  # float32, one per span, normalised to sum to 1 per pixel


def blend_zones(overlap: int) -> tuple[int, int]:
    """(margin, ramp) for an overlap: a zero-weight margin at each side and a ramp in the middle third."""
    ramp = overlap // 3
    margin = (overlap - ramp) // 2
    return margin, ramp


def plan_spans(length: int, tile: int, overlap: int, align: int = 8) -> tuple[tuple[int, int], ...]:
    """Split ``[0, length)`` into spans of about ``tile`` pixels starting at multiples of ``align``.

    Neighbours overlap by at least ``overlap``; spans are as few as ``tile`` allows and no longer than
    that count needs; the last one ends exactly at ``length`` and may be up to ``align - 1`` pixels
    longer than the others (so it can start on the alignment grid).
    """
    if length <= 0:
        raise ValueError("length must be positive")
    if tile <= 0 or overlap < 0 or align <= 0:
        raise ValueError("tile > 0, overlap >= 0 and align > 0 are required")
    if length <= tile:
        return ((0, length),)
    stride = (tile - overlap) // align * align
    if stride <= 0:
        raise ValueError(f"tile size {tile} leaves no stride after an overlap of {overlap} (align {align})")
    # As few spans as ``tile`` allows, then shrunk to the smallest size that still needs no more of
    # them (a 1155-px side takes two 656-px spans, not two 768-px ones: 43 % less work per axis).
    count = math.ceil((length - tile) / stride) + 1
    size = min(tile, -(-(length + (count - 1) * overlap) // (count * align)) * align)
    while (size - overlap) // align * align * (count - 1) < length - size:
        size += align
    # Spread evenly; flooring to the grid never widens a gap beyond the stride (a multiple of align),
    # so every overlap stays >= ``overlap``.
    tile, stride = size, (size - overlap) // align * align
    starts = sorted({(i * (length - tile) // (count - 1)) // align * align for i in range(count)})
    stops = [s + tile for s in starts[:-1]] + [length]
    return tuple(zip(starts, stops, strict=True))


def _ramp_up(margin: int, ramp: int) -> torch.Tensor:
    t = (torch.arange(ramp, dtype=torch.float64) + 0.5) / ramp
    return torch.cat((torch.zeros(margin, dtype=torch.float64), 0.5 - 0.5 * torch.cos(math.pi * t)))


def layout_axis(length: int, tile: int, overlap: int, align: int = 8) -> TileLayout:
    """Spans plus per-span weights: zero margin and cosine ramp at interior edges, one elsewhere."""
    spans = plan_spans(length, tile, overlap, align)
    margin, ramp = blend_zones(overlap)
    raw = []
    for start, stop in spans:
        w = torch.ones(stop - start, dtype=torch.float64)
        edge = _ramp_up(margin, ramp)[: stop - start] if margin + ramp else None
        if edge is not None and start > 0:
            w[: len(edge)] *= edge
        if edge is not None and stop < length:
            w[len(w) - len(edge) :] *= edge.flip(0)
        raw.append(w)
    total = torch.zeros(length, dtype=torch.float64)
    for (start, stop), w in zip(spans, raw, strict=True):
        total[start:stop] += w
    if bool((total <= 0).any()):
        raise ValueError(f"tiles of {tile} px with overlap {overlap} leave pixels without weight")
    weights = tuple((w / total[start:stop]).float() for (start, stop), w in zip(spans, raw, strict=True))
    return TileLayout(spans, weights)


def tiled_apply(
    fn: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    tile_size: int,
    overlap: int,
    align: int = 8,
    device: torch.device | str | None = None,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Apply a size-preserving fully convolutional ``fn`` to (N,C,H,W) ``image`` tile by tile.

    ``image`` stays where it is (usually CPU memory); each tile is copied to ``device`` (default: the
    image's), optionally passed through ``prepare`` (e.g. a memory-format change), run, weighted and
    added into a float32 output on the image's device. Output channels are whatever ``fn`` returns.
    """
    if image.ndim != 4:
        raise ValueError(f"expected an (N,C,H,W) tensor, got shape {tuple(image.shape)}")
    n, _, height, width = image.shape
    device = torch.device(device) if device is not None else image.device
    rows = layout_axis(height, tile_size, overlap, align)
    cols = layout_axis(width, tile_size, overlap, align)
    out: torch.Tensor | None = None
    for (y0, y1), wy in zip(rows.spans, rows.weights, strict=True):
        wy_dev = wy.to(device)
        for (x0, x1), wx in zip(cols.spans, cols.weights, strict=True):
            tile = image[:, :, y0:y1, x0:x1].to(device, non_blocking=True)
            if prepare is not None:
                tile = prepare(tile)
            result = fn(tile)
            if result.ndim != 4 or result.shape[0] != n or result.shape[-2:] != tile.shape[-2:]:
                raise ValueError(f"fn must keep the batch and spatial size; got {tuple(result.shape)}")
            weighted = result.float() * (wy_dev[:, None] * wx.to(device)[None, :])
            if out is None:
                out = torch.zeros((n, result.shape[1], height, width), dtype=torch.float32, device=image.device)
            out[:, :, y0:y1, x0:x1] += weighted.to(image.device)
            del tile, result, weighted
    assert out is not None
    return out
