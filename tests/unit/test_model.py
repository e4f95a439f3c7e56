"""Pik-Fix networks: shapes, ranges, invariants and sizes for both configurations."""

from __future__ import annotations

import pytest
import torch
from torchvision import models

from pikfix.backbones import ResNet34Features
from pikfix.config import PikFixConfig
from pikfix.model import PikFix
from pikfix.nets.similarity import capped_grid, correlate
from pikfix.nets.sphist import SimilarityMap, SPHist

TINY = PikFixConfig.tiny()


@pytest.fixture(scope="module")
def lite() -> PikFix:
    torch.manual_seed(0)
    return PikFix(PikFixConfig.lite()).eval()


@pytest.fixture(scope="module")
def paper() -> PikFix:
    torch.manual_seed(0)
    return PikFix(PikFixConfig.paper()).eval()


def _check_output(model: PikFix, size: tuple[int, int], ref_size: tuple[int, int]) -> None:
    gray, ref = torch.rand(2, 1, *size), torch.rand(2, 3, *ref_size)
    with torch.no_grad():
        out = model(gray, ref)
    k = model.config.hist_bins
    assert (
        out.restored.shape == (2, 1, *size)
        and out.ab.shape == (2, 2, *size)
        and out.rgb.shape == (2, 3, *size)
    )
    assert out.restored.min() >= 0.0 and out.restored.max() <= 1.0
    assert out.ab.abs().max() <= 1.0 and out.rgb.min() >= 0.0 and out.rgb.max() <= 1.0
    for hist in (out.output_histogram, out.reference_histogram):
        assert hist.shape == (2, 2, k)
        torch.testing.assert_close(hist.sum(-1), torch.ones(2, 2))
    col = out.colorization
    assert len(col.similarity) == len(col.confidence) == len(col.warped_histograms) == 4
    for stride, sim, conf, warped in zip(
        (4, 8, 16, 32), col.similarity, col.confidence, col.warped_histograms, strict=True
    ):
        grid = sim.size
        assert grid == (-(-max(size[0], 64) // 32) * 32 // stride, -(-max(size[1], 64) // 32) * 32 // stride)
        assert sim.weights.shape[1] <= model.config.corr_max_positions
        torch.testing.assert_close(sim.weights.sum(-1), torch.ones(sim.weights.shape[:2]))
        assert conf.shape == (2, 1, *grid) and conf.abs().max() <= 1.0 + 1e-5
        assert warped.shape == (2, 2 * k, *grid)
        # warping keeps every position a normalised histogram for a and for b
        torch.testing.assert_close(warped.view(2, 2, k, *grid).sum(2), torch.ones(2, 2, *grid))


def test_lite_forward_shapes_and_ranges(lite: PikFix) -> None:
    _check_output(lite, (64, 96), (80, 72))


def test_paper_forward_shapes_and_ranges(paper: PikFix) -> None:
    _check_output(paper, (64, 64), (64, 64))


def test_parameter_counts(lite: PikFix, paper: PikFix) -> None:
    assert 1_000_000 < lite.num_parameters() < 5_000_000
    resnet = models.resnet34(weights=None)
    resnet_features = sum(p.numel() for n, p in resnet.named_parameters() if not n.startswith("fc."))
    assert sum(p.numel() for p in paper.similarity.backbone.parameters()) == resnet_features
    dense = models.densenet121(weights=None).features
    dense_body = sum(
        p.numel() for n, p in dense.named_parameters() if n.startswith(("denseblock", "transition"))
    )
    col = paper.colorization
    ours = sum(p.numel() for m in (col.blocks, col.transitions) for p in m.parameters())
    assert ours == dense_body  # DenseNet-121 encoder: blocks of 6, 12, 24, 16 units, growth 32
    assert col.encoder_widths == (256, 512, 1024, 1024)
    # paper's ImageNet backbone is frozen; everything else trains
    assert paper.num_parameters(trainable_only=True) == paper.num_parameters() - resnet_features


def test_restore_any_size(lite: PikFix) -> None:
    with torch.no_grad():
        out = lite.restore(torch.rand(1, 1, 67, 93))
    assert out.shape == (1, 1, 67, 93) and torch.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_restore_is_translation_consistent_on_aligned_tiles() -> None:
    torch.manual_seed(1)
    model = PikFix(TINY).eval()
    radius = model.restoration.receptive_radius
    assert model.tile_overlap % 8 == 0 and model.tile_overlap >= radius
    image = torch.rand(1, 1, 440, 424)
    top, left, height, width = 48, 64, 2 * radius + 40, 2 * radius + 24
    with torch.no_grad():
        whole = model.restoration(image)
        tile = model.restoration(image[:, :, top : top + height, left : left + width])
    inner = (slice(None), slice(None), slice(radius, height - radius), slice(radius, width - radius))
    expected = whole[:, :, top : top + height, left : left + width][inner]
    torch.testing.assert_close(tile[inner], expected, atol=1e-5, rtol=1e-5)
    # the border region does differ, so the check above is not vacuous
    assert (tile - whole[:, :, top : top + height, left : left + width]).abs().max() > 1e-4


def test_similarity_of_an_image_with_itself_peaks_on_the_diagonal() -> None:
    torch.manual_seed(2)
    model = PikFix(TINY).eval()
    lum = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        maps = model.similarity(lum, lum)
    for sim in maps:
        assert sim.grid == sim.ref_grid
        torch.testing.assert_close(sim.confidence, torch.ones_like(sim.confidence), atol=1e-4, rtol=0)
        positions = sim.weights.shape[1]
        assert torch.equal(sim.weights[0].argmax(-1), torch.arange(positions))


def test_correlation_is_capped_for_large_inputs() -> None:
    torch.manual_seed(3)
    feats, ref = torch.randn(1, 8, 96, 128), torch.randn(1, 8, 50, 40)
    sim = correlate(feats, ref, temperature=0.005, max_positions=256)
    assert sim.grid == capped_grid((96, 128), 256) and sim.grid[0] * sim.grid[1] <= 256
    assert sim.ref_grid[0] * sim.ref_grid[1] <= 256
    assert sim.weights.shape == (1, sim.grid[0] * sim.grid[1], sim.ref_grid[0] * sim.ref_grid[1])
    assert sim.size == (96, 128) and sim.confidence.shape == (1, 1, 96, 128)
    assert capped_grid((10, 20), 1024) == (10, 20)


def test_sphist_of_a_constant_image_peaks_at_the_right_bin() -> None:
    hist = SPHist(bins=16, sigma=2 / 16)
    a, b = 0.3, -0.55
    ab = torch.tensor([a, b]).view(1, 2, 1, 1).expand(1, 2, 5, 7)
    spatial = hist.spatial_histogram(ab)
    assert spatial.shape == (1, 32, 5, 7)
    per_channel = spatial.view(1, 2, 16, 5, 7)
    torch.testing.assert_close(per_channel.sum(2), torch.ones(1, 2, 5, 7))
    centers = hist.centers.detach()
    for channel, value in enumerate((a, b)):
        expected = int((centers - value).abs().argmin())
        assert torch.all(per_channel[0, channel].argmax(0) == expected)
    glob = hist.global_histogram(ab)
    assert glob.shape == (1, 2, 16)
    torch.testing.assert_close(glob.sum(-1), torch.ones(1, 2))
    assert int(glob[0, 0].argmax()) == int((centers - a).abs().argmin())


def test_sphist_initial_centres_are_even_on_minus_one_to_one() -> None:
    centers = SPHist(bins=8, sigma=0.25).centers.detach()
    torch.testing.assert_close(centers, torch.linspace(-0.875, 0.875, 8))


def test_warp_with_a_permutation_moves_histograms() -> None:
    hist_net = SPHist(bins=4, sigma=0.5)
    ab = torch.rand(1, 2, 2, 3) * 2 - 1
    hist = hist_net.spatial_histogram(ab)  # reference grid 2x3
    perm = torch.randperm(6)
    weights = torch.eye(6)[perm].unsqueeze(0)  # input position p takes reference position perm[p]
    sim = SimilarityMap(weights, (2, 3), (2, 3), (2, 3), torch.ones(1, 1, 2, 3))
    warped = SPHist.warp(hist, sim)
    torch.testing.assert_close(warped.flatten(2), hist.flatten(2)[:, :, perm])


def test_gradient_reaches_bin_centres_and_scale_mix() -> None:
    torch.manual_seed(4)
    model = PikFix(TINY).train()
    out = model(torch.rand(2, 1, 64, 64), torch.rand(2, 3, 64, 64))
    cdf_gap = out.output_histogram.cumsum(-1) - out.reference_histogram.cumsum(-1)
    loss = (cdf_gap**2).sum() + out.ab.abs().mean() + out.restored.mean()
    loss.backward()
    assert model.sphist.centers.grad is not None and model.sphist.centers.grad.abs().sum() > 0
    mix_grad = model.similarity.scale_mix.grad
    assert mix_grad is not None and (mix_grad.abs() > 0).all()  # every cross-scale weight learns
    assert model.restoration.reconstruct[-1].weight.grad.abs().sum() > 0


def test_channels_last_gives_the_same_result(lite: PikFix) -> None:
    gray, ref = torch.rand(1, 1, 64, 64), torch.rand(1, 3, 64, 64)
    cl = PikFix(lite.config).eval()
    cl.load_state_dict(lite.state_dict())
    cl = cl.to(memory_format=torch.channels_last)
    with torch.no_grad():
        a = lite(gray, ref)
        b = cl(gray.to(memory_format=torch.channels_last), ref.to(memory_format=torch.channels_last))
    torch.testing.assert_close(b.rgb, a.rgb, atol=1e-4, rtol=1e-4)


def test_torchvision_resnet34_weights_load_into_the_paper_backbone(tmp_path) -> None:
    torch.manual_seed(5)
    reference = models.resnet34(weights=None)
    path = tmp_path / "resnet34.pth"
    torch.save(reference.state_dict(), path)
    model = PikFix(PikFixConfig.paper(), backbone_weights=str(path))
    backbone = model.similarity.backbone
    assert backbone.pretrained
    torch.testing.assert_close(backbone.stem[0].weight, reference.conv1.weight, atol=0, rtol=0)
    torch.testing.assert_close(
        backbone.layer4[2].conv2.weight, reference.layer4[2].conv2.weight, atol=0, rtol=0
    )
    torch.testing.assert_close(backbone.layer3[0].bn1.running_var, reference.layer3[0].bn1.running_var)
    with pytest.raises(ValueError, match="widths"):
        ResNet34Features(str(path), widths=(16, 32, 64, 128))


def test_narrow_backbone_keeps_resnet34_layout() -> None:
    narrow = ResNet34Features(widths=(16, 32, 64, 128))
    feats = narrow(torch.rand(1, 3, 64, 64))
    assert [f.shape[1:] for f in feats] == [(16, 16, 16), (32, 8, 8), (64, 4, 4), (128, 2, 2)]
    assert [len(layer) for layer in (narrow.layer1, narrow.layer2, narrow.layer3, narrow.layer4)] == [
        3,
        4,
        6,
        3,
    ]
    standard_keys = {k.split(".", 1)[1] for k in ResNet34Features().state_dict()}
    assert {k.split(".", 1)[1] for k in narrow.state_dict()} == standard_keys


def test_config_round_trip_and_presets() -> None:
    for config in (PikFixConfig.lite(), PikFixConfig.paper(), TINY):
        assert PikFixConfig.from_dict(config.to_dict()) == config
    # A retired field of older checkpoints is ignored; a field nobody knows is an error.
    assert PikFixConfig.from_dict({**TINY.to_dict(), "tone_bins": 64}) == TINY
    with pytest.raises(ValueError, match="unknown config fields"):
        PikFixConfig.from_dict({**TINY.to_dict(), "tone_bins_typo": 64})
    assert PikFixConfig.named("paper") == PikFixConfig.paper() and PikFixConfig.named("tiny") == TINY
    paper = PikFixConfig.paper()
    assert (paper.rdn_width, paper.rdn_growth, paper.sim_width, paper.sim_temperature) == (64, 32, 64, 0.005)
    assert paper.rdn_levels == (1, 4, 8) and paper.col_units == (6, 12, 24, 16)
    with pytest.raises(ValueError):
        PikFixConfig.named("huge")
    with pytest.raises(ValueError):
        PikFixConfig.from_dict({"bogus": 1})


def test_bf16_autocast_keeps_correlation_and_colour_in_float32() -> None:
    torch.manual_seed(6)
    model = PikFix(TINY).eval()
    gray, ref = torch.rand(1, 1, 64, 64), torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        full = model(gray, ref)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(gray, ref)
    assert all(s.weights.dtype == torch.float32 for s in mixed.colorization.similarity)
    assert mixed.rgb.dtype == torch.float32
    torch.testing.assert_close(mixed.ab.float(), full.ab, atol=2e-2, rtol=0)
