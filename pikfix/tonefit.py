"""Fit the global tone head on whole photos (``pikfix fit-tone``), the rest of the model frozen.

The head sees a whole photo's histogram, so it cannot be trained on the crops ``pikfix train`` uses.
Each training photo is shrunk to the damage scale (short side ``DAMAGE_SIDE``, where inference takes
the histogram), degraded ``--variants`` times (``pikfix.degrade``), and restored by the checkpoint's
restoration sub-net; the head is then fitted, full batch, on the L1 between the curve-mapped restored
luminance and the clean luminance. The held-out split is scored before and after (luminance PSNR).
The output is the input checkpoint plus the fitted head.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from types import SimpleNamespace
from typing import Any

import click
import numpy as np
import torch

from pikfix.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pikfix.datasets import DatasetError, load_photo, split_photos
from pikfix.degrade import degrade
from pikfix.inference import DAMAGE_SIDE, Restorer, _resize, _short_side, luminance_of
from pikfix.metrics import psnr
from pikfix.model import PikFix
from pikfix.nets.tone import GlobalTone, apply_curve, luminance_statistics

log = logging.getLogger(__name__)

LOSS_PIXELS = 4096  # pixels per photo in the loss (fixed, evenly spread)


@dataclasses.dataclass
class Pairs:
    """Restored and clean luminance thumbnails, (N,1,h,w) each; photos differ in size, so lists."""

    restored: list[torch.Tensor]
    clean: list[torch.Tensor]


def _thumbnail(rgb: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]
    t = _resize(t, _short_side(*rgb.shape[:2], DAMAGE_SIDE)).clamp(0.0, 1.0)
    return np.ascontiguousarray(t[0].permute(1, 2, 0).numpy())


def make_pairs(restorer: Restorer, paths: list, variants: int, seed: int, severity: float) -> Pairs:
    pairs = Pairs([], [])
    start = time.perf_counter()
    with torch.inference_mode():
        for i, path in enumerate(paths):
            clean = _thumbnail(load_photo(path))
            clean_l = torch.from_numpy(luminance_of(clean))[None, None]
            for v in range(variants):
                gray = degrade(clean, seed=seed * 100_003 + i * 101 + v, severity=severity).gray
                restored = restorer._restore_local(luminance_of(np.repeat(gray[..., None], 3, axis=2)))
                pairs.restored.append(restored.clone())
                pairs.clean.append(clean_l)
            if (i + 1) % 20 == 0:
                log.info("restored %d/%d photos (%.0f s)", i + 1, len(paths), time.perf_counter() - start)
    return pairs


def _loss_pixels(image: torch.Tensor) -> torch.Tensor:
    flat = image.flatten()
    index = torch.linspace(0, flat.numel() - 1, min(LOSS_PIXELS, flat.numel())).long()
    return flat[index]


def fit(head: GlobalTone, pairs: Pairs, steps: int, lr: float) -> list[float]:
    """Full-batch Adam on the L1 of the curve-mapped restored luminance; returns the loss per step."""
    restored = torch.stack([_loss_pixels(r) for r in pairs.restored])[:, None, None, :]
    clean = torch.stack([_loss_pixels(c) for c in pairs.clean])[:, None, None, :]
    features = torch.cat([luminance_statistics(r) for r in pairs.restored])
    optimiser = torch.optim.Adam(head.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        curves = head.curve(features)
        loss = (apply_curve(restored, curves) - clean).abs().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    return losses


def score(head: GlobalTone, pairs: Pairs) -> dict[str, float]:
    """Mean luminance PSNR of the restored thumbnails before and after the curve."""
    before, after = [], []
    with torch.no_grad():
        for r, c in zip(pairs.restored, pairs.clean, strict=True):
            before.append(psnr(r[0, 0].numpy(), c[0, 0].numpy()))
            after.append(psnr(apply_curve(r, head(r)).clamp(0.0, 1.0)[0, 0].numpy(), c[0, 0].numpy()))
    return {"psnr_before": float(np.mean(before)), "psnr_after": float(np.mean(after)),
            "gain_db": float(np.mean(after) - np.mean(before)), "photos": len(before)}


def fit_tone(args: SimpleNamespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    loaded = load_checkpoint(args.init, device=torch.device("cpu"))
    train_paths, val_paths = split_photos(args.data, args.val_fraction)
    if not train_paths or not val_paths:
        raise DatasetError(f"{args.data}: need photos in both the training and the validation split")
    restorer = Restorer(loaded.model, "cpu")
    log.info("restoring %d training photos x %d variants and %d validation photos at short side %d",
             len(train_paths), args.variants, len(val_paths), DAMAGE_SIDE)
    train_pairs = make_pairs(restorer, train_paths, args.variants, args.seed, args.severity)
    val_pairs = make_pairs(restorer, val_paths, 1, args.seed + 1, args.severity)

    config = dataclasses.replace(loaded.config, tone_knots=args.knots)
    model = PikFix(config)
    state = {k: v for k, v in loaded.model.state_dict().items() if not k.startswith("tone.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("tone.") for k in missing)
    losses = fit(model.tone, train_pairs, args.steps, args.lr)
    figures = {"train": score(model.tone, train_pairs), "val": score(model.tone, val_pairs),
               "final_loss": losses[-1], "steps": args.steps}
    metadata = dict(loaded.metadata)
    metadata["tone"] = {"fitted_on": f"{len(train_paths)} photos x {args.variants} degradations",
                        "init_sha256": loaded.sha256, **figures}
    digest = save_checkpoint(args.out, model.eval(), metadata)
    log.info("tone head: validation luminance PSNR %.2f -> %.2f dB; written to %s (sha256 %s)",
             figures["val"]["psnr_before"], figures["val"]["psnr_after"], args.out, digest[:12])
    return figures


def options() -> list[click.Option]:
    """``pikfix fit-tone``'s options."""
    return [
        click.Option(["--data"], required=True, help="folder of colour photos (as for pikfix train)"),
        click.Option(["--init"], help="checkpoint whose restoration is kept (default: shipped)"),
        click.Option(["--out"], required=True, help="where to write the checkpoint with the fitted head"),
        click.Option(["--val-fraction"], type=float, default=0.15),
        click.Option(["--variants"], type=int, default=4, help="degradations per training photo"),
        click.Option(["--steps"], type=int, default=3000),
        click.Option(["--lr"], type=float, default=3e-3),
        click.Option(["--knots"], type=int, default=16),
        click.Option(["--severity"], type=float, default=1.0),
        click.Option(["--seed"], type=int, default=0),
        click.Option(["--threads"], type=int),
    ]


def fit_tone_command(args: SimpleNamespace) -> int:
    try:
        figures = fit_tone(args)
    except (CheckpointError, DatasetError) as exc:
        log.error("%s", exc)
        return 2
    print(f"validation luminance PSNR {figures['val']['psnr_before']:.2f} -> {figures['val']['psnr_after']:.2f} dB")
    return 0
