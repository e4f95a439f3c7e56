"""The five training losses: EMD behaviour, the PatchGAN shape, weighting and gradient routing."""

from __future__ import annotations

import pytest
import torch

from pikfix.config import PikFixConfig
from pikfix.losses import (
    TERMS,
    LossWeights,
    PatchDiscriminator,
    PerceptualLoss,
    PikFixLoss,
    discriminator_width,
    emd_loss,
)
from pikfix.model import PikFix

TINY = PikFixConfig.tiny()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small tensors: one thread is faster than several competing for a busy machine's cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def peaked(bins: int, at: int) -> torch.Tensor:
    """A (1, 2, K) histogram with a soft peak at bin ``at`` in both channels."""
    k = torch.arange(bins, dtype=torch.float32)
    h = torch.exp(-0.5 * (k - at) ** 2)
    return (h / h.sum()).expand(1, 2, bins).clone()


def test_emd_of_identical_histograms_is_zero() -> None:
    h = torch.rand(3, 2, 16)
    assert emd_loss(h, h).item() == pytest.approx(0.0, abs=1e-7)
    # normalisation: a scaled copy is the same distribution
    assert emd_loss(h, 5.0 * h).item() == pytest.approx(0.0, abs=1e-6)


def test_emd_grows_with_the_shift() -> None:
    base = peaked(32, 8)
    distances = [emd_loss(base, peaked(32, 8 + s)).item() for s in range(0, 12, 2)]
    assert distances[0] == pytest.approx(0.0, abs=1e-7)
    assert all(b > a for a, b in zip(distances, distances[1:], strict=False))
    # symmetric in direction
    assert emd_loss(base, peaked(32, 12)).item() == pytest.approx(emd_loss(base, peaked(32, 4)).item(), rel=1e-4)


def test_emd_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        emd_loss(torch.rand(1, 2, 8), torch.rand(1, 2, 16))


def test_patch_discriminator_gives_a_one_channel_patch_map() -> None:
    disc = PatchDiscriminator(3, base=8)
    out = disc(torch.rand(2, 1, 64, 96), torch.rand(2, 2, 64, 96) - 0.5)
    assert out.shape == (2, 1, 4, 6)  # four stride-2 convs
    widths = [m.out_channels for m in disc.modules() if isinstance(m, torch.nn.Conv2d)]
    assert widths == [8, 16, 32, 64, 1]  # 64-128-256-512 scaled by base/64, then the patch map
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in disc.modules())
    assert discriminator_width("paper") == 64 and discriminator_width("lite") < 64


def test_perceptual_loss_is_zero_for_identical_images_and_reproducible() -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = PerceptualLoss(stages=2)
    assert torch.rand(1).item() == before.item()  # building it leaves the caller's RNG alone
    second = PerceptualLoss(stages=2)
    lum = torch.rand(1, 1, 32, 32)
    other = (lum + 0.2 * torch.rand_like(lum)).clamp(0, 1)
    assert first(lum, lum).item() == pytest.approx(0.0, abs=1e-8)
    assert first(lum, other).item() > 0
    assert first(lum, other).item() == pytest.approx(second(lum, other).item(), rel=1e-6)
    assert not first.pretrained
    assert all(not p.requires_grad for p in first.parameters())


@pytest.fixture(scope="module")
def model() -> PikFix:
    torch.manual_seed(0)
    return PikFix(TINY).train()


def test_generator_loss_has_every_term_and_the_weighted_total(model: PikFix) -> None:
    loss = PikFixLoss(perceptual_stages=2, discriminator_base=8)
    gray = torch.rand(2, 1, 64, 64)
    out = model(gray, torch.rand(2, 3, 64, 64))
    target_l, target_ab = torch.rand(2, 1, 64, 64), torch.rand(2, 2, 64, 64) - 0.5
    terms = loss.generator(out, target_l, target_ab)
    assert set(terms.terms) == set(TERMS)
    weights = LossWeights().as_dict()
    assert weights == {"l1_luminance": 1.0, "perceptual": 0.2, "emd": 0.5, "l1_chroma": 1.0, "adversarial": 0.2}
    expected = sum(weights[k] * terms.terms[k] for k in TERMS)
    assert terms.total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert terms.terms["l1_luminance"].item() == pytest.approx((out.restored - target_l).abs().mean().item(), rel=1e-6)
    assert terms.terms["l1_chroma"].item() == pytest.approx((out.ab - target_ab).abs().mean().item(), rel=1e-6)
    assert all(v > 0 for v in terms.as_floats().values())


def test_adversarial_gradient_reaches_only_the_chroma_path(model: PikFix) -> None:
    model.zero_grad()
    weights = LossWeights(l1_luminance=0, perceptual=0, emd=0, l1_chroma=0, adversarial=1.0)
    loss = PikFixLoss(weights, discriminator_base=8)
    assert loss.perceptual is None
    out = model(torch.rand(2, 1, 64, 64), torch.rand(2, 3, 64, 64))
    loss.generator(out, torch.rand(2, 1, 64, 64), torch.rand(2, 2, 64, 64) - 0.5).total.backward()
    colour_grads = [p.grad for p in model.colorization.parameters() if p.grad is not None]
    assert colour_grads and any(g.abs().sum() > 0 for g in colour_grads)
    # the discriminator is conditioned on the ground-truth L and the colorization sees the restored L
    # through a stop-gradient: the restoration sub-net learns from its own luminance losses only
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.restoration.parameters())
    disc_loss = loss.discriminator_loss(out.ab, torch.rand(2, 1, 64, 64), torch.rand(2, 2, 64, 64) - 0.5)
    model.zero_grad()
    disc_loss.backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.parameters())


def test_discriminator_loss_needs_a_discriminator() -> None:
    loss = PikFixLoss(LossWeights(perceptual=0.0, adversarial=0.0))
    with pytest.raises(ValueError, match="no discriminator"):
        loss.discriminator_loss(torch.zeros(1, 2, 64, 64), torch.zeros(1, 1, 64, 64), torch.zeros(1, 2, 64, 64))
