"""Checkpoint format: round trips, integrity checks and clear failures."""

from __future__ import annotations

import hashlib
import io

import pytest
import torch

from pikfix import checkpoint as ckpt
from pikfix.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pikfix.config import PikFixConfig
from pikfix.model import PikFix
from pikfix.uri import configure_s3


@pytest.fixture(scope="module")
def model() -> PikFix:
    torch.manual_seed(0)
    net = PikFix(PikFixConfig.lite())
    # a non-trivial BatchNorm state, so running statistics are part of what must survive
    net.train()
    with torch.no_grad():
        net(torch.rand(2, 1, 64, 64), torch.rand(2, 3, 64, 64))
    return net.eval()


@pytest.fixture(scope="module")
def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(1, 1, 64, 64, generator=gen), torch.rand(1, 3, 64, 64, generator=gen)


def _outputs(net: PikFix, inputs: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out = net(*inputs)
    return out.restored, out.ab


def test_fp32_round_trip_is_exact(tmp_path, model, inputs) -> None:
    target = tmp_path / "m.pt"
    meta = {"training_steps": 1200, "dataset": "div2k-subset", "notes": "unit test"}
    digest = save_checkpoint(target, model, metadata=meta)
    assert digest == hashlib.sha256(target.read_bytes()).hexdigest()
    loaded = load_checkpoint(target, expected_sha256=digest)
    assert loaded.sha256 == digest and loaded.source == str(target)
    assert loaded.config == model.config and not loaded.model.training
    assert loaded.metadata["training_steps"] == 1200 and loaded.metadata["dataset"] == "div2k-subset"
    assert loaded.metadata["created_at"]
    for ours, theirs in zip(_outputs(model, inputs), _outputs(loaded.model, inputs), strict=True):
        assert torch.equal(ours, theirs)


def test_half_round_trip_is_close_and_small(tmp_path, model, inputs) -> None:
    full, half = tmp_path / "full.pt", tmp_path / "half.pt"
    save_checkpoint(full, model)
    save_checkpoint(half, model, half=True)
    assert half.stat().st_size < 0.55 * full.stat().st_size
    assert half.stat().st_size < 10 * 1024 * 1024  # the shipped lite checkpoint stays a few MB
    loaded = load_checkpoint(half)
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    restored, ab = _outputs(loaded.model, inputs)
    ref_restored, ref_ab = _outputs(model, inputs)
    torch.testing.assert_close(restored, ref_restored, atol=2e-3, rtol=0)
    torch.testing.assert_close(ab, ref_ab, atol=2e-3, rtol=0)


def test_sha_mismatch_is_rejected(tmp_path, model) -> None:
    target = tmp_path / "m.pt"
    save_checkpoint(target, model)
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_checkpoint(target, expected_sha256="0" * 64)


def test_wrong_files_raise_checkpoint_error(tmp_path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(garbage)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(CheckpointError, match="not a pikfix-checkpoint"):
        load_checkpoint(other)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_mismatched_state_dict_is_rejected(tmp_path, model) -> None:
    buffer = io.BytesIO(ckpt.checkpoint_bytes(model))
    payload = torch.load(buffer, weights_only=True)
    payload["config"]["rdn_width"] = 16  # architecture no longer matches the weights
    bad = tmp_path / "bad.pt"
    torch.save(payload, bad)
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(bad)
    payload["version"] = 99
    torch.save(payload, bad)
    with pytest.raises(CheckpointError, match="version"):
        load_checkpoint(bad)


def test_missing_default_checkpoint_is_a_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(ckpt, "DEFAULT_CHECKPOINT", tmp_path / "weights" / "pikfix-lite.pt")
    with pytest.raises(CheckpointError, match="no default checkpoint"):
        load_checkpoint(None)


def test_metadata_must_be_plain_values(tmp_path, model) -> None:
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(tmp_path / "m.pt", model, metadata={"when": object()})


def test_s3_round_trip(monkeypatch, model, s3_bucket) -> None:
    """Through boto3 against moto's standalone S3 server, exactly as production talks to MinIO/AWS."""
    endpoint, bucket = s3_bucket
    for name, value in s3_bucket.env.items():
        monkeypatch.setenv(name, value)
    configure_s3(endpoint_url=endpoint)
    try:
        uri = f"s3://{bucket}/pikfix/lite.pt"
        digest = save_checkpoint(uri, model, half=True)
        loaded = load_checkpoint(uri, expected_sha256=digest)
        assert loaded.sha256 == digest and loaded.source == uri
        with pytest.raises(CheckpointError, match="cannot read"):
            load_checkpoint(f"s3://{bucket}/pikfix/absent.pt")
    finally:
        configure_s3()
