"""patch_match / patch_transfer (backend="triton", kernels/match.py) against their references. Interpreter only.

patch_match by DESIGN §3.3's rule (apnt.selftest.match_agreement, as tests/test_match.py): the kernel's score
equals the reference maximum within 1e-5 and its index points at a valid key whose reference score is within
1e-5 of that maximum (-1 and 0 where nothing is valid); exact answers where they are unique (a known
displacement, flat maps: the own position). patch_transfer: forward and gradient in
float32 (Triton has no float64) for scales 1/2/4 with -1 indices, and a bitwise deterministic backward.
"""
import contextlib

import pytest
import torch

from apnt.ops import BackendUnavailableError, patch_match, patch_transfer
from apnt.ops.match import patch_transfer_reference
from apnt.selftest import match_agreement
from apnt_test_helpers import compare_to_reference, make_tensor

TOL = 1e-5


def _match(query, key, patch_size=3, key_mask=None, radius=None, **kwargs):
    """The Triton search, checked against the reference by DESIGN §3.3's rule; returns (score, index)."""
    score, index = patch_match(query, key, patch_size=patch_size, key_mask=key_mask, radius=radius,
                               backend="triton", **kwargs)
    n, _, hq, wq = query.shape
    assert score.shape == index.shape == (n, hq, wq) and score.dtype == torch.float32 and index.dtype == torch.int64
    agreement = match_agreement(score, index, query, key, patch_size=patch_size, key_mask=key_mask, radius=radius)
    assert agreement.ok(TOL), agreement
    return score, index


def _features(n, c, h, w, dtype=torch.float32, layout="contiguous"):
    return make_tensor((n, c, h, w), dtype, layout)


# (N, C, Hq, Wq, Hk, Wk, patch_size, radius): C=1, patch 1/3/5, Hq != Hk, radius 0/1/big, tiles crossed
# (query tiles 8 x 8, key tiles 8 x 16 global / 8 x 8 for radius <= 4).
CASES = [
    pytest.param(2, 3, 5, 6, 5, 6, 3, None, id="N2-same-size"),
    pytest.param(1, 1, 4, 7, 6, 5, 3, None, id="C1-Hq!=Hk"),
    pytest.param(1, 2, 6, 5, 7, 3, 1, None, id="patch1"),
    pytest.param(1, 3, 6, 7, 6, 7, 5, None, id="patch5"),
    pytest.param(1, 17, 9, 17, 10, 18, 3, None, id="tiles-C17"),
    pytest.param(1, 3, 11, 10, 11, 10, 3, 1, id="radius1-tiles"),
    pytest.param(2, 2, 5, 6, 5, 6, 3, 0, id="radius0"),
    pytest.param(1, 2, 6, 6, 6, 6, 3, 9, id="radius-covers-map"),
]


@pytest.mark.parametrize("n, c, hq, wq, hk, wk, patch_size, radius", CASES)
def test_patch_match_against_reference(n, c, hq, wq, hk, wk, patch_size, radius):
    _match(_features(n, c, hq, wq), _features(n, c, hk, wk), patch_size, radius=radius)


@pytest.mark.parametrize("layout", ["channels_last", "sliced", "sliced_cl"])
def test_patch_match_layouts(layout):
    _match(_features(1, 3, 5, 6, layout=layout), _features(1, 3, 6, 4, layout=layout))


def test_patch_match_tf32_and_float16():
    """TF32 is exact under the interpreter; float16 features are multiplied exactly and summed in float32."""
    _match(_features(1, 3, 5, 6), _features(1, 3, 5, 6), precision="tf32")
    q, k = _features(1, 4, 5, 6, torch.float16), _features(1, 4, 6, 5, torch.float16)
    _match(q, k)


@pytest.mark.parametrize("shift, radius", [((2, -3), None), ((1, 1), 2)])
def test_displacement_recovery(shift, radius):
    """key = query moved by `shift` + small noise: every query whose patch and moved patch lie inside the maps
    finds exactly the moved position."""
    h, w, half = 10, 13, 1
    query = _features(1, 4, h, w)
    key = torch.roll(query, shift, dims=(2, 3)) + 0.01 * torch.randn_like(query)
    _, index = _match(query, key, radius=radius)
    dy, dx = shift
    for y in range(half, h - half):
        for x in range(half, w - half):
            if half <= y + dy < h - half and half <= x + dx < w - half:
                assert index[0, y, x] == (y + dy) * w + x + dx, (y, x)


@pytest.mark.parametrize("fill, radius", [(0.7, None), (0.0, None), (0.7, 1)])
def test_flat_maps_pick_their_own_position(fill, radius):
    """Every score ties (zero maps: all 0; constant maps: 1 wherever the zero padding is alike): own position."""
    q = torch.full((2, 3, 6, 9), fill)
    _, index = _match(q, q.clone(), radius=radius)
    assert torch.equal(index, torch.arange(54).reshape(1, 6, 9).expand(2, -1, -1))


@pytest.mark.parametrize("radius", [None, 3])
def test_flat_region_inside_texture_picks_its_own_position(radius):
    """A saturated block in two independent textures: its interior ties across several query and key tiles."""
    query, key = torch.rand(1, 3, 10, 20), torch.rand(1, 3, 10, 20)
    query[:, :, 2:9, 3:17] = key[:, :, 2:9, 3:17] = 1
    score, index = _match(query, key, radius=radius)
    inner = (slice(None), slice(3, 8), slice(4, 16))
    assert torch.equal(index[inner], torch.arange(200).reshape(1, 10, 20)[inner])
    torch.testing.assert_close(score[inner], torch.ones_like(score[inner]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("radius", [None, 40])
def test_slowly_rising_near_ties_stay_within_the_rule(radius):
    """Patch 1, C = 2: key k scores 0.9 + k * 0.9e-6 (a chain of near-ties over two key tiles)."""
    n = 30
    angle = torch.arccos(0.9 + torch.arange(n, dtype=torch.float64) * 0.9e-6)
    key = torch.stack([angle.cos(), angle.sin()]).reshape(1, 2, 1, n).float()
    query = torch.tensor([1.0, 0.0]).reshape(1, 2, 1, 1).expand(1, 2, 1, n if radius else 1).contiguous()
    _match(query, key, patch_size=1, radius=radius)


def test_ties_without_own_position_take_the_lowest_index():
    """Maps of different sizes: no own position, the lowest tied flat index wins (a zero map ties everywhere)."""
    score, index = _match(torch.zeros(1, 2, 4, 5), torch.zeros(1, 2, 5, 5))
    assert torch.equal(index, torch.zeros_like(index)) and torch.equal(score, torch.zeros_like(score))


def test_ties_across_key_tiles():
    """Two exact copies of query (0, 0)'s descriptor (patch 1) at key (7, 0) = flat 140 in key tile (0, 0) and
    (0, 17) = flat 17 in key tile (0, 1), visited later: the lowest flat index wins whatever the visiting order."""
    query, key = _features(1, 4, 3, 5), _features(1, 4, 10, 20)
    key[0, :, 7, 0] = key[0, :, 0, 17] = query[0, :, 0, 0]
    score, index = _match(query, key, patch_size=1)
    assert index[0, 0, 0] == 17 and abs(score[0, 0, 0].item() - 1) < 1e-6


def test_key_mask():
    q, k = _features(2, 3, 6, 7), _features(2, 3, 6, 7)
    mask = torch.rand(2, 1, 6, 7) < 0.3
    _, index = _match(q, k, key_mask=mask)
    assert mask.flatten(1).gather(1, index.flatten(1)).all()
    _match(q, k, key_mask=mask, radius=1)  # windows holding no unmasked key give -1


def test_key_mask_all_false():
    q, k = _features(1, 2, 5, 6), _features(1, 2, 5, 6)
    score, index = _match(q, k, key_mask=torch.zeros(1, 1, 5, 6, dtype=torch.bool))
    assert (index == -1).all() and (score == 0).all()


def test_nan_is_never_chosen():
    """NaN key features poison the descriptors around them (never chosen); a NaN query finds nothing."""
    q, k = _features(1, 3, 6, 7), _features(1, 3, 6, 7)
    k[0, 1, 2, 3] = float("nan")
    q[0, 0, 5, 6] = float("nan")
    score, index = _match(q, k)
    poisoned = {y * 7 + x for y in range(1, 4) for x in range(2, 5)}
    assert not poisoned & set(index.flatten().tolist())
    assert index[0, 5, 6] == -1 and index[0, 4, 5] == -1 and score[0, 5, 6] == 0


def test_float64_is_refused():
    with pytest.raises(BackendUnavailableError, match="triton: .*float64"):
        patch_match(*(_features(1, 2, 3, 3, torch.float64) for _ in range(2)), backend="triton")


# ---- patch_transfer -----------------------------------------------------------------------------------------

def _index(n, hq, wq, hk, wk, missing=0.2):
    index = torch.randint(0, hk * wk, (n, hq, wq))
    return torch.where(torch.rand(n, hq, wq) < missing, torch.full_like(index, -1), index)


def _transfer(index, patch_size, scale):
    return (lambda v: patch_transfer(v, index, patch_size=patch_size, scale=scale, backend="triton"),
            lambda v: patch_transfer_reference(v, index, patch_size=patch_size, scale=scale))


@contextlib.contextmanager
def deterministic_algorithms(on):
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(on)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


# (N, Cv, Hq, Wq, Hk, Wk, patch_size, scale): SRNTT's 3/6/12 at stride 1/2/4, patch 1 and 5, Cv 1/3/17
# (BLOCK_C 4/16/64), Hq != Hk, maps crossing pixel blocks.
TRANSFER_CASES = [
    pytest.param(2, 3, 4, 5, 5, 3, 3, 1, id="s1-RGB"),
    pytest.param(1, 5, 3, 4, 4, 4, 3, 2, id="s2"),
    pytest.param(1, 2, 3, 3, 2, 3, 3, 4, id="s4"),
    pytest.param(1, 1, 4, 3, 3, 5, 1, 2, id="patch1-C1"),
    pytest.param(1, 17, 5, 4, 4, 6, 5, 1, id="patch5-C17"),
    pytest.param(2, 2, 9, 11, 7, 8, 3, 2, id="pixel-blocks"),
]


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("n, cv, hq, wq, hk, wk, patch_size, scale", TRANSFER_CASES)
def test_patch_transfer_against_reference(n, cv, hq, wq, hk, wk, patch_size, scale, deterministic):
    index = _index(n, hq, wq, hk, wk)
    value = make_tensor((n, cv, hk * scale, wk * scale), torch.float32, "sliced", requires_grad=True)
    with deterministic_algorithms(deterministic):
        out = compare_to_reference(*_transfer(index, patch_size, scale), [value], mode="f32", name="patch_transfer")
    assert out[0].is_contiguous(memory_format=torch.channels_last)


def test_patch_transfer_backward_is_deterministic():
    """Many queries on few keys (every contribution lands on the same value pixels): two runs bitwise equal."""
    index = torch.randint(0, 2, (1, 7, 6))
    index[0, 0, :2] = -1
    value = make_tensor((1, 5, 6, 8), torch.float32, requires_grad=True)
    grad = torch.randn(1, 5, 14, 12)
    fn, ref = _transfer(index, 3, 2)
    with deterministic_algorithms(True):
        first, second = (torch.autograd.grad(fn(value), value, grad)[0] for _ in range(2))
    assert torch.equal(first, second)
    torch.testing.assert_close(first, torch.autograd.grad(ref(value), value, grad)[0], rtol=1e-5, atol=1e-5)


def test_patch_transfer_float16():
    index = _index(1, 4, 5, 4, 5)
    value = make_tensor((1, 3, 8, 10), torch.float16, requires_grad=True)
    compare_to_reference(*_transfer(index, 3, 2), lambda: [value], mode="lowp", name="patch_transfer")


def test_patch_transfer_index_range():
    """Negative indices are "no match" (like -1); indices past the key map raise (checked in the kernel)."""
    value, index = torch.randn(1, 2, 4, 4), torch.tensor([[[-5, 3], [-1, 15]]])
    torch.testing.assert_close(patch_transfer(value, index, backend="triton"),
                               patch_transfer(value, index.clamp_min(-1), backend="reference"))
    with pytest.raises(ValueError, match=r"argument 'index'.*\[0, 16\)"):
        patch_transfer(value, torch.full((1, 2, 2), 16), backend="triton")


# ---- registration ---------------------------------------------------------------------------------------------

def test_opcheck():
    q, k = _features(1, 2, 4, 5), _features(1, 2, 4, 5)
    mask = torch.rand(1, 1, 4, 5) < 0.5
    torch.library.opcheck(torch.ops.apnt_triton.patch_match.default, (q, k, 3, mask, 1, "ieee"))
    torch.library.opcheck(torch.ops.apnt_triton.patch_match.default, (q, k, 1, None, None, "tf32"))
    index = _index(1, 3, 4, 2, 3)
    value = make_tensor((1, 2, 4, 6), torch.float32, requires_grad=True)
    torch.library.opcheck(torch.ops.apnt_triton.patch_transfer_fwd.default, (value, index, 3, 2))
    grad = torch.randn(1, 2, 6, 8)
    torch.library.opcheck(torch.ops.apnt_triton.patch_transfer_bwd.default, (grad, index, 3, 2, [1, 2, 4, 6]))


def test_autocast_bfloat16():
    index = _index(1, 3, 4, 3, 4)
    value = torch.randn(1, 2, 6, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = patch_transfer(value, index, scale=2, backend="triton")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), patch_transfer_reference(value, index, scale=2), rtol=1e-2, atol=1e-2)


def test_compile_aot_eager_search_and_transfer():
    """The NFT step of APNT-Fusion: search on coarse features, transfer a finer value, differentiate."""
    torch._dynamo.reset()

    def nft(query, key, value):
        _, index = patch_match(query, key, backend="triton")
        return patch_transfer(value, index, scale=2, backend="triton")

    query, key = _features(1, 3, 4, 5), _features(1, 3, 4, 5)
    value = make_tensor((1, 2, 8, 10), torch.float32, requires_grad=True)
    out = torch.compile(nft, fullgraph=True, backend="aot_eager")(query, key, value)
    ref = nft(query, key, value)
    torch.testing.assert_close(out, ref)
    grad = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(out, value, grad)[0], torch.autograd.grad(ref, value, grad)[0])
