"""Train Pik-Fix on a folder of colour photos (``pikfix train``), following the paper's recipe (section 4.1).

``--part`` trains the whole graph (``all``, as the paper does) or one half, ``restoration`` or
``colorization``, which ``pikfix combine`` joins, so on a CPU the halves train side by side. A run
folder keeps the full training state, so ``--resume`` continues exactly and ``--max-minutes``, SIGTERM
or Ctrl-C always leave a checkpoint. The recipe (optimisers, parts, warm-up) is docs/model.md section 2;
the run folder and resume are in its "Notes on the code".
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import torch
from tqdm import tqdm

from pikfix.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pikfix.color import rgb_to_model_space
from pikfix.config import PikFixConfig
from pikfix.datasets import PhotoDataset, batch_iterator, load_batch, split_photos
from pikfix.inference import resolve_device
from pikfix.losses import TERMS, LossWeights, PikFixLoss, discriminator_width
from pikfix.model import PikFix

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
LAST_CHECKPOINT = "last.pt"
LOSSES_FILE = "losses.jsonl"
CURVE_FILE = "loss_curve.png"
STATE_FORMAT = "pikfix-train-state"
PARTS = ("all", "restoration", "colorization")


class TrainError(RuntimeError):
    """The run cannot start or resume (bad options, missing data, incompatible state)."""


@dataclass
class TrainConfig:
    """Every option of a training run; ``pikfix train`` maps its flags one to one onto these fields."""

    data: str | None = None
    out: str = "runs/lite"
    config: str = "lite"
    val_fraction: float = 0.15
    crop: int = 256
    batch_size: int = 4
    epochs: int = 20
    max_steps: int | None = None
    max_minutes: float | None = None
    lr: float = 1e-4
    lr_decay: float = 0.99
    betas: tuple[float, float] = (0.99, 0.999)
    disc_lr: float = 1e-4
    disc_betas: tuple[float, float] = (0.5, 0.999)
    crops_per_photo: int = 4
    scales: tuple[float, ...] = (1.0,)
    severity: float = 1.0
    perceptual_stages: int = 3
    checkpoint_every: int = 500
    resume: bool = False
    vgg_weights: str | None = None
    backbone_weights: str | None = None
    device: str = "auto"
    seed: int = 0
    threads: int | None = None
    log_every: int = 25
    progress: bool = True
    # Programmatic use only: explicit photo files (instead of the training split of ``data``) and an
    # explicit architecture (instead of the named preset), e.g. for tiny test runs.
    photos: list[str] | None = None
    model_config: PikFixConfig | None = None
    loss_weights: LossWeights = field(default_factory=LossWeights)
    part: str = "all"
    l1_warmup: int = 0
    init: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["model_config"] = self.architecture().to_dict()
        data["photos"] = [Path(p).name for p in self.photos] if self.photos else None
        return data

    def part_weights(self) -> LossWeights:
        """The loss weights with the terms of the sub-nets this run does not train set to zero."""
        weights = self.loss_weights.as_dict()
        if self.part == "restoration":
            weights.update(emd=0.0, l1_chroma=0.0, adversarial=0.0)
        elif self.part == "colorization":
            weights.update(l1_luminance=0.0, perceptual=0.0)
        return LossWeights(**weights)

    def architecture(self) -> PikFixConfig:
        return self.model_config or PikFixConfig.named(self.config)


@dataclass
class TrainResult:
    steps: int
    epochs_completed: int
    stopped_because: str  # "epochs", "max_steps", "max_minutes", "signal"
    seconds: float
    steps_per_second: float
    checkpoint: Path
    run_dir: Path
    losses: list[dict[str, Any]]


def part_modules(model: PikFix, part: str) -> torch.nn.Module:
    """The sub-nets a run of ``part`` trains: restoration alone, or similarity + SPHist + colorization."""
    if part == "restoration":
        return model.restoration
    if part == "colorization":
        return torch.nn.ModuleList([model.similarity, model.sphist, model.colorization])
    return model


def start_grey(model: PikFix) -> None:
    """Zero the chroma head's last convolution, so a fresh run starts from grey output (ab = 0).

    The L1 chroma loss then starts at the mean |ab| of the data instead of at random colours (about twice
    that), and a short CPU run never ships a net whose untrained corners paint strong false colour.
    The head stays trainable: the weights' gradient is the product of its input and the output gradient.
    """
    last = [m for m in model.colorization.head if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last.weight.zero_()
        if last.bias is not None:
            last.bias.zero_()


def _training_photos(config: TrainConfig) -> list[str]:
    if config.photos:
        return [str(p) for p in config.photos]
    if not config.data:
        raise TrainError("no training data: pass --data FOLDER")
    train, val = split_photos(config.data, config.val_fraction)
    log.info("data %s: %d training photos, %d held out for validation", config.data, len(train), len(val))
    if not train:
        raise TrainError(f"no training photos left in {config.data} after the validation split")
    return [str(p) for p in train]


def _atomic_torch_save(payload: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


class Trainer:
    """One training run: model, losses, optimisers and the bookkeeping of the run folder."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        if config.batch_size < 1 or config.crop < 64:
            raise TrainError("batch size must be >= 1 and crop >= 64 (the colorization net's minimum)")
        if config.part not in PARTS:
            raise TrainError(f"unknown part {config.part!r}; expected one of {', '.join(PARTS)}")
        if config.l1_warmup < 0:
            raise TrainError("--l1-warmup must be >= 0 steps")
        if not any(config.part_weights().as_dict().values()):
            raise TrainError(f"every loss weight of part {config.part!r} is zero: nothing would train")
        if config.threads:
            torch.set_num_threads(config.threads)
        self.device = resolve_device(config.device)
        self.run_dir = Path(config.out)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "checkpoints").mkdir(exist_ok=True)

        torch.manual_seed(config.seed)
        self.photos = _training_photos(config)
        self.dataset = PhotoDataset(
            self.photos,
            crop=config.crop,
            seed=config.seed,
            severity=config.severity,
            crops_per_photo=config.crops_per_photo,
            scales=config.scales,
        )
        self.batches_per_epoch = len(self.dataset) // config.batch_size
        if self.batches_per_epoch == 0:
            raise TrainError(
                f"an epoch has {len(self.dataset)} samples, fewer than the batch size {config.batch_size}"
            )
        arch = config.architecture()
        self.model = PikFix(arch, backbone_weights=config.backbone_weights)
        if config.resume:
            pass  # the weights come from state.pt (load_state)
        elif config.init:
            self._init_from(config.init)
        else:
            start_grey(self.model)
        self.model.to(self.device)
        self.loss = PikFixLoss(
            config.part_weights(),
            vgg_weights=config.vgg_weights,
            perceptual_stages=config.perceptual_stages,
            discriminator_base=discriminator_width(arch.name),
        ).to(self.device)
        if self.loss.perceptual is not None and not self.loss.perceptual.pretrained:
            log.warning(
                "perceptual loss: VGG19 has NO ImageNet weights (random init, fixed seed); pass --vgg-weights "
                "with a torchvision vgg19 state_dict for the paper's perceptual loss"
            )
        elif self.loss.perceptual is not None:
            log.info("perceptual loss: VGG19 ImageNet weights from %s", config.vgg_weights)
        params = [p for p in part_modules(self.model, config.part).parameters() if p.requires_grad]
        self.opt_g = torch.optim.Adam(params, lr=config.lr, betas=tuple(config.betas))
        self.opt_d = (
            torch.optim.Adam(self.loss.discriminator.parameters(), lr=config.disc_lr, betas=tuple(config.disc_betas))
            if self.loss.discriminator is not None
            else None
        )
        self.use_amp = self.device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if self.use_amp and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        log.info(
            "model %s: %.2f M parameters (%.2f M trainable), discriminator %.2f M, device %s",
            arch.name,
            self.model.num_parameters() / 1e6,
            self.model.num_parameters(trainable_only=True) / 1e6,
            sum(p.numel() for p in self.loss.discriminator.parameters()) / 1e6 if self.loss.discriminator else 0.0,
            self.device,
        )

    def _init_from(self, source: str) -> None:
        """Start from the weights of a pikfix checkpoint of the same architecture (not a resume)."""
        try:
            loaded = load_checkpoint(source)
        except CheckpointError as exc:
            raise TrainError(f"--init: {exc}") from exc
        if loaded.config.to_dict() != self.model.config.to_dict():
            raise TrainError(f"--init {source} has another architecture than --config {self.config.config}")
        self.model.load_state_dict({k: v.float() for k, v in loaded.model.state_dict().items()})
        log.info("initialised from %s (sha256 %s)", source, loaded.sha256[:12])

    # ------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "format": STATE_FORMAT,
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "model": self.model.state_dict(),
            "model_config": self.model.config.to_dict(),
            "loss": self.loss.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict() if self.opt_d is not None else None,
            "scaler": self.scaler.state_dict(),
            "torch_rng": torch.random.get_rng_state(),
            "seed": self.config.seed,
            "crop": self.config.crop,
            "batch_size": self.config.batch_size,
            "part": self.config.part,
            "l1_warmup": self.config.l1_warmup,
            "betas": list(self.config.betas),
        }
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def load_state(self, path: Path) -> None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise TrainError(f"cannot read training state {path}: {exc}") from exc
        if state.get("format") != STATE_FORMAT:
            raise TrainError(f"{path} is not a training state file")
        if state["model_config"] != self.model.config.to_dict():
            raise TrainError(f"{path} was trained with another architecture than --config {self.config.config}")
        if state.get("part", "all") != self.config.part:
            raise TrainError(f"{path} trained part {state.get('part', 'all')!r}; resume with the same --part")
        for key in ("seed", "batch_size", "crop"):
            if state[key] != getattr(self.config, key):
                raise TrainError(f"{path} used {key}={state[key]}; resume with the same value")
        # Recorded since the parts were introduced; older states resume as they always did.
        if "l1_warmup" in state and state["l1_warmup"] != self.config.l1_warmup:
            raise TrainError(f"{path} used --l1-warmup {state['l1_warmup']}; resume with the same value")
        if "betas" in state and tuple(state["betas"]) != tuple(self.config.betas):
            betas = ",".join(str(b) for b in state["betas"])
            raise TrainError(f"{path} used --betas {betas}; resume with the same value")
        self.model.load_state_dict(state["model"])
        self.loss.load_state_dict(state["loss"])
        self.opt_g.load_state_dict(state["opt_g"])
        if self.opt_d is not None and state["opt_d"] is not None:
            self.opt_d.load_state_dict(state["opt_d"])
        self.scaler.load_state_dict(state["scaler"])
        torch.random.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        log.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.step, self.epoch, self.batch_in_epoch)

    def metadata(self) -> dict[str, Any]:
        perceptual = self.loss.perceptual
        return {
            "training_steps": self.step,
            "epochs": self.epoch + self.batch_in_epoch / self.batches_per_epoch,
            "dataset": f"{Path(self.config.data).name if self.config.data else 'photos'} "
            f"({len(self.photos)} training photos)",
            "notes": f"pikfix train --config {self.model.config.name} --part {self.config.part} "
            f"--crop {self.config.crop} --batch-size {self.config.batch_size} --seed {self.config.seed}",
            "perceptual_vgg": "unused" if perceptual is None
            else "imagenet" if perceptual.pretrained else "random-init",
            "train": {k: v for k, v in self.config.to_json().items() if k not in ("data", "out", "model_config")},
        }

    def save(self) -> Path:
        """Write the training state, the latest model and a step checkpoint (pikfix format)."""
        _atomic_torch_save(self.state_dict(), self.run_dir / STATE_FILE)
        meta = self.metadata()
        step_path = self.run_dir / "checkpoints" / f"step-{self.step:07d}.pt"
        save_checkpoint(step_path, self.model, meta)
        last = self.run_dir / LAST_CHECKPOINT
        save_checkpoint(last, self.model, meta)
        return last

    # ------------------------------------------------------------------------------------ steps
    def _autocast(self):
        if not self.use_amp:
            return nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def lr_for(self, epoch: int) -> float:
        return self.config.lr * self.config.lr_decay**epoch

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One generator update and, when the adversarial term is on, one discriminator update."""
        self.model.train()
        self.loss.train()
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        warm = self.step < self.config.l1_warmup  # L1 terms only: EMD and adversarial are held back
        adversarial = self.loss.discriminator is not None and not warm
        held = ("emd", "adversarial") if warm else ()
        part = self.config.part
        with self._autocast():
            if part == "restoration":
                terms = self.loss.weighted(self.loss.restoration_terms(self.model.restore(batch["gray"]), batch["target_l"]))
                fake_ab = None
            elif part == "colorization":
                fake_ab, col_terms = self._colorization_terms(batch, adversarial)
                terms = self.loss.weighted(col_terms, held)
            else:
                output = self.model(batch["gray"], batch["reference"])
                terms = self.loss.generator(output, batch["target_l"], batch["target_ab"], adversarial, held)
                fake_ab = output.ab
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler.scale(terms.total).backward()
        self.scaler.step(self.opt_g)
        values = terms.as_floats()
        if self.opt_d is not None and adversarial and fake_ab is not None:
            with self._autocast():
                d_loss = self.loss.discriminator_loss(fake_ab, batch["target_l"], batch["target_ab"])
            self.opt_d.zero_grad(set_to_none=True)
            self.scaler.scale(d_loss).backward()
            self.scaler.step(self.opt_d)
            values["discriminator"] = float(d_loss.detach())
        elif self.opt_d is not None:
            values["discriminator"] = 0.0
        self.scaler.update()
        return values

    def _colorization_terms(
        self, batch: dict[str, torch.Tensor], adversarial: bool
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Colorization trained on its own: it sees the ground-truth luminance (teacher forcing), so
        it does not wait for, or depend on, the restoration sub-net being trained."""
        ref_l, ref_ab = rgb_to_model_space(batch["reference"])
        ab = self.model.colorize(batch["target_l"], ref_l, ref_ab).ab
        sphist = self.model.sphist
        terms = self.loss.colorization_terms(
            ab, sphist.global_histogram(ab), sphist.global_histogram(ref_ab),
            batch["target_l"], batch["target_ab"], adversarial,
        )
        return ab, terms

    def _set_lr(self) -> float:
        lr = self.lr_for(self.epoch)
        for group in self.opt_g.param_groups:
            group["lr"] = lr
        if self.opt_d is not None:
            for group in self.opt_d.param_groups:
                group["lr"] = self.config.disc_lr * self.config.lr_decay**self.epoch
        return lr

    def batches(self) -> Iterator[tuple[int, list[int]]]:
        """(epoch, indices) from the current position to the end of the last epoch.

        The caller advances ``batch_in_epoch`` (and ``epoch`` when an epoch completes) after each step,
        so the position always names the next batch to train, which is what a saved state records.
        """
        while self.epoch < self.config.epochs:
            epoch = self.epoch
            yield from ((epoch, indices) for indices in batch_iterator(
                self.dataset, epoch, self.config.batch_size, self.batch_in_epoch
            ))


def _truncate_losses(path: Path, step: int) -> list[dict[str, Any]]:
    """Keep the logged steps up to ``step`` (a resumed run repeats the steps after its last save)."""
    if not path.exists():
        return []
    kept = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    kept = [row for row in kept if row["step"] <= step]
    path.write_text("".join(json.dumps(row) + "\n" for row in kept))
    return kept


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """SIGTERM/SIGINT ask the loop to stop after the current step, so a killed run still saves."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return

    def handler(signum: int, _frame: object) -> None:
        log.warning("signal %d: stopping after this step and saving", signum)
        event.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield event
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def plot_losses(rows: list[dict[str, Any]], path: Path) -> None:
    """Loss curves (raw and a moving average) of each term, log-scaled, as a PNG."""
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in ("total", *TERMS, "discriminator") if n in rows[0]]
    cols = 4
    fig, axes = plt.subplots(math.ceil(len(names) / cols), cols, figsize=(4 * cols, 3 * math.ceil(len(names) / cols)))
    steps = [r["step"] for r in rows]
    window = max(1, len(rows) // 50)
    for ax, name in zip(axes.flat, names, strict=False):
        values = [r[name] for r in rows]
        ax.plot(steps, values, color="0.75", linewidth=0.6)
        smooth = [sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1])
                  for i in range(len(values))]
        ax.plot(steps, smooth, color="C0", linewidth=1.2)
        ax.set_title(name)
        ax.set_xlabel("step")
        if min(values) > 0:
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train(config: TrainConfig) -> TrainResult:
    """Run (or resume) training until the epochs, --max-steps or --max-minutes run out."""
    started = time.monotonic()
    trainer = Trainer(config)
    state_path = trainer.run_dir / STATE_FILE
    if config.resume:
        if not state_path.exists():
            raise TrainError(f"--resume: no training state in {trainer.run_dir}")
        trainer.load_state(state_path)
    elif state_path.exists():
        raise TrainError(f"{trainer.run_dir} already holds a run; pass --resume or choose another --out")
    (trainer.run_dir / "train_config.json").write_text(json.dumps(config.to_json(), indent=2))
    losses_path = trainer.run_dir / LOSSES_FILE
    rows = _truncate_losses(losses_path, trainer.step)

    total_steps = trainer.batches_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    budget = config.max_minutes * 60.0 if config.max_minutes else math.inf
    interactive = sys.stderr.isatty()
    bar = tqdm(
        total=total_steps,
        initial=trainer.step,
        disable=not config.progress,
        mininterval=0.5 if interactive else 60.0,
        dynamic_ncols=True,
        desc="train",
    )
    stopped = "epochs"
    first_step = trainer.step
    step_times: list[float] = []
    save_seconds = 5.0  # until the first save is timed
    with losses_path.open("a") as losses_file, _stop_on_signals() as stop_requested:
        for epoch, indices in trainer.batches():
            if trainer.step >= total_steps:
                stopped = "max_steps"
                break
            if stop_requested.is_set():
                stopped = "signal"
                break
            recent = sorted(step_times[-20:])
            typical = recent[len(recent) // 2] if recent else 0.0
            if time.monotonic() - started + typical + save_seconds > budget:
                stopped = "max_minutes"
                break
            t0 = time.monotonic()
            lr = trainer._set_lr()
            batch = load_batch(trainer.dataset, indices, epoch)
            values = trainer.train_step(batch)
            trainer.step += 1
            trainer.batch_in_epoch += 1
            if trainer.batch_in_epoch == trainer.batches_per_epoch:  # epoch done: record the next position
                trainer.epoch, trainer.batch_in_epoch = epoch + 1, 0
            step_times.append(time.monotonic() - t0)
            row = {"step": trainer.step, "epoch": epoch, "lr": lr, "strategy": trainer.dataset.strategy_for(epoch)}
            row.update({k: round(v, 6) for k, v in values.items()})
            row["seconds"] = round(step_times[-1], 3)
            rows.append(row)
            losses_file.write(json.dumps(row) + "\n")
            losses_file.flush()
            bar.update(1)
            bar.set_postfix(
                total=f"{values['total']:.3f}", L=f"{values['l1_luminance']:.3f}",
                ab=f"{values['l1_chroma']:.3f}", emd=f"{values['emd']:.3f}", refresh=False,
            )
            if config.log_every and trainer.step % config.log_every == 0:
                window = step_times[-config.log_every:]
                log.info(
                    "step %d epoch %d lr %.2e %s | %.2f s/step",
                    trainer.step, epoch, lr, " ".join(f"{k}={v:.4f}" for k, v in values.items()),
                    sum(window) / len(window),
                )
            if config.checkpoint_every and trainer.step % config.checkpoint_every == 0:
                t_save = time.monotonic()
                trainer.save()
                plot_losses(rows, trainer.run_dir / CURVE_FILE)
                save_seconds = time.monotonic() - t_save
    bar.close()
    checkpoint = trainer.save()
    plot_losses(rows, trainer.run_dir / CURVE_FILE)
    seconds = time.monotonic() - started
    done = trainer.step - first_step
    train_seconds = sum(step_times)
    result = TrainResult(
        steps=trainer.step,
        epochs_completed=trainer.epoch,
        stopped_because=stopped,
        seconds=seconds,
        steps_per_second=done / train_seconds if train_seconds else 0.0,
        checkpoint=checkpoint,
        run_dir=trainer.run_dir,
        losses=rows,
    )
    log.info(
        "stopped (%s) at step %d, epoch %d after %.1f min (%.3f steps/s); checkpoint %s",
        stopped, result.steps, result.epochs_completed, seconds / 60, result.steps_per_second, checkpoint,
    )
    return result


class _Floats(click.ParamType):
    name = "numbers"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[float, ...]:
        if isinstance(value, tuple):  # the default
            return value
        try:
            return tuple(float(x) for x in value.split(",") if x.strip())
        except ValueError:
            self.fail(f"expected comma-separated numbers, got {value!r}", param, ctx)


def options() -> list[click.Option]:
    """``pikfix train``'s options, with TrainConfig's defaults."""
    d = TrainConfig()
    return [
        click.Option(["--data"], required=True, help="folder of colour photos (jpg/png)"),
        click.Option(["--val-fraction"], type=float, default=d.val_fraction,
                     help="share of photos held out for validation (by file-name hash)"),
        click.Option(["--config"], type=click.Choice(["lite", "paper"]), default=d.config),
        click.Option(["--crop"], type=int, default=d.crop, help="training crop size in pixels (>= 64)"),
        click.Option(["--batch-size"], type=int, default=d.batch_size),
        click.Option(["--epochs"], type=int, default=d.epochs),
        click.Option(["--crops-per-photo"], type=int, default=d.crops_per_photo,
                     help="samples per photo per epoch (epoch length)"),
        click.Option(["--scales"], type=_Floats(), default=d.scales,
                     help="comma-separated photo scales drawn per sample, e.g. 1,0.5,0.3"),
        click.Option(["--max-steps"], type=int),
        click.Option(["--max-minutes"], type=float, help="time budget; stops cleanly and saves"),
        click.Option(["--lr"], type=float, default=d.lr),
        click.Option(["--betas"], type=_Floats(), default=d.betas,
                     help="Adam (beta1, beta2) of the generator; the paper's 0.99,0.999 by default"),
        click.Option(["--part"], type=click.Choice(PARTS), default=d.part,
                     help="train every sub-net (all), only restoration, or only similarity+colorization "
                     "(on ground-truth luminance); combine two part runs with 'pikfix combine'"),
        click.Option(["--l1-warmup"], type=int, default=d.l1_warmup,
                     help="steps trained on the L1 terms alone before the EMD and adversarial terms start"),
        click.Option(["--init"], help="start from the weights of this pikfix checkpoint"),
        click.Option(["--lr-decay"], type=float, default=d.lr_decay, help="learning-rate factor per epoch"),
        click.Option(["--severity"], type=float, default=d.severity, help="degradation severity"),
        click.Option(["--perceptual-stages"], type=click.IntRange(1, 5), default=d.perceptual_stages,
                     help="VGG19 stages used by the perceptual loss"),
        click.Option(["--out"], default=d.out, help="run folder"),
        click.Option(["--checkpoint-every"], type=int, default=d.checkpoint_every, help="steps between saves"),
        click.Option(["--resume"], is_flag=True, help="continue the run in --out from its state.pt"),
        click.Option(["--vgg-weights"], help="torchvision vgg19 state_dict for the perceptual loss"),
        click.Option(["--backbone-weights"],
                     help="torchvision resnet34 state_dict for the similarity sub-net (paper config)"),
        click.Option(["--device"], default=d.device, help="auto, cpu, cuda, cuda:1 ..."),
        click.Option(["--seed"], type=int, default=d.seed),
        click.Option(["--threads"], type=int, help="CPU threads for torch"),
        click.Option(["--log-every"], type=int, default=d.log_every),
        click.Option(["--no-progress", "progress"], is_flag=True, flag_value=False, default=True,
                     help="no tqdm progress bar"),
    ]


def train_command(args: SimpleNamespace) -> int:
    config = TrainConfig(**vars(args))  # every option is a TrainConfig field
    try:
        result = train(config)
    except TrainError as exc:
        log.error("%s", exc)
        return 2
    print(
        f"trained {result.steps} steps ({result.stopped_because}), {result.steps_per_second:.3f} steps/s; "
        f"checkpoint: {result.checkpoint}"
    )
    return 0
