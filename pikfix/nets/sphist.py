"""SPHist: soft spatial colour histograms and their warping by similarity maps (paper section 3.3).

Each chroma value D (a or b, in model space [-1, 1]) is softly assigned to K bins,
h_k = exp(-(D - u_k)^2 / 2 sigma^2) / sum_k' exp(-(D - u_k')^2 / 2 sigma^2)  (eq. 3),
with learnable centres u_k. Eq. (4) places the initial centres at the left bin edges
v_min + k (v_max - v_min)/K; we shift them by half a bin to the bin midpoints so the set is symmetric
about 0 and neutral grey (ab = 0) is not biased towards one side.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class SimilarityMap:
    """Row-stochastic correspondence from input positions to reference positions at one scale.

    ``weights`` is (N, P_in, P_ref) on the capped correlation grids ``grid`` (input) and ``ref_grid``
    (reference), each row summing to 1; ``size`` is the scale's full feature grid the warped result
    is up-sampled to; ``confidence`` (N,1,*size) is the best cosine correlation of each input position.
    """

    weights: torch.Tensor
    grid: tuple[int, int]
    ref_grid: tuple[int, int]
    size: tuple[int, int]
    confidence: torch.Tensor


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Area averaging when shrinking (keeps histograms normalised, no aliasing), bilinear otherwise."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    if size[0] <= x.shape[-2] and size[1] <= x.shape[-1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


_STRIP_ELEMENTS = 1 << 20  # floats per histogram strip in inference (4 MB)
_LOGIT_FLOOR = -80.0  # exp(-80) = 1.8e-35, still a normal float32
_REACH = 9.0  # sigmas: the best logit is >= -40.5, so a floored bin's weight is <= exp(-39.5) = 7e-18
# Weights below this are set to zero, in the histograms here and in the similarity softmax. Bins far
# from a pixel's value and poor matches get weights down to the subnormal range (< 1.2e-38), which x86
# handles in microcode: the warp's matrix product ran 5-70x slower on them. Its products pair a
# histogram weight (area-averaged over up to ~1000 pixels) with a similarity weight, so both must stay
# well above 1e-19 for every product to stay normal. A weight of 1e-15 next to a sum of 1 is eight
# orders of magnitude below float32's resolution: no output changes.
NEGLIGIBLE_WEIGHT = 1e-15


def _pool_columns(x: torch.Tensor, columns: int) -> torch.Tensor:
    """(N,C,r,W) -> (N,C,r,columns) averaged over adaptive_avg_pool2d's column bins: a reduction over
    contiguous groups when ``columns`` divides W (the common case), the pooling kernel otherwise."""
    n, c, r, w = x.shape
    if w % columns == 0:
        return x.view(n, c, r, columns, w // columns).mean(dim=4)
    return F.adaptive_avg_pool2d(x, (r, columns))


def _pooling_rows(size: int, grid: int, like: torch.Tensor) -> torch.Tensor:
    """(grid, size) matrix averaging input rows into output rows exactly as adaptive_avg_pool2d does
    (row i covers [floor(i * size / grid), ceil((i + 1) * size / grid)))."""
    weights = torch.zeros((grid, size), dtype=like.dtype)
    for i in range(grid):
        start, stop = (i * size) // grid, -(-((i + 1) * size) // grid)
        weights[i, start:stop] = 1.0 / (stop - start)
    return weights.to(like.device)


class SPHist(nn.Module):
    def __init__(self, bins: int, sigma: float, v_min: float = -1.0, v_max: float = 1.0) -> None:
        super().__init__()
        step = (v_max - v_min) / bins
        self.bins = bins
        self.sigma = float(sigma)
        self.centers = nn.Parameter(v_min + step * (torch.arange(bins, dtype=torch.float32) + 0.5))

    def spatial_histogram(self, ab: torch.Tensor) -> torch.Tensor:
        """(N,2,H,W) chroma -> (N,2K,H,W): channels [a bins..., b bins...], each group summing to 1.

        Weights below ``NEGLIGIBLE_WEIGHT`` are set to zero. Without autograd the histogram is built
        in row strips written into the preallocated result: the one-shot expression holds four
        temporaries of the result's size (2K floats a pixel, 134 MB each for the paper's K = 64 at
        512^2), the strips a few MB.
        """
        n, c, h, w = ab.shape
        if not torch.is_grad_enabled():
            ab = ab.contiguous()  # channels-last input would make every strip a transposing copy
            floor = self._logit_floor(ab)
            out = ab.new_empty((n, c * self.bins, h, w))
            for y0, y1 in self._strips(ab):
                out[:, :, y0:y1] = self._histogram_strip(ab[:, :, y0:y1], floor)
            return out
        centers = self.centers.to(ab.dtype).view(1, 1, self.bins, 1, 1)
        logits = -((ab.unsqueeze(2) - centers) ** 2) / (2.0 * self.sigma**2)
        hist = F.threshold(torch.softmax(logits, dim=2), NEGLIGIBLE_WEIGHT, 0.0)
        return hist.reshape(n, c * self.bins, h, w)

    def pooled_histograms(
        self, ab: torch.Tensor, grids: Iterable[tuple[int, int]]
    ) -> dict[tuple[int, int], torch.Tensor]:
        """``{grid: resize(self.spatial_histogram(ab), grid)}``: the histogram area-averaged onto each
        grid, as the warps consume it.

        Without autograd, when every grid shrinks the image, the full-size histogram is never built:
        each strip of rows is histogrammed, averaged over each grid's column bins and added into the
        grid's rows with adaptive average pooling's row weights. That saves writing and re-reading
        2K floats a pixel (134 MB for the paper at 512^2, page faults included) once per grid.
        """
        n, c, h, w = ab.shape
        unique = list(dict.fromkeys((int(gh), int(gw)) for gh, gw in grids))
        if torch.is_grad_enabled() or any(gh > h or gw > w for gh, gw in unique):
            hist = self.spatial_histogram(ab)
            return {grid: resize(hist, grid) for grid in unique}
        ab = ab.contiguous()
        floor = self._logit_floor(ab)
        row_weights = {grid: _pooling_rows(h, grid[0], ab) for grid in unique}
        pooled = {grid: ab.new_zeros((n, c * self.bins, *grid)) for grid in unique}
        for y0, y1 in self._strips(ab):
            strip = self._histogram_strip(ab[:, :, y0:y1], floor)
            for grid in unique:
                pooled[grid].add_(torch.matmul(row_weights[grid][:, y0:y1], _pool_columns(strip, grid[1])))
        return pooled

    def _strips(self, ab: torch.Tensor) -> list[tuple[int, int]]:
        n, c, h, w = ab.shape
        rows = max(1, _STRIP_ELEMENTS // max(1, n * c * self.bins * w))
        return [(y0, min(h, y0 + rows)) for y0 in range(0, h, rows)]

    def _histogram_strip(self, ab: torch.Tensor, floor: float | None) -> torch.Tensor:
        """Inference: (N,C,r,W) contiguous chroma rows -> (N,C*K,r,W), computed in place."""
        centers = self.centers.to(ab.dtype).view(1, 1, self.bins, 1, 1)
        logits = ab.unsqueeze(2) - centers
        logits.square_().div_(-2.0 * self.sigma**2)  # == -(d^2) / (2 sigma^2), bit for bit
        if floor is not None:
            logits.clamp_(min=floor)
        strip = F.threshold_(torch.softmax(logits, dim=2), NEGLIGIBLE_WEIGHT, 0.0)
        return strip.flatten(1, 2)

    def _logit_floor(self, ab: torch.Tensor) -> float | None:
        """``_LOGIT_FLOOR`` when clamping the logits there cannot change the thresholded histogram.

        Far bins' logits -(d - u)^2 / 2 sigma^2 reach the thousands; exp() of anything under -87
        underflows into float32's subnormal range, which x86 handles in microcode (the histogram's
        softmax ran ~5x slower). A bin clamped to the floor gets weight exp(floor - best logit);
        when every value lies within ``_REACH`` sigmas of a centre the best logit is at least
        -_REACH^2 / 2, so that weight stays under NEGLIGIBLE_WEIGHT and is zeroed either way.
        """
        if ab.numel() == 0:
            return None
        centers = self.centers.detach().float().sort().values
        reach = _REACH * self.sigma
        if centers.numel() > 1 and float(centers.diff().max()) > 2 * reach:
            return None
        low, high = (float(v) for v in ab.detach().aminmax())
        if not (low >= float(centers[0]) - reach and high <= float(centers[-1]) + reach):
            return None
        return _LOGIT_FLOOR

    def global_histogram(self, ab: torch.Tensor) -> torch.Tensor:
        """(N,2,H,W) chroma -> (N,2,K) normalised 1-D histograms of a and b (for the EMD loss)."""
        n, c = ab.shape[:2]
        return self.spatial_histogram(ab).mean(dim=(2, 3)).view(n, c, self.bins)

    @staticmethod
    def warp(hist: torch.Tensor, similarity: SimilarityMap) -> torch.Tensor:
        """Move the reference's local colour distributions to the input's layout.

        ``hist`` (N,2K,H_ref,W_ref) is area-averaged onto the reference correlation grid, mixed by the
        similarity rows and up-sampled to the scale's feature grid: (N,2K,*similarity.size). Rows sum
        to 1 and resizing is convex, so every output pixel is still a normalised histogram.
        """
        n, channels = hist.shape[:2]
        pooled = resize(hist, similarity.ref_grid).flatten(2)  # (N, 2K, P_ref)
        warped = torch.bmm(pooled.to(similarity.weights.dtype), similarity.weights.transpose(1, 2))
        return resize(warped.view(n, channels, *similarity.grid), similarity.size)
