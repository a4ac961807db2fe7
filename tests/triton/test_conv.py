"""conv2d(backend="triton") (kernels/conv.py) against conv2d_reference: forward and every gradient in float32,
float16 by the flash-attention recipe, every layout, masked-out gradients, opcheck. Interpreter only (conftest)."""
import math

import pytest
import torch

from apnt.ops import BackendUnavailableError, conv2d
from apnt.ops.conv import conv2d_reference
from apnt_test_helpers import LAYOUTS, compare_to_reference, make_tensor


def _inputs(n, c, o, h, w, k, bias=True, dtype=torch.float32, layout="contiguous", needs_grad="x w b"):
    needs_grad = needs_grad.split()
    return [make_tensor((n, c, h, w), dtype, layout, "x" in needs_grad),
            make_tensor((o, c, k, k), dtype, layout, "w" in needs_grad, scale=1 / math.sqrt(c * k * k)),
            make_tensor((o,), dtype, layout, "b" in needs_grad, scale=0.5) if bias else None]


def _compare(inputs, mode="f32", **kwargs):
    out = compare_to_reference(lambda x, w, b: conv2d(x, w, b, backend="triton", **kwargs),
                               lambda x, w, b: conv2d_reference(x, w, b, **kwargs), inputs, mode=mode, name="conv2d")
    assert out[0].is_contiguous(memory_format=torch.channels_last)


# (N, C, O, H, W, k, dilation, activation, bias): primes, 1x1 maps, k 1/3/5, dilation 1/2/3, sizes crossing the
# tile edges (N*H*W > BLOCK_M = 64, C > BLOCK_K = 32, O > BLOCK_N = 64).
CASES = [
    pytest.param(3, 5, 6, 7, 13, 3, 1, "leaky_relu", True, id="N3-7x13-leaky"),
    pytest.param(1, 1, 1, 1, 1, 3, 1, "relu", True, id="1x1map-C1-O1-relu"),
    pytest.param(2, 3, 4, 5, 6, 1, 1, "sigmoid", True, id="k1-sigmoid"),
    pytest.param(2, 4, 3, 5, 7, 5, 2, "none", False, id="k5-d2-nobias"),
    pytest.param(1, 37, 17, 6, 9, 3, 3, "leaky_relu", True, id="d3-C37"),
    pytest.param(1, 2, 70, 3, 5, 3, 1, "relu", False, id="O70"),
]


@pytest.mark.parametrize("n, c, o, h, w, k, dilation, activation, bias", CASES)
def test_float32(n, c, o, h, w, k, dilation, activation, bias):
    _compare(_inputs(n, c, o, h, w, k, bias), dilation=dilation, activation=activation, negative_slope=0.2)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts(layout):
    """Every tensor (x, w, b) in the layout: strides reach the kernel as they are."""
    _compare(_inputs(2, 5, 4, 6, 7, 3, layout=layout), dilation=2, activation="leaky_relu")


@pytest.mark.parametrize("needs_grad", ["x", "w", "b", "w b"])
def test_some_gradients(needs_grad):
    """Masked-out gradients are skipped in the backward op (and must not alias one another)."""
    _compare(_inputs(2, 3, 4, 5, 6, 3, needs_grad=needs_grad), activation="relu")


@pytest.mark.parametrize("activation", ["none", "relu", "leaky_relu", "sigmoid"])
def test_float16(activation):
    _compare(_inputs(2, 6, 5, 5, 7, 3, dtype=torch.float16), mode="lowp", activation=activation, negative_slope=0.1)


def test_autocast_bfloat16():
    """AutocastCPU computes in float32 and returns bfloat16 (DESIGN §2); no bfloat16 arithmetic in the kernel."""
    x, w, b = _inputs(1, 3, 4, 4, 5, 3, needs_grad="")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv2d(x, w, b, activation="relu", backend="triton")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), conv2d_reference(x, w, b, activation="relu"), rtol=1e-2, atol=1e-2)


def test_float64_is_refused():
    with pytest.raises(BackendUnavailableError, match="triton: .*float64"):
        conv2d(*_inputs(1, 2, 2, 3, 3, 3, dtype=torch.float64), backend="triton")


@pytest.mark.parametrize("layout, activation, dilation, needs_grad",
                         [("contiguous", "leaky_relu", 2, "x w b"), ("sliced_cl", "sigmoid", 1, "")])
def test_opcheck(layout, activation, dilation, needs_grad):
    x, w, b = _inputs(1, 3, 2, 3, 4, 3, layout=layout, needs_grad=needs_grad)
    torch.library.opcheck(torch.ops.apnt_triton.conv2d_fwd.default, (x, w, b, dilation, activation, 0.1))


@pytest.mark.parametrize("activation,factor", [("relu", 0.25), ("leaky_relu", 0.25), ("sigmoid", 1.0), ("none", 0.0)])
def test_memory_held_for_backward(activation, factor):
    """relu and leaky_relu keep a bool mask of the output (a quarter of its float32 bytes), as native does."""
    from apnt_test_helpers import saved_bytes
    x, w, b = _inputs(1, 8, 16, 12, 10, 3)
    held, saves = saved_bytes(lambda: conv2d(x, w, b, backend="triton", activation=activation), [x, w, b])
    assert saves >= 2, "the hook did not see the op's saves"
    assert held == factor * 4 * 16 * 12 * 10
