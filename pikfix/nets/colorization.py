"""Colorization sub-net: a DenseNet U-Net fed with warped reference histograms (paper section 3.3).

Encoder: a DenseNet-121-like stem (7x7 stride-2 conv, max-pool) and dense blocks at strides 4, 8, 16,
32 with transitions between. After each block, that scale's warped SPHist and confidence map are
concatenated and a fusion module (a dense block + 3x3 conv back to the block width) folds the
reference's colours into the features. The decoder mirrors the encoder with bilinear up-sampling,
skip connections and dense blocks, and ends in a conv to ab with tanh (ab in [-1, 1]).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pikfix.nets.sphist import resize


def _bn_relu_conv(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.BatchNorm2d(cin),
        nn.ReLU(inplace=True),
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
    )


class DenseLayer(nn.Module):
    """DenseNet-B unit: BN-ReLU-1x1 conv (bn_size * growth) then BN-ReLU-3x3 conv (growth)."""

    def __init__(self, cin: int, growth: int, bn_size: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _bn_relu_conv(cin, bn_size * growth, 1), _bn_relu_conv(bn_size * growth, growth, 3)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class DenseBlock(nn.Module):
    def __init__(self, cin: int, units: int, growth: int, bn_size: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(cin + i * growth, growth, bn_size) for i in range(units))
        self.out_channels = cin + units * growth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1)))
        return torch.cat(features, dim=1)


class Transition(nn.Sequential):
    """BN-ReLU-1x1 conv halving the channels, then 2x2 average pooling (DenseNet)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(_bn_relu_conv(cin, cout, 1), nn.AvgPool2d(2))


class HistogramFusion(nn.Module):
    """Folds a scale's warped SPHist + confidence into encoder features of width ``width``.

    The dense block sees features and guidance together; the 3x3 conv maps only the block's new
    (fusion_units x growth) channels back to the block width and adds them to the features. The
    residual keeps the encoder working when the guidance is weak (a poor reference), and convolving
    only the new channels keeps this conv small: over the full concatenation it would cost
    (width + 2K + 1 + units x growth) x width x 9 weights, ~12M at the paper's 1024-wide blocks.
    """

    def __init__(self, width: int, guide_channels: int, units: int, growth: int, bn_size: int) -> None:
        super().__init__()
        self.dense = DenseBlock(width + guide_channels, units, growth, bn_size)
        self.new_channels = units * growth
        self.out = _bn_relu_conv(self.new_channels, width, 3)

    def forward(self, features: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        fused = self.dense(torch.cat((features, guide), dim=1))
        return features + self.out(fused[:, -self.new_channels :])


class DecoderStage(nn.Module):
    """Up-sample, concatenate the skip, compress, dense block, compress back to ``width``."""

    def __init__(self, cin: int, skip: int, width: int, units: int, growth: int, bn_size: int) -> None:
        super().__init__()
        self.enter = _bn_relu_conv(cin + skip, width, 1)
        self.dense = DenseBlock(width, units, growth, bn_size)
        self.leave = _bn_relu_conv(self.dense.out_channels, width, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.leave(self.dense(self.enter(torch.cat((x, skip), dim=1))))


class ColorizationNet(nn.Module):
    """(N,1,h,w) restored luminance + per-scale guidance -> (N,2,h,w) ab in [-1, 1]."""

    align = 32
    min_size = 64  # layer4 of the similarity backbone needs at least 2x2 positions

    def __init__(
        self,
        guide_channels: int,
        growth: int = 32,
        bn_size: int = 4,
        init_features: int = 64,
        units: tuple[int, ...] = (6, 12, 24, 16),
        fusion_units: int = 6,
        decoder_units: tuple[int, ...] = (24, 12, 6),
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, init_features, kernel_size=7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(init_features),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.blocks = nn.ModuleList()
        self.transitions = nn.ModuleList()
        self.fusions = nn.ModuleList()
        widths: list[int] = []
        channels = init_features
        for index, count in enumerate(units):
            block = DenseBlock(channels, count, growth, bn_size)
            self.blocks.append(block)
            channels = block.out_channels
            widths.append(channels)
            self.fusions.append(HistogramFusion(channels, guide_channels, fusion_units, growth, bn_size))
            if index < len(units) - 1:
                self.transitions.append(Transition(channels, channels // 2))
                channels //= 2
        self.encoder_widths = tuple(widths)

        self.decoder = nn.ModuleList()
        for skip, count in zip(reversed(widths[:-1]), decoder_units, strict=True):
            self.decoder.append(DecoderStage(channels, skip, skip // 2, count, growth, bn_size))
            channels = skip // 2
        self.to_half = _bn_relu_conv(channels + init_features, init_features, 3)
        self.head = nn.Sequential(
            nn.Conv2d(init_features + 1, init_features // 2, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(init_features // 2, 2, 3, padding=1),
            nn.Tanh(),
        )

    @classmethod
    def padding_for(cls, height: int, width: int) -> tuple[int, int]:
        """Bottom/right padding that makes (height, width) a multiple of 32, at least 64."""

        def pad(n: int) -> int:
            return max(cls.min_size, n + -n % cls.align) - n

        return pad(height), pad(width)

    def forward(self, luminance01: torch.Tensor, guides: list[torch.Tensor]) -> torch.Tensor:
        """``guides[i]`` is the (N, 2K+1, h_i, w_i) warped SPHist + confidence for encoder block i.

        Inputs not a multiple of 32 are padded here; guides computed on the padded image (as
        ``PikFix.colorize`` does) align exactly, others are resized to the block's grid.
        """
        height, width = luminance01.shape[-2:]
        pad_h, pad_w = self.padding_for(height, width)
        x_in = luminance01
        if pad_h or pad_w:
            mode = "reflect" if pad_h < height and pad_w < width else "replicate"
            x_in = F.pad(luminance01, (0, pad_w, 0, pad_h), mode=mode)
        stem = self.stem(x_in)
        x = self.pool(stem)
        skips = []
        for index, (block, fusion) in enumerate(zip(self.blocks, self.fusions, strict=True)):
            x = block(x)
            x = fusion(x, resize(guides[index], (x.shape[-2], x.shape[-1])).to(x.dtype))
            skips.append(x)
            if index < len(self.transitions):
                x = self.transitions[index](x)
        for stage, skip in zip(self.decoder, reversed(skips[:-1]), strict=True):
            x = stage(x, skip)
        x = F.interpolate(x, size=stem.shape[-2:], mode="bilinear", align_corners=False)
        x = self.to_half(torch.cat((x, stem), dim=1))
        x = F.interpolate(x, size=x_in.shape[-2:], mode="bilinear", align_corners=False)
        ab = self.head(torch.cat((x, x_in), dim=1))
        return ab[:, :, :height, :width]
