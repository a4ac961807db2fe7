"""Time and memory vs resolution: one model call per point, each in a fresh process."""
from __future__ import annotations

import dataclasses
import sys
from typing import Optional

from apnt.benchcases.cases import ModelCase, Provider, find_provider
from apnt.benchcases.memory import available_bytes, oom_status, peak_rss
from apnt.benchcases.timing import _failure

# ---- time and memory vs resolution ----------------------------------------------------------------------------------

SWEEP_MODELS = ("ahdrnet", "apnt")
SWEEP_PROVIDERS = ("eager", "native")   # the two CPU backends, reference and native
SWEEP_RESOLUTIONS = ((256, 256), (512, 512), (1024, 768), (1500, 1000), (1920, 1080), (3840, 2160))  # W x H
TILE_BUDGET = 16 * 2**30   # issue 7: 4K and 8K fuse within 16 GB peak RSS


def parse_resolutions(text: str) -> tuple[tuple[int, int], ...]:
    """"256x256,1500x1000" (width x height) → ((256, 256), (1500, 1000))."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        w, sep, h = item.lower().partition("x")
        if not sep or not w.isdigit() or not h.isdigit() or int(w) < 8 or int(h) < 8:
            raise ValueError(f"argument '--resolutions': expected WIDTHxHEIGHT (each >= 8), got {item!r}")
        out.append((int(w), int(h)))
    return tuple(out)


def _sweep_case(model: str, provider: Provider, width: int, height: int,
                available: int) -> tuple[ModelCase, Optional[str]]:
    """The case for one point, and why it cannot run (or None). `native` runs through apnt.fuse's tiling
    where the whole image does not fit; the reference providers then say OOM."""
    case = ModelCase(model, "inference", width, height, providers=(provider.key,))
    status = oom_status(case, provider, "inference", available)
    if status and provider.backend == "native":
        budget = min(TILE_BUDGET, int(0.7 * available)) >> 20 << 20
        case = dataclasses.replace(case, max_memory=budget)
        status = oom_status(case, provider, "inference", available)
    return case, status


def sweep(models=SWEEP_MODELS, resolutions=SWEEP_RESOLUTIONS, providers=SWEEP_PROVIDERS,
          timeout: float = 3600, progress: bool = True) -> list[dict]:
    """Time and peak RSS of one inference call per (model, provider, resolution), each in a fresh process
    (`peak_rss`: one warmup call, then the measured one). A point estimated not to fit says OOM; a point whose
    time, extrapolated linearly in pixels from the provider's previous point, exceeds `timeout` is skipped."""
    from tqdm import tqdm

    points = [(m, find_provider(p), w, h) for m in models for p in providers
              for w, h in sorted(resolutions, key=lambda r: r[0] * r[1])]
    rows: list[dict] = []
    last: dict[tuple[str, str], tuple[int, float]] = {}   # (model, provider) → (pixels, seconds) of its last point
    with tqdm(points, desc="apnt sweep", unit="point", file=sys.stderr, disable=not progress) as bar:
        for model, p, w, h in bar:
            bar.set_postfix_str(f"{model} {p.key} {w}x{h}")
            case, status = _sweep_case(model, p, w, h, available_bytes())
            row = {"model": model, "provider": p.key, "width": w, "height": h, "tiled": bool(case.max_memory),
                   "status": status or "ok"}
            prev = last.get((model, p.key))
            if not status and prev and 2 * prev[1] * (w * h / prev[0]) > timeout:
                row["status"] = f"not run (estimated {2 * prev[1] * w * h / prev[0]:.0f} s > {timeout:.0f} s budget)"
            if row["status"] == "ok":
                try:
                    row.update(peak_rss(case, p, "inference", timeout=timeout))
                    last[(model, p.key)] = (w * h, row["step_seconds"])
                except Exception as e:   # noqa: BLE001 - one point failing is reported, not fatal
                    row["status"] = _failure(e)
            rows.append(row)
    return rows
