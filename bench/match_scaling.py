"""Issue 4: time and peak memory of patch_match / patch_transfer, native vs reference, on this CPU.

Every measurement runs in a fresh subprocess (`--child`): it imports torch and apnt, builds the inputs, reads
its RSS (VmRSS) as the baseline, then calls the op; the memory figure is ru_maxrss after the first call minus
that baseline (the op's peak RSS increase), the time figures are wall-clock per call (first call included
only when it is the only one).

  * scaling: patch_match global search, C=256, patch 3, query = key = HxW maps of growing size; reference
    stops where its estimated peak would exceed --ref-limit-gb (the Nq x Nk score matrix and its masks).
    Writes bench/results/match_scaling.png (time and memory vs map size, log axes).
  * match64: 64x64 vs 64x64 global, native vs reference, interleaved rounds in fresh processes.
  * radius: 250x375 vs 250x375 with radius=16 (the windowed search of DESIGN §3.3), native, fresh processes.
  * transfer: patch_transfer scale 4, patch 3, Cv=64, HxW indices (random in [-1, H*W)) into an
    (H*4)x(W*4) value; 250x375 indices / 1000x1500 value unless reference would need more than
    --transfer-limit-gb, then a smaller size where it fits.

Usage: PYTHONPATH=. .venv/bin/python bench/match_scaling.py [--quick] [--md BENCHMARKS.md]
Results: bench/results/match_scaling.json; with --md, the "## patch correspondence (issue 4)" section of
BENCHMARKS.md is (re)written, the rest of the file kept.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BACKENDS = ("reference", "native")
C, CV, PATCH, SCALE = 256, 64, 3, 4
REF_SIZES = [(16, 16), (32, 32), (48, 48), (64, 64), (96, 96), (128, 128), (160, 160), (192, 192)]
NATIVE_SIZES = [(16, 16), (32, 32), (48, 48), (64, 64), (96, 96), (128, 128), (192, 192), (250, 375)]
TRANSFER_SIZES = [(250, 375), (180, 270), (125, 188)]
BENCH_MATCH_SIZES = [(32, 32), (64, 64)]       # bench/bench_match.py (pytest-benchmark)
BENCH_TRANSFER_SIZES = [(125, 188)]
SECTION = "## patch correspondence (issue 4)"
RADIUS, RADIUS_SIZE = 16, (250, 375)


# ---- cases (also used by bench/bench_match.py) ----------------------------------------------------------------------

def setup_match(size, backend, c=C, seed=0, radius=None):
    import torch
    import apnt.ops
    g = torch.Generator().manual_seed(seed)
    h, w = size
    q = torch.randn(1, c, h, w, generator=g)
    k = torch.randn(1, c, h, w, generator=g)
    return lambda: apnt.ops.patch_match(q, k, patch_size=PATCH, radius=radius, backend=backend)


def setup_transfer(size, backend, cv=CV, scale=SCALE, seed=0):
    import torch
    import apnt.ops
    g = torch.Generator().manual_seed(seed)
    h, w = size
    value = torch.randn(1, cv, h * scale, w * scale, generator=g)
    index = torch.randint(-1, h * w, (1, h, w), generator=g)
    return lambda: apnt.ops.patch_transfer(value, index, patch_size=PATCH, scale=scale, backend=backend)


# ---- child: one fresh process, one case -----------------------------------------------------------------------------

def _rss_now() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def child(kind: str, h: int, w: int, backend: str, calls: int) -> dict:
    if kind == "transfer":
        run = setup_transfer((h, w), backend)
    else:
        run = setup_match((h, w), backend, radius=RADIUS if kind == "radius" else None)
    base = _rss_now()
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times = []
    for i in range(calls):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
        if i == 0:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"kind": kind, "size": [h, w], "backend": backend, "times": times,
            "time": statistics.median(times[1:] if len(times) > 1 else times),
            "rss_base": base, "maxrss_before": maxrss_before, "rss_peak": peak, "rss_inc": max(peak - base, 0),
            "pid": os.getpid()}


def spawn(kind, size, backend, calls=1, timeout=900) -> dict:
    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--child", kind, str(size[0]), str(size[1]),
           backend, str(calls)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"kind": kind, "size": list(size), "backend": backend, "error": f"timeout after {timeout}s"}
    if p.returncode != 0:
        return {"kind": kind, "size": list(size), "backend": backend,
                "error": f"exit {p.returncode}: {p.stderr.strip().splitlines()[-1:]}"}
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["wall"] = time.perf_counter() - t0
    print(f"  {kind:8} {backend:9} {size[0]}x{size[1]}: {r['time'] * 1e3:.1f} ms, "
          f"+{r['rss_inc'] / 2**20:.1f} MiB (process {r['pid']}, {r['wall']:.1f}s)", flush=True)
    return r


# ---- parent ---------------------------------------------------------------------------------------------------------

def ref_match_bytes(size, per_pair=14.0) -> float:
    """Reference patch_match peak estimate: the Nq x Nk float scores, the masked copy and bool masks."""
    n = size[0] * size[1]
    return n * n * per_pair


def ref_transfer_bytes(size) -> float:
    """Reference patch_transfer peak estimate: unfolded columns, gathered columns and their masked product."""
    k = PATCH * SCALE
    return 3.0 * CV * k * k * size[0] * size[1] * 4


def scaling(args) -> list[dict]:
    out = []
    per_pair = 14.0
    for size in args.ref_sizes:
        est = ref_match_bytes(size, per_pair)
        if est > args.ref_limit_gb * 1e9:
            print(f"  match    reference {size[0]}x{size[1]}: skipped, estimated {est / 1e9:.1f} GB", flush=True)
            out.append({"kind": "match", "size": list(size), "backend": "reference",
                        "error": f"OOM/n/a (estimated {est / 1e9:.1f} GB > {args.ref_limit_gb:g} GB)"})
            continue
        calls = args.calls if size[0] * size[1] < 120 * 120 else 1
        r = spawn("match", size, "reference", calls=calls, timeout=args.timeout)
        out.append(r)
        if "rss_inc" in r and size[0] * size[1] >= 64 * 64:
            per_pair = max(per_pair, r["rss_inc"] / (size[0] * size[1]) ** 2)
    last = None
    for size in args.native_sizes:
        if last and "time" in last:
            n0, n1 = last["size"][0] * last["size"][1], size[0] * size[1]
            est = last["time"] * (n1 / n0) ** 2 * args.calls
            if est > args.timeout:
                print(f"  match    native    {size[0]}x{size[1]}: skipped, estimated {est:.0f}s", flush=True)
                out.append({"kind": "match", "size": list(size), "backend": "native",
                            "error": f"not run (estimated {est:.0f} s > {args.timeout} s budget)"})
                continue
        calls = args.calls if size[0] * size[1] < 120 * 120 else 1
        last = spawn("match", size, "native", calls=calls, timeout=args.timeout)
        out.append(last)
    return out


def interleaved(kind, size, rounds, calls, timeout) -> dict:
    runs = {b: [] for b in BACKENDS}
    for i in range(rounds):
        order = BACKENDS if i % 2 == 0 else BACKENDS[::-1]
        for b in order:
            runs[b].append(spawn(kind, size, b, calls=calls, timeout=timeout))
    res = {"kind": kind, "size": list(size), "rounds": rounds, "calls_per_process": calls, "runs": runs}
    if all("time" in r for rs in runs.values() for r in rs):
        t = {b: statistics.median([x for r in runs[b] for x in (r["times"][1:] or r["times"])]) for b in BACKENDS}
        m = {b: statistics.median([r["rss_inc"] for r in runs[b]]) for b in BACKENDS}
        res.update(time_median=t, rss_inc_median=m, speedup=t["reference"] / t["native"],
                   rss_ratio=m["native"] / m["reference"] if m["reference"] else None)
    return res


def radius_runs(args) -> dict:
    runs = [spawn("radius", RADIUS_SIZE, "native", calls=args.calls, timeout=args.timeout) for _ in range(args.rounds)]
    res = {"size": list(RADIUS_SIZE), "radius": RADIUS, "runs": runs}
    if all("time" in r for r in runs):
        res.update(time_median=statistics.median(r["time"] for r in runs),
                   rss_inc_median=statistics.median(r["rss_inc"] for r in runs))
    return res


def transfer(args) -> dict:
    skipped = []
    for size in args.transfer_sizes:
        est = ref_transfer_bytes(size)
        if est <= args.transfer_limit_gb * 1e9:
            r = interleaved("transfer", size, args.rounds, args.calls, args.timeout)
            r["skipped_larger"] = skipped
            return r
        print(f"  transfer reference {size[0]}x{size[1]}: estimated {est / 1e9:.1f} GB > "
              f"{args.transfer_limit_gb:g} GB, trying smaller", flush=True)
        skipped.append({"size": list(size), "ref_estimate_gb": est / 1e9})
    return {"kind": "transfer", "error": "no size fits", "skipped_larger": skipped}


def machine() -> dict:
    import apnt.benchcases
    return apnt.benchcases.machine()


def plot(res: dict, path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    m = res["machine"]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 4.8))
    for b, style in (("reference", "o-"), ("native", "s-")):
        rows = [r for r in res["scaling"] if r["backend"] == b and "time" in r]
        x = [r["size"][0] * r["size"][1] for r in rows]
        ax_t.plot(x, [r["time"] * 1e3 for r in rows], style, label=b)
        ax_m.plot(x, [max(r["rss_inc"], 2**16) / 2**20 for r in rows], style, label=b)
        for r in rows:
            ax_t.annotate(f"{r['size'][0]}x{r['size'][1]}", (r["size"][0] * r["size"][1], r["time"] * 1e3),
                          fontsize=7, textcoords="offset points", xytext=(3, -9))
        for r in res["scaling"]:
            if r["backend"] == b and "error" in r and b == "reference" and "OOM" in r["error"]:
                ax_m.axvline(r["size"][0] * r["size"][1], color="C0", ls=":", lw=0.8)
                ax_m.annotate(f"reference OOM/n/a\nfrom {r['size'][0]}x{r['size'][1]} (> 8 GB)",
                              (r["size"][0] * r["size"][1], 0.05), xycoords=("data", "axes fraction"),
                              fontsize=7, color="C0", xytext=(3, 0), textcoords="offset points")
                break
    for ax, ylabel in ((ax_t, "time per call (ms)"), (ax_m, "peak RSS increase (MiB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("map size H*W (query = key, global search)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"patch_match C={C}, patch {PATCH}, global: native vs reference\n"
                 f"{m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), {m['date']}",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _mib(b):
    return f"{b / 2**20:.1f} MiB"


def markdown(res: dict) -> str:
    m = res["machine"]
    L = [SECTION, "",
         f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
         f"no GPU; commit {m['commit']}; {m['date']}. Produced by `bench/match_scaling.py` "
         f"(took {res['elapsed_s']:.0f} s); every figure is from a fresh subprocess: time = wall-clock per call "
         f"(median over the calls after the first when there are several), memory = peak RSS (ru_maxrss) after the "
         f"first call minus the RSS after imports and input creation.", "",
         *([f"Note: {res['note']}", ""] if res.get("note") else []),
         "### patch_match global search, C=256, patch 3, query = key", "",
         "| map | reference ms | reference peak RSS increase | native ms | native peak RSS increase | speedup |",
         "|---|---|---|---|---|---|"]
    sizes = []
    for r in res["scaling"]:
        if tuple(r["size"]) not in sizes:
            sizes.append(tuple(r["size"]))
    for s in sorted(sizes, key=lambda s: s[0] * s[1]):
        cell = {}
        for b in BACKENDS:
            r = next((r for r in res["scaling"] if tuple(r["size"]) == s and r["backend"] == b), None)
            if r is None:
                cell[b] = ("–", "–", None)
            elif "error" in r:
                cell[b] = (r["error"], "–" if "OOM" not in r["error"] else "OOM/n/a", None)
            else:
                cell[b] = (f"{r['time'] * 1e3:.1f}", _mib(r["rss_inc"]), r["time"])
        sp = (f"{cell['reference'][2] / cell['native'][2]:.1f}×"
              if cell["reference"][2] and cell["native"][2] else "–")
        L.append(f"| {s[0]}×{s[1]} | {cell['reference'][0]} | {cell['reference'][1]} | {cell['native'][0]} | "
                 f"{cell['native'][1]} | {sp} |")
    big = next((r for r in res["scaling"] if tuple(r["size"]) == RADIUS_SIZE and r["backend"] == "native"), None)
    if big and "time" in big:
        L += ["", f"250×375 global (relu3_1 of a 1500×1000 photo), native: **{big['time']:.1f} s** (target ≤ 60 s: "
                  f"{'met' if big['time'] <= 60 else 'NOT met'}), peak RSS increase **{_mib(big['rss_inc'])}** (target "
                  f"≤ 1 GB: {'met' if big['rss_inc'] <= 2**30 else 'NOT met'})."]
    rr = res.get("radius", {})
    if "time_median" in rr:
        each = ", ".join(f"{r['time']:.2f}" for r in rr["runs"])
        L += ["", f"250×375 with radius={rr['radius']}, native, {len(rr['runs'])} fresh processes ({each} s): "
                  f"median **{rr['time_median']:.2f} s** (target ≤ 5 s: {'met' if rr['time_median'] <= 5 else 'NOT met'}), "
                  f"peak RSS increase {_mib(rr['rss_inc_median'])}."]
    L += ["", "![match_scaling](bench/results/match_scaling.png)", ""]

    def ratio_block(title, r, target_note):
        if "speedup" not in r:
            return [f"### {title}", "", f"not measured: {r.get('error') or r['runs']}", ""]
        t, mm = r["time_median"], r["rss_inc_median"]
        sp_ok = r["speedup"] >= 3
        mem_ok = r["rss_ratio"] is not None and r["rss_ratio"] <= 0.10
        return [f"### {title}", "",
                f"{r['rounds']} interleaved rounds, each backend in a fresh process per round, "
                f"{r['calls_per_process']} call(s) per process.", "",
                "| backend | median ms | all calls ms | median peak RSS increase |", "|---|---|---|---|",
                *[f"| {b} | {t[b] * 1e3:.1f} | {', '.join(f'{x * 1e3:.0f}' for rr in r['runs'][b] for x in rr['times'])} "
                  f"| {_mib(mm[b])} |" for b in BACKENDS],
                "",
                f"native speedup (ratio of medians): **{r['speedup']:.2f}×** (target ≥ 3×: "
                f"{'met' if sp_ok else 'NOT met'}); native/reference peak-RSS increase: "
                f"**{r['rss_ratio'] * 100:.2f}%** (target ≤ 10%: {'met' if mem_ok else 'NOT met'}). {target_note}",
                ""]
    L += ratio_block("patch_match 64×64 vs 64×64, global", res["match64"], "")
    tr = res["transfer"]
    note = ""
    if tr.get("skipped_larger"):
        note = "Not measured at " + "; ".join(
            f"{s['size'][0]}×{s['size'][1]} indices ({s['size'][0] * SCALE}×{s['size'][1] * SCALE} value): reference "
            f"estimated at {s['ref_estimate_gb']:.1f} GB (unfold + gather + masked product of Cv·144 × Lk floats), "
            f"over the 12 GB budget" for s in tr["skipped_larger"]) + "."
    size = tr.get("size", ["?", "?"])
    L += ratio_block(f"patch_transfer scale 4, patch 3, Cv=64, {size[0]}×{size[1]} indices → "
                     f"{size[0] * SCALE if isinstance(size[0], int) else '?'}×"
                     f"{size[1] * SCALE if isinstance(size[1], int) else '?'} value (random indices in [-1, Hk·Wk))",
                     tr, note)
    return "\n".join(L).rstrip() + "\n"


def write_md(path: pathlib.Path, section: str, heading: str = SECTION) -> None:
    """Replace the `heading` section of the markdown file at `path` by `section` (appended when absent)."""
    text = path.read_text() if path.exists() else ""
    if heading in text:
        head, _, rest = text.partition(heading)
        nxt = rest.find("\n## ")
        text = head + section + (rest[nxt + 1:] if nxt >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", nargs=5, metavar=("KIND", "H", "W", "BACKEND", "CALLS"), help=argparse.SUPPRESS)
    p.add_argument("--only", default="scaling,match64,radius,transfer", help="comma list of parts")
    p.add_argument("--quick", action="store_true", help="small sizes only, 3 rounds of 1 call")
    p.add_argument("--calls", type=int, default=2, help="calls per process (first gives the memory figure)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--timeout", type=int, default=600, help="per-process budget in seconds")
    p.add_argument("--ref-limit-gb", type=float, default=8.0)
    p.add_argument("--transfer-limit-gb", type=float, default=12.0)
    p.add_argument("--from", dest="source", type=pathlib.Path, help="re-render from an earlier JSON")
    p.add_argument("--json", type=pathlib.Path, default=RESULTS / "match_scaling.json")
    p.add_argument("--png", type=pathlib.Path, default=RESULTS / "match_scaling.png")
    p.add_argument("--note", help="caveat stored with the results and printed under the machine line")
    p.add_argument("--md", type=pathlib.Path, help="write the issue-4 section into this markdown file")
    args = p.parse_args(argv)
    if args.child:
        kind, h, w, backend, calls = args.child
        print(json.dumps(child(kind, int(h), int(w), backend, int(calls))))
        return 0
    args.ref_sizes, args.native_sizes, args.transfer_sizes = REF_SIZES, NATIVE_SIZES, TRANSFER_SIZES
    if args.quick:
        args.ref_sizes = args.native_sizes = [(16, 16), (32, 32), (48, 48)]
        args.transfer_sizes = [(64, 96)]
    if args.source:
        res = json.loads(args.source.read_text())
    else:
        t0 = time.perf_counter()
        parts = args.only.split(",")
        res = {"machine": machine()}
        prev = json.loads(args.json.read_text()) if args.json.exists() and len(parts) < 4 else {}
        for part in ("scaling", "match64", "radius", "transfer"):
            if part not in parts:
                if part in prev:
                    res[part] = prev[part]
                continue
            print(part, flush=True)
            if part == "scaling":
                res["scaling"] = scaling(args)
            elif part == "match64":
                res["match64"] = interleaved("match", (64, 64), args.rounds, args.calls, args.timeout)
            elif part == "radius":
                res["radius"] = radius_runs(args)
            else:
                res["transfer"] = transfer(args)
        res["elapsed_s"] = time.perf_counter() - t0 + (prev.get("elapsed_s", 0) if prev else 0)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1))
    if args.note:
        res["note"] = args.note
        args.json.write_text(json.dumps(res, indent=1))
    if "scaling" in res:
        plot(res, args.png)
    if all(k in res for k in ("scaling", "match64", "transfer")):
        md = markdown(res)
        print(md)
        if args.md:
            write_md(args.md, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
