"""Issue 7: tiled inference agrees with untiled inference on large images (no visible seams).

For each case, one synthetic bracket (`apnt.data.synth_scene`, a fixed seed) is fused by `apnt.fuse` twice with
the shipped demo weights and the native backend: untiled, and tiled under a `max_memory` budget small enough to
force several tiles. The figure is the largest absolute difference of the two outputs in μ-law (the tonemap the
models are trained and judged in); the target is 1e-3. Both calls run in this process, one after the other.

  * AHDRNet 1500x1000 (2 GB budget);
  * APNT-Fusion 1500x1000 (global search: the texture stream runs once on the whole image, tiles share it);
  * APNT-Fusion 1920x1080 (radius mode: every tile runs its own search, within a halo covering the radius).

Usage: PYTHONPATH=. .venv/bin/python bench/tile_agreement.py [--quick] [--md BENCHMARKS.md]
Results: bench/results/tile_agreement.json; with --md, the "## Tiled vs untiled (issue 7)" section of
BENCHMARKS.md is (re)written, the rest of the file kept.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SECTION = "## Tiled vs untiled (issue 7)"
TARGET = 1e-3
# (model, width, height, max_memory, nft_radius: None = the model's default for the size)
CASES = (("ahdrnet", 1500, 1000, "2G", None), ("apnt", 1500, 1000, "3G", None), ("apnt", 1920, 1080, "4G", None))
QUICK = (("ahdrnet", 320, 240, "760M", None), ("apnt", 320, 240, "830M", None), ("apnt", 640, 480, "1.4G", 16))


def run_case(model: str, width: int, height: int, budget: str, nft_radius: int | None = None) -> dict:
    from apnt.data.synth import synth_scene
    from apnt.infer import _fuse
    from apnt.tonemap import mu_law

    scene = synth_scene(np.random.default_rng([7, width, height]), height, width, name="agreement")
    ldr, exposure = scene.ldr, scene.exposure   # numpy (3, H, W, 3): apnt.fuse's array form
    t0 = time.perf_counter()
    whole = _fuse(ldr, exposure, model, backend="native", nft_radius=nft_radius)
    t1 = time.perf_counter()
    tiled = _fuse(ldr, exposure, model, backend="native", max_memory=budget, nft_radius=nft_radius)
    t2 = time.perf_counter()
    plan = tiled.plan
    diff = (mu_law(torch.as_tensor(tiled.hdr)) - mu_law(torch.as_tensor(whole.hdr))).abs()
    return {"model": model, "width": width, "height": height, "budget": budget, "nft_radius": nft_radius,
            "tiles": plan.count, "core": [plan.tile_w, plan.tile_h], "halo": plan.halo,
            "untiled_s": t1 - t0, "tiled_s": t2 - t1,
            "max_abs_mu": float(diff.max()), "mean_abs_mu": float(diff.mean())}


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [SECTION, "",
             f"`bench/tile_agreement.py` on {m['cpu']} ({m['cores']} cores, {m['torch_threads']} torch threads), "
             f"apnt at `{m['commit']}`, {m['date']}. One synthetic bracket per case, shipped demo weights, native "
             "backend: `apnt.fuse` untiled, then tiled under the `max_memory` budget. Difference = max |μ(tiled) − "
             f"μ(untiled)| over all pixels and channels; target ≤ {TARGET:g} (issue 7).", "",
             "| model | image | budget | tiles (core W×H, halo) | max abs diff (μ-law) | mean abs diff | met | "
             "untiled s | tiled s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in res["cases"]:
        name = {"ahdrnet": "AHDRNet", "apnt": "APNT-Fusion"}[r["model"]]
        if r.get("nft_radius"):
            name += f" (nft_radius {r['nft_radius']})"
        lines.append(f"| {name} | {r['width']}×{r['height']} | {r['budget']} | {r['tiles']} "
                     f"({r['core'][0]}×{r['core'][1]}, {r['halo']} px) | {r['max_abs_mu']:.2e} | "
                     f"{r['mean_abs_mu']:.2e} | {'yes' if r['max_abs_mu'] <= TARGET else '**no**'} | "
                     f"{r['untiled_s']:.1f} | {r['tiled_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--md", type=pathlib.Path, help="write the section into this markdown file")
    p.add_argument("--quick", action="store_true", help="320x240 cases (a check of this script, seconds)")
    args = p.parse_args(argv)
    import apnt.benchcases

    cases = []
    for model, w, h, budget, radius in QUICK if args.quick else CASES:
        r = run_case(model, w, h, budget, radius)
        print(json.dumps(r), flush=True)
        cases.append(r)
    res = {"machine": apnt.benchcases.machine(), "cases": cases}
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not args.quick:
        (RESULTS / "tile_agreement.json").write_text(json.dumps(res, indent=1) + "\n")
    if args.md:
        from match_scaling import write_md   # bench/ is this script's directory, first on sys.path
        write_md(args.md, markdown(res), SECTION)
    return 0 if all(r["max_abs_mu"] <= TARGET for r in cases) else 1


if __name__ == "__main__":
    sys.exit(main())
