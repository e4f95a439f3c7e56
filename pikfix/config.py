"""Every size of the Pik-Fix networks in one frozen dataclass, with named presets.

``paper()`` is the published architecture (RDN 64/32, ImageNet-shaped ResNet34, DenseNet-121-like
encoder); ``lite()`` is the same graph narrowed to a few million parameters so it trains on a CPU and
ships as a checkpoint of a few MB. Only widths differ between them: block and unit counts, levels and
the fusion layout are shared, so one code path serves both.

Histogram choice (SPHist, paper section 3.3): the paper states sigma = 0.1 without a bin count; the
authors' code uses K = 256 with sigma = 0.01. A sigma much wider than a bin blurs neighbouring bins
together, a much narrower one makes the soft assignment nearly hard (vanishing gradients to the bin
centres). We keep sigma equal to the bin width 2/K: paper K = 64 (sigma 0.03125), lite K = 32
(sigma 0.0625), which also bounds the 2K-channel histogram maps the colorization net carries.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

# Fields older checkpoints carry that no longer mean anything: ignored on load.
_RETIRED = frozenset({"tone_bins"})  # the tone head's histogram size (it reads quantiles now)


@dataclass(frozen=True)
class PikFixConfig:
    name: str = "lite"

    # Restoration: multi-level RDN (paper section 3.1).
    rdn_width: int = 32
    rdn_growth: int = 16
    rdn_blocks: int = 3
    rdn_units: int = 4
    rdn_levels: tuple[int, ...] = (1, 4, 8)

    # Similarity (paper section 3.2).
    sim_backbone_widths: tuple[int, int, int, int] = (16, 32, 64, 128)
    sim_backbone_frozen: bool = False
    sim_width: int = 32
    sim_temperature: float = 0.005
    corr_max_positions: int = 32 * 32

    # SPHist (paper section 3.3).
    hist_bins: int = 32
    hist_sigma: float = 0.0625

    # Colorization (paper section 3.3).
    col_growth: int = 8
    col_bn_size: int = 4
    col_init_features: int = 16
    col_units: tuple[int, int, int, int] = (6, 12, 24, 16)
    col_fusion_units: int = 6
    col_decoder_units: tuple[int, int, int] = (24, 12, 6)

    # Colourization runs at this resolution (short side, pixels); chroma is up-sampled afterwards.
    working_size: int = 256

    # Global tone curve after restoration (our deviation, pikfix.nets.tone); 0 knots: none (the paper).
    tone_knots: int = 0

    def __post_init__(self) -> None:
        if len(self.sim_backbone_widths) != 4 or len(self.col_units) != 4 or len(self.col_decoder_units) != 3:
            raise ValueError("expected 4 backbone widths, 4 encoder blocks and 3 decoder blocks")
        if self.rdn_levels[0] != 1 or any(8 % s for s in self.rdn_levels):
            raise ValueError("rdn_levels must start at 1 and divide 8 (tiles align on multiples of 8)")
        if self.hist_bins < 2 or self.hist_sigma <= 0 or self.sim_temperature <= 0:
            raise ValueError("hist_bins >= 2, hist_sigma > 0 and sim_temperature > 0 are required")
        if self.corr_max_positions < 16:
            raise ValueError("corr_max_positions must allow at least a 4x4 grid")

    @classmethod
    def paper(cls) -> PikFixConfig:
        """Published sizes: ResNet34 widths match torchvision so ImageNet weights load."""
        return cls(
            name="paper",
            rdn_width=64,
            rdn_growth=32,
            sim_backbone_widths=(64, 128, 256, 512),
            sim_backbone_frozen=True,
            sim_width=64,
            corr_max_positions=64 * 64,
            hist_bins=64,
            hist_sigma=2.0 / 64,
            col_growth=32,
            col_bn_size=4,
            col_init_features=64,
        )

    @classmethod
    def lite(cls) -> PikFixConfig:
        """The narrow shipped default (a few million parameters)."""
        return cls()

    @classmethod
    def tiny(cls) -> PikFixConfig:
        """Toy widths for tests: the lite graph at about 80k parameters, colourized at 64 px."""
        return cls(
            name="tiny",
            rdn_width=8,
            rdn_growth=4,
            rdn_blocks=1,
            rdn_units=2,
            sim_backbone_widths=(8, 8, 16, 16),
            sim_width=8,
            corr_max_positions=64,
            hist_bins=8,
            hist_sigma=2.0 / 8,
            col_growth=4,
            col_init_features=8,
            col_units=(1, 1, 1, 1),
            col_fusion_units=1,
            col_decoder_units=(1, 1, 1),
            working_size=64,
        )

    @classmethod
    def named(cls, name: str) -> PikFixConfig:
        presets = {"paper": cls.paper, "lite": cls.lite, "tiny": cls.tiny}
        if name not in presets:
            raise ValueError(f"unknown config {name!r}; expected one of {sorted(presets)}")
        return presets[name]()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (tuples become lists) so checkpoints load with weights_only=True."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PikFixConfig:
        known = {f.name: f for f in fields(cls)}
        data = {k: v for k, v in data.items() if k not in _RETIRED}
        unknown = set(data) - set(known)
        if unknown:
            raise ValueError(f"unknown config fields: {sorted(unknown)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)
