"""Benchmark cases (DESIGN §7): the shapes, providers and measurements shared by `apnt bench`,
bench/ (pytest-benchmark) and bench/report.py (BENCHMARKS.md).

A *case* is one op at one AHDRNet shape; a *provider* is one way to run it: `reference` eager NCHW (the
baseline), eager channels_last, `torch.compile(reference)` (inductor), compile with inductor freezing
(inference only) and `native` (inputs NCHW, as a user passes them). A *mode* is `inference` (no_grad) or
`train` (forward + backward). `setup(case, provider, mode)` builds one runnable `Bench`, used by both the
speed runs (`Bench.step`) and the memory runs (`saved_bytes`, `peak_rss`).

`measure(case, mode)` runs every provider interleaved (round-robin with a rotating start, after warmups
that exclude compile time) and returns one `Result` per provider; `summarize` adds the ratios.
This module does not import pytest.
"""
from __future__ import annotations

import ctypes
import dataclasses
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

import apnt.ops

MODES = ("inference", "train")
MODE_TITLES = {"inference": "inference (no_grad)", "train": "forward+backward"}


# ---- cases and providers ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One op call: `apnt.ops.<op>(*inputs, *params, **kwargs)` with tensors of the given shapes."""
    op: str
    family: str                                    # op family: bench/bench_<family>.py
    inputs: tuple[tuple[str, tuple[int, ...]], ...]  # feature maps, in call order
    params: tuple[tuple[str, tuple[int, ...]], ...]  # weights and biases, in call order
    kwargs: tuple[tuple[str, object], ...] = ()
    label: str = ""                                # what the shape means, e.g. "3x3 64->64"
    quick: bool = False                            # part of `apnt bench --quick`

    @property
    def size(self) -> str:
        return "x".join(map(str, self.inputs[0][1]))

    @property
    def id(self) -> str:
        return "-".join(filter(None, [self.op, self.label.replace(" ", "_").replace("->", "to"), self.size]))

    @property
    def title(self) -> str:
        return " ".join(filter(None, [self.op, self.label, self.size]))


def _attention_gate(h: int, w: int, c: int = 64, m: int = 128, quick: bool = False) -> Case:
    return Case("attention_gate", "attention", (("x", (1, c, h, w)), ("ref", (1, c, h, w))),
                (("w1", (m, 2 * c, 3, 3)), ("b1", (m,)), ("w2", (c, m, 3, 3)), ("b2", (c,))),
                (("negative_slope", 0.01),), label=f"M={m}", quick=quick)


def _attention_blend(h: int, w: int, c: int = 64, quick: bool = False) -> Case:
    return Case("attention_blend", "attention", (("x", (1, c, h, w)), ("y", (1, c, h, w))),
                (("w", (c, 2 * c, 3, 3)), ("b", (c,))), quick=quick)


def _conv2d(cin: int, cout: int, h: int, w: int, quick: bool = False) -> Case:
    return Case("conv2d", "conv", (("x", (1, cin, h, w)),), (("w", (cout, cin, 3, 3)), ("b", (cout,))),
                (("activation", "relu"),), label=f"3x3 {cin}->{cout} relu", quick=quick)


CASES: tuple[Case, ...] = (
    _attention_gate(128, 128, quick=True),
    _attention_gate(256, 256),
    _attention_blend(128, 128, quick=True),
    _conv2d(64, 64, 256, 256, quick=True),
    _conv2d(192, 64, 256, 256),
)


@dataclass(frozen=True)
class Provider:
    key: str                        # short id (pytest ids, JSON)
    name: str                       # what the tables say
    backend: str                    # apnt backend the op runs with
    channels_last: bool = False     # inputs and weights converted beforehand
    compile: Optional[str] = None   # None | "inductor" | "freezing"
    inference_only: bool = False


PROVIDERS: tuple[Provider, ...] = (
    Provider("eager", "eager NCHW", "reference"),
    Provider("eager_cl", "eager channels_last", "reference", channels_last=True),
    Provider("compile", "torch.compile", "reference", compile="inductor"),
    Provider("compile_freezing", "compile+freezing", "reference", compile="freezing", inference_only=True),
    Provider("native", "native", "native"),
)
BASELINE = "eager"   # ratios are against this provider
OURS = "native"      # the provider the targets are about


def providers_for(mode: str) -> tuple[Provider, ...]:
    return tuple(p for p in PROVIDERS if mode == "inference" or not p.inference_only)


def matrix(family: str) -> list[tuple[Case, Provider, str]]:
    """Every (case, provider, mode) of one op family: what bench/bench_<family>.py parametrizes over."""
    return [(c, p, m) for c in CASES if c.family == family for m in MODES for p in providers_for(m)]


def bench_id(case: Case, provider: Provider, mode: str) -> str:
    return f"{case.id}-{mode}-{provider.key}"


def find_case(case_id: str) -> Case:
    return next(c for c in CASES if c.id == case_id)


def find_provider(key: str) -> Provider:
    return next(p for p in PROVIDERS if p.key == key)


# ---- setup: one function for speed and memory runs ------------------------------------------------------------------

class OpModule(nn.Module):
    """One apnt op with its weights as nn.Parameters, so inductor freezing can fold and prepack them."""

    def __init__(self, case: Case, params: dict[str, torch.Tensor], backend: str):
        super().__init__()
        self.op = getattr(apnt.ops, case.op)
        self.backend = backend
        self.kwargs = dict(case.kwargs)
        self.names = list(params)
        for name, t in params.items():
            self.register_parameter(name, nn.Parameter(t))

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.op(*inputs, *(getattr(self, n) for n in self.names), backend=self.backend, **self.kwargs)


@dataclass
class Bench:
    """A ready-to-run case: `step()` is one timed iteration; `forward()` runs the forward with autograd
    recording (memory runs); `leaves` are the inputs and parameters (excluded from memory held for backward)."""
    step: Callable[[], object]
    forward: Callable[[], torch.Tensor]
    leaves: list[torch.Tensor]


def _make_tensors(specs, seed: int, channels_last: bool, fan_in_scaled: bool) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in specs:
        t = torch.randn(shape, generator=gen)
        if fan_in_scaled and len(shape) == 4:   # keep activations O(1): no denormals, no saturated sigmoids
            t /= math.sqrt(shape[1] * shape[2] * shape[3])
        if channels_last and t.dim() == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        out[name] = t
    return out


def _compiled(module: nn.Module, freezing: bool) -> Callable:
    """torch.compile(module) with static shapes (each case its own graph, as a user compiling one model
    gets). Freezing must be on while dynamo traces, not only in inductor: only then are the parameters kept
    as constants that inductor folds and prepacks (`options={"freezing": True}` alone leaves them graph
    inputs). The options still make the backend differ from plain torch.compile's, so the two never share
    a dynamo cache entry."""
    compiled = torch.compile(module, fullgraph=True, dynamic=False, options={"freezing": True} if freezing else None)
    if not freezing:
        return compiled

    def call(*inputs):
        import torch._inductor.config as inductor_config
        with inductor_config.patch(freezing=True):
            return compiled(*inputs)
    return call


def setup(case: Case, provider: Provider, mode: str, seed: int = 0) -> Bench:
    """Inputs, weights and the callable for `case` run by `provider` in `mode` ("inference" | "train").

    Compilation is lazy: the first `step()` compiles (callers warm up before timing)."""
    if mode not in MODES:
        raise ValueError(f"argument 'mode': expected one of {', '.join(MODES)}, got {mode!r}")
    if mode == "train" and provider.inference_only:
        raise ValueError(f"provider {provider.name!r} is inference only")
    train = mode == "train"
    inputs = list(_make_tensors(case.inputs, seed, provider.channels_last, False).values())
    module = OpModule(case, _make_tensors(case.params, seed + 1, provider.channels_last, True), provider.backend)
    module.requires_grad_(train)
    for t in inputs:
        t.requires_grad_(train)
    fn = module
    if provider.compile:
        fn = _compiled(module, freezing=provider.compile == "freezing")
    leaves = inputs + list(module.parameters())
    grad_out: list[torch.Tensor] = []   # created on the first step, in the layout the provider returns

    def forward() -> torch.Tensor:
        return fn(*inputs)

    def step():
        if not train:
            with torch.no_grad():
                return fn(*inputs)
        for t in leaves:
            t.grad = None
        out = fn(*inputs)
        if not grad_out:
            grad_out.append(torch.randn_like(out))
        out.backward(grad_out[0])
        return out

    return Bench(step, forward, leaves)


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


def _status_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field_name}")


def _rss_child(case_id: str, provider_key: str, mode: str) -> dict:
    """In a fresh process: warm up (compile), release freed heap to the OS, reset the peak-RSS mark, run one
    step, report the peak above that steady state and the process's peak over its whole life."""
    bench = setup(find_case(case_id), find_provider(provider_key), mode)
    bench.step()
    life_peak = _status_kib("VmHWM")
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")   # resets VmHWM to the current RSS (Linux >= 4.0)
    base = _status_kib("VmRSS")
    bench.step()
    return {"step_peak_mib": (_status_kib("VmHWM") - base) / 1024,
            "process_peak_mib": max(life_peak, _status_kib("VmHWM")) / 1024}


def peak_rss(case: Case, provider: Provider, mode: str, timeout: float = 600) -> dict:
    """Peak RSS of one step in a fresh subprocess (Linux only): {"step_peak_mib", "process_peak_mib"}."""
    cmd = [sys.executable, "-m", "apnt.benchcases", "--rss", case.id, provider.key, mode]
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))   # the parent's thread count
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"rss subprocess failed: {tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- timing ---------------------------------------------------------------------------------------------------------

@dataclass
class Result:
    case: str
    mode: str
    provider: str
    samples_ms: list[float] = field(default_factory=list)
    saved_bytes: Optional[int] = None
    rss: Optional[dict] = None
    status: str = "ok"          # "ok", "OOM" or "n/a: <why>"

    @property
    def median_ms(self) -> Optional[float]:
        return statistics.median(self.samples_ms) if self.samples_ms else None


def _failure(e: BaseException) -> str:
    if isinstance(e, MemoryError) or "out of memory" in str(e).lower():
        return "OOM"
    first = (str(e).strip().splitlines() or [""])[0]
    return f"n/a: {type(e).__name__}: {first[:120]}"


def measure(case: Case, mode: str, repeats: int = 9, warmup: int = 2, memory: bool = True,
            rss: tuple[str, ...] = (), min_seconds: float = 2.0, max_repeats: int = 30) -> list[Result]:
    """Every provider of `mode` on `case`, timed interleaved: `warmup` untimed rounds (the first compiles),
    then rounds that each run every provider once, starting one provider later each round: at least
    `repeats` rounds, more (up to `max_repeats`) until every provider has run `min_seconds` in total, so
    fast cases get more samples on a noisy machine.
    `memory`: memory held for backward (train); `rss`: provider keys whose peak RSS is measured in a
    fresh subprocess (slow for the compile providers: each subprocess compiles again)."""
    torch._dynamo.reset()   # one case's graphs at a time: no cache limits, no automatic dynamic shapes
    providers = providers_for(mode)
    results = {p.key: Result(case.id, mode, p.key) for p in providers}
    benches: dict[str, Bench] = {}
    for p in providers:
        try:
            benches[p.key] = setup(case, p, mode)
            for _ in range(warmup):
                benches[p.key].step()
        except Exception as e:   # noqa: BLE001 - a provider that cannot run is reported, not fatal
            results[p.key].status = _failure(e)
            benches.pop(p.key, None)
    for r in range(max(repeats, max_repeats)):
        timed = [sum(results[k].samples_ms) / 1e3 for k in benches]
        if r >= repeats and min(timed, default=math.inf) >= min_seconds:
            break
        keys = list(benches)
        rotated = keys[r % len(keys):] + keys[:r % len(keys)] if keys else []
        for key in rotated:
            t0 = time.perf_counter()
            try:
                benches[key].step()
            except Exception as e:   # noqa: BLE001 - e.g. OOM at a later round
                results[key].status, results[key].samples_ms = _failure(e), []
                del benches[key]
                continue
            results[key].samples_ms.append((time.perf_counter() - t0) * 1e3)
    for key, bench in benches.items():
        if memory and mode == "train":
            results[key].saved_bytes = saved_bytes(bench)
        if key in rss:
            try:
                results[key].rss = peak_rss(case, find_provider(key), mode)
            except Exception as e:   # noqa: BLE001
                results[key].rss = {"error": _failure(e)}
    return list(results.values())


def summarize(results: list[Result]) -> list[dict]:
    """Rows with ratios. speedup_vs_eager = eager median / this median (> 1 is faster);
    speedup_vs_best_peer = fastest non-native median / this median; memory_vs_eager = bytes / eager bytes."""
    rows = []
    groups: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        groups.setdefault((r.case, r.mode), []).append(r)
    for group in groups.values():
        by_key = {r.provider: r for r in group}
        base = by_key.get(BASELINE)
        peers = [r.median_ms for r in group if r.provider != OURS and r.median_ms]
        best_peer = min(peers) if peers else None
        for r in group:
            row = dataclasses.asdict(r)
            row["median_ms"] = m = r.median_ms
            row["speedup_vs_eager"] = base.median_ms / m if m and base and base.median_ms else None
            row["speedup_vs_best_peer"] = best_peer / m if m and best_peer else None
            row["memory_vs_eager"] = (r.saved_bytes / base.saved_bytes
                                      if r.saved_bytes is not None and base and base.saved_bytes else None)
            rows.append(row)
    return rows


def selected_cases(quick: bool) -> list[Case]:
    return [c for c in CASES if c.quick or not quick]


def run_settings(quick: bool, repeats: Optional[int] = None) -> dict:
    """measure()'s keyword arguments for a full or a quick run."""
    return {"repeats": repeats or (3 if quick else 9), "warmup": 1 if quick else 2,
            "min_seconds": 0.5 if quick else 2.0, "max_repeats": 10 if quick else 30}


def run_all(quick: bool = False, rss: tuple[str, ...] = (), repeats: Optional[int] = None) -> list[Result]:
    """Every case and mode, with a tqdm progress bar; `quick` runs fewer cases and repetitions."""
    from tqdm import tqdm

    settings = run_settings(quick, repeats)
    groups = [(case, mode) for case in selected_cases(quick) for mode in MODES]
    results: list[Result] = []
    with tqdm(groups, desc="apnt bench", unit="case", file=sys.stderr) as bar:
        for case, mode in bar:
            bar.set_postfix_str(f"{case.id} {mode}")
            results += measure(case, mode, rss=rss, **settings)
    return results


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
            "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"), "gpu": "none"}


def _fmt(v: Optional[float], width: int, spec: str = ".2f", suffix: str = "") -> str:
    return f"{'-' if v is None else format(v, spec) + suffix:>{width}}"


def format_table(rows: list[dict]) -> str:
    """Plain-text table for the terminal (`apnt bench`)."""
    names = {p.key: p.name for p in PROVIDERS}
    head = f"{'case':<40} {'mode':<10} {'provider':<20} {'median ms':>10} {'x eager':>8} {'x best peer':>11} " \
           f"{'saved MiB':>9} {'mem/eager':>9}"
    lines = [head, "-" * len(head)]
    for row in rows:
        start = f"{row['case']:<40} {row['mode']:<10} {names[row['provider']]:<20}"
        if row["status"] != "ok":
            lines.append(f"{start} {row['status']}")
            continue
        saved = None if row["saved_bytes"] is None else row["saved_bytes"] / 2**20
        lines.append(f"{start} {_fmt(row['median_ms'], 10, '.1f')} {_fmt(row['speedup_vs_eager'], 8, '.2f', 'x')} "
                     f"{_fmt(row['speedup_vs_best_peer'], 11, '.2f', 'x')} {_fmt(saved, 9, '.1f')} "
                     f"{_fmt(row['memory_vs_eager'], 9, '.2f', 'x')}")
    return "\n".join(lines)


def run_cli(quick: bool = False) -> int:
    """`apnt bench [--quick]`: every case and provider side by side, interleaved; prints the table."""
    info = machine()
    print(f"{info['cpu']}, {info['cores']} cores, {info['torch_threads']} torch threads, torch {info['torch']}, "
          f"{info['date']}; GPU: not measured")
    rows = summarize(run_all(quick=quick))
    print(format_table(rows))
    print("x eager / x best peer: speedup (eager or fastest non-native median / this median; > 1 is faster). "
          "saved MiB: memory held for backward, inputs and parameters excluded.")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":   # `python -m apnt.benchcases [--quick]`; `--rss CASE PROVIDER MODE` is peak_rss's child
    if len(sys.argv) == 5 and sys.argv[1] == "--rss":
        print(json.dumps(_rss_child(*sys.argv[2:])))
    else:
        sys.exit(run_cli(quick="--quick" in sys.argv[1:]))
