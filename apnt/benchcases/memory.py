"""Memory: what a case holds for backward, whether it fits this machine, and peak RSS in a fresh process."""
from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import subprocess
import sys
import time
from typing import Optional

import torch

import apnt.ops
from apnt.benchcases.cases import ALL_CASES, AnyCase, MEMORY_HEADROOM, ModelCase, Provider, find_case, find_provider
from apnt.benchcases.build import Bench, setup

# ---- memory --------------------------------------------------------------------------------------------------------

def saved_bytes(bench: Bench) -> int:
    """Bytes of the unique storages autograd saves for backward during one forward (each untyped storage
    counted once), the storages of inputs and parameters excluded (DESIGN §7)."""
    exclude = {t.untyped_storage().data_ptr() for t in bench.leaves}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in exclude:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = bench.forward()
    del out   # frees the graph and its saved tensors
    return sum(seen.values())


def available_bytes() -> int:
    """MemAvailable: what a new process may allocate without swapping or the OOM killer."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def oom_status(case: AnyCase, provider: Provider, mode: str, available: Optional[int] = None) -> Optional[str]:
    """"OOM (needs ~N GB ...)" when the case's estimated peak does not fit, else None. Estimated rather than
    tried: on Linux a too-large run is not refused, the OOM killer ends it (or another process)."""
    need = case.estimate_bytes(provider, mode)
    available = available_bytes() if available is None else available
    if need is None or need <= MEMORY_HEADROOM * available:
        return None
    return f"OOM (needs ~{need / 1e9:.0f} GB by estimate; {available / 1e9:.0f} GB available)"


def _status_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field_name}")


def _rss_child(case_spec: str, provider_key: str, mode: str) -> dict:
    """In a fresh process: warm up (compile), release freed heap to the OS, reset the peak-RSS mark, run one
    timed step, report its time, the peak above that steady state and the process's peak over its life."""
    try:   # if memory runs out after all, the kernel ends this process, not a neighbour
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass
    bench = setup(find_case(case_spec), find_provider(provider_key), mode)
    bench.step()
    life_peak = _status_kib("VmHWM")
    apnt.ops.empty_cache()   # the native workspace blocks the warmup kept: the step's peak counts allocating them again
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")   # resets VmHWM to the current RSS (Linux >= 4.0)
    base = _status_kib("VmRSS")
    t0 = time.perf_counter()
    bench.step()
    seconds = time.perf_counter() - t0
    return {"step_peak_mib": (_status_kib("VmHWM") - base) / 1024, "step_seconds": seconds,
            "process_peak_mib": max(life_peak, _status_kib("VmHWM")) / 1024}


def _case_spec(case: AnyCase) -> str:
    """What the child process gets: the registry id, or a ModelCase's fields as JSON (sweep cases)."""
    if isinstance(case, ModelCase) and case not in ALL_CASES:
        return json.dumps(dataclasses.asdict(case))
    return case.id


def peak_rss(case: AnyCase, provider: Provider, mode: str, timeout: float = 900) -> dict:
    """Peak RSS of one step in a fresh subprocess (Linux only): {"step_peak_mib", "process_peak_mib",
    "step_seconds"}. Raises MemoryError when the kernel killed the process (OOM)."""
    cmd = [sys.executable, "-m", "apnt.benchcases", "--rss", _case_spec(case), provider.key, mode]
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))   # the parent's thread count
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode == -9:
        raise MemoryError("out of memory: the subprocess was killed (SIGKILL)")
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"rss subprocess failed: {tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])
