"""Measure the cases of apnt/benchcases/ side by side and write BENCHMARKS.md and PNG plots (DESIGN §7).

    python bench/report.py [--quick] [--repeats N] [--rss eager,native]     # measure every family, write
    python bench/report.py --family dense                                    # issue 3 only
    python bench/report.py --family models,sweep --resolutions 256x256,512x512,1500x1000   # issue 7 only
    python bench/report.py --from bench/results/latest.json                  # rewrite from an earlier measurement

Families: attention, conv, dense, models (the cases of apnt/benchcases/) and sweep (one model call per
resolution in fresh processes: time and memory vs resolution). Measurements are merged into
bench/results/latest.json: a family measured now replaces that family's previous results (sweep points are
replaced one (model, backend, resolution) at a time), the other families are kept, each with the machine, date
and commit that measured it. Plots go to bench/results/*.png, the report to BENCHMARKS.md; sections of
BENCHMARKS.md written by other tools (bench/match_scaling.py's issue-4 section) are kept.
Every figure written is a measurement from the machine named in the report; GPU rows say "not measured".
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time
from dataclasses import dataclass
from typing import Callable

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout's apnt, installed or built in place

from apnt import benchcases as B  # noqa: E402
RESULTS = ROOT / "bench" / "results"
NAMES = {p.key: p.name for p in B.PROVIDERS}
FAMILIES = B.FAMILIES + ("sweep",)
# Sections of BENCHMARKS.md that other tools write (kept when the report is rewritten).
# bench/match_scaling.py's and bench/tile_agreement.py's SECTION
FOREIGN_SECTIONS = ("## patch correspondence (issue 4)", "## Tiled vs untiled (issue 7)")


# ---- targets --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """`provider` on the cases `applies` selects, in `mode`, measured by `metric`, compared with `threshold`.
    metric: "speedup" (versus's median / provider's), "best_peer" (fastest peer's median / provider's),
    "held" (memory held for backward / versus's), "rss" (peak RSS of one step / versus's), "seconds" (median)."""
    issue: str
    what: str
    applies: Callable[[object], bool]
    mode: str
    metric: str
    cmp: str
    threshold: float
    provider: str = B.OURS
    versus: str = B.BASELINE


def _family(*names):
    return lambda c: c.family in names


def _conv64(c):
    return c.family == "conv" and c.inputs[0][1][1] == 64


def _dense(side):
    return lambda c: c.family == "dense" and c.inputs[0][1][-2:] == (side, side)


def _model(name, mode, width=None, height=None):
    return lambda c: (isinstance(c, B.ModelCase) and c.model == name and c.mode == mode
                      and (width is None or (c.width, c.height) == (width, height)))


ISSUES = {"foundation": "issue “Foundation”, native backend",
          "3": "issue 3: dilated dense block, 1×64×H×W, C=64, G=32, L=6, d=2",
          "7": "issue 7: whole models (sizes W×H)"}
TARGETS = (
    Target("foundation", "attention inference, native vs eager NCHW", _family("attention"), "inference", "speedup",
           ">=", 1.5),
    Target("foundation", "attention inference, native vs best peer", _family("attention"), "inference", "best_peer",
           ">=", 1.0),
    Target("foundation", "conv2d 64->64 inference, native vs eager NCHW", _conv64, "inference", "speedup", ">=", 1.5),
    Target("foundation", "conv2d 64->64 inference, native vs best peer", _conv64, "inference", "best_peer", ">=", 1.0),
    Target("foundation", "forward+backward, native vs eager NCHW", _family("attention", "conv"), "train", "speedup",
           ">=", 1.3),
    Target("foundation", "memory held for backward, native / eager NCHW", _family("attention", "conv"), "train",
           "held", "<=", 0.5),
    # Issue 3 states its targets at 256x256 and adds 1.8x at 128x128 for inference vs eager NCHW.
    Target("3", "inference, native vs eager NCHW", _dense(256), "inference", "speedup", ">=", 2.5),
    Target("3", "inference, native vs eager NCHW", _dense(128), "inference", "speedup", ">=", 1.8),
    Target("3", "inference, native vs eager channels_last", _dense(256), "inference", "speedup", ">=", 1.5,
           versus="eager_cl"),
    Target("3", "inference, native vs torch.compile", _dense(256), "inference", "speedup", ">=", 1.0,
           versus="compile"),
    Target("3", "forward+backward, native vs eager NCHW", _dense(256), "train", "speedup", ">=", 1.5),
    Target("3", "memory held for backward, native / eager NCHW", _dense(256), "train", "held", "<=", 0.3),
    Target("3", "memory held for backward, native checkpoint=True / eager NCHW", _dense(256), "train", "held",
           "<=", 0.05, provider="native_ckpt"),
    Target("3", "peak RSS of a training step (forward+backward), native / eager NCHW", _dense(256), "train", "rss",
           "<=", 0.6),
    Target("7", "AHDRNet inference, native time", _model("ahdrnet", "inference", 1500, 1000), "inference",
           "seconds", "<=", 15),
    Target("7", "AHDRNet inference, native vs eager NCHW", _model("ahdrnet", "inference", 1500, 1000), "inference",
           "speedup", ">=", 4.5),
    Target("7", "AHDRNet inference, native vs eager NCHW (issue's 256×384, H×W)",
           _model("ahdrnet", "inference", 384, 256), "inference", "speedup", ">=", 2.5),
    Target("7", "AHDRNet inference, native vs best peer", _model("ahdrnet", "inference", 1500, 1000), "inference",
           "best_peer", ">=", 1.3),
    Target("7", "AHDRNet inference, peak RSS native / eager NCHW", _model("ahdrnet", "inference", 1500, 1000),
           "inference", "rss", "<=", 0.6),
    Target("7", "AHDRNet training step, native vs eager NCHW", _model("ahdrnet", "train"), "train", "speedup",
           ">=", 2.0),
    Target("7", "AHDRNet training step, native vs best peer", _model("ahdrnet", "train"), "train", "best_peer",
           ">=", 1.2),
    Target("7", "AHDRNet training step, peak RSS native / eager NCHW", _model("ahdrnet", "train"), "train", "rss",
           "<=", 0.6),
    Target("7", "APNT-Fusion inference (global texture search), native time", _model("apnt", "inference", 1500, 1000),
           "inference", "seconds", "<=", 180),
    Target("7", "APNT-Fusion training step, native vs eager NCHW", _model("apnt", "train"), "train", "speedup",
           ">=", 1.3),
)


def _row(rows, case_id, mode, provider):
    return next((r for r in rows if r["case"] == case_id and r["mode"] == mode and r["provider"] == provider), None)


def target_value(rows, case, t: Target):
    """The measured value of target `t` on `case`, or None when it was not measured."""
    row, base = _row(rows, case.id, t.mode, t.provider), _row(rows, case.id, t.mode, t.versus)
    if row is None or row["status"] != "ok":
        return None
    if t.metric == "seconds":
        return row["median_ms"] / 1e3 if row["median_ms"] else None
    if t.metric == "best_peer":
        return row["speedup_vs_best_peer"]
    if base is None or base["status"] != "ok":
        return None
    if t.metric == "speedup":
        return base["median_ms"] / row["median_ms"] if row["median_ms"] and base["median_ms"] else None
    if t.metric == "held":
        ok = row["saved_bytes"] is not None and base["saved_bytes"]
        return row["saved_bytes"] / base["saved_bytes"] if ok else None
    if t.metric == "rss":
        return B.rss_ratio(row.get("rss"), base.get("rss"))
    raise ValueError(f"unknown target metric {t.metric!r}")


def _targets_table(rows, issue):
    out = ["| target | case | measured | threshold | met |", "|---|---|---|---|---|"]
    unit = {"seconds": " s"}
    for t in (t for t in TARGETS if t.issue == issue):
        for case in B.ALL_CASES:
            row = _row(rows, case.id, t.mode, t.provider)
            if row is None or not t.applies(case):
                continue
            v = target_value(rows, case, t)
            suffix = unit.get(t.metric, "×")
            if v is None:
                measured, met = ("–", "not measured") if row["status"] == "ok" else (row["status"], "not measured")
            else:
                measured = f"{v:.2f}{suffix}" if suffix == "×" else f"{v:.1f}{suffix}"
                met = "yes" if (v >= t.threshold if t.cmp == ">=" else v <= t.threshold) else "**no**"
            out.append(f"| {t.what} | {case.title} | {measured} | {t.cmp} {t.threshold:g}{suffix} | {met} |")
    return out if len(out) > 2 else []


# ---- results file: one entry per family, merged across runs ---------------------------------------------------------

def load_results(path: pathlib.Path) -> dict:
    """{"version": 2, "families": {family: {"machine", "run", "rows"}}}; a results file of the earlier
    single-run layout ({"machine", "run", "rows"}) is split by the families of its cases."""
    if not path.exists():
        return {"version": 2, "families": {}}
    data = json.loads(path.read_text())
    if "families" in data:
        return data
    families: dict[str, dict] = {}
    for row in data.get("rows", []):   # rows of cases no longer defined are kept (as "other"), not rendered
        family = B.case_family(row["case"]) or "other"
        families.setdefault(family, {"machine": data["machine"], "run": data["run"], "rows": []})["rows"].append(row)
    return {"version": 2, "families": families}


def _sweep_key(p):
    return p["model"], p["provider"], p["width"], p["height"]


def merge(old: dict, new: dict) -> dict:
    """`new`'s families replace `old`'s; sweep points replace the points of the same (model, backend, size)."""
    families = dict(old["families"])
    for name, entry in new["families"].items():
        if name == "sweep" and "sweep" in families:
            before = families["sweep"]
            fresh = {_sweep_key(q) for q in entry["rows"]}
            keep = [dict(p, commit=p.get("commit", before.get("machine", {}).get("commit", "unknown")))
                    for p in before["rows"] if _sweep_key(p) not in fresh]
            entry = dict(entry, rows=keep + entry["rows"])
        families[name] = entry
    return {"version": 2, "families": families}


def all_rows(data: dict) -> list[dict]:
    return [r for name, f in data["families"].items() if name != "sweep" for r in f["rows"]]


# ---- markdown -------------------------------------------------------------------------------------------------------

def _x(v, digits=2):
    return "–" if v is None else f"{v:.{digits}f}×"


def _mib(n):
    return "–" if n is None else f"{n / 2**20:.1f} MiB"


def _ms(v):
    return f"{v:.0f}" if v >= 1000 else f"{v:.1f}"


def _spread(samples):
    return f"{min(samples):.0f}–{max(samples):.0f} (n={len(samples)})" if samples else "–"


def _rss(rss, base):
    if not rss:
        return "–"
    if "error" in rss:
        return rss["error"]
    ratio = B.rss_ratio(rss, base)
    return f"{rss['step_peak_mib']:.0f} MiB" + (f", {ratio:.2f}× eager" if ratio is not None else "") + \
        f" (process {rss['process_peak_mib']:.0f})"


def _case_table(case, rows, with_rss):
    head = ["mode", "provider", "median ms", "min–max ms (n)", "speedup vs eager NCHW", "vs best peer",
            "held for backward", "memory vs eager"] + (["peak RSS of one call"] if with_rss else [])
    out = [f"### {case.title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for mode in case.modes:
        base = (_row(rows, case.id, mode, B.BASELINE) or {}).get("rss")
        for r in (r for r in rows if r["case"] == case.id and r["mode"] == mode):
            name = f"**{NAMES[r['provider']]}**" if r["provider"] == B.OURS else NAMES[r["provider"]]
            if r["status"] != "ok":
                cells = [mode, name, r["status"]] + ["–"] * (len(head) - 3)
            else:
                cells = [mode, name, _ms(r["median_ms"]), _spread(r["samples_ms"]), _x(r["speedup_vs_eager"]),
                         _x(r["speedup_vs_best_peer"]), _mib(r["saved_bytes"]), _x(r["memory_vs_eager"])]
                cells += [_rss(r["rss"], base)] if with_rss else []
            out.append("| " + " | ".join(cells) + " |")
    gpu = ["any", "CUDA providers (native, triton, compile)", "not measured (no GPU on this machine)"]
    out.append("| " + " | ".join(gpu + ["–"] * (len(head) - 3)) + " |")
    return out + [""]


def _who(entry):
    m, run = entry["machine"], entry["run"]
    load = f"1-minute load average {run['loadavg'][0]:.1f} at the start, {run['loadavg'][1]:.1f} at the end"
    return (f"{m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), no GPU; torch {m['torch']}, "
            f"Python {m['python']}; apnt at `{m.get('commit', 'unknown')}`; measured {m['date']} in "
            f"{run['seconds'] / 60:.1f} min ({load})")


def _machine_lines(data):
    """One line per run: families measured together share their machine line."""
    groups: dict[str, list[str]] = {}
    for name in FAMILIES:
        if name in data["families"]:
            groups.setdefault(_who(data["families"][name]), []).append(name)
    return [f"- **{', '.join(names)}:** {who}." for who, names in groups.items()]


def _method(run):
    return [
        "**Method.** Each case runs every provider in one process, interleaved: "
        f"{run['warmup']} untimed warmup call(s) per provider (the first compiles: compile time excluded), then "
        f"rounds, each calling every provider once, the starting provider rotating per round: at least "
        f"{run['repeats']} rounds, more (up to {run.get('max_repeats', run['repeats'])}) until every provider has "
        f"run {run.get('min_seconds', 0):g} s in total; n = samples per provider. Slow cases — some "
        f"non-compiling provider's first call took over {run.get('slow_seconds', B.SLOW_SECONDS):g} s (the "
        f"whole-model cases at 1500×1000: an eager AHDRNet call is about a minute here) — get one warmup call and "
        f"exactly {run.get('slow_rounds', B.SLOW_ROUNDS)} rounds. "
        "Times are per call (float32, CPU); the table gives the median and the range. "
        "*Speedup* = eager NCHW median / provider median (> 1 is faster). *vs best peer* = the fastest "
        "peer's median / this median (peers: eager NCHW, eager channels_last, torch.compile, compile+freezing). "
        "*Held for backward* = bytes of the unique storages autograd saves in the forward "
        "(`saved_tensors_hooks`, each untyped storage once; input and parameter storages excluded); "
        "*memory vs eager* = that / eager NCHW's.", "",
        "**Cases.** Ops (families attention, conv, dense): one call at batch 1 with random inputs and "
        "fan-in-scaled random weights; `train` = forward + backward. Whole models (family models): "
        "`apnt.models.create(name)` with random weights (seeded, the same for every provider), random LDR "
        "brackets in [0, 1] with exposure times 1:4:16; inference = one `model(ldr, exposure)` call under "
        "`no_grad`, untiled; the training step = forward on a batch of 4 128×128 crops, μ-law L1 loss against a "
        "random target, backward and an Adam step. Model sizes are width×height. A provider whose estimated peak "
        "memory exceeds 90 % of the machine's available memory is not run and says `OOM (needs ~N GB by "
        "estimate)` (activations per pixel from measured slopes; APNT-Fusion's reference texture search also "
        "holds its Lq×Lk score matrices, ~11 B per query-key pair measured by bench/match_scaling.py — at "
        "1500×1000 that is 93,750² pairs: the score matrix alone is ~35 GB). Cases: apnt/benchcases/.", "",
        "**Providers.** `eager NCHW`: the `reference` backend (pure PyTorch) on contiguous tensors. "
        "`eager channels_last`: the same with inputs and weights (for a model: its weights, which every "
        "convolution's output then follows) converted to channels_last beforehand. "
        "`torch.compile`: `torch.compile(reference, fullgraph=True, dynamic=False)` (inductor) of the op or the "
        "whole model. `compile+freezing`: the same with `torch._inductor.config.freezing = True` while dynamo "
        "traces, compiled under `no_grad` with the weights as `nn.Module` parameters, so inductor folds and "
        "prepacks them (inference only). `native`: the C++ backend, inputs NCHW as a user passes them "
        "(outputs channels_last). `native, checkpoint=True` (dense block, training): native keeping only the "
        "input for backward and recomputing the block.", "",
    ]


def _sweep_section(entry, plots):
    rows = sorted(entry["rows"], key=lambda p: (p["model"], p["provider"], p["width"] * p["height"]))
    out = ["## Time and memory vs resolution", "",
           "One inference call per point, in a fresh process per point: setup, one warmup call, then the measured "
           "call (time = that call's wall clock; peak RSS = the peak above the steady state before it, and the "
           "process's peak over its life). Untiled `model(ldr, exposure)` with random weights; where the whole "
           "image does not fit, `native` runs through `apnt.fuse(..., max_memory=)` (tiled, marked) and the "
           "reference says OOM (by estimate, not tried). Sizes are width×height; APNT-Fusion searches the whole "
           f"image up to 1500×1000 pixels and a radius beyond. Latest run: {_who(entry)}; points of earlier runs "
           "are kept, and each row names the apnt commit that measured it.", "",
           "| model | backend | size | time s | peak RSS of the call | process peak RSS | note | apnt |",
           "|---|---|---|---|---|---|---|---|"]
    for p in rows:
        name = f"{B.MODEL_TITLES.get(p['model'], p['model'])} | {NAMES[p['provider']]} | {p['width']}×{p['height']}"
        commit = f"`{p['commit']}`" if p.get("commit") else "–"
        if p["status"] != "ok":
            out.append(f"| {name} | – | – | – | {p['status']} | {commit} |")
            continue
        out.append(f"| {name} | {p['step_seconds']:.2f} | {p['step_peak_mib']:.0f} MiB | "
                   f"{p['process_peak_mib']:.0f} MiB | {'tiled (apnt.fuse max_memory)' if p['tiled'] else ''} | "
                   f"{commit} |")
    return out + [""] + [f"![{q.stem}]({q})" for q in plots] + [""]


def _foreign_sections(path):
    """Sections of the current BENCHMARKS.md that other tools own, verbatim (to keep them)."""
    if not path.exists():
        return []
    text, kept = path.read_text(), []
    for heading in FOREIGN_SECTIONS:
        start = text.find(heading + "\n")
        if start >= 0:
            end = text.find("\n## ", start + len(heading))
            kept.append(text[start:end if end >= 0 else len(text)].rstrip("\n") + "\n")
    return kept


def write_markdown(data, plots, sweep_plots, path):
    rows = all_rows(data)
    runs = [f["run"] for n, f in data["families"].items() if n != "sweep"]
    with_rss = any(r.get("rss") for r in rows)
    lines = ["# Benchmarks", "",
             "Written by `make bench` (`bench/report.py`) from measurements, never by hand. `bench/report.py "
             "--family dense` (issue 3) or `--family models,sweep` (issue 7) remeasures some families and keeps the "
             "others' results (bench/results/latest.json).", "",
             "**Machine** (the machine is shared: absolute times are noisy; the ratios from interleaved runs are "
             "what to read):", ""] + _machine_lines(data) + [""]
    if runs:
        lines += _method(runs[-1])
    if with_rss:
        lines += ["*Peak RSS of one call* (measured for the providers shown): a fresh process per provider sets up, "
                  "warms up, releases freed heap (`malloc_trim`), resets the peak mark (`/proc/self/clear_refs`) and "
                  "runs one call (for a training case: one step); the figure is the peak above that steady state "
                  "(in parentheses: the process's peak over its life, torch import and compilation included).", ""]
    for issue, title in ISSUES.items():
        table = _targets_table(rows, issue)
        if table:
            lines += [f"## Targets ({title})", ""] + table + [""]
    if rows:
        lines += ["## Results", ""]
        for case in B.ALL_CASES:
            if any(r["case"] == case.id for r in rows):
                lines += _case_table(case, rows, with_rss)
        lines += ["## Plots", ""] + [f"![{p.stem}]({os.path.relpath(p, path.parent)})" for p in plots] + [""]
    if "sweep" in data["families"]:
        lines += _sweep_section(data["families"]["sweep"], [pathlib.Path(os.path.relpath(p, path.parent))
                                                            for p in sweep_plots])
    text = "\n".join(lines)
    for section in _foreign_sections(path):
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


# ---- plots ----------------------------------------------------------------------------------------------------------

def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _colour(key):
    return f"C{[q.key for q in B.PROVIDERS].index(key)}"   # one colour per provider everywhere


def write_plots(rows):
    plt = _pyplot()
    plots = []
    panels = [(mode, "speedup_vs_eager", f"speedup vs eager NCHW, {B.MODE_TITLES[mode]} (higher is better)")
              for mode in B.MODES] + [("train", "memory_vs_eager", "memory held for backward vs eager NCHW "
                                                                   "(lower is better)")]
    for mode, key, title in panels:
        cases = [c for c in B.ALL_CASES if any(r["case"] == c.id and r["mode"] == mode for r in rows)]
        if not cases:
            continue
        providers = [p for p in B.PROVIDERS if any(r["provider"] == p.key and r["mode"] == mode for r in rows)]
        fig, ax = plt.subplots(figsize=(10, 1.2 + 0.9 * len(cases)))
        height = 0.8 / len(providers)
        for i, p in enumerate(providers):
            vals = [((_row(rows, c.id, mode, p.key) or {}).get(key) or 0) for c in cases]
            ax.barh([j + i * height for j in range(len(cases))], vals, height, label=p.name, color=_colour(p.key))
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_yticks([j + 0.4 - height / 2 for j in range(len(cases))], [c.title for c in cases])
        ax.invert_yaxis()
        ax.set_xlabel("× eager NCHW (missing bar: not run, e.g. OOM)")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        path = RESULTS / f"{key.split('_')[0]}_{mode}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        plots.append(path)
    return plots


def write_sweep_plots(points):
    """time_vs_resolution.png and memory_vs_resolution.png: one panel per model, one line per backend, log axes;
    hollow markers are tiled runs."""
    plt = _pyplot()
    ok = [p for p in points if p["status"] == "ok"]
    models = [m for m in B.SWEEP_MODELS if any(p["model"] == m for p in ok)]
    if not models:
        return []
    plots = []
    for key, ylabel, name in (("step_seconds", "seconds per call", "time_vs_resolution"),
                              ("process_peak_mib", "process peak RSS (GiB)", "memory_vs_resolution")):
        fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.2), squeeze=False)
        for ax, model in zip(axes[0], models):
            for provider in dict.fromkeys(p["provider"] for p in ok if p["model"] == model):
                pts = sorted((p for p in ok if p["model"] == model and p["provider"] == provider),
                             key=lambda p: p["width"] * p["height"])
                xs = [p["width"] * p["height"] / 1e6 for p in pts]
                ys = [p[key] / (1024 if key.endswith("mib") else 1) for p in pts]
                ax.plot(xs, ys, "-", color=_colour(provider), label=NAMES[provider].replace("eager NCHW", "reference"))
                for x, y, p in zip(xs, ys, pts):
                    face = "none" if p["tiled"] else _colour(provider)
                    ax.plot(x, y, "o", color=_colour(provider), markerfacecolor=face)
            ax.set_xscale("log")
            ax.set_yscale("log")
            sizes = {p["width"] * p["height"] / 1e6: f"{p['width']}×{p['height']}" for p in ok if p["model"] == model}
            ax.set_xticks(list(sizes), list(sizes.values()), rotation=30, fontsize=8)   # the measured sizes
            ax.minorticks_off()
            ax.set_xlabel("megapixels (hollow: tiled through apnt.fuse)")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{B.MODEL_TITLES.get(model, model)} inference", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = RESULTS / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        plots.append(path)
    return plots


# ---- measuring ------------------------------------------------------------------------------------------------------

def _keys(text, known, what):
    keys = tuple(k.strip() for k in (text or "").split(",") if k.strip())
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise SystemExit(f"report.py: unknown {what} {', '.join(unknown)}; expected any of {', '.join(known)}")
    return keys


def measure(args, families) -> dict:
    """Measure `families` now: {"version": 2, "families": {family: {"machine", "run", "rows"}}}."""
    out: dict[str, dict] = {}
    cases = tuple(f for f in families if f != "sweep")
    if cases:
        start, load = time.perf_counter(), os.getloadavg()[0]
        rows = B.summarize(B.run_all(quick=args.quick, rss=args.rss, repeats=args.repeats, families=cases))
        run = dict(B.run_settings(args.quick, args.repeats), quick=args.quick,
                   seconds=time.perf_counter() - start, loadavg=[load, os.getloadavg()[0]])
        info = B.machine()
        for family in cases:
            out[family] = {"machine": info, "run": run, "rows": [r for r in rows if B.case_family(r["case"]) == family]}
    if "sweep" in families:
        start, load = time.perf_counter(), os.getloadavg()[0]
        points = B.sweep(models=args.sweep_models, resolutions=args.resolutions, providers=args.sweep_providers,
                         timeout=args.timeout)
        run = {"seconds": time.perf_counter() - start, "loadavg": [load, os.getloadavg()[0]],
               "resolutions": [list(r) for r in args.resolutions], "timeout": args.timeout}
        info = B.machine()
        out["sweep"] = {"machine": info, "run": run, "rows": [dict(p, commit=info["commit"]) for p in points]}
    return {"version": 2, "families": out}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="source", type=pathlib.Path, help="results JSON of an earlier run (no measuring)")
    p.add_argument("--family", default=",".join(FAMILIES), metavar="F,...",
                   help=f"families to measure now (default all: {','.join(FAMILIES)}); the others' earlier results "
                        "are kept")
    p.add_argument("--quick", action="store_true", help="the quick cases and 3 repetitions")
    p.add_argument("--repeats", type=int, help="timed rounds per case (default 9, quick 3; slow cases 3)")
    p.add_argument("--rss", default="eager,native", metavar="KEYS",
                   help="providers whose peak RSS of one call is measured in a fresh subprocess, comma-separated "
                        f"({', '.join(NAMES)}; default eager,native, '' for none); the compile providers recompile "
                        "there (slow)")
    p.add_argument("--resolutions", default=",".join(f"{w}x{h}" for w, h in B.SWEEP_RESOLUTIONS), metavar="WxH,...",
                   help="sweep sizes, width x height (default %(default)s)")
    p.add_argument("--sweep-models", default=",".join(B.SWEEP_MODELS), metavar="M,...")
    p.add_argument("--sweep-providers", default=",".join(B.SWEEP_PROVIDERS), metavar="KEYS",
                   help="providers of the sweep (default %(default)s)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per sweep point (process)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice, one per core)")
    p.add_argument("--results", type=pathlib.Path, default=RESULTS / "latest.json",
                   help="results JSON merged into and rewritten (default %(default)s)")
    p.add_argument("--out", type=pathlib.Path, default=ROOT / "BENCHMARKS.md")
    args = p.parse_args(argv)
    families = _keys(args.family, FAMILIES, "family")
    args.rss = _keys(args.rss, NAMES, "provider")
    args.sweep_providers = _keys(args.sweep_providers, NAMES, "provider")
    args.sweep_models = _keys(args.sweep_models, B.SWEEP_MODELS, "model")
    try:
        args.resolutions = B.parse_resolutions(args.resolutions)
    except ValueError as e:
        raise SystemExit(f"report.py: {e}") from None
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    if args.source:
        data = load_results(args.source)
    else:
        data = merge(load_results(args.results), measure(args, families))
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(data, indent=1))
    sweep = data["families"].get("sweep", {}).get("rows", [])
    write_markdown(data, write_plots(all_rows(data)), write_sweep_plots(sweep), args.out.resolve())
    print(f"wrote {args.out} and plots in {os.path.relpath(RESULTS)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
