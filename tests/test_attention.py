"""Family `attention` (DESIGN §3.1): attention_gate, attention_gate_map, attention_blend, native vs reference.

The native backend runs the convolutions of the conv family (float32 3x3: Winograd reading x and ref in place;
other float32 / bfloat16: oneDNN; float64 / float16: ATen) and the gate / blend epilogue bodies, which are the
CUDA kernel bodies: every comparison runs with the grid emulator off and on. Every gradient is compared,
including the one reaching the attention map returned by attention_gate_map.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

import apnt.ops
from apnt.ops import BackendUnavailableError, attention_blend, attention_gate, attention_gate_map
from apnt.ops import attention as attention_module
from apnt_test_helpers import (LAYOUTS, LOWP, LOWP_DRAWS, compare_to_reference, emulation,
                               make_tensor, requires_native)

pytestmark = requires_native
EMULATE = pytest.mark.parametrize("emulate", [False, True], ids=["direct", "emulated"])


# ---- samples -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GateSample:
    n: int
    cx: int
    cr: int
    m: int
    h: int
    w: int
    k1: int = 3
    k2: int = 3
    slope: float = 0.01
    grad: tuple = (True,) * 6  # requires_grad of x, ref, w1, b1, w2, b2

    def __str__(self):
        g = "".join(n for n, r in zip(("x", "r", "W1", "b1", "W2", "b2"), self.grad) if r) or "nograd"
        return (f"n{self.n}cx{self.cx}cr{self.cr}m{self.m}_{self.h}x{self.w}_k{self.k1}{self.k2}_s{self.slope}_{g}")

    def make(self, dtype=torch.float64, layout="contiguous", requires_grad=True):
        rg = [requires_grad and r for r in self.grad]
        c = self.cx + self.cr
        return [make_tensor((self.n, self.cx, self.h, self.w), dtype, layout, rg[0]),
                make_tensor((self.n, self.cr, self.h, self.w), dtype, layout, rg[1]),
                make_tensor((self.m, c, self.k1, self.k1), dtype, layout, rg[2],
                            scale=1 / math.sqrt(c * self.k1 ** 2)),
                make_tensor((self.m,), dtype, layout, rg[3], scale=0.5),
                make_tensor((self.cx, self.m, self.k2, self.k2), dtype, layout, rg[4],
                            scale=2 / math.sqrt(self.m * self.k2 ** 2)),
                make_tensor((self.cx,), dtype, layout, rg[5], scale=0.5)]


@dataclass(frozen=True)
class BlendSample:
    n: int
    c: int
    h: int
    w: int
    k: int = 3
    grad: tuple = (True,) * 4  # x, y, w, b

    def __str__(self):
        g = "".join(n for n, r in zip(("x", "y", "W", "b"), self.grad) if r) or "nograd"
        return f"n{self.n}c{self.c}_{self.h}x{self.w}_k{self.k}_{g}"

    def make(self, dtype=torch.float64, layout="contiguous", requires_grad=True):
        rg = [requires_grad and r for r in self.grad]
        return [make_tensor((self.n, self.c, self.h, self.w), dtype, layout, rg[0]),
                make_tensor((self.n, self.c, self.h, self.w), dtype, layout, rg[1]),
                make_tensor((self.c, 2 * self.c, self.k, self.k), dtype, layout, rg[2],
                            scale=2 / math.sqrt(2 * self.c * self.k ** 2)),
                make_tensor((self.c,), dtype, layout, rg[3], scale=0.5)]


def gate_samples():
    """N=3, 1x1 maps, k = 1/3/5 (and k1 != k2), odd HxW, Cx != Cr, C=1 and M=1, channel counts that are not
    multiples of 16 (Winograd lanes), slopes 0 / 0.01 / 0.2, and differentiable mixes."""
    return [
        GateSample(3, 4, 2, 5, 7, 13),
        GateSample(2, 3, 5, 4, 6, 5, 3, 1, 0.2),
        GateSample(1, 2, 3, 6, 9, 7, 5, 3, 0.0),
        GateSample(2, 1, 1, 1, 7, 13, 3, 3, 0.01),
        GateSample(2, 3, 2, 4, 1, 1, 3, 3, 0.1),
        GateSample(1, 2, 2, 3, 5, 4, 1, 1, 0.01, grad=(True, False, False, False, False, False)),
        GateSample(2, 3, 1, 17, 5, 6, 3, 5, 0.01, grad=(False, True, True, True, False, False)),
        GateSample(1, 2, 4, 3, 6, 7, 3, 3, 0.2, grad=(False, False, True, False, True, True)),
        GateSample(1, 18, 3, 19, 5, 9, 3, 3, 0.01),
    ]


def blend_samples():
    return [
        BlendSample(3, 4, 7, 13, 3),
        BlendSample(2, 1, 7, 13, 3),
        BlendSample(2, 3, 1, 1, 3),
        BlendSample(1, 2, 6, 5, 1, grad=(True, False, True, False)),
        BlendSample(2, 3, 9, 7, 5, grad=(False, True, False, True)),
        BlendSample(1, 17, 5, 6, 3),
    ]


GATES, BLENDS = gate_samples(), blend_samples()
# "gate": attention_gate (no gradient reaches the attention map: grad_attention is None in backward);
# "gate_map": attention_gate_map with gradients for both the output and the attention map.
GATE_VARIANTS = pytest.mark.parametrize("variant", ["gate", "gate_map"])


def gate_fn(variant, backend, slope):
    if variant == "gate":
        return lambda *t: attention_gate(*t, negative_slope=slope, backend=backend)
    return lambda *t: attention_gate_map(*t, negative_slope=slope, backend=backend)


def blend_fn(backend):
    return lambda *t: attention_blend(*t, backend=backend)


def _compare_gate(s, variant, inputs, mode, rtol=1e-4, draws=1):
    receives = [True, variant == "gate_map"]
    return compare_to_reference(gate_fn(variant, "native", s.slope), gate_fn(variant, "reference", s.slope), inputs,
                                mode=mode, receives_grad=receives, rtol=rtol, name=f"{variant} {s}", draws=draws)


def _compare_blend(s, inputs, mode, rtol=1e-4, draws=1):
    return compare_to_reference(blend_fn("native"), blend_fn("reference"), inputs, mode=mode, rtol=rtol,
                                name=f"blend {s}", draws=draws)


# ---- native vs reference -----------------------------------------------------------------------------------

@EMULATE
@GATE_VARIANTS
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("s", GATES, ids=str)
def test_gate_float64_matches_reference(s, layout, variant, emulate):
    inputs = s.make(torch.float64, layout)
    with emulation(emulate):
        _compare_gate(s, variant, inputs, "f64")


@EMULATE
@GATE_VARIANTS
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("s", GATES, ids=str)
def test_gate_float32_fast_paths_match_reference(s, layout, variant, emulate):
    inputs = s.make(torch.float32, layout)
    with emulation(emulate):
        _compare_gate(s, variant, inputs, "f32", rtol=1e-4 if 3 in (s.k1, s.k2) else 2e-5)


@EMULATE
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("s", BLENDS, ids=str)
def test_blend_float64_matches_reference(s, layout, emulate):
    inputs = s.make(torch.float64, layout)
    with emulation(emulate):
        _compare_blend(s, inputs, "f64")


@EMULATE
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("s", BLENDS, ids=str)
def test_blend_float32_fast_paths_match_reference(s, layout, emulate):
    inputs = s.make(torch.float32, layout)
    with emulation(emulate):
        _compare_blend(s, inputs, "f32", rtol=1e-4 if s.k == 3 else 2e-5)


@EMULATE
def test_float32_winograd_medium(emulate, threads):
    # AHDRNet-like widths (halved) on a 32x32 map: both convolutions and both gradients go through Winograd.
    gate = GateSample(1, 32, 32, 64, 32, 32, 3, 3, 0.01)
    blend = BlendSample(1, 32, 32, 32, 3)
    with emulation(emulate):
        _compare_gate(gate, "gate_map", gate.make(torch.float32), "f32")
        _compare_blend(blend, blend.make(torch.float32), "f32")


@EMULATE
@pytest.mark.parametrize("dtype", LOWP, ids=str)
@pytest.mark.parametrize("s", GATES[:6], ids=str)
def test_gate_low_precision_flash_attention_recipe(s, dtype, emulate):
    with emulation(emulate):
        _compare_gate(s, "gate_map", lambda: s.make(dtype), "lowp", draws=LOWP_DRAWS)


@EMULATE
@pytest.mark.parametrize("dtype", LOWP, ids=str)
@pytest.mark.parametrize("s", BLENDS[:5], ids=str)
def test_blend_low_precision_flash_attention_recipe(s, dtype, emulate):
    with emulation(emulate):
        _compare_blend(s, lambda: s.make(dtype), "lowp", draws=LOWP_DRAWS)


def _blend_map_reference(x, y, w, b):
    a = torch.sigmoid(F.conv2d(torch.cat([x, y], 1), w, b, padding=w.shape[-1] // 2))
    return a * x + (1 - a) * y, a


@EMULATE
@pytest.mark.parametrize("s", BLENDS[:3], ids=str)
def test_blend_op_gradient_through_attention_output(s, emulate):
    # The public function hides the attention map, but apnt::attention_blend_fwd returns it and its backward
    # takes grad_attention: a gradient reaching it must be right too.
    with emulation(emulate):
        compare_to_reference(torch.ops.apnt.attention_blend_fwd, _blend_map_reference, s.make(torch.float64),
                             mode="f64", receives_grad=[True, True], name=f"blend_fwd {s}")


@EMULATE
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_gradient_through_the_attention_map_only(dtype, emulate):
    # out unused, attention used: backward gets grad_out = None.
    gate, blend = GATES[1], BLENDS[0]
    mode = "f64" if dtype == torch.float64 else "f32"
    with emulation(emulate):
        compare_to_reference(gate_fn("gate_map", "native", gate.slope), gate_fn("gate_map", "reference", gate.slope),
                             gate.make(dtype), mode=mode, receives_grad=[False, True], name=f"gate_map {gate}")
        compare_to_reference(torch.ops.apnt.attention_blend_fwd, _blend_map_reference, blend.make(dtype), mode=mode,
                             receives_grad=[False, True], name=f"blend_fwd {blend}")


def test_gate_map_returns_the_attention_map():
    s = GATES[0]
    x, ref, w1, b1, w2, b2 = s.make(torch.float64, requires_grad=False)
    out, a = attention_gate_map(x, ref, w1, b1, w2, b2, backend="native")
    h = F.leaky_relu(F.conv2d(torch.cat([x, ref], 1), w1, b1, padding=1), 0.01)
    torch.testing.assert_close(a, torch.sigmoid(F.conv2d(h, w2, b2, padding=1)), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out, x * a, rtol=1e-12, atol=1e-12)


def test_gate_op_hidden_output_is_not_silently_non_differentiable():
    # apnt::attention_gate_fwd returns `hidden` only because backward needs it. A gradient reaching it must be
    # either refused (non-differentiable output) or right, never silently dropped (it was, in an earlier build).
    s = GATES[0]
    x, ref, w1, b1, w2, b2 = s.make(torch.float64)
    _, _, hidden = torch.ops.apnt.attention_gate_fwd(x, ref, w1, b1, w2, b2, s.slope)
    if not hidden.requires_grad:
        return  # marked non-differentiable: acceptable
    got = torch.autograd.grad(hidden.sum(), [x, w1, b1])
    want_hidden = F.leaky_relu(F.conv2d(torch.cat([x, ref], 1), w1, b1, padding=1), s.slope)
    want = torch.autograd.grad(want_hidden.sum(), [x, w1, b1])
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e)


# ---- gradcheck, opcheck ------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["contiguous", "sliced"])
@pytest.mark.parametrize("s", [GateSample(1, 2, 1, 3, 4, 5, 3, 3, 0.2), GateSample(2, 1, 2, 2, 3, 3, 1, 3, 0.01)],
                         ids=str)
def test_gate_map_gradcheck(s, layout):
    fn = gate_fn("gate_map", "native", s.slope)
    assert torch.autograd.gradcheck(fn, s.make(torch.float64, layout), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("layout", ["contiguous", "sliced"])
@pytest.mark.parametrize("s", [BlendSample(1, 2, 4, 5, 3), BlendSample(2, 1, 3, 3, 5)], ids=str)
def test_blend_gradcheck(s, layout):
    assert torch.autograd.gradcheck(blend_fn("native"), s.make(torch.float64, layout), eps=1e-6, atol=1e-6)


GATE_OPCHECK = [GATES[0], GATES[5], GATES[6], GateSample(1, 2, 1, 3, 4, 5, 3, 1, 0.1, grad=(False,) * 6)]
BLEND_OPCHECK = [BLENDS[0], BLENDS[3], BLENDS[4], BlendSample(1, 2, 3, 4, 1, grad=(False,) * 4)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("s", GATE_OPCHECK, ids=str)
def test_gate_opcheck(s, dtype):
    torch.library.opcheck(torch.ops.apnt.attention_gate_fwd.default, (*s.make(dtype), s.slope))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("s", BLEND_OPCHECK, ids=str)
def test_blend_opcheck(s, dtype):
    torch.library.opcheck(torch.ops.apnt.attention_blend_fwd.default, tuple(s.make(dtype)))


@pytest.mark.parametrize("layout", ["channels_last", "sliced"])
def test_opcheck_layouts(layout):
    gate, blend = GATES[0], BLENDS[0]
    g, b = gate.make(torch.float32, layout), blend.make(torch.float32, layout)
    torch.library.opcheck(torch.ops.apnt.attention_gate_fwd.default, (*g, gate.slope))
    torch.library.opcheck(torch.ops.apnt.attention_blend_fwd.default, tuple(b))


# ---- torch.compile, autocast -------------------------------------------------------------------------------

def test_compile_inductor_forward_backward():
    torch._dynamo.reset()
    s = GateSample(2, 3, 2, 4, 6, 7, 3, 3, 0.01)
    fn = torch.compile(gate_fn("gate_map", "native", s.slope), fullgraph=True)
    compare_to_reference(fn, gate_fn("gate_map", "reference", s.slope), s.make(torch.float32), mode="f32",
                         receives_grad=[True, True], name=str(s))


@pytest.mark.parametrize("variant", ["gate", "gate_map", "blend"])
def test_compile_aot_eager_forward_backward(variant):
    torch._dynamo.reset()  # fresh: see test_compile_varying_negative_slope
    if variant == "blend":
        s = BlendSample(2, 3, 5, 6, 1)
        native, ref, inputs, receives = blend_fn("native"), blend_fn("reference"), s.make(torch.float32), None
    else:
        s = GateSample(2, 3, 2, 4, 6, 7, 5, 3, 0.1)
        native, ref = gate_fn(variant, "native", s.slope), gate_fn(variant, "reference", s.slope)
        inputs, receives = s.make(torch.float32), [True, variant == "gate_map"]
    fn = torch.compile(native, fullgraph=True, backend="aot_eager")
    compare_to_reference(fn, ref, inputs, mode="f32", receives_grad=receives, rtol=2e-5, name=f"{variant} {s}")


def test_compile_varying_negative_slope():
    torch._dynamo.reset()
    fn = torch.compile(lambda x, r, w1, b1, w2, b2, slope: attention_gate(x, r, w1, b1, w2, b2, negative_slope=slope,
                                                                         backend="native"),
                       fullgraph=True, backend="aot_eager")
    inputs = GateSample(1, 2, 2, 3, 5, 5).make(torch.float32, requires_grad=False)
    for slope in (0.1, 0.2, 0.3):
        torch.testing.assert_close(fn(*inputs, slope), attention_gate(*inputs, negative_slope=slope,
                                                                      backend="reference"), rtol=1e-4, atol=1e-4)


def test_autocast_bfloat16_forward_backward():
    gate, blend = GateSample(2, 4, 3, 8, 9, 11, 3, 3, 0.01), BlendSample(2, 4, 9, 11, 3)
    for native, ref, inputs in (
            (gate_fn("gate_map", "native", 0.01), gate_fn("gate_map", "reference", 0.01), gate.make(torch.float32)),
            (blend_fn("native"), blend_fn("reference"), blend.make(torch.float32))):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs = native(*inputs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        refs = ref(*inputs)
        refs = refs if isinstance(refs, tuple) else (refs,)
        gouts = [torch.randn(o.shape) for o in outs]
        got = torch.autograd.grad(outs, inputs, [g.to(torch.bfloat16) for g in gouts])
        want = torch.autograd.grad(refs, inputs, gouts)
        for o, r in zip(outs, refs):
            assert o.dtype == torch.bfloat16
            torch.testing.assert_close(o.float(), r, rtol=2e-2, atol=2e-2)
        for i, (a, e) in enumerate(zip(got, want)):
            assert a.dtype == torch.float32 and torch.isfinite(a).all(), i
            torch.testing.assert_close(a, e, rtol=3e-2, atol=3e-2 * e.abs().max().item(), msg=f"grad of input {i}")


# ---- bad inputs -----------------------------------------------------------------------------------------------

def _good_gate():
    return dict(x=torch.randn(2, 3, 5, 6), ref=torch.randn(2, 4, 5, 6), w1=torch.randn(8, 7, 3, 3), b1=torch.randn(8),
                w2=torch.randn(3, 8, 3, 3), b2=torch.randn(3))


BAD_GATE = [
    ("x_rank", dict(x=torch.randn(3, 5, 6)), {}, ValueError, ["argument 'x'", "(N, Cx, H, W)"]),
    ("x_integer", dict(x=torch.ones(2, 3, 5, 6, dtype=torch.int64)), {}, TypeError, ["argument 'x'", "int64"]),
    ("x_empty", dict(x=torch.randn(0, 3, 5, 6)), {}, ValueError, ["argument 'x'", "(0, 3, 5, 6)"]),
    ("ref_empty", dict(ref=torch.randn(2, 0, 5, 6)), {}, ValueError, ["argument 'ref'", "(2, 0, 5, 6)"]),
    ("ref_rank", dict(ref=torch.randn(2, 4, 5)), {}, ValueError, ["argument 'ref'", "(N, C, H, W)"]),
    ("ref_batch", dict(ref=torch.randn(3, 4, 5, 6)), {}, ValueError, ["argument 'ref'", "N=2", "(3, 4, 5, 6)"]),
    ("ref_spatial", dict(ref=torch.randn(2, 4, 5, 7)), {}, ValueError, ["argument 'ref'", "W=6", "(2, 4, 5, 7)"]),
    ("ref_dtype", dict(ref=torch.randn(2, 4, 5, 6, dtype=torch.float64)), {}, TypeError,
     ["argument 'ref'", "float32", "float64"]),
    ("w1_channels", dict(w1=torch.randn(8, 6, 3, 3)), {}, ValueError, ["argument 'w1'", "Cx+Cr=7", "(8, 6, 3, 3)"]),
    ("w1_even", dict(w1=torch.randn(8, 7, 4, 4)), {}, ValueError, ["argument 'w1'", "odd", "(8, 7, 4, 4)"]),
    ("w1_rank", dict(w1=torch.randn(8, 7, 3)), {}, ValueError, ["argument 'w1'", "(M, Cx+Cr=7, k, k)"]),
    ("w1_empty", dict(w1=torch.randn(0, 7, 3, 3), b1=torch.randn(0), w2=torch.randn(3, 0, 3, 3)), {}, ValueError,
     ["argument 'w1'", "M >= 1"]),
    ("b1_shape", dict(b1=torch.randn(7)), {}, ValueError, ["argument 'b1'", "(8,)", "(7,)"]),
    ("w2_out", dict(w2=torch.randn(4, 8, 3, 3)), {}, ValueError, ["argument 'w2'", "Cx=3", "M=8", "(4, 8, 3, 3)"]),
    ("w2_in", dict(w2=torch.randn(3, 7, 3, 3)), {}, ValueError, ["argument 'w2'", "M=8", "(3, 7, 3, 3)"]),
    ("w2_even", dict(w2=torch.randn(3, 8, 2, 2)), {}, ValueError, ["argument 'w2'", "odd", "(3, 8, 2, 2)"]),
    ("w2_dtype", dict(w2=torch.randn(3, 8, 3, 3, dtype=torch.float16)), {}, TypeError, ["argument 'w2'", "float16"]),
    ("b2_shape", dict(b2=torch.randn(4)), {}, ValueError, ["argument 'b2'", "(3,)", "(4,)"]),
    ("b2_missing", dict(b2=None), {}, TypeError, ["argument 'b2'", "(3,)"]),
    ("negative_slope", {}, dict(negative_slope=-0.01), ValueError, ["argument 'negative_slope'", ">= 0"]),
    ("inf_slope", {}, dict(negative_slope=float("inf")), ValueError, ["argument 'negative_slope'"]),
    ("backend_name", {}, dict(backend="fast"), ValueError, ["argument 'backend'", "native", "reference", "triton"]),
]


@pytest.mark.parametrize("fn", [attention_gate, attention_gate_map], ids=["gate", "gate_map"])
@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("case", BAD_GATE, ids=[c[0] for c in BAD_GATE])
def test_gate_bad_inputs_raise_naming_the_argument(case, backend, fn):
    _, replace, overrides, exc, patterns = case
    args = {**_good_gate(), **replace}
    with pytest.raises(exc) as info:
        fn(args["x"], args["ref"], args["w1"], args["b1"], args["w2"], args["b2"], **{"backend": backend, **overrides})
    for p in patterns:
        assert p in str(info.value), f"{p!r} not in {str(info.value)!r}"


def _good_blend():
    return dict(x=torch.randn(2, 3, 5, 6), y=torch.randn(2, 3, 5, 6), w=torch.randn(3, 6, 3, 3), b=torch.randn(3))


BAD_BLEND = [
    ("x_rank", dict(x=torch.randn(2, 3, 5, 6, 1)), {}, ValueError, ["argument 'x'", "(N, C, H, W)"]),
    ("x_not_tensor", dict(x=3.0), {}, TypeError, ["argument 'x'", "(N, C, H, W)"]),
    ("x_bool", dict(x=torch.ones(2, 3, 5, 6, dtype=torch.bool)), {}, TypeError, ["argument 'x'", "bool"]),
    ("x_empty", dict(x=torch.randn(2, 3, 0, 6), y=torch.randn(2, 3, 0, 6)), {}, ValueError, ["argument 'x'"]),
    ("y_channels", dict(y=torch.randn(2, 4, 5, 6)), {}, ValueError, ["argument 'y'", "(N, C, H, W)", "(2, 4, 5, 6)"]),
    ("y_batch", dict(y=torch.randn(1, 3, 5, 6)), {}, ValueError, ["argument 'y'", "N=2", "(1, 3, 5, 6)"]),
    ("y_spatial", dict(y=torch.randn(2, 3, 6, 6)), {}, ValueError, ["argument 'y'", "H=5", "(2, 3, 6, 6)"]),
    ("y_dtype", dict(y=torch.randn(2, 3, 5, 6).double()), {}, TypeError, ["argument 'y'", "float64"]),
    ("w_shape", dict(w=torch.randn(3, 3, 3, 3)), {}, ValueError, ["argument 'w'", "2C=6", "(3, 3, 3, 3)"]),
    ("w_even", dict(w=torch.randn(3, 6, 2, 2)), {}, ValueError, ["argument 'w'", "odd", "(3, 6, 2, 2)"]),
    ("b_shape", dict(b=torch.randn(6)), {}, ValueError, ["argument 'b'", "(3,)", "(6,)"]),
    ("b_integer", dict(b=torch.ones(3, dtype=torch.int32)), {}, TypeError, ["argument 'b'", "int32"]),
    ("backend_name", {}, dict(backend="Native"), ValueError, ["argument 'backend'", "native"]),
]


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("case", BAD_BLEND, ids=[c[0] for c in BAD_BLEND])
def test_blend_bad_inputs_raise_naming_the_argument(case, backend):
    _, replace, overrides, exc, patterns = case
    args = {**_good_blend(), **replace}
    with pytest.raises(exc) as info:
        attention_blend(args["x"], args["y"], args["w"], args["b"], **{"backend": backend, **overrides})
    for p in patterns:
        assert p in str(info.value), f"{p!r} not in {str(info.value)!r}"


def test_cpp_entry_points_check_too():
    g = _good_gate()
    with pytest.raises(ValueError, match="argument 'w1'"):
        torch.ops.apnt.attention_gate_fwd(g["x"], g["ref"], torch.randn(8, 6, 3, 3), g["b1"], g["w2"], g["b2"], 0.01)
    with pytest.raises(ValueError, match="argument 'ref'"):
        torch.ops.apnt.attention_gate_fwd(g["x"], torch.randn(2, 4, 5, 7), g["w1"], g["b1"], g["w2"], g["b2"], 0.01)
    b = _good_blend()
    with pytest.raises(ValueError, match="argument 'w'"):
        torch.ops.apnt.attention_blend_fwd(b["x"], b["y"], torch.randn(3, 5, 3, 3), b["b"])


# ---- backend selection ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["attention_gate", "attention_gate_map", "attention_blend"])
def test_triton_on_cpu_without_interpreter_lists_every_backend(op, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    fn = getattr(apnt.ops, op)
    args = _good_blend() if op == "attention_blend" else _good_gate()
    with pytest.raises(BackendUnavailableError) as info:
        fn(**args, backend="triton")
    msg = str(info.value)
    assert op.replace("_map", "") in msg and "'triton'" in msg and "float32" in msg
    assert re.search(r"^\s+reference: available", msg, re.M), msg
    assert re.search(r"^\s+native: available", msg, re.M), msg
    assert re.search(r"^\s+triton: .*(TRITON_INTERPRET|not installed)", msg, re.M), msg


def test_apnt_backend_env_replaces_auto(monkeypatch):
    calls = []
    real_gate, real_blend = attention_module.attention_gate_map_reference, attention_module.attention_blend_reference
    monkeypatch.setattr(attention_module, "attention_gate_map_reference",
                        lambda *a, **k: calls.append("gate") or real_gate(*a, **k))
    monkeypatch.setattr(attention_module, "attention_blend_reference",
                        lambda *a, **k: calls.append("blend") or real_blend(*a, **k))
    monkeypatch.delenv("APNT_BACKEND", raising=False)
    attention_gate(**_good_gate())
    attention_blend(**_good_blend())
    assert calls == []  # auto = native on the CPU
    monkeypatch.setenv("APNT_BACKEND", "reference")
    attention_gate(**_good_gate())
    attention_blend(**_good_blend())
    assert calls == ["gate", "blend"]
    attention_gate_map(**_good_gate(), backend="native")  # explicit beats the environment
    assert calls == ["gate", "blend"]
    monkeypatch.setenv("APNT_BACKEND", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(BackendUnavailableError):
        attention_blend(**_good_blend())


# ---- regressions: bugs this suite found, minimal reproductions ------------------------------------------------

@pytest.mark.parametrize("op", ["gate", "blend"])
def test_bias_grad_with_channels_last_x(op):
    # The bias gradients were made .contiguous(x.suggest_memory_format()): a RuntimeError for a channels_last x.
    if op == "gate":
        s = GateSample(1, 2, 2, 3, 4, 4, grad=(False, False, False, True, False, True))
        _compare_gate(s, "gate", s.make(torch.float64, "channels_last"), "f64")
    else:
        s = BlendSample(1, 2, 4, 4, grad=(False, False, False, True))
        _compare_blend(s, s.make(torch.float64, "channels_last"), "f64")


def test_strided_bias_on_the_onednn_path():
    s = GateSample(1, 2, 2, 3, 5, 5, 1, 1, grad=(False,) * 6)
    x, ref, w1, b1, w2, b2 = s.make(torch.float32)
    _compare_gate(s, "gate", [x, ref, w1, make_tensor((3,), torch.float32, "sliced"), w2, b2], "f32")
