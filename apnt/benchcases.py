"""Benchmark cases (DESIGN §7): the shapes, providers and measurements shared by `apnt bench`,
bench/ (pytest-benchmark) and bench/report.py (BENCHMARKS.md).

A *case* is one thing to time: an op at one AHDRNet shape (`Case`, families attention / conv / dense) or a
whole model (`ModelCase`, family models: inference on one bracket, or a training step). A *provider* is one
way to run it: `reference` eager NCHW (the baseline), eager channels_last, `torch.compile(reference)`
(inductor), compile with inductor freezing (inference only), `native` (inputs NCHW, as a user passes them)
and, for the dense block, `native` with `checkpoint=True` (training only). A *mode* is `inference` (no_grad)
or `train` (forward + backward; for a model, + the Adam step). `setup(case, provider, mode)` builds one
runnable `Bench` through the case's builder, used by both the speed runs (`Bench.step`) and the memory runs
(`saved_bytes`, `peak_rss`).

`measure(case, mode)` runs every provider interleaved (round-robin with a rotating start, after warmups
that exclude compile time) and returns one `Result` per provider; `summarize` adds the ratios. A provider
whose estimated peak memory exceeds what the machine has is not run: it says `OOM (needs ~N GB ...)`.
`sweep` times one model call per resolution in fresh processes (BENCHMARKS.md's time / memory vs resolution).
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
from typing import Callable, Optional, Union

import torch
from torch import nn

import apnt.ops

MODES = ("inference", "train")
MODE_TITLES = {"inference": "inference (no_grad)", "train": "forward+backward"}
FAMILIES = ("attention", "conv", "dense", "models")   # bench/bench_<family>.py each
SLOW_SECONDS = 10.0   # a case whose first (non-compiling) call takes longer gets SLOW_ROUNDS rounds, no 2nd warmup
SLOW_ROUNDS = 3
MEMORY_HEADROOM = 0.9  # run a provider only if its estimated peak fits in this share of MemAvailable


# ---- providers ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Provider:
    key: str                        # short id (pytest ids, JSON)
    name: str                       # what the tables say
    backend: str                    # apnt backend the op runs with
    channels_last: bool = False     # inputs and weights converted beforehand
    compile: Optional[str] = None   # None | "inductor" | "freezing"
    modes: tuple[str, ...] = MODES
    kwargs: tuple[tuple[str, object], ...] = ()   # added to the op call (dense: checkpoint=True)

    @property
    def inference_only(self) -> bool:
        return self.modes == ("inference",)

    @property
    def peer(self) -> bool:
        """A provider we compete with (PyTorch's own ways to run the reference), not one of ours."""
        return self.backend == "reference"


PROVIDERS: tuple[Provider, ...] = (
    Provider("eager", "eager NCHW", "reference"),
    Provider("eager_cl", "eager channels_last", "reference", channels_last=True),
    Provider("compile", "torch.compile", "reference", compile="inductor"),
    Provider("compile_freezing", "compile+freezing", "reference", compile="freezing", modes=("inference",)),
    Provider("native", "native", "native"),
    # A provider, not a case: its memory and speed ratios must be against eager NCHW *without* checkpointing.
    Provider("native_ckpt", "native, checkpoint=True", "native", modes=("train",), kwargs=(("checkpoint", True),)),
)
BASELINE = "eager"   # ratios are against this provider
OURS = "native"      # the provider the targets are about
OP_PROVIDERS = ("eager", "eager_cl", "compile", "compile_freezing", "native")


def find_provider(key: str) -> Provider:
    for p in PROVIDERS:
        if p.key == key:
            return p
    raise ValueError(f"unknown provider {key!r}; expected one of {', '.join(p.key for p in PROVIDERS)}")


# ---- op cases -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One op call: `apnt.ops.<op>(*inputs, *params, **kwargs)` with tensors of the given shapes.

    Parameters named `base[i]` (consecutive) are passed as one list argument `base`, in order: the dense
    block's `weights[0..L-1]` and `biases[0..L-1]`."""
    op: str
    family: str                                    # op family: bench/bench_<family>.py
    inputs: tuple[tuple[str, tuple[int, ...]], ...]  # feature maps, in call order
    params: tuple[tuple[str, tuple[int, ...]], ...]  # weights and biases, in call order
    kwargs: tuple[tuple[str, object], ...] = ()
    label: str = ""                                # what the shape means, e.g. "3x3 64->64"
    quick: bool = False                            # part of `apnt bench --quick`
    providers: tuple[str, ...] = OP_PROVIDERS

    modes = MODES

    @property
    def size(self) -> str:
        return "x".join(map(str, self.inputs[0][1]))

    @property
    def id(self) -> str:
        return "-".join(filter(None, [self.op, self.label.replace(" ", "_").replace("->", "to"), self.size]))

    @property
    def title(self) -> str:
        return " ".join(filter(None, [self.op, self.label, self.size]))

    def estimate_bytes(self, provider: Provider, mode: str) -> Optional[int]:
        return None   # the op cases are small: always run

    def shrunk(self, height: int = 16, width: int = 16) -> "Case":
        """The same case at a tiny spatial size (tests: every provider runs, in milliseconds)."""
        inputs = tuple((n, s[:-2] + (height, width)) for n, s in self.inputs)
        return dataclasses.replace(self, inputs=inputs)


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


def _dense_block(h: int, w: int, c: int = 64, g: int = 32, layers: int = 6, dilation: int = 2,
                 quick: bool = False) -> Case:
    """AHDRNet's DRDB (issue 3): weights[i] (G, C+i*G, 3, 3), biases[i] (G,), fuse_weight/bias."""
    params = (tuple((f"weights[{i}]", (g, c + i * g, 3, 3)) for i in range(layers))
              + tuple((f"biases[{i}]", (g,)) for i in range(layers))
              + (("fuse_weight", (c, c + layers * g, 1, 1)), ("fuse_bias", (c,))))
    return Case("dilated_dense_block", "dense", (("x", (1, c, h, w)),), params, (("dilation", dilation),),
                label=f"C={c} G={g} L={layers} d={dilation}", quick=quick, providers=OP_PROVIDERS + ("native_ckpt",))


CASES: tuple[Case, ...] = (
    _attention_gate(128, 128, quick=True),
    _attention_gate(256, 256),
    _attention_blend(128, 128, quick=True),
    _conv2d(64, 64, 256, 256, quick=True),
    _conv2d(192, 64, 256, 256),
    _dense_block(128, 128, quick=True),
    _dense_block(256, 256),
)


# ---- model cases ----------------------------------------------------------------------------------------------------

MODEL_TITLES = {"ahdrnet": "AHDRNet", "apnt": "APNT-Fusion"}
# Peak bytes per pixel (and sample) of one untiled inference, to skip what cannot fit (DESIGN §7: "OOM").
# AHDRNet: apnt/infer.py's BYTES_PER_TILE_PIXEL (peak-RSS slopes measured on the 2-core / 23 GB machine).
# APNT-Fusion: the torch profiler's allocation trace of one no_grad call, slope between 64² and 128²
# (reference 7.3e3 B/px once the search's share is taken out, native 2.2e3), times the 1.25 that AHDRNet's
# reference shows between such a trace (4.1e3) and its RSS slope. The eager channels_last and compile
# providers are charged reference's rate.
_BYTES_PER_PIXEL = {("ahdrnet", "reference"): 5600, ("ahdrnet", "native"): 3400,
                    ("apnt", "reference"): 9200, ("apnt", "native"): 2800}
_TRAIN_FACTOR = 4       # a training step keeps the activations for backward: a rough multiple of inference
# Reference patch_match holds the (Lq, Lk) float32 scores plus a masked copy and boolean masks: peak RSS per
# query-key pair measured by bench/match_scaling.py at 96² and 128² maps (results/match_scaling.json): ~11 B.
# (The score matrix alone is 4 B/pair: the "~35 GB" of APNT-Fusion's reference at 1500x1000.)
_NFT_BYTES_PER_PAIR = 11
_NFT_STRIDE = 4         # relu3_1 is at 1/4 resolution (apnt_fusion.MULTIPLE)


@dataclass(frozen=True)
class ModelCase:
    """A whole model (`apnt.models.create(model)`, random weights seeded): `inference` is one no_grad call
    `model(ldr, exposure)` on `batch` brackets of width x height; `train` is one training step on them —
    forward, μ-law L1 loss against a random target, backward, Adam step. `max_memory` (bytes): run through
    `apnt.fuse(..., max_memory=)` instead, tiled when the whole image does not fit (the sweep's large sizes)."""
    model: str                       # a name in apnt.models.MODELS
    mode: str                        # "inference" | "train"
    width: int
    height: int
    batch: int = 1
    quick: bool = False
    providers: tuple[str, ...] = ("eager", "compile", "compile_freezing", "native")
    max_memory: Optional[int] = None

    family = "models"

    @property
    def modes(self) -> tuple[str, ...]:
        return (self.mode,)

    @property
    def size(self) -> str:
        return (f"{self.batch}x" if self.batch != 1 else "") + f"{self.width}x{self.height}"

    @property
    def id(self) -> str:
        tiled = f"-tiled{self.max_memory >> 20}M" if self.max_memory else ""
        return f"{self.model}-{self.mode}-{self.size}{tiled}"

    @property
    def title(self) -> str:
        what = (f"training step, batch {self.batch} of {self.width}×{self.height} crops" if self.mode == "train"
                else f"inference {self.width}×{self.height}" + (f", batch {self.batch}" if self.batch != 1 else ""))
        return f"{MODEL_TITLES.get(self.model, self.model)} {what}" + (" (tiled)" if self.max_memory else "")

    def estimate_bytes(self, provider: Provider, mode: str) -> int:
        """Rough peak memory of one call (bytes): activations per pixel, plus for APNT-Fusion's reference
        texture search its Lq x Lk score matrices (any search radius: reference builds the whole matrix)."""
        pixels = self.batch * self.width * self.height
        if self.max_memory:
            return self.max_memory + 100 * pixels   # apnt.fuse keeps its tiles within the budget
        impl = "native" if provider.backend == "native" else "reference"
        need = _BYTES_PER_PIXEL.get((self.model, impl), _BYTES_PER_PIXEL[("ahdrnet", "reference")]) * pixels
        need *= _TRAIN_FACTOR if mode == "train" else 1
        if self.model == "apnt" and impl == "reference":
            cells = math.ceil(self.height / _NFT_STRIDE) * math.ceil(self.width / _NFT_STRIDE)
            need += self.batch * cells * cells * _NFT_BYTES_PER_PAIR
        return int(need)

    def shrunk(self, height: int = 32, width: int = 32) -> "ModelCase":
        return dataclasses.replace(self, width=width, height=height, batch=min(self.batch, 2))


AnyCase = Union[Case, ModelCase]
_AHDRNET_PROVIDERS = ("eager", "eager_cl", "compile", "compile_freezing", "native")
TRAIN_CROP = (4, 128, 128)   # issue 7: a training step is a batch of 4 128x128 crops

MODEL_CASES: tuple[ModelCase, ...] = (
    # 384x256 (W x H; the issue's "256x384", H x W) is 1500x1000 scaled by 0.256: where the 2.5x target sits.
    ModelCase("ahdrnet", "inference", 384, 256, providers=_AHDRNET_PROVIDERS, quick=True),
    ModelCase("ahdrnet", "inference", 512, 512, providers=_AHDRNET_PROVIDERS),
    ModelCase("ahdrnet", "inference", 1500, 1000, providers=_AHDRNET_PROVIDERS),
    ModelCase("ahdrnet", "train", TRAIN_CROP[2], TRAIN_CROP[1], batch=TRAIN_CROP[0],
              providers=("eager", "eager_cl", "compile", "native")),
    ModelCase("apnt", "inference", 512, 512),
    ModelCase("apnt", "inference", 1500, 1000),
    ModelCase("apnt", "train", TRAIN_CROP[2], TRAIN_CROP[1], batch=TRAIN_CROP[0],
              providers=("eager", "compile", "native")),
)
ALL_CASES: tuple[AnyCase, ...] = CASES + MODEL_CASES


def providers_for(case: AnyCase, mode: str) -> tuple[Provider, ...]:
    return tuple(p for p in map(find_provider, case.providers) if mode in p.modes)


def matrix(family: str) -> list[tuple[AnyCase, Provider, str]]:
    """Every (case, provider, mode) of one family: what bench/bench_<family>.py parametrizes over."""
    return [(c, p, m) for c in ALL_CASES if c.family == family for m in c.modes for p in providers_for(c, m)]


def bench_id(case: AnyCase, provider: Provider, mode: str) -> str:
    return f"{case.id}-{mode}-{provider.key}" if case.family != "models" else f"{case.id}-{provider.key}"


def find_case(case_id: str) -> AnyCase:
    """A case by id; a JSON object is a ModelCase's fields (the sweep's cases are not in the registry)."""
    if case_id.startswith("{"):
        return ModelCase(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(case_id).items()})
    for c in ALL_CASES:
        if c.id == case_id:
            return c
    raise ValueError(f"unknown benchmark case {case_id!r}")


def case_family(case_id: str) -> Optional[str]:
    """The family of a case id from a results file (None for a case no longer defined)."""
    try:
        return find_case(case_id).family
    except ValueError:
        return None


# ---- setup: one builder per kind of case, for speed and memory runs -------------------------------------------------

@dataclass
class Bench:
    """A ready-to-run case: `step()` is one timed iteration; `forward()` runs the forward with autograd
    recording (memory runs); `leaves` are the inputs and parameters (excluded from memory held for backward)."""
    step: Callable[[], object]
    forward: Callable[[], torch.Tensor]
    leaves: list[torch.Tensor]


def _call_args(names: list[str], tensors: list[torch.Tensor]) -> list:
    """Flat parameters → the op's positional arguments: consecutive `base[i]` entries become one list."""
    args: list = []
    lists: dict[str, list] = {}
    for name, t in zip(names, tensors):
        base, bracket, _ = name.partition("[")
        if not bracket:
            args.append(t)
        elif base in lists:
            lists[base].append(t)
        else:
            lists[base] = [t]
            args.append(lists[base])
    return args


class OpModule(nn.Module):
    """One apnt op with its weights as nn.Parameters, so inductor freezing can fold and prepack them."""

    def __init__(self, case: Case, params: dict[str, torch.Tensor], backend: str, extra_kwargs=()):
        super().__init__()
        self.op = getattr(apnt.ops, case.op)
        self.backend = backend
        self.kwargs = dict(case.kwargs) | dict(extra_kwargs)
        self.names = list(params)
        self.attrs = [n.replace("[", "_").replace("]", "") for n in self.names]   # `weights[0]` → `weights_0`
        for attr, t in zip(self.attrs, params.values()):
            self.register_parameter(attr, nn.Parameter(t))

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        args = _call_args(self.names, [getattr(self, a) for a in self.attrs])
        return self.op(*inputs, *args, backend=self.backend, **self.kwargs)


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


def _build_op(case: Case, provider: Provider, mode: str, seed: int) -> Bench:
    train = mode == "train"
    inputs = list(_make_tensors(case.inputs, seed, provider.channels_last, False).values())
    module = OpModule(case, _make_tensors(case.params, seed + 1, provider.channels_last, True), provider.backend,
                      provider.kwargs)
    module.requires_grad_(train)
    for t in inputs:
        t.requires_grad_(train)
    fn = _compiled(module, freezing=provider.compile == "freezing") if provider.compile else module
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


def _bracket(batch: int, height: int, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random LDR frames in [0, 1] (a share of them above the saturation threshold, so APNT-Fusion's texture
    stream has work) and exposure times 1 : 4 : 16. Speed does not depend on the picture."""
    gen = torch.Generator().manual_seed(seed)
    ldr = torch.rand(batch, 3, 3, height, width, generator=gen)
    return ldr, torch.tensor([[1.0, 4.0, 16.0]]).expand(batch, 3).contiguous()


def _mu_law_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # apnt train's loss (apnt.train.mu_law_l1), written here so the benchmarks do not import the trainer.
    from apnt.tonemap import mu_law
    return (mu_law(pred.float()) - mu_law(target.float())).abs().mean()


def _build_model(case: ModelCase, provider: Provider, mode: str, seed: int) -> Bench:
    import apnt.models

    torch.manual_seed(seed)   # the same random weights for every provider
    model = apnt.models.create(case.model, backend=provider.backend)
    if provider.channels_last:   # weights in channels_last: every convolution's output follows them
        model = model.to(memory_format=torch.channels_last)
    model.train(mode == "train")
    ldr, exposure = _bracket(case.batch, case.height, case.width, seed)
    fn = _compiled(model, freezing=provider.compile == "freezing") if provider.compile else model
    if case.max_memory:
        if provider.compile or mode != "inference":
            raise ValueError("tiled model cases are eager inference only")
        from apnt.infer import fuse
        fn = lambda ldr, exposure: fuse(ldr, exposure, model=model, max_memory=case.max_memory)  # noqa: E731
    leaves = [ldr, exposure] + list(model.parameters())
    if mode == "inference":
        def step():
            with torch.no_grad():
                return fn(ldr, exposure)
        return Bench(step, lambda: fn(ldr, exposure), leaves)

    target = torch.rand(case.batch, 3, case.height, case.width, generator=torch.Generator().manual_seed(seed + 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def forward() -> torch.Tensor:
        return _mu_law_l1(fn(ldr, exposure), target)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = forward()
        loss.backward()
        optimizer.step()
        return loss

    return Bench(step, forward, leaves)


def setup(case: AnyCase, provider: Provider, mode: str, seed: int = 0) -> Bench:
    """Inputs, weights and the callable for `case` run by `provider` in `mode` ("inference" | "train").

    Compilation is lazy: the first `step()` compiles (callers warm up before timing)."""
    if mode not in MODES:
        raise ValueError(f"argument 'mode': expected one of {', '.join(MODES)}, got {mode!r}")
    if mode not in case.modes:
        raise ValueError(f"case {case.id!r} has no {mode} mode")
    if provider.key not in case.providers or mode not in provider.modes:
        raise ValueError(f"provider {provider.name!r} does not run {case.id!r} in {mode} mode")
    build = _build_model if isinstance(case, ModelCase) else _build_op
    return build(case, provider, mode, seed)


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


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
