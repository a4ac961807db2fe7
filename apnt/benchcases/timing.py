"""Timing: every provider of a case interleaved (`measure`), the ratios (`summarize`), and whole runs."""
from __future__ import annotations

import dataclasses
import math
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from apnt.benchcases.cases import (ALL_CASES, AnyCase, BASELINE, FAMILIES, SLOW_ROUNDS, SLOW_SECONDS, find_provider,
                                   providers_for)
from apnt.benchcases.build import Bench, setup
from apnt.benchcases.memory import oom_status, peak_rss, saved_bytes

# ---- timing ---------------------------------------------------------------------------------------------------------

@dataclass
class Result:
    case: str
    mode: str
    provider: str
    samples_ms: list[float] = field(default_factory=list)
    saved_bytes: Optional[int] = None
    rss: Optional[dict] = None
    status: str = "ok"          # "ok", "OOM ..." or "n/a: <why>"

    @property
    def median_ms(self) -> Optional[float]:
        return statistics.median(self.samples_ms) if self.samples_ms else None


def _failure(e: BaseException) -> str:
    text = str(e).lower()
    if isinstance(e, MemoryError) or "out of memory" in text or "can't allocate memory" in text:
        return "OOM"   # CUDA says "out of memory", torch's CPU allocator "can't allocate memory"
    if isinstance(e, subprocess.TimeoutExpired):  # its text is the whole command line, interpreter path included
        return f"n/a: timed out after {e.timeout:.0f} s"
    first = (str(e).strip().splitlines() or [""])[0]
    return f"n/a: {type(e).__name__}: {first[:120]}"


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(case: AnyCase, mode: str, repeats: int = 9, warmup: int = 2, memory: bool = True,
            rss: tuple[str, ...] = (), min_seconds: float = 2.0, max_repeats: int = 30,
            slow_seconds: float = SLOW_SECONDS, slow_rounds: int = SLOW_ROUNDS) -> list[Result]:
    """Every provider of `mode` on `case`, timed interleaved: `warmup` untimed rounds (the first compiles),
    then rounds that each run every provider once, starting one provider later each round: at least
    `repeats` rounds, more (up to `max_repeats`) until every provider has run `min_seconds` in total, so
    fast cases get more samples on a noisy machine. A slow case — some non-compiling provider's first call
    took over `slow_seconds` — gets one warmup and exactly `slow_rounds` rounds (a 1500x1000 eager AHDRNet
    call is over a minute). Providers whose estimated peak memory does not fit are not run (`oom_status`).
    `memory`: memory held for backward (train); `rss`: provider keys whose peak RSS is measured in a
    fresh subprocess (slow for the compile providers: each subprocess compiles again)."""
    torch._dynamo.reset()   # one case's graphs at a time: no cache limits, no automatic dynamic shapes
    providers = providers_for(case, mode)
    results = {p.key: Result(case.id, mode, p.key) for p in providers}
    benches: dict[str, Bench] = {}
    first_call: dict[str, float] = {}

    def run(key: str, fn: Callable[[], object]) -> Optional[float]:
        """fn() timed; a provider that fails (now or at a later round, e.g. OOM) is reported, not fatal."""
        try:
            return _timed(fn)
        except Exception as e:   # noqa: BLE001
            results[key].status, results[key].samples_ms = _failure(e), []
            benches.pop(key, None)
            return None

    for p in providers:
        results[p.key].status = oom_status(case, p, mode) or "ok"
        if results[p.key].status != "ok":
            continue
        try:
            benches[p.key] = setup(case, p, mode)
        except Exception as e:   # noqa: BLE001
            results[p.key].status = _failure(e)
            continue
        first_call[p.key] = run(p.key, benches[p.key].step)
    slow = max((t for k, t in first_call.items() if t is not None and not find_provider(k).compile),
               default=0.0) > slow_seconds
    if slow:
        repeats = max_repeats = slow_rounds
    for _ in range(0 if slow else warmup - 1):
        for key in list(benches):
            run(key, benches[key].step)
    for r in range(max(repeats, max_repeats)):
        timed = [sum(results[k].samples_ms) / 1e3 for k in benches]
        if r >= repeats and min(timed, default=math.inf) >= min_seconds:
            break
        keys = list(benches)
        rotated = keys[r % len(keys):] + keys[:r % len(keys)] if keys else []
        for key in rotated:
            seconds = run(key, benches[key].step)
            if seconds is not None:
                results[key].samples_ms.append(seconds * 1e3)
    for key, bench in benches.items():
        if memory and mode == "train":
            results[key].saved_bytes = saved_bytes(bench)
        if key in rss:
            # Setup, a warmup (compiling again) and a timed step: allow for all of them.
            timeout = 900 + 4 * (results[key].median_ms or 0) / 1e3
            try:
                results[key].rss = peak_rss(case, find_provider(key), mode, timeout=timeout)
            except Exception as e:   # noqa: BLE001
                results[key].rss = {"error": _failure(e)}
    return list(results.values())


def summarize(results: list[Result]) -> list[dict]:
    """Rows with ratios. speedup_vs_eager = eager median / this median (> 1 is faster);
    speedup_vs_best_peer = fastest peer's (eager NCHW, channels_last, compile, compile+freezing) median / this
    median; memory_vs_eager = bytes held for backward / eager's; rss_vs_eager = step peak RSS / eager's."""
    rows = []
    groups: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        groups.setdefault((r.case, r.mode), []).append(r)
    for group in groups.values():
        by_key = {r.provider: r for r in group}
        base = by_key.get(BASELINE)
        peers = [r.median_ms for r in group if find_provider(r.provider).peer and r.median_ms]
        best_peer = min(peers) if peers else None
        for r in group:
            row = dataclasses.asdict(r)
            row["median_ms"] = m = r.median_ms
            row["speedup_vs_eager"] = base.median_ms / m if m and base and base.median_ms else None
            row["speedup_vs_best_peer"] = best_peer / m if m and best_peer else None
            row["memory_vs_eager"] = (r.saved_bytes / base.saved_bytes
                                      if r.saved_bytes is not None and base and base.saved_bytes else None)
            row["rss_vs_eager"] = rss_ratio(r.rss, base.rss if base else None)
            rows.append(row)
    return rows


def rss_ratio(rss: Optional[dict], base: Optional[dict]) -> Optional[float]:
    ok = rss and base and "error" not in rss and "error" not in base and base["step_peak_mib"] > 0
    return rss["step_peak_mib"] / base["step_peak_mib"] if ok else None


def selected_cases(quick: bool, families: Optional[tuple[str, ...]] = None) -> list[AnyCase]:
    unknown = set(families or ()) - set(FAMILIES)
    if unknown:
        raise ValueError(f"argument '--family': unknown {', '.join(sorted(unknown))}; expected any of "
                         f"{', '.join(FAMILIES)}")
    return [c for c in ALL_CASES if (c.quick or not quick) and (not families or c.family in families)]


def run_settings(quick: bool, repeats: Optional[int] = None) -> dict:
    """measure()'s keyword arguments for a full or a quick run."""
    return {"repeats": repeats or (3 if quick else 9), "warmup": 1 if quick else 2,
            "min_seconds": 0.5 if quick else 2.0, "max_repeats": 10 if quick else 30,
            "slow_seconds": SLOW_SECONDS, "slow_rounds": SLOW_ROUNDS}


def run_all(quick: bool = False, rss: tuple[str, ...] = (), repeats: Optional[int] = None,
            families: Optional[tuple[str, ...]] = None) -> list[Result]:
    """Every case and mode (of `families`, default all), with a tqdm progress bar; `quick` runs fewer cases
    and repetitions."""
    from tqdm import tqdm

    settings = run_settings(quick, repeats)
    groups = [(case, mode) for case in selected_cases(quick, families) for mode in case.modes]
    results: list[Result] = []
    with tqdm(groups, desc="apnt bench", unit="case", file=sys.stderr) as bar:
        for case, mode in bar:
            bar.set_postfix_str(f"{case.id} {mode}")
            results += measure(case, mode, rss=rss, **settings)
    return results
