"""Family `dense` (DESIGN §3.2): AHDRNet's dilated residual dense block (DRDB).

    dilated_dense_block(x, weights, biases, fuse_weight, fuse_bias, *, dilation=2, checkpoint=False)
    h_i = relu(conv3x3(cat(x, h_0..h_{i-1}), weights[i], biases[i], dilation=d, padding=d))
    out = conv1x1(cat(x, h_0..h_{L-1}), fuse_weight, fuse_bias) + x

Native: one preallocated channels_last (N, C+L*G, H, W) buffer; layer i reads its channel prefix in place
(Winograd on the CPU reads any strides) and its bias+ReLU epilogue writes the next slice; the 1x1 fusion
is one GEMM over the buffer with bias and residual fused after it. Backward fills one gradient buffer the
same way. Memory held for backward: the buffer (eager keeps every concatenation); with checkpoint=True,
nothing beyond x — the buffer is rebuilt in backward.

Triton (apnt.kernels.dense): the same buffer, filled by the implicit-GEMM convolution kernel of family conv
writing each layer straight into its slice, the 1x1 fusion with bias and residual fused into that kernel's
epilogue; backward through one gradient buffer with a Triton ReLU-derivative kernel and ATen's
convolution_backward. Both are ops `apnt::` / `apnt_triton::dense_block_fwd(x, weights, biases, fuse_weight,
fuse_bias, dilation, checkpoint) -> (out, buffer)` and `dense_block_bwd`, registered by `_register` below.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from apnt.ops import _autocast, _backends, _native
from apnt.ops import _validate as V


def dilated_dense_block_reference(x, weights, biases, fuse_weight, fuse_bias, *, dilation=2):
    features = [x]
    for w, b in zip(weights, biases):
        features.append(F.relu(F.conv2d(torch.cat(features, 1), w, b, padding=dilation, dilation=dilation)))
    return F.conv2d(torch.cat(features, 1), fuse_weight, fuse_bias) + x


def validate(x, weights, biases, fuse_weight, fuse_bias, dilation, checkpoint):
    V.feature_map(x, "x")
    c = x.shape[1]
    if not isinstance(weights, (list, tuple)) or len(weights) == 0:
        raise ValueError("argument 'weights': expected a non-empty list of (G, C+i*G, 3, 3) tensors")
    if not isinstance(biases, (list, tuple)) or len(biases) != len(weights):
        raise ValueError(f"argument 'biases': expected a list of {len(weights)} (G,) tensors, one per layer")
    V.tensor(weights[0], "weights[0]", 4, f"(G, C={c}, 3, 3)")
    g = weights[0].shape[0]
    if g == 0:
        raise ValueError("argument 'weights[0]': expected G >= 1 output channels")
    for i, (w, b) in enumerate(zip(weights, biases)):
        doc = f"(G={g}, C+{i}*G={c + i * g}, 3, 3)"
        V.tensor(w, f"weights[{i}]", 4, doc)
        V.like(w, f"weights[{i}]", x, "x")
        V.shape(w, f"weights[{i}]", (g, c + i * g, 3, 3), doc)
        V.tensor(b, f"biases[{i}]", 1, f"(G={g},)")
        V.like(b, f"biases[{i}]", x, "x")
        V.shape(b, f"biases[{i}]", (g,), f"(G={g},)")
    total = c + len(weights) * g
    V.tensor(fuse_weight, "fuse_weight", 4, f"(C={c}, C+L*G={total}, 1, 1)")
    V.like(fuse_weight, "fuse_weight", x, "x")
    V.shape(fuse_weight, "fuse_weight", (c, total, 1, 1), f"(C={c}, C+L*G={total}, 1, 1)")
    V.tensor(fuse_bias, "fuse_bias", 1, f"(C={c},)")
    V.like(fuse_bias, "fuse_bias", x, "x")
    V.shape(fuse_bias, "fuse_bias", (c,), f"(C={c},)")
    V.positive_int(dilation, "dilation")
    if not isinstance(checkpoint, bool):
        raise TypeError(f"argument 'checkpoint': expected a bool, got {type(checkpoint).__name__}")


def dilated_dense_block(x, weights, biases, fuse_weight, fuse_bias, *, dilation=2, checkpoint=False,
                        backend="auto"):
    """The dilated residual dense block; see the module docstring for the formula.

    Args:
        x: (N, C, H, W). weights[i]: (G, C+i*G, 3, 3), biases[i]: (G,) for i < L. fuse_weight: (C, C+L*G, 1, 1),
        fuse_bias: (C,). dilation >= 1. checkpoint: keep only x for backward and recompute the buffer.
    Returns: (N, C, H, W) (channels_last from native and triton).
    Raises: TypeError / ValueError naming the argument (e.g. 'weights[2]') and its expected shape;
        BackendUnavailableError listing every backend.
    """
    validate(x, weights, biases, fuse_weight, fuse_bias, dilation, checkpoint)
    name = _backends.select("dilated_dense_block", backend, x.device, x.dtype)
    if name == "reference":
        if checkpoint and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(
                dilated_dense_block_reference, x, list(weights), list(biases), fuse_weight, fuse_bias,
                dilation=dilation, use_reentrant=False)
        return dilated_dense_block_reference(x, weights, biases, fuse_weight, fuse_bias, dilation=dilation)
    ns = torch.ops.apnt if name == "native" else torch.ops.apnt_triton
    return ns.dense_block_fwd(x, list(weights), list(biases), fuse_weight, fuse_bias, dilation, checkpoint)[0]


# ---- registrations shared by the native (apnt::) and Triton (apnt_triton::) ops ---------------------------

def _fake_fwd(x, weights, biases, fuse_weight, fuse_bias, dilation, checkpoint):
    n, c, h, w = x.shape
    total = fuse_weight.shape[1]
    out = torch.empty((n, c, h, w), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    buffer = (x.new_empty(0) if checkpoint else
              torch.empty((n, total, h, w), dtype=x.dtype, device=x.device, memory_format=torch.channels_last))
    return out, buffer


def _fake_bwd(grad_out, x, weights, biases, fuse_weight, buffer, dilation, checkpoint):
    return (torch.empty_like(x), [torch.empty_like(w) for w in weights], [torch.empty_like(b) for b in biases],
            torch.empty_like(fuse_weight), x.new_empty(fuse_weight.shape[0]))


def _setup_context(ctx, inputs, output):
    x, weights, biases, fuse_weight, fuse_bias, dilation, checkpoint = inputs
    ctx.save_for_backward(x, fuse_weight, output[1], *weights, *biases)
    ctx.mark_non_differentiable(output[1])  # the activation buffer is state for backward, not a result
    ctx.layers = len(weights)
    ctx.args = (dilation, checkpoint)


def _make_backward(bwd_op):
    def backward(ctx, grad_out, grad_buffer):
        x, fuse_weight, buffer, *rest = ctx.saved_tensors
        weights, biases = rest[:ctx.layers], rest[ctx.layers:]
        gx, gws, gbs, gfw, gfb = bwd_op(grad_out, x, weights, biases, fuse_weight, buffer, *ctx.args)
        return gx, gws, gbs, gfw, gfb, None, None
    return backward


# The Triton ops have the native schemas (csrc/registration.cpp), so one set of helpers serves both namespaces.
# The kernels live in apnt.kernels.dense, imported only when called (CPU-only installs never import triton here).
@torch.library.custom_op("apnt_triton::dense_block_fwd", mutates_args=(),
                         schema="(Tensor x, Tensor[] weights, Tensor[] biases, Tensor fuse_weight, Tensor fuse_bias, "
                                "int dilation, bool checkpoint) -> (Tensor out, Tensor buffer)")
def _triton_dense_block_fwd(x, weights, biases, fuse_weight, fuse_bias, dilation, checkpoint):
    from apnt.kernels import dense as kernels
    out, buffer = kernels.dense_block_forward(x, weights, biases, fuse_weight, fuse_bias, dilation)
    # checkpoint=True keeps only x (an input): backward rebuilds the buffer. A fresh empty tensor, not an alias.
    return out, x.new_empty(0) if checkpoint else buffer


@torch.library.custom_op("apnt_triton::dense_block_bwd", mutates_args=(),
                         schema="(Tensor grad_out, Tensor x, Tensor[] weights, Tensor[] biases, Tensor fuse_weight, "
                                "Tensor buffer, int dilation, bool checkpoint) "
                                "-> (Tensor, Tensor[], Tensor[], Tensor, Tensor)")
def _triton_dense_block_bwd(grad_out, x, weights, biases, fuse_weight, buffer, dilation, checkpoint):
    from apnt.kernels import dense as kernels
    if checkpoint:
        buffer = kernels.dense_block_buffer(x, weights, biases, dilation)
    return kernels.dense_block_backward(grad_out, x, weights, biases, fuse_weight, buffer, dilation)


def _register(ns):
    torch.library.register_fake(f"{ns}::dense_block_fwd", _fake_fwd)
    torch.library.register_fake(f"{ns}::dense_block_bwd", _fake_bwd)
    bwd = getattr(torch.ops, ns).dense_block_bwd
    torch.library.register_autograd(f"{ns}::dense_block_fwd", _make_backward(bwd), setup_context=_setup_context)
    _autocast.register(f"{ns}::dense_block_fwd")


if _native.load_error() is None:
    _register("apnt")
_register("apnt_triton")
