"""Shared test helpers: seeding, tensor layouts, tolerances (float64 tight, float32 scaled, the flash-attention
recipe for float16/bfloat16), gradient collection, native-vs-reference comparison and the grid-emulation switch.

Test modules import these as `from apnt_test_helpers import ...`: every conftest.py without an __init__.py is
the module `conftest`, so `from conftest import` could pick tests/triton's when both directories are collected.
"""
from __future__ import annotations

import contextlib
import os
import statistics
import sys

import pytest
import torch

import apnt  # noqa: F401  (registers the ops)
from apnt.ops import _native

# Layouts every op must accept (DESIGN §2: "Non-contiguous and channels_last inputs give correct results").
#   sliced     : an NCHW view with gaps in every dimension (W taken with step 2: no unit stride at all)
#   sliced_cl  : a channel slice of a channels_last buffer: unit channel stride, yet not contiguous in any format
LAYOUTS = ("contiguous", "channels_last", "sliced", "sliced_cl")
LOWP = (torch.float16, torch.bfloat16)
LOWP_DRAWS = 9  # random input draws per low-precision comparison (see compare_to_reference)
NATIVE_ERROR = _native.load_error()
requires_native = pytest.mark.skipif(NATIVE_ERROR is not None, reason=f"apnt._C: {NATIVE_ERROR}")
sys.modules["apnt_test_helpers"] = sys.modules[__name__]

# One intra-op thread: the inputs are tiny, and on a shared 2-core machine OpenMP barriers between oversubscribed
# threads cost 100x the arithmetic. Tests of the parallel paths (Winograd chunks, parallel_for) use `threads`.
torch.set_num_threads(int(os.environ.get("APNT_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def seed():
    """Every test starts from the same RNG state, so a failure reproduces with `pytest -k`."""
    torch.manual_seed(0)
    yield 0


@pytest.fixture
def threads():
    """Two intra-op threads for the duration of a test (medium shapes: exercises the parallel loops)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield 2
    torch.set_num_threads(before)


@contextlib.contextmanager
def emulation(on: bool):
    """Run the native CPU backend's CUDA kernel bodies through the CPU grid emulator when `on`."""
    if not on:
        yield
        return
    with _native.grid_emulation(True):
        yield


# ---- tensors ------------------------------------------------------------------------------------------------

def make_tensor(shape, dtype=torch.float64, layout="contiguous", requires_grad=False, scale=1.0):
    """A standard normal (* scale) tensor of `shape` in `layout` (LAYOUTS; 1-D "sliced*" = every other element
    of a longer vector); a leaf (requires_grad as given) that keeps its strides. Drawn in float64 and rounded, so
    every dtype sees the same values from the same seed."""
    shape = tuple(shape)

    def draw(s):
        return (torch.randn(s, dtype=torch.float64) * scale).to(dtype)

    if layout == "contiguous" or len(shape) not in (1, 4):
        t = draw(shape)
    elif len(shape) == 1:
        t = draw((2 * shape[0] + 1,))[1::2] if layout.startswith("sliced") else draw(shape)
    elif layout == "channels_last":
        t = draw(shape).contiguous(memory_format=torch.channels_last)
    elif layout == "sliced":
        n, c, h, w = shape
        t = draw((n + 1, c + 2, h + 3, 2 * w + 1))[1:, 1:c + 1, 2:h + 2, 1::2]
    elif layout == "sliced_cl":
        n, c, h, w = shape
        t = draw((n, c + 3, h + 1, w + 2)).contiguous(memory_format=torch.channels_last)[:, 2:c + 2, 1:, 1:w + 1]
    else:
        raise ValueError(layout)
    assert t.shape == shape
    if layout.startswith("sliced") and len(shape) == 4 and min(shape) > 1:
        assert not t.is_contiguous() and not t.is_contiguous(memory_format=torch.channels_last)
    return t.detach().requires_grad_(requires_grad)


def clone_as(tensors, dtype=None, requires_grad=None):
    """Fresh leaves with the same values (and strides), optionally cast; `requires_grad` defaults to the source's."""
    out = []
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            out.append(t)
            continue
        rg = t.requires_grad if requires_grad is None else requires_grad
        c = t.detach().clone() if dtype is None else t.detach().to(dtype)
        out.append(c.requires_grad_(rg and c.is_floating_point()))
    return out


def grads(outputs, inputs, grad_outputs):
    """d(sum <outputs, grad_outputs>)/d(inputs that require grad); None where an input does not require grad.

    `grad_outputs` entries may be None (that output receives no gradient)."""
    pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if g is not None]
    wanted = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    if not wanted:
        return [None] * len(inputs)
    got = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True))
    return [next(got) if isinstance(t, torch.Tensor) and t.requires_grad else None for t in inputs]


# ---- tolerances -------------------------------------------------------------------------------------------

def assert_close_f64(out, ref, name="output", rtol=1e-9, atol=1e-10):
    """Float64: both sides compute the same sums in another order; only rounding separates them."""
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


def assert_close_scaled(out, ref, rtol, name="output", floor=0.0):
    """|out - ref| <= rtol * (|ref| + max|ref|) + floor: a relative tolerance that does not blow up where the exact
    value cancels to ~0 (each output is a sum of many terms of size ~max|ref|). `floor` covers tensors that are
    themselves a cancelling sum (a bias gradient sums a whole map): see compare_to_reference."""
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert out.dtype == ref.dtype, f"{name}: dtype {out.dtype} != {ref.dtype}"
    out64, ref64 = out.double(), ref.double()
    assert torch.isfinite(out64).all(), f"{name}: non-finite values"
    if not out.numel():
        return
    scale = ref64.abs().max().item()
    err = (out64 - ref64).abs()
    worst = (err / (rtol * (ref64.abs() + scale) + floor + 1e-30)).max().item()
    assert worst <= 1.0, (f"{name}: max |err| = {err.max().item():.3e} exceeds rtol {rtol:g} * (|ref| + {scale:.3e}) "
                          f"+ {floor:.2e} by a factor {worst:.2f}")


def lowp_errors(out, ref32, same_in_lowp, name="output"):
    """The three numbers of the flash-attention recipe: (the kernel's max error against ref32, PyTorch's
    low-precision max error against ref32, one ulp at the largest |ref32|)."""
    assert out.shape == ref32.shape == same_in_lowp.shape, name
    assert out.dtype == same_in_lowp.dtype, f"{name}: dtype {out.dtype}, expected {same_in_lowp.dtype}"
    assert torch.isfinite(out).all(), f"{name}: non-finite values"
    ref = ref32.float()
    err = (out.float() - ref).abs().max().item()
    base = (same_in_lowp.float() - ref).abs().max().item()
    ulp = torch.finfo(out.dtype).eps * max(ref.abs().max().item(), 1e-3)
    return err, base, ulp


def check_lowp_recipe(err, base, floor, name, factor=2.0):
    assert err <= factor * base + floor, (f"{name}: kernel error {err:.4e} > {factor} x PyTorch's low-precision "
                                          f"error {base:.4e} + {floor:.1e}")


def assert_close_lowp(out, ref32, same_in_lowp, name="output", factor=2.0):
    """The flash-attention recipe for float16/bfloat16.

    `out`: the kernel's low-precision result; `ref32`: `reference` on the same (low-precision-valued) inputs
    upcast to float32; `same_in_lowp`: `reference` run in the low precision itself. The kernel may be at most
    `factor` times as far from ref32 as PyTorch's own low-precision computation is (max abs error), plus a tiny
    absolute floor: one ulp at the output's largest magnitude (storing the result, and one rounding before it,
    for the cases where PyTorch happens to be exact)."""
    err, base, floor = lowp_errors(out, ref32, same_in_lowp, name)
    check_lowp_recipe(err, base, floor, name, factor)


F32_FLOOR_FACTOR = 32.0


def _as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _run_native_and_reference(native_fn, reference_fn, inputs, receives_grad, casts, name):
    """[(label, native tensor or None, [reference tensor per cast])] over every output and input gradient."""
    dtype = next(t.dtype for t in inputs if isinstance(t, torch.Tensor))
    out = _as_tuple(native_fn(*inputs))
    for o in out:
        assert o.dtype == dtype, f"{name}: output dtype {o.dtype}, expected {dtype}"
    receives_grad = receives_grad or [i == 0 for i in range(len(out))]
    grad_outs = [torch.randn(o.shape, dtype=torch.float64).to(dtype) if r else None
                 for o, r in zip(out, receives_grad)]
    got = list(out) + grads(out, inputs, grad_outs)
    refs = []
    for cast in casts:
        ins = clone_as(inputs, cast)
        o = _as_tuple(reference_fn(*ins))
        refs.append(list(o) + grads(o, ins, [None if g is None else g.to(o[0].dtype) for g in grad_outs]))
    labels = [f"{name} output {i}" for i in range(len(out))] + [f"{name} grad of input {i}" for i in range(len(inputs))]
    rows = []
    for i, (label, g) in enumerate(zip(labels, got)):
        r = [ref[i] for ref in refs]
        assert all((g is None) == (t is None) for t in r), f"{label}: gradient presence differs from reference"
        rows.append((label, g, r))
    return out, rows


def compare_to_reference(native_fn, reference_fn, inputs, *, mode, receives_grad=None, rtol=1e-4, name="op",
                         draws=1):
    """Run `native_fn(*inputs)` and `reference_fn(*inputs')` and compare every output and every input gradient.

    mode "f64":  inputs are float64; reference on identical float64 copies, tight tolerance.
    mode "f32":  inputs are float32; reference in float64 on the same values (so the oracle's own rounding
                 does not count), relative tolerance `rtol` (Winograd F(4x4,3x3) loses ~1e-5 relative), plus
                 F32_FLOOR_FACTOR x the error of reference run in float32, which measures how badly conditioned
                 each tensor is (a bias gradient that sums a map to ~0 has no meaningful relative error).
    mode "lowp": inputs are float16/bfloat16; the flash-attention recipe (assert_close_lowp) against reference in
                 float32, reference in the low precision as the yardstick. With `draws` > 1, `inputs` is a
                 function returning fresh random inputs and the recipe compares the medians over the draws of
                 the three numbers: for small tensors (a bias gradient, a 1x1 map) one draw's max error is a
                 single rounding random walk, and the ratio of two of them exceeds 2 a third of the time.
    `receives_grad[i]` says whether output i gets a (random) gradient; by default only the first does, so
    both "the op's extra output is unused" and "it receives a gradient" can be tested.
    Returns the native outputs of the (last) draw."""
    if mode == "lowp":
        make = inputs if callable(inputs) else (lambda: inputs)
        per_label = {}
        for _ in range(draws):
            out, rows = _run_native_and_reference(native_fn, reference_fn, make(), receives_grad,
                                                  (torch.float32, None), name)
            for label, g, (r32, low) in rows:
                if g is not None:
                    per_label.setdefault(label, []).append(lowp_errors(g, r32, low, label))
        for label, errors in per_label.items():
            err, base, floor = (statistics.median(column) for column in zip(*errors))
            check_lowp_recipe(err, base, floor, label + (f" (medians over {draws} draws)" if draws > 1 else ""))
        return out
    if mode == "f64":
        out, rows = _run_native_and_reference(native_fn, reference_fn, inputs, receives_grad, (None,), name)
        for label, g, (r,) in rows:
            if g is not None:
                assert_close_f64(g, r, label)
    elif mode == "f32":
        out, rows = _run_native_and_reference(native_fn, reference_fn, inputs, receives_grad,
                                              (torch.float64, None), name)
        for label, g, (r64, r32) in rows:
            if g is not None:
                floor = F32_FLOOR_FACTOR * (r32.double() - r64).abs().max().item() if r64.numel() else 0.0
                assert_close_scaled(g, r64.float(), rtol, label, floor)
    else:
        raise ValueError(mode)
    return out


# ---- a one-scene dataset to damage (tests/test_robust_files*.py) ----------------------------------------------------

@pytest.fixture(scope="session")
def pristine(tmp_path_factory):
    from apnt.data import synthesize
    root = tmp_path_factory.mktemp("pristine")
    synthesize(root, "Test", scenes=1, height=32, width=40, seed=8, progress=False)
    return root


@pytest.fixture
def root(pristine, tmp_path):
    """A fresh copy of the one-scene dataset, to damage."""
    import shutil
    shutil.copytree(pristine, tmp_path / "data")
    return tmp_path / "data"


def saved_bytes(fn, leaves):
    """(bytes of the unique storages autograd saves during fn(), each storage once, those of `leaves` excluded;
    the number of tensors saved, leaves included: proof that the hook saw the op's saves at all)."""
    exclude = {t.untyped_storage().data_ptr() for t in leaves}
    seen, packed = {}, []

    def pack(t):
        packed.append(1)
        storage = t.untyped_storage()
        if storage.data_ptr() not in exclude:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values()), len(packed)
