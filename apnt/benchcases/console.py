"""Who measured (`machine`), the terminal table, and `apnt bench` / `python -m apnt.benchcases`."""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from typing import Optional, Union

import torch

from apnt.benchcases.cases import PROVIDERS
from apnt.benchcases.memory import _rss_child
from apnt.benchcases.timing import run_all, selected_cases, summarize

# ---- machine and table ----------------------------------------------------------------------------------------------

def machine() -> dict:
    """Who measured: CPU model, cores, threads, torch version, date."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:   # which code was measured (the C++ extension is rebuilt often while tuning)
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "commit": commit or "unknown",
            "torch": torch.__version__, "python": platform.python_version(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
            "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"), "gpu": "none"}


def _fmt(v: Optional[float], width: int, spec: str = ".2f", suffix: str = "") -> str:
    return f"{'-' if v is None else format(v, spec) + suffix:>{width}}"


def format_table(rows: list[dict]) -> str:
    """Plain-text table for the terminal (`apnt bench`)."""
    names = {p.key: p.name for p in PROVIDERS}
    head = f"{'case':<50} {'mode':<10} {'provider':<24} {'median ms':>10} {'x eager':>8} {'x best peer':>11} " \
           f"{'saved MiB':>9} {'mem/eager':>9}"
    lines = [head, "-" * len(head)]
    for row in rows:
        start = f"{row['case']:<50} {row['mode']:<10} {names[row['provider']]:<24}"
        if row["status"] != "ok":
            lines.append(f"{start} {row['status']}")
            continue
        saved = None if row["saved_bytes"] is None else row["saved_bytes"] / 2**20
        lines.append(f"{start} {_fmt(row['median_ms'], 10, '.1f')} {_fmt(row['speedup_vs_eager'], 8, '.2f', 'x')} "
                     f"{_fmt(row['speedup_vs_best_peer'], 11, '.2f', 'x')} {_fmt(saved, 9, '.1f')} "
                     f"{_fmt(row['memory_vs_eager'], 9, '.2f', 'x')}")
    return "\n".join(lines)


def parse_families(text: Optional[str]) -> Optional[tuple[str, ...]]:
    """"dense,models" → ("dense", "models"); None or "" → None (every family)."""
    names = tuple(f.strip() for f in (text or "").split(",") if f.strip())
    return names or None


def run_cli(quick: bool = False, families: Union[str, tuple[str, ...], None] = None) -> int:
    """`apnt bench [--quick] [--family dense,models]`: the cases side by side, interleaved; prints the table."""
    if isinstance(families, str):
        families = parse_families(families)
    selected_cases(quick, families)   # unknown family names: a clear error before anything runs
    info = machine()
    print(f"{info['cpu']}, {info['cores']} cores, {info['torch_threads']} torch threads, torch {info['torch']}, "
          f"{info['date']}; GPU: not measured")
    rows = summarize(run_all(quick=quick, families=families))
    print(format_table(rows))
    print("x eager / x best peer: speedup (eager or fastest peer's median / this median; > 1 is faster; peers: "
          "eager NCHW, channels_last, compile, compile+freezing). saved MiB: memory held for backward, inputs and "
          "parameters excluded. Model cases: one call (inference) or one step (forward+backward+Adam, train).")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


def _main(argv: list[str]) -> int:
    """`python -m apnt.benchcases [--quick] [--family F,...]`; `--rss CASE PROVIDER MODE` is peak_rss's child."""
    if len(argv) == 4 and argv[0] == "--rss":
        print(json.dumps(_rss_child(*argv[1:])))
        return 0
    families = argv[argv.index("--family") + 1] if "--family" in argv[:-1] else None
    return run_cli(quick="--quick" in argv, families=families)
