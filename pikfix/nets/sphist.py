"""SPHist: soft spatial colour histograms and their warping by similarity maps (paper section 3.3).

Each chroma value D (a or b, in model space [-1, 1]) is softly assigned to K bins,
h_k = exp(-(D - u_k)^2 / 2 sigma^2) / sum_k' exp(-(D - u_k')^2 / 2 sigma^2)  (eq. 3),
with learnable centres u_k. Eq. (4) places the initial centres at the left bin edges
v_min + k (v_max - v_min)/K; we shift them by half a bin to the bin midpoints so the set is symmetric
about 0 and neutral grey (ab = 0) is not biased towards one side.
"""

from __future__ import annotations

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


class SPHist(nn.Module):
    def __init__(self, bins: int, sigma: float, v_min: float = -1.0, v_max: float = 1.0) -> None:
        super().__init__()
        step = (v_max - v_min) / bins
        self.bins = bins
        self.sigma = float(sigma)
        self.centers = nn.Parameter(v_min + step * (torch.arange(bins, dtype=torch.float32) + 0.5))

    def spatial_histogram(self, ab: torch.Tensor) -> torch.Tensor:
        """(N,2,H,W) chroma -> (N,2K,H,W): channels [a bins..., b bins...], each group summing to 1."""
        n, c, h, w = ab.shape
        centers = self.centers.to(ab.dtype).view(1, 1, self.bins, 1, 1)
        logits = -((ab.unsqueeze(2) - centers) ** 2) / (2.0 * self.sigma**2)
        return torch.softmax(logits, dim=2).reshape(n, c * self.bins, h, w)

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
