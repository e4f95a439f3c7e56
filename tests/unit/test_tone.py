"""The global tone head: identity at start, monotone always, and it undoes a fade it was fitted on."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pikfix.checkpoint import load_checkpoint, save_checkpoint
from pikfix.config import PikFixConfig
from pikfix.inference import Restorer
from pikfix.model import PikFix
from pikfix.nets.tone import GlobalTone, apply_curve
from pikfix.tonefit import Pairs, add_arguments, fit, fit_tone

TINY = PikFixConfig(name="tiny", rdn_width=8, rdn_growth=4, sim_backbone_widths=(8, 8, 16, 16), sim_width=8,
                    corr_max_positions=64, hist_bins=8, hist_sigma=0.25, col_growth=4, col_init_features=8,
                    working_size=64)


def scene(seed: int, size: tuple[int, int] = (48, 64)) -> torch.Tensor:
    """A photo-like luminance with a full range of tones."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[0], 0 : size[1]].astype(np.float32)
    base = 0.5 + 0.45 * np.sin(x / (3.0 + seed % 5)) * np.cos(y / (4.0 + seed % 3)) + rng.normal(0, 0.02, size)
    return torch.from_numpy(np.clip(base, 0, 1).astype(np.float32))[None, None]


def fade(lum: torch.Tensor, strength: float) -> torch.Tensor:
    """Lifted blacks and dulled whites: what an old print does to the whole photo."""
    return 0.25 * strength + (1.0 - 0.45 * strength) * lum


def test_a_fresh_head_is_the_identity_and_every_curve_is_monotone() -> None:
    head = GlobalTone().requires_grad_(False)
    lum = scene(1)
    assert torch.allclose(apply_curve(lum, head(lum)), lum, atol=1e-3)
    torch.manual_seed(0)
    for p in head.parameters():
        p.normal_(0, 1.0)
    curve = head(lum)
    assert bool((curve[:, 1:] >= curve[:, :-1]).all()) and float(curve.min()) >= 0 and float(curve.max()) <= 1


def test_a_faded_photos_histogram_is_restored() -> None:
    torch.manual_seed(0)
    clean = [scene(i) for i in range(24)]
    pairs = Pairs([fade(c, 0.4 + 0.6 * (i % 4) / 3) for i, c in enumerate(clean)], clean)
    head = GlobalTone()
    fit(head, pairs, steps=600, lr=3e-3)
    truth = scene(99)
    faded = fade(truth, 0.8)
    with torch.no_grad():
        mapped = apply_curve(faded, head(faded))
    before = abs(float(faded.std() - truth.std())) + abs(float(faded.mean() - truth.mean()))
    after = abs(float(mapped.std() - truth.std())) + abs(float(mapped.mean() - truth.mean()))
    assert after < 0.25 * before
    assert float((mapped - truth).abs().mean()) < 0.5 * float((faded - truth).abs().mean())


def test_fit_tone_writes_a_checkpoint_the_restorer_applies(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(12):
        rgb = np.repeat(scene(i, (40, 56))[0, 0].numpy()[..., None], 3, axis=2) * np.array([1.0, 0.9, 0.8])
        Image.fromarray(np.round(rgb * 255).astype(np.uint8)).save(photos / f"p{i:02d}.png")
    torch.manual_seed(0)
    init = tmp_path / "tiny.pt"
    save_checkpoint(init, PikFix(TINY).eval(), {"training_steps": 0})
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "toned.pt"
    args = parser.parse_args(["--data", str(photos), "--init", str(init), "--out", str(out), "--steps", "50",
                              "--variants", "1", "--val-fraction", "0.3", "--threads", "1"])
    figures = fit_tone(args)
    assert figures["val"]["photos"] > 0 and figures["train"]["gain_db"] > 0
    loaded = load_checkpoint(out)
    assert loaded.config.tone_knots == 16 and loaded.model.tone is not None
    assert loaded.metadata["tone"]["init_sha256"] == load_checkpoint(init).sha256
    original = load_checkpoint(init).model.state_dict()
    assert all(torch.equal(v, loaded.model.state_dict()[k]) for k, v in original.items())  # the rest is kept
    # The restorer applies the curve after restoration: with and without it the outputs differ.
    photo = np.asarray(Image.open(photos / "p00.png"), np.float32) / 255
    with_tone = Restorer(loaded.model, "cpu").restore(photo).restored_luminance
    without = Restorer(load_checkpoint(init).model, "cpu").restore(photo).restored_luminance
    assert float(np.abs(with_tone - without).mean()) > 1e-4
