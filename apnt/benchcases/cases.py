"""What to measure: the providers (ways to run a case), the op and model cases and their registry."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Optional, Union

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
# AHDRNet: apnt/tiling.py's BYTES_PER_TILE_PIXEL (peak-RSS slopes measured on the 2-core / 23 GB machine).
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
    # 384x256 (W x H; the "256x384", H x W) is 1500x1000 scaled by 0.256: where the 2.5x target sits.
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
