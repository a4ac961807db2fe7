"""Triton kernels of family `match` (DESIGN §3.3-3.4): patch correspondence search and texture transfer.

patch_match, flash style. The score of query position p and key position r is the dot product of their k x k
patch descriptors divided by both descriptor norms. A program owns a QUERY_H x QUERY_W tile of query positions
and walks KEY_H x KEY_W tiles of key positions (all of them, or those meeting the radius window). Per key tile
the dot products are an implicit GEMM computed on the fly from the channels_last feature maps: per tap (dy, dx)
and per BLOCK_C channels, `tl.dot` of the query features at p + (dy, dx) with the key features at r + (dy, dx)
(zero outside either map, as F.unfold pads each map). The tile's scores are reduced at once into a running
best per query under DESIGN §3.3's tie rule, so the Nq x Nk matrix never exists and the search needs
O(Nq + Nk) memory. Descriptor norms are a k x k box sum of squared features (host, O(N)).

Running choice, tile by tile (keys may arrive in any order; the rule of Best in csrc/match/match.h): the
candidates are the valid keys (in range, key_mask, radius) with a non-NaN score. Per query the kernel keeps
the running maximum and a chosen key with its score. With max' the maximum including this tile, the tile's
pick is its lowest flat index scoring >= max' - 1e-6; it replaces the chosen key when that key has fallen
below max' - 1e-6 or when its index is lower. So the chosen key always scores within 1e-6 of the maximum,
and among those it is the lowest index seen while they were within reach. Maps of the same size: the own
position's score is kept on the side (-inf when it is not a candidate) and wins at the end when it is
>= max - 1e-6. No candidate at all: index -1, score 0. The score returned is the chosen key's.

patch_transfer (geometry of TransferGeometry in csrc/match/match.h). Output pixel (Y, X) of the (Hq*s, Wq*s)
map is covered by the k x k columns q = ((Y + pad) // s - u, (X + pad) // s - v), u, v < k, that lie in the
(Hq, Wq) map; a column with a valid index r (negative: no match) reads value at (ry*s + Y - qy*s, rx*s + X - qx*s) (zero outside,
yet counted). Forward: a gather per output pixel, the mean over the valid columns (deterministic). Backward:
  - deterministic (torch.are_deterministic_algorithms_enabled()): a gather per value pixel. The queries are
    sorted by their key index on the host (a stable sort: an inverted index in CSR form); a value pixel visits
    the k x k keys whose patch covers it and, for each, the queries that chose that key, in a fixed order.
  - otherwise: the forward's loop with tl.atomic_add into a float32 buffer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .conv import launch_device

TIE_TOLERANCE = tl.constexpr(1e-6)  # DESIGN §3.3 (kernels read only constexpr globals)
NORM_EPS = 1e-12


# ---- patch_match ---------------------------------------------------------------------------------------------

@triton.jit
def _tile_positions(tile, tiles_x, H, W, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    """(y, x, in-map mask) of the TILE_H x TILE_W positions of tile number `tile` of an (H, W) map."""
    i = tl.arange(0, TILE_H * TILE_W)
    y = (tile // tiles_x) * TILE_H + i // TILE_W
    x = (tile % tiles_x) * TILE_W + i % TILE_W
    return y, x, (y < H) & (x < W)


@triton.jit
def _shifted_features(f_ptr, y, x, ok, H, W, C, c, CHANNELS_FIRST: tl.constexpr):
    """Features of channels c at positions (y, x) of a channels_last (H, W, C) map (f_ptr: one sample), zero
    outside the map: (positions, channels), or (channels, positions) when CHANNELS_FIRST (the GEMM's B operand).
    int32 offsets within a sample (fewer registers than int64 address tiles; H*W*C < 2**31 is checked)."""
    pixel = (y * W + x) * C
    ok = ok & (y >= 0) & (y < H) & (x >= 0) & (x < W)
    if CHANNELS_FIRST:
        tile = tl.load(f_ptr + pixel[None, :] + c[:, None], mask=ok[None, :] & (c < C)[:, None], other=0.0)
    else:
        tile = tl.load(f_ptr + pixel[:, None] + c[None, :], mask=ok[:, None] & (c < C)[None, :], other=0.0)
    return tile


@triton.jit
def _patch_dot(a_ptr, ay, ax, a_ok, Ha, Wa, b_ptr, by, bx, b_ok, Hb, Wb, C, KS, acc,
               INPUT_PRECISION: tl.constexpr, BLOCK_C: tl.constexpr):
    """acc + the (A positions, B positions) dot products of the k x k patch descriptors (not normalised)."""
    c_range = tl.arange(0, BLOCK_C)
    for tap in range(0, KS * KS):
        dy = tap // KS - KS // 2
        dx = tap % KS - KS // 2
        for c0 in range(0, C, BLOCK_C):
            a = _shifted_features(a_ptr, ay + dy, ax + dx, a_ok, Ha, Wa, C, c0 + c_range, False)
            b = _shifted_features(b_ptr, by + dy, bx + dx, b_ok, Hb, Wb, C, c0 + c_range, True)
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
    return acc


@triton.jit
def patch_match_kernel(query_ptr, key_ptr, query_norm_ptr, key_norm_ptr, key_mask_ptr, score_ptr, index_ptr,
                       C, Hq, Wq, Hk, Wk, KS, RADIUS,
                       HAS_MASK: tl.constexpr, HAS_RADIUS: tl.constexpr, SAME_SIZE: tl.constexpr,
                       INPUT_PRECISION: tl.constexpr, QUERY_H: tl.constexpr, QUERY_W: tl.constexpr,
                       KEY_H: tl.constexpr, KEY_W: tl.constexpr, BLOCK_C: tl.constexpr):
    """Grid (query tiles, N). query (N, Hq, Wq, C), key (N, Hk, Wk, C) channels_last of one dtype; norms
    (N, H*W) float32; key_mask (N, Hk*Wk) uint8 (HAS_MASK); score (N, Hq*Wq) float32, index (N, Hq*Wq) int64."""
    n = tl.program_id(1).to(tl.int64)
    query_ptr += n * Hq * Wq * C
    key_ptr += n * Hk * Wk * C
    query_norm_ptr += n * Hq * Wq
    key_norm_ptr += n * Hk * Wk
    key_mask_ptr += n * Hk * Wk
    q_tiles_x = tl.cdiv(Wq, QUERY_W)
    qy, qx, q_ok = _tile_positions(tl.program_id(0), q_tiles_x, Hq, Wq, QUERY_H, QUERY_W)
    q_flat = qy * Wq + qx
    q_norm = tl.load(query_norm_ptr + q_flat, mask=q_ok, other=1.0)
    no_index = Hk * Wk  # above every key: "nothing chosen yet"

    # Key tiles to visit: the whole map, or the tiles meeting the radius window of this query tile.
    k_tiles_x = tl.cdiv(Wk, KEY_W)
    ty0, ty1, tx0, tx1 = 0, tl.cdiv(Hk, KEY_H), 0, k_tiles_x
    if HAS_RADIUS:
        y0, x0 = (tl.program_id(0) // q_tiles_x) * QUERY_H, (tl.program_id(0) % q_tiles_x) * QUERY_W
        ty0 = tl.maximum(y0 - RADIUS, 0) // KEY_H
        ty1 = tl.minimum(y0 + QUERY_H - 1 + RADIUS, Hk - 1) // KEY_H + 1
        tx0 = tl.maximum(x0 - RADIUS, 0) // KEY_W
        tx1 = tl.minimum(x0 + QUERY_W - 1 + RADIUS, Wk - 1) // KEY_W + 1

    best = tl.full((QUERY_H * QUERY_W,), float("-inf"), tl.float32)  # running maximum
    chosen = tl.full((QUERY_H * QUERY_W,), float("-inf"), tl.float32)  # the chosen key's score
    chosen_index = tl.full((QUERY_H * QUERY_W,), no_index, tl.int32)
    own_score = tl.full((QUERY_H * QUERY_W,), float("-inf"), tl.float32)  # -inf: not a candidate (yet)
    for t in range(0, (ty1 - ty0) * (tx1 - tx0)):
        k_tile = (ty0 + t // (tx1 - tx0)) * k_tiles_x + tx0 + t % (tx1 - tx0)
        ky, kx, k_ok = _tile_positions(k_tile, k_tiles_x, Hk, Wk, KEY_H, KEY_W)
        k_flat = ky * Wk + kx
        acc = tl.zeros((QUERY_H * QUERY_W, KEY_H * KEY_W), tl.float32)
        acc = _patch_dot(query_ptr, qy, qx, q_ok, Hq, Wq, key_ptr, ky, kx, k_ok, Hk, Wk, C, KS, acc,
                         INPUT_PRECISION, BLOCK_C)
        k_norm = tl.load(key_norm_ptr + k_flat, mask=k_ok, other=1.0)
        s = acc / (q_norm[:, None] * k_norm[None, :])

        valid = q_ok[:, None] & k_ok[None, :] & (s == s)  # NaN is never chosen
        if HAS_MASK:
            valid &= (tl.load(key_mask_ptr + k_flat, mask=k_ok, other=0) != 0)[None, :]
        if HAS_RADIUS:
            valid &= (tl.abs(qy[:, None] - ky[None, :]) <= RADIUS) & (tl.abs(qx[:, None] - kx[None, :]) <= RADIUS)
        s = tl.where(valid, s, float("-inf"))
        best = tl.maximum(best, tl.max(s, axis=1))
        tied = valid & (s >= (best - TIE_TOLERANCE)[:, None])
        tile_index = tl.min(tl.where(tied, k_flat[None, :], no_index), axis=1)
        tile_score = tl.max(tl.where(k_flat[None, :] == tile_index[:, None], s, float("-inf")), axis=1)
        take = (tile_index < no_index) & ((chosen < best - TIE_TOLERANCE) | (tile_index < chosen_index))
        chosen = tl.where(take, tile_score, chosen)
        chosen_index = tl.where(take, tile_index, chosen_index)
        if SAME_SIZE:
            # The own position's score as this tile computed it (under TF32, flat patches tie bit for bit).
            # Only the tiles overlapping the query tile hold own positions: a scalar branch skips the others.
            if (tl.min(k_flat) <= tl.max(tl.where(q_ok, q_flat, -1))) & (tl.max(k_flat) >= tl.min(q_flat)):
                own = k_flat[None, :] == q_flat[:, None]
                own_score = tl.maximum(own_score, tl.max(tl.where(own, s, float("-inf")), axis=1))

    found = chosen_index < no_index
    score = tl.where(found, chosen, 0.0)
    index = tl.where(found, chosen_index, -1)
    if SAME_SIZE:
        own_wins = (own_score > float("-inf")) & (own_score >= best - TIE_TOLERANCE)
        score = tl.where(own_wins, own_score, score)
        index = tl.where(own_wins, q_flat, index)
    tl.store(score_ptr + n * Hq * Wq + q_flat, score, mask=q_ok)
    tl.store(index_ptr + n * Hq * Wq + q_flat, index.to(tl.int64), mask=q_ok)


# Every config the heuristic can pick (the ahead-of-time test compiles each): 8 x 8 query tiles; 8 x 16 key
# tiles for the global search (a 64 x 128 GEMM tile), 8 x 8 for small radii (less of a key tile falls outside
# the window); BLOCK_C 16 (tl.dot's minimum), or 32 for wide features on tensor cores. 8 warps: with 4, the
# address tiles of the two operands and the accumulator spill hundreds of bytes (ptxas -v); with these
# configs nothing spills on sm_80 and 64 bytes do in one sm_90 variant (float32 FMA, global search).
CONFIGS = [{"QUERY_H": 8, "QUERY_W": 8, "KEY_H": 8, "KEY_W": key_w, "BLOCK_C": block_c, "num_warps": 8,
            "num_stages": 3 if key_w == 8 else 2}
           for key_w in (8, 16) for block_c in (16, 32)]
SMALL_RADIUS = 4


def _config(channels: int, radius: int | None, tensor_cores: bool) -> dict:
    """The entry of CONFIGS for `channels` feature channels, a search radius (None: global) and whether tl.dot
    runs on tensor cores (float16 / bfloat16 features, or TF32). Exact float32 products are FMAs: a 32-channel
    step gains nothing there and spills on the 64 x 128 tile."""
    key_w = 8 if radius is not None and radius <= SMALL_RADIUS else 16
    block_c = 32 if channels > 16 and tensor_cores else 16
    return next(c for c in CONFIGS if c["KEY_W"] == key_w and c["BLOCK_C"] == block_c)


def descriptor_norms(features: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(N, H*W) float32 norms of the zero-padded k x k patch descriptors of (N, C, H, W) features, clamped at
    1e-12: a box sum of squared features (as csrc/match/match_ops.cpp `descriptor_norms`)."""
    squares = features.float().square().sum(1, keepdim=True)
    box = F.avg_pool2d(squares, patch_size, 1, patch_size // 2, count_include_pad=True) * patch_size ** 2
    return box.clamp_min(0).sqrt().clamp_min(NORM_EPS).flatten(1).contiguous()


def _search_features(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


def patch_match(query: torch.Tensor, key: torch.Tensor, patch_size: int, key_mask: torch.Tensor | None,
                radius: int | None, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(score (N, Hq, Wq) float32, index (N, Hq, Wq) int64) of DESIGN §3.3 (validated by apnt.ops.match).

    query (N, C, Hq, Wq), key (N, C, Hk, Wk) of one dtype of float16 / bfloat16 / float32, any layouts (float32
    accumulation); key_mask (N, 1, Hk, Wk) bool or None; radius None or >= 0 (maps of the same size); precision
    "ieee" or "tf32" (the input precision of tl.dot for float32 features)."""
    n, c, hq, wq = query.shape
    hk, wk = key.shape[-2:]
    if max(hq * wq, hk * wk) * c >= 2 ** 31:
        raise ValueError(f"patch_match: the triton kernel indexes one sample's features with int32; got "
                         f"{c} x {max(hq * wq, hk * wk)} elements (split the batch or use native)")
    q, k = _search_features(query), _search_features(key)
    if key_mask is None:  # a uint8 placeholder: the launch has the signature the ahead-of-time test compiles
        mask = torch.zeros(1, dtype=torch.uint8, device=query.device)
    else:
        mask = key_mask.reshape(n, hk * wk).contiguous().view(torch.uint8)
    score = torch.empty((n, hq, wq), dtype=torch.float32, device=query.device)
    index = torch.empty((n, hq, wq), dtype=torch.int64, device=query.device)
    cfg = _config(c, radius, tensor_cores=query.dtype != torch.float32 or precision == "tf32")
    grid = (triton.cdiv(hq, cfg["QUERY_H"]) * triton.cdiv(wq, cfg["QUERY_W"]), n)
    with launch_device(query):
        patch_match_kernel[grid](
            q, k, descriptor_norms(q, patch_size), descriptor_norms(k, patch_size), mask, score, index,
            c, hq, wq, hk, wk, patch_size, 0 if radius is None else radius,
            HAS_MASK=key_mask is not None, HAS_RADIUS=radius is not None, SAME_SIZE=(hq, wq) == (hk, wk),
            INPUT_PRECISION=precision, **cfg)
    return score, index


# ---- patch_transfer ------------------------------------------------------------------------------------------

@triton.jit
def _covering_column(index_ptr, n, Y, X, u, v, pixel_ok, Hq, Wq, Hk, Wk, S, PAD):
    """Column (u, v) of the k x k columns covering output pixels (Y, X) of sample n: (counts: a valid index,
    source pixel (n, sy, sx) of the (N, Hk*S, Wk*S) value map, source in the map, index out of range).
    int32 positions (the host checks that pixel counts fit): int64 division costs registers and time."""
    qy = (Y + PAD) // S - u
    qx = (X + PAD) // S - v
    in_map = pixel_ok & (qy >= 0) & (qy < Hq) & (qx >= 0) & (qx < Wq)
    k = tl.load(index_ptr + (n * Hq + qy) * Wq + qx, mask=in_map, other=-1)
    counts = in_map & (k >= 0) & (k < Hk * Wk)
    wrong = in_map & (k >= Hk * Wk)  # negative: no match
    k = tl.where(counts, k, 0).to(tl.int32)
    sy = (k // Wk) * S + Y - qy * S
    sx = (k % Wk) * S + X - qx * S
    src_ok = counts & (sy >= 0) & (sy < Hk * S) & (sx >= 0) & (sx < Wk * S)
    return counts, (n * Hk * S + sy) * Wk * S + sx, src_ok, wrong


@triton.jit
def _coverage(index_ptr, flag_ptr, n, Y, X, pixel_ok, Hq, Wq, Hk, Wk, S, PAD, KS):
    """Number of valid columns covering each output pixel; raises the flag on an out-of-range index."""
    count = tl.zeros(Y.shape, tl.int32)
    bad = tl.zeros(Y.shape, tl.int32)
    for u in range(0, KS):
        for v in range(0, KS):
            counts, _, _, wrong = _covering_column(index_ptr, n, Y, X, u, v, pixel_ok, Hq, Wq, Hk, Wk, S, PAD)
            count += counts.to(tl.int32)
            bad |= wrong.to(tl.int32)
    tl.store(flag_ptr + tl.zeros(Y.shape, tl.int32), tl.full(Y.shape, 1, tl.int32), mask=bad != 0)
    return count


@triton.jit
def _pixels(N, H, W, BLOCK_P: tl.constexpr):
    """(flat pixel, n, y, x, in range) of this program's BLOCK_P pixels of an (N, H, W) map, int32."""
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    return p, p // (H * W), (p // W) % H, p % W, p < N * H * W


@triton.jit
def _channel_offsets(pixel, Cv, BLOCK_C: tl.constexpr):
    """(element offsets (pixels, channels) int64 of a channels_last map, channel mask) of channel block
    program_id(1)."""
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    return pixel.to(tl.int64)[:, None] * Cv + c[None, :], (c < Cv)[None, :]


@triton.jit
def transfer_kernel(src_ptr, dst_ptr, index_ptr, flag_ptr, N, Cv, Hq, Wq, Hk, Wk, S, PAD, KS,
                    SCATTER: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Grid (output pixel blocks, channel blocks); maps channels_last. Forward (not SCATTER): dst (N, Hq*S,
    Wq*S, Cv) = mean of src = value (N, Hk*S, Wk*S, Cv) over the valid covering columns. Backward (SCATTER):
    tl.atomic_add of src = grad_out / count into dst = the float32 value gradient."""
    p, n, Y, X, pixel_ok = _pixels(N, Hq * S, Wq * S, BLOCK_P)
    offs, c_ok = _channel_offsets(p, Cv, BLOCK_C)
    inv = 1.0 / tl.maximum(_coverage(index_ptr, flag_ptr, n, Y, X, pixel_ok, Hq, Wq, Hk, Wk, S, PAD, KS), 1)
    if SCATTER:
        g = tl.load(src_ptr + offs, mask=pixel_ok[:, None] & c_ok, other=0.0).to(tl.float32) * inv[:, None]
    acc = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
    for u in range(0, KS):
        for v in range(0, KS):
            _, source, src_ok, _ = _covering_column(index_ptr, n, Y, X, u, v, pixel_ok, Hq, Wq, Hk, Wk, S, PAD)
            src_offs, _ = _channel_offsets(source, Cv, BLOCK_C)
            if SCATTER:
                tl.atomic_add(dst_ptr + src_offs, g, mask=src_ok[:, None] & c_ok, sem="relaxed")
            else:
                acc += tl.load(src_ptr + src_offs, mask=src_ok[:, None] & c_ok, other=0.0).to(tl.float32)
    if not SCATTER:
        tl.store(dst_ptr + offs, (acc * inv[:, None]).to(dst_ptr.dtype.element_ty), mask=pixel_ok[:, None] & c_ok)


@triton.jit
def coverage_kernel(index_ptr, flag_ptr, inv_count_ptr, N, Hq, Wq, Hk, Wk, S, PAD, KS, BLOCK: tl.constexpr):
    """inv_count (N, Hq*S, Wq*S) float32 = 1 / (number of valid covering columns), 0 where there is none."""
    p, n, Y, X, pixel_ok = _pixels(N, Hq * S, Wq * S, BLOCK)
    count = _coverage(index_ptr, flag_ptr, n, Y, X, pixel_ok, Hq, Wq, Hk, Wk, S, PAD, KS)
    tl.store(inv_count_ptr + p, tl.where(count > 0, 1.0 / tl.maximum(count, 1), 0.0), mask=pixel_ok)


@triton.jit
def transfer_backward_gather_kernel(grad_ptr, inv_count_ptr, order_ptr, start_ptr, out_ptr,
                                    N, Cv, Hq, Wq, Hk, Wk, S, PAD, KS,
                                    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Grid (value pixel blocks, channel blocks). out (N, Hk*S, Wk*S, Cv) = the value gradient, gathered from
    grad (N, Hq*S, Wq*S, Cv) * inv_count (N, Hq*S, Wq*S): for each of the k x k keys r whose patch covers the
    value pixel, the queries order[n, start[n, r] : start[n, r + 1]] (int32) that chose r, in a fixed order:
    deterministic."""
    HY, WX = Hq * S, Wq * S
    p, n, sy, sx, pixel_ok = _pixels(N, Hk * S, Wk * S, BLOCK_P)
    offs, c_ok = _channel_offsets(p, Cv, BLOCK_C)
    acc = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
    for u in range(0, KS):
        for v in range(0, KS):
            ky = (sy + PAD) // S - u
            kx = (sx + PAD) // S - v
            key_ok = pixel_ok & (ky >= 0) & (ky < Hk) & (kx >= 0) & (kx < Wk)
            r = n * (Hk * Wk + 1) + ky * Wk + kx
            first = tl.load(start_ptr + r, mask=key_ok, other=0)
            length = tl.load(start_ptr + r + 1, mask=key_ok, other=0) - first
            for j in range(0, tl.max(length)):
                q = tl.load(order_ptr + n * Hq * Wq + first + j, mask=j < length, other=0)
                Y = (q // Wq) * S + sy - ky * S
                X = (q % Wq) * S + sx - kx * S
                ok = (j < length) & (Y >= 0) & (Y < HY) & (X >= 0) & (X < WX)
                pixel = (n * HY + Y) * WX + X
                w = tl.load(inv_count_ptr + pixel, mask=ok, other=0.0)
                g_offs, _ = _channel_offsets(pixel, Cv, BLOCK_C)
                acc += tl.load(grad_ptr + g_offs, mask=ok[:, None] & c_ok, other=0.0).to(tl.float32) * w[:, None]
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=pixel_ok[:, None] & c_ok)


# Every config the heuristic can pick for the transfer kernels: 512 elements a program (1024 need ~150
# registers a thread, ptxas -v), one launch config for the coverage kernel.
TRANSFER_CONFIGS = [{"BLOCK_P": 512 // block_c, "BLOCK_C": block_c, "num_warps": 4, "num_stages": 1}
                    for block_c in (4, 16, 64)]
COVERAGE_CONFIG = {"BLOCK": 512, "num_warps": 4, "num_stages": 1}


def _transfer_config(channels: int) -> dict:
    """4 channels for RGB images, 16 for thin features, 64 otherwise (VGG features: 64 to 256)."""
    block_c = 4 if channels <= 4 else 16 if channels <= 16 else 64
    return next(c for c in TRANSFER_CONFIGS if c["BLOCK_C"] == block_c)


def _geometry(index, patch_size, scale, value_size):
    n, cv, hv, wv = value_size
    big = patch_size * scale
    if n * max(hv * wv, index.shape[1] * index.shape[2] * scale * scale) >= 2 ** 31:
        raise ValueError(f"patch_transfer: the triton kernels index pixels with int32; got {n} x ({hv}, {wv}) "
                         f"value pixels (split the batch or use native)")
    return (n, cv, index.shape[1], index.shape[2], hv // scale, wv // scale, scale, (big - scale) // 2, patch_size)


def _check_index(flag, g):
    """Out-of-range indices are skipped in the kernels; on the CPU (no sync to pay) they are also reported."""
    if flag.device.type == "cpu" and flag.item():
        hk, wk, s = g[4], g[5], g[6]
        raise ValueError(f"argument 'index': values must be negative (no match) or flat key positions in "
                         f"[0, {hk * wk}) of the ({hk}, {wk}) key map that value ({hk * s}, {wk * s}) is the "
                         f"scale-{s} image of")


def _empty_channels_last(shape, like, dtype=None):
    return torch.empty(shape, dtype=dtype or like.dtype, device=like.device, memory_format=torch.channels_last)


def patch_transfer_forward(value: torch.Tensor, index: torch.Tensor, patch_size: int, scale: int) -> torch.Tensor:
    """DESIGN §3.4's transfer of value (N, Cv, Hk*s, Wk*s), any layout, float16 / bfloat16 / float32, by index
    (N, Hq, Wq) int64: a new channels_last (N, Cv, Hq*s, Wq*s) tensor of value's dtype."""
    g = _geometry(index, patch_size, scale, value.shape)
    n, cv, hq, wq = g[:4]
    v, idx = value.contiguous(memory_format=torch.channels_last), index.contiguous()
    out = _empty_channels_last((n, cv, hq * scale, wq * scale), value)
    flag = torch.zeros(1, dtype=torch.int32, device=value.device)
    cfg = _transfer_config(cv)
    grid = (triton.cdiv(n * hq * wq * scale * scale, cfg["BLOCK_P"]), triton.cdiv(cv, cfg["BLOCK_C"]))
    with launch_device(value):
        transfer_kernel[grid](v, out, idx, flag, *g, SCATTER=False, **cfg)
    _check_index(flag, g)
    return out


def inverted_index(index: torch.Tensor, keys: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(order (N, Hq*Wq), start (N, keys + 1)) int32: order[n, start[n, r]:start[n, r + 1]] are the query
    positions whose index is r, ascending (a stable sort: deterministic). Negative and out-of-range entries are left
    out."""
    flat = index.reshape(index.shape[0], -1)
    sorted_keys, order = torch.sort(flat, dim=1, stable=True)
    bounds = torch.arange(keys + 1, device=index.device).expand(flat.shape[0], -1).contiguous()
    start = torch.searchsorted(sorted_keys, bounds, out_int32=True)
    return order.to(torch.int32).contiguous(), start.contiguous()


def patch_transfer_backward(grad_out: torch.Tensor, index: torch.Tensor, patch_size: int, scale: int,
                            value_size: list[int]) -> torch.Tensor:
    """Gradient of patch_transfer_forward with respect to value: a new channels_last tensor of `value_size`
    (N, Cv, Hk*s, Wk*s) and grad_out's dtype. Deterministic when torch.are_deterministic_algorithms_enabled()
    (a gather through the inverted index), else a scatter with float32 atomics."""
    g = _geometry(index, patch_size, scale, value_size)
    n, cv, hq, wq, hk, wk = g[:6]
    go, idx = grad_out.contiguous(memory_format=torch.channels_last), index.contiguous()
    flag = torch.zeros(1, dtype=torch.int32, device=go.device)
    cfg = _transfer_config(cv)
    channel_blocks = triton.cdiv(cv, cfg["BLOCK_C"])
    with launch_device(go):
        if torch.are_deterministic_algorithms_enabled():
            inv_count = torch.empty((n, hq * scale, wq * scale), dtype=torch.float32, device=go.device)
            coverage_kernel[(triton.cdiv(inv_count.numel(), COVERAGE_CONFIG["BLOCK"]),)](
                idx, flag, inv_count, n, *g[2:], **COVERAGE_CONFIG)
            order, start = inverted_index(idx, hk * wk)
            grad_value = _empty_channels_last(value_size, go)
            grid = (triton.cdiv(n * hk * wk * scale * scale, cfg["BLOCK_P"]), channel_blocks)
            transfer_backward_gather_kernel[grid](go, inv_count, order, start, grad_value, *g, **cfg)
        else:
            grad_value = _empty_channels_last(value_size, go, torch.float32).zero_()
            grid = (triton.cdiv(n * hq * wq * scale * scale, cfg["BLOCK_P"]), channel_blocks)
            transfer_kernel[grid](go, grad_value, idx, flag, *g, SCATTER=True, **cfg)
            grad_value = grad_value.to(go.dtype)
    return grad_value
