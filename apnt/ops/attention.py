"""Family `attention` (DESIGN §3.1): AHDRNet's attention gate and APNT-Fusion's scale attention.

    attention_gate(x, ref, w1, b1, w2, b2)  = x * sigmoid(conv(leaky_relu(conv(cat(x, ref), w1, b1)), w2, b2))
    attention_gate_map(...)                 = (that output, the attention map)
    attention_blend(x, y, w, b)             = a * x + (1 - a) * y,  a = sigmoid(conv(cat(x, y), w, b))

Native: the convolutions come from the conv family (on the CPU, Winograd reads x and ref in place: no
materialised cat), bias + activation fused into their epilogues, one fused gate/blend epilogue, and the
backward reads sigmoid's derivative from the saved attention map. Memory held for backward: the hidden
activation and the attention map (eager also keeps the concatenation and the pre-activations).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from apnt.ops import _autocast, _backends, _native
from apnt.ops import _validate as V
from apnt.ops.conv import aten_conv_backward


# ---- reference ----------------------------------------------------------------------------------------

def attention_gate_map_reference(x, ref, w1, b1, w2, b2, *, negative_slope=0.01):
    k1, k2 = w1.shape[-1], w2.shape[-1]
    h = F.leaky_relu(F.conv2d(torch.cat([x, ref], 1), w1, b1, padding=k1 // 2), negative_slope)
    a = torch.sigmoid(F.conv2d(h, w2, b2, padding=k2 // 2))
    return x * a, a


def attention_blend_reference(x, y, w, b):
    a = torch.sigmoid(F.conv2d(torch.cat([x, y], 1), w, b, padding=w.shape[-1] // 2))
    return a * x + (1 - a) * y


# ---- validation -----------------------------------------------------------------------------------------

def _validate_pair(x, other, name):
    V.feature_map(other, name)
    V.like(other, name, x, "x")
    V.shape(other, name, (x.shape[0], None, x.shape[2], x.shape[3]), f"(N={x.shape[0]}, C, H={x.shape[2]}, W={x.shape[3]})")


def _validate_weight(w, name, out_ch, in_ch, doc, x):
    V.tensor(w, name, 4, doc)
    V.like(w, name, x, "x")
    V.odd_kernel(w, name, doc)
    V.shape(w, name, (out_ch, in_ch, w.shape[2], w.shape[3]), doc)


def _validate_bias(b, name, n, x):
    V.tensor(b, name, 1, f"({n},)")
    V.like(b, name, x, "x")
    V.shape(b, name, (n,), f"({n},)")


def validate_gate(x, ref, w1, b1, w2, b2, negative_slope):
    V.feature_map(x, "x", "(N, Cx, H, W)")
    _validate_pair(x, ref, "ref")
    cx, cr = x.shape[1], ref.shape[1]
    V.tensor(w1, "w1", 4, f"(M, Cx+Cr={cx + cr}, k, k)")
    m = w1.shape[0]
    _validate_weight(w1, "w1", m, cx + cr, f"(M, Cx+Cr={cx + cr}, k, k)", x)
    if m == 0:
        raise ValueError("argument 'w1': expected M >= 1 hidden channels, got shape (0, ...)")
    _validate_bias(b1, "b1", m, x)
    _validate_weight(w2, "w2", cx, m, f"(Cx={cx}, M={m}, k, k)", x)
    _validate_bias(b2, "b2", cx, x)
    V.slope(negative_slope)


def validate_blend(x, y, w, b):
    V.feature_map(x, "x")
    _validate_pair(x, y, "y")
    c = x.shape[1]
    V.shape(y, "y", (x.shape[0], c, x.shape[2], x.shape[3]), "(N, C, H, W) like x")
    _validate_weight(w, "w", c, 2 * c, f"(C={c}, 2C={2 * c}, k, k)", x)
    _validate_bias(b, "b", c, x)


# ---- public API --------------------------------------------------------------------------------------------

def _ns(name):
    return torch.ops.apnt if name == "native" else torch.ops.apnt_triton


def attention_gate_map(x, ref, w1, b1, w2, b2, *, negative_slope=0.01, backend="auto"):
    """(x * attention, attention) with attention = sigmoid(conv(leaky_relu(conv(cat(x, ref), w1, b1)), w2, b2)).

    Shapes: x (N, Cx, H, W), ref (N, Cr, H, W), w1 (M, Cx+Cr, k, k), b1 (M,), w2 (Cx, M, k, k), b2 (Cx,);
    odd k, "same" padding; one device and floating dtype. Both outputs are differentiable.
    """
    validate_gate(x, ref, w1, b1, w2, b2, negative_slope)
    name = _backends.select("attention_gate", backend, x.device, x.dtype)
    if name == "reference":
        return attention_gate_map_reference(x, ref, w1, b1, w2, b2, negative_slope=negative_slope)
    out, attention, _ = _ns(name).attention_gate_fwd(x, ref, w1, b1, w2, b2, float(negative_slope))
    return out, attention


def attention_gate(x, ref, w1, b1, w2, b2, *, negative_slope=0.01, backend="auto"):
    """x * sigmoid(conv(leaky_relu(conv(cat(x, ref), w1, b1), negative_slope), w2, b2)); see attention_gate_map."""
    return attention_gate_map(x, ref, w1, b1, w2, b2, negative_slope=negative_slope, backend=backend)[0]


def attention_blend(x, y, w, b, *, backend="auto"):
    """a * x + (1 - a) * y with a = sigmoid(conv(cat(x, y), w, b)); x, y (N, C, H, W), w (C, 2C, k, k), b (C,)."""
    validate_blend(x, y, w, b)
    name = _backends.select("attention_blend", backend, x.device, x.dtype)
    if name == "reference":
        return attention_blend_reference(x, y, w, b)
    return _ns(name).attention_blend_fwd(x, y, w, b)[0]


# ---- fake kernels and autograd (shared by apnt:: and apnt_triton::) ------------------------------------------

def _cl(t, shape):
    return torch.empty(shape, dtype=t.dtype, device=t.device, memory_format=torch.channels_last)


def _fake_gate_fwd(x, ref, w1, b1, w2, b2, negative_slope):
    n, _, h, w = x.shape
    return _cl(x, x.shape), _cl(x, x.shape), _cl(x, (n, w1.shape[0], h, w))


def _grad_like(t, needed):
    return torch.empty_like(t) if needed else t.new_empty(0)


def _fake_gate_bwd(grad_out, grad_attention, x, ref, w1, w2, attention, hidden, negative_slope, output_mask):
    return (_grad_like(x, output_mask[0]), _grad_like(ref, output_mask[1]), _grad_like(w1, output_mask[2]),
            x.new_empty(w1.shape[0]) if output_mask[3] else x.new_empty(0), _grad_like(w2, output_mask[4]),
            x.new_empty(w2.shape[0]) if output_mask[5] else x.new_empty(0))


def _fake_blend_fwd(x, y, w, b):
    return _cl(x, x.shape), _cl(x, x.shape)


def _fake_blend_bwd(grad_out, grad_attention, x, y, w, attention, output_mask):
    return (_grad_like(x, output_mask[0]), _grad_like(y, output_mask[1]), _grad_like(w, output_mask[2]),
            x.new_empty(w.shape[0]) if output_mask[3] else x.new_empty(0))


def _gate_setup(ctx, inputs, output):
    x, ref, w1, b1, w2, b2, negative_slope = inputs
    _, attention, hidden = output
    ctx.save_for_backward(x, ref, w1, w2, attention, hidden)
    ctx.negative_slope = negative_slope
    # `hidden` is state for backward, not a result: gradients into it are refused rather than ignored.
    ctx.mark_non_differentiable(hidden)
    # A missing gradient of the attention map stays None (no zeros tensor is made and read).
    ctx.set_materialize_grads(False)


def _blend_setup(ctx, inputs, output):
    x, y, w, b = inputs
    ctx.save_for_backward(x, y, w, output[1])
    ctx.set_materialize_grads(False)


def _make_gate_backward(bwd_op):
    def backward(ctx, grad_out, grad_attention, grad_hidden):
        x, ref, w1, w2, attention, hidden = ctx.saved_tensors
        if grad_out is None:  # only the attention map was used
            grad_out = torch.zeros_like(attention)
        mask = list(ctx.needs_input_grad[:6])
        grads = bwd_op(grad_out, grad_attention, x, ref, w1, w2, attention, hidden, ctx.negative_slope, mask)
        return tuple(g if m else None for g, m in zip(grads, mask)) + (None,)
    return backward


def _make_blend_backward(bwd_op):
    def backward(ctx, grad_out, grad_attention):
        x, y, w, attention = ctx.saved_tensors
        if grad_out is None:
            grad_out = torch.zeros_like(attention)
        mask = list(ctx.needs_input_grad[:4])
        grads = bwd_op(grad_out, grad_attention, x, y, w, attention, mask)
        return tuple(g if m else None for g, m in zip(grads, mask))
    return backward


# ---- Triton ops (kernels in apnt.kernels.attention; backward convolutions through ATen) -------------------------

@torch.library.custom_op("apnt_triton::attention_gate_fwd", mutates_args=())
def _triton_gate_fwd(x: torch.Tensor, ref: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                     b2: torch.Tensor, negative_slope: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from apnt.kernels import attention as kernels
    return kernels.attention_gate_forward(x, ref, w1, b1, w2, b2, negative_slope)


@torch.library.custom_op("apnt_triton::attention_gate_bwd", mutates_args=())
def _triton_gate_bwd(grad_out: torch.Tensor, grad_attention: Optional[torch.Tensor], x: torch.Tensor,
                     ref: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, attention: torch.Tensor,
                     hidden: torch.Tensor, negative_slope: float, output_mask: list[bool]
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from apnt.kernels import attention as kernels
    from apnt.kernels import conv as conv_kernels
    gx_gate, gz2 = kernels.gate_backward(grad_out, grad_attention, x, attention)
    need_first = any(output_mask[:4])
    (_, gw2, gb2), (ghidden,) = aten_conv_backward(gz2, [hidden], w2, 1, [need_first, output_mask[4], output_mask[5]])
    # Fresh empty tensors for masked-out gradients: custom-op outputs may not alias each other.
    gx, gref, gw1, gb1 = (x.new_empty(0) for _ in range(4))
    if need_first:
        gz1 = conv_kernels.activation_backward(ghidden, hidden, "leaky_relu", negative_slope)
        (_, gw1, gb1), (gx_conv, gref) = aten_conv_backward(
            gz1, [x, ref], w1, 1, [output_mask[0] or output_mask[1], output_mask[2], output_mask[3]])
        gx = gx_gate + gx_conv if output_mask[0] else x.new_empty(0)
        gref = gref.clone() if output_mask[1] else x.new_empty(0)
    return gx, gref, gw1, gb1, gw2, gb2


@torch.library.custom_op("apnt_triton::attention_blend_fwd", mutates_args=())
def _triton_blend_fwd(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    from apnt.kernels import attention as kernels
    return kernels.attention_blend_forward(x, y, w, b)


@torch.library.custom_op("apnt_triton::attention_blend_bwd", mutates_args=())
def _triton_blend_bwd(grad_out: torch.Tensor, grad_attention: Optional[torch.Tensor], x: torch.Tensor,
                      y: torch.Tensor, w: torch.Tensor, attention: torch.Tensor, output_mask: list[bool]
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from apnt.kernels import attention as kernels
    gx_direct, gy_direct, gz = kernels.blend_backward(grad_out, grad_attention, x, y, attention)
    (_, gw, gb), (gx_conv, gy_conv) = aten_conv_backward(
        gz, [x, y], w, 1, [output_mask[0] or output_mask[1], output_mask[2], output_mask[3]])
    # Fresh empty tensors for masked-out gradients: custom-op outputs may not alias each other.
    return (gx_direct + gx_conv if output_mask[0] else x.new_empty(0),
            gy_direct + gy_conv if output_mask[1] else x.new_empty(0), gw, gb)


def _register(ns):
    ops = getattr(torch.ops, ns)
    torch.library.register_fake(f"{ns}::attention_gate_fwd", _fake_gate_fwd)
    torch.library.register_fake(f"{ns}::attention_gate_bwd", _fake_gate_bwd)
    torch.library.register_fake(f"{ns}::attention_blend_fwd", _fake_blend_fwd)
    torch.library.register_fake(f"{ns}::attention_blend_bwd", _fake_blend_bwd)
    torch.library.register_autograd(f"{ns}::attention_gate_fwd", _make_gate_backward(ops.attention_gate_bwd),
                                    setup_context=_gate_setup)
    torch.library.register_autograd(f"{ns}::attention_blend_fwd", _make_blend_backward(ops.attention_blend_bwd),
                                    setup_context=_blend_setup)
    _autocast.register(f"{ns}::attention_gate_fwd")
    _autocast.register(f"{ns}::attention_blend_fwd")


if _native.load_error() is None:
    _register("apnt")
_register("apnt_triton")
