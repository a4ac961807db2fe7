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

from apnt.kernels import attention, conv, dense, match  # noqa: E402

# Largest dynamic shared memory per block: 163 KB on A100 (sm_80), 227 KB on H100 (sm_90).
SHARED_LIMIT = {80: 166912, 90: 232448}
FLOAT_ARGS = {"negative_slope"}
KERNELS = {"conv2d": conv.conv2d_kernel, "activation_backward": conv._activation_backward_kernel,
           "gate_backward": attention._gate_backward_kernel, "blend_backward": attention._blend_backward_kernel,
           "slice_relu_grad": dense._slice_relu_grad_kernel, "patch_match": match.patch_match_kernel,
           "transfer": match.transfer_kernel, "coverage": match.coverage_kernel,
           "transfer_backward_gather": match.transfer_backward_gather_kernel}
# Per kernel, the pointers that do not have the variant's dtype (a variant may override more).
_INDEX = {"index_ptr": "*i64", "flag_ptr": "*i32"}
POINTER_TYPES = {
    "patch_match": {"query_norm_ptr": "*fp32", "key_norm_ptr": "*fp32", "key_mask_ptr": "*u8", "score_ptr": "*fp32",
                    "index_ptr": "*i64"},
    "transfer": _INDEX, "coverage": dict(_INDEX, inv_count_ptr="*fp32"),
    "transfer_backward_gather": {"inv_count_ptr": "*fp32", "order_ptr": "*i32", "start_ptr": "*i32"},
}


def _signature(fn, dtype, pointers):
    """Argument types as the launcher infers them for our hosts: every tensor (`*_ptr`) of `dtype` unless
    `pointers` says otherwise, float scalars fp32, integers i32 (sizes and strides below 2**31)."""
    def kind(p):
        if p.is_constexpr:
            return "constexpr"
        if p.name.endswith("_ptr"):
            return pointers.get(p.name, "*" + dtype)
        return "fp32" if p.name in FLOAT_ARGS else "i32"
    return {p.name: kind(p) for p in fn.params}


@functools.lru_cache(maxsize=None)  # module-wide: variants that coincide compile once
def _compile(kernel, cc, dtype, constexprs, num_warps, num_stages, pointers=()):
    fn = KERNELS[kernel]
    # torch's allocations are 16-byte aligned: the launcher marks such pointers, which enables vector loads.
    aligned = {(i,): [["tt.divisibility", 16]] for i, p in enumerate(fn.params) if p.name.endswith("_ptr")}
    source = ASTSource(fn, _signature(fn, dtype, {**POINTER_TYPES.get(kernel, {}), **dict(pointers)}),
                       dict(constexprs), aligned)
    return triton.compile(source, target=GPUTarget("cuda", cc, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})


def _conv_variant(config, dtype="fp32", bias=True, activation="sigmoid", epilogue="blend", precision="ieee"):
    blocks = tuple((k, v) for k, v in config.items() if k.startswith("BLOCK_"))
    constexprs = (("HAS_BIAS", bias), ("ACTIVATION", activation), ("EPILOGUE", epilogue),
                  ("INPUT_PRECISION", precision)) + blocks
    name = f"conv2d-{dtype}-{epilogue}-{activation}-{precision}{'' if bias else '-nobias'}-" + \
        "x".join(str(v) for _, v in blocks)
    return pytest.param("conv2d", dtype, constexprs, config["num_warps"], config["num_stages"], (), id=name)


def _elementwise_variant(kernel, dtype, **constexprs):
    name = "-".join([kernel, dtype] + [f"{k}={v}" for k, v in constexprs.items()])
    constexprs = tuple(constexprs.items()) + (("BLOCK", conv.ELEMENTWISE_BLOCK),)
    return pytest.param(kernel, dtype, constexprs, 4, 3, (), id=name)  # the launcher's default num_warps/stages


def _config_variant(kernel, config, dtype, pointers=(), **constexprs):
    """A kernel launched with one of its CONFIGS entry (BLOCK_* and tile sizes, num_warps, num_stages)."""
    sizes = tuple((k, v) for k, v in config.items() if k not in ("num_warps", "num_stages"))
    name = "-".join([kernel, dtype] + [f"{k}={v}" for k, v in constexprs.items()]
                    + ["x".join(str(v) for _, v in sizes)])
    return pytest.param(kernel, dtype, tuple(constexprs.items()) + sizes, config["num_warps"], config["num_stages"],
                        pointers, id=name)


def _match_variant(dtype, precision, channels, radius, mask=True, same_size=True):
    """patch_match as its host launches it for features of `dtype` with `channels` channels and `radius`."""
    config = match._config(channels, radius, tensor_cores=dtype != "fp32" or precision == "tf32")
    return _config_variant("patch_match", config, dtype, HAS_MASK=mask, HAS_RADIUS=radius is not None,
                           SAME_SIZE=same_size, INPUT_PRECISION=precision)


TRANSFER_KERNELS = ("gather", "scatter", "transfer_backward_gather")


def _transfer_variant(kernel, config, dtype):
    """transfer_kernel as the forward ("gather") or the atomic backward ("scatter") launches it, or another kernel."""
    if kernel == "transfer_backward_gather":
        return _config_variant(kernel, config, dtype)
    scatter = kernel == "scatter"  # accumulates into a float32 buffer
    return _config_variant("transfer", config, dtype, (("dst_ptr", "*fp32"),) if scatter else (), SCATTER=scatter)


# (dtype, precision, channels, radius) of the search: every config the heuristic picks, with every option on
# (the most registers), each float32 precision, both tensor-core dtypes.
MATCH_CASES = ([("fp32", "ieee", 64, r) for r in (None, 1)]
               + [("fp32", "tf32", c, r) for c in (16, 64) for r in (None, 1)]
               + [(d, "ieee", 64, None) for d in ("fp16", "bf16")])
MATCH_VARIANTS = (
    [_match_variant(*case) for case in MATCH_CASES]
    + [_match_variant("fp32", "ieee", 64, None, mask=False, same_size=False)]
    # the transfer: forward gather, atomic scatter into float32, coverage, deterministic gather backward; every
    # config in float32, the widest in float16
    + [_transfer_variant(kernel, c, "fp32") for kernel in TRANSFER_KERNELS for c in match.TRANSFER_CONFIGS]
    + [_transfer_variant(kernel, match.TRANSFER_CONFIGS[-1], "fp16") for kernel in TRANSFER_KERNELS]
    + [_config_variant("coverage", match.COVERAGE_CONFIG, "fp32")]
)
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
    + MATCH_VARIANTS
)


@pytest.mark.parametrize("cc", sorted(SHARED_LIMIT), ids=lambda cc: f"sm{cc}")
@pytest.mark.parametrize("kernel, dtype, constexprs, num_warps, num_stages, pointers", VARIANTS)
def test_compiles(kernel, dtype, constexprs, num_warps, num_stages, pointers, cc):
    compiled = _compile(kernel, cc, dtype, constexprs, num_warps, num_stages, pointers)
    assert ".entry" in compiled.asm["ptx"] and len(compiled.asm["cubin"]) > 0
    assert compiled.metadata.num_warps == num_warps
    assert compiled.metadata.shared <= SHARED_LIMIT[cc], \
        f"{compiled.metadata.shared} bytes of shared memory > {SHARED_LIMIT[cc]} on sm_{cc}"


def test_heuristic_picks_only_compiled_configs():
    picks = {tuple(sorted(conv._config(o, c).items())) for o in (1, 3, 32, 33, 64, 128, 1000) for c in (1, 16, 17, 256)}
    assert picks <= {tuple(sorted(c.items())) for c in conv.CONFIGS}
    picks = {tuple(sorted(match._config(c, r, t).items()))
             for c in (1, 16, 17, 32, 33, 256) for r in (None, 0, 4, 5, 64) for t in (False, True)}
    assert picks == {tuple(sorted(c.items())) for c in match.CONFIGS}
    compiled = {tuple(sorted(match._config(c, r, d != "fp32" or p == "tf32").items())) for d, p, c, r in MATCH_CASES}
    assert compiled == picks
    picks = {tuple(sorted(match._transfer_config(c).items())) for c in (1, 3, 4, 5, 16, 17, 64, 256)}
    assert picks == {tuple(sorted(c.items())) for c in match.TRANSFER_CONFIGS}
