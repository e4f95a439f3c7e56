"""The global tone head: identity at start, monotone always, and it undoes a fade it was fitted on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pikfix.checkpoint import load_checkpoint
from pikfix.inference import Restorer
from pikfix.nets.tone import GlobalTone, apply_curve
from pikfix.tonefit import Pairs, fit, fit_tone
from service.cli import parse_args


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


def test_fit_tone_writes_a_checkpoint_the_restorer_applies(tmp_path: Path, tiny_checkpoint: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(12):
        rgb = np.repeat(scene(i, (40, 56))[0, 0].numpy()[..., None], 3, axis=2) * np.array([1.0, 0.9, 0.8])
        Image.fromarray(np.round(rgb * 255).astype(np.uint8)).save(photos / f"p{i:02d}.png")
    out = tmp_path / "toned.pt"
    args = parse_args(["fit-tone", "--data", str(photos), "--init", str(tiny_checkpoint), "--out", str(out),
                       "--steps", "50", "--variants", "1", "--val-fraction", "0.3", "--threads", "1"])
    figures = fit_tone(args)
    assert figures["val"]["photos"] > 0 and figures["train"]["gain_db"] > 0
    loaded, init = load_checkpoint(out), load_checkpoint(tiny_checkpoint)
    assert loaded.config.tone_knots == 16 and loaded.model.tone is not None
    assert loaded.metadata["tone"]["init_sha256"] == init.sha256
    kept = loaded.model.state_dict()  # the rest of the init checkpoint is kept
    assert all(torch.equal(v, kept[k]) for k, v in init.model.state_dict().items())
    # The restorer applies the curve after restoration: with and without it the outputs differ.
    photo = np.asarray(Image.open(photos / "p00.png"), np.float32) / 255
    with_tone = Restorer(loaded.model, "cpu").restore(photo).restored_luminance
    without = Restorer(init.model, "cpu").restore(photo).restored_luminance
    assert float(np.abs(with_tone - without).mean()) > 1e-4
