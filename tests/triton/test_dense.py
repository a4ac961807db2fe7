"""dilated_dense_block(backend="triton") (kernels/dense.py) against dilated_dense_block_reference: forward and every
gradient (x, each weight and bias, the fusion's weight and bias) in float32, float16 by the flash-attention recipe,
weird shapes and layouts, checkpoint on and off, opcheck, one aot_eager compile. Interpreter only (conftest)."""
import math

import pytest
import torch

from apnt.ops import BackendUnavailableError, dilated_dense_block
from apnt.ops.dense import dilated_dense_block_reference
from apnt_test_helpers import compare_to_reference, make_tensor


def _inputs(n, c, g, layers, h, w, dtype=torch.float32, layout="contiguous", x_layout=None, requires_grad=True):
    """[x, weights..., biases..., fuse_weight, fuse_bias]: one flat list, so every gradient is compared."""
    total = c + layers * g
    return ([make_tensor((n, c, h, w), dtype, x_layout or layout, requires_grad)]
            + [make_tensor((g, c + i * g, 3, 3), dtype, layout, requires_grad, scale=1 / math.sqrt(9 * (c + i * g)))
               for i in range(layers)]
            + [make_tensor((g,), dtype, layout, requires_grad, scale=0.5) for _ in range(layers)]
            + [make_tensor((c, total, 1, 1), dtype, layout, requires_grad, scale=1 / math.sqrt(total)),
               make_tensor((c,), dtype, layout, requires_grad, scale=0.5)])


def _split(flat):
    layers = (len(flat) - 3) // 2
    return flat[0], list(flat[1:1 + layers]), list(flat[1 + layers:1 + 2 * layers]), flat[-2], flat[-1]


def _triton(dilation, checkpoint=False):
    return lambda *flat: dilated_dense_block(*_split(flat), dilation=dilation, checkpoint=checkpoint, backend="triton")


def _reference(dilation):
    return lambda *flat: dilated_dense_block_reference(*_split(flat), dilation=dilation)


def _compare(inputs, dilation, checkpoint=False, mode="f32", **kwargs):
    out = compare_to_reference(_triton(dilation, checkpoint), _reference(dilation), inputs, mode=mode,
                               name="dilated_dense_block", **kwargs)
    assert out[0].is_contiguous(memory_format=torch.channels_last)


# (N, C, G, L, H, W, dilation, checkpoint): L=1, G=1, dilation 1/2/3, maps smaller than the dilation, N=3, and one
# crossing the tile edges (N*H*W = 70 > BLOCK_M = 64; C+L*G = 34 > BLOCK_K = 32, so a K chunk straddles).
CASES = [
    pytest.param(2, 3, 2, 3, 4, 5, 2, False, id="L3-d2"),
    pytest.param(1, 2, 3, 1, 3, 4, 2, True, id="L1-checkpoint"),
    pytest.param(3, 3, 1, 2, 3, 3, 1, False, id="N3-G1-d1"),
    pytest.param(1, 2, 2, 2, 5, 4, 3, True, id="d3-checkpoint"),
    pytest.param(1, 2, 2, 2, 2, 1, 3, False, id="2x1map-d3"),
    pytest.param(2, 4, 10, 3, 5, 7, 2, False, id="tile-edges"),
]


@pytest.mark.parametrize("n, c, g, layers, h, w, dilation, checkpoint", CASES)
def test_float32(n, c, g, layers, h, w, dilation, checkpoint):
    _compare(_inputs(n, c, g, layers, h, w), dilation, checkpoint)


@pytest.mark.parametrize("layout, x_layout, checkpoint", [("contiguous", "sliced_cl", True),
                                                          ("sliced", "channels_last", False)])
def test_layouts(layout, x_layout, checkpoint):
    """x and the parameters by their strides: x a channel slice of a channels_last buffer (read again when the
    checkpointed backward rebuilds the buffer) or channels_last; every parameter strided."""
    _compare(_inputs(1, 3, 2, 2, 4, 5, layout=layout, x_layout=x_layout), 2, checkpoint)


def test_float16():
    compare_to_reference(_triton(2), _reference(2), lambda: _inputs(1, 3, 2, 2, 4, 5, dtype=torch.float16),
                         mode="lowp", draws=3, name="dilated_dense_block")


def test_float64_is_refused():
    with pytest.raises(BackendUnavailableError, match="triton: .*float64"):
        _triton(2)(*_inputs(1, 2, 1, 1, 3, 3, dtype=torch.float64))


def test_buffer_holds_x_and_every_layer():
    flat = _inputs(1, 3, 2, 2, 4, 5, requires_grad=False)
    x, weights, biases, fw, fb = _split(flat)
    out, buffer = torch.ops.apnt_triton.dense_block_fwd(x, weights, biases, fw, fb, 2, False)
    features = [x]
    for w, b in zip(weights, biases):
        features.append(torch.relu(torch.nn.functional.conv2d(torch.cat(features, 1), w, b, padding=2, dilation=2)))
    torch.testing.assert_close(buffer, torch.cat(features, 1), rtol=1e-5, atol=1e-6)
    assert buffer.is_contiguous(memory_format=torch.channels_last)
    assert out.untyped_storage().data_ptr() != buffer.untyped_storage().data_ptr()


def test_nan_propagates():
    # A NaN in weights[0] makes h_0 NaN and, through the 1x1 fusion, every output (as in reference).
    flat = _inputs(1, 2, 2, 2, 3, 4, requires_grad=False)
    flat[1][0, 0, 1, 1] = float("nan")
    assert _triton(2)(*flat).isnan().all() and _reference(2)(*flat).isnan().all()


def test_memory_held_for_backward():
    # Only channel counts matter for the ratios: the design's C=16, G=8, L=6 on a tiny map.
    flat = _inputs(1, 16, 8, 6, 3, 3)
    exclude = {t.untyped_storage().data_ptr() for t in flat}

    def held(fn):
        seen = {}

        def pack(t):
            if t.untyped_storage().data_ptr() not in exclude:
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(*flat)
        return sum(seen.values())

    reference = held(_reference(2))
    assert held(_triton(2)) == 4 * 9 * (16 + 6 * 8) <= 0.3 * reference
    assert held(_triton(2, checkpoint=True)) == 0


@pytest.mark.parametrize("checkpoint", [False, True], ids=["buffer", "checkpoint"])
def test_opcheck(checkpoint):
    x, weights, biases, fw, fb = _split(_inputs(1, 2, 2, 2, 3, 4))
    torch.library.opcheck(torch.ops.apnt_triton.dense_block_fwd.default, (x, weights, biases, fw, fb, 2, checkpoint))


def test_compile_aot_eager_forward_backward():
    torch._dynamo.reset()
    fn = torch.compile(_triton(2, checkpoint=True), fullgraph=True, backend="aot_eager")
    compare_to_reference(fn, _reference(2), _inputs(2, 3, 2, 2, 3, 4), mode="f32", name="compiled")
