"""attention_gate / attention_gate_map / attention_blend with backend="triton" (kernels/attention.py) against
their references: forward and every gradient (with and without the attention map's) in float32, float16 by
the flash-attention recipe, every layout, masked-out gradients, opcheck, and one torch.compile test through
conv, gate and blend. Interpreter only (conftest)."""
import math

import pytest
import torch

from apnt.ops import attention_blend, attention_gate, attention_gate_map, conv2d
from apnt.ops.attention import attention_blend_reference, attention_gate_map_reference
from apnt.ops.conv import conv2d_reference
from apnt_test_helpers import LAYOUTS, compare_to_reference, make_tensor

GATE_NAMES = ("x", "ref", "w1", "b1", "w2", "b2")
BLEND_NAMES = ("x", "y", "w", "b")


def _make(shapes, fan_in, dtype, layout, needs_grad):
    """Tensors named by `shapes`; `layout` one for all or a dict by name; weights scaled by 1/sqrt(fan_in)."""
    def lay(name):
        return layout.get(name, "contiguous") if isinstance(layout, dict) else layout
    needs_grad = needs_grad.split()
    return [make_tensor(shape, dtype, lay(name), name in needs_grad, scale=1 / math.sqrt(fan_in.get(name, 1)))
            for name, shape in shapes.items()]


def _gate_inputs(n, cx, cr, m, h, w, k1, k2, dtype=torch.float32, layout="contiguous", needs_grad=" ".join(GATE_NAMES)):
    shapes = dict(x=(n, cx, h, w), ref=(n, cr, h, w), w1=(m, cx + cr, k1, k1), b1=(m,), w2=(cx, m, k2, k2), b2=(cx,))
    return _make(shapes, dict(w1=(cx + cr) * k1 * k1, w2=m * k2 * k2), dtype, layout, needs_grad)


def _blend_inputs(n, c, h, w, k, dtype=torch.float32, layout="contiguous", needs_grad=" ".join(BLEND_NAMES)):
    shapes = dict(x=(n, c, h, w), y=(n, c, h, w), w=(c, 2 * c, k, k), b=(c,))
    return _make(shapes, dict(w=2 * c * k * k), dtype, layout, needs_grad)


def _compare_gate(inputs, with_map=True, mode="f32"):
    """with_map: the attention map receives a gradient too (gate_backward's g_att)."""
    outs = compare_to_reference(lambda *t: attention_gate_map(*t, negative_slope=0.2, backend="triton"),
                                lambda *t: attention_gate_map_reference(*t, negative_slope=0.2), inputs, mode=mode,
                                receives_grad=[True, with_map], name="attention_gate_map")
    assert all(o.is_contiguous(memory_format=torch.channels_last) for o in outs)


def _compare_blend(inputs, mode="f32"):
    out = compare_to_reference(lambda *t: attention_blend(*t, backend="triton"), attention_blend_reference, inputs,
                               mode=mode, name="attention_blend")
    assert out[0].is_contiguous(memory_format=torch.channels_last)


# (N, Cx, Cr, M, H, W, k1, k2)
GATE_CASES = [
    pytest.param(3, 3, 4, 8, 7, 13, 3, 3, id="N3-7x13-Cx3-Cr4"),
    pytest.param(1, 1, 2, 5, 1, 1, 3, 3, id="1x1map-Cx1"),
    pytest.param(2, 2, 1, 4, 4, 5, 5, 1, id="k5-k1"),
    pytest.param(1, 3, 3, 17, 3, 4, 1, 3, id="k1-M17"),
]


@pytest.mark.parametrize("with_map", [True, False], ids=["grad-out+map", "grad-out"])
@pytest.mark.parametrize("n, cx, cr, m, h, w, k1, k2", GATE_CASES)
def test_gate_float32(n, cx, cr, m, h, w, k1, k2, with_map):
    _compare_gate(_gate_inputs(n, cx, cr, m, h, w, k1, k2), with_map)


@pytest.mark.parametrize("n, c, h, w, k", [(3, 3, 7, 13, 3), (1, 1, 1, 1, 3), (2, 4, 4, 5, 5), (1, 2, 3, 4, 1)])
def test_blend_float32(n, c, h, w, k):
    _compare_blend(_blend_inputs(n, c, h, w, k))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts(layout):
    _compare_gate(_gate_inputs(2, 3, 2, 4, 4, 5, 3, 3, layout=layout))
    _compare_blend(_blend_inputs(2, 3, 4, 5, 3, layout=layout))


def test_mixed_layouts():
    """x and ref (x and y) in different layouts: the virtual concatenation and the epilogues read each by its own
    strides."""
    _compare_gate(_gate_inputs(2, 3, 2, 4, 4, 5, 3, 3, layout=dict(x="channels_last", ref="sliced", w1="sliced_cl")))
    _compare_blend(_blend_inputs(2, 3, 4, 5, 3, layout=dict(x="sliced_cl", y="sliced", b="sliced")))


@pytest.mark.parametrize("needs_grad", ["x", "ref w2", "w2 b2", "b1"])
def test_gate_some_gradients(needs_grad):
    """Masked-out gradients are skipped in the backward op (and must not alias one another)."""
    _compare_gate(_gate_inputs(2, 2, 1, 3, 3, 4, 3, 3, needs_grad=needs_grad))


@pytest.mark.parametrize("needs_grad", ["x", "y", "w b"])
def test_blend_some_gradients(needs_grad):
    _compare_blend(_blend_inputs(2, 2, 3, 4, 3, needs_grad=needs_grad))


def test_float16():
    _compare_gate(_gate_inputs(2, 3, 3, 8, 5, 6, 3, 3, dtype=torch.float16), mode="lowp")
    _compare_blend(_blend_inputs(2, 3, 5, 6, 3, dtype=torch.float16), mode="lowp")


def test_opcheck():
    torch.library.opcheck(torch.ops.apnt_triton.attention_gate_fwd.default,
                          (*_gate_inputs(1, 2, 1, 3, 2, 3, 3, 3), 0.1))
    torch.library.opcheck(torch.ops.apnt_triton.attention_blend_fwd.default,
                          tuple(_blend_inputs(1, 2, 3, 2, 3, layout="channels_last", needs_grad="")))


def test_compile_fullgraph_aot_eager():
    """conv2d -> attention_gate -> attention_blend in one graph without breaks (aot_eager: no inductor compile),
    forward and backward, against the references run eagerly."""
    def model(x, ref, wc, bc, w1, b1, w2, b2, wb, bb, backend="triton"):
        f = conv2d(x, wc, bc, activation="leaky_relu", backend=backend)
        g = attention_gate(f, ref, w1, b1, w2, b2, backend=backend)
        return attention_blend(g, f, wb, bb, backend=backend)

    def reference(x, ref, wc, bc, w1, b1, w2, b2, wb, bb):
        f = conv2d_reference(x, wc, bc, activation="leaky_relu")
        g = attention_gate_map_reference(f, ref, w1, b1, w2, b2)[0]
        return attention_blend_reference(g, f, wb, bb)

    gate, blend = _gate_inputs(1, 3, 2, 4, 4, 5, 3, 3), _blend_inputs(1, 3, 4, 5, 3)
    x, ref = gate[:2]  # x feeds the first convolution, whose output is the gate's x
    wc = make_tensor((3, 3, 3, 3), torch.float32, requires_grad=True, scale=0.2)
    bc = make_tensor((3,), torch.float32, requires_grad=True)
    inputs = [x, ref, wc, bc, *gate[2:], *blend[2:]]
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    compare_to_reference(compiled, reference, inputs, mode="f32", name="compiled model")


def test_blend_keeps_inf_where_attention_is_exactly_zero():
    """y = Inf where a = sigmoid(-Inf) = 0: a x + (1 - a) y is Inf (y + a (x - y) would be NaN), as in native."""
    x = torch.tensor([[[[0.5, -1.0]]]])
    y = torch.tensor([[[[2.0, float("inf")]]]])
    w = torch.tensor([0.0, -1.0]).reshape(1, 2, 1, 1)
    b = torch.zeros(1)
    want = attention_blend(x, y, w, b, backend="reference")
    assert want[0, 0, 0, 1] == torch.inf
    torch.testing.assert_close(attention_blend(x, y, w, b, backend="triton"), want)
