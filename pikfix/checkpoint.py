"""The one checkpoint format of Pik-Fix, written and read by path or s3:// URI.

A checkpoint is a ``torch.save`` file of plain values (config, state_dict, metadata), so it loads with
``weights_only=True`` and no pickled code runs on load. Its identity is the sha256 of its bytes, which
jobs record as provenance. The layout is in docs/model.md, "Notes on the code".
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from pikfix.config import PikFixConfig
from pikfix.model import PikFix
from pikfix.uri import read_uri_bytes, write_uri_bytes

FORMAT = "pikfix-checkpoint"
VERSION = 1
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "weights" / "pikfix-lite.pt"


class CheckpointError(Exception):
    """A checkpoint is missing, unreadable, of another format, or not the expected file."""


@dataclass
class LoadedCheckpoint:
    model: PikFix
    config: PikFixConfig
    metadata: dict[str, Any]
    sha256: str
    source: str


def _metadata(extra: dict[str, Any] | None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "training_steps": None,
        "dataset": None,
        "notes": None,
    }
    data.update(extra or {})
    try:  # only JSON-like values survive weights_only loading (and go into image metadata later)
        json.dumps(data)
    except TypeError as exc:
        raise CheckpointError(f"checkpoint metadata must be JSON-serialisable: {exc}") from exc
    return data


def checkpoint_bytes(model: PikFix, metadata: dict[str, Any] | None = None, half: bool = False) -> bytes:
    """Serialise ``model`` in the checkpoint format (fp16 floating tensors when ``half``)."""
    state = {
        k: (v.detach().half() if half and v.is_floating_point() else v.detach()).cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": model.config.to_dict(),
        "state_dict": state,
        "metadata": _metadata(metadata),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def save_checkpoint(
    target: str | Path, model: PikFix, metadata: dict[str, Any] | None = None, half: bool = False
) -> str:
    """Write a checkpoint to a path or s3:// URI; returns the sha256 of the bytes written."""
    data = checkpoint_bytes(model, metadata, half)
    write_uri_bytes(target, data)
    return hashlib.sha256(data).hexdigest()


def _read(source: str) -> bytes:
    try:
        return read_uri_bytes(source)
    except FileNotFoundError as exc:
        raise CheckpointError(f"checkpoint not found: {source}") from exc
    except Exception as exc:  # storage errors (boto3/botocore) must not leak as arbitrary types
        raise CheckpointError(f"cannot read checkpoint {source}: {exc}") from exc


def load_checkpoint(
    source: str | Path | None = None, device: str | torch.device = "cpu", expected_sha256: str | None = None
) -> LoadedCheckpoint:
    """Load a checkpoint (default: the shipped lite weights) into an eval-mode model on ``device``.

    Half-precision checkpoints come back as fp32 models.
    """
    if source is None:
        if not DEFAULT_CHECKPOINT.is_file():
            raise CheckpointError(
                f"no default checkpoint at {DEFAULT_CHECKPOINT}; train one or pass a checkpoint path/URI "
                "(PIKFIX_CHECKPOINT)"
            )
        source = DEFAULT_CHECKPOINT
    source = str(source)
    data = _read(source)
    digest = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and digest != expected_sha256.lower():
        raise CheckpointError(f"sha256 mismatch for {source}: expected {expected_sha256}, got {digest}")
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{source} is not a readable checkpoint: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{source} is not a {FORMAT} file")
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{source} has checkpoint version {payload.get('version')}; this code reads {VERSION}"
        )
    try:
        config = PikFixConfig.from_dict(payload["config"])
        model = PikFix(config)
        model.load_state_dict(payload["state_dict"], strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{source} does not match the Pik-Fix architecture: {exc}") from exc
    model.to(device).eval()
    return LoadedCheckpoint(model, config, dict(payload.get("metadata") or {}), digest, source)
