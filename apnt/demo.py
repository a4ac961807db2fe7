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
BASELINES = ("debevec", "mertens")
LABELS = {"ahdrnet": "AHDRNet", "apnt": "APNT-Fusion", "debevec": "Debevec", "mertens": "Mertens"}
# The two maps of each network that explain it best at a glance (all maps are written to <out>/<model>_maps/).
KEY_MAPS = {"ahdrnet": ("attention_short", "attention_long"), "apnt": ("displacement", "attention_saturation")}
COLUMNS = 4


def shipped_models() -> tuple[str, ...]:
    """The networks whose demo weights ship with the package."""
    from apnt.models import MODELS, demo_weights_path

    return tuple(name for name in MODELS if demo_weights_path(name).exists())


def run(out="demo_out", *, height: int = 384, width: int = 512, seed: int = DEMO_SEED, models=None,
        weights="demo", backend: str = "auto", verbose: bool = True) -> dict:
    """Synthesise, fuse, score and draw; returns {method: {psnr_mu, psnr_l, ssim_mu, ssim_l, seconds}}.

    `models`: network names (default: every one with shipped demo weights), each loaded with `weights`,
    followed by the classical merges. Writes into `out`: `scene/` (the bracket and HDRImg.hdr),
    `<method>.exr` and `<method>.png`, `ground_truth.exr/.png`, `<model>_maps/` (every `explain` map as a
    PNG), `comparison.png` (inputs, ground truth, results, key maps) and `metrics.json`."""
    import torch

    from apnt import metrics
    from apnt.data import load_scene, synthesize, write_image
    from apnt.infer import _fuse
    from apnt.tonemap import mu_law
    from apnt.viz import mosaic, picture

    networks = tuple(shipped_models() if models is None else models)
    if not networks:
        raise FileNotFoundError("no network has shipped demo weights; pass models=[...] with weights=")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = print if verbose else (lambda *a, **k: None)
    [scene_dir] = synthesize(out / "scene", "Test", scenes=1, height=height, width=width, seed=seed, progress=False)
    scene = load_scene(scene_dir)
    say(f"scene: {width}x{height} synthetic bracket (seed {seed}), exposures {scene.exposure.tolist()} "
        f"-> {scene_dir}")

    def shown(h):  # the μ-law curve the PSNR-μ scores see: one fixed curve, so brightness errors stay visible
        return mu_law(np.clip(h, 0.0, 1.0)).astype(np.float32)

    results, images, maps, backends = {}, {}, {}, {}
    for method in networks + BASELINES:
        is_network = method in networks
        start = time.perf_counter()
        fused = _fuse(scene.ldr, scene.exposure, method, weights=weights if is_network else None,
                      backend=backend, explain=is_network)
        seconds = time.perf_counter() - start
        chw = [torch.as_tensor(a).permute(2, 0, 1) for a in (fused.hdr, scene.hdr)]
        results[method] = {**metrics.evaluate_pair(*chw), "seconds": seconds}
        images[method] = fused.hdr
        write_image(out / f"{method}.exr", fused.hdr)
        write_image(out / f"{method}.png", shown(fused.hdr))
        if is_network:
            maps[method], backends[method] = fused.maps, fused.backend
            for name, m in fused.maps.items():
                write_image(out / f"{method}_maps" / f"{name}.png", picture(name, m))
    write_image(out / "ground_truth.exr", scene.hdr)
    write_image(out / "ground_truth.png", shown(scene.hdr))

    frames = ("short", "medium (reference)", "long")
    tiles = [(f"input {f}, t={t:g}", ldr) for f, t, ldr in zip(frames, scene.exposure, scene.ldr)]
    tiles.append(("ground truth", shown(scene.hdr)))
    rows = [tiles]
    rows.append([(f"{LABELS.get(m, m)}  {results[m]['psnr_mu']:.2f} dB PSNR-μ", shown(images[m])) for m in results])
    rows.append([(f"{LABELS.get(m, m)}: {name.replace('_', ' ')}", picture(name, maps[m][name]))
                 for m in networks for name in KEY_MAPS.get(m, ()) if name in maps[m]])
    blank = ("", np.zeros_like(scene.ldr[0]))
    cells = [cell for row in rows if row for cell in row + [blank] * (-len(row) % COLUMNS)]
    write_image(out / "comparison.png", mosaic(cells, columns=COLUMNS))
    (out / "metrics.json").write_text(json.dumps({"scene": scene.name, "results": results}, indent=1))

    say("\n| method | PSNR-μ | PSNR-L | SSIM-μ | SSIM-L | seconds |\n|---|---:|---:|---:|---:|---:|")
    for m, r in results.items():
        say(f"| {LABELS.get(m, m)} | {r['psnr_mu']:.2f} | {r['psnr_l']:.2f} | {r['ssim_mu']:.4f} | "
            f"{r['ssim_l']:.4f} | {r['seconds']:.2f} |")
    ran = ", ".join(f"{LABELS.get(m, m)} on backend '{b}'" for m, b in backends.items())
    say(f"\n{ran}, {torch.get_num_threads()} CPU threads (networks' seconds include their explain maps); "
        "the PNGs are μ-law tonemapped, as PSNR-μ sees them.")
    say(f"look first at {out / 'comparison.png'}")
    return results


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("demo", help="synthesise a held-out bracket; fuse it with the networks (shipped "
                                           "demo weights), Debevec and Mertens; print metrics; write pictures")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--height", type=int, default=384)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--seed", type=int, default=DEMO_SEED)
    p.add_argument("--model", action="append", dest="models", metavar="NAME",
                   help="network to run (repeatable; default: every one with shipped demo weights)")
    p.add_argument("--weights", default="demo", help="'demo' (shipped) or a checkpoint/run dir or .safetensors")
    p.add_argument("--backend", default="auto")
    p.set_defaults(fn=lambda args: 0 if run(args.out, height=args.height, width=args.width, seed=args.seed,
                                            models=args.models, weights=args.weights, backend=args.backend) else 1)
