"""Pik-Fix: restoration, similarity, SPHist and colorization wired together (paper section 3).

``forward`` is the training graph on crops; ``restore`` and ``colorize`` are the two halves the
inference code calls separately (restoration tiled at full resolution, colourization at a working
resolution). All images are (N,C,H,W) float tensors: luminance as L/100 in [0, 1], chroma as ab/110.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pikfix.color import model_space_to_rgb, rgb_to_model_space
from pikfix.config import PikFixConfig
from pikfix.nets import ColorizationNet, GlobalTone, MultiLevelRDN, SimilarityMap, SimilarityNet, SPHist
from pikfix.nets.sphist import resize


@dataclass
class ColorizationOutput:
    """``ab`` (N,2,h,w) in [-1, 1]; per scale (strides 4..32 of the input padded to a multiple of 32):
    the similarity maps, confidence maps (N,1,h_i,w_i) and warped histograms (N,2K,h_i,w_i)."""

    ab: torch.Tensor
    similarity: list[SimilarityMap]
    confidence: list[torch.Tensor]
    warped_histograms: list[torch.Tensor]


@dataclass
class PikFixOutput:
    """``restored`` L/100, ``ab`` ab/110, ``rgb`` in [0, 1]; (N,2,K) histograms for the EMD loss."""

    restored: torch.Tensor
    ab: torch.Tensor
    rgb: torch.Tensor
    output_histogram: torch.Tensor
    reference_histogram: torch.Tensor
    colorization: ColorizationOutput


def _pad(x: torch.Tensor, pad_h: int, pad_w: int) -> torch.Tensor:
    if not (pad_h or pad_w):
        return x
    mode = "reflect" if pad_h < x.shape[-2] and pad_w < x.shape[-1] else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


class PikFix(nn.Module):
    def __init__(self, config: PikFixConfig | None = None, backbone_weights: str | None = None) -> None:
        super().__init__()
        self.config = config = config or PikFixConfig.lite()
        self.restoration = MultiLevelRDN(
            config.rdn_width, config.rdn_growth, config.rdn_blocks, config.rdn_units, config.rdn_levels
        )
        self.similarity = SimilarityNet(
            config.sim_backbone_widths,
            config.sim_width,
            config.sim_temperature,
            config.corr_max_positions,
            backbone_weights=backbone_weights,
            freeze_backbone=config.sim_backbone_frozen,
        )
        self.sphist = SPHist(config.hist_bins, config.hist_sigma)
        self.colorization = ColorizationNet(
            guide_channels=2 * config.hist_bins + 1,
            growth=config.col_growth,
            bn_size=config.col_bn_size,
            init_features=config.col_init_features,
            units=config.col_units,
            fusion_units=config.col_fusion_units,
            decoder_units=config.col_decoder_units,
        )
        # Fitted after the rest on whole photos (``pikfix fit-tone``): a tile cannot see global tone.
        self.tone = GlobalTone(config.tone_knots) if config.tone_knots else None

    @property
    def tile_overlap(self) -> int:
        """Pixels of overlap restoration tiles need for seamless blending (a multiple of 8)."""
        return self.restoration.tile_overlap

    def restore(self, gray01: torch.Tensor) -> torch.Tensor:
        """(N,1,H,W) grey in [0, 1] -> restored L/100, same size. Clamped to [0, 1] in eval mode only,
        so training keeps a gradient for pixels the network overshoots."""
        restored = self.restoration(gray01)
        return restored if self.training else restored.clamp(0.0, 1.0)

    def _prepare_reference(
        self, ref_l: torch.Tensor, ref_ab: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Bring the reference into the range the sub-nets handle: at least 64 px on its short side
        (the backbone's stride 32), at most about (2 x working size)^2 pixels (bounded histogram memory)."""
        h, w = ref_l.shape[-2:]
        scale = 1.0
        if min(h, w) < ColorizationNet.min_size:
            scale = ColorizationNet.min_size / min(h, w)
        elif h * w > (2 * self.config.working_size) ** 2:
            scale = 2 * self.config.working_size / math.sqrt(h * w)
        if scale == 1.0:
            return ref_l, ref_ab
        size = (
            max(ColorizationNet.min_size, round(h * scale)),
            max(ColorizationNet.min_size, round(w * scale)),
        )
        return resize(ref_l, size), resize(ref_ab, size)

    def colorize(
        self, luminance01: torch.Tensor, ref_luminance01: torch.Tensor, ref_ab: torch.Tensor
    ) -> ColorizationOutput:
        """Predict ab for (N,1,h,w) luminance from a colour reference (N,1,H',W') + (N,2,H',W')."""
        height, width = luminance01.shape[-2:]
        lum = _pad(luminance01, *ColorizationNet.padding_for(height, width))
        ref_l, ref_ab = self._prepare_reference(ref_luminance01, ref_ab)
        similarity = self.similarity(lum, ref_l)
        # Each scale's warp area-averages the reference histogram onto its reference grid (a no-op
        # resize when given it pooled already); scales sharing a grid share the pooled copy.
        pooled = self.sphist.pooled_histograms(ref_ab, [s.ref_grid for s in similarity])
        warped = [self.sphist.warp(pooled[s.ref_grid], s) for s in similarity]
        del pooled
        confidence = [s.confidence for s in similarity]
        guides = [torch.cat((h, c), dim=1) for h, c in zip(warped, confidence, strict=True)]
        ab = self.colorization(lum, guides)[:, :, :height, :width]
        return ColorizationOutput(ab, similarity, confidence, warped)

    def forward(self, gray01: torch.Tensor, ref_rgb01: torch.Tensor) -> PikFixOutput:
        """The full training graph on a grey crop (N,1,H,W) and a colour reference (N,3,H',W').

        The colorization sub-net sees the restored luminance through a stop-gradient: the chroma,
        histogram and adversarial losses train colorization and similarity only, and the restoration
        sub-net is supervised by its own luminance losses. Without it, CPU training of ``lite`` saw the
        chroma-side gradients pull the restored luminance off the ground truth (L1 0.07 -> 0.5 within
        200 steps), wrecking both outputs.
        """
        restored = self.restore(gray01)
        ref_l, ref_ab = rgb_to_model_space(ref_rgb01)
        colorization = self.colorize(restored.detach(), ref_l, ref_ab)
        ab = colorization.ab
        return PikFixOutput(
            restored=restored,
            ab=ab,
            rgb=model_space_to_rgb(restored, ab),
            output_histogram=self.sphist.global_histogram(ab),
            reference_histogram=self.sphist.global_histogram(ref_ab),
            colorization=colorization,
        )

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
