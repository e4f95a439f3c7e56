"""The five Pik-Fix training losses (paper section 3.4) and the PatchGAN discriminator.

Total generator loss L = a*L1(L) + b*perceptual(L) + l*EMD(hist) + g*L1(ab) + e*adversarial(ab), with the
paper's weights a = 1.0, b = 0.2, l = 0.5, g = 1.0, e = 0.2. The discriminator judges (ground-truth L, ab)
pairs, so only the chroma receives its gradient. Each term, and why the perceptual VGG19 without
user-supplied ImageNet weights is only a stand-in, is in docs/model.md section 2 ("Losses").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pikfix.backbones import VGG19Features, gray_to_rgb
from pikfix.model import PikFixOutput

TERMS = ("l1_luminance", "perceptual", "emd", "l1_chroma", "adversarial")


@dataclass(frozen=True)
class LossWeights:
    """Paper section 3.4 weights (alpha, beta, lambda, gamma, eta)."""

    l1_luminance: float = 1.0
    perceptual: float = 0.2
    emd: float = 0.5
    l1_chroma: float = 1.0
    adversarial: float = 0.2

    def as_dict(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in TERMS}


def emd_loss(hist: torch.Tensor, target_hist: torch.Tensor) -> torch.Tensor:
    """Squared-CDF EMD between (N, C, K) histograms: sum_k (CDF - CDF_target)^2, mean over N and C.

    Histograms are renormalised first so a caller's rounding never shows up as a distance.
    """
    if hist.shape != target_hist.shape:
        raise ValueError(f"histogram shapes differ: {tuple(hist.shape)} vs {tuple(target_hist.shape)}")
    p = hist / hist.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    q = target_hist / target_hist.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    return ((p.cumsum(-1) - q.cumsum(-1)) ** 2).sum(-1).mean()


class PerceptualLoss(nn.Module):
    """Feature-space distance of two luminance images under a frozen VGG19 (first ``stages`` stages)."""

    def __init__(self, weights: str | None = None, stages: int = 3) -> None:
        super().__init__()
        # Random features must be the same in every run (or the loss changes between resumes) and
        # building them must not disturb the caller's random stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.vgg = VGG19Features(weights, stages=stages)
        self.vgg.eval()
        self.pretrained = self.vgg.pretrained

    def train(self, mode: bool = True) -> PerceptualLoss:
        super().train(mode)
        self.vgg.eval()  # a frozen feature extractor; never switch it to training mode
        return self

    def forward(self, luminance: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ours = self.vgg(gray_to_rgb(luminance.clamp(0.0, 1.0)))
        with torch.no_grad():
            theirs = self.vgg(gray_to_rgb(target))
        return sum(F.mse_loss(a.float(), b.float()) for a, b in zip(ours, theirs, strict=True))


class PatchDiscriminator(nn.Module):
    """PatchGAN: 4x4 stride-2 convs (64-128-256-512 at ``base`` 64), BatchNorm, LeakyReLU 0.2, then a
    one-channel patch map of real/fake logits. ``base`` narrows it for the lite configuration."""

    def __init__(self, in_channels: int = 3, base: int = 64, layers: int = 4) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        cin = in_channels
        for i in range(layers):
            cout = base * 2 ** min(i, 3)
            blocks.append(nn.Conv2d(cin, cout, kernel_size=4, stride=2, padding=1, bias=i == 0))
            if i > 0:  # pix2pix leaves the first layer without normalisation
                blocks.append(nn.BatchNorm2d(cout))
            blocks.append(nn.LeakyReLU(0.2, inplace=True))
            cin = cout
        blocks.append(nn.Conv2d(cin, 1, kernel_size=3, stride=1, padding=1))
        self.net = nn.Sequential(*blocks)

    def forward(self, luminance: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat((luminance, ab), dim=1))


def discriminator_width(config_name: str) -> int:
    """PatchGAN base width per model configuration: the paper's 64, a quarter of it for lite."""
    return 64 if config_name == "paper" else 16


@dataclass
class LossTerms:
    """Unweighted named terms, the weighted total, and the weights used."""

    terms: dict[str, torch.Tensor]
    total: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        values = {name: float(value.detach()) for name, value in self.terms.items()}
        values["total"] = float(self.total.detach())
        return values


def _bce(logits: torch.Tensor, real: bool) -> torch.Tensor:
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())


class PikFixLoss(nn.Module):
    """Generator and discriminator objectives over one batch (see the module docstring)."""

    def __init__(
        self,
        weights: LossWeights | None = None,
        vgg_weights: str | None = None,
        perceptual_stages: int = 3,
        discriminator_base: int = 64,
    ) -> None:
        super().__init__()
        self.weights = weights or LossWeights()
        self.perceptual = PerceptualLoss(vgg_weights, perceptual_stages) if self.weights.perceptual else None
        self.discriminator = PatchDiscriminator(3, discriminator_base) if self.weights.adversarial else None

    def restoration_terms(self, restored: torch.Tensor, target_l: torch.Tensor) -> dict[str, torch.Tensor]:
        """The restoration sub-net's terms: L1 and perceptual distance of the restored luminance."""
        zero = restored.new_zeros(())
        return {
            "l1_luminance": F.l1_loss(restored.float(), target_l.float()),
            "perceptual": self.perceptual(restored, target_l) if self.perceptual is not None else zero,
        }

    def colorization_terms(
        self,
        ab: torch.Tensor,
        output_histogram: torch.Tensor,
        reference_histogram: torch.Tensor,
        target_l: torch.Tensor,
        target_ab: torch.Tensor,
        adversarial: bool = True,
    ) -> dict[str, torch.Tensor]:
        """The colorization side's terms: EMD to the reference histogram, chroma L1, adversarial.

        ``adversarial=False`` leaves the adversarial term at zero (a warm-up on the L1 terms alone).
        """
        terms = {
            "emd": emd_loss(output_histogram.float(), reference_histogram.float()),
            "l1_chroma": F.l1_loss(ab.float(), target_ab.float()),
            "adversarial": ab.new_zeros(()),
        }
        if self.discriminator is not None and adversarial:
            terms["adversarial"] = _bce(self.discriminator(target_l, ab), real=True)
        return terms

    def weighted(self, terms: dict[str, torch.Tensor], held: tuple[str, ...] = ()) -> LossTerms:
        """All five terms (missing ones are zero) and their total under the loss weights; ``held`` terms
        are reported but left out of the total (a warm-up)."""
        zero = next(iter(terms.values())).new_zeros(())
        terms = {name: terms.get(name, zero) for name in TERMS}
        w = self.weights.as_dict()
        total = sum(w[name] * terms[name] for name in TERMS if w[name] and name not in held)
        return LossTerms(terms, total if isinstance(total, torch.Tensor) else zero)

    def generator(
        self,
        output: PikFixOutput,
        target_l: torch.Tensor,
        target_ab: torch.Tensor,
        adversarial: bool = True,
        held: tuple[str, ...] = (),
    ) -> LossTerms:
        """The five weighted terms for the generator (the discriminator's parameters get no update)."""
        terms = self.restoration_terms(output.restored, target_l)
        terms.update(
            self.colorization_terms(
                output.ab, output.output_histogram, output.reference_histogram, target_l, target_ab, adversarial
            )
        )
        return self.weighted(terms, held)

    def discriminator_loss(
        self, fake_ab: torch.Tensor, target_l: torch.Tensor, target_ab: torch.Tensor
    ) -> torch.Tensor:
        """Real pairs towards 1, the generator's (detached) chroma towards 0; mean of the two."""
        if self.discriminator is None:
            raise ValueError("the adversarial weight is 0: there is no discriminator to train")
        real = _bce(self.discriminator(target_l, target_ab), real=True)
        fake = _bce(self.discriminator(target_l, fake_ab.detach()), real=False)
        return 0.5 * (real + fake)
