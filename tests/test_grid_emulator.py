"""The CPU grid emulator (DESIGN §2, csrc/common/grid*.h) really runs the CUDA kernel bodies.

- `torch.ops.apnt._set_grid_emulation` returns the previous value; `grid_emulation()` restores it.
- With emulation on, every elementwise body gives bit-for-bit what the parallel CPU loop gives (the same body,
  another launcher) and agrees with `reference`.
- Under gdb (skipped where gdb or ptrace is unavailable): with emulation on, `apnt::emulate_grid<Body>` is entered
  for every body and dtype the CPU can reach, and never with emulation off.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import apnt
from apnt.ops import _native, attention_gate_map, conv2d
from apnt_test_helpers import clone_as, grads, make_tensor, requires_native

pytestmark = requires_native
DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def test_set_grid_emulation_returns_the_previous_value():
    original = torch.ops.apnt._set_grid_emulation(False)
    try:
        assert torch.ops.apnt._set_grid_emulation(True) is False
        assert torch.ops.apnt._set_grid_emulation(True) is True
        assert torch.ops.apnt._set_grid_emulation(False) is True
        assert torch.ops.apnt._set_grid_emulation(False) is False
    finally:
        torch.ops.apnt._set_grid_emulation(original)


def test_grid_emulation_context_restores_the_previous_value():
    original = torch.ops.apnt._set_grid_emulation(False)
    try:
        with _native.grid_emulation(True):
            assert torch.ops.apnt._set_grid_emulation(True) is True
            with _native.grid_emulation(False):
                assert torch.ops.apnt._set_grid_emulation(False) is False
            assert torch.ops.apnt._set_grid_emulation(True) is True  # the inner block restored "on"
            with pytest.raises(ZeroDivisionError), _native.grid_emulation(False):
                1 / 0
            assert torch.ops.apnt._set_grid_emulation(True) is True  # restored on an exception too
        assert torch.ops.apnt._set_grid_emulation(False) is False
    finally:
        torch.ops.apnt._set_grid_emulation(original)


# ---- emulated == direct, bit for bit --------------------------------------------------------------------------
# Sizes: 2*5*13*11 = 1430 elements = 5 full blocks of 256 threads and a partial one.

def _conv_case(dtype, activation):
    x = make_tensor((2, 3, 13, 11), dtype, "sliced", True)
    w = make_tensor((5, 3, 3, 3), dtype, "contiguous", True, scale=0.3)
    b = make_tensor((5,), dtype, "contiguous", True)
    return (lambda *t: conv2d(*t, activation=activation, negative_slope=0.2, backend="native"),
            lambda *t: conv2d(*t, activation=activation, negative_slope=0.2, backend="reference"),
            [x, w, b], [True])


def _gate_case(dtype, with_map):
    x = make_tensor((2, 5, 13, 11), dtype, "sliced", True)
    ref = make_tensor((2, 2, 13, 11), dtype, "contiguous", True)
    w1 = make_tensor((4, 7, 3, 3), dtype, "contiguous", True, scale=0.3)
    b1 = make_tensor((4,), dtype, "contiguous", True)
    w2 = make_tensor((5, 4, 1, 1), dtype, "contiguous", True, scale=0.5)
    b2 = make_tensor((5,), dtype, "contiguous", True)
    return (lambda *t: attention_gate_map(*t, negative_slope=0.1, backend="native"),
            lambda *t: attention_gate_map(*t, negative_slope=0.1, backend="reference"),
            [x, ref, w1, b1, w2, b2], [True, with_map])


def _blend_map_reference(x, y, w, b):
    a = torch.sigmoid(F.conv2d(torch.cat([x, y], 1), w, b, padding=w.shape[-1] // 2))
    return a * x + (1 - a) * y, a


def _blend_case(dtype, with_map, k=3):
    x = make_tensor((2, 5, 13, 11), dtype, "sliced", True)
    y = make_tensor((2, 5, 13, 11), dtype, "channels_last", True)
    w = make_tensor((5, 10, k, k), dtype, "contiguous", True, scale=0.3)
    b = make_tensor((5,), dtype, "contiguous", True)
    # The public function hides the attention map; the op returns it and takes its gradient.
    return torch.ops.apnt.attention_blend_fwd, _blend_map_reference, [x, y, w, b], [True, with_map]


CASES = {
    "conv_none": lambda d: _conv_case(d, "none"), "conv_relu": lambda d: _conv_case(d, "relu"),
    "conv_leaky_relu": lambda d: _conv_case(d, "leaky_relu"), "conv_sigmoid": lambda d: _conv_case(d, "sigmoid"),
    "gate": lambda d: _gate_case(d, False), "gate_map": lambda d: _gate_case(d, True),
    "blend": lambda d: _blend_case(d, False), "blend_map": lambda d: _blend_case(d, True),
    # float32 3x3 fuses gate / blend into the Winograd output transform on the CPU: 1x1 reaches the bodies.
    "blend_k1": lambda d: _blend_case(d, True, k=1),
}


def _run(fn, inputs, receives, grad_outs=None):
    ins = clone_as(inputs)
    out = fn(*ins)
    out = out if isinstance(out, tuple) else (out,)
    if grad_outs is None:
        grad_outs = [torch.randn(o.shape, dtype=torch.float64).to(o.dtype) if r else None
                     for o, r in zip(out, receives)]
    return list(out), grads(out, ins, grad_outs), grad_outs


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(CASES))
def test_emulated_launch_matches_direct(case, dtype):
    # Under emulation the CPU runs what a CUDA launch runs (ATen convolution, then our bodies). float64 and
    # float16 take that path directly too, so the two agree bit for bit; float32 and bfloat16 run Winograd /
    # oneDNN directly, so there they agree within rounding.
    native, reference, inputs, receives = CASES[case](dtype)
    out, got, gouts = _run(native, inputs, receives)
    with _native.grid_emulation(True):
        out_e, got_e, _ = _run(native, inputs, receives, gouts)
    exact = dtype in (torch.float64, torch.float16)
    tol = {torch.float32: 1e-4, torch.bfloat16: 5e-2}.get(dtype, 0.0)
    for i, (a, e) in enumerate(zip(out + got, out_e + got_e)):
        if a is None:
            continue
        if exact:
            assert torch.equal(a, e), f"{case} {dtype}: tensor {i} differs between the emulated and the direct launch"
        else:
            torch.testing.assert_close(a, e, rtol=tol, atol=tol * max(1.0, a.abs().max().item()), equal_nan=True,
                                       msg=lambda m: f"{case} {dtype}: tensor {i}: {m}")
    # ... and both are right (float64: exact up to summation order).
    if dtype == torch.float64:
        out_r, got_r, _ = _run(reference, inputs, receives, gouts)
        for i, (a, r) in enumerate(zip(out_e + got_e, out_r + got_r)):
            if a is not None:
                torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-10, msg=lambda m: f"{case} tensor {i}: {m}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16], ids=str)
def test_emulated_nan_and_inf_like_direct(dtype):
    # Special values through every activation body (forward and gradient) and the gate body.
    x = torch.randn(1, 2, 9, 9, dtype=torch.float64)
    x[0, 0, 4, 4], x[0, 1, 0, 0], x[0, 1, 8, 3] = float("nan"), float("inf"), -float("inf")
    x = x.to(dtype).requires_grad_()
    w, b = torch.randn(3, 2, 3, 3, dtype=dtype), torch.randn(3, dtype=dtype)
    for activation in ("none", "relu", "sigmoid", "leaky_relu"):
        results = []
        for emulate in (False, True):
            with _native.grid_emulation(emulate):
                out = conv2d(x, w, b, activation=activation, backend="native")
                results += [out, *torch.autograd.grad(out, [x], torch.ones_like(out))]
        for direct, emulated in zip(results[:2], results[2:]):
            torch.testing.assert_close(emulated, direct, rtol=0, atol=0, equal_nan=True)


# ---- the emulator is really entered (gdb) ----------------------------------------------------------------------

GDB_SCRIPT = r'''
# Records every entry of apnt::emulate_grid<Body> and every set_grid_emulation(on), in order, as "EVENT" lines.
import re
import gdb

gdb.execute("set pagination off")
gdb.execute("set confirm off")
gdb.execute("set auto-solib-add off")  # only apnt._C's symbols: libtorch's would take a minute
gdb.execute("catch load apnt/_C")
gdb.execute("run")
gdb.execute("sharedlibrary apnt/_C")
gdb.execute("delete")
for line in gdb.execute("info functions ^apnt::emulate_grid<", to_string=True).splitlines():
    m = re.search(r"(apnt::emulate_grid<.*>)\(", line)
    if m:
        gdb.execute(f"break {m.group(1)}", to_string=True)
gdb.execute("break apnt::set_grid_emulation", to_string=True)


def first_bool_argument():
    try:
        return int(gdb.parse_and_eval("on"))  # with debug info
    except gdb.error:
        return int(gdb.parse_and_eval("$rdi")) & 0xFF  # without: x86-64 SysV, first argument


while True:
    try:
        gdb.execute("continue", to_string=True)
        frame = gdb.selected_frame()
    except gdb.error:
        break  # the inferior exited
    name = frame.name() or "?"
    if name.endswith("@plt"):
        continue  # set_grid_emulation's PLT stub: the function itself stops next
    if "set_grid_emulation" in name:
        print(f"EVENT set {first_bool_argument()}", flush=True)
    else:
        print("EVENT body " + re.sub(r"\(.*$", "", re.sub(r"^.*?emulate_grid<", "", name))[:-1].strip(), flush=True)
'''

PROBE = r'''
import torch
import apnt
from apnt.ops import _native
import conftest  # noqa: F401  (registers apnt_test_helpers, which test_grid_emulator imports)
from test_grid_emulator import CASES, DTYPES, _run

def everything():
    for dtype in DTYPES:
        for case in CASES.values():
            native, _, inputs, receives = case(dtype)
            _run(native, inputs, receives)

print("PROBE START", flush=True)
everything()
with _native.grid_emulation(True):
    everything()
everything()
print("PROBE DONE", flush=True)
'''

_CPP_TYPE = {torch.float64: "double, double", torch.float32: "float, float", torch.float16: "c10::Half, float",
             torch.bfloat16: "c10::BFloat16, float"}


def expected_bodies():
    """Every (body, dtype) the CPU backend reaches. ActivationBody<float>/<BFloat16> are not among them: on the CPU
    fp32 and bf16 forward activations are fused into Winograd / oneDNN (on GPUs they run after cuDNN); the template
    is the one exercised for float64 and float16. (Likewise fp32 3x3 gate / blend forwards are fused into Winograd
    on the CPU; the 1x1 cases in CASES reach their bodies.)"""
    out = set()
    for dtype, t in _CPP_TYPE.items():
        scalar = t.split(",")[0]
        # The activation gradient from y itself, and from the bool mask y > 0 that conv2d saves for relu.
        out |= {f"apnt::conv::ActivationGradBody<{t}, {scalar}>", f"apnt::conv::ActivationGradBody<{t}, bool>",
                f"apnt::attention::GateForwardBody<{t}>",
                f"apnt::attention::GateBackwardBody<{t}>", f"apnt::attention::BlendForwardBody<{t}>",
                f"apnt::attention::BlendBackwardBody<{t}>"}
        if dtype in (torch.float64, torch.float16):
            out.add(f"apnt::conv::ActivationBody<{t}>")
    return out


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
def test_emulator_is_entered_for_every_body_only_when_on(tmp_path):
    (tmp_path / "trace.py").write_text(GDB_SCRIPT)
    (tmp_path / "probe.py").write_text(textwrap.dedent(PROBE))
    root = Path(apnt.__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), str(Path(__file__).parent)]),
               OMP_NUM_THREADS="1")
    cmd = ["gdb", "-q", "-batch", "-nx", "-x", str(tmp_path / "trace.py"), "--args", sys.executable,
           str(tmp_path / "probe.py")]
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.skip("gdb run timed out")
    if "PROBE START" not in run.stdout:
        pytest.skip(f"gdb cannot run the probe here (ptrace?): {run.stderr[-500:]}")
    assert "PROBE DONE" in run.stdout, run.stdout[-2000:] + run.stderr[-2000:]
    on, seen_on, seen_off = False, set(), set()
    for line in run.stdout.splitlines():
        m = re.match(r"EVENT (set|body) (.*)", line)
        if not m:
            continue
        if m.group(1) == "set":
            on = m.group(2) == "1"
        else:
            (seen_on if on else seen_off).add(m.group(2))
    assert not seen_off, f"emulate_grid entered with emulation off: {sorted(seen_off)}"
    missing = expected_bodies() - seen_on
    assert not missing, f"bodies never run through the emulator: {sorted(missing)}"
