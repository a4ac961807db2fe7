"""Family `conv` (DESIGN §3.0): apnt.ops.conv2d, native vs reference.

The native CPU backend has three engines: Winograd F(4x4,3x3) for float32 3x3 kernels (also used for the
input gradient), oneDNN with a fused post-op for other float32/bfloat16 kernels, and ATen + our epilogue
body (the CUDA kernel body) for float64/float16. Float64 tests reach only the last one, so float32 and
bfloat16 have their own comparisons. Every comparison runs with the grid emulator off and on.
"""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import apnt.ops
from apnt.ops import BackendUnavailableError, conv2d
from apnt.ops._native import winograd_gemm_engine
from apnt.ops import conv as conv_module
from apnt_test_helpers import (LAYOUTS, LOWP, LOWP_DRAWS, compare_to_reference, emulation, saved_bytes,
                               make_tensor, requires_native)

pytestmark = requires_native


@dataclass(frozen=True)
class ConvSample:
    n: int
    c: int
    o: int
    h: int
    w: int
    k: int
    dilation: int = 1
    activation: str = "none"
    slope: float = 0.01
    bias: bool = True
    grad: tuple = (True, True, True)  # requires_grad of x, w, b

    def __str__(self):
        g = "".join(n for n, r in zip("xwb", self.grad) if r) or "nograd"
        return (f"n{self.n}c{self.c}o{self.o}_{self.h}x{self.w}_k{self.k}d{self.dilation}_{self.activation}"
                f"{self.slope if self.activation == 'leaky_relu' else ''}{'' if self.bias else '_nobias'}_{g}")

    def make(self, dtype=torch.float64, layout="contiguous", requires_grad=True):
        rg = [requires_grad and r for r in self.grad]
        x = make_tensor((self.n, self.c, self.h, self.w), dtype, layout, rg[0])
        fan_in = self.c * self.k ** 2
        w = make_tensor((self.o, self.c, self.k, self.k), dtype, layout, rg[1], scale=1 / math.sqrt(fan_in))
        b = make_tensor((self.o,), dtype, layout, rg[2], scale=0.5) if self.bias else None
        return [x, w, b]

    @property
    def kwargs(self):
        return dict(dilation=self.dilation, activation=self.activation, negative_slope=self.slope)


def sample_inputs():
    """Weird shapes on purpose: N=3, 1x1 maps, k=1/3/5, odd HxW, C=1, O != C, dilation 1/2/3 (also larger than
    the map), channel counts that are not multiples of the 16-lane Winograd vectors, every activation."""
    return [
        ConvSample(3, 4, 5, 7, 13, 3, 1, "relu"),
        ConvSample(2, 3, 2, 7, 13, 3, 2, "leaky_relu", 0.2),
        ConvSample(1, 5, 3, 9, 6, 3, 3, "sigmoid", grad=(False, True, True)),
        ConvSample(1, 1, 1, 7, 13, 3, 1, "leaky_relu", 0.0),
        ConvSample(2, 3, 4, 1, 1, 3, 1, "sigmoid"),
        ConvSample(1, 2, 3, 1, 1, 5, 2, "relu", bias=False),
        ConvSample(3, 5, 3, 6, 5, 1, 1, "sigmoid", grad=(True, False, False)),
        ConvSample(2, 6, 1, 7, 13, 1, 3, "leaky_relu", 1.5, bias=False),
        ConvSample(1, 3, 4, 9, 8, 5, 1, "none"),
        ConvSample(2, 2, 3, 7, 13, 5, 3, "leaky_relu", 0.01, grad=(True, True, False)),
        ConvSample(1, 17, 19, 5, 9, 3, 1, "leaky_relu", 0.01),
        ConvSample(1, 2, 2, 3, 2, 3, 3, "none", bias=False),  # dilation larger than the map
        ConvSample(2, 3, 2, 1, 11, 3, 2, "relu"),
    ]


SAMPLES = sample_inputs()
MEDIUM = [ConvSample(1, 64, 64, 32, 32, 3, 1, "relu"), ConvSample(1, 64, 64, 32, 32, 3, 2, "leaky_relu", 0.1)]
EMULATE = pytest.mark.parametrize("emulate", [False, True], ids=["direct", "emulated"])


def _native(s):
    return lambda x, w, b: conv2d(x, w, b, **s.kwargs, backend="native")


def _reference(s):
    return lambda x, w, b: conv2d(x, w, b, **s.kwargs, backend="reference")


# ---- native vs reference -----------------------------------------------------------------------------------

@EMULATE
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("s", SAMPLES, ids=str)
def test_float64_matches_reference(s, layout, emulate):
    inputs = s.make(torch.float64, layout)
    with emulation(emulate):
        compare_to_reference(_native(s), _reference(s), inputs, mode="f64", name=str(s))


@EMULATE
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("s", SAMPLES, ids=str)
def test_float32_fast_paths_match_reference(s, layout, emulate):
    # 3x3: Winograd (forward and input gradient); 1x1, 5x5: oneDNN with the activation as a post-op.
    rtol = 1e-4 if s.k == 3 else 1e-5
    inputs = s.make(torch.float32, layout)
    with emulation(emulate):
        compare_to_reference(_native(s), _reference(s), inputs, mode="f32", rtol=rtol, name=str(s))


@pytest.mark.parametrize("s,emulate", [(MEDIUM[0], False), (MEDIUM[1], True)], ids=["direct", "emulated"])
def test_float32_winograd_medium(s, emulate, threads):
    with emulation(emulate):
        compare_to_reference(_native(s), _reference(s), s.make(torch.float32), mode="f32", rtol=1e-4,
                             name=str(s))


# ---- the two GEMM engines behind the Winograd convolution -------------------------------------------------
# Output widths 16, 48 (32+16), 80 (64+16), 96 (64+32), 112 (64+32+16) cover every column block of our AVX-512
# kernel; the backward's GEMM has width K: 64, 16, 32 take it too, 200 and 1 fall back to at::bmm.
GEMM_SAMPLES = [ConvSample(3, 64, 16, 7, 13, 3, 1, "relu"), ConvSample(1, 16, 112, 9, 9, 3, 2, "leaky_relu", 0.1),
                ConvSample(2, 200, 48, 11, 5, 3, 1), ConvSample(1, 1, 80, 6, 6, 3, 3, "relu"),
                ConvSample(1, 32, 96, 30, 21, 3, 1)]


@pytest.mark.parametrize("s", GEMM_SAMPLES, ids=str)
def test_winograd_gemm_engine_matches_reference(s, threads):
    compare_to_reference(_native(s), _reference(s), s.make(torch.float32, "channels_last"), mode="f32", rtol=1e-4,
                         name=f"{s} [{winograd_gemm_engine()}]")


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


def test_own_gemm_runs_on_avx512_cpus():
    # Otherwise the test above would silently exercise only at::bmm on the machine that has our kernel.
    expected = "apnt-avx512" if {"avx512f", "avx512vl", "avx512dq", "avx512bw"} <= _cpu_flags() else "aten-bmm"
    if os.environ.get("APNT_WINOGRAD_GEMM") == "aten":
        expected = "aten-bmm"
    assert winograd_gemm_engine() == expected


@pytest.mark.skipif(os.environ.get("APNT_WINOGRAD_GEMM") == "aten", reason="already the at::bmm engine")
def test_aten_gemm_engine_matches_reference():
    # The engine is chosen once per process, so the at::bmm one runs in a child with the switch set.
    env = {**os.environ, "APNT_WINOGRAD_GEMM": "aten"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
           "-k", "winograd_gemm_engine_matches_reference or own_gemm_runs"]
    # From the repo root: apnt imports from there even when it is only built in place (make sanitize).
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=Path(__file__).parent.parent)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert f"{len(GEMM_SAMPLES) + 1} passed" in run.stdout, run.stdout[-2000:]


@pytest.mark.parametrize("activation,factor", [("relu", 0.25), ("leaky_relu", 0.25), ("sigmoid", 1.0),
                                               ("none", 0.0)])
def test_memory_held_for_backward(activation, factor, backend="native"):
    # Beyond x, w, b (excluded): reference keeps relu's float32 output; native a bool mask of it (tests/triton:
    # the same for triton).
    s = ConvSample(1, 8, 16, 12, 10, 3, 1, activation, 0.1)
    x, w, b = s.make(torch.float32)
    out_bytes = 4 * 16 * 12 * 10
    held, saves = saved_bytes(lambda: conv2d(x, w, b, **s.kwargs, backend=backend), [x, w, b])
    assert saves >= 2, "the hook did not see the op's saves"
    assert held == factor * out_bytes, f"{activation}: holds {held} bytes, output is {out_bytes}"


@EMULATE
@pytest.mark.parametrize("dtype", LOWP, ids=str)
@pytest.mark.parametrize("s", SAMPLES[:10], ids=str)
def test_low_precision_flash_attention_recipe(s, dtype, emulate):
    with emulation(emulate):
        compare_to_reference(_native(s), _reference(s), lambda: s.make(dtype), mode="lowp", draws=LOWP_DRAWS,
                             name=str(s))


@EMULATE
@pytest.mark.parametrize("s", [ConvSample(1, 1, 2, 5, 6, 3, grad=(True, False, False)),
                               ConvSample(2, 2, 1, 5, 6, 3, 2, grad=(True, True, False))], ids=str)
def test_float32_winograd_one_channel(s, emulate):
    # A one-channel NCHW tensor counts as channels_last-contiguous although its channel stride is H*W: the
    # Winograd input transform (x in forward, the caller's grad_out in backward when there is no activation)
    # must not assume unit channel stride. (Crashed on an internal assert in an earlier build.)
    with emulation(emulate):
        compare_to_reference(_native(s), _reference(s), s.make(torch.float32), mode="f32", name=str(s))


@pytest.mark.parametrize("activation", conv_module.ACTIVATIONS)
@pytest.mark.parametrize("dtype,k,hw", [(torch.float64, 3, (9, 10)), (torch.float32, 3, (9, 10)),
                                        (torch.float32, 1, (9, 10)), (torch.float32, 5, (1, 1)),
                                        (torch.float16, 3, (9, 10)), (torch.bfloat16, 3, (9, 10))], ids=str)
def test_nan_is_not_hidden(dtype, k, hw, activation):
    # Wherever reference is NaN, native must be NaN too: relu used to map NaN to 0, silently masking a diverging
    # layer; oneDNN's sigmoid post-op gave 0 for NaN on a 1x1 map with a 5x5 filter (found by make fuzz).
    # (Winograd may spread a NaN over its whole 4x4 output tile, beyond the receptive field: tolerated,
    # it is inherent to the transform.)
    x = torch.randn(1, 2, *hw, dtype=dtype)
    x[0, 1, hw[0] // 2, hw[1] // 2] = float("nan")
    w, b = torch.randn(3, 2, k, k, dtype=dtype), torch.randn(3, dtype=dtype)
    native = conv2d(x, w, b, activation=activation, backend="native")
    ref = conv2d(x, w, b, activation=activation, backend="reference")
    assert ref.isnan().any()
    assert native.isnan()[ref.isnan()].all(), f"{int((ref.isnan() & ~native.isnan()).sum())} NaNs hidden"


def test_output_is_channels_last():
    s = SAMPLES[0]
    out = conv2d(*s.make(torch.float32), **s.kwargs, backend="native")
    assert out.is_contiguous(memory_format=torch.channels_last)


# ---- gradcheck, opcheck ------------------------------------------------------------------------------------

GRADCHECK = [ConvSample(2, 3, 2, 5, 6, 3, 1, "leaky_relu", 0.2), ConvSample(1, 2, 3, 4, 7, 3, 2, "sigmoid"),
             ConvSample(1, 2, 2, 5, 3, 1, 1, "relu", bias=False), ConvSample(1, 2, 1, 6, 5, 5, 1, "none")]


@pytest.mark.parametrize("layout", ["contiguous", "sliced"])
@pytest.mark.parametrize("s", GRADCHECK, ids=str)
def test_gradcheck(s, layout):
    assert torch.autograd.gradcheck(_native(s), s.make(torch.float64, layout), eps=1e-6, atol=1e-6)


OPCHECK = [SAMPLES[0], SAMPLES[2], SAMPLES[6], SAMPLES[7],
           ConvSample(1, 3, 2, 5, 4, 3, 2, "sigmoid", grad=(False,) * 3)]  # every requires_grad mix


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("s", OPCHECK, ids=str)
def test_opcheck(s, dtype):
    x, w, b = s.make(dtype)
    torch.library.opcheck(torch.ops.apnt.conv2d_fwd.default, (x, w, b, s.dilation, s.activation, s.slope))


@pytest.mark.parametrize("layout", ["channels_last", "sliced", "sliced_cl"])
def test_opcheck_layouts(layout):
    s = OPCHECK[0]
    x, w, b = s.make(torch.float32, layout)
    torch.library.opcheck(torch.ops.apnt.conv2d_fwd.default, (x, w, b, s.dilation, s.activation, s.slope))


# ---- torch.compile, autocast -------------------------------------------------------------------------------

def _compile_and_check(s, backend):
    """Forward and backward of the compiled op (fullgraph: a graph break fails) against reference."""
    torch._dynamo.reset()  # fresh: see test_compile_varying_negative_slope
    fn = torch.compile(_native(s), fullgraph=True, backend=backend)
    compare_to_reference(fn, _reference(s), s.make(torch.float32), mode="f32", rtol=1e-4, name=str(s))


def test_compile_inductor_forward_backward():
    _compile_and_check(ConvSample(2, 3, 4, 6, 7, 3, 1, "leaky_relu", 0.1), "inductor")


@pytest.mark.parametrize("s", [ConvSample(2, 3, 4, 6, 7, 3, 2, "relu"), ConvSample(1, 3, 2, 5, 5, 1, 1, "sigmoid",
                                                                                  bias=False)], ids=str)
def test_compile_aot_eager_forward_backward(s):
    _compile_and_check(s, "aot_eager")


def test_compile_aot_eager_dynamic_shapes():
    torch._dynamo.reset()
    # Automatic dynamic: the second shape recompiles with symbolic sizes, the third reuses that graph.
    fn = torch.compile(lambda x, w, b: conv2d(x, w, b, activation="leaky_relu", negative_slope=0.1, backend="native"),
                       fullgraph=True, backend="aot_eager")
    for n, h, w in ((2, 6, 7), (1, 9, 5), (3, 4, 11)):
        s = ConvSample(n, 3, 4, h, w, 5, 1, "leaky_relu", 0.1)
        compare_to_reference(fn, _reference(s), s.make(torch.float32), mode="f32", rtol=1e-5, name=str(s))


def test_compile_varying_negative_slope():
    fn = torch.compile(lambda x, w, slope: conv2d(x, w, activation="leaky_relu", negative_slope=slope,
                                                  backend="native"), fullgraph=True, backend="aot_eager")
    x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    for slope in (0.1, 0.2, 0.3):
        torch.testing.assert_close(fn(x, w, slope), conv2d(x, w, activation="leaky_relu", negative_slope=slope,
                                                           backend="reference"), rtol=1e-4, atol=1e-4)


def test_autocast_bfloat16_forward_backward():
    s = ConvSample(2, 8, 6, 9, 11, 3, 1, "leaky_relu", 0.1)
    x, w, b = s.make(torch.float32)
    g = torch.randn(2, 6, 9, 11)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv2d(x, w, b, **s.kwargs, backend="native")
    assert out.dtype == torch.bfloat16
    got = torch.autograd.grad(out, [x, w, b], g.to(torch.bfloat16))
    ref = _reference(s)(x, w, b)
    want = torch.autograd.grad(ref, [x, w, b], g)
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
    for name, a, e in zip("xwb", got, want):
        assert a.dtype == torch.float32 and torch.isfinite(a).all(), name
        torch.testing.assert_close(a, e, rtol=2e-2, atol=2e-2 * e.abs().max().item(), msg=f"grad {name}")


# ---- bad inputs -----------------------------------------------------------------------------------------------

def _good():
    return dict(x=torch.randn(2, 4, 5, 6), w=torch.randn(3, 4, 3, 3), b=torch.randn(3))


BAD_INPUTS = [
    # id, replacements, keyword overrides, exception, patterns the message must contain
    ("x_rank", dict(x=torch.randn(4, 5, 6)), {}, ValueError, ["argument 'x'", "(N, C, H, W)"]),
    ("x_not_tensor", dict(x=[[1.0]]), {}, TypeError, ["argument 'x'", "(N, C, H, W)"]),
    ("x_integer", dict(x=torch.ones(2, 4, 5, 6, dtype=torch.int32)), {}, TypeError, ["argument 'x'", "int32"]),
    ("x_empty", dict(x=torch.randn(0, 4, 5, 6)), {}, ValueError, ["argument 'x'", "(N, C, H, W)", "(0, 4, 5, 6)"]),
    ("x_empty_spatial", dict(x=torch.randn(2, 4, 0, 6)), {}, ValueError, ["argument 'x'", "non-empty"]),
    ("w_rank", dict(w=torch.randn(3, 4, 3)), {}, ValueError, ["argument 'w'", "(O, C, k, k)"]),
    ("w_channels", dict(w=torch.randn(3, 5, 3, 3)), {}, ValueError, ["argument 'w'", "C=4", "(3, 5, 3, 3)"]),
    ("w_even_kernel", dict(w=torch.randn(3, 4, 2, 2)), {}, ValueError, ["argument 'w'", "odd", "(3, 4, 2, 2)"]),
    ("w_not_square", dict(w=torch.randn(3, 4, 3, 5)), {}, ValueError, ["argument 'w'", "odd", "(3, 4, 3, 5)"]),
    ("w_empty", dict(w=torch.randn(0, 4, 3, 3)), {}, ValueError, ["argument 'w'", "(O, C, k, k)"]),
    ("w_dtype", dict(w=torch.randn(3, 4, 3, 3, dtype=torch.float64)), {}, TypeError,
     ["argument 'w'", "float32", "float64"]),
    ("b_shape", dict(b=torch.randn(4)), {}, ValueError, ["argument 'b'", "(O,)", "(4,)"]),
    ("b_rank", dict(b=torch.randn(3, 1)), {}, ValueError, ["argument 'b'", "(O=3,)"]),
    ("b_dtype", dict(b=torch.randn(3, dtype=torch.float16)), {}, TypeError, ["argument 'b'", "float16"]),
    ("negative_slope", {}, dict(activation="leaky_relu", negative_slope=-0.1), ValueError,
     ["argument 'negative_slope'", ">= 0"]),
    ("nan_slope", {}, dict(negative_slope=float("nan")), ValueError, ["argument 'negative_slope'"]),
    ("activation", {}, dict(activation="gelu"), ValueError, ["argument 'activation'", "leaky_relu", "gelu"]),
    ("dilation_0", {}, dict(dilation=0), ValueError, ["argument 'dilation'", ">= 1"]),
    ("dilation_float", {}, dict(dilation=1.5), ValueError, ["argument 'dilation'"]),
    ("padding", {}, dict(padding="valid"), ValueError, ["argument 'padding'", "same"]),
    ("backend_name", {}, dict(backend="cuda"), ValueError, ["argument 'backend'", "native", "reference", "triton"]),
]


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_inputs_raise_naming_the_argument(case, backend):
    _, replace, overrides, exc, patterns = case
    args = {**_good(), **replace}
    kwargs = {"backend": backend, **overrides}
    with pytest.raises(exc) as info:
        conv2d(args["x"], args["w"], args["b"], **kwargs)
    for p in patterns:
        assert p in str(info.value), f"{p!r} not in {str(info.value)!r}"


def test_cpp_entry_point_checks_too():
    # Direct torch.ops callers bypass the Python checks; the C++ ones still name the argument.
    with pytest.raises(ValueError, match="argument 'w'"):
        torch.ops.apnt.conv2d_fwd(torch.randn(1, 4, 5, 5), torch.randn(3, 5, 3, 3), None, 1, "none", 0.0)
    with pytest.raises(ValueError, match="argument 'activation'"):
        torch.ops.apnt.conv2d_fwd(torch.randn(1, 4, 5, 5), torch.randn(3, 4, 3, 3), None, 1, "gelu", 0.0)
    with pytest.raises(ValueError, match="argument 'dilation'"):
        torch.ops.apnt.conv2d_fwd(torch.randn(1, 4, 5, 5), torch.randn(3, 4, 3, 3), None, 0, "none", 0.0)


# ---- backend selection ---------------------------------------------------------------------------------------

def test_triton_on_cpu_without_interpreter_lists_every_backend(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(BackendUnavailableError) as info:
        conv2d(**_good(), backend="triton")
    msg = str(info.value)
    assert "conv2d" in msg and "'triton'" in msg
    for name in apnt.ops.BACKENDS:
        assert re.search(rf"^\s+{name}: \S", msg, re.M), f"backend {name} not listed in:\n{msg}"
    assert re.search(r"^\s+reference: available", msg, re.M)
    assert re.search(r"^\s+native: available", msg, re.M)
    assert re.search(r"^\s+triton: .*(TRITON_INTERPRET|not installed)", msg, re.M)


def _spy_reference(monkeypatch):
    calls = []
    real = conv_module.conv2d_reference
    monkeypatch.setattr(conv_module, "conv2d_reference", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_auto_is_native_on_cpu(monkeypatch):
    monkeypatch.delenv("APNT_BACKEND", raising=False)
    calls = _spy_reference(monkeypatch)
    out = conv2d(**_good())
    assert not calls and out.is_contiguous(memory_format=torch.channels_last)


def test_apnt_backend_env_replaces_auto(monkeypatch):
    calls = _spy_reference(monkeypatch)
    monkeypatch.setenv("APNT_BACKEND", "reference")
    conv2d(**_good())
    assert calls == [1]
    conv2d(**_good(), backend="native")  # an explicit backend wins over the environment
    assert calls == [1]
    monkeypatch.setenv("APNT_BACKEND", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(BackendUnavailableError, match="APNT_BACKEND"):
        conv2d(**_good())
    monkeypatch.setenv("APNT_BACKEND", "fastest")
    with pytest.raises(ValueError, match="argument 'backend'"):
        conv2d(**_good())


def test_reference_is_the_documented_formula():
    # The oracle itself: act(F.conv2d(x, w, b, dilation=d, padding=d*(k//2))).
    x, w, b = torch.randn(2, 3, 7, 9, dtype=torch.float64), torch.randn(4, 3, 5, 5, dtype=torch.float64), None
    want = F.leaky_relu(F.conv2d(x, w, b, dilation=2, padding=4), 0.3)
    got = conv2d(x, w, b, dilation=2, activation="leaky_relu", negative_slope=0.3, backend="reference")
    torch.testing.assert_close(got, want, rtol=0, atol=0)


# ---- regressions: bugs this suite found, minimal reproductions ------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_bias_grad_with_channels_last_x(dtype):
    # The bias gradient was made .contiguous(x.suggest_memory_format()): a RuntimeError for a channels_last x,
    # which is what every native op returns.
    s = ConvSample(1, 2, 3, 4, 4, 3)
    compare_to_reference(_native(s), _reference(s), s.make(dtype, "channels_last"),
                         mode="f64" if dtype == torch.float64 else "f32", name=str(s))


@pytest.mark.parametrize("dtype,k", [(torch.float32, 1), (torch.float32, 5), (torch.bfloat16, 3)], ids=str)
def test_strided_bias_on_the_onednn_path(dtype, k):
    # A non-contiguous bias went to mkldnn::_convolution_pointwise as is and was read as if contiguous.
    s = ConvSample(1, 3, 4, 6, 7, k, grad=(False, False, False))
    x, w, _ = s.make(dtype)
    b = make_tensor((4,), dtype, "sliced")  # every other element of a longer vector
    mode = "f32" if dtype == torch.float32 else "lowp"
    compare_to_reference(_native(s), _reference(s), [x, w, b], mode=mode, rtol=1e-5, name=str(s))
