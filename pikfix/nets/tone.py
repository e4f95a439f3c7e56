"""Global tone: a monotone curve per photo, predicted from summary statistics of its luminance.

Old prints fade, yellow and lose contrast as a whole, which a local network (the RDN sees a tile at a
time) cannot measure; this small head, one linear layer on 11 luminance statistics, estimates the
curve. It is our deviation from the paper: docs/model.md section 4 has what it measured, and "Notes on
the code" why these features and how the curve is parametrised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_END_LIMIT = 0.25  # black point lift and white point drop are at most this
_END_BIAS = -8.0  # sigmoid(-8) ~ 3e-4: the ends start where the identity has them
SAMPLE_PIXELS = 1 << 16  # the statistics are taken from about this many evenly spaced pixels
QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
FEATURES = len(QUANTILES) + 2


def luminance_statistics(lum01: torch.Tensor) -> torch.Tensor:
    """(N,1,H,W) luminance in [0, 1] -> (N, 11): its quantiles, mean and standard deviation."""
    n, _, h, w = lum01.shape
    step = max(1, int((h * w / SAMPLE_PIXELS) ** 0.5))
    flat = lum01[:, 0, ::step, ::step].reshape(n, -1).clamp(0.0, 1.0).float()
    q = torch.quantile(flat, torch.tensor(QUANTILES, device=flat.device), dim=1).T
    return torch.cat((q, flat.mean(1, keepdim=True), flat.std(1, keepdim=True)), dim=1)


def apply_curve(lum01: torch.Tensor, curve: torch.Tensor) -> torch.Tensor:
    """Map (N,1,H,W) luminance through (N, K+1) knot values by linear interpolation."""
    knots = curve.shape[1] - 1
    x = lum01.clamp(0.0, 1.0) * knots
    lo = x.floor().clamp_(max=knots - 1)
    frac = x - lo
    flat = curve[:, None, :].expand(-1, lum01.shape[1], -1)
    left = torch.gather(flat, 2, lo.long().flatten(2)).view_as(x)
    right = torch.gather(flat, 2, lo.long().flatten(2) + 1).view_as(x)
    return left + (right - left) * frac


class GlobalTone(nn.Module):
    def __init__(self, knots: int = 16) -> None:
        super().__init__()
        self.linear = nn.Linear(FEATURES, knots + 2)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        with torch.no_grad():
            self.linear.bias[:2] = _END_BIAS

    def forward(self, lum01: torch.Tensor) -> torch.Tensor:
        """(N,1,H,W) luminance (any size; a thumbnail will do) -> (N, knots + 1) curve."""
        return self.curve(luminance_statistics(lum01))

    def curve(self, features: torch.Tensor) -> torch.Tensor:
        """The curve from precomputed ``luminance_statistics`` features."""
        out = self.linear(features)
        lo = _END_LIMIT * torch.sigmoid(out[:, :1])
        hi = _END_LIMIT * torch.sigmoid(out[:, 1:2])
        rise = F.softmax(out[:, 2:], dim=1).cumsum(1)
        return torch.cat((lo, lo + (1.0 - lo - hi) * rise), dim=1)
