"""Triton kernels of family `dense` (DESIGN §3.2): AHDRNet's dilated residual dense block.

    h_i = relu(conv3x3(cat(x, h_0..h_{i-1}), weights[i], biases[i], dilation=d, padding=d))
    out = conv1x1(cat(x, h_0..h_{L-1}), fuse_weight, fuse_bias) + x

Forward (Triton; the one copy of x into the buffer is ATen's copy_): one channels_last (N, C+L*G, H, W)
buffer holds x and every h_i, so no concatenation is ever materialised. Layer i is conv.conv2d_kernel (the
implicit-GEMM convolution) reading the buffer's first C+i*G channels in place through their strides, with
bias + ReLU fused into its epilogue, storing straight into channels [C+i*G, C+(i+1)*G) of the same buffer.
The 1x1 fusion is the same kernel with k=1 over the whole buffer, bias and the residual x fused (RESIDUAL).

Backward (Triton for the ReLU derivative, ATen for the rest): one gradient buffer shaped like the buffer.
d out / d buffer = grad_out @ fuse_weight (one ATen mm into it), then for i = L-1 .. 0: `slice_relu_grad`
(Triton) turns the gradient of slice i into the gradient of its pre-activation, reading relu' from the
saved h_i (no pre-activation is stored); ATen's convolution_backward (cuDNN on GPUs) gives the weight and
bias gradients and the gradient of the layer's input prefix, which is added into the gradient buffer's
prefix. The slice of layer i is complete once layers > i have added into it, hence the reverse order.
The fusion's weight and bias gradients are an ATen mm and sum; grad x = gradient buffer's x slice + grad_out.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .conv import (ELEMENTWISE_BLOCK, activation_grad, channels_last, conv2d_forward, conv2d_forward_residual,
                   elementwise_grid, flat_block, launch_device)


def _new_buffer(x: torch.Tensor, channels: int) -> torch.Tensor:
    n, _, h, w = x.shape
    return torch.empty((n, channels, h, w), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)


def _pixels(t: torch.Tensor) -> torch.Tensor:
    """(N*H*W, C) view of a dense channels_last (N, C, H, W) tensor: the GEMM operand of a 1x1 convolution."""
    return t.permute(0, 2, 3, 1).view(-1, t.shape[1])


def dense_block_buffer(x, weights, biases, dilation, *, input_precision="ieee") -> torch.Tensor:
    """The activation buffer cat(x, h_0, ..., h_{L-1}) as a new dense channels_last (N, C+L*G, H, W) tensor.

    x (N, C, H, W) any strides; weights[i] (G, C+i*G, 3, 3), biases[i] (G,); one dtype of float16 / bfloat16 /
    float32 (float32 accumulation)."""
    c, g = x.shape[1], weights[0].shape[0]
    buffer = _new_buffer(x, c + len(weights) * g)
    buffer[:, :c].copy_(x)
    for i, (w, b) in enumerate(zip(weights, biases)):
        c0 = c + i * g
        # Reads channels [0, c0) and writes [c0, c0 + g) of the same buffer: disjoint, so no race.
        conv2d_forward([buffer[:, :c0]], w, b, dilation, "relu", 0.0, input_precision=input_precision,
                       out=buffer[:, c0:c0 + g])
    return buffer


def dense_block_forward(x, weights, biases, fuse_weight, fuse_bias, dilation, *, input_precision="ieee"):
    """(out, buffer): out = conv1x1(buffer, fuse_weight, fuse_bias) + x (N, C, H, W) and the activation buffer
    (N, C+L*G, H, W), both new channels_last tensors. fuse_weight (C, C+L*G, 1, 1), fuse_bias (C,); the rest as
    in `dense_block_buffer`."""
    buffer = dense_block_buffer(x, weights, biases, dilation, input_precision=input_precision)
    out = conv2d_forward_residual([buffer], fuse_weight, fuse_bias, 1, "none", 0.0, x, input_precision=input_precision)
    return out, buffer


@triton.jit
def _slice_relu_grad_kernel(gb_ptr, gb_sn, gb_sc, gb_sh, gb_sw, y_ptr, y_sn, y_sc, y_sh, y_sw, gz_ptr,
                            C0, G, H, W, numel, BLOCK: tl.constexpr):
    """gz[n, j, h, w] = gb[n, C0 + j, h, w] if y[n, C0 + j, h, w] > 0 else 0, for j < G; gz dense channels_last.

    gb, y (N, *, H, W) by strides (the gradient buffer and the activation buffer)."""
    offs, ok = flat_block(numel, BLOCK)
    pixel = offs // G
    channel = C0 + offs % G
    n = pixel // (H * W)
    h = (pixel // W) % H
    w = pixel % W
    g = tl.load(gb_ptr + n * gb_sn + channel * gb_sc + h * gb_sh + w * gb_sw, mask=ok, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + n * y_sn + channel * y_sc + h * y_sh + w * y_sw, mask=ok, other=0.0).to(tl.float32)
    tl.store(gz_ptr + offs, activation_grad(g, y, "relu", 0.0).to(gz_ptr.dtype.element_ty), mask=ok)


def slice_relu_grad(grad_buffer: torch.Tensor, buffer: torch.Tensor, c0: int, channels: int) -> torch.Tensor:
    """grad_buffer[:, c0:c0+channels] * relu'(z) read from y = buffer[:, c0:c0+channels] = relu(z), as a new
    dense channels_last (N, channels, H, W) tensor; grad_buffer and buffer (N, *, H, W) of one dtype, any strides."""
    n, _, h, w = buffer.shape
    gz = torch.empty((n, channels, h, w), dtype=grad_buffer.dtype, device=buffer.device,
                     memory_format=torch.channels_last)
    with launch_device(buffer):
        _slice_relu_grad_kernel[elementwise_grid(gz.numel())](
            grad_buffer, *grad_buffer.stride(), buffer, *buffer.stride(), gz, c0, channels, h, w, gz.numel(),
            BLOCK=ELEMENTWISE_BLOCK)
    return gz


def dense_block_backward(grad_out, x, weights, biases, fuse_weight, buffer, dilation):
    """(grad_x, grad_weights, grad_biases, grad_fuse_weight, grad_fuse_bias) of the block (see the module docstring).

    grad_out (N, C, H, W) any strides; buffer: the activation buffer of `dense_block_buffer` (dense channels_last);
    `biases` is unused (the buffer already holds the layers' outputs; kept for the op's signature). Uses the Triton
    `slice_relu_grad` kernel, ATen's mm and sum for the 1x1 fusion and ATen's convolution_backward for the 3x3
    layers. The gradients are new tensors laid out like torch.empty_like of x, the weights and fuse_weight."""
    del biases
    c, g, total = x.shape[1], weights[0].shape[0], fuse_weight.shape[1]
    buffer = channels_last(buffer)
    go = channels_last(grad_out)
    g2d = _pixels(go)
    grad_fuse_weight = torch.mm(g2d.t(), _pixels(buffer)).view(fuse_weight.shape)
    grad_fuse_bias = g2d.sum(0)
    # The shared gradient buffer: d out / d buffer from the fusion; each layer then adds its part to the prefix.
    grad_buffer = _new_buffer(x, total)
    torch.mm(g2d, fuse_weight.reshape(c, total), out=_pixels(grad_buffer))
    grad_weights, grad_biases = [None] * len(weights), [None] * len(weights)
    for i in reversed(range(len(weights))):
        c0 = c + i * g
        gz = slice_relu_grad(grad_buffer, buffer, c0, g)
        w = weights[i]
        grad_prefix, grad_w, grad_b = torch.ops.aten.convolution_backward(
            gz, buffer[:, :c0], w, [g], [1, 1], [dilation, dilation], [dilation, dilation], False, [0, 0], 1,
            [True, True, True])
        grad_buffer[:, :c0] += grad_prefix
        grad_weights[i] = _laid_out_like(w, grad_w)
        grad_biases[i] = grad_b
    grad_x = torch.add(grad_buffer[:, :c], go, out=torch.empty_like(x))  # + the residual path
    return grad_x, grad_weights, grad_biases, _laid_out_like(fuse_weight, grad_fuse_weight), grad_fuse_bias


def _laid_out_like(t: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """`value` in a new tensor with the strides torch.empty_like(t) has (what the op's fake kernel promises)."""
    return torch.empty_like(t).copy_(value)
