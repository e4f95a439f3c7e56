"""Join the restoration sub-net of one checkpoint with the similarity/colorization sub-nets of another.

``pikfix train --part restoration`` and ``--part colorization`` train the two halves of the model in
separate runs (the colorization sees ground-truth luminance, so neither waits for the other and both can
run at once, one per core). ``pikfix combine`` writes the single checkpoint inference loads.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import click

from pikfix.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pikfix.model import PikFix

log = logging.getLogger(__name__)

RESTORATION_PREFIX = "restoration."


def combine_models(restoration: PikFix, colorization: PikFix) -> PikFix:
    """A new model: ``restoration``'s restoration sub-net, everything else from ``colorization``."""
    if restoration.config.to_dict() != colorization.config.to_dict():
        raise CheckpointError(
            f"the two checkpoints have different architectures ({restoration.config.name} vs "
            f"{colorization.config.name}); both parts must be trained with the same --config"
        )
    combined = PikFix(colorization.config)
    state = dict(colorization.state_dict())
    state.update({k: v for k, v in restoration.state_dict().items() if k.startswith(RESTORATION_PREFIX)})
    combined.load_state_dict(state)
    return combined.eval()


def trained_part(metadata: dict[str, Any]) -> str:
    """Which part a checkpoint's run trained ("all" for joint runs and checkpoints made before parts)."""
    train = metadata.get("train")
    return str(train.get("part", "all")) if isinstance(train, dict) else "all"


def _require_part(loaded: Any, wanted: str, flag: str) -> None:
    part = trained_part(loaded.metadata)
    if part not in (wanted, "all"):
        raise CheckpointError(
            f"{flag} {loaded.source} was trained with --part {part}; its {wanted} sub-net is untrained "
            "(were the two checkpoints swapped?)"
        )


def combine_checkpoints(restoration_source: str, colorization_source: str, target: str, half: bool = False) -> str:
    """Write the combined checkpoint to ``target`` (path or s3:// URI); returns its sha256.

    Each source must have trained the part taken from it (or everything): a swapped pair would
    otherwise give an untrained restoration or a grey colour head without a word.
    """
    restoration = load_checkpoint(restoration_source)
    colorization = load_checkpoint(colorization_source)
    _require_part(restoration, "restoration", "--restoration")
    _require_part(colorization, "colorization", "--colorization")
    model = combine_models(restoration.model, colorization.model)
    metadata: dict[str, Any] = {
        "training_steps": _sum_steps(restoration.metadata, colorization.metadata),
        "dataset": colorization.metadata.get("dataset") or restoration.metadata.get("dataset"),
        "notes": "pikfix combine: restoration and colorization trained as separate parts",
        "parts": {
            "restoration": _part_record(restoration.source, restoration.sha256, restoration.metadata),
            "colorization": _part_record(colorization.source, colorization.sha256, colorization.metadata),
        },
    }
    return save_checkpoint(target, model, metadata, half=half)


def _sum_steps(*metadata: dict[str, Any]) -> int | None:
    steps = [m.get("training_steps") for m in metadata]
    return sum(steps) if all(isinstance(s, int) for s in steps) else None


def _part_record(source: str, sha256: str, metadata: dict[str, Any]) -> dict[str, Any]:
    return {
        "source": source.rsplit("/", 1)[-1],
        "sha256": sha256,
        "training_steps": metadata.get("training_steps"),
        "train": metadata.get("train"),
    }


def options() -> list[click.Option]:
    """``pikfix combine``'s options."""
    return [
        click.Option(["--restoration"], required=True, help="checkpoint whose restoration sub-net is kept"),
        click.Option(["--colorization"], required=True,
                     help="checkpoint whose similarity, SPHist and colorization sub-nets are kept"),
        click.Option(["--out"], required=True, help="where to write the combined checkpoint (path or s3://)"),
        click.Option(["--half"], is_flag=True, help="store fp16 tensors (half the size)"),
    ]


def combine_command(args: SimpleNamespace) -> int:
    try:
        digest = combine_checkpoints(args.restoration, args.colorization, args.out, half=args.half)
    except CheckpointError as exc:
        log.error("%s", exc)
        return 2
    print(f"combined checkpoint written to {args.out} (sha256 {digest})")
    return 0
