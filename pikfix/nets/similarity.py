"""Similarity sub-net: multi-scale correspondence between input and reference (paper section 3.2).

ResNet34 layer1..4 features of both luminances are projected to a common width C, fused across scales
with a learnable 4x4 matrix A (eq. 1: M_i = W * [g(A_i1 f_1) + ... + g(A_i4 f_4)], + = concatenation,
g = resize to scale i, W a conv shared by all scales), and compared by cosine correlation of
mean-centred features, softmaxed over reference positions with a temperature.

Cost is bounded: correlation is quadratic in positions, so each scale is compared on a grid of at most
``corr_max_positions`` positions (maps are area-averaged down first); the warp up-samples the result.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pikfix.backbones import RESNET34_WIDTHS, ResNet34Features, gray_to_rgb
from pikfix.nets.sphist import NEGLIGIBLE_WEIGHT, SimilarityMap, resize

_LOGIT_RANGE = 40.0  # exp(-40) = 4e-18, below NEGLIGIBLE_WEIGHT


def _projection(cin: int, cout: int) -> nn.Sequential:
    """(reflection pad + 3x3 conv + InstanceNorm + PReLU) twice, as in the authors' code."""
    layers: list[nn.Module] = []
    for c in (cin, cout):
        layers += [
            nn.ReflectionPad2d(1),
            nn.Conv2d(c, cout, 3),
            nn.InstanceNorm2d(cout, affine=True),
            nn.PReLU(),
        ]
    return nn.Sequential(*layers)


def capped_grid(size: tuple[int, int], max_positions: int) -> tuple[int, int]:
    """The largest grid with the same aspect ratio as ``size`` and at most ``max_positions`` cells."""
    h, w = size
    if h * w <= max_positions:
        return h, w
    scale = math.sqrt(max_positions / (h * w))
    return max(1, min(h, math.floor(h * scale))), max(1, min(w, math.floor(w * scale)))


def correlate(
    features: torch.Tensor, ref_features: torch.Tensor, temperature: float, max_positions: int
) -> SimilarityMap:
    """Softmaxed cosine correlation of two (N,C,h,w) maps on capped grids."""
    size = (features.shape[-2], features.shape[-1])
    grid = capped_grid(size, max_positions)
    ref_grid = capped_grid((ref_features.shape[-2], ref_features.shape[-1]), max_positions)

    def normalised(x: torch.Tensor, g: tuple[int, int]) -> torch.Tensor:
        flat = resize(x, g).flatten(2).transpose(1, 2).float()  # (N, P, C)
        flat = flat - flat.mean(dim=1, keepdim=True)
        return F.normalize(flat, dim=2, eps=1e-6)

    # fp32 even under autocast: the temperature (0.005) would amplify fp16/bf16 rounding of the cosine.
    with torch.autocast(device_type=features.device.type, enabled=False):
        cosine = torch.bmm(normalised(features, grid), normalised(ref_features, ref_grid).transpose(1, 2))
        best = cosine.amax(dim=2, keepdim=True)
        confidence = best.view(-1, 1, *grid)
        if torch.is_grad_enabled():
            weights = torch.softmax(cosine / temperature, dim=2)
        else:
            # All in place: (P x P_ref) floats, 67 MB at the paper's cap. Logits more than _LOGIT_RANGE
            # below their row's maximum (amax(cosine / t) == amax(cosine) / t exactly) would give
            # weights under NEGLIGIBLE_WEIGHT, zeroed below anyway; raising them to that floor
            # spares exp() its slow underflow path (softmax was 3-4x slower without it).
            logits = cosine.div_(temperature)
            row_max = best / temperature
            torch.maximum(logits, row_max - _LOGIT_RANGE, out=logits)
            weights = logits.sub_(row_max).exp_()  # softmax, in place: exp(x - max) / sum
            weights.div_(weights.sum(dim=2, keepdim=True))
        del cosine
        # The sharp softmax leaves about a quarter of the weights subnormal, which made the warp's
        # matrix product ~70x slower on x86; see NEGLIGIBLE_WEIGHT.
        weights = F.threshold(weights, NEGLIGIBLE_WEIGHT, 0.0, inplace=not torch.is_grad_enabled())
    return SimilarityMap(weights, grid, ref_grid, size, resize(confidence, size))


class SimilarityNet(nn.Module):
    def __init__(
        self,
        backbone_widths: tuple[int, ...] = RESNET34_WIDTHS,
        width: int = 64,
        temperature: float = 0.005,
        max_positions: int = 64 * 64,
        backbone_weights: str | None = None,
        freeze_backbone: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = ResNet34Features(backbone_weights, widths=tuple(backbone_widths))
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            self.backbone.requires_grad_(False)
            self.backbone.eval()
        self.projections = nn.ModuleList(_projection(c, width) for c in backbone_widths)
        # Row i weights each projected scale j for target scale i; identity = no cross-scale mixing yet.
        self.scale_mix = nn.Parameter(torch.eye(len(backbone_widths)))
        self.fuse = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(len(backbone_widths) * width, width, 3))
        self.temperature = temperature
        self.max_positions = max_positions

    def train(self, mode: bool = True) -> SimilarityNet:
        super().train(mode)
        if self.freeze_backbone:  # a frozen ImageNet backbone keeps its BatchNorm statistics
            self.backbone.eval()
        return self

    def features(self, luminance01: torch.Tensor) -> list[torch.Tensor]:
        """Fused per-scale features M_1..M_4 (N,C,h_i,w_i) of a luminance image in [0, 1]."""
        projected = [
            p(f) for p, f in zip(self.projections, self.backbone(gray_to_rgb(luminance01)), strict=True)
        ]
        fused = []
        for i, target in enumerate(projected):
            size = (target.shape[-2], target.shape[-1])
            mixed = [self.scale_mix[i, j] * resize(f, size) for j, f in enumerate(projected)]
            fused.append(self.fuse(torch.cat(mixed, dim=1)))
        return fused

    def forward(self, luminance01: torch.Tensor, ref_luminance01: torch.Tensor) -> list[SimilarityMap]:
        """One similarity map per scale (strides 4, 8, 16, 32 of the input)."""
        ours, theirs = self.features(luminance01), self.features(ref_luminance01)
        return [
            correlate(m, r, self.temperature, self.max_positions) for m, r in zip(ours, theirs, strict=True)
        ]
