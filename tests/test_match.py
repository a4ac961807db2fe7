"""Family `match` (DESIGN §3.3-3.4): apnt.ops.patch_match and patch_transfer, native vs reference.

patch_match has no gradient and may break near-ties differently from reference, so it is judged by §3.3's rule
(`assert_match_agrees`): the score equals the reference maximum within 1e-5, the index points at a candidate
whose reference score is within 1e-5 of that maximum, -1 (with score 0) exactly where reference has no
candidate. Where the maximum is unique (a known displacement) or ties are exact (flat regions: the own position),
the index itself must come back. The native CPU search is a tiled Gram search (8x32 tiles, global or radius);
under grid emulation the radius mode runs the CUDA windowed-search body instead, so radius cases run with the
emulator off and on. patch_transfer's gather and scatter are CUDA bodies too: every transfer case runs both ways.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import pytest
import torch

from apnt.ops import patch_match, patch_transfer
from apnt.ops.match import patch_match_reference, patch_transfer_reference
from apnt.selftest import match_agreement
from apnt_test_helpers import LAYOUTS, compare_to_reference, emulation, make_tensor, requires_native

pytestmark = requires_native
EMULATE = pytest.mark.parametrize("emulate", [False, True], ids=["direct", "emulated"])
DTYPES = pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)


# ---- the comparison rule of DESIGN §3.3 ------------------------------------------------------------------------

def assert_match_agrees(score, index, query, key, *, patch_size=3, key_mask=None, radius=None, tol=1e-5):
    """(score, index) from any backend obeys §3.3's rule against reference scores (float64 on the same values);
    -1 exactly where `patch_match_reference` itself returns -1."""
    n, hq, wq = query.shape[0], query.shape[2], query.shape[3]
    assert score.shape == index.shape == (n, hq, wq), (score.shape, index.shape)
    assert score.dtype == torch.float32 and index.dtype == torch.int64, (score.dtype, index.dtype)
    a = match_agreement(score, index, query, key, patch_size=patch_size, key_mask=key_mask, radius=radius)
    where = ""
    if a.worst is not None:
        b, q = a.worst
        where = (f"; worst at n={b}, query ({q // wq}, {q % wq}): got index {int(index[b].flatten()[q])}, "
                 f"score {float(score[b].flatten()[q]):.8g}")
    assert a.ok(tol), (f"score error {a.score_error:.3e}, index gap {a.index_gap:.3e} (tolerance {tol:g}), "
                       f"{a.missing} positions with a wrong -1 / non-zero score{where}")
    _, ref_index = patch_match_reference(query.detach(), key.detach(), patch_size=patch_size, key_mask=key_mask,
                                         radius=radius)
    assert torch.equal(index == -1, ref_index == -1), "-1 positions differ from reference"


def own_positions(n, h, w):
    return torch.arange(h * w).reshape(1, h, w).expand(n, -1, -1)


@dataclass(frozen=True)
class MatchSample:
    n: int
    c: int
    hq: int
    wq: int
    hk: int
    wk: int
    patch: int = 3
    radius: int | None = None
    mask: float | None = None  # fraction of keys masked out (random), or None

    def __str__(self):
        return (f"n{self.n}c{self.c}_{self.hq}x{self.wq}_to_{self.hk}x{self.wk}_p{self.patch}"
                f"{'' if self.radius is None else f'_r{self.radius}'}{'' if self.mask is None else f'_m{self.mask}'}")

    def make(self, dtype=torch.float64, layout="contiguous"):
        query = make_tensor((self.n, self.c, self.hq, self.wq), dtype, layout)
        key = make_tensor((self.n, self.c, self.hk, self.wk), dtype, layout)
        key_mask = None if self.mask is None else torch.rand(self.n, 1, self.hk, self.wk) >= self.mask
        return query, key, dict(patch_size=self.patch, key_mask=key_mask, radius=self.radius)


# 8x32 tiles: maps smaller than a tile, 17x70 (partial tiles on both axes), Hq != Hk either way, C = 1, patch 1
# and 5, 1x1 maps, N up to 3; radius 0, 1, 5 and one larger than the map; random key masks.
MATCH_SAMPLES = [
    MatchSample(1, 4, 6, 7, 6, 7),
    MatchSample(3, 3, 5, 9, 5, 9),
    MatchSample(2, 3, 17, 70, 17, 70),
    MatchSample(2, 3, 9, 40, 5, 11),             # Hq != Hk, query wider than a tile
    MatchSample(1, 2, 4, 5, 17, 70),             # key larger than a tile, query smaller
    MatchSample(2, 1, 7, 9, 7, 9),               # C = 1
    MatchSample(1, 3, 6, 8, 6, 8, patch=1),
    MatchSample(2, 3, 9, 12, 7, 10, patch=5),
    MatchSample(2, 3, 1, 1, 1, 1),
    MatchSample(1, 3, 1, 1, 4, 6),
    MatchSample(2, 3, 9, 11, 9, 11, mask=0.5),
    MatchSample(2, 3, 17, 70, 17, 70, radius=0),
    MatchSample(2, 3, 17, 70, 17, 70, radius=1),
    MatchSample(2, 3, 17, 70, 17, 70, radius=5),
    MatchSample(3, 2, 6, 9, 6, 9, radius=100),   # larger than the map: a global search
    MatchSample(2, 3, 9, 37, 9, 37, radius=2, mask=0.7),
    MatchSample(1, 3, 7, 8, 7, 8, patch=5, radius=1),
    MatchSample(1, 3, 6, 7, 6, 7, patch=1, radius=1, mask=0.5),
    MatchSample(2, 3, 1, 1, 1, 1, radius=1),
    MatchSample(2, 40, 19, 37, 21, 35),         # float32 NCHW tiles gathered by 16x16 transposes: full and partial
]


def _emulation_cases(samples):
    """Radius samples run with the grid emulator off and on (it changes their path); the others once."""
    return [pytest.param(s, e, id=f"{s}-{'emulated' if e else 'direct'}")
            for s in samples for e in ((False, True) if s.radius is not None else (False,))]


@DTYPES
@pytest.mark.parametrize("s,emulate", _emulation_cases(MATCH_SAMPLES))
def test_patch_match_agrees_with_reference(s, emulate, dtype):
    query, key, kw = s.make(dtype)
    with emulation(emulate):
        score, index = patch_match(query, key, **kw, backend="native")
    assert_match_agrees(score, index, query, key, **kw)


@pytest.mark.parametrize("layout", LAYOUTS[1:])
def test_patch_match_layouts(layout):
    query, key, kw = MatchSample(2, 3, 6, 9, 6, 9, mask=0.3).make(torch.float32, layout)
    for radius in (None, 2):
        for emulate in (False, True):
            with emulation(emulate):
                score, index = patch_match(query, key, **{**kw, "radius": radius}, backend="native")
            assert_match_agrees(score, index, query, key, **{**kw, "radius": radius})


def test_radius_larger_than_the_map_is_the_global_search():
    query, key, _ = MatchSample(2, 3, 9, 13, 9, 13).make(torch.float64)
    want = patch_match(query, key, backend="native")
    for emulate in (False, True):
        with emulation(emulate):
            got = patch_match(query, key, radius=13, backend="native")
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


# ---- exact answers: unique maxima, exact ties ---------------------------------------------------------------

def shifted_pair(n, c, h, w, shifts, noise, dtype):
    """query, key with key[y + dy, x + dx] = query[y, x] (+ noise) for (dy, dx) = shifts[n]."""
    m = max(max(abs(dy), abs(dx)) for dy, dx in shifts)
    base = torch.randn(n, c, h + 2 * m, w + 2 * m, dtype=torch.float64)
    query = base[:, :, m:m + h, m:m + w]
    key = torch.stack([base[i, :, m - dy:m - dy + h, m - dx:m - dx + w] for i, (dy, dx) in enumerate(shifts)])
    key = key + noise * torch.randn_like(key)
    return query.to(dtype).contiguous(), key.to(dtype).contiguous()


@DTYPES
@pytest.mark.parametrize("radius,emulate", [(None, False), (5, False), (5, True)], ids=["global", "r5", "r5-emulated"])
def test_known_displacement_comes_back_exactly(radius, emulate, dtype):
    shifts, (h, w), half = [(2, -3), (-1, 4)], (17, 70), 1
    query, key = shifted_pair(2, 4, h, w, shifts, 1e-3, dtype)
    with emulation(emulate):
        score, index = patch_match(query, key, radius=radius, backend="native")
    assert_match_agrees(score, index, query, key, radius=radius)
    for i, (dy, dx) in enumerate(shifts):
        # interior: both windows (query at p, key at p + d) lie inside their maps, so they hold the same pixels
        ys = range(max(half, half - dy), min(h - half, h - half - dy))
        xs = range(max(half, half - dx), min(w - half, w - half - dx))
        got_dy = index[i] // w - torch.arange(h).reshape(h, 1)
        got_dx = index[i] % w - torch.arange(w).reshape(1, w)
        interior = (slice(ys.start, ys.stop), slice(xs.start, xs.stop))
        assert (got_dy[interior] == dy).all() and (got_dx[interior] == dx).all(), \
            f"batch {i}: displacement ({dy}, {dx}) not recovered in the interior"
        assert (score[i][interior] > 0.99).all()


@DTYPES
@pytest.mark.parametrize("radius,emulate", [(None, False), (2, False), (2, True)], ids=["global", "r2", "r2-emulated"])
def test_constant_maps_pick_their_own_position(radius, emulate, dtype):
    # Every interior patch (and every patch along each edge) is the same: all tie, the own position wins.
    query = torch.full((2, 3, 9, 37), 0.7, dtype=dtype)
    key = torch.full((2, 3, 9, 37), 2.5, dtype=dtype)
    with emulation(emulate):
        score, index = patch_match(query, key, radius=radius, backend="native")
    assert torch.equal(index, own_positions(2, 9, 37))
    torch.testing.assert_close(score, torch.ones(2, 9, 37), rtol=0, atol=1e-5)


def test_constant_maps_of_different_sizes_pick_the_lowest_index():
    # No own position: among the exact ties, the lowest flat index (interior query -> key (1, 1) for k = 3).
    score, index = patch_match(torch.ones(1, 2, 6, 9), torch.ones(1, 2, 7, 40), backend="native")
    assert (index[0, 1:-1, 1:-1] == 40 + 1).all()
    assert_match_agrees(score, index, torch.ones(1, 2, 6, 9), torch.ones(1, 2, 7, 40))


@DTYPES
@pytest.mark.parametrize("radius,emulate", [(None, False), (3, False), (3, True)], ids=["global", "r3", "r3-emulated"])
def test_flat_saturated_region_inside_texture_picks_its_own_position(radius, emulate, dtype):
    # Independent textures, the same saturated (constant 1) block in both: inside the block (one patch radius in)
    # every descriptor is the same, so all of the block's interior ties and the own position must win.
    query, key = torch.rand(2, 3, 17, 70, dtype=dtype), torch.rand(2, 3, 17, 70, dtype=dtype)
    query[:, :, 3:14, 10:50] = 1
    key[:, :, 3:14, 10:50] = 1
    with emulation(emulate):
        score, index = patch_match(query, key, radius=radius, backend="native")
    assert_match_agrees(score, index, query, key, radius=radius)
    inner = (slice(None), slice(4, 13), slice(11, 49))
    assert torch.equal(index[inner], own_positions(2, 17, 70)[inner])
    torch.testing.assert_close(score[inner], torch.ones_like(score[inner]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("radius,emulate", [(None, False), (40, False), (40, True)],
                         ids=["global", "r40", "r40-emulated"])
def test_slowly_rising_near_ties_stay_within_the_rule(radius, emulate):
    # patch 1, C = 2: descriptors are unit vectors; key k at angle arccos(0.9 + k * 0.9e-6) from the query's.
    n = 30
    angle = torch.arccos(0.9 + torch.arange(n, dtype=torch.float64) * 0.9e-6)
    key = torch.stack([angle.cos(), angle.sin()]).reshape(1, 2, 1, n)
    query = torch.tensor([1.0, 0.0], dtype=torch.float64).reshape(1, 2, 1, 1).expand(1, 2, 1, n).contiguous()
    if radius is None:
        query = query[..., :1]  # a 1x1 query map: no own position
    with emulation(emulate):
        score, index = patch_match(query, key, patch_size=1, radius=radius, backend="native")
    assert_match_agrees(score, index, query, key, patch_size=1, radius=radius)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("radius,emulate", [(None, False), (2, False), (2, True)], ids=["global", "r2", "r2-emulated"])
def test_low_precision_inputs_search_in_float32(radius, emulate, dtype):
    query, key, _ = MatchSample(2, 3, 6, 35, 6, 35).make(dtype)
    with emulation(emulate):
        score, index = patch_match(query, key, radius=radius, backend="native")
    assert_match_agrees(score, index, query, key, radius=radius)


# ---- masks, NaN, gradients -----------------------------------------------------------------------------------

@pytest.mark.parametrize("radius,emulate", [(None, False), (1, False), (1, True)], ids=["global", "r1", "r1-emulated"])
def test_all_false_key_mask_gives_minus_one_and_zero(radius, emulate):
    query, key, _ = MatchSample(2, 3, 6, 9, 6, 9).make(torch.float32)
    key_mask = torch.rand(2, 1, 6, 9) > 0.5
    key_mask[1] = False  # batch 1: nothing is a candidate
    with emulation(emulate):
        score, index = patch_match(query, key, key_mask=key_mask, radius=radius, backend="native")
    assert (index[1] == -1).all() and (score[1] == 0).all()
    assert_match_agrees(score, index, query, key, key_mask=key_mask, radius=radius)
    assert key_mask.flatten(1).gather(1, index.flatten(1).clamp_min(0))[index.flatten(1) >= 0].all()


@DTYPES
@pytest.mark.parametrize("radius,emulate", [(None, False), (1, False), (1, True)], ids=["global", "r1", "r1-emulated"])
def test_nan_keys_are_never_chosen(radius, emulate, dtype):
    query, key, _ = MatchSample(2, 3, 9, 37, 9, 37).make(dtype)
    key[0, 1, 4, 10] = float("nan")  # every key whose window holds (4, 10) scores NaN: rows 3-5, columns 9-11
    key[1] = float("nan")            # batch 1: every key is NaN
    with emulation(emulate):
        score, index = patch_match(query, key, radius=radius, backend="native")
    assert not score.isnan().any()
    ky, kx = index[0] // 37, index[0] % 37
    assert not (((ky - 4).abs() <= 1) & ((kx - 10).abs() <= 1)).any(), "a NaN-scored key was chosen"
    assert (index[1] == -1).all() and (score[1] == 0).all()
    if radius == 1:
        assert index[0, 4, 10] == -1, "every key in the window of (4, 10) is NaN: nothing valid"
    assert_match_agrees(score, index, query, key, radius=radius)


@DTYPES
@pytest.mark.parametrize("radius,emulate", [(None, False), (2, False), (2, True)], ids=["global", "r2", "r2-emulated"])
def test_nan_in_query_gives_minus_one(radius, emulate, dtype):
    # Reference: a query whose window holds a NaN scores NaN against every key -> no valid candidate -> -1, 0.
    query, key, _ = MatchSample(1, 3, 9, 37, 9, 37).make(dtype)
    query[0, 2, 5, 20] = float("nan")
    with emulation(emulate):
        score, index = patch_match(query, key, radius=radius, backend="native")
    assert (index[0, 4:7, 19:22] == -1).all() and (score[0, 4:7, 19:22] == 0).all()
    assert (index >= 0).sum() == 9 * 37 - 9
    assert_match_agrees(score, index, query, key, radius=radius)


def test_outputs_carry_no_gradient():
    query, key, _ = MatchSample(1, 3, 5, 6, 5, 6).make(torch.float64)
    query.requires_grad_(True)
    key.requires_grad_(True)
    for radius in (None, 1):
        score, index = patch_match(query, key, radius=radius, backend="native")
        assert not score.requires_grad and not index.requires_grad and score.grad_fn is None


# ---- memory: never the Nq x Nk matrix ------------------------------------------------------------------------

def allocated_bytes(fn):
    """Sum of every CPU allocation made while fn() runs (torch.profiler memory events; frees not subtracted)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return sum(e.self_cpu_memory_usage for e in prof.events() if e.self_cpu_memory_usage > 0)


def test_native_search_does_not_allocate_the_score_matrix():
    query, key = torch.randn(1, 64, 48, 48), torch.randn(1, 64, 48, 48)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the profiler records allocations of the calling thread
    try:
        reference = allocated_bytes(lambda: patch_match(query, key, backend="reference"))
        native = allocated_bytes(lambda: patch_match(query, key, backend="native"))
    finally:
        torch.set_num_threads(before)
    matrix = 4 * (48 * 48) ** 2
    assert reference >= matrix, "the profiler did not see the reference's score matrix"
    assert 0 < native <= 0.1 * reference, f"native allocated {native} bytes, reference {reference}"


# ---- patch_transfer -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TransferSample:
    n: int
    cv: int
    hq: int
    wq: int
    hk: int
    wk: int
    patch: int
    scale: int
    missing: float = 0.25  # fraction of -1 indices

    def __str__(self):
        return f"n{self.n}c{self.cv}_{self.hq}x{self.wq}_from_{self.hk}x{self.wk}_p{self.patch}_s{self.scale}"

    def make_index(self):
        index = torch.randint(0, self.hk * self.wk, (self.n, self.hq, self.wq))
        return torch.where(torch.rand(index.shape) < self.missing, torch.full_like(index, -1), index)

    def make_value(self, dtype=torch.float64, layout="contiguous", requires_grad=True):
        return make_tensor((self.n, self.cv, self.hk * self.scale, self.wk * self.scale), dtype, layout, requires_grad)

    def fn(self, index, backend="native"):
        return lambda value: patch_transfer(value, index, patch_size=self.patch, scale=self.scale, backend=backend)

    def reference(self, index):
        return lambda value: patch_transfer_reference(value, index, patch_size=self.patch, scale=self.scale)


TRANSFER_SAMPLES = [TransferSample(2, 3, 5, 4, 3, 6, patch, scale) for scale in (1, 2, 4) for patch in (1, 3, 5)] + [
    TransferSample(2, 2, 1, 1, 1, 1, 3, 2),
    TransferSample(1, 2, 6, 5, 6, 5, 3, 1, missing=0.0),
    TransferSample(2, 2, 4, 3, 2, 5, 3, 2, missing=1.0),   # every index -1: output and gradient 0
]


@DTYPES
@EMULATE
@pytest.mark.parametrize("s", TRANSFER_SAMPLES, ids=str)
def test_patch_transfer_matches_reference(s, emulate, dtype):
    index = s.make_index()
    with emulation(emulate):
        (out,) = compare_to_reference(s.fn(index), s.reference(index), [s.make_value(dtype)],
                                      mode="f64" if dtype == torch.float64 else "f32", rtol=1e-5, name=str(s))
    assert out.shape == (s.n, s.cv, s.hq * s.scale, s.wq * s.scale)
    if s.missing == 1.0:
        assert (out == 0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_patch_transfer_low_precision_flash_attention_recipe(dtype):
    s = TransferSample(2, 3, 5, 4, 3, 6, 3, 2)
    index = s.make_index()
    compare_to_reference(s.fn(index), s.reference(index), lambda: [s.make_value(dtype)], mode="lowp", draws=3)


@pytest.mark.parametrize("layout", LAYOUTS[1:])
def test_patch_transfer_layouts(layout):
    s = TransferSample(2, 3, 5, 4, 3, 6, 3, 2)
    index = torch.randint(-1, 18, (2, 5, 8))[:, :, ::2]  # a strided index too
    for emulate in (False, True):
        with emulation(emulate):
            compare_to_reference(s.fn(index), s.reference(index), [s.make_value(torch.float64, layout)], mode="f64")


def test_patch_transfer_gradcheck():
    s = TransferSample(1, 2, 3, 4, 3, 2, 3, 2)
    index = s.make_index()
    for emulate in (False, True):
        with emulation(emulate):
            assert torch.autograd.gradcheck(s.fn(index), [s.make_value()], eps=1e-6, atol=1e-8)


@contextlib.contextmanager
def deterministic_algorithms():
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


@EMULATE
def test_patch_transfer_is_deterministic(emulate, threads):
    # Many query positions take the same key (indices drawn from 6 keys): the backward accumulates collisions.
    s = TransferSample(2, 8, 12, 20, 2, 3, 3, 2)
    index = torch.randint(-1, 6, (2, 12, 20))
    value = s.make_value(torch.float32)
    grad_out = torch.randn(2, 8, 24, 40)

    def run():
        out = s.fn(index)(value)
        return out.detach(), torch.autograd.grad(out, value, grad_out)[0]

    with emulation(emulate):
        first, second = run(), run()
        with deterministic_algorithms():
            third = run()
    for a, b in ((first, second), (first, third)):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@EMULATE
def test_out_of_range_index_raises_value_error(emulate):
    s = TransferSample(2, 3, 4, 5, 3, 6, 3, 2)
    value = s.make_value(torch.float32)
    for bad in (18, 1000):
        index = s.make_index()
        index[1, 2, 3] = bad
        with emulation(emulate), pytest.raises(ValueError, match=r"argument 'index'.*\[0, 18\)"):
            patch_transfer(value, index, patch_size=3, scale=2, backend="native")


# ---- opcheck, torch.compile, autocast ---------------------------------------------------------------------------

def test_opcheck_patch_match():
    query, key, _ = MatchSample(2, 3, 5, 9, 5, 9).make(torch.float32)
    torch.library.opcheck(torch.ops.apnt.patch_match.default, (query, key, 3, None, None, "ieee"))
    key_mask = torch.rand(2, 1, 5, 9) > 0.3
    torch.library.opcheck(torch.ops.apnt.patch_match.default, (query, key, 3, key_mask, 2, "ieee"))
    query2 = torch.randn(2, 3, 4, 6, dtype=torch.float64)
    torch.library.opcheck(torch.ops.apnt.patch_match.default, (query2, key.double(), 1, None, None, "tf32"))


@DTYPES
def test_opcheck_patch_transfer(dtype):
    s = TransferSample(2, 3, 4, 5, 3, 6, 3, 2)
    torch.library.opcheck(torch.ops.apnt.patch_transfer_fwd.default, (s.make_value(dtype), s.make_index(), 3, 2))


def test_compile_inductor_transfer_forward_backward():
    # The one inductor compile of this family (DESIGN §7).
    torch._dynamo.reset()
    s = TransferSample(2, 3, 5, 4, 3, 6, 3, 2)
    index = s.make_index()
    fn = torch.compile(s.fn(index), fullgraph=True)
    compare_to_reference(fn, s.reference(index), [s.make_value(torch.float32)], mode="f32", rtol=1e-5)


@pytest.mark.parametrize("radius", [None, 2])
def test_compile_aot_eager_match_then_transfer(radius):
    # The models' use: search on the coarse maps, transfer the fine texture with the found indices.
    torch._dynamo.reset()

    def texture_swap(query, key, value, backend):
        score, index = patch_match(query, key, radius=radius, backend=backend)
        return patch_transfer(value, index, patch_size=3, scale=2, backend=backend), score, index

    query, key, _ = MatchSample(2, 3, 6, 9, 6, 9).make(torch.float32)
    value = torch.randn(2, 4, 12, 18, requires_grad=True)
    fn = torch.compile(texture_swap, fullgraph=True, backend="aot_eager")
    out, score, index = fn(query, key, value, "native")
    assert_match_agrees(score, index, query, key, radius=radius)
    want = patch_transfer_reference(value, index, patch_size=3, scale=2)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(want)
    torch.testing.assert_close(torch.autograd.grad(out, value, g)[0], torch.autograd.grad(want, value, g)[0],
                               rtol=1e-5, atol=1e-6)


def test_autocast_bfloat16():
    # The search computes in float32 under autocast (same indices as without); the transfer returns bfloat16.
    query, key, _ = MatchSample(2, 3, 6, 9, 6, 9).make(torch.float32)
    value = torch.randn(2, 4, 12, 18, requires_grad=True)
    want_score, want_index = patch_match(query, key, backend="native")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        score, index = patch_match(query, key, backend="native")
        out = patch_transfer(value, index, patch_size=3, scale=2, backend="native")
    assert torch.equal(index, want_index)
    torch.testing.assert_close(score.float(), want_score, rtol=1e-2, atol=1e-2)
    assert out.dtype == torch.bfloat16
    want = patch_transfer_reference(value, index, patch_size=3, scale=2)
    torch.testing.assert_close(out.float(), want, rtol=1e-2, atol=1e-2)
    (grad,) = torch.autograd.grad(out, value, torch.ones_like(out))
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all()


# ---- bad inputs -------------------------------------------------------------------------------------------------

def _match_args(**edits):
    args = dict(query=torch.randn(2, 3, 5, 6), key=torch.randn(2, 3, 7, 8), patch_size=3, key_mask=None, radius=None,
                precision="ieee")
    args.update(edits)
    return args


def _transfer_args(**edits):
    args = dict(value=torch.randn(2, 3, 6, 8), index=torch.zeros(2, 4, 5, dtype=torch.int64), patch_size=3, scale=2)
    args.update(edits)
    return args


BAD_MATCH = [
    ("query_rank", _match_args(query=torch.randn(3, 5, 6)), ValueError, ["argument 'query'", "(N, C, Hq, Wq)"]),
    ("key_rank", _match_args(key=torch.randn(2, 3, 7, 8, 1)), ValueError, ["argument 'key'", "(N, C, Hk, Wk)"]),
    ("query_integer", _match_args(query=torch.ones(2, 3, 5, 6, dtype=torch.int64)), TypeError, ["argument 'query'"]),
    ("key_dtype", _match_args(key=torch.randn(2, 3, 7, 8, dtype=torch.float64)), TypeError,
     ["argument 'key'", "float32"]),
    ("channels", _match_args(key=torch.randn(2, 4, 7, 8)), ValueError, ["argument 'key'", "C=3"]),
    ("batch", _match_args(key=torch.randn(1, 3, 7, 8)), ValueError, ["argument 'key'", "N=2"]),
    ("query_empty", _match_args(query=torch.randn(2, 3, 0, 6)), ValueError, ["argument 'query'", "non-empty"]),
    ("patch_even", _match_args(patch_size=4), ValueError, ["argument 'patch_size'", "odd"]),
    ("patch_zero", _match_args(patch_size=0), ValueError, ["argument 'patch_size'"]),
    ("key_mask_dtype", _match_args(key_mask=torch.ones(2, 1, 7, 8)), TypeError, ["argument 'key_mask'", "bool"]),
    ("key_mask_shape", _match_args(key_mask=torch.ones(2, 1, 5, 6, dtype=torch.bool)), ValueError,
     ["argument 'key_mask'", "(N, 1, Hk, Wk)"]),
    ("key_mask_rank", _match_args(key_mask=torch.ones(2, 7, 8, dtype=torch.bool)), ValueError,
     ["argument 'key_mask'"]),
    ("radius_negative", _match_args(key=torch.randn(2, 3, 5, 6), radius=-1), ValueError, ["argument 'radius'", ">= 0"]),
    ("radius_sizes", _match_args(radius=2), ValueError, ["argument 'radius'", "same size"]),
    ("radius_float", _match_args(key=torch.randn(2, 3, 5, 6), radius=1.5), ValueError, ["argument 'radius'"]),
    ("precision", _match_args(precision="fp16"), ValueError, ["argument 'precision'", "ieee", "tf32"]),
]

BAD_TRANSFER = [
    ("value_rank", _transfer_args(value=torch.randn(3, 6, 8)), ValueError, ["argument 'value'"]),
    ("index_dtype", _transfer_args(index=torch.zeros(2, 4, 5, dtype=torch.int32)), TypeError,
     ["argument 'index'", "int64"]),
    ("index_float", _transfer_args(index=torch.zeros(2, 4, 5)), TypeError, ["argument 'index'", "int64"]),
    ("index_rank", _transfer_args(index=torch.zeros(2, 1, 4, 5, dtype=torch.int64)), ValueError,
     ["argument 'index'", "(N=2, Hq, Wq)"]),
    ("index_batch", _transfer_args(index=torch.zeros(3, 4, 5, dtype=torch.int64)), ValueError,
     ["argument 'index'", "N=2"]),
    ("index_empty", _transfer_args(index=torch.zeros(2, 0, 5, dtype=torch.int64)), ValueError, ["argument 'index'"]),
    ("value_not_multiple", _transfer_args(value=torch.randn(2, 3, 6, 7)), ValueError,
     ["argument 'value'", "multiples of the scale", "s=2"]),
    ("scale_zero", _transfer_args(scale=0), ValueError, ["argument 'scale'", ">= 1"]),
    ("patch_even", _transfer_args(patch_size=2), ValueError, ["argument 'patch_size'", "odd"]),
]


def _check_raises(fn, exc, patterns):
    with pytest.raises(exc) as info:
        fn()
    for p in patterns:
        assert p in str(info.value), f"{p!r} not in {str(info.value)!r}"


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("case", BAD_MATCH, ids=[c[0] for c in BAD_MATCH])
def test_patch_match_bad_inputs_raise_naming_the_argument(case, backend):
    _, args, exc, patterns = case
    args = dict(args)
    q, k = args.pop("query"), args.pop("key")
    _check_raises(lambda: patch_match(q, k, **args, backend=backend), exc, patterns)


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("case", BAD_TRANSFER, ids=[c[0] for c in BAD_TRANSFER])
def test_patch_transfer_bad_inputs_raise_naming_the_argument(case, backend):
    _, args, exc, patterns = case
    args = dict(args)
    v, i = args.pop("value"), args.pop("index")
    _check_raises(lambda: patch_transfer(v, i, **args, backend=backend), exc, patterns)


def test_cpp_entry_points_check_too():
    # Direct torch.ops callers bypass the Python checks; the C++ ones still name the argument.
    a = _match_args(key=torch.randn(2, 4, 7, 8))
    _check_raises(lambda: torch.ops.apnt.patch_match(*a.values()), ValueError, ["argument 'key'"])
    a = _match_args(radius=1)
    _check_raises(lambda: torch.ops.apnt.patch_match(*a.values()), ValueError, ["argument 'radius'"])
    a = _match_args(patch_size=2)
    _check_raises(lambda: torch.ops.apnt.patch_match(*a.values()), ValueError, ["argument 'patch_size'"])
    a = _transfer_args(index=torch.zeros(2, 4, 5, dtype=torch.int32))
    _check_raises(lambda: torch.ops.apnt.patch_transfer_fwd(*a.values()), ValueError, ["argument 'index'"])
    a = _transfer_args(value=torch.randn(2, 3, 6, 7))
    _check_raises(lambda: torch.ops.apnt.patch_transfer_fwd(*a.values()), ValueError, ["argument 'scale'"])
