"""Family `conv` (DESIGN §3.0): the fast 2-D convolution with a fused activation epilogue.

    conv2d(x, w, b=None, *, padding="same", dilation=1, activation="none", negative_slope=0.01, backend="auto")
        = act(F.conv2d(x, w, b, dilation=d, padding=d * (k // 2)))

Backends: `reference` (PyTorch), `native` (CPU: Winograd F(4x4,3x3) for float32 3x3 kernels with the
epilogue fused into the output transform, oneDNN with a fused post-op otherwise; CUDA: cuDNN through
ATen + our epilogue kernel), `triton` (implicit-GEMM convolution with the epilogue fused; backward uses
ATen's convolution backward after a Triton epilogue kernel). Native and Triton outputs are channels_last.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from apnt.ops import _autocast, _backends, _native
from apnt.ops import _validate as V

ACTIVATIONS = ("none", "relu", "leaky_relu", "sigmoid")


def activate(z: torch.Tensor, activation: str, negative_slope: float) -> torch.Tensor:
    if activation == "relu":
        return F.relu(z)
    if activation == "leaky_relu":
        return F.leaky_relu(z, negative_slope)
    if activation == "sigmoid":
        return torch.sigmoid(z)
    return z


def conv2d_reference(x, w, b=None, *, dilation=1, activation="none", negative_slope=0.01):
    """The semantic definition: act(F.conv2d(x, w, b, dilation=d, padding=d*(k//2)))."""
    k = w.shape[-1]
    return activate(F.conv2d(x, w, b, dilation=dilation, padding=dilation * (k // 2)), activation, negative_slope)


def validate(x, w, b, padding, dilation, activation, negative_slope):
    V.feature_map(x, "x")
    V.tensor(w, "w", 4, "(O, C, k, k)")
    V.not_empty(w, "w", "(O, C, k, k)")
    V.like(w, "w", x, "x")
    V.odd_kernel(w, "w", "(O, C, k, k)")
    V.shape(w, "w", (None, x.shape[1], w.shape[2], w.shape[3]), f"(O, C={x.shape[1]}, k, k)")
    if b is not None:
        V.tensor(b, "b", 1, f"(O={w.shape[0]},)")
        V.like(b, "b", x, "x")
        V.shape(b, "b", (w.shape[0],), "(O,)")
    if padding != "same":
        raise ValueError(f"argument 'padding': only \"same\" is supported, got {padding!r}")
    V.positive_int(dilation, "dilation")
    if activation not in ACTIVATIONS:
        raise ValueError(f"argument 'activation': expected one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    V.slope(negative_slope)


def conv2d(x, w, b=None, *, padding="same", dilation=1, activation="none", negative_slope=0.01, backend="auto"):
    """act(conv2d(x, w, b)) with "same" padding, odd square kernels and a fused activation.

    Args:
        x: (N, C, H, W) floating tensor, any memory layout.
        w: (O, C, k, k), odd k; b: (O,) or None; same device and dtype as x.
        dilation: int >= 1 (padding is dilation * (k // 2)).
        activation: "none" | "relu" | "leaky_relu" | "sigmoid"; negative_slope >= 0 for leaky_relu.
        backend: "auto" | "reference" | "native" | "triton" (DESIGN §2; APNT_BACKEND overrides auto).
    Returns: (N, O, H, W), channels_last from native/triton.
    Raises: TypeError / ValueError naming the argument; BackendUnavailableError listing every backend.
    """
    validate(x, w, b, padding, dilation, activation, negative_slope)
    name = _backends.select("conv2d", backend, x.device, x.dtype)
    if name == "reference":
        return conv2d_reference(x, w, b, dilation=dilation, activation=activation, negative_slope=negative_slope)
    ns = torch.ops.apnt if name == "native" else torch.ops.apnt_triton
    return ns.conv2d_fwd(x, w, b, dilation, activation, float(negative_slope))


# ---- registrations shared by the native (apnt::) and Triton (apnt_triton::) ops ---------------------------

def _fake_fwd(x, w, b, dilation, activation, negative_slope):
    torch._check(w.shape[1] == x.shape[1], lambda: "w: input channels must match x")
    return torch.empty((x.shape[0], w.shape[0], x.shape[2], x.shape[3]), dtype=x.dtype, device=x.device,
                       memory_format=torch.channels_last)


def _fake_bwd(grad_out, x, w, out, dilation, activation, negative_slope, output_mask):
    return (torch.empty_like(x) if output_mask[0] else x.new_empty(0),
            torch.empty_like(w) if output_mask[1] else x.new_empty(0),
            x.new_empty(w.shape[0]) if output_mask[2] else x.new_empty(0))


def _saved_output(output, activation):
    """What the backward needs of the output: relu and leaky_relu (slope >= 0) only need where it is > 0, so
    they keep that bool mask (a quarter of float32's bytes); "none" needs nothing; sigmoid needs y itself."""
    if activation in ("relu", "leaky_relu"):
        return output > 0
    if activation == "none":
        return output.new_empty(0)
    return output


def _setup_context(ctx, inputs, output):
    x, w, b, dilation, activation, negative_slope = inputs
    ctx.save_for_backward(x, w, _saved_output(output, activation))
    ctx.args = (dilation, activation, negative_slope)
    ctx.has_bias = b is not None


def _make_backward(bwd_op):
    def backward(ctx, grad_out):
        x, w, out = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
        gx, gw, gb = bwd_op(grad_out, x, w, out, *ctx.args, mask)
        return (gx if mask[0] else None, gw if mask[1] else None, gb if mask[2] else None, None, None, None)
    return backward


# Triton ops are torch.library.custom_ops in the namespace apnt_triton (DESIGN §2); the kernels live in
# apnt.kernels.conv and are imported only when called, so CPU-only installs never import triton here.
@torch.library.custom_op("apnt_triton::conv2d_fwd", mutates_args=())
def _triton_conv2d_fwd(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], dilation: int,
                       activation: str, negative_slope: float) -> torch.Tensor:
    from apnt.kernels import conv as kernels
    return kernels.conv2d_forward([x], w, b, dilation, activation, negative_slope)


@torch.library.custom_op("apnt_triton::conv2d_bwd", mutates_args=())
def _triton_conv2d_bwd(grad_out: torch.Tensor, x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, dilation: int,
                       activation: str, negative_slope: float, output_mask: list[bool]
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from apnt.kernels import conv as kernels
    gz = kernels.activation_backward(grad_out, out, activation, negative_slope)
    return aten_conv_backward(gz, [x], w, dilation, output_mask)[0]


def aten_conv_backward(gz, inputs, w, dilation, output_mask):
    """((grad_x, grad_w, grad_b), grad per input) of the pre-activation convolution through ATen (cuDNN on
    GPUs), the concatenation materialised only here. Masked-out gradients are empty tensors."""
    x = inputs[0] if len(inputs) == 1 else torch.cat(inputs, 1)
    pad = dilation * (w.shape[-1] // 2)
    gx, gw, gb = torch.ops.aten.convolution_backward(
        gz.contiguous(memory_format=torch.channels_last), x, w, [w.shape[0]], [1, 1], [pad, pad],
        [dilation, dilation], False, [0, 0], 1, list(output_mask))
    def unused():  # one fresh empty tensor per masked-out gradient: custom-op outputs may not alias each other
        return x.new_empty(0)
    per_input = list(gx.split([t.shape[1] for t in inputs], 1)) if output_mask[0] else [unused() for _ in inputs]
    return (gx if output_mask[0] else unused(), gw if output_mask[1] else unused(),
            gb if output_mask[2] else unused()), per_input


def _register(ns):
    torch.library.register_fake(f"{ns}::conv2d_fwd", _fake_fwd)
    torch.library.register_fake(f"{ns}::conv2d_bwd", _fake_bwd)
    bwd = getattr(torch.ops, ns).conv2d_bwd
    torch.library.register_autograd(f"{ns}::conv2d_fwd", _make_backward(bwd), setup_context=_setup_context)
    _autocast.register(f"{ns}::conv2d_fwd")


if _native.load_error() is None:
    _register("apnt")
_register("apnt_triton")
