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

from pikfix.nets.fastpath import (
    bn_affine,
    bn_relu,
    bn_relu_conv,
    channel_buffer,
    concat_channels,
    conv,
    inference_path,
)
from pikfix.nets.sphist import resize

_BAND_PIXELS = 1 << 16  # pixels per band of the full-resolution head in inference


def upsample_rows(x: torch.Tensor, start: int, stop: int, size: tuple[int, int]) -> torch.Tensor:
    """Rows [start, stop) of ``F.interpolate(x, size, mode="bilinear", align_corners=False)``,
    up-sampling only a band of ``x`` (with one spare source row per side, since the band's own edge
    rows would be clamped) when the height doubles exactly; the whole map otherwise."""
    if size[0] != 2 * x.shape[-2]:
        up = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return up[:, :, start:stop]
    first, last = max(0, start // 2 - 1), min(x.shape[-2], (stop + 1) // 2 + 1)
    band = x[:, :, first:last]
    up = F.interpolate(band, size=(2 * (last - first), size[1]), mode="bilinear", align_corners=False)
    return up[:, :, start - 2 * first : stop - 2 * first]


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
        if inference_path(self):
            return self._infer(x)
        return self.body(x)

    def _infer(self, x: torch.Tensor) -> torch.Tensor:
        """The same function with the second BN folded into the 1x1 conv (one pass less over the
        bottleneck) and without touching ``x``, which is a slice of the block's shared buffer."""
        (bn1, _, conv1), (bn2, _, conv2) = self.body
        y = bn_relu(bn1, x)
        affine = bn_affine(bn2, y.dtype)
        if affine is None:
            return conv(conv2, bn_relu(bn2, conv(conv1, y)))
        scale, shift = affine
        y = conv(conv1, y, conv1.weight * scale.view(-1, 1, 1, 1), shift.flatten()).relu_()
        return conv(conv2, y)


class DenseBlock(nn.Module):
    """``units`` dense layers, each seeing the concatenation of the input and all earlier outputs.

    ``forward(*parts)`` takes the input as channel groups to concatenate. Training concatenates
    afresh for every layer (autograd keeps each layer's input). Inference writes the parts and each
    layer's output into one preallocated buffer and hands every layer a prefix slice of it: no
    re-concatenation (quadratic in the unit count) and one buffer instead of a copy per layer.
    """

    def __init__(self, cin: int, units: int, growth: int, bn_size: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(cin + i * growth, growth, bn_size) for i in range(units))
        self.out_channels = cin + units * growth
        self.growth = growth

    def forward(self, *parts: torch.Tensor) -> torch.Tensor:
        if inference_path(self):
            return self._infer(parts)
        features = [parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1)))
        return torch.cat(features, dim=1)

    def _infer(self, parts: tuple[torch.Tensor, ...]) -> torch.Tensor:
        buffer = channel_buffer(parts[0], self.out_channels)
        channels = 0
        for part in parts:
            buffer[:, channels : channels + part.shape[1]].copy_(part)
            channels += part.shape[1]
        for layer in self.layers:
            buffer[:, channels : channels + self.growth].copy_(layer(buffer[:, :channels]))
            channels += self.growth
        return buffer


class Transition(nn.Sequential):
    """BN-ReLU-1x1 conv halving the channels, then 2x2 average pooling (DenseNet)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(_bn_relu_conv(cin, cout, 1), nn.AvgPool2d(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if inference_path(self):
            return self[1](bn_relu_conv(self[0], x))
        return super().forward(x)


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
        if inference_path(self):
            fused = self.dense(features, guide)  # a buffer of its own: BN may overwrite it
            return bn_relu_conv(self.out, fused[:, -self.new_channels :], inplace=True).add_(features)
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
        if inference_path(self):
            x = bn_relu_conv(self.enter, concat_channels(x, skip), inplace=True)
            return bn_relu_conv(self.leave, self.dense(x), inplace=True)
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

    def _head_in_bands(self, half: torch.Tensor, x_in: torch.Tensor) -> torch.Tensor:
        """``self.head(cat(upsample(half), x_in))`` in horizontal bands (inference).

        At full resolution the up-sampled features, their concatenation with the input and the first
        conv's output are three full-size maps (~170 MB at 512^2); a band needs a few MB. Each band
        carries ``halo`` extra rows per side, one per 3x3 conv, so the rows kept never see the zero
        padding at a band's inner edges, and up-samples exactly the rows it needs.
        """
        n, _, height, width = x_in.shape
        halo = sum(m.kernel_size[0] // 2 for m in self.head if isinstance(m, nn.Conv2d))
        rows = max(4 * halo, _BAND_PIXELS // max(1, width))
        out = torch.empty((n, 2, height, width), dtype=half.dtype, device=half.device)
        for top in range(0, height, rows):
            bottom = min(height, top + rows)
            start, stop = max(0, top - halo), min(height, bottom + halo)
            up = upsample_rows(half, start, stop, (height, width))
            band = self.head(concat_channels(up, x_in[:, :, start:stop]))
            out[:, :, top:bottom] = band[:, :, top - start : bottom - start]
        return out

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
        if inference_path(self):  # keep channels-last through the full-size layers, free early
            del skips
            x = concat_channels(x, stem)
            del stem
            x = bn_relu_conv(self.to_half, x, inplace=True)
            return self._head_in_bands(x, x_in)[:, :, :height, :width]
        x = self.to_half(torch.cat((x, stem), dim=1))
        x = F.interpolate(x, size=x_in.shape[-2:], mode="bilinear", align_corners=False)
        ab = self.head(torch.cat((x, x_in), dim=1))
        return ab[:, :, :height, :width]
