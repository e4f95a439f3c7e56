"""Training data and the training loop: determinism, reference strategies, loss falls, resume, budget."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pikfix.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pikfix.color import rgb_to_model_space
from pikfix.combine import combine_checkpoints
from pikfix.config import PikFixConfig
from pikfix.datasets import PhotoDataset, batch_iterator, split_photos
from pikfix.losses import LossWeights
from pikfix.model import PikFix
from pikfix.train import TrainConfig, Trainer, TrainError, train
from service.cli import main, parse_args

TINY = PikFixConfig.tiny()
OTHER = dataclasses.replace(TINY, rdn_blocks=2)  # another architecture: --init and combine refuse it
HUES = {"red": (0.85, 0.25, 0.2), "green": (0.2, 0.7, 0.25), "blue": (0.2, 0.3, 0.85)}


def synthetic_photo(colour: tuple[float, float, float], seed: int, size: tuple[int, int] = (128, 160)) -> np.ndarray:
    """A photo-like image dominated by one colour: shaded gradient, blobs and fine texture."""
    rng = np.random.default_rng(seed)
    h, w = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    shade = 0.55 + 0.35 * np.sin(x / 23.0 + seed) * np.cos(y / 31.0)
    img = shade[..., None] * np.asarray(colour, dtype=np.float32)
    for _ in range(4):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(8, 24)
        blob = ((y - cy) ** 2 + (x - cx) ** 2) < r**2
        img[blob] = img[blob] * 0.5 + 0.5 * rng.uniform(0.2, 1.0)
    img += rng.normal(0, 0.02, img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0)


def write_png(path: Path, rgb: np.ndarray) -> Path:
    Image.fromarray(np.round(rgb * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for i, (name, colour) in enumerate(HUES.items()):
        write_png(folder / f"{name}.png", synthetic_photo(colour, seed=i))
    return folder


@pytest.fixture(scope="module")
def dataset(photo_dir: Path) -> PhotoDataset:
    return PhotoDataset(sorted(photo_dir.glob("*.png")), crop=64, seed=7, crops_per_photo=2)


def tiny_config(photo_dir: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(
        photos=[str(p) for p in sorted(photo_dir.glob("*.png"))],
        out=str(out),
        model_config=TINY,
        crop=64,
        batch_size=2,
        crops_per_photo=4,
        epochs=100,
        severity=0.5,
        perceptual_stages=1,
        checkpoint_every=0,
        progress=False,
        log_every=0,
        threads=1,  # several threads only fight each other on a busy machine
    )
    values.update(overrides)
    return TrainConfig(**values)


# ------------------------------------------------------------------------------------------ data


def test_split_is_by_name_hash_stable_and_disjoint(tmp_path: Path) -> None:
    names = [f"photo_{i:02d}.png" for i in range(20)]
    first, second = tmp_path / "a", tmp_path / "b"
    for folder, order in ((first, names), (second, names[::-1])):
        folder.mkdir()
        for name in order:
            write_png(folder / name, np.zeros((8, 8, 3), np.float32))
    (first / "notes.txt").write_text("not a photo")
    train_a, val_a = split_photos(first, 0.15)
    train_b, val_b = split_photos(second, 0.15)
    assert [p.name for p in val_a] == [p.name for p in val_b]  # depends on names only
    assert [p.name for p in train_a] == [p.name for p in train_b]
    assert len(val_a) == 3 and len(train_a) == 17
    assert not {p.name for p in val_a} & {p.name for p in train_a}
    assert split_photos(first, 0.15) == (train_a, val_a)
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    for name in ("x.png", "y.png"):
        write_png(tiny / name, np.zeros((8, 8, 3), np.float32))
    assert [len(part) for part in split_photos(tiny, 0.15)] == [1, 1]


def test_samples_are_deterministic_given_seed_epoch_and_index(dataset: PhotoDataset, photo_dir: Path) -> None:
    a, b = dataset.sample(3, epoch=1), dataset.sample(3, epoch=1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    again = PhotoDataset(sorted(photo_dir.glob("*.png")), crop=64, seed=7, crops_per_photo=2)
    c = again.sample(3, epoch=1)
    assert all(torch.equal(a[k], c[k]) for k in a)
    assert not torch.equal(a["gray"], dataset.sample(4, epoch=1)["gray"])
    other_seed = PhotoDataset(sorted(photo_dir.glob("*.png")), crop=64, seed=8, crops_per_photo=2)
    assert not torch.equal(a["gray"], other_seed.sample(3, epoch=1)["gray"])
    assert dataset.order(2) == again.order(2) and sorted(dataset.order(2)) == list(range(len(dataset)))
    batches = batch_iterator(dataset, 0, 2)
    assert len(batches) == len(dataset) // 2 and batch_iterator(dataset, 0, 2, start_batch=1) == batches[1:]


def _dominant_photo(rgb: torch.Tensor) -> str:
    channel = int(rgb.mean(dim=(1, 2)).argmax())
    return list(HUES)[channel]


@pytest.mark.parametrize("epoch, strategy", [(0, "same"), (1, "other"), (2, "same")])
def test_reference_strategies_alternate_and_have_the_right_shapes(
    dataset: PhotoDataset, epoch: int, strategy: str
) -> None:
    assert dataset.strategy_for(epoch) == strategy
    for index in range(len(dataset)):
        s = dataset.sample(index, epoch)
        assert s["gray"].shape == (1, 64, 64) and s["target_l"].shape == (1, 64, 64)
        assert s["target_ab"].shape == (2, 64, 64) and s["target_rgb"].shape == (3, 64, 64)
        assert s["reference"].shape == (3, 64, 64) and s["mask"].shape == (1, 64, 64)
        assert float(s["gray"].min()) >= 0.0 and float(s["gray"].max()) <= 1.0
        assert float(s["reference"].min()) >= 0.0 and float(s["reference"].max()) <= 1.0
        assert float(s["target_ab"].abs().max()) <= 1.0
        target_l, target_ab = rgb_to_model_space(s["target_rgb"][None])
        assert torch.allclose(target_l[0], s["target_l"]) and torch.allclose(target_ab[0], s["target_ab"])
        assert float((s["gray"] - s["target_l"]).abs().mean()) > 1e-3  # the input is degraded
        own = _dominant_photo(s["target_rgb"])
        if strategy == "same":  # a jittered crop of the same photo keeps its dominant colour
            assert _dominant_photo(s["reference"]) == own
            assert not torch.equal(s["reference"], s["target_rgb"])  # another location, warped, jittered
        else:
            assert _dominant_photo(s["reference"]) != own


# ------------------------------------------------------------------------------------------ training


def test_tiny_training_run_lowers_the_loss(photo_dir: Path, tmp_path: Path) -> None:
    # Photos of one colour family and no damage beyond the grey conversion: a task a tiny network
    # visibly learns in 40 steps (the luminance curve and the photos' chroma), so the check is robust.
    warm = [(0.85, 0.3, 0.2), (0.9, 0.5, 0.2), (0.8, 0.25, 0.35)]
    photos = [str(write_png(tmp_path / f"warm{i}.png", synthetic_photo(c, seed=i))) for i, c in enumerate(warm)]
    result = train(tiny_config(photo_dir, tmp_path / "run", photos=photos, max_steps=40, lr=1e-3, severity=0.0))
    assert result.steps == 40 and result.stopped_because == "max_steps"
    rows = [json.loads(line) for line in (tmp_path / "run" / "losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 41))
    for key in ("total", "l1_chroma"):
        first = np.mean([r[key] for r in rows[:10]])
        last = np.mean([r[key] for r in rows[-10:]])
        assert last < 0.9 * first, (key, first, last)
    assert (tmp_path / "run" / "loss_curve.png").stat().st_size > 1000
    loaded = load_checkpoint(result.checkpoint)
    assert loaded.metadata["training_steps"] == 40 and loaded.config == TINY
    assert loaded.metadata["perceptual_vgg"] == "random-init"


def test_resume_continues_from_the_saved_step(photo_dir: Path, tmp_path: Path) -> None:
    straight = train(tiny_config(photo_dir, tmp_path / "straight", max_steps=8))
    first = train(tiny_config(photo_dir, tmp_path / "split", max_steps=5))
    assert first.steps == 5
    with pytest.raises(TrainError, match="already holds a run"):
        train(tiny_config(photo_dir, tmp_path / "split", max_steps=8))
    resumed = train(tiny_config(photo_dir, tmp_path / "split", max_steps=8, resume=True))
    assert resumed.steps == 8 and len(resumed.losses) == 8
    assert [r["step"] for r in resumed.losses] == list(range(1, 9))
    # same samples, same optimiser moments and learning rate: the same weights as an uninterrupted run
    a = load_checkpoint(straight.checkpoint).model.state_dict()
    b = load_checkpoint(resumed.checkpoint).model.state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    assert straight.losses[-1]["total"] == pytest.approx(resumed.losses[-1]["total"], rel=1e-4)
    # an epoch is 6 batches: step 8 is in the second epoch, whose references come from other photos
    assert resumed.epochs_completed == 1 and resumed.losses[-1]["strategy"] == "other"


def test_time_budget_stops_cleanly_and_saves(photo_dir: Path, tmp_path: Path) -> None:
    result = train(tiny_config(photo_dir, tmp_path / "budget", max_minutes=1e-4))
    assert result.stopped_because == "max_minutes" and result.steps == 0
    assert load_checkpoint(result.checkpoint).metadata["training_steps"] == 0
    with pytest.raises(TrainError, match="no training state"):
        train(tiny_config(photo_dir, tmp_path / "empty", resume=True))


def test_command_line_options_map_onto_the_config() -> None:
    args = parse_args(["train", "--data", "photos", "--crop", "96", "--scales", "1,0.5",
                       "--max-minutes", "75", "--resume", "--threads", "2"])
    assert args.crop == 96 and args.scales == (1.0, 0.5) and args.max_minutes == 75.0
    assert args.resume and args.threads == 2 and args.lr == 1e-4 and args.config == "lite"
    defaults = TrainConfig()
    assert defaults.betas == (0.99, 0.999) and defaults.lr_decay == 0.99


def test_sigterm_stops_after_the_current_step_and_saves(photo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "signalled"
    losses = out / "losses.jsonl"

    def send_when_training() -> None:  # the handler is in place once the first step is logged
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if losses.exists() and losses.read_text().strip():
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.05)

    before = signal.getsignal(signal.SIGTERM)
    sender = threading.Thread(target=send_when_training, daemon=True)
    sender.start()
    result = train(tiny_config(photo_dir, out, max_steps=500))
    sender.join(timeout=5)
    assert result.stopped_because == "signal" and 1 <= result.steps < 500
    assert load_checkpoint(result.checkpoint).metadata["training_steps"] == result.steps
    assert signal.getsignal(signal.SIGTERM) == before  # the previous handler is back


# ------------------------------------------------------------------------------------------ parts


def _prefix_changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], prefix: str) -> bool:
    return any(not torch.equal(before[k].float(), after[k].float()) for k in before if k.startswith(prefix))


def _state(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(checkpoint).model.state_dict()


def test_parts_train_only_their_own_sub_nets(photo_dir: Path, tmp_path: Path) -> None:
    start = _state(train(tiny_config(photo_dir, tmp_path / "start", max_steps=0)).checkpoint)
    restoration = _state(
        train(tiny_config(photo_dir, tmp_path / "rest", part="restoration", max_steps=3, lr=1e-3)).checkpoint
    )
    colorization = _state(
        train(tiny_config(photo_dir, tmp_path / "col", part="colorization", max_steps=3, lr=1e-3)).checkpoint
    )
    assert _prefix_changed(start, restoration, "restoration.")
    for prefix in ("similarity.", "colorization.", "sphist."):
        assert not _prefix_changed(start, restoration, prefix), prefix
    assert not _prefix_changed(start, colorization, "restoration.")
    assert _prefix_changed(start, colorization, "colorization.")
    assert _prefix_changed(start, colorization, "similarity.")
    rows = [json.loads(line) for line in (tmp_path / "rest" / "losses.jsonl").read_text().splitlines()]
    assert all(r["l1_chroma"] == 0 and r["emd"] == 0 and r["l1_luminance"] > 0 for r in rows)
    rows = [json.loads(line) for line in (tmp_path / "col" / "losses.jsonl").read_text().splitlines()]
    assert all(r["l1_luminance"] == 0 and r["perceptual"] == 0 and r["l1_chroma"] > 0 for r in rows)


def test_a_fresh_run_starts_from_grey_output(photo_dir: Path, tmp_path: Path) -> None:
    model = load_checkpoint(train(tiny_config(photo_dir, tmp_path / "start", max_steps=0)).checkpoint).model
    gray, reference = torch.rand(1, 1, 64, 64), torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ab = model(gray, reference).ab
    assert float(ab.abs().max()) == 0.0
    # ... and learns colour from there: one step moves the chroma head off zero.
    trained = load_checkpoint(train(tiny_config(photo_dir, tmp_path / "one", max_steps=2, lr=1e-3)).checkpoint).model
    with torch.no_grad():
        assert float(trained(gray, reference).ab.abs().max()) > 0.0


def test_colorization_part_lowers_the_chroma_loss(photo_dir: Path, tmp_path: Path) -> None:
    warm = [(0.85, 0.3, 0.2), (0.9, 0.5, 0.2), (0.8, 0.25, 0.35)]
    photos = [str(write_png(tmp_path / f"warm{i}.png", synthetic_photo(c, seed=i))) for i, c in enumerate(warm)]
    config = tiny_config(photo_dir, tmp_path / "col", photos=photos, part="colorization", max_steps=30, lr=1e-3)
    rows = train(config).losses
    first = np.mean([r["l1_chroma"] for r in rows[:8]])
    last = np.mean([r["l1_chroma"] for r in rows[-8:]])
    assert last < 0.8 * first, (first, last)


def test_emd_and_adversarial_terms_wait_for_the_l1_warmup(photo_dir: Path, tmp_path: Path) -> None:
    weights = LossWeights().as_dict()
    rows = train(tiny_config(photo_dir, tmp_path / "warm", max_steps=5, l1_warmup=3)).losses
    assert [r["adversarial"] == 0 and r["discriminator"] == 0 for r in rows] == [True] * 3 + [False] * 2
    for row in rows:
        in_total = ("l1_luminance", "perceptual", "l1_chroma") + (("emd", "adversarial") if row["step"] > 3 else ())
        assert row["emd"] > 0  # reported during the warm-up too
        assert row["total"] == pytest.approx(sum(weights[k] * row[k] for k in in_total), rel=1e-4, abs=1e-6)


def test_resume_refuses_another_part_and_init_checks_the_architecture(photo_dir: Path, tmp_path: Path) -> None:
    train(tiny_config(photo_dir, tmp_path / "rest", part="restoration", max_steps=1))
    with pytest.raises(TrainError, match="--part"):
        train(tiny_config(photo_dir, tmp_path / "rest", part="colorization", max_steps=2, resume=True))
    with pytest.raises(TrainError, match="unknown part"):
        train(tiny_config(photo_dir, tmp_path / "bad", part="everything"))
    save_checkpoint(tmp_path / "other.pt", PikFix(OTHER))
    with pytest.raises(TrainError, match="another architecture"):
        train(tiny_config(photo_dir, tmp_path / "init", init=str(tmp_path / "other.pt"), max_steps=1))
    with pytest.raises(TrainError, match="--init"):
        train(tiny_config(photo_dir, tmp_path / "init2", init=str(tmp_path / "missing.pt"), max_steps=1))
    train(tiny_config(photo_dir, tmp_path / "warm", part="colorization", max_steps=1, l1_warmup=5))
    with pytest.raises(TrainError, match="--l1-warmup 5"):
        train(tiny_config(photo_dir, tmp_path / "warm", part="colorization", max_steps=2, resume=True))
    with pytest.raises(TrainError, match="--betas 0.99,0.999"):
        train(tiny_config(photo_dir, tmp_path / "rest", part="restoration", max_steps=2, resume=True,
                          betas=(0.9, 0.999)))
    nothing = LossWeights(l1_chroma=0.0, emd=0.0, adversarial=0.0)
    with pytest.raises(TrainError, match="nothing would train"):
        train(tiny_config(photo_dir, tmp_path / "nothing", part="colorization", loss_weights=nothing))


def test_init_starts_from_the_given_weights(photo_dir: Path, tmp_path: Path) -> None:
    first = train(tiny_config(photo_dir, tmp_path / "first", max_steps=2, lr=1e-3))
    again = train(tiny_config(photo_dir, tmp_path / "again", init=str(first.checkpoint), max_steps=0))
    a, b = _state(first.checkpoint), _state(again.checkpoint)
    assert float(a["colorization.head.2.weight"].abs().max()) > 0  # trained off the grey start ...
    assert all(torch.equal(a[k], b[k]) for k in a)  # ... and kept, not zeroed again


def test_combine_joins_the_two_parts(photo_dir: Path, tmp_path: Path) -> None:
    rest = train(tiny_config(photo_dir, tmp_path / "rest", part="restoration", max_steps=2, lr=1e-3)).checkpoint
    col = train(tiny_config(photo_dir, tmp_path / "col", part="colorization", max_steps=2, lr=1e-3, seed=1)).checkpoint
    out = tmp_path / "combined.pt"
    assert main(["combine", "--restoration", str(rest), "--colorization", str(col), "--out", str(out)]) == 0
    combined, r, c = load_checkpoint(out), _state(rest), _state(col)
    state = combined.model.state_dict()
    assert all(torch.equal(state[k], (r if k.startswith("restoration.") else c)[k]) for k in state)
    parts = combined.metadata["parts"]
    assert parts["restoration"]["training_steps"] == 2 and parts["colorization"]["train"]["part"] == "colorization"
    assert combined.metadata["training_steps"] == 4
    save_checkpoint(tmp_path / "other.pt", PikFix(OTHER))
    with pytest.raises(CheckpointError, match="different architectures"):
        combine_checkpoints(str(tmp_path / "other.pt"), str(col), str(tmp_path / "x.pt"))
    assert main(["combine", "--restoration", str(tmp_path / "nope.pt"), "--colorization", str(col),
                 "--out", str(tmp_path / "y.pt")]) == 2
    with pytest.raises(CheckpointError, match="swapped"):
        combine_checkpoints(str(col), str(rest), str(tmp_path / "z.pt"))
    joint = train(tiny_config(photo_dir, tmp_path / "joint", max_steps=1)).checkpoint
    combine_checkpoints(str(joint), str(joint), str(tmp_path / "j.pt"))  # a joint run serves both


def test_each_part_optimises_only_its_own_parameters(photo_dir: Path, tmp_path: Path) -> None:
    for part, owners in (("restoration", ("restoration.",)),
                         ("colorization", ("similarity.", "sphist.", "colorization.")),
                         ("all", ("restoration.", "similarity.", "sphist.", "colorization."))):
        trainer = Trainer(tiny_config(photo_dir, tmp_path / part, part=part))
        names = {id(p): n for n, p in trainer.model.named_parameters()}
        optimised = {names[id(p)] for group in trainer.opt_g.param_groups for p in group["params"]}
        expected = {n for n, p in trainer.model.named_parameters() if p.requires_grad and n.startswith(owners)}
        assert optimised == expected, part
