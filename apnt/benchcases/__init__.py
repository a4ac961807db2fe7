"""Benchmark cases (DESIGN §7): the shapes, providers and measurements shared by `apnt bench`,
bench/ (pytest-benchmark) and bench/report.py (BENCHMARKS.md).

A *case* is one thing to time: an op at one AHDRNet shape (`Case`, families attention / conv / dense) or a
whole model (`ModelCase`, family models: inference on one bracket, or a training step). A *provider* is one
way to run it: `reference` eager NCHW (the baseline), eager channels_last, `torch.compile(reference)`
(inductor), compile with inductor freezing (inference only), `native` (inputs NCHW, as a user passes them)
and, for the dense block, `native` with `checkpoint=True` (training only). A *mode* is `inference` (no_grad)
or `train` (forward + backward; for a model, + the Adam step). `setup(case, provider, mode)` builds one
runnable `Bench` through the case's builder, used by both the speed runs (`Bench.step`) and the memory runs
(`saved_bytes`, `peak_rss`).

`measure(case, mode)` runs every provider interleaved (round-robin with a rotating start, after warmups
that exclude compile time) and returns one `Result` per provider; `summarize` adds the ratios. A provider
whose estimated peak memory exceeds what the machine has is not run: it says `OOM (needs ~N GB ...)`.
`sweep` times one model call per resolution in fresh processes (BENCHMARKS.md's time / memory vs resolution).
The package: `cases` (providers, op and model cases, the registry), `build` (`setup`), `memory` (held for
backward, OOM estimates, peak RSS in a fresh process), `timing` (`measure`, `summarize`, whole runs), `sweep` and
`console` (`machine`, the terminal table, `apnt bench`). Everything is re-exported here. It does not import pytest.
"""
from __future__ import annotations

from apnt.benchcases.cases import (MODES, MODE_TITLES, FAMILIES, SLOW_SECONDS, SLOW_ROUNDS,
                                   MEMORY_HEADROOM, Provider, PROVIDERS, BASELINE, OURS, OP_PROVIDERS,
                                   find_provider, Case, _dense_block, CASES, MODEL_TITLES, ModelCase,
                                   AnyCase, TRAIN_CROP, MODEL_CASES, ALL_CASES, providers_for, matrix,
                                   bench_id, find_case, case_family)  # noqa: F401
from apnt.benchcases.build import (Bench, OpModule, _bracket, setup)  # noqa: F401
from apnt.benchcases.memory import (saved_bytes, available_bytes, oom_status, _rss_child, _case_spec,
                                    peak_rss)  # noqa: F401
from apnt.benchcases.timing import (Result, _failure, measure, summarize, rss_ratio, selected_cases,
                                    run_settings, run_all)  # noqa: F401
from apnt.benchcases.sweep import (SWEEP_MODELS, SWEEP_PROVIDERS, SWEEP_RESOLUTIONS, TILE_BUDGET,
                                   parse_resolutions, sweep)  # noqa: F401
from apnt.benchcases.console import (machine, format_table, parse_families, run_cli, _main)  # noqa: F401
