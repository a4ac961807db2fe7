"""`apnt demo` (what `make demo` runs): one held-out synthetic bracket through AHDRNet and both classical merges.

Everything a first-time user wants to see, with no downloads and no arguments: the scene is synthesised from the
bundled HDR photographs with a seed that no demo-weight training or test scene used, written in the Kalantari
layout (so `apnt fuse demo_out/scene ...` works on it too), merged by each method, scored against the ground
truth, and drawn side by side."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

DEMO_SEED = 2026  # the demo weights were trained on seed 0 and tested on seed 1000 (README)
METHODS = ("ahdrnet", "debevec", "mertens")
LABELS = {"ahdrnet": "AHDRNet", "debevec": "Debevec", "mertens": "Mertens"}


def run(out="demo_out", *, height: int = 384, width: int = 512, seed: int = DEMO_SEED, weights="demo",
        backend: str = "auto", verbose: bool = True) -> dict:
    """Synthesise, fuse, score and draw; returns {method: {psnr_mu, psnr_l, ssim_mu, ssim_l, seconds}}.

    Writes into `out`: `scene/` (the bracket and HDRImg.hdr), `<method>.exr` and `<method>.png`,
    `ground_truth.exr/.png`, `attention_short.png` / `attention_long.png` (AHDRNet's gates, channel mean),
    `comparison.png` (inputs, results, ground truth, one attention map) and `metrics.json`."""
    import torch

    from apnt import metrics
    from apnt.data import load_scene, synthesize, write_image
    from apnt.infer import _fuse
    from apnt.tonemap import mu_law
    from apnt.viz import colorize, mosaic

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = print if verbose else (lambda *a, **k: None)
    [scene_dir] = synthesize(out / "scene", "Test", scenes=1, height=height, width=width, seed=seed, progress=False)
    scene = load_scene(scene_dir)
    say(f"scene: {width}x{height} synthetic bracket (seed {seed}), exposures {scene.exposure.tolist()} "
        f"-> {scene_dir}")

    def shown(h):  # the μ-law curve the PSNR-μ scores see: one fixed curve, so brightness errors stay visible
        return mu_law(np.clip(h, 0.0, 1.0)).astype(np.float32)

    results, images, maps = {}, {}, {}
    for method in METHODS:
        start = time.perf_counter()
        fused = _fuse(scene.ldr, scene.exposure, method, weights=weights, backend=backend,
                      explain=method == "ahdrnet")
        seconds = time.perf_counter() - start
        chw = [torch.as_tensor(a).permute(2, 0, 1) for a in (fused.hdr, scene.hdr)]
        results[method] = {**metrics.evaluate_pair(*chw), "seconds": seconds}
        images[method] = fused.hdr
        if fused.maps:
            maps, model_backend = fused.maps, fused.backend
        write_image(out / f"{method}.exr", fused.hdr)
        write_image(out / f"{method}.png", shown(fused.hdr))
    write_image(out / "ground_truth.exr", scene.hdr)
    write_image(out / "ground_truth.png", shown(scene.hdr))
    for name in ("attention_short", "attention_long"):
        write_image(out / f"{name}.png", colorize(maps[name]))

    frames = ("short", "medium (reference)", "long")
    tiles = [(f"input {f}, t={t:g}", ldr) for f, t, ldr in zip(frames, scene.exposure, scene.ldr)]
    tiles.append(("ground truth", shown(scene.hdr)))
    tiles += [(f"{LABELS[m]}  {results[m]['psnr_mu']:.2f} dB PSNR-μ", shown(images[m])) for m in METHODS]
    tiles.append(("AHDRNet attention on short frame", colorize(maps["attention_short"])))
    write_image(out / "comparison.png", mosaic(tiles, columns=4))
    (out / "metrics.json").write_text(json.dumps({"scene": scene.name, "results": results}, indent=1))

    say("\n| method | PSNR-μ | PSNR-L | SSIM-μ | SSIM-L | seconds |\n|---|---:|---:|---:|---:|---:|")
    for m, r in results.items():
        say(f"| {LABELS[m]} | {r['psnr_mu']:.2f} | {r['psnr_l']:.2f} | {r['ssim_mu']:.4f} | {r['ssim_l']:.4f} "
            f"| {r['seconds']:.2f} |")
    say(f"\nAHDRNet ran with backend '{model_backend}' on {torch.get_num_threads()} CPU threads; "
        f"results are μ-law tonemapped in the PNGs (as PSNR-μ sees them).")
    say(f"look first at {out / 'comparison.png'}; HDR results: {', '.join(f'{m}.exr' for m in METHODS)}")
    return results


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("demo", help="synthesise a held-out bracket; fuse it with AHDRNet, Debevec and "
                                           "Mertens; print metrics; write pictures to demo_out/")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--height", type=int, default=384)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--seed", type=int, default=DEMO_SEED)
    p.add_argument("--weights", default="demo", help="'demo' (shipped) or a checkpoint/run dir or .safetensors")
    p.add_argument("--backend", default="auto")
    p.set_defaults(fn=lambda args: 0 if run(args.out, height=args.height, width=args.width, seed=args.seed,
                                            weights=args.weights, backend=args.backend) else 1)
