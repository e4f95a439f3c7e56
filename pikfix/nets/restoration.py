"""Restoration sub-net: a multi-level Residual Dense Network on luminance (paper section 3.1).

Three RDNs see the photo at full, 1/4 and 1/8 resolution; the coarse levels catch large damage
(cracks, stains) that a full-resolution receptive field cannot span. Their features are bilinearly
up-sampled, concatenated with the full-resolution level and turned into a residual added to the input.

Built for tiling: no BatchNorm (a tile must not depend on the other images in its batch), down-sampling
by exact area averaging, and reflect padding only on the bottom/right to a multiple of 8. A tile whose
origin is a multiple of 8 therefore sees exactly the lower-level inputs the whole image would give it,
and its interior farther than ``receptive_radius`` from the tile edge matches the whole-image result.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pikfix.nets.fastpath import channel_buffer, conv

_BAND_ELEMENTS = 1 << 22  # floats of input per band of a dense unit's 3x3 conv in inference (16 MB)


def _relu_conv3x3_into(layer: nn.Conv2d, x: torch.Tensor, out: torch.Tensor) -> None:
    """``out[...] = relu(layer(x))`` for a 3x3 conv with padding 1, in horizontal bands.

    ``x`` is a channel slice of a channels-last buffer, which the conv kernels first copy into a
    dense tensor: in bands that copy is a few MB instead of the slice's full size (160 MB for the
    paper's last unit on a 512^2 image, 4x that on a 1024^2 tile). Each band reads one extra row per
    side, so the rows kept never see the zero padding at a band's inner edges.
    """
    n, c, h, w = x.shape
    rows = max(8, _BAND_ELEMENTS // max(1, n * c * w))
    if rows >= h or x.is_contiguous() or layer.kernel_size != (3, 3) or layer.padding != (1, 1):
        out.copy_(F.relu_(layer(x)))
        return
    for top in range(0, h, rows):
        bottom = min(h, top + rows)
        start, stop = max(0, top - 1), min(h, bottom + 1)
        band = layer(x[:, :, start:stop])
        out[:, :, top:bottom] = F.relu_(band[:, :, top - start : bottom - start])


def _conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, padding=1)


class ResidualDenseBlock(nn.Module):
    """``units`` dense 3x3 conv+ReLU layers, 1x1 local feature fusion, local residual (RDN's RDB)."""

    def __init__(self, width: int, growth: int, units: int) -> None:
        super().__init__()
        self.units = nn.ModuleList(
            nn.Sequential(_conv3x3(width + i * growth, growth), nn.ReLU(inplace=True)) for i in range(units)
        )
        self.fuse = nn.Conv2d(width + units * growth, width, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return self._infer(x)
        features = [x]
        for unit in self.units:
            features.append(unit(torch.cat(features, dim=1)))
        return x + self.fuse(torch.cat(features, dim=1))

    def _infer(self, x: torch.Tensor) -> torch.Tensor:
        """Each unit reads a prefix slice of one preallocated buffer and writes its output into the
        next slice, instead of re-concatenating all earlier features for every unit."""
        width = x.shape[1]
        buffer = channel_buffer(x, self.fuse.in_channels)
        buffer[:, :width].copy_(x)
        channels = width
        for unit in self.units:
            layer = unit[0]
            _relu_conv3x3_into(
                layer, buffer[:, :channels], buffer[:, channels : channels + layer.out_channels]
            )
            channels += layer.out_channels
        fused = conv(self.fuse, buffer)
        del buffer
        return fused.add_(x)


class RDN(nn.Module):
    """One level: shallow features, ``blocks`` RDBs, global feature fusion with global residual."""

    def __init__(self, width: int, growth: int, blocks: int, units: int) -> None:
        super().__init__()
        self.shallow1 = _conv3x3(1, width)
        self.shallow2 = _conv3x3(width, width)
        self.blocks = nn.ModuleList(ResidualDenseBlock(width, growth, units) for _ in range(blocks))
        self.global_fuse = nn.Sequential(
            nn.Conv2d(blocks * width, width, kernel_size=1), _conv3x3(width, width)
        )
        # 3x3 convs on the longest input-to-output path, i.e. this level's radius in its own pixels.
        self.radius = 2 + blocks * units + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.shallow1(x)
        y = self.shallow2(s1)
        if not torch.is_grad_enabled():
            # The 1x1 global fusion of the blocks' concatenated outputs, accumulated block by block
            # (a sum of per-block matrix products): only the latest output is kept, not all of them.
            fuse, width = self.global_fuse[0], y.shape[1]
            fused: torch.Tensor | None = None
            for index, block in enumerate(self.blocks):
                y = block(y)
                weight = fuse.weight[:, index * width : (index + 1) * width]
                part = conv(fuse, y, weight, fuse.bias if index == 0 else None)
                fused = part if fused is None else fused.add_(part)
            assert fused is not None
            return self.global_fuse[1](fused).add_(s1)
        outs = []
        for block in self.blocks:
            y = block(y)
            outs.append(y)
        return s1 + self.global_fuse(torch.cat(outs, dim=1))


class MultiLevelRDN(nn.Module):
    """Restores a luminance image (N,1,H,W) in [0, 1]; any H, W."""

    align = 8

    def __init__(
        self,
        width: int = 64,
        growth: int = 32,
        blocks: int = 3,
        units: int = 4,
        levels: tuple[int, ...] = (1, 4, 8),
    ) -> None:
        super().__init__()
        if levels[0] != 1 or any(self.align % s for s in levels):
            raise ValueError(f"levels must start at 1 and divide {self.align}: {levels}")
        self.levels = tuple(levels)
        self.nets = nn.ModuleList(RDN(width, growth, blocks, units) for _ in self.levels)
        self.reconstruct = nn.Sequential(
            _conv3x3(len(self.levels) * width, width),
            nn.ReLU(inplace=True),
            _conv3x3(width, 1),
        )
        # Per level: its radius in its own pixels, one more for the bilinear up-sampling, times the
        # scale, plus the pooling window; then the two reconstruction convs at full resolution.
        level_radius = max((net.radius + 1) * s + s for net, s in zip(self.nets, self.levels, strict=True))
        self.receptive_radius: int = level_radius + 2
        # Overlap recommended between neighbouring tiles (a multiple of the alignment).
        self.tile_overlap: int = math.ceil(self.receptive_radius / self.align) * self.align

    def forward(self, luminance: torch.Tensor) -> torch.Tensor:
        _, _, height, width = luminance.shape
        pad_h, pad_w = -height % self.align, -width % self.align
        x = luminance
        if pad_h or pad_w:
            mode = "reflect" if pad_h < height and pad_w < width else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        size = x.shape[-2:]
        if not torch.is_grad_enabled():
            restored = self.reconstruct(self._levels_into_buffer(x)).add_(x)
            return restored[:, :, :height, :width]
        feats = []
        for net, scale in zip(self.nets, self.levels, strict=True):
            level_in = x if scale == 1 else F.avg_pool2d(x, scale)
            y = net(level_in)
            if scale != 1:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            feats.append(y)
        restored = x + self.reconstruct(torch.cat(feats, dim=1))
        return restored[:, :, :height, :width]

    def _levels_into_buffer(self, x: torch.Tensor) -> torch.Tensor:
        """All levels' full-size features in one preallocated buffer (inference: no concatenation)."""
        buffer: torch.Tensor | None = None
        for index, (net, scale) in enumerate(zip(self.nets, self.levels, strict=True)):
            y = net(x if scale == 1 else F.avg_pool2d(x, scale))
            if scale != 1:
                y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
            width = y.shape[1]
            if buffer is None:
                buffer = channel_buffer(y, len(self.nets) * width)
            buffer[:, index * width : (index + 1) * width].copy_(y)
            del y
        assert buffer is not None
        return buffer
