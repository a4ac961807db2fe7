"""`apnt selftest`: every op × every backend available on this machine's devices against `reference`.

What a GPU user runs first (DESIGN §2). Each case draws random inputs, runs the op forward and backward
with the backend and with `reference` in float64 (or float32 where the backend has no float64 path),
and reports the largest relative error of the output and of every gradient. patch_match has no gradient
and may break near-ties differently: it is judged by DESIGN §3.3's rule (`match_agreement`), and its row
reports the worst difference between the backend's score and the reference maximum."""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from apnt import ops
from apnt.ops import _backends
from apnt.ops.match import candidate_mask, patch_descriptors


@dataclasses.dataclass(frozen=True)
class Case:
    op: str
    make: Callable[[torch.Generator, torch.device, torch.dtype], tuple]
    call: Callable[..., torch.Tensor]
    # (case, backend, device, dtype) -> the result row's dict; default: forward + gradients (run_case)
    check: Callable[..., dict] | None = None
    # (backend, device) -> why this case cannot run there, or None
    unsupported: Callable[[str, torch.device], str | None] = lambda backend, device: None


def _randn(g, device, dtype, *shape, scale=1.0):
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(device=device, dtype=dtype)


def _conv_inputs(g, device, dtype):
    return (_randn(g, device, dtype, 2, 8, 13, 11), _randn(g, device, dtype, 6, 8, 3, 3, scale=0.2),
            _randn(g, device, dtype, 6))


def _gate_inputs(g, device, dtype):
    return (_randn(g, device, dtype, 2, 6, 9, 14), _randn(g, device, dtype, 2, 5, 9, 14),
            _randn(g, device, dtype, 12, 11, 3, 3, scale=0.2), _randn(g, device, dtype, 12),
            _randn(g, device, dtype, 6, 12, 3, 3, scale=0.2), _randn(g, device, dtype, 6))


def _blend_inputs(g, device, dtype):
    return (_randn(g, device, dtype, 2, 6, 9, 14), _randn(g, device, dtype, 2, 6, 9, 14),
            _randn(g, device, dtype, 6, 12, 3, 3, scale=0.2), _randn(g, device, dtype, 6))


def _dense_inputs(g, device, dtype):
    c, growth, layers = 5, 3, 3
    weights = [_randn(g, device, dtype, growth, c + i * growth, 3, 3, scale=0.2) for i in range(layers)]
    biases = [_randn(g, device, dtype, growth, scale=0.1) for _ in range(layers)]
    return (_randn(g, device, dtype, 2, c, 9, 14), *weights, *biases,
            _randn(g, device, dtype, c, c + layers * growth, 1, 1, scale=0.2), _randn(g, device, dtype, c))


def _dense_call(x, *rest, backend):
    layers = (len(rest) - 2) // 2
    return ops.dilated_dense_block(x, list(rest[:layers]), list(rest[layers:2 * layers]), rest[-2], rest[-1],
                                   dilation=2, backend=backend)


# ---- the match family --------------------------------------------------------------------------------------

MATCH_TOLERANCE = 1e-5  # DESIGN §3.3


@dataclasses.dataclass(frozen=True)
class MatchAgreement:
    """How far a patch_match result is from DESIGN §3.3's rule, against float64 reference scores.

    score_error: max |score - reference maximum| where a candidate exists; index_gap: max of (reference maximum
    - reference score of the chosen key) there (inf when a chosen key is not a candidate: masked, outside the
    radius, NaN, out of range); missing: positions where index is -1 but the reference found a candidate or the
    other way round, or where index is -1 and score is not 0. `worst`: (n, flat query position) of the largest
    violation, for messages."""
    score_error: float
    index_gap: float
    missing: int
    worst: tuple[int, int] | None

    def ok(self, tol: float = MATCH_TOLERANCE) -> bool:
        return self.score_error <= tol and self.index_gap <= tol and self.missing == 0


def match_agreement(score, index, query, key, *, patch_size=3, key_mask=None, radius=None) -> MatchAgreement:
    """Compare (score, index) of any backend with the reference scores (computed here in float64 from the same
    input values, so the oracle's own rounding does not count). Builds the Nq x Nk matrix: small maps only."""
    n, _, hq, wq = query.shape
    hk, wk = key.shape[-2:]
    q, k = query.detach().double(), key.detach().double()
    scores = torch.bmm(patch_descriptors(q, patch_size).transpose(1, 2), patch_descriptors(k, patch_size))
    valid = candidate_mask(n, hq, wq, hk, wk, key_mask, radius, query.device) & ~scores.isnan()
    best = scores.masked_fill(~valid, float("-inf")).max(dim=-1).values                # (N, Lq)
    found = valid.any(dim=-1)
    score, index = score.reshape(n, -1).double(), index.reshape(n, -1)
    chosen = index.clamp(0, hk * wk - 1).unsqueeze(-1)
    in_range = (index >= 0) & (index < hk * wk)
    is_candidate = in_range & valid.gather(-1, chosen).squeeze(-1)
    chosen_score = torch.where(is_candidate, scores.gather(-1, chosen).squeeze(-1), torch.full_like(best, -torch.inf))
    zero = torch.zeros_like(best)
    score_error = torch.where(found, (score - best).abs().nan_to_num(torch.inf), zero)
    index_gap = torch.where(found, best - chosen_score, zero)
    missing = torch.where(found, index < 0, (index != -1) | (score != 0))
    badness = torch.where(missing, torch.inf, torch.maximum(score_error, index_gap))
    worst = None
    if badness.numel() and badness.max() > 0:
        flat = int(badness.argmax())
        worst = (flat // badness.shape[1], flat % badness.shape[1])
    return MatchAgreement(float(score_error.max()) if score.numel() else 0.0,
                          float(index_gap.max()) if score.numel() else 0.0, int(missing.sum()), worst)


def _match_inputs(g, device, dtype):
    # Hq != Hk, wider than one 8x32 tile of the native search, a key mask that excludes a tenth of the keys
    query, key = _randn(g, device, dtype, 2, 6, 9, 37), _randn(g, device, dtype, 2, 6, 11, 34)
    key_mask = (torch.rand(2, 1, 11, 34, generator=g) > 0.1).to(device)
    return query, key, key_mask


def _radius_inputs(g, device, dtype):
    query, key = _randn(g, device, dtype, 2, 6, 10, 35), _randn(g, device, dtype, 2, 6, 10, 35)
    key_mask = (torch.rand(2, 1, 10, 35, generator=g) > 0.1).to(device)
    return query, key, key_mask


def run_match_case(case: Case, backend: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> dict:
    """patch_match by DESIGN §3.3's rule; the row reports the worst score difference."""
    query, key, key_mask = case.make(torch.Generator().manual_seed(seed), device, dtype)
    kwargs = case.call(key_mask)
    score, index = ops.patch_match(query, key, **kwargs, backend=backend)
    agreement = match_agreement(score, index, query, key, **kwargs)
    return {"forward": agreement.score_error, "backward": None, "ok": agreement.ok()}


def _global_only_on_cpu(backend, device):
    if backend == "native" and device.type == "cuda":
        return "native searches CUDA tensors in radius mode only (global search on GPUs: triton)"
    return None


def _transfer_inputs(g, device, dtype):
    # 9x7 query map onto a 6x8 key map at scale 2 (value 12x16), a fifth of the indices -1
    index = torch.randint(0, 6 * 8, (2, 9, 7), generator=g)
    index = torch.where(torch.rand(2, 9, 7, generator=g) < 0.2, torch.full_like(index, -1), index)
    return _randn(g, device, dtype, 2, 5, 12, 16), index.to(device)


CASES = [
    Case("conv2d", _conv_inputs,
         lambda x, w, b, backend: ops.conv2d(x, w, b, dilation=2, activation="leaky_relu", backend=backend)),
    Case("attention_gate", _gate_inputs, lambda *a, backend: ops.attention_gate(*a, backend=backend)),
    Case("attention_blend", _blend_inputs, lambda *a, backend: ops.attention_blend(*a, backend=backend)),
    Case("dilated_dense_block", _dense_inputs, _dense_call),
    Case("patch_match", _match_inputs, lambda key_mask: dict(patch_size=3, key_mask=key_mask), run_match_case,
         _global_only_on_cpu),
    Case("patch_match radius=3", _radius_inputs, lambda key_mask: dict(patch_size=3, key_mask=key_mask, radius=3),
         run_match_case),
    Case("patch_transfer", _transfer_inputs,
         lambda value, index, backend: ops.patch_transfer(value, index, patch_size=3, scale=2, backend=backend)),
]

TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def run_case(case: Case, backend: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    inputs = case.make(g, device, dtype)
    results = []
    for name in (backend, "reference"):
        # integer inputs (patch_transfer's index) are not differentiable
        leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
        out = case.call(*leaves, backend=name)
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
        out.backward(grad_out.to(device=device, dtype=dtype))
        results.append((out.detach(), [t.grad for t in leaves if t.requires_grad]))
    (out, grads), (ref_out, ref_grads) = results
    errors = [_rel(out, ref_out)] + [_rel(a, b) for a, b in zip(grads, ref_grads)]
    return {"forward": errors[0], "backward": max(errors[1:]), "ok": max(errors) <= TOLERANCE[dtype]}


def devices() -> list[torch.device]:
    out = [torch.device("cpu")]
    if torch.cuda.is_available():
        out.append(torch.device("cuda"))
    return out


def run(print_fn=print) -> bool:
    """Runs every case; prints a table; True when everything that could run passed."""
    rows, all_ok = [], True
    for device in devices():
        for case in CASES:
            for backend in ("native", "triton"):
                usable = [dt for dt in (torch.float64, torch.float32)
                          if not _backends.availability(device, dt)[backend]]
                if not usable:
                    why = _backends.availability(device, torch.float32)[backend]
                    rows.append((case.op, backend, device.type, "-", "-", "-", "skipped: " + "; ".join(why)))
                elif case.unsupported(backend, device):
                    rows.append((case.op, backend, device.type, "-", "-", "-",
                                 "skipped: " + case.unsupported(backend, device)))
                    continue
                for dtype in usable:  # float64 checks the exact paths, float32 the fast ones
                    try:
                        r = (case.check or run_case)(case, backend, device, dtype)
                    except _backends.BackendUnavailableError as e:  # the backend says it cannot serve these inputs
                        rows.append((case.op, backend, device.type, str(dtype).replace("torch.", ""), "-", "-",
                                     "skipped: " + str(e).splitlines()[0]))
                        continue
                    all_ok &= r["ok"]
                    tol = MATCH_TOLERANCE if case.check is run_match_case else TOLERANCE[dtype]
                    rows.append((case.op, backend, device.type, str(dtype).replace("torch.", ""),
                                 f"{r['forward']:.1e}", "-" if r["backward"] is None else f"{r['backward']:.1e}",
                                 "PASS" if r["ok"] else f"FAIL (tolerance {tol:.0e})"))
    header = ("op", "backend", "device", "dtype", "fwd err", "grad rel err", "result")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for r in [header, tuple("-" * w for w in widths)] + rows:
        print_fn("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    print_fn("fwd err: relative L2 error of the output; patch_match: the worst |score - reference maximum|, "
             "with every index scoring within 1e-5 of that maximum (DESIGN §3.3)")
    print_fn("selftest: " + ("all available backends agree with reference" if all_ok else "FAILURES above"))
    return all_ok
