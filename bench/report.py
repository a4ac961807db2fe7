"""Measure the cases of apnt/benchcases.py side by side and write BENCHMARKS.md and PNG plots (DESIGN §7).

    python bench/report.py [--quick] [--repeats N] [--rss eager,native]  # measure now (interleaved), write
    python bench/report.py --from bench/results/latest.json  # rewrite from an earlier measurement

Measurements go to bench/results/latest.json, plots to bench/results/*.png, the report to BENCHMARKS.md.
Every figure written is a measurement from the machine named in the report; GPU rows say "not measured".
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout's apnt, installed or built in place

from apnt import benchcases as B  # noqa: E402
RESULTS = ROOT / "bench" / "results"
NAMES = {p.key: p.name for p in B.PROVIDERS}

# (description, case filter, mode, row field, comparison, threshold): the issue "Foundation" targets for native.
TARGETS = (
    ("attention inference, native vs eager NCHW", lambda c: c.family == "attention", "inference",
     "speedup_vs_eager", ">=", 1.5),
    ("attention inference, native vs best peer", lambda c: c.family == "attention", "inference",
     "speedup_vs_best_peer", ">=", 1.0),
    ("conv2d 64->64 inference, native vs eager NCHW", lambda c: c.family == "conv" and c.inputs[0][1][1] == 64,
     "inference", "speedup_vs_eager", ">=", 1.5),
    ("conv2d 64->64 inference, native vs best peer", lambda c: c.family == "conv" and c.inputs[0][1][1] == 64,
     "inference", "speedup_vs_best_peer", ">=", 1.0),
    ("forward+backward, native vs eager NCHW", lambda c: True, "train", "speedup_vs_eager", ">=", 1.3),
    ("memory held for backward, native / eager NCHW", lambda c: True, "train", "memory_vs_eager", "<=", 0.5),
)


def _x(v, digits=2):
    return "–" if v is None else f"{v:.{digits}f}×"


def _mib(n):
    return "–" if n is None else f"{n / 2**20:.1f} MiB"


def _spread(samples):
    return f"{min(samples):.0f}–{max(samples):.0f} (n={len(samples)})" if samples else "–"


def _rss(rss, base):
    if not rss:
        return "–"
    if "error" in rss:
        return rss["error"]
    ratio = f", {rss['step_peak_mib'] / base['step_peak_mib']:.2f}× eager" if base and "error" not in base else ""
    return f"{rss['step_peak_mib']:.0f} MiB{ratio} (process {rss['process_peak_mib']:.0f})"


def _case_table(case, rows, with_rss):
    head = ["mode", "provider", "median ms", "min–max ms (n)", "speedup vs eager NCHW", "vs best peer",
            "held for backward", "memory vs eager"] + (["peak RSS of one call"] if with_rss else [])
    out = [f"### {case.title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for mode in B.MODES:
        for r in (r for r in rows if r["case"] == case.id and r["mode"] == mode):
            name = f"**{NAMES[r['provider']]}**" if r["provider"] == B.OURS else NAMES[r["provider"]]
            base = next((b["rss"] for b in rows if b["case"] == case.id and b["mode"] == mode
                         and b["provider"] == B.BASELINE), None)
            if r["status"] != "ok":
                cells = [mode, name, r["status"]] + ["–"] * (len(head) - 3)
            else:
                cells = [mode, name, f"{r['median_ms']:.1f}", _spread(r["samples_ms"]), _x(r["speedup_vs_eager"]),
                         _x(r["speedup_vs_best_peer"]), _mib(r["saved_bytes"]), _x(r["memory_vs_eager"])]
                cells += [_rss(r["rss"], base)] if with_rss else []
            out.append("| " + " | ".join(cells) + " |")
    gpu = ["any", "CUDA providers (native, triton, compile)", "not measured (no GPU on this machine)"]
    out.append("| " + " | ".join(gpu + ["–"] * (len(head) - 3)) + " |")
    return out + [""]


def _targets_table(rows):
    out = ["| target | case | measured | threshold | met |", "|---|---|---|---|---|"]
    for desc, wanted, mode, key, cmp, threshold in TARGETS:
        for case in B.CASES:
            row = next((r for r in rows if r["case"] == case.id and r["mode"] == mode and r["provider"] == B.OURS),
                       None)
            if row is None or not wanted(case):
                continue
            v = row[key]
            met = "not measured" if v is None else ("yes" if (v >= threshold if cmp == ">=" else v <= threshold)
                                                    else "**no**")
            out.append(f"| {desc} | {case.title} | {_x(v)} | {cmp} {threshold}× | {met} |")
    return out


def write_markdown(data, plots, path):
    m, rows, run = data["machine"], data["rows"], data["run"]
    with_rss = any(r.get("rss") for r in rows)
    lines = [
        "# Benchmarks", "",
        "Written by `make bench` (`bench/report.py`) from measurements, never by hand.", "",
        f"**Machine:** {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), no GPU; "
        f"torch {m['torch']}, Python {m['python']}; apnt at `{m.get('commit', 'unknown')}`; measured {m['date']} in "
        f"{run['seconds'] / 60:.1f} min. "
        f"The machine is shared (1-minute load average {run['loadavg'][0]:.1f} at the start, "
        f"{run['loadavg'][1]:.1f} at the end, on {m['cores']} cores): absolute times are noisy; the ratios "
        "from interleaved runs are what to read.", "",
        "**Method.** Each case runs every provider in one process, interleaved: "
        f"{run['warmup']} untimed warmup call(s) per provider (the first compiles: compile time excluded), then "
        f"rounds, each calling every provider once, the starting provider rotating per round: at least "
        f"{run['repeats']} rounds, more (up to {run.get('max_repeats', run['repeats'])}) until every provider has "
        f"run {run.get('min_seconds', 0):g} s in total; n = samples per provider. "
        "Times are per call (batch 1, float32, CPU); the table gives the median and the range. "
        "*Speedup* = eager NCHW median / provider median (> 1 is faster). *vs best peer* = the fastest "
        "non-native provider's median / this median (peers: eager NCHW, eager channels_last, torch.compile, "
        "compile+freezing). *Held for backward* = bytes of the unique storages autograd saves in the forward "
        "(`saved_tensors_hooks`, each untyped storage once; input and parameter storages excluded); "
        "*memory vs eager* = that / eager NCHW's.", "",
        "**Providers.** `eager NCHW`: the `reference` backend (pure PyTorch) on contiguous tensors. "
        "`eager channels_last`: the same with inputs and weights converted to channels_last beforehand. "
        "`torch.compile`: `torch.compile(reference, fullgraph=True, dynamic=False)` (inductor). "
        "`compile+freezing`: the same with `torch._inductor.config.freezing = True` while dynamo traces, "
        "compiled under `no_grad` with the weights as `nn.Module` parameters, so inductor folds and prepacks "
        "them (inference only). `native`: the C++ backend, inputs NCHW as a user passes them "
        "(outputs channels_last). Cases: apnt/benchcases.py.", "",
    ]
    if with_rss:
        lines += ["*Peak RSS of one call* (measured for the providers shown): a fresh process per provider sets up, warms up, releases freed heap "
                  "(`malloc_trim`), resets the peak mark (`/proc/self/clear_refs`) and runs one call; the figure is "
                  "the peak above that steady state (in parentheses: the process's peak over its life, torch "
                  "import and compilation included).", ""]
    lines += ["## Targets (issue “Foundation”, native backend)", ""] + _targets_table(rows) + [""]
    lines += ["## Results", ""]
    for case in B.CASES:
        if any(r["case"] == case.id for r in rows):
            lines += _case_table(case, rows, with_rss)
    lines += ["## Plots", ""] + [f"![{p.stem}]({os.path.relpath(p, path.parent)})" for p in plots] + [""]
    path.write_text("\n".join(lines))


def write_plots(rows):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = []
    panels = [(mode, "speedup_vs_eager", f"speedup vs eager NCHW, {B.MODE_TITLES[mode]} (higher is better)")
              for mode in B.MODES] + [("train", "memory_vs_eager", "memory held for backward vs eager NCHW "
                                                                   "(lower is better)")]
    for mode, key, title in panels:
        cases = [c for c in B.CASES if any(r["case"] == c.id and r["mode"] == mode for r in rows)]
        providers = B.providers_for(mode)
        fig, ax = plt.subplots(figsize=(10, 1.2 + 0.9 * len(cases)))
        height = 0.8 / len(providers)
        for i, p in enumerate(providers):
            vals = [next((r[key] for r in rows if r["case"] == c.id and r["mode"] == mode
                          and r["provider"] == p.key), None) or 0 for c in cases]
            ax.barh([j + i * height for j in range(len(cases))], vals, height, label=p.name,
                    color=f"C{[q.key for q in B.PROVIDERS].index(p.key)}")   # one colour per provider everywhere
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_yticks([j + 0.4 - height / 2 for j in range(len(cases))], [c.title for c in cases])
        ax.invert_yaxis()
        ax.set_xlabel("× eager NCHW")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        path = RESULTS / f"{key.split('_')[0]}_{mode}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        plots.append(path)
    return plots


def measure(args):
    start, load = time.perf_counter(), os.getloadavg()[0]
    rss = tuple(k for k in args.rss.split(",") if k)
    results = B.run_all(quick=args.quick, rss=rss, repeats=args.repeats)
    run = B.run_settings(args.quick, args.repeats)
    run.update(quick=args.quick, seconds=time.perf_counter() - start, loadavg=[load, os.getloadavg()[0]])
    return {"machine": B.machine(), "rows": B.summarize(results), "run": run}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="source", type=pathlib.Path, help="results JSON of an earlier run")
    p.add_argument("--quick", action="store_true", help="the quick cases and 3 repetitions")
    p.add_argument("--repeats", type=int, help="timed rounds per case (default 9, quick 3)")
    p.add_argument("--rss", default="", metavar="KEYS",
                   help="providers whose peak RSS of one call is measured in a fresh subprocess, comma-separated "
                        f"({', '.join(NAMES)}); the compile providers recompile there (slow)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice, one per core)")
    p.add_argument("--out", type=pathlib.Path, default=ROOT / "BENCHMARKS.md")
    args = p.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    if args.source:
        data = json.loads(args.source.read_text())
    else:
        data = measure(args)
        (RESULTS / "latest.json").write_text(json.dumps(data, indent=1))
    write_markdown(data, write_plots(data["rows"]), args.out.resolve())
    print(f"wrote {args.out} and plots in {RESULTS.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
