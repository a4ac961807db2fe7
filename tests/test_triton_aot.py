"""Ahead-of-time compilation of every Triton kernel for GPUs this machine does not have (DESIGN §2).

Each kernel, in every config its heuristic can pick and every epilogue / activation / dtype variant the host
code launches, is compiled to PTX and cubin for sm_80 and sm_90 with
`triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", cc, 32))`, and its shared
memory is checked against the architecture's limit. Needs the real compiler: skipped under TRITON_INTERPRET=1
(where tests/triton runs the same kernels instead). Compiled kernels land in Triton's cache, so reruns are fast.
"""
import functools
import os

import pytest

if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("ahead-of-time compilation needs the real Triton compiler, not TRITON_INTERPRET=1",
                allow_module_level=True)
triton = pytest.importorskip("triton")

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from apnt.kernels import attention, conv, dense  # noqa: E402

# Largest dynamic shared memory per block: 163 KB on A100 (sm_80), 227 KB on H100 (sm_90).
SHARED_LIMIT = {80: 166912, 90: 232448}
FLOAT_ARGS = {"negative_slope"}
KERNELS = {"conv2d": conv.conv2d_kernel, "activation_backward": conv._activation_backward_kernel,
           "gate_backward": attention._gate_backward_kernel, "blend_backward": attention._blend_backward_kernel,
           "slice_relu_grad": dense._slice_relu_grad_kernel}


def _signature(fn, dtype):
    """Argument types as the launcher infers them for our hosts: every tensor (`*_ptr`) of `dtype`, float
    scalars fp32, integers i32 (sizes and strides below 2**31)."""
    def kind(p):
        if p.is_constexpr:
            return "constexpr"
        if p.name.endswith("_ptr"):
            return "*" + dtype
        return "fp32" if p.name in FLOAT_ARGS else "i32"
    return {p.name: kind(p) for p in fn.params}


@functools.lru_cache(maxsize=None)  # module-wide: variants that coincide compile once
def _compile(kernel, cc, dtype, constexprs, num_warps, num_stages):
    fn = KERNELS[kernel]
    # torch's allocations are 16-byte aligned: the launcher marks such pointers, which enables vector loads.
    aligned = {(i,): [["tt.divisibility", 16]] for i, p in enumerate(fn.params) if p.name.endswith("_ptr")}
    source = ASTSource(fn, _signature(fn, dtype), dict(constexprs), aligned)
    return triton.compile(source, target=GPUTarget("cuda", cc, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})


def _conv_variant(config, dtype="fp32", bias=True, activation="sigmoid", epilogue="blend", precision="ieee"):
    blocks = tuple((k, v) for k, v in config.items() if k.startswith("BLOCK_"))
    constexprs = (("HAS_BIAS", bias), ("ACTIVATION", activation), ("EPILOGUE", epilogue),
                  ("INPUT_PRECISION", precision)) + blocks
    name = f"conv2d-{dtype}-{epilogue}-{activation}-{precision}{'' if bias else '-nobias'}-" + \
        "x".join(str(v) for _, v in blocks)
    return pytest.param("conv2d", dtype, constexprs, config["num_warps"], config["num_stages"], id=name)


def _elementwise_variant(kernel, dtype, **constexprs):
    name = "-".join([kernel, dtype] + [f"{k}={v}" for k, v in constexprs.items()])
    constexprs = tuple(constexprs.items()) + (("BLOCK", conv.ELEMENTWISE_BLOCK),)
    return pytest.param(kernel, dtype, constexprs, 4, 3, id=name)  # the launcher's default num_warps/stages


BIGGEST = max(conv.CONFIGS, key=lambda c: c["BLOCK_M"] * c["BLOCK_N"] * c["BLOCK_K"] * c["num_stages"])
VARIANTS = (
    # every config, with the heaviest epilogue in float32 (the most shared memory per stage)
    [_conv_variant(c) for c in conv.CONFIGS]
    # what the hosts launch: conv2d_forward (every activation), the gated and blended attention convolutions
    + [_conv_variant(conv.CONFIGS[0], activation=a, epilogue="none") for a in conv.ACTIVATIONS]
    + [_conv_variant(conv.CONFIGS[0], epilogue="gate"),
       _conv_variant(conv.CONFIGS[0], bias=False, activation="relu", epilogue="none"),
       _conv_variant(conv.CONFIGS[0], precision="tf32", activation="leaky_relu", epilogue="none")]
    # the dense block: its layers (relu, written into a buffer slice) and its 1x1 fusion (residual epilogue)
    + [_conv_variant(c, activation="none", epilogue="residual") for c in conv.CONFIGS[:2]]
    + [_conv_variant(conv.CONFIGS[0], dtype="fp16", activation="none", epilogue="residual")]
    # tensor-core paths (mma on sm_80, wgmma on sm_90)
    + [_conv_variant(BIGGEST, dtype=d) for d in ("fp16", "bf16")]
    + [_elementwise_variant("activation_backward", "fp32", ACTIVATION=a) for a in conv.ACTIVATIONS if a != "none"]
    + [_elementwise_variant("activation_backward", d, ACTIVATION="leaky_relu") for d in ("fp16", "bf16")]
    + [_elementwise_variant(k, "fp32", HAS_GRAD_ATTENTION=g) for k in ("gate_backward", "blend_backward")
       for g in (True, False)]
    + [_elementwise_variant(k, "fp16", HAS_GRAD_ATTENTION=True) for k in ("gate_backward", "blend_backward")]
    + [_elementwise_variant("slice_relu_grad", d) for d in ("fp32", "fp16")]
)


@pytest.mark.parametrize("cc", sorted(SHARED_LIMIT), ids=lambda cc: f"sm{cc}")
@pytest.mark.parametrize("kernel, dtype, constexprs, num_warps, num_stages", VARIANTS)
def test_compiles(kernel, dtype, constexprs, num_warps, num_stages, cc):
    compiled = _compile(kernel, cc, dtype, constexprs, num_warps, num_stages)
    assert ".entry" in compiled.asm["ptx"] and len(compiled.asm["cubin"]) > 0
    assert compiled.metadata.num_warps == num_warps
    assert compiled.metadata.shared <= SHARED_LIMIT[cc], \
        f"{compiled.metadata.shared} bytes of shared memory > {SHARED_LIMIT[cc]} on sm_{cc}"


def test_heuristic_picks_only_compiled_configs():
    picks = {tuple(sorted(conv._config(o, c).items())) for o in (1, 3, 32, 33, 64, 128, 1000) for c in (1, 16, 17, 256)}
    assert picks <= {tuple(sorted(c.items())) for c in conv.CONFIGS}
