"""The native CPU workspace cache (csrc/common/memory.h): the dense block's buffers are reused across calls.

A reused block holds the previous call's data, so these tests check that nothing of it leaks into a result, that
training (the buffer saved for backward) hands the block back, that cached pages are moved rather than allocated
afresh, and that the cap, the retention after a hold and apnt.ops.empty_cache work. Blocks are whole 2 MiB pages."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import apnt.ops
from apnt.ops import dilated_dense_block
from apnt_test_helpers import requires_native

pytestmark = requires_native

C, G, L = 16, 8, 3


def _params(seed: int):
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(G, C + i * G, 3, 3, generator=g) * 0.2 for i in range(L)]
    biases = [torch.randn(G, generator=g) * 0.1 for _ in range(L)]
    fuse_w = torch.randn(C, C + L * G, 1, 1, generator=g) * 0.1
    fuse_b = torch.randn(C, generator=g) * 0.1
    return weights, biases, fuse_w, fuse_b


def _block(x, params, **kw):
    weights, biases, fuse_w, fuse_b = params
    return dilated_dense_block(x, weights, biases, fuse_w, fuse_b, backend="native", **kw)


MB = 2**20


def _pages(nbytes):
    """The cache's block for a request of nbytes: whole 2 MiB pages."""
    return -(-nbytes // (2 * MB)) * 2 * MB


def _buffer_bytes(x):
    n, _, h, w = x.shape
    return _pages(n * (C + L * G) * h * w * 4)


@pytest.fixture(autouse=True)
def _empty():
    apnt.ops.empty_cache()
    yield
    apnt.ops.empty_cache()


def test_buffer_is_kept_and_reused_without_leaking_data():
    params = _params(0)
    x1 = torch.randn(1, C, 64, 64)
    x2 = torch.rand(1, C, 64, 64) * 50   # very different values: stale ones would show
    with torch.no_grad():
        _block(x1, params)
        assert apnt.ops.workspace_cache_bytes() == _buffer_bytes(x1)
        reused = _block(x2, params)
        assert apnt.ops.workspace_cache_bytes() == _buffer_bytes(x1)   # taken and given back, not a second one
        assert apnt.ops.empty_cache() == _buffer_bytes(x1)
        assert apnt.ops.workspace_cache_bytes() == 0
        fresh = _block(x2, params)
    assert torch.equal(reused, fresh)


def test_smaller_requests_take_part_of_a_larger_block():
    params = _params(1)
    with torch.no_grad():
        _block(torch.randn(1, C, 256, 256), params)      # a 10.5 MB buffer: 12 MiB of pages
        big = _buffer_bytes(torch.empty(1, C, 256, 256))
        _block(torch.randn(1, C, 200, 200), params)      # the head of that block; the rest stays cached
        assert apnt.ops.workspace_cache_bytes() == big
        x = torch.randn(1, C, 16, 16)
        out = _block(x, params)                           # far smaller: still drawn from the same pages
        assert apnt.ops.workspace_cache_bytes() == big
    ref = dilated_dense_block(x, *params[:2], *params[2:], backend="reference")
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("checkpoint", [False, True])
def test_training_hands_the_saved_buffer_back(checkpoint):
    params = [[t.clone().requires_grad_() for t in p] if isinstance(p, list) else p.clone().requires_grad_()
              for p in _params(2)]
    x = torch.randn(2, C, 24, 20, requires_grad=True)
    B = _buffer_bytes(x)
    grads = []
    for step in range(2):   # the second step runs on recycled forward and gradient buffers
        out = _block(x, params, checkpoint=checkpoint)
        # Cached now: what the previous backward gave back (2 blocks), minus the buffer saved for backward
        # (checkpoint=True saves none: its buffer is back already).
        held = (2 * B if step else 0) + (B if checkpoint and not step else 0) - (0 if checkpoint else B * step)
        assert apnt.ops.workspace_cache_bytes() == held
        grads.append(torch.autograd.grad(out.square().sum(), [x, params[0][0], params[2]]))
        del out
        assert apnt.ops.workspace_cache_bytes() == 2 * B   # the buffer and the gradient buffer are back
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def _cache_after_call(env_value: str) -> int:
    code = ("import torch, apnt.ops\n"
            "x = torch.randn(1, 16, 128, 128)\n"
            "w = [torch.randn(8, 16 + 8 * i, 3, 3) for i in range(3)]\n"
            "with torch.no_grad():\n"
            "    apnt.ops.dilated_dense_block(x, w, [torch.zeros(8)] * 3, torch.randn(16, 40, 1, 1), torch.zeros(16),"
            " backend='native')\n"
            "print(apnt.ops.workspace_cache_bytes())\n")
    env = dict(os.environ, APNT_WORKSPACE_CACHE_MB=env_value)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


def test_cap_from_environment():
    assert _cache_after_call("0") == 0                         # off
    assert _cache_after_call("1") == 0                         # 2.5 MB buffer > 1 MiB cap: freed as usual
    assert _cache_after_call("64") == _buffer_bytes(torch.empty(1, C, 128, 128))


def test_hold_keeps_blocks_over_the_cap_and_trims_on_exit():
    # A subprocess with a 1 MiB cap: held, the 2.6 MB buffer is kept and reused by the next block; afterwards freed.
    code = ("import torch, apnt.ops\n"
            "x = torch.randn(1, 16, 128, 128)\n"
            "w = [torch.randn(8, 16 + 8 * i, 3, 3) for i in range(3)]\n"
            "def block(x):\n"
            "    return apnt.ops.dilated_dense_block(x, w, [torch.zeros(8)] * 3, torch.randn(16, 40, 1, 1),"
            " torch.zeros(16), backend='native')\n"
            "with torch.no_grad():\n"
            "    with apnt.ops.hold_workspaces():\n"
            "        y = block(x)\n"
            "        with apnt.ops.hold_workspaces():\n"
            "            y = block(y)\n"
            "        print(apnt.ops.workspace_cache_bytes())\n"
            "    print(apnt.ops.workspace_cache_bytes())\n")
    env = dict(os.environ, APNT_WORKSPACE_CACHE_MB="1")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    held, after = map(int, done.stdout.split()[-2:])
    assert held == _buffer_bytes(torch.empty(1, C, 128, 128))   # one block, reused by the second call
    assert after == 0


# ---- while held, large ATen allocations come from the cache too (c10's CPU allocator is wrapped) ---------------


def test_held_aten_allocations_reuse_freed_blocks():
    with apnt.ops.hold_workspaces():
        a = torch.ones(16 * MB // 4)
        where = a.data_ptr()
        del a                                              # back to the cache, pages still in
        assert apnt.ops.workspace_cache_bytes() == 16 * MB
        b = torch.zeros(15 * MB // 4)                      # 15 MB: the first 16 MiB of pages of that block
        assert b.data_ptr() == where and apnt.ops.workspace_cache_bytes() == 0
        assert torch.count_nonzero(b) == 0                 # zeros are zeros on a recycled block
        c = torch.empty(5 * MB // 4)                       # nothing cached: fresh pages, whole 2 MiB ones
        assert c.data_ptr() % (2 * MB) == 0
        small = torch.ones(1024)                           # under 4 MB: the allocator it replaced
        del b, c, small
        assert apnt.ops.workspace_cache_bytes() == 22 * MB


def test_held_tensor_outlives_the_hold_and_resizes():
    with apnt.ops.hold_workspaces():
        t = torch.arange(2 * MB, dtype=torch.float32)      # 8 MB
    t.resize_(4 * MB)                                      # its storage grows like any other
    assert torch.equal(t[:2 * MB], torch.arange(2 * MB, dtype=torch.float32))
    del t
    assert apnt.ops.workspace_cache_bytes() == 8 * MB      # the held block came back once the tensor died


_MOVES = """
import torch, apnt.ops
MB = 2**20
# Bool maps of 2 MB at most check the values: a 4 MB temporary would come from the cache too.
with apnt.ops.hold_workspaces():
    a = torch.full((8 * MB // 4,), 1.0)
    b = torch.full((4 * MB // 4,), 2.0)
    del a, b
    assert apnt.ops.workspace_cache_bytes() == 12 * MB
    c = torch.empty(20 * MB // 4)                      # 8 MiB of a's pages, then 4 of b's, then 8 fresh ones
    assert apnt.ops.workspace_cache_bytes() == 0
    assert c[:8 * MB // 4].eq(1.0).all() and c[8 * MB // 4:12 * MB // 4].eq(2.0).all()
    assert c[12 * MB // 4:].eq(0.0).all()              # fresh pages: the kernel's zeros
    c.fill_(3.0)
    del c
    d = torch.empty(6 * MB // 4)                       # the head of c's block; 14 MiB stay cached
    assert apnt.ops.workspace_cache_bytes() == 14 * MB and d.eq(3.0).all()
    d.fill_(4.0)
    del d
    e = torch.empty(24 * MB // 4)                      # c's pages again (three mappings), larger block first
    assert apnt.ops.workspace_cache_bytes() == 0
    assert e[:14 * MB // 4].eq(3.0).all() and e[14 * MB // 4:20 * MB // 4].eq(4.0).all()
    assert e[20 * MB // 4:].eq(0.0).all()
print("moved")
"""


@pytest.mark.parametrize("pagewise", ["0", "1"])
def test_a_larger_request_moves_the_cached_pages_instead_of_allocating(pagewise):
    # Cached blocks too small for a request are not freed: their pages move (mremap) into the new block side by side,
    # data and all, and only the rest is fresh; cached plus live bytes thus stay within what the calls have live.
    # A block built so spans several mappings; kernels before 6.17 move one per call, which APNT_WORKSPACE_MOVE_PAGEWISE
    # emulates (a fresh process: the switch is read once).
    env = dict(os.environ, APNT_WORKSPACE_MOVE_PAGEWISE=pagewise)
    done = subprocess.run([sys.executable, "-c", _MOVES], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.split()[-1] == "moved", done.stderr


def test_cache_keeps_what_the_last_hold_used_until_empty_cache():
    # Without APNT_WORKSPACE_CACHE_MB the blocks cached when a hold (a model call) ends stay for the next call, however
    # large. A block that outlived the hold is freed when it comes back, unless it fits within 256 MiB: the maps a
    # training forward saves for backward do not pile up on top of the cache.
    with apnt.ops.hold_workspaces():
        output = torch.ones(300 * MB // 4)
        saved = torch.ones(20 * MB // 4)
        tmp = torch.ones(400 * MB // 4)                    # more than the 256 MiB that ops keep on their own
        del tmp
    assert apnt.ops.workspace_cache_bytes() == 400 * MB
    del output
    assert apnt.ops.workspace_cache_bytes() == 400 * MB   # 700 MB would pass what the hold left cached: freed
    apnt.ops.empty_cache()
    with apnt.ops.hold_workspaces():
        tmp = torch.ones(100 * MB // 4)
        del tmp
    del saved
    assert apnt.ops.workspace_cache_bytes() == 120 * MB   # within 256 MiB: kept
    assert apnt.ops.empty_cache() == 120 * MB
    assert apnt.ops.workspace_cache_bytes() == 0


def test_model_result_does_not_depend_on_the_cache():
    from apnt.models import AHDRNet
    torch.manual_seed(0)
    net = AHDRNet(features=16, growth=8, dense_layers=2, backend="native").eval()
    ldr, exposure = torch.rand(1, 3, 3, 256, 320), torch.tensor([[1.0, 4.0, 16.0]])  # 16-channel maps: 5 MB
    with torch.no_grad():
        first = net(ldr, exposure)           # fresh blocks
        with apnt.ops.hold_workspaces():
            torch.full((64 * MB // 4,), float("nan"))  # dirty blocks the next call may draw
        second = net(ldr, exposure)
    assert torch.equal(first, second)
