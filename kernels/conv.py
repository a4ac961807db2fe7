"""Triton kernels of family `conv` (DESIGN §3.0): implicit-GEMM 2-D convolution with a fused epilogue.

    s[n, o, h, w] = act(b[o] + sum_{c, ky, kx} in[n, c, h + (ky - k//2) d, w + (kx - k//2) d] * w[o, c, ky, kx])

is a GEMM of (N*H*W pixels) x (k*k*C) by (k*k*C) x (O): a program computes a BLOCK_M x BLOCK_N tile of
pixels x output channels, looping over the k*k taps and, per tap, over input channels in BLOCK_K chunks,
accumulating in float32. Stride 1, "same" zero padding d * (k//2), odd k, dilation d.

The input may be two tensors whose channels are concatenated virtually (AHDRNet's cat(x, ref)): channels
< C0 come from the first pointer, the rest from the second, each read in place through its own strides
(any layout, slices included). The epilogue adds the bias, applies the activation and may write a second
output of the same shape: GATE  out2 = x * s,  BLEND  out2 = s x + (1 - s) y; or add a
residual to the output itself: RESIDUAL  out = s + x. The output is written through its strides, so it may be a
channel slice of a larger buffer (the dense block's layers write straight into their slice).

Backward (apnt.ops.conv): `activation_backward` turns the output gradient into the pre-activation gradient,
reading act' from the saved output; the convolution backward itself is ATen's convolution_backward.
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

ACTIVATIONS = ("none", "relu", "leaky_relu", "sigmoid")
EPILOGUES = ("none", "gate", "blend", "residual")
ELEMENTWISE_BLOCK = 1024


# ---- shared Triton helpers (the attention kernels use them too) --------------------------------------------

@triton.jit
def activate(z, ACTIVATION: tl.constexpr, negative_slope):
    """act(z) for float32 z; NaN propagates as in PyTorch (hence `z < 0`, not max(z, 0))."""
    if ACTIVATION == "relu":
        z = tl.where(z < 0, 0.0, z)
    elif ACTIVATION == "leaky_relu":
        z = tl.where(z < 0, z * negative_slope, z)
    elif ACTIVATION == "sigmoid":
        e = tl.exp(-tl.abs(z))  # in (0, 1]: no overflow for large |z|
        z = tl.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return z


@triton.jit
def activation_grad(g, y, ACTIVATION: tl.constexpr, negative_slope):
    """g * act'(z) read from the output y = act(z) (float32): no pre-activation is kept for backward.

    y > 0 iff z > 0 for relu and leaky_relu with slope >= 0 (which validation enforces)."""
    if ACTIVATION == "relu":
        g = tl.where(y > 0, g, 0.0)
    elif ACTIVATION == "leaky_relu":
        g = tl.where(y > 0, g, g * negative_slope)
    elif ACTIVATION == "sigmoid":
        g = g * y * (1.0 - y)
    return g


@triton.jit
def flat_block(numel, BLOCK: tl.constexpr):
    """(offsets, mask) of this program's BLOCK elements of a flat array; int64 so huge maps do not wrap."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    return offs, offs < numel


# ---- convolution -------------------------------------------------------------------------------------------

@triton.jit
def _input_tile(x_ptr, pixel, c, sc, load_ok):
    """(BLOCK_M pixels, BLOCK_K channels) of one input at one tap; zero where masked (padding, other input).

    int64 channel offsets: c * (H * W) of an NCHW map exceeds 2**31 on large photos with many channels."""
    return tl.load(x_ptr + pixel[:, None] + c.to(tl.int64)[None, :] * sc, mask=load_ok, other=0.0)


@triton.jit
def conv2d_kernel(x0_ptr, x0_sn, x0_sc, x0_sh, x0_sw, C0,
                  x1_ptr, x1_sn, x1_sc, x1_sh, x1_sw, C1,
                  w_ptr, w_so, w_sc, w_sh, w_sw, b_ptr,
                  out_ptr, out_sn, out_sc, out_sh, out_sw, out2_ptr,
                  e0_ptr, e0_sn, e0_sc, e0_sh, e0_sw,
                  e1_ptr, e1_sn, e1_sc, e1_sh, e1_sw,
                  H, W, M, O, KS, DILATION, negative_slope,
                  HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, EPILOGUE: tl.constexpr,
                  INPUT_PRECISION: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """One (BLOCK_M pixels) x (BLOCK_N output channels) tile; grid (cdiv(M, BLOCK_M), cdiv(O, BLOCK_N)).

    x0 (N, C0, H, W), x1 (N, C1, H, W) (C1 = 0: one input), w (O, C0 + C1, KS, KS), b (O,), all by strides;
    out (N, O, H, W) by strides (out2, when written, has the same strides); e0, e1 the epilogue operands
    (GATE, RESIDUAL: x; BLEND: x, y)."""
    offs_m = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_o = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    o_ok = offs_o < O
    n = offs_m // (H * W)
    oh = (offs_m % (H * W)) // W
    ow = offs_m % W
    pad = DILATION * (KS // 2)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for tap in range(KS * KS):
        ky = tap // KS
        kx = tap % KS
        ih = oh + ky * DILATION - pad
        iw = ow + kx * DILATION - pad
        pixel_ok = (m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W))[:, None]
        pixel0 = n * x0_sn + ih * x0_sh + iw * x0_sw
        pixel1 = n * x1_sn + ih * x1_sh + iw * x1_sw
        w_cols = (offs_o * w_so + ky * w_sh + kx * w_sw)[None, :]
        # One K loop over the virtual concatenation: a chunk may straddle C0 and read from both inputs.
        for c0 in range(0, C0 + C1, BLOCK_K):
            c = c0 + tl.arange(0, BLOCK_K)
            a = (_input_tile(x0_ptr, pixel0, c, x0_sc, pixel_ok & (c < C0)[None, :])
                 + _input_tile(x1_ptr, pixel1, c - C0, x1_sc, pixel_ok & ((c >= C0) & (c < C0 + C1))[None, :]))
            b = tl.load(w_ptr + c[:, None] * w_sc + w_cols, mask=(c < C0 + C1)[:, None] & o_ok[None, :], other=0.0)
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)

    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_o, mask=o_ok, other=0.0).to(tl.float32)[None, :]
    s = activate(acc, ACTIVATION, tl.cast(negative_slope, tl.float32))
    ok = m_ok[:, None] & o_ok[None, :]
    channel = offs_o.to(tl.int64)[None, :]
    if EPILOGUE != "none":
        xe = tl.load(e0_ptr + (n * e0_sn + oh * e0_sh + ow * e0_sw)[:, None] + channel * e0_sc,
                     mask=ok, other=0.0).to(tl.float32)
    if EPILOGUE == "residual":
        s += xe
    out_offs = (n * out_sn + oh * out_sh + ow * out_sw)[:, None] + channel * out_sc
    tl.store(out_ptr + out_offs, s.to(out_ptr.dtype.element_ty), mask=ok)

    if EPILOGUE == "gate" or EPILOGUE == "blend":
        if EPILOGUE == "gate":
            out2 = xe * s
        else:  # blend
            ye = tl.load(e1_ptr + (n * e1_sn + oh * e1_sh + ow * e1_sw)[:, None] + channel * e1_sc,
                         mask=ok, other=0.0).to(tl.float32)
            out2 = s * xe + (1.0 - s) * ye  # as attention.h: y + s (x - y) is NaN at y = Inf, s = 0
        tl.store(out2_ptr + out_offs, out2.to(out2_ptr.dtype.element_ty), mask=ok)


# Every config the heuristic can pick (the ahead-of-time test compiles each): 64-pixel tiles, 4 warps,
# 3 stages (float32: at most ~32 KB of shared memory).
CONFIGS = [{"BLOCK_M": 64, "BLOCK_N": block_n, "BLOCK_K": block_k, "num_warps": 4, "num_stages": 3}
           for block_n in (32, 64) for block_k in (16, 32)]


def _config(out_channels: int, in_channels: int) -> dict:
    """The entry of CONFIGS for a layer with `out_channels` (GEMM N) and `in_channels` per tap (GEMM K).

    32 columns for narrow layers, else 64 (wider layers take several column tiles and re-read their A tile
    from L2); BLOCK_K 16 for thin inputs (tl.dot's minimum), else 32."""
    block_n = 32 if out_channels <= 32 else 64
    block_k = 16 if in_channels <= 16 else 32
    return next(c for c in CONFIGS if c["BLOCK_N"] == block_n and c["BLOCK_K"] == block_k)


def launch_device(t: torch.Tensor):
    """Launch on t's GPU (Triton launches on the current device)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _launch(inputs, w, b, dilation, activation, negative_slope, epilogue, operands, input_precision, out=None):
    if not 1 <= len(inputs) <= 2:
        raise ValueError(f"conv2d_forward: expected 1 or 2 inputs, got {len(inputs)}")
    if activation not in ACTIVATIONS or epilogue not in EPILOGUES:
        raise ValueError(f"conv2d_forward: unknown activation {activation!r} or epilogue {epilogue!r}")
    x0 = inputs[0]
    x1 = inputs[1] if len(inputs) == 2 else x0
    c1 = inputs[1].shape[1] if len(inputs) == 2 else 0
    n, c0, h, width = x0.shape
    o, c, k, _ = w.shape
    if c0 + c1 != c:
        raise ValueError(f"conv2d_forward: inputs have {c0 + c1} channels, w expects {c}")
    if out is None:
        out = torch.empty((n, o, h, width), dtype=x0.dtype, device=x0.device, memory_format=torch.channels_last)
    elif out.shape != (n, o, h, width) or out.dtype != x0.dtype or out.device != x0.device:
        raise ValueError(f"conv2d_forward: out of shape {tuple(out.shape)} and dtype {out.dtype}, expected "
                         f"{(n, o, h, width)} and {x0.dtype}")
    # out2 is indexed with out's strides: only a fresh out (dense channels_last) may have a second output.
    two_outputs = epilogue in ("gate", "blend")
    if two_outputs and not out.is_contiguous(memory_format=torch.channels_last):
        raise ValueError(f"conv2d_forward: the {epilogue} epilogue needs a dense channels_last out")
    out2 = torch.empty_like(out) if two_outputs else out
    for t in operands:
        if t.shape != out.shape:
            raise ValueError(f"conv2d_forward: epilogue operand of shape {tuple(t.shape)}, expected {tuple(out.shape)}")
    e0 = operands[0] if operands else out
    e1 = operands[1] if len(operands) == 2 else e0
    # HWIO storage behind an OIHW view: a tap's B tile (channels x output channels) is then contiguous.
    w = w.permute(2, 3, 1, 0).contiguous().permute(3, 2, 0, 1)
    m = n * h * width
    cfg = _config(o, c)
    grid = (triton.cdiv(m, cfg["BLOCK_M"]), triton.cdiv(o, cfg["BLOCK_N"]))
    with launch_device(x0):
        conv2d_kernel[grid](
            x0, *x0.stride(), c0, x1, *x1.stride(), c1, w, *w.stride(), w if b is None else b.contiguous(),
            out, *out.stride(), out2, e0, *e0.stride(), e1, *e1.stride(), h, width, m, o, k, dilation,
            float(negative_slope),
            HAS_BIAS=b is not None, ACTIVATION=activation, EPILOGUE=epilogue, INPUT_PRECISION=input_precision,
            **cfg)
    return out, out2


def conv2d_forward(inputs: list[torch.Tensor], w: torch.Tensor, b: torch.Tensor | None, dilation: int,
                   activation: str, negative_slope: float, *, input_precision: str = "ieee",
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """act(conv2d(cat(inputs, 1), w, b)), "same" padding, as a new channels_last tensor (or into `out`).

    inputs: one or two (N, C_i, H, W) tensors, any strides, concatenated along channels without a copy;
    w (O, sum C_i, k, k), odd k; b (O,) or None; one dtype of float16 / bfloat16 / float32 (float32
    accumulation). input_precision "ieee" (exact fp32 products) or "tf32" (float32 inputs on GPUs).
    out: None, or an (N, O, H, W) tensor of the inputs' dtype with any strides (e.g. a channel slice of a
    buffer the inputs are other channels of) that is written in place and returned; it must not overlap
    the inputs. Returns (N, O, H, W) in the inputs' dtype."""
    return _launch(inputs, w, b, dilation, activation, negative_slope, "none", (), input_precision, out)[0]


def conv2d_forward_residual(inputs, w, b, dilation, activation, negative_slope, x, *, input_precision="ieee"):
    """conv2d_forward(inputs, w, b, ...) + x as a new channels_last tensor; x (N, O, H, W), any strides."""
    return _launch(inputs, w, b, dilation, activation, negative_slope, "residual", (x,), input_precision)[0]


def conv2d_forward_gated(inputs, w, b, dilation, activation, negative_slope, x, *, input_precision="ieee"):
    """(s, x * s) with s = conv2d_forward(inputs, w, b, ...); x (N, O, H, W), any strides."""
    return _launch(inputs, w, b, dilation, activation, negative_slope, "gate", (x,), input_precision)


def conv2d_forward_blended(inputs, w, b, dilation, activation, negative_slope, x, y, *, input_precision="ieee"):
    """(s, s * x + (1 - s) * y) with s = conv2d_forward(inputs, w, b, ...); x, y (N, O, H, W), any strides."""
    return _launch(inputs, w, b, dilation, activation, negative_slope, "blend", (x, y), input_precision)


# ---- activation backward --------------------------------------------------------------------------------------

@triton.jit
def _activation_backward_kernel(g_ptr, y_ptr, gz_ptr, numel, negative_slope,
                                ACTIVATION: tl.constexpr, BLOCK: tl.constexpr):
    offs, ok = flat_block(numel, BLOCK)
    g = tl.load(g_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    gz = activation_grad(g, y, ACTIVATION, tl.cast(negative_slope, tl.float32))
    tl.store(gz_ptr + offs, gz.to(gz_ptr.dtype.element_ty), mask=ok)


def channels_last(t: torch.Tensor) -> torch.Tensor:
    """t as a dense channels_last tensor: equal-shaped operands then share one flat index."""
    return t.contiguous(memory_format=torch.channels_last)


def elementwise_grid(numel: int) -> tuple[int]:
    return (triton.cdiv(numel, ELEMENTWISE_BLOCK),)


def activation_backward(grad: torch.Tensor, y: torch.Tensor, activation: str, negative_slope: float) -> torch.Tensor:
    """grad * act'(z) computed from the output y = act(z); grad, y (N, C, H, W) of one dtype, any layouts.

    Returns a new channels_last tensor (for "none", `grad` itself: the identity needs no kernel)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation_backward: unknown activation {activation!r}")
    if activation == "none":
        return grad
    g, y = channels_last(grad), channels_last(y)
    gz = torch.empty_like(y, dtype=g.dtype)
    with launch_device(y):
        _activation_backward_kernel[elementwise_grid(y.numel())](
            g, y, gz, y.numel(), float(negative_slope), ACTIVATION=activation, BLOCK=ELEMENTWISE_BLOCK)
    return gz
