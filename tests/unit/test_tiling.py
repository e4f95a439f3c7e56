"""Tiled inference: layout invariants, exact blending, and seamless output from the real restoration net."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from pikfix.config import PikFixConfig
from pikfix.model import PikFix
from pikfix.tiling import blend_zones, layout_axis, plan_spans, tiled_apply


def test_spans_cover_the_axis_aligned_with_enough_overlap():
    rng = random.Random(7)
    for _ in range(3000):
        length = rng.randint(1, 4000)
        tile = rng.choice([64, 96, 200, 512, 768])
        overlap = rng.choice([0, 16, 48, 96])
        if tile - overlap < 8:
            continue
        spans = plan_spans(length, tile, overlap, align=8)
        assert spans[0][0] == 0 and spans[-1][1] == length
        assert all(stop - start <= tile + 7 for start, stop in spans)
        for (a0, a1), (b0, _) in zip(spans, spans[1:], strict=False):
            assert b0 % 8 == 0 and b0 > a0 and a1 - b0 >= overlap


def test_single_span_when_the_image_fits():
    assert plan_spans(100, 128, 48) == ((0, 100),)
    assert plan_spans(128, 128, 48) == ((0, 128),)


def test_weights_are_a_partition_of_unity_with_zero_margins():
    overlap = 96
    margin, ramp = blend_zones(overlap)
    assert margin > 0 and ramp > 0 and 2 * margin + ramp <= overlap
    for length in (203, 517, 1000):
        layout = layout_axis(length, 160, overlap)
        total = torch.zeros(length)
        for (start, stop), w in zip(layout.spans, layout.weights, strict=True):
            assert w.shape == (stop - start,) and float(w.min()) >= 0.0
            if start > 0:  # pixels next to an interior edge never contribute
                assert float(w[:margin].abs().max()) == 0.0
            if stop < length:
                assert float(w[-margin:].abs().max()) == 0.0
            total[start:stop] += w
        torch.testing.assert_close(total, torch.ones(length), atol=1e-6, rtol=0)


def test_pointwise_function_is_reproduced_exactly_and_channels_may_change():
    x = torch.rand(1, 2, 203, 157)
    out = tiled_apply(lambda t: torch.cat((t * 2, t.sum(1, keepdim=True)), 1), x, tile_size=64, overlap=32)
    assert out.shape == (1, 3, 203, 157) and out.dtype == torch.float32
    torch.testing.assert_close(out[:, :2], 2 * x, atol=1e-6, rtol=0)
    torch.testing.assert_close(out[:, 2:], x.sum(1, keepdim=True), atol=1e-6, rtol=0)


def test_padding_effects_are_hidden_by_the_margin():
    torch.manual_seed(0)
    kernel = torch.rand(1, 1, 9, 9)  # radius 4, zero padding: wrong within 4 px of any tile edge

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, padding=4)

    x = torch.rand(1, 1, 150, 190)
    seen = []
    out = tiled_apply(lambda t: seen.append(t.shape[-2:]) or blur(t), x, tile_size=64, overlap=24)
    assert blend_zones(24)[0] >= 4
    torch.testing.assert_close(out, blur(x), atol=1e-5, rtol=0)
    assert len(seen) > 4 and all(h <= 64 + 7 and w <= 64 + 7 for h, w in seen)  # bounded tiles


def test_tiled_restoration_matches_untiled_with_the_real_network():
    torch.manual_seed(0)
    model = PikFix(PikFixConfig.tiny()).eval()
    height, width = 171, 203  # odd sizes: the last tiles end off the 8-pixel grid, like the image
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    image = (0.5 + 0.3 * torch.sin(17 * xx) * torch.cos(11 * yy) + 0.15 * torch.rand(height, width)).clamp(0, 1)
    image = image[None, None]
    calls = []

    def restore(tile: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(tile.shape[-2:]))
        return model.restore(tile)

    with torch.inference_mode():
        whole = model.restore(image)
        tiled = tiled_apply(restore, image, tile_size=160, overlap=96, align=model.restoration.align)
    assert len(calls) == 4 and max(max(c) for c in calls) < max(height, width)
    assert float((tiled - whole).abs().max()) < 1e-5  # the overlap covers the receptive radius


def test_invalid_arguments_are_rejected():
    with pytest.raises(ValueError):
        plan_spans(500, 64, 60)  # no stride left
    with pytest.raises(ValueError):
        tiled_apply(lambda t: t, torch.rand(1, 8, 8), 64, 16)
    with pytest.raises(ValueError):
        tiled_apply(lambda t: t[..., :-1, :], torch.rand(1, 1, 100, 100), 64, 16)
