"""Evaluate a checkpoint against two baselines on synthetic old photos (``pikfix eval``).

For each colour photo: degrade it with a fixed per-photo seed (``pikfix.degrade``), retrieve the top-1
reference from a separate reference folder (``pikfix.retrieval``; a file identical to the photo is
never used as its own reference), then score against the clean photo: PSNR and SSIM on RGB, the mean
CIEDE2000 colour difference, and the mean signed a* and b* errors (a colour cast shows as a bias):

* ``model``: Pik-Fix restoring and colourizing the degraded photo with that reference;
* ``grey``: the degraded photo itself, no colour, no restoration;
* ``reinhard``: the degraded photo coloured by Reinhard transfer from the same reference
  (``pikfix.colortransfer.reinhard_colorize``: its luminance kept, chroma from the reference).

Also the luminance PSNR of the degraded input and of the model's restored luminance against the
clean photo's (CIE L/100): the restoration gain in dB. Nothing here depends on the results; settings
are fixed before anything is measured.

``--upscale K`` scans the degraded print at K times its size (bicubic), restores at that size and scales
the output back for the metrics: damage is then K times wider in pixels, as on a high-resolution scan.
``--against CHECKPOINT`` evaluates a second checkpoint on the same photos and says which one wins.

``--ship-to PATH`` turns the evaluated checkpoint into the shipped one: it writes an fp16 copy,
evaluates that copy on the same photos, refuses if it lost more than ``--ship-tolerance`` dB of mean
PSNR, and otherwise writes it to PATH with its report beside it (``PATH`` with ``.eval.json``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pikfix.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pikfix.color import rgb_to_lab_np
from pikfix.colortransfer import reinhard_colorize
from pikfix.datasets import DatasetError, list_photos, load_photo, split_photos
from pikfix.degrade import degrade
from pikfix.inference import DAMAGE_SIDE, Restorer, luminance_of
from pikfix.metrics import ciede2000, psnr, ssim
from pikfix.retrieval import DescriptorExtractor

log = logging.getLogger(__name__)

METHODS = ("model", "grey", "reinhard")
SPLITS = ("all", "train", "val")


class EvaluationError(RuntimeError):
    """The evaluation cannot run (no photos, no references) or a shipped copy lost quality."""


@dataclass
class EvalConfig:
    photos: str
    references: str
    checkpoint: str | None = None
    out: str | None = None
    seed: int = 0
    severity: float = 1.0
    split: str = "all"
    references_split: str = "all"
    val_fraction: float = 0.15
    max_side: int | None = None
    device: str = "auto"
    vgg_weights: str | None = None
    threads: int | None = None
    upscale: int = 1
    damage_side: int = DAMAGE_SIDE  # 0: restore at full resolution only (the paper's graph)
    anchor_chroma: bool = True  # False: the colorization net's own mean chroma (the paper's graph)
    names: tuple[str, ...] = ()  # only these photos of the split (file names)
    contact_sheet: str | None = None  # write degraded | restored | truth | reference rows here (JPEG)


def _select(folder: str, split: str, val_fraction: float) -> list[Path]:
    if split not in SPLITS:
        raise EvaluationError(f"unknown split {split!r}; expected one of {SPLITS}")
    if split == "all":
        return list_photos(folder)
    train, val = split_photos(folder, val_fraction)
    return train if split == "train" else val


def photo_seed(seed: int, name: str) -> int:
    """The degradation seed of a photo: fixed by the run seed and the file name alone."""
    return (seed * 1_000_003 + zlib.crc32(name.encode("utf-8"))) % (2**31 - 1)


def _fit(rgb: np.ndarray, max_side: int | None) -> np.ndarray:
    """Shrink (antialiased) so the long side is at most ``max_side``; never enlarge."""
    if not max_side or max(rgb.shape[:2]) <= max_side:
        return rgb
    scale = max_side / max(rgb.shape[:2])
    size = [max(1, round(rgb.shape[0] * scale)), max(1, round(rgb.shape[1] * scale))]
    t = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]
    t = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)
    return np.ascontiguousarray(t[0].permute(1, 2, 0).clamp(0.0, 1.0).numpy())


def _resize_to(image: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """(H, W[, 3]) float image resized to (h, w): bicubic to enlarge, antialiased bilinear to shrink."""
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]
    t = F.interpolate(t, size=size, mode=mode, align_corners=False, antialias=mode == "bilinear").clamp(0.0, 1.0)
    out = t[0, 0] if image.ndim == 2 else t[0].permute(1, 2, 0)
    return np.ascontiguousarray(out.numpy())


def _scores(output: np.ndarray, truth: np.ndarray, truth_lab: np.ndarray) -> dict[str, float]:
    lab = rgb_to_lab_np(np.clip(output, 0.0, 1.0))
    return {
        "psnr": psnr(output, truth),
        "ssim": ssim(output, truth),
        "ciede2000": float(ciede2000(lab, truth_lab).mean()),
        "cast_a": float((lab[..., 1] - truth_lab[..., 1]).mean()),
        "cast_b": float((lab[..., 2] - truth_lab[..., 2]).mean()),
    }


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}


class _References:
    """The reference photos, their descriptors, and top-1 retrieval that never returns the query photo."""

    def __init__(self, paths: list[Path], extractor: DescriptorExtractor, max_side: int | None) -> None:
        if not paths:
            raise EvaluationError("no reference photos")
        self.paths = paths
        self.digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
        self.images = {p.name: _fit(load_photo(p), max_side) for p in paths}
        self.extractor = extractor
        self.index = extractor.new_index()
        self.index.add([p.name for p in paths], extractor.describe_batch([self.images[p.name] for p in paths]))

    def best(self, query: np.ndarray, exclude_digest: str) -> tuple[str, float]:
        excluded = {p.name for p, d in zip(self.paths, self.digests, strict=True) if d == exclude_digest}
        candidates = self.index.query(self.extractor.describe(query), k=len(excluded) + 1)
        for candidate in candidates:
            if candidate.id not in excluded:
                return candidate.id, float(candidate.total)
        raise EvaluationError("every reference photo is a copy of the photo being evaluated")


def evaluate(config: EvalConfig, restorer: Restorer | None = None) -> dict[str, Any]:
    """Score the model and both baselines on every selected photo; returns the JSON-able report."""
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        photos = _select(config.photos, config.split, config.val_fraction)
        reference_paths = _select(config.references, config.references_split, config.val_fraction)
    except DatasetError as exc:
        raise EvaluationError(str(exc)) from exc
    if config.names:
        missing = set(config.names) - {p.name for p in photos}
        if missing:
            raise EvaluationError(f"not in split {config.split} of {config.photos}: {', '.join(sorted(missing))}")
        photos = [p for p in photos if p.name in config.names]
    if not photos:
        raise EvaluationError(f"no photos to evaluate in {config.photos} (split {config.split})")
    if restorer is None:
        restorer = Restorer.from_checkpoint(config.checkpoint, device=config.device,
                                            damage_side=config.damage_side or None,
                                            anchor_chroma=config.anchor_chroma)
    extractor = DescriptorExtractor(weights=config.vgg_weights)
    references = _References(reference_paths, extractor, config.max_side)

    rows: list[dict[str, Any]] = []
    sheet: list[list[np.ndarray]] = []
    for path in photos:
        t0 = time.perf_counter()
        truth = _fit(load_photo(path), config.max_side)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        degraded = degrade(truth, seed=photo_seed(config.seed, path.name), severity=config.severity).gray
        grey_rgb = np.repeat(degraded[..., None], 3, axis=2)
        ref_name, ref_score = references.best(degraded, digest)
        reference = references.images[ref_name]

        height, width = degraded.shape
        if config.upscale > 1:
            scan = _resize_to(grey_rgb, (height * config.upscale, width * config.upscale), "bicubic")
            result = restorer.restore(scan, reference, reference_id=ref_name)
            del scan
            model_rgb = _resize_to(result.rgb, (height, width), "bilinear")
            restored_l = _resize_to(result.restored_luminance, (height, width), "bilinear")
        else:
            result = restorer.restore(grey_rgb, reference, reference_id=ref_name)
            model_rgb, restored_l = result.rgb, result.restored_luminance
        input_l = luminance_of(grey_rgb)
        truth_l = luminance_of(truth)
        truth_lab = rgb_to_lab_np(truth)
        row = {
            "name": path.name,
            "size": [int(truth.shape[1]), int(truth.shape[0])],
            "degradation_seed": photo_seed(config.seed, path.name),
            "reference": ref_name,
            "reference_score": ref_score,
            "model": _scores(model_rgb, truth, truth_lab),
            "grey": _scores(grey_rgb, truth, truth_lab),
            "reinhard": _scores(reinhard_colorize(input_l, reference), truth, truth_lab),
        }
        input_psnr = psnr(input_l, truth_l)
        restored_psnr = psnr(restored_l, truth_l)
        row["luminance"] = {"input_psnr": input_psnr, "restored_psnr": restored_psnr,
                            "gain_db": restored_psnr - input_psnr}
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        if config.contact_sheet:
            sheet.append([grey_rgb, model_rgb, truth, reference])
        log.info("%s: model %.2f dB, grey %.2f dB, reinhard %.2f dB, L gain %+.2f dB (reference %s)",
                 path.name, row["model"]["psnr"], row["grey"]["psnr"], row["reinhard"]["psnr"],
                 row["luminance"]["gain_db"], ref_name)

    if config.contact_sheet:
        write_contact_sheet(config.contact_sheet, sheet)
    mean = {m: _mean([r[m] for r in rows]) for m in (*METHODS, "luminance")}
    settings = asdict(config)
    settings.update(photos=Path(config.photos).name, references=Path(config.references).name, out=None,
                    checkpoint=Path(config.checkpoint).name if config.checkpoint else "default")
    return {
        "checkpoint": {"model": restorer.model_name, "sha256": restorer.checkpoint_sha256},
        "settings": settings,
        "retrieval_backbone": "imagenet" if config.vgg_weights else "random-init",
        "count": len(rows),
        "images": rows,
        "mean": mean,
        "goal": {
            "beats_grey": _beats(mean["model"], mean["grey"]),
            "beats_reinhard": _beats(mean["model"], mean["reinhard"]),
            "luminance_gain_at_least_3db": mean["luminance"]["gain_db"] >= 3.0,
            "cast_within_3": abs(mean["model"]["cast_a"]) <= 3.0 and abs(mean["model"]["cast_b"]) <= 3.0,
        },
    }


def write_contact_sheet(path: str | Path, rows: list[list[np.ndarray]], height: int = 180) -> None:
    """One row per photo (degraded | restored | ground truth | reference), each scaled to ``height``."""
    tiles = [[Image.fromarray(np.round(np.clip(im, 0, 1) * 255).astype(np.uint8)) for im in row] for row in rows]
    tiles = [[t.resize((max(1, round(t.width * height / t.height)), height), Image.LANCZOS) for t in row]
             for row in tiles]
    gap = 4
    width = max(sum(t.width for t in row) + gap * (len(row) - 1) for row in tiles)
    canvas = Image.new("RGB", (width, len(tiles) * (height + gap) - gap), "white")
    for r, row in enumerate(tiles):
        x = 0
        for tile in row:
            canvas.paste(tile, (x, r * (height + gap)))
            x += tile.width + gap
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, quality=85)
    log.info("contact sheet of %d photos written to %s", len(rows), path)


def _beats(a: dict[str, float], b: dict[str, float]) -> bool:
    """Better on all three: higher PSNR and SSIM, lower CIEDE2000."""
    return a["psnr"] > b["psnr"] and a["ssim"] > b["ssim"] and a["ciede2000"] < b["ciede2000"]


def compare(candidate: dict[str, Any], incumbent: dict[str, Any]) -> dict[str, Any]:
    """Which of two reports on the same photos is better: the candidate wins only if it beats the
    incumbent on RGB PSNR, SSIM and CIEDE2000 together (the luminance gain is reported alongside)."""
    if [r["name"] for r in candidate["images"]] != [r["name"] for r in incumbent["images"]]:
        raise EvaluationError("the two reports are not on the same photos")
    a, b = candidate["mean"], incumbent["mean"]
    return {
        "candidate": candidate["checkpoint"],
        "incumbent": incumbent["checkpoint"],
        "delta": {
            "psnr_db": a["model"]["psnr"] - b["model"]["psnr"],
            "ssim": a["model"]["ssim"] - b["model"]["ssim"],
            "ciede2000": a["model"]["ciede2000"] - b["model"]["ciede2000"],
            "luminance_gain_db": a["luminance"]["gain_db"] - b["luminance"]["gain_db"],
        },
        "candidate_wins": _beats(a["model"], b["model"]),
    }


def format_report(report: dict[str, Any]) -> str:
    """A plain-text table of the per-image and mean scores."""
    lines = [f"{'photo':32s} {'model':>20s} {'grey':>20s} {'reinhard':>20s} {'L in -> out':>16s}"]

    def cell(scores: dict[str, float]) -> str:
        return f"{scores['psnr']:6.2f}/{scores['ssim']:.3f}/{scores['ciede2000']:5.2f}"

    for row in [*report["images"], {"name": "MEAN", **report["mean"]}]:
        lum = row["luminance"]
        lines.append(
            f"{row['name'][:32]:32s} {cell(row['model']):>20s} {cell(row['grey']):>20s} "
            f"{cell(row['reinhard']):>20s} {lum['input_psnr']:6.2f}->{lum['restored_psnr']:6.2f}"
        )
    lines.append("(PSNR dB / SSIM on RGB / mean CIEDE2000; luminance PSNR of the degraded input and the restored luminance)")
    cast = report["mean"]
    lines.append("mean signed a*/b* error: " + ", ".join(
        f"{m} {cast[m]['cast_a']:+.2f}/{cast[m]['cast_b']:+.2f}" for m in METHODS))
    lines.append("goal: " + ", ".join(f"{k}={v}" for k, v in report["goal"].items()))
    return "\n".join(lines)


def format_comparison(comparison: dict[str, Any], candidate: str, incumbent: str) -> str:
    d = comparison["delta"]
    verdict = "wins" if comparison["candidate_wins"] else "does not win"
    return (f"{candidate} vs {incumbent}: PSNR {d['psnr_db']:+.2f} dB, SSIM {d['ssim']:+.4f}, "
            f"CIEDE2000 {d['ciede2000']:+.2f}, luminance gain {d['luminance_gain_db']:+.2f} dB: "
            f"{candidate} {verdict}")


def _write_json(path: str | Path, data: dict[str, Any]) -> None:
    """Indented JSON; an infinite PSNR (identical images) is written as JSON's common ``Infinity``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(data, indent=2) + "\n")


def ship(config: EvalConfig, target: str | Path, report: dict[str, Any], tolerance_db: float = 0.1) -> dict[str, Any]:
    """Write an fp16 copy of ``config.checkpoint`` to ``target`` if it keeps the evaluated quality."""
    loaded = load_checkpoint(config.checkpoint)
    metadata = dict(loaded.metadata)
    metadata["shipped_from_sha256"] = loaded.sha256
    with tempfile.TemporaryDirectory() as tmp:
        half_path = Path(tmp) / "half.pt"
        save_checkpoint(half_path, loaded.model, metadata, half=True)
        half_config = EvalConfig(**{**asdict(config), "checkpoint": str(half_path)})
        half_report = evaluate(half_config)
        loss = report["mean"]["model"]["psnr"] - half_report["mean"]["model"]["psnr"]
        half_report["fp16_check"] = {
            "fp32_sha256": loaded.sha256,
            "fp32_mean": report["mean"],
            "psnr_loss_db": loss,
            "tolerance_db": tolerance_db,
        }
        half_report["settings"]["checkpoint"] = Path(target).name
        if loss > tolerance_db:
            raise EvaluationError(f"the fp16 copy loses {loss:.3f} dB of mean PSNR (> {tolerance_db} dB): not shipped")
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_bytes(half_path.read_bytes())
    _write_json(Path(target).with_suffix(".eval.json"), half_report)
    log.info("shipped %s (fp16, %.3f dB below fp32) with %s", target, loss, Path(target).with_suffix(".eval.json"))
    return half_report


def options() -> list[click.Option]:
    """``pikfix eval``'s options, with EvalConfig's defaults."""
    d = EvalConfig(photos="", references="")
    return [
        click.Option(["--photos"], required=True, help="folder of clean colour photos (the ground truth)"),
        click.Option(["--references"], required=True, help="folder of colour reference photos to retrieve from"),
        click.Option(["--checkpoint"], help="checkpoint path or s3:// URI (default: shipped lite)"),
        click.Option(["--out"], help="write the JSON report here"),
        click.Option(["--seed"], type=int, default=d.seed, help="degradation seed"),
        click.Option(["--severity"], type=float, default=d.severity, help="degradation severity"),
        click.Option(["--split"], type=click.Choice(SPLITS), default=d.split, help="which photos of --photos to use"),
        click.Option(["--references-split"], type=click.Choice(SPLITS), default=d.references_split,
                     help="which photos of --references to use (e.g. train when both are the same folder)"),
        click.Option(["--val-fraction"], type=float, default=d.val_fraction, help="as in pikfix train"),
        click.Option(["--max-side"], type=int, help="shrink photos to this long side first"),
        click.Option(["--device"], default=d.device),
        click.Option(["--vgg-weights"], help="torchvision vgg19 state_dict for retrieval"),
        click.Option(["--threads"], type=int),
        click.Option(["--upscale"], type=int, default=d.upscale,
                     help="scan the degraded print at this many times its size, restore there, score at 1x"),
        click.Option(["--damage-side"], type=int, default=d.damage_side,
                     help="short side of the damage-scale restoration pass; 0 turns it off"),
        click.Option(["--anchor-chroma/--no-anchor-chroma"], default=d.anchor_chroma,
                     help="give the output the reference's mean chroma (--no-anchor-chroma: the net's own)"),
        click.Option(["--names"], default="", callback=lambda _c, _p, v: tuple(n for n in v.split(",") if n),
                     help="comma-separated file names: only these photos of the split"),
        click.Option(["--contact-sheet"], help="write a JPEG: degraded | restored | ground truth | reference per photo"),
        click.Option(["--against"], help="also evaluate this checkpoint on the same photos and say which of the two wins"),
        click.Option(["--ship-to"],
                     help="write an fp16 copy of --checkpoint here if it keeps quality (plus .eval.json)"),
        click.Option(["--ship-tolerance"], type=float, default=0.1, help="max mean PSNR loss of the fp16 copy, dB"),
    ]


def eval_command(args: SimpleNamespace) -> int:
    extra = {"against", "ship_to", "ship_tolerance"}  # every other option is an EvalConfig field
    config = EvalConfig(**{k: v for k, v in vars(args).items() if k not in extra})
    if args.upscale < 1:
        log.error("--upscale must be 1 or more")
        return 2
    if args.ship_to and not args.checkpoint:
        log.error("--ship-to needs --checkpoint (the trained fp32 checkpoint to ship)")
        return 2
    try:
        report = evaluate(config)
        print(format_report(report))
        if args.against:
            incumbent = evaluate(EvalConfig(**{**asdict(config), "checkpoint": args.against}))
            report["against"] = compare(report, incumbent)
            print(format_comparison(report["against"], config.checkpoint or "shipped", args.against))
        if config.out:
            _write_json(config.out, report)
        if args.ship_to:
            half = ship(config, args.ship_to, report, args.ship_tolerance)
            print(f"fp16 copy: mean PSNR {half['mean']['model']['psnr']:.3f} dB "
                  f"({half['fp16_check']['psnr_loss_db']:+.3f} dB lost); written to {args.ship_to}")
    except (EvaluationError, CheckpointError) as exc:
        log.error("%s", exc)
        return 2
    return 0
