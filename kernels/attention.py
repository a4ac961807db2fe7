"""Triton kernels of family `attention` (DESIGN §3.1): AHDRNet's attention gate, APNT-Fusion's scale attention.

Forward: two launches of conv.conv2d_kernel, everything elementwise fused into their epilogues.
    attention_gate:   hidden    = leaky_relu(conv(cat(x, ref), w1, b1))   (cat read in place: two pointers)
                      attention = sigmoid(conv(hidden, w2, b2));  out = x * attention        (GATE epilogue)
    attention_blend:  attention = sigmoid(conv(cat(x, y), w, b)); out = a x + (1 - a) y      (BLEND epilogue)

Backward (glue in apnt.ops.attention): `gate_backward` / `blend_backward` below turn (grad_out,
grad_attention) into the direct input gradients and the gradient of the pre-sigmoid convolution, reading
sigmoid' = a (1 - a) from the saved attention map (the pre-activation is never stored). The hidden
layer's leaky_relu backward is conv.activation_backward; the convolution backwards are ATen's
convolution_backward (cuDNN on GPUs).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .conv import (ELEMENTWISE_BLOCK, activation_grad, channels_last, conv2d_forward, conv2d_forward_blended,
                   conv2d_forward_gated, elementwise_grid, flat_block, launch_device)


def attention_gate_forward(x, ref, w1, b1, w2, b2, negative_slope):
    """x (N, Cx, H, W), ref (N, Cr, H, W), w1 (M, Cx+Cr, k, k), b1 (M,), w2 (Cx, M, k, k), b2 (Cx,); one dtype
    of float16 / bfloat16 / float32, any layouts. Returns new channels_last tensors
    (out = x * attention (N, Cx, H, W), attention (N, Cx, H, W), hidden (N, M, H, W))."""
    hidden = conv2d_forward([x, ref], w1, b1, 1, "leaky_relu", negative_slope)
    attention, out = conv2d_forward_gated([hidden], w2, b2, 1, "sigmoid", 0.0, x)
    return out, attention, hidden


def attention_blend_forward(x, y, w, b):
    """x, y (N, C, H, W), w (C, 2C, k, k), b (C,). Returns new channels_last tensors
    (out = a * x + (1 - a) * y, attention a = sigmoid(conv(cat(x, y), w, b)))."""
    attention, out = conv2d_forward_blended([x, y], w, b, 1, "sigmoid", 0.0, x, y)
    return out, attention


@triton.jit
def _gate_backward_kernel(g_ptr, g_att_ptr, x_ptr, s_ptr, gx_ptr, gz_ptr, numel,
                          HAS_GRAD_ATTENTION: tl.constexpr, BLOCK: tl.constexpr):
    offs, ok = flat_block(numel, BLOCK)
    g = tl.load(g_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    s = tl.load(s_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    g_s = g * x
    if HAS_GRAD_ATTENTION:
        g_s += tl.load(g_att_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(gx_ptr + offs, (g * s).to(gx_ptr.dtype.element_ty), mask=ok)
    tl.store(gz_ptr + offs, activation_grad(g_s, s, "sigmoid", 0.0).to(gz_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _blend_backward_kernel(g_ptr, g_att_ptr, x_ptr, y_ptr, a_ptr, gx_ptr, gy_ptr, gz_ptr, numel,
                           HAS_GRAD_ATTENTION: tl.constexpr, BLOCK: tl.constexpr):
    offs, ok = flat_block(numel, BLOCK)
    g = tl.load(g_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    a = tl.load(a_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    g_a = g * (x - y)
    if HAS_GRAD_ATTENTION:
        g_a += tl.load(g_att_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(gx_ptr + offs, (g * a).to(gx_ptr.dtype.element_ty), mask=ok)
    tl.store(gy_ptr + offs, (g * (1.0 - a)).to(gy_ptr.dtype.element_ty), mask=ok)
    tl.store(gz_ptr + offs, activation_grad(g_a, a, "sigmoid", 0.0).to(gz_ptr.dtype.element_ty), mask=ok)


def gate_backward(g, g_att, x, s):
    """For out = x * s, s = sigmoid(z): (gx = g * s, gz = (g * x + g_att) * s * (1 - s)).

    g, x, s (and g_att, or None) of one shape (N, C, H, W) and dtype, any layouts; new channels_last results."""
    g, x, s = channels_last(g), channels_last(x), channels_last(s)
    g_att = channels_last(g_att) if g_att is not None else None
    gx, gz = torch.empty_like(s, dtype=g.dtype), torch.empty_like(s, dtype=g.dtype)
    with launch_device(s):
        _gate_backward_kernel[elementwise_grid(s.numel())](
            g, g if g_att is None else g_att, x, s, gx, gz, s.numel(),
            HAS_GRAD_ATTENTION=g_att is not None, BLOCK=ELEMENTWISE_BLOCK)
    return gx, gz


def blend_backward(g, g_att, x, y, a):
    """For out = a x + (1 - a) y, a = sigmoid(z): (gx = g a, gy = g (1 - a), gz = (g (x - y) + g_att) a (1 - a)).

    g, x, y, a (and g_att, or None) of one shape (N, C, H, W) and dtype, any layouts; new channels_last results."""
    g, x, y, a = channels_last(g), channels_last(x), channels_last(y), channels_last(a)
    g_att = channels_last(g_att) if g_att is not None else None
    gx, gy, gz = (torch.empty_like(a, dtype=g.dtype) for _ in range(3))
    with launch_device(a):
        _blend_backward_kernel[elementwise_grid(a.numel())](
            g, g if g_att is None else g_att, x, y, a, gx, gy, gz, a.numel(),
            HAS_GRAD_ATTENTION=g_att is not None, BLOCK=ELEMENTWISE_BLOCK)
    return gx, gy, gz
