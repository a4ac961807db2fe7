"""Property-based fuzzing of every public op in apnt.ops (issue 8, robustness), `reference` and `native` backends.

The property, for random shapes (0- and 1-sized dims, channel counts across the 16-lane blocks of the CPU
kernels), dtypes (integer, bool, complex, half, bfloat16, float32, float64), memory layouts (channels_last,
slices, transposes, expanded zero-stride tensors), NaN/Inf values and scalar arguments (odd/even/invalid kernel
and patch sizes, dilations, radii, scales): every call either raises ValueError/TypeError whose message names the
offending argument, or returns a result that agrees with `reference` evaluated in float64 on the same values.
Never a crash, a hang or silent garbage.

NaN/Inf (DESIGN §3): outside the Winograd path, non-finite values land exactly where reference puts them. The
native CPU Winograd convolution (float32, 3x3) has a documented limit: a NaN/Inf input poisons its whole 4x4
output tile, so there only "reference NaN => native NaN" (and "reference +-Inf => native non-finite") is checked,
with agreement wherever both are finite. patch_match is judged by §3.3's rule (apnt.selftest.match_agreement):
NaN scores are never chosen.

APNT_FUZZ_EXAMPLES sets the number of examples per test (default 20: seconds; `make fuzz` runs 2000).
"""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apnt.ops import (BackendUnavailableError, attention_blend, attention_gate, attention_gate_map, conv2d,
                      dilated_dense_block, patch_match, patch_transfer)
from apnt.ops import _native
from apnt.selftest import match_agreement
from apnt_test_helpers import NATIVE_ERROR

EXAMPLES = int(os.environ.get("APNT_FUZZ_EXAMPLES", "20"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=list(HealthCheck))

BACKENDS = pytest.mark.parametrize("backend", [
    "reference",
    pytest.param("native", marks=pytest.mark.skipif(NATIVE_ERROR is not None, reason=f"apnt._C: {NATIVE_ERROR}")),
])

FLOATING = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
NOT_FLOATING = (torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64)
LAYOUTS = ("contiguous", "channels_last", "sliced", "transposed", "expanded")
# |native - float64 reference| <= TOL * (|ref| + max|ref|): Winograd loses ~1e-5 relative in float32; the
# low-precision rows round every stored intermediate (hidden maps, dense-block layers) to 8 or 11 bits.
TOL = {torch.float64: 1e-7, torch.float32: 2e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}
MATCH_TOL = 1e-5


# ---- drawing inputs ---------------------------------------------------------------------------------------------

class Case:
    """One drawn call: tensors built from float64 masters (so the oracle sees exactly the same values)."""

    def __init__(self, data):
        self.data = data
        # Every random value comes from a generator seeded by hypothesis, so failures replay and shrink.
        self.gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2 ** 31 - 1), label="seed"))
        self.dtype = data.draw(st.sampled_from(FLOATING), label="dtype")
        self.special = data.draw(st.sampled_from([False, False, "nan", "inf", "both"]), label="special")
        # native only: run the CUDA kernel bodies through the CPU grid emulator (DESIGN §2)
        self.emulate = NATIVE_ERROR is None and data.draw(st.booleans(), label="emulate")

    def randn(self, *shape, dtype=torch.float64):
        return torch.randn(shape, dtype=torch.float64, generator=self.gen).to(dtype)

    def draw(self, strategy, label):
        return self.data.draw(strategy, label=label)

    def corrupt(self, names, scalars=()):
        """Choose at most one argument to make invalid; returns its name or None."""
        choice = self.draw(st.sampled_from([None] * (len(names) + len(scalars)) + list(names) + list(scalars)),
                           "corrupt")
        return choice

    def tensor(self, shape, name, *, special=True, dtype=None, scale=1.0):
        shape = tuple(int(s) for s in shape)
        master = self.randn(*shape) * scale
        if special and self.special and master.numel():
            count = self.draw(st.integers(1, max(1, min(3, master.numel()))), f"{name}.specials")
            values = {"nan": [float("nan")], "inf": [float("inf"), -float("inf")],
                      "both": [float("nan"), float("inf"), -float("inf")]}[self.special]
            for _ in range(count):
                pos = self.draw(st.integers(0, master.numel() - 1), f"{name}.special_pos")
                master.view(-1)[pos] = self.draw(st.sampled_from(values), f"{name}.special_value")
        return self.lay_out(master.to(dtype or self.dtype), name)

    def lay_out(self, t, name):
        layout = self.draw(st.sampled_from(LAYOUTS), f"{name}.layout")
        if layout == "channels_last" and t.dim() == 4:
            return t.contiguous(memory_format=torch.channels_last)
        if layout == "sliced" and t.dim() >= 1:
            big = torch.zeros(t.shape[:-1] + (2 * t.shape[-1] + 1,), dtype=t.dtype)
            big[..., 1::2] = t
            return big[..., 1::2]
        if layout == "transposed" and t.dim() >= 2:
            return t.transpose(-1, -2).contiguous().transpose(-1, -2)
        if layout == "expanded":
            dims = [d for d in range(t.dim()) if t.shape[d] > 1]
            if dims:
                d = self.draw(st.sampled_from(dims), f"{name}.expand_dim")
                return t.narrow(d, 0, 1).expand(t.shape)
        return t

    def bad_tensor(self, t, name, kernel=False):
        """An invalid replacement of tensor `t` (same role): wrong dtype, rank, emptiness or kernel shape."""
        kinds = ["dtype", "rank", "empty", "not_tensor"] + (["even_kernel", "non_square"] if kernel else [])
        kind = self.draw(st.sampled_from(kinds), f"{name}.corruption")
        if kind == "dtype":
            dtype = self.draw(st.sampled_from(NOT_FLOATING), f"{name}.bad_dtype")
            return (self.randn(*t.shape) * 3).to(dtype)
        if kind == "rank":
            grow = t.dim() == 1 or self.draw(st.booleans(), f"{name}.grow")
            return t.reshape(t.shape + (1,)) if grow else t.reshape(-1)
        if kind == "empty":
            shape = list(t.shape)
            shape[self.draw(st.integers(0, len(shape) - 1), f"{name}.empty_dim")] = 0
            return torch.empty(shape, dtype=t.dtype)
        if kind == "not_tensor":
            return self.draw(st.sampled_from([None, 1.0, [1.0], "x"]), f"{name}.object") if name != "b" else "b"
        o, c, k, _ = t.shape
        if kind == "even_kernel":
            k2 = self.draw(st.sampled_from([2, 4]), f"{name}.even")
            return self.randn(o, c, k2, k2, dtype=t.dtype)
        return self.randn(o, c, k, k + 2, dtype=t.dtype)

    def size(self, name, lo=1, hi=5):
        return self.draw(st.integers(lo, hi), name)

    def channels(self, name):
        # Mostly tiny; sometimes across the 16-lane blocks of the Winograd / epilogue kernels.
        return self.draw(st.one_of(st.integers(1, 4), st.sampled_from([15, 16, 17, 33])), name)

    def kernel(self, name):
        return self.draw(st.sampled_from([1, 3, 3, 5]), name)


def f64(t):
    return t.detach().double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t


def assert_named(exc, name, only):
    """The error names the corrupted argument (or, for a consistency error, some argument)."""
    msg = str(exc)
    assert isinstance(exc, (ValueError, TypeError)), f"{type(exc).__name__} instead of ValueError/TypeError: {msg}"
    if only:
        assert f"'{name}'" in msg, f"error does not name argument {name!r}: {msg}"
    else:
        assert "argument '" in msg, f"error names no argument: {msg}"


def call(fn, bad, case=None, backend="reference"):
    """Run fn(); when `bad` = (name, only) an error naming it is required. Returns the result or None."""
    emulate = case is not None and backend == "native" and case.emulate
    try:
        if emulate:
            with _native.grid_emulation(True):
                out = fn()
        else:
            out = fn()
    except BackendUnavailableError as e:  # native serves every floating dtype on the CPU
        raise AssertionError(f"unexpected BackendUnavailableError: {e}") from e
    except (ValueError, TypeError) as e:
        if bad is None:
            raise AssertionError(f"valid inputs rejected: {type(e).__name__}: {e}") from e
        assert_named(e, *bad)
        return None
    assert bad is None, f"invalid argument {bad[0]!r} was accepted"
    return out


def assert_agrees(out, ref, dtype, *, winograd, name="output"):
    assert isinstance(out, torch.Tensor), f"{name}: {type(out).__name__}"
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert out.dtype == dtype, f"{name}: dtype {out.dtype} != {dtype}"
    o, r = out.double(), ref.double()
    if winograd:  # a non-finite input may poison a whole tile (see spreads_nonfinite)
        assert not (r.isnan() & ~o.isnan()).any(), f"{name}: reference NaN where native is not"
        assert not (r.isinf() & o.isfinite()).any(), f"{name}: reference +-Inf where native is finite"
        both = o.isfinite() & r.isfinite()
    else:
        assert torch.equal(o.isnan(), r.isnan()), f"{name}: NaN positions differ from reference"
        assert torch.equal(o == torch.inf, r == torch.inf), f"{name}: +Inf positions differ from reference"
        assert torch.equal(o == -torch.inf, r == -torch.inf), f"{name}: -Inf positions differ from reference"
        both = r.isfinite()
    if not both.any():
        return
    scale = r[r.isfinite()].abs().max().item()
    err = (o - r).abs()[both]
    bound = TOL[dtype] * (r.abs()[both] + scale) + 1e-12
    worst = (err / bound).max().item()
    assert worst <= 1.0, f"{name}: max |err| {err.max().item():.3e} (scale {scale:.3e}, dtype {dtype}) x{worst:.2f}"


def spreads_nonfinite(case, backend, dtype, *kernel_sizes):
    """Whether a NaN/Inf input may reach outputs beyond its receptive field: our Winograd (native, float32, 3x3)
    poisons whole 4x4 tiles (documented), and oneDNN's bfloat16 convolutions, which both backends reach through
    ATen, do the same (F.conv2d itself: a dilated bf16 3x3 conv of a 1x3 map with one NaN returns all NaN)."""
    winograd = backend == "native" and not case.emulate and dtype == torch.float32 and 3 in kernel_sizes
    return dtype == torch.bfloat16 or winograd


# ---- conv2d -------------------------------------------------------------------------------------------------

@BACKENDS
@FUZZ
@given(data=st.data())
def test_fuzz_conv2d(backend, data):
    c = Case(data)
    n, ci, co, h, w = c.size("N", 1, 2), c.channels("C"), c.channels("O"), c.size("H", 1, 9), c.size("W", 1, 9)
    k = c.kernel("k")
    x = c.tensor((n, ci, h, w), "x")
    wt = c.tensor((co, ci, k, k), "w", scale=0.5, special=False)
    b = c.tensor((co,), "b", special=False) if c.draw(st.booleans(), "has_b") else None
    dilation = c.draw(st.sampled_from([1, 1, 2, 3, 7]), "dilation")
    activation = c.draw(st.sampled_from(["none", "relu", "leaky_relu", "sigmoid"]), "activation")
    slope = c.draw(st.sampled_from([0.01, 0.0, 0.2, 1.5]), "slope")
    bad = None
    which = c.corrupt(["x", "w", "b"], ["dilation", "activation", "negative_slope"])
    if which in ("x", "w"):
        if which == "x":
            x = c.bad_tensor(x, "x")
        else:
            wt = c.bad_tensor(wt, "w", kernel=True)
        bad = (which, True)
    elif which == "b":
        b = c.bad_tensor(torch.zeros(co), "b") if c.draw(st.booleans(), "b.kind") else torch.zeros(co + 1, dtype=c.dtype)
        bad = ("b", True)
    elif which == "dilation":
        dilation = c.draw(st.sampled_from([0, -1, 2.0, True, "2"]), "dilation.bad")
        bad = ("dilation", True)
    elif which == "activation":
        activation = c.draw(st.sampled_from(["gelu", "", None, "RELU"]), "activation.bad")
        bad = ("activation", True)
    elif which == "negative_slope":
        slope = c.draw(st.sampled_from([-0.1, float("nan"), float("inf"), True, "0.1"]), "slope.bad")
        bad = ("negative_slope", True)
    out = call(lambda: conv2d(x, wt, b, dilation=dilation, activation=activation, negative_slope=slope,
                              backend=backend), bad, c, backend)
    if out is None:
        return
    ref = conv2d(f64(x), f64(wt), f64(b), dilation=dilation, activation=activation, negative_slope=slope,
                 backend="reference")
    assert_agrees(out, ref, c.dtype, winograd=spreads_nonfinite(c, backend, c.dtype, k))


# ---- attention ------------------------------------------------------------------------------------------------

@BACKENDS
@FUZZ
@given(data=st.data())
def test_fuzz_attention_gate(backend, data):
    c = Case(data)
    n, cx, cr, m = c.size("N", 1, 2), c.channels("Cx"), c.size("Cr", 1, 3), c.channels("M")
    h, w = c.size("H", 1, 7), c.size("W", 1, 7)
    k1, k2 = c.kernel("k1"), c.kernel("k2")
    args = {"x": c.tensor((n, cx, h, w), "x"), "ref": c.tensor((n, cr, h, w), "ref"),
            "w1": c.tensor((m, cx + cr, k1, k1), "w1", scale=0.3, special=False), "b1": c.tensor((m,), "b1", special=False),
            "w2": c.tensor((cx, m, k2, k2), "w2", scale=0.3, special=False), "b2": c.tensor((cx,), "b2", special=False)}
    slope = c.draw(st.sampled_from([0.01, 0.0, 0.3]), "slope")
    bad = None
    which = c.corrupt(list(args), ["negative_slope"])
    if which == "negative_slope":
        slope = c.draw(st.sampled_from([-1.0, float("nan"), None]), "slope.bad")
        bad = ("negative_slope", True)
    elif which is not None:
        kind = c.draw(st.sampled_from(["intrinsic", "mismatch"]), "kind")
        t = args[which]
        if kind == "intrinsic":
            args[which] = c.bad_tensor(t, which, kernel=which.startswith("w"))
            bad = (which, True)
        else:  # a consistent-looking tensor of the wrong size in one dimension
            shape = list(t.shape)
            d = c.draw(st.integers(0, len(shape) - 1), "mismatch_dim")
            shape[d] += 1 if shape[d] != 3 or d < 2 else 2  # keep kernels odd
            args[which] = c.randn(*shape, dtype=c.dtype)
            bad = (which, False)  # the check that notices may be that of a tensor whose shape depends on it
    map_too = c.draw(st.booleans(), "map")
    fn = attention_gate_map if map_too else attention_gate
    out = call(lambda: fn(**args, negative_slope=slope, backend=backend), bad, c, backend)
    if out is None:
        return
    ref = attention_gate_map(**{k: f64(v) for k, v in args.items()}, negative_slope=slope, backend="reference")
    wino = spreads_nonfinite(c, backend, c.dtype, k1, k2)
    if map_too:
        assert isinstance(out, tuple) and len(out) == 2
        assert_agrees(out[0], ref[0], c.dtype, winograd=wino, name="out")
        assert_agrees(out[1], ref[1], c.dtype, winograd=wino, name="attention")
    else:
        assert_agrees(out, ref[0], c.dtype, winograd=wino)


@BACKENDS
@FUZZ
@given(data=st.data())
def test_fuzz_attention_blend(backend, data):
    c = Case(data)
    n, ch, h, w, k = c.size("N", 1, 2), c.channels("C"), c.size("H", 1, 9), c.size("W", 1, 9), c.kernel("k")
    args = {"x": c.tensor((n, ch, h, w), "x"), "y": c.tensor((n, ch, h, w), "y"),
            "w": c.tensor((ch, 2 * ch, k, k), "w", scale=0.3, special=False), "b": c.tensor((ch,), "b", special=False)}
    bad = None
    which = c.corrupt(list(args))
    if which is not None:
        if c.draw(st.booleans(), "intrinsic"):
            args[which] = c.bad_tensor(args[which], which, kernel=which == "w")
            bad = (which, True)
        else:
            shape = list(args[which].shape)
            d = c.draw(st.integers(0, min(1, len(shape) - 1)), "mismatch_dim")
            shape[d] += 1
            args[which] = c.randn(*shape, dtype=c.dtype)
            bad = (which, False)
    out = call(lambda: attention_blend(**args, backend=backend), bad, c, backend)
    if out is None:
        return
    ref = attention_blend(**{k_: f64(v) for k_, v in args.items()}, backend="reference")
    assert_agrees(out, ref, c.dtype, winograd=spreads_nonfinite(c, backend, c.dtype, k))


# ---- dense ----------------------------------------------------------------------------------------------------

@BACKENDS
@FUZZ
@given(data=st.data())
def test_fuzz_dilated_dense_block(backend, data):
    c = Case(data)
    n, ch, g, layers = c.size("N", 1, 2), c.channels("C"), c.size("G", 1, 4), c.size("L", 1, 3)
    h, w = c.size("H", 1, 7), c.size("W", 1, 7)
    x = c.tensor((n, ch, h, w), "x")
    weights = [c.tensor((g, ch + i * g, 3, 3), f"weights[{i}]", scale=0.3, special=False) for i in range(layers)]
    biases = [c.tensor((g,), f"biases[{i}]", special=False) for i in range(layers)]
    fw = c.tensor((ch, ch + layers * g, 1, 1), "fuse_weight", scale=0.3, special=False)
    fb = c.tensor((ch,), "fuse_bias", special=False)
    dilation = c.draw(st.sampled_from([1, 2, 2, 3, 8]), "dilation")
    checkpoint = c.draw(st.booleans(), "checkpoint")
    bad = None
    which = c.corrupt(["x", "weights", "biases", "fuse_weight", "fuse_bias"], ["dilation", "checkpoint"])
    if which == "dilation":
        dilation, bad = c.draw(st.sampled_from([0, -2, 1.0, None]), "dilation.bad"), ("dilation", True)
    elif which == "checkpoint":
        checkpoint, bad = c.draw(st.sampled_from([1, None, "yes"]), "checkpoint.bad"), ("checkpoint", True)
    elif which in ("weights", "biases"):
        i = c.draw(st.integers(0, layers - 1), "layer")
        lst = weights if which == "weights" else biases
        kind = c.draw(st.sampled_from(["element", "length", "not_list"]), "list.kind")
        if kind == "element":
            lst[i] = c.bad_tensor(lst[i], f"{which}[{i}]")
            bad = (f"{which}[{i}]", True) if (which, i) != ("weights", 0) else ("weights[0]", False)
        elif kind == "length":
            del lst[i]
            bad = (which, False)
        else:
            lst = lst[0]
            bad = (which, False)
        if which == "weights":
            weights = lst
        else:
            biases = lst
    elif which is not None:
        t = {"x": x, "fuse_weight": fw, "fuse_bias": fb}[which]
        t = c.bad_tensor(t, which)
        x, fw, fb = (t if which == "x" else x, t if which == "fuse_weight" else fw, t if which == "fuse_bias" else fb)
        bad = (which, True)
    out = call(lambda: dilated_dense_block(x, weights, biases, fw, fb, dilation=dilation, checkpoint=checkpoint,
                                           backend=backend), bad, c, backend)
    if out is None:
        return
    ref = dilated_dense_block(f64(x), [f64(t) for t in weights], [f64(t) for t in biases], f64(fw), f64(fb),
                              dilation=dilation, backend="reference")
    assert_agrees(out, ref, c.dtype, winograd=spreads_nonfinite(c, backend, c.dtype, 3))


# ---- match ----------------------------------------------------------------------------------------------------

@BACKENDS
@FUZZ
@given(data=st.data())
def test_fuzz_patch_match(backend, data):
    c = Case(data)
    n, ch = c.size("N", 1, 2), c.channels("C")
    hq, wq = c.size("Hq", 1, 7), c.size("Wq", 1, 9)
    same = c.draw(st.booleans(), "same_size")
    hk, wk = (hq, wq) if same else (c.size("Hk", 1, 7), c.size("Wk", 1, 9))
    query, key = c.tensor((n, ch, hq, wq), "query"), c.tensor((n, ch, hk, wk), "key")
    patch_size = c.draw(st.sampled_from([1, 3, 3, 5, 7]), "patch_size")
    key_mask = None
    if c.draw(st.booleans(), "has_mask"):
        key_mask = c.lay_out(torch.rand(n, 1, hk, wk, generator=c.gen) > c.draw(st.sampled_from([0.2, 0.9, 1.0]), "mask_p"),
                             "key_mask")
    radius = c.draw(st.sampled_from([None, 0, 1, 2, 20]), "radius") if same else None
    precision = c.draw(st.sampled_from(["ieee", "tf32"]), "precision")
    bad = None
    which = c.corrupt(["query", "key", "key_mask"], ["patch_size", "radius", "precision"])
    if which in ("query", "key"):
        if which == "query":
            query = c.bad_tensor(query, "query")
        else:
            key = c.bad_tensor(key, "key")
        bad = (which, True)
    elif which == "key_mask":
        key_mask = c.draw(st.sampled_from([torch.ones(n, 1, hk, wk), torch.ones(n, 1, hk + 1, wk, dtype=torch.bool),
                                           torch.ones(n, hk, wk, dtype=torch.bool), [True]]), "mask.bad")
        bad = ("key_mask", True)
    elif which == "patch_size":
        patch_size, bad = c.draw(st.sampled_from([0, 2, 4, -1, 3.0, True]), "patch.bad"), ("patch_size", True)
    elif which == "radius":
        radius, bad = c.draw(st.sampled_from([-1, 1.5, True, "1"]), "radius.bad"), ("radius", True)
    elif which == "precision":
        precision, bad = c.draw(st.sampled_from(["fp16", None, "IEEE"]), "precision.bad"), ("precision", True)
    out = call(lambda: patch_match(query, key, patch_size=patch_size, key_mask=key_mask, radius=radius,
                                   precision=precision, backend=backend), bad, c, backend)
    if out is None:
        return
    score, index = out
    assert score.shape == index.shape == (n, hq, wq)
    assert score.dtype == torch.float32 and index.dtype == torch.int64
    assert not score.requires_grad
    a = match_agreement(score, index, query, key, patch_size=patch_size, key_mask=key_mask, radius=radius)
    assert a.ok(MATCH_TOL), (f"score error {a.score_error:.3e}, index gap {a.index_gap:.3e}, {a.missing} wrong "
                             f"-1 / non-zero scores (worst {a.worst})")
    assert score.isfinite().all(), "non-finite score returned (NaN scores are never chosen)"


@BACKENDS
@FUZZ
@given(data=st.data())
def test_fuzz_patch_transfer(backend, data):
    c = Case(data)
    n, cv = c.size("N", 1, 2), c.channels("Cv")
    hk, wk, hq, wq = c.size("Hk", 1, 5), c.size("Wk", 1, 5), c.size("Hq", 1, 5), c.size("Wq", 1, 5)
    patch_size = c.draw(st.sampled_from([1, 3, 3, 5]), "patch_size")
    scale = c.draw(st.sampled_from([1, 1, 2, 3]), "scale")
    value = c.tensor((n, cv, hk * scale, wk * scale), "value")
    index = torch.tensor(c.draw(st.lists(st.integers(-2, hk * wk - 1), min_size=n * hq * wq, max_size=n * hq * wq),
                                "index"), dtype=torch.int64).reshape(n, hq, wq)
    index = c.lay_out(index, "index")
    bad = None
    which = c.corrupt(["value", "index"], ["patch_size", "scale"])
    if which == "value":
        if c.draw(st.booleans(), "value.kind"):
            value = c.bad_tensor(value, "value")
        else:  # height or width not a multiple of the scale
            value = c.randn(n, cv, hk * scale + 1, wk * scale, dtype=c.dtype)
            if scale == 1:
                value = value[:, :, :0]
        bad = ("value", True)
    elif which == "index":
        kind = c.draw(st.sampled_from(["range", "dtype", "rank", "batch", "empty"]), "index.kind")
        if kind == "range":
            index = index.contiguous().clone()
            index.view(-1)[c.draw(st.integers(0, index.numel() - 1), "index.pos")] = \
                c.draw(st.sampled_from([hk * wk, hk * wk + 7, 2 ** 40]), "index.value")
        elif kind == "dtype":
            index = index.to(c.draw(st.sampled_from([torch.int32, torch.float32, torch.bool]), "index.dtype"))
        elif kind == "rank":
            index = index.unsqueeze(1)
        elif kind == "batch":
            index = torch.zeros(n + 1, hq, wq, dtype=torch.int64)
        else:
            index = torch.zeros(n, 0, wq, dtype=torch.int64)
        bad = ("index", True)
    elif which == "patch_size":
        patch_size, bad = c.draw(st.sampled_from([0, 2, -3, 1.0]), "patch.bad"), ("patch_size", True)
    elif which == "scale":
        scale, bad = c.draw(st.sampled_from([0, -1, 2.0, True]), "scale.bad"), ("scale", True)
    out = call(lambda: patch_transfer(value, index, patch_size=patch_size, scale=scale, backend=backend), bad, c, backend)
    if out is None:
        return
    ref = patch_transfer(f64(value), index, patch_size=patch_size, scale=scale, backend="reference")
    assert_agrees(out, ref, c.dtype, winograd=False)


# ---- regressions of bugs the fuzzing found ----------------------------------------------------------------------
# (each names the fuzz case that found it; they run with `-k fuzz` too)

requires_native = pytest.mark.skipif(NATIVE_ERROR is not None, reason=f"apnt._C: {NATIVE_ERROR}")
EMULATE = pytest.mark.parametrize("emulate", [False, True], ids=["direct", "emulated"])


def _emulation(on):
    import contextlib
    return _native.grid_emulation(True) if on else contextlib.nullcontext()


@requires_native
@EMULATE
def test_fuzz_regression_blend_keeps_inf_where_attention_is_exactly_zero(emulate):
    # Found by test_fuzz_attention_blend[native]: the native epilogue computed y + a (x - y), which is
    # Inf + 0 * (x - Inf) = NaN where y = Inf and a = sigmoid(-Inf) = 0; reference's a x + (1 - a) y is Inf.
    x = torch.tensor([[[[0.5, -1.0]]]], dtype=torch.float64)
    y = torch.tensor([[[[2.0, float("inf")]]]], dtype=torch.float64)
    w = torch.tensor([0.0, -1.0], dtype=torch.float64).reshape(1, 2, 1, 1)
    b = torch.zeros(1, dtype=torch.float64)
    want = attention_blend(x, y, w, b, backend="reference")
    assert want[0, 0, 0, 1] == torch.inf
    with _emulation(emulate):
        got = attention_blend(x, y, w, b, backend="native")
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("backend", ["reference", pytest.param("native", marks=requires_native)])
def test_fuzz_regression_unmatched_queries_ignore_non_finite_key_zero(backend):
    # Found by test_fuzz_patch_transfer[native]: reference gathered key 0 for index -1 and multiplied by 0, so a
    # NaN/Inf at key 0 leaked (0 * NaN) into pixels no valid column covers; DESIGN §3.4 gives 0 there.
    for bad in (float("nan"), float("inf")):
        value = torch.tensor([[[[bad]]]], dtype=torch.float64)
        index = torch.tensor([[[0, -1]]])
        out = patch_transfer(value, index, patch_size=3, backend=backend)
        assert out[0, 0, 0, 1] == 0 and not out[0, 0, 0, 0].isfinite()


def test_fuzz_regression_reference_transfer_out_of_range_index_is_value_error():
    # Found by test_fuzz_patch_transfer[reference]: torch.gather's RuntimeError named no argument.
    value = torch.randn(1, 2, 4, 6, dtype=torch.float64)
    for bad in (6, 2 ** 40):
        index = torch.zeros(1, 2, 3, dtype=torch.int64)
        index[0, 1, 2] = bad
        with pytest.raises(ValueError, match=r"argument 'index'.*\[0, 6\)"):
            patch_transfer(value, index, patch_size=3, scale=2, backend="reference")


@requires_native
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_fuzz_regression_windowed_search_never_chooses_non_finite_descriptors(dtype):
    # Found by test_fuzz_patch_match[native] (grid emulation, radius mode): the CUDA windowed-search body skips
    # zero-padded positions, so a query whose window holds an Inf scored a finite 0 (dot / Inf) where reference's
    # descriptor holds NaN (Inf / Inf) and every score is NaN: index -1.
    query = torch.tensor([[[[float("inf"), 0.3]]]], dtype=dtype)
    key = torch.tensor([[[[0.7, float("inf")]]]], dtype=dtype)
    want_score, want_index = patch_match(query, key, radius=1, backend="reference")
    for emulate in (False, True):
        with _emulation(emulate):
            score, index = patch_match(query, key, radius=1, backend="native")
        assert torch.equal(index, want_index) and torch.equal(score, want_score), (emulate, index, want_index)
    assert (want_index == -1).all()


def test_fuzz_native_sources_use_int64_indices():
    # Issue 8: no native kernel may wrap a flat index or coordinate at 2**31 elements. Tensors that large cannot
    # be allocated in a test (every op's output is dense), so this guards the audit instead: the only 32-bit
    # coordinates were the Winograd tile list's (now int64); 32-bit integers remain only for lane / loop counts
    # bounded by constants, CUDA launch geometry (grid-stride loops in int64) and the bad-index flag.
    import pathlib
    import re
    root = pathlib.Path(__file__).resolve().parents[1] / "csrc"
    hits = []
    for f in sorted(root.rglob("*")):
        if f.suffix in (".h", ".cpp", ".cu", ".cuh"):
            for no, line in enumerate(f.read_text().splitlines(), 1):
                if "bit pattern of a float" in line:  # a declared reinterpretation, never an index
                    continue
                if re.search(r"\b(u?int32_t|unsigned|long)\b", line.split("//")[0]):
                    hits.append(f"{f.relative_to(root)}:{no}: {line.strip()}")
    assert not hits, "32-bit integer types in native sources:\n" + "\n".join(hits)
