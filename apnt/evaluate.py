"""`apnt eval`: a method on every scene of a Kalantari-layout split, Kalantari's metrics per scene and mean."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

METRICS = ("psnr_mu", "psnr_l", "ssim_mu", "ssim_l")


def evaluate(method: str = "ahdrnet", data: str | Path = "", split: str = "Test", *, weights="demo",
             backend: str = "auto", crf: str = "gamma2.2", tile=None, max_memory=None, model=None,
             config: dict | None = None, progress: bool = True) -> dict:
    """`{"scenes": {name: {metric: value, "seconds": s}}, "mean": {metric: value}}` for one method.

    `method` is a model name (`ahdrnet`, ...) loaded with `weights`, or a classical baseline (`debevec`,
    `mertens`); `model` may instead be a ready `nn.Module` (then `method` only labels it). `config` overrides
    the loaded network's configuration (ablations; see `apnt.models.load`)."""
    import torch

    from apnt import metrics
    from apnt.data import list_scenes, load_scene
    from apnt.infer import fuse

    scenes = list_scenes(data, split)
    runner = model
    if runner is None:
        from apnt.models import MODELS, load
        if method in MODELS:
            runner = load(method, weights, backend=backend, config=config)
        elif config:
            raise ValueError(f"argument 'config': {method} is a classical merge without a configuration")
        else:
            runner = method
    results: dict[str, dict] = {}
    iterator = scenes
    if progress:
        from tqdm import tqdm
        iterator = tqdm(scenes, desc=f"eval {method}", unit="scene", dynamic_ncols=True)
    for scene_dir in iterator:
        scene = load_scene(scene_dir)
        if scene.hdr is None:
            raise ValueError(f"{scene_dir}: no HDRImg.hdr ground truth to evaluate against")
        t0 = time.perf_counter()
        pred = fuse(scene.ldr, scene.exposure, model=runner, backend=backend, crf=crf, tile=tile,
                    max_memory=max_memory)
        seconds = time.perf_counter() - t0
        # fuse returns (H, W, 3) numpy for a numpy scene; the metrics take (3, H, W).
        chw = [torch.as_tensor(a).permute(2, 0, 1) for a in (pred, scene.hdr)]
        row = {k: float(v) for k, v in metrics.evaluate_pair(*chw).items()}
        row["seconds"] = seconds
        results[scene.name] = row
    mean = {k: _mean([r[k] for r in results.values()]) for k in METRICS}
    return {"method": method, "split": split, "scenes": results, "mean": mean}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def format_table(report: dict) -> str:
    """Per-scene rows and the mean, aligned for a terminal (and valid Markdown)."""
    head = "| scene | PSNR-μ | PSNR-L | SSIM-μ | SSIM-L | seconds |"
    lines = [head, "|---|---:|---:|---:|---:|---:|"]
    for name, r in report["scenes"].items():
        lines.append(f"| {name} | {r['psnr_mu']:.2f} | {r['psnr_l']:.2f} | {r['ssim_mu']:.4f} | {r['ssim_l']:.4f} "
                     f"| {r['seconds']:.2f} |")
    m = report["mean"]
    lines.append(f"| **mean** | {m['psnr_mu']:.2f} | {m['psnr_l']:.2f} | {m['ssim_mu']:.4f} | {m['ssim_l']:.4f} | |")
    return "\n".join(lines)


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("eval", help="PSNR-μ/PSNR-L/SSIM-μ/SSIM-L of a method on a dataset split")
    p.add_argument("--model", default="ahdrnet", help="ahdrnet | debevec | mertens")
    p.add_argument("--weights", default="demo", help="'demo' (shipped), a checkpoint/run dir or .safetensors")
    p.add_argument("--data", required=True, help="dataset root (Kalantari layout)")
    p.add_argument("--split", default="Test")
    p.add_argument("--crf", default="gamma2.2", choices=["gamma2.2", "calibrate"], help="Debevec's response")
    p.add_argument("--backend", default="auto")
    p.add_argument("--tile", type=int, default=None)
    p.add_argument("--max-memory", default=None)
    p.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                   help="override the network's configuration (repeatable), e.g. --config use_nft=false")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(fn=_cmd_eval)


def _cmd_eval(args) -> int:
    from apnt.models import parse_config

    report = evaluate(args.model, args.data, args.split, weights=args.weights, backend=args.backend, crf=args.crf,
                      tile=args.tile, max_memory=args.max_memory, config=parse_config(args.config),
                      progress=not args.no_progress)
    print(format_table(report))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        out = {"scenes": report["scenes"], "mean": report["mean"]}
        if args.config:
            out["config"] = parse_config(args.config)
        path.write_text(json.dumps(out, indent=1))
    return 0
