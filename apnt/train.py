"""`apnt train`: train a model on a Kalantari-layout dataset (DESIGN §6).

One process, or several through `torchrun` (DistributedDataParallel: gloo on CPUs, nccl on GPUs). The data
stream is a pure function of (seed, step): sample p of the run is `perm_e[p mod n]`, `perm_e` a seeded
permutation of epoch `e = p div n`, crops and flips seeded by (seed, epoch, index) — so resuming from a
checkpoint reproduces the uninterrupted run bit for bit, with any number of workers.
"""
from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from apnt import checkpoint
from apnt.tonemap import mu_law


@dataclass
class TrainConfig:
    model: str = "ahdrnet"
    data: str = ""
    out: str = "runs/ahdrnet"
    split: str = "Training"
    steps: int = 1000
    batch: int = 4
    crop: int = 128
    lr: float = 1e-4
    lr_schedule: str = "constant"  # or "cosine" (to 1% of lr at the last step)
    save_every: int = 100
    keep: int = 3
    seed: int = 0
    amp: str = "none"  # "bf16" | "fp16"
    backend: str = "auto"
    resume: bool = False
    init: str | None = None  # weights to start from (a checkpoint, run dir or safetensors file)
    log_every: int = 1
    progress: bool = True
    model_config: dict = field(default_factory=dict)


def mu_law_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The authors' loss: L1 between μ-law (μ = 5000) tonemapped prediction and ground truth."""
    return (mu_law(pred.float()) - mu_law(target.float())).abs().mean()


class _Distributed:
    """torchrun's environment, or a single process."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = (torch.device("cuda", self.local_rank) if torch.cuda.is_available()
                       else torch.device("cpu"))
        if self.world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def mean(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return float(t) / self.world


def _stream_indices(seed: int, n: int, start: int, count: int) -> list[tuple[int, int]]:
    """(epoch, index) of samples start .. start+count of the run's data stream."""
    out, perms = [], {}
    for p in range(start, start + count):
        epoch = p // n
        if epoch not in perms:
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            perms[epoch] = torch.randperm(n, generator=g).tolist()
        out.append((epoch, perms[epoch][p % n]))
    return out


def _batch(dataset, seed: int, step: int, batch: int, rank: int, world: int):
    picks = _stream_indices(seed, len(dataset), (step * world + rank) * batch, batch)
    items = []
    for epoch, index in picks:
        dataset.set_epoch(epoch)
        items.append(dataset[index])
    return ({k: torch.stack([it[k] for it in items]) for k in ("ldr", "exposure", "hdr")},
            picks[-1][0])


def _lr(cfg: TrainConfig, step: int) -> float:
    if cfg.lr_schedule == "cosine":
        return cfg.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * step / max(cfg.steps, 1))))
    return cfg.lr


def _autocast(cfg: TrainConfig, device: torch.device):
    if cfg.amp == "none":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[cfg.amp])


def validate_config(cfg: TrainConfig) -> None:
    from apnt.models import MODELS

    if cfg.model not in MODELS:
        raise ValueError(f"argument '--model': expected one of {', '.join(MODELS)}, got {cfg.model!r}")
    if cfg.amp not in ("none", "bf16", "fp16"):
        raise ValueError(f"argument '--amp': expected none, bf16 or fp16, got {cfg.amp!r}")
    if cfg.lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"argument '--lr-schedule': expected constant or cosine, got {cfg.lr_schedule!r}")
    for name in ("steps", "batch", "crop", "save_every"):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"argument '--{name.replace('_', '-')}': must be positive")
    if not Path(cfg.data).is_dir():
        raise ValueError(f"argument '--data': {cfg.data!r} is not a directory")


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) training; returns the last logged row. Checkpoints go to `cfg.out/step_<n>/`."""
    from apnt import models
    from apnt.data import KalantariDataset

    validate_config(cfg)
    dist = _Distributed()
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed)
    model = models.create(cfg.model, backend=cfg.backend, **cfg.model_config).to(dist.device)
    if cfg.init:
        model.load_state_dict(models.load(cfg.model, cfg.init).state_dict())
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scaler = torch.amp.GradScaler(dist.device.type, enabled=cfg.amp == "fp16")
    start = 0
    if cfg.resume:
        found = checkpoint.latest(out)
        if found is not None:
            state = checkpoint.load(found, model, optimizer)
            start = state["step"]
            if dist.main:
                print(f"resuming from {found} (step {start})")
    dataset = KalantariDataset(cfg.data, cfg.split, crop=cfg.crop, augment=True, seed=cfg.seed)
    net = nn.parallel.DistributedDataParallel(model) if dist.world > 1 else model
    log_path = out / "log.csv"
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        _truncate_log(log_path, start)
    info = {"model": cfg.model, "config": model.config, "train": asdict(cfg), "world_size": dist.world}
    if getattr(model, "vgg_info", None):  # APNT-Fusion: which frozen VGG the weights were trained against
        info["vgg"] = model.vgg_info
    bar = None
    if dist.main and cfg.progress:
        from tqdm import tqdm
        bar = tqdm(total=cfg.steps, initial=start, desc=f"train {cfg.model}", unit="step", dynamic_ncols=True)
    row: dict = {}
    model.train()
    for step in range(start, cfg.steps):
        t0 = time.perf_counter()
        batch, epoch = _batch(dataset, cfg.seed, step, cfg.batch, dist.rank, dist.world)
        batch = {k: v.to(dist.device) for k, v in batch.items()}
        for group in optimizer.param_groups:
            group["lr"] = _lr(cfg, step)
        with _autocast(cfg, dist.device):
            pred = net(batch["ldr"], batch["exposure"])
        loss = mu_law_l1(pred, batch["hdr"])
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        seconds = time.perf_counter() - t0
        loss_value = dist.mean(float(loss.detach()))
        row = {"step": step + 1, "epoch": epoch, "loss": f"{loss_value:.6f}", "lr": f"{_lr(cfg, step):.3g}",
               "seconds": f"{seconds:.3f}", "samples_per_s": f"{cfg.batch * dist.world / seconds:.2f}"}
        if dist.main:
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                _append_log(log_path, row)
            if bar is not None:
                bar.set_postfix(loss=row["loss"])
                bar.update(1)
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
            if dist.main:
                checkpoint.save(out, step + 1, model, optimizer, dict(info, epoch=epoch, loss=loss_value),
                                keep=cfg.keep)
            dist.barrier()
    if bar is not None:
        bar.close()
    return row


_LOG_FIELDS = ["step", "epoch", "loss", "lr", "seconds", "samples_per_s"]


def _truncate_log(path: Path, step: int) -> None:
    """A resumed run rewrites the steps after its checkpoint: drop the rows the crash left behind."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, _LOG_FIELDS)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def _append_log(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, _LOG_FIELDS)
        if new:
            w.writeheader()
        w.writerow(row)


def add_cli(subparsers) -> None:
    d = TrainConfig()
    p = subparsers.add_parser("train", help="train a model on a Kalantari-layout dataset (torchrun for DDP)")
    p.add_argument("--model", default=d.model)
    p.add_argument("--data", required=True, help="dataset root holding Training/ (and Test/)")
    p.add_argument("--out", default=d.out, help="run directory: step_<n>/ checkpoints, latest, log.csv")
    p.add_argument("--split", default=d.split)
    p.add_argument("--steps", type=int, default=d.steps, help="total optimizer steps")
    p.add_argument("--batch", type=int, default=d.batch, help="crops per step per process")
    p.add_argument("--crop", type=int, default=d.crop, help="square crop side in pixels")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--lr-schedule", default=d.lr_schedule, choices=["constant", "cosine"])
    p.add_argument("--save-every", type=int, default=d.save_every)
    p.add_argument("--keep", type=int, default=d.keep, help="checkpoints kept (newest)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--amp", default=d.amp, choices=["none", "bf16", "fp16"])
    p.add_argument("--backend", default=d.backend)
    p.add_argument("--init", default=None, help="start from these weights")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in --out")
    p.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                   help="model configuration (repeatable), e.g. --config features=32")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(fn=_cmd_train)


def _cmd_train(args) -> int:
    from apnt import models

    cfg = TrainConfig(model=args.model, data=args.data, out=args.out, split=args.split, steps=args.steps,
                      batch=args.batch, crop=args.crop, lr=args.lr, lr_schedule=args.lr_schedule,
                      save_every=args.save_every, keep=args.keep, seed=args.seed, amp=args.amp,
                      backend=args.backend, resume=args.resume, init=args.init, progress=not args.no_progress,
                      model_config=models.parse_config(args.config))
    row = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"done: step {row.get('step', cfg.steps)}, loss {row.get('loss', 'n/a')}; "
              f"checkpoints in {cfg.out}")
    return 0


