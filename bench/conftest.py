"""pytest-benchmark runs of the cases in apnt/benchcases.py (DESIGN §7).

Collected only when bench/ is named (`pytest bench --benchmark-enable`): the project's testpaths is tests/.
Each test runs one provider alone; the side-by-side, interleaved comparison that BENCHMARKS.md reports is
bench/report.py (`make bench`).
"""
import time

import pytest
import torch

from apnt import benchcases


def pytest_collect_file(file_path, parent):
    # bench_<family>.py, named like the op family (DESIGN §1), not test_*.py. A file named on the command line
    # is collected by pytest itself whatever its name: collecting it here too would run every test twice.
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def _seconds(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@pytest.fixture
def run_case(benchmark):
    """Time `benchcases.setup(case, provider, mode).step` after a compiling warmup; record memory held for
    backward. Slow cases (a call over benchcases.SLOW_SECONDS) get SLOW_ROUNDS rounds and no further warmup."""
    def run(case, provider, mode):
        status = benchcases.oom_status(case, provider, mode)
        if status:
            pytest.skip(status)
        torch._dynamo.reset()
        bench = benchcases.setup(case, provider, mode)
        seconds = _seconds(bench.step)   # compiles for the torch.compile providers: excluded from the timing
        if provider.compile:
            seconds = _seconds(bench.step)   # a compiled call's own time, to tell slow cases
        slow = seconds > benchcases.SLOW_SECONDS
        benchmark.group = f"{case.id} {mode}"
        benchmark.extra_info["provider"] = provider.name
        if mode == "train":
            benchmark.extra_info["saved_bytes"] = benchcases.saved_bytes(bench)
        benchmark.pedantic(bench.step, rounds=benchcases.SLOW_ROUNDS if slow else 5, warmup_rounds=0 if slow else 1)
    return run
