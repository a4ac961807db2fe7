"""Family `dense` (DESIGN §3.2): apnt.ops.dilated_dense_block and DilatedDenseBlock, native vs reference.

The native CPU backend fills one channels_last buffer (float32: Winograd layers writing their slice through the
ReLU epilogue; otherwise ATen + the slice-copy body) and backpropagates through one gradient buffer (float32:
the Winograd input gradient accumulates into the buffer's prefix). Float64 reaches only the generic path, so
float32 has its own comparisons. Every comparison runs with the grid emulator off and on, and with
checkpoint=False and True; every gradient (x, each weight and bias, the fusion's weight and bias) is compared.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import apnt.ops
from apnt.models.blocks import DilatedDenseBlock
from apnt.ops import BackendUnavailableError, dilated_dense_block
from apnt.ops.dense import dilated_dense_block_reference
from apnt_test_helpers import (LAYOUTS, LOWP, compare_to_reference, saved_bytes,
                               emulation, make_tensor, requires_native)

pytestmark = requires_native
EMULATE = pytest.mark.parametrize("emulate", [False, True], ids=["direct", "emulated"])
CHECKPOINT = pytest.mark.parametrize("checkpoint", [False, True], ids=["buffer", "checkpoint"])


@dataclass(frozen=True)
class DenseSample:
    n: int
    c: int
    g: int
    layers: int
    h: int
    w: int
    dilation: int = 2

    def __str__(self):
        return f"n{self.n}c{self.c}g{self.g}L{self.layers}_{self.h}x{self.w}_d{self.dilation}"

    def make(self, dtype=torch.float64, layout="contiguous", requires_grad=True, x_layout=None):
        """[x, weights..., biases..., fuse_weight, fuse_bias]: one flat list, so every gradient is compared.

        `layout` applies to every tensor, `x_layout` (default: `layout`) to x alone."""
        c, g, L = self.c, self.g, self.layers
        x = make_tensor((self.n, c, self.h, self.w), dtype, x_layout or layout, requires_grad)
        weights = [make_tensor((g, c + i * g, 3, 3), dtype, layout, requires_grad, scale=1 / math.sqrt(9 * (c + i * g)))
                   for i in range(L)]
        biases = [make_tensor((g,), dtype, layout, requires_grad, scale=0.5) for _ in range(L)]
        fuse_weight = make_tensor((c, c + L * g, 1, 1), dtype, layout, requires_grad, scale=1 / math.sqrt(c + L * g))
        fuse_bias = make_tensor((c,), dtype, layout, requires_grad, scale=0.5)
        return [x, *weights, *biases, fuse_weight, fuse_bias]

    def split(self, flat):
        L = self.layers
        return flat[0], list(flat[1:1 + L]), list(flat[1 + L:1 + 2 * L]), flat[-2], flat[-1]

    def fn(self, backend, checkpoint=False):
        """dilated_dense_block on the flat argument list of `make`."""
        def run(*flat):
            x, weights, biases, fw, fb = self.split(flat)
            return dilated_dense_block(x, weights, biases, fw, fb, dilation=self.dilation, checkpoint=checkpoint,
                                       backend=backend)
        return run

    def reference(self):
        def run(*flat):
            x, weights, biases, fw, fb = self.split(flat)
            return dilated_dense_block_reference(x, weights, biases, fw, fb, dilation=self.dilation)
        return run


# Weird shapes on purpose: L=1, G=1, dilation 1/2/3, maps smaller than the dilation (2x1 with d=3, 1x1), N=3,
# odd sizes, channel counts that are not multiples of the 16-lane Winograd vectors.
SAMPLES = [
    DenseSample(2, 3, 2, 3, 5, 6, 2),
    DenseSample(1, 2, 3, 1, 4, 5, 2),    # L = 1
    DenseSample(2, 3, 1, 3, 5, 4, 2),    # G = 1
    DenseSample(3, 4, 3, 2, 4, 5, 1),    # N = 3, dilation 1
    DenseSample(1, 2, 2, 2, 6, 7, 3),    # dilation 3
    DenseSample(1, 2, 2, 2, 2, 1, 3),    # H, W smaller than the dilation: only the centre tap sees the map
    DenseSample(2, 3, 2, 2, 1, 1, 2),    # 1x1 maps
    DenseSample(1, 5, 4, 2, 9, 8, 2),    # Winograd: several 4x4 tiles, a partial one at each edge
]
LAYOUT_SAMPLE = DenseSample(2, 3, 2, 2, 5, 6, 2)


def _compare(s, inputs, mode, checkpoint, rtol=1e-4, backend="native"):
    out = compare_to_reference(s.fn(backend, checkpoint), s.reference(), inputs, mode=mode, rtol=rtol, name=str(s))
    assert out[0].is_contiguous(memory_format=torch.channels_last)


# ---- native vs reference -----------------------------------------------------------------------------------

@CHECKPOINT
@EMULATE
@pytest.mark.parametrize("s", SAMPLES, ids=str)
def test_float64_matches_reference(s, emulate, checkpoint):
    with emulation(emulate):
        _compare(s, s.make(torch.float64), "f64", checkpoint)


@CHECKPOINT
@EMULATE
@pytest.mark.parametrize("s", SAMPLES, ids=str)
def test_float32_winograd_matches_reference(s, emulate, checkpoint):
    # float32 3x3 layers run Winograd F(4x4,3x3) (forward into the buffer slice, input gradient into the prefix).
    with emulation(emulate):
        _compare(s, s.make(torch.float32), "f32", checkpoint, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts(layout, dtype):
    """Every tensor (x, weights, biases, fusion) in the layout: channels_last, sliced, a channel slice of a buffer."""
    s = LAYOUT_SAMPLE
    _compare(s, s.make(dtype, layout), "f64" if dtype == torch.float64 else "f32", checkpoint=False)


@pytest.mark.parametrize("x_layout", ["channels_last", "sliced_cl"])
def test_strided_x_with_checkpoint(x_layout):
    # checkpoint=True rebuilds the buffer from x in backward: x's strides must be honoured there too.
    s = LAYOUT_SAMPLE
    with emulation(True):
        _compare(s, s.make(torch.float32, x_layout=x_layout), "f32", checkpoint=True)


@EMULATE
def test_float32_medium(emulate, threads):
    # AHDRNet-like widths (quartered) on a 24x20 map: several Winograd chunks, two threads.
    s = DenseSample(1, 16, 8, 3, 24, 20, 2)
    with emulation(emulate):
        _compare(s, s.make(torch.float32), "f32", checkpoint=emulate)


@pytest.mark.parametrize("channels", [32, 48, 80])
def test_float32_fusion_gemm_widths(channels):
    # C a multiple of 16: the 1x1 fusion runs as our bias-started GEMM (column blocks of 64/32/16, a tail of
    # fewer than 6 rows: 2*7*5 = 70 pixels).
    s = DenseSample(2, channels, 4, 2, 7, 5, 2)
    _compare(s, s.make(torch.float32), "f32", checkpoint=False)


@pytest.mark.parametrize("dtype", LOWP, ids=str)
def test_low_precision_flash_attention_recipe(dtype):
    s = DenseSample(2, 4, 3, 2, 5, 6, 2)
    compare_to_reference(s.fn("native"), s.reference(), lambda: s.make(dtype), mode="lowp", draws=3, name=str(s))


def test_some_inputs_do_not_require_grad():
    s = SAMPLES[0]
    flat = s.make(torch.float64)
    flat[0] = flat[0].detach()   # x
    flat[2] = flat[2].detach()   # weights[1]
    flat[-1] = flat[-1].detach()  # fuse_bias
    _compare(s, flat, "f64", checkpoint=False)


def test_output_is_fresh_and_channels_last():
    s = SAMPLES[0]
    flat = s.make(torch.float32, requires_grad=False)
    x, weights, biases, fw, fb = s.split(flat)
    out, buffer = torch.ops.apnt.dense_block_fwd(x, weights, biases, fw, fb, s.dilation, False)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert buffer.shape == (s.n, s.c + s.layers * s.g, s.h, s.w)
    assert buffer.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(buffer[:, :s.c], x, rtol=0, atol=0)  # the buffer starts with x itself
    storages = {t.untyped_storage().data_ptr() for t in flat}
    assert out.untyped_storage().data_ptr() not in storages | {buffer.untyped_storage().data_ptr()}
    _, empty = torch.ops.apnt.dense_block_fwd(x, weights, biases, fw, fb, s.dilation, True)
    assert empty.numel() == 0


# ---- gradcheck, opcheck --------------------------------------------------------------------------------------

@CHECKPOINT
def test_gradcheck(checkpoint):
    s = DenseSample(1, 2, 2, 2, 4, 3, 2)
    assert torch.autograd.gradcheck(s.fn("native", checkpoint), s.make(torch.float64), eps=1e-6, atol=1e-6)


@CHECKPOINT
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_opcheck(dtype, checkpoint):
    s = DenseSample(1, 2, 2, 2, 4, 5, 2)
    x, weights, biases, fw, fb = s.split(s.make(dtype))
    torch.library.opcheck(torch.ops.apnt.dense_block_fwd.default, (x, weights, biases, fw, fb, s.dilation, checkpoint))


# ---- torch.compile, autocast -----------------------------------------------------------------------------------

def _compile_and_check(s, backend, checkpoint):
    torch._dynamo.reset()
    fn = torch.compile(s.fn("native", checkpoint), fullgraph=True, backend=backend)
    compare_to_reference(fn, s.reference(), s.make(torch.float32), mode="f32", rtol=1e-4, name=str(s))


def test_compile_inductor_forward_backward():
    # The one inductor compile of this family (DESIGN §7).
    _compile_and_check(DenseSample(2, 3, 2, 2, 5, 6, 2), "inductor", checkpoint=False)


def test_compile_aot_eager_module_checkpoint():
    torch._dynamo.reset()
    block = DilatedDenseBlock(4, 3, 2, dilation=3, checkpoint=True, backend="native")
    fn = torch.compile(block, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 4, 6, 5, requires_grad=True)
    out = fn(x)
    want = dilated_dense_block_reference(x, [l.conv.weight for l in block.dense_layers],
                                         [l.conv.bias for l in block.dense_layers], block.conv_1x1.weight,
                                         block.conv_1x1.bias, dilation=3)
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-5)
    g = torch.randn_like(want)
    params = [x, *block.parameters()]
    for a, e in zip(torch.autograd.grad(out, params, g), torch.autograd.grad(want, params, g)):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)


def test_autocast_bfloat16_forward_backward():
    s = DenseSample(2, 4, 3, 2, 6, 7, 2)
    flat = s.make(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = s.fn("native")(*flat)
    assert out.dtype == torch.bfloat16
    g = torch.randn(out.shape)
    got = torch.autograd.grad(out, flat, g.to(torch.bfloat16))
    ref = s.reference()(*flat)
    want = torch.autograd.grad(ref, flat, g)
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
    for i, (a, e) in enumerate(zip(got, want)):
        assert a.dtype == torch.float32 and torch.isfinite(a).all(), i
        torch.testing.assert_close(a, e, rtol=2e-2, atol=2e-2 * e.abs().max().item(), msg=f"grad of input {i}")


# ---- memory held for backward (DESIGN §3.2 targets) --------------------------------------------------------------

def test_memory_held_for_backward():
    s = DenseSample(1, 16, 8, 6, 32, 32, 2)
    flat = s.make(torch.float32)
    reference, _ = saved_bytes(lambda: s.reference()(*flat), flat)
    native, _ = saved_bytes(lambda: s.fn("native")(*flat), flat)
    checkpoint, saves = saved_bytes(lambda: s.fn("native", checkpoint=True)(*flat), flat)
    # reference keeps every concatenation and every h_i: (16+24+...+56 + 6*8 + 64) channels; native the
    # (16 + 6*8)-channel buffer (0.195x); checkpoint nothing but x, the parameters and an empty buffer.
    assert reference == 4 * 32 * 32 * (sum(16 + 8 * i for i in range(6)) + 6 * 8 + 64)
    assert native == 4 * 32 * 32 * (16 + 6 * 8)
    assert saves == 1 + 1 + 1 + 2 * 6, "the hook did not see what the checkpointed op saves"
    assert native <= 0.3 * reference, f"native holds {native / reference:.3f} x reference"
    assert checkpoint <= 0.05 * reference, f"checkpoint holds {checkpoint / reference:.3f} x reference"


# ---- the module ---------------------------------------------------------------------------------------------------

class AuthorsDenseLayer(nn.Module):
    """AHDRNet's make_dilation_dense (padding = dilation, as the authors' (k-1)//2+1 with d = 2)."""

    def __init__(self, channels, growth, dilation):
        super().__init__()
        self.conv = nn.Conv2d(channels, growth, kernel_size=3, padding=dilation, bias=True, dilation=dilation)

    def forward(self, x):
        return torch.cat((x, F.relu(self.conv(x))), 1)


class AuthorsDRDB(nn.Module):
    """AHDRNet's DRDB built the authors' way: nn.Sequential of dense layers, then conv_1x1 plus the residual."""

    def __init__(self, channels, layers, growth, dilation=2):
        super().__init__()
        self.dense_layers = nn.Sequential(*(AuthorsDenseLayer(channels + i * growth, growth, dilation)
                                            for i in range(layers)))
        self.conv_1x1 = nn.Conv2d(channels + layers * growth, channels, kernel_size=1, padding=0, bias=True)

    def forward(self, x):
        return self.conv_1x1(self.dense_layers(x)) + x


@pytest.mark.parametrize("checkpoint", [False, True], ids=["buffer", "checkpoint"])
def test_module_loads_the_authors_state_dict(checkpoint):
    authors = AuthorsDRDB(6, 3, 4, dilation=2).double()
    ours = DilatedDenseBlock(6, 4, 3, dilation=2, checkpoint=checkpoint, backend="native").double()
    theirs = authors.state_dict()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.items()}
    assert [f"dense_layers.{i}.conv.{p}" for i in range(3) for p in ("weight", "bias")] + \
        ["conv_1x1.weight", "conv_1x1.bias"] == list(ours.state_dict())
    ours.load_state_dict(theirs, strict=True)
    x = torch.randn(2, 6, 7, 5, dtype=torch.float64, requires_grad=True)
    out, want = ours(x), authors(x)
    torch.testing.assert_close(out, want, rtol=1e-9, atol=1e-10)
    g = torch.randn_like(want)
    got = torch.autograd.grad(out, [x, *ours.parameters()], g)
    expected = torch.autograd.grad(want, [x, *authors.parameters()], g)
    for (name, _), a, e in zip([("x", None), *ours.named_parameters()], got, expected):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-10, msg=f"grad of {name}")


def test_module_default_is_ahdrnet_drdb():
    block = DilatedDenseBlock()
    shapes = {k: tuple(v.shape) for k, v in block.state_dict().items()}
    assert shapes["dense_layers.5.conv.weight"] == (32, 64 + 5 * 32, 3, 3)
    assert shapes["conv_1x1.weight"] == (64, 64 + 6 * 32, 1, 1) and block.dilation == 2


# ---- bad inputs ---------------------------------------------------------------------------------------------------

def _good():
    """C=3, G=2, L=3 (C+L*G = 9)."""
    return dict(x=torch.randn(2, 3, 5, 6), weights=[torch.randn(2, 3 + 2 * i, 3, 3) for i in range(3)],
                biases=[torch.randn(2) for _ in range(3)], fuse_weight=torch.randn(3, 9, 1, 1),
                fuse_bias=torch.randn(3))


def _replace_item(key, i, value):
    def edit(args):
        args[key] = list(args[key])
        args[key][i] = value
    return edit


def _set(key, value):
    def edit(args):
        args[key] = value
    return edit


BAD_INPUTS = [
    # id, edit of the good arguments, keyword overrides, exception, patterns the message must contain
    ("x_rank", _set("x", torch.randn(3, 5, 6)), {}, ValueError, ["argument 'x'", "(N, C, H, W)"]),
    ("x_integer", _set("x", torch.ones(2, 3, 5, 6, dtype=torch.int64)), {}, TypeError, ["argument 'x'", "int64"]),
    ("x_empty", _set("x", torch.randn(2, 3, 0, 6)), {}, ValueError, ["argument 'x'", "non-empty"]),
    ("weights_empty", _set("weights", []), {}, ValueError, ["argument 'weights'", "(G, C+i*G, 3, 3)"]),
    ("weights_tensor", _set("weights", torch.randn(2, 3, 3, 3)), {}, ValueError, ["argument 'weights'"]),
    ("biases_count", _set("biases", [torch.randn(2)] * 2), {}, ValueError, ["argument 'biases'", "3 (G,)"]),
    ("weights0_empty", _replace_item("weights", 0, torch.randn(0, 3, 3, 3)), {}, ValueError,
     ["argument 'weights[0]'", "G >= 1"]),
    ("weights2_channels", _replace_item("weights", 2, torch.randn(2, 8, 3, 3)), {}, ValueError,
     ["argument 'weights[2]'", "(G=2, C+2*G=7, 3, 3)", "(2, 8, 3, 3)"]),
    ("weights1_growth", _replace_item("weights", 1, torch.randn(3, 5, 3, 3)), {}, ValueError,
     ["argument 'weights[1]'", "(G=2, C+1*G=5, 3, 3)"]),
    ("weights1_kernel", _replace_item("weights", 1, torch.randn(2, 5, 5, 5)), {}, ValueError,
     ["argument 'weights[1]'", "3, 3)"]),
    ("weights2_rank", _replace_item("weights", 2, torch.randn(2, 7, 9)), {}, ValueError,
     ["argument 'weights[2]'", "4-D"]),
    ("weights2_dtype", _replace_item("weights", 2, torch.randn(2, 7, 3, 3, dtype=torch.float64)), {}, TypeError,
     ["argument 'weights[2]'", "float32", "float64"]),
    ("biases1_shape", _replace_item("biases", 1, torch.randn(3)), {}, ValueError, ["argument 'biases[1]'", "(G=2,)"]),
    ("biases2_dtype", _replace_item("biases", 2, torch.randn(2, dtype=torch.float16)), {}, TypeError,
     ["argument 'biases[2]'", "float16"]),
    ("fuse_weight_channels", _set("fuse_weight", torch.randn(3, 8, 1, 1)), {}, ValueError,
     ["argument 'fuse_weight'", "(C=3, C+L*G=9, 1, 1)", "(3, 8, 1, 1)"]),
    ("fuse_weight_kernel", _set("fuse_weight", torch.randn(3, 9, 3, 3)), {}, ValueError,
     ["argument 'fuse_weight'", "(C=3, C+L*G=9, 1, 1)"]),
    ("fuse_weight_outputs", _set("fuse_weight", torch.randn(4, 9, 1, 1)), {}, ValueError, ["argument 'fuse_weight'"]),
    ("fuse_bias_shape", _set("fuse_bias", torch.randn(4)), {}, ValueError, ["argument 'fuse_bias'", "(C=3,)"]),
    ("fuse_bias_dtype", _set("fuse_bias", torch.randn(3, dtype=torch.float64)), {}, TypeError,
     ["argument 'fuse_bias'", "float64"]),
    ("dilation_0", None, dict(dilation=0), ValueError, ["argument 'dilation'", ">= 1"]),
    ("checkpoint_str", None, dict(checkpoint="yes"), TypeError, ["argument 'checkpoint'", "bool"]),
    ("backend_name", None, dict(backend="cuda"), ValueError, ["argument 'backend'", "native", "triton"]),
]


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_inputs_raise_naming_the_argument(case, backend):
    _, edit, overrides, exc, patterns = case
    args = _good()
    if edit is not None:
        edit(args)
    with pytest.raises(exc) as info:
        dilated_dense_block(args["x"], args["weights"], args["biases"], args["fuse_weight"], args["fuse_bias"],
                            **{"backend": backend, **overrides})
    for p in patterns:
        assert p in str(info.value), f"{p!r} not in {str(info.value)!r}"


def test_cpp_entry_point_checks_too():
    # Direct torch.ops callers bypass the Python checks; the C++ ones still name the argument.
    args = _good()
    args["weights"][1] = torch.randn(2, 6, 3, 3)
    with pytest.raises(ValueError, match=r"argument 'weights'.*weights\[1\]"):
        torch.ops.apnt.dense_block_fwd(*args.values(), 2, False)
    args = _good()
    with pytest.raises(ValueError, match="argument 'fuse_weight'"):
        torch.ops.apnt.dense_block_fwd(args["x"], args["weights"], args["biases"], torch.randn(3, 8, 1, 1),
                                       args["fuse_bias"], 2, False)
    with pytest.raises(ValueError, match="argument 'dilation'"):
        torch.ops.apnt.dense_block_fwd(*_good().values(), 0, False)


def test_triton_on_cpu_without_interpreter_lists_every_backend(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(BackendUnavailableError) as info:
        dilated_dense_block(*_good().values(), backend="triton")
    msg = str(info.value)
    assert "dilated_dense_block" in msg
    for name in apnt.ops.BACKENDS:
        assert re.search(rf"^\s+{name}: \S", msg, re.M), f"backend {name} not listed in:\n{msg}"


# ---- regressions of bugs once found in the shared conv code, as they reach this family --------------------------

def test_onednn_strided_bias():
    # bfloat16 layers run oneDNN: a strided biases[0] was once read as if contiguous (max error ~1 against ~0.01).
    s = DenseSample(1, 4, 3, 2, 5, 6, 2)
    flat = s.make(torch.bfloat16, requires_grad=False)
    flat[1 + s.layers] = make_tensor((s.g,), torch.bfloat16, "sliced", scale=0.5)  # biases[0]
    compare_to_reference(s.fn("native"), s.reference(), flat, mode="lowp", name=str(s))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_nan_weight_is_not_hidden(dtype):
    # A NaN in weights[0] makes h_0 NaN, hence (through the 1x1 fusion) every output; ReLU must not map it to 0.
    s = DenseSample(1, 2, 2, 2, 5, 6, 2)
    flat = s.make(dtype, requires_grad=False)
    flat[1][0, 0, 1, 1] = float("nan")
    ref, native = s.reference()(*flat), s.fn("native")(*flat)
    assert ref.isnan().any()
    assert native.isnan()[ref.isnan()].all(), f"{int((ref.isnan() & ~native.isnan()).sum())} NaNs hidden"
