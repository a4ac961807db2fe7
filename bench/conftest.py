"""pytest-benchmark runs of the cases in apnt/benchcases.py (DESIGN §7).

Collected only when bench/ is named (`pytest bench --benchmark-enable`): the project's testpaths is tests/.
Each test runs one provider alone; the side-by-side, interleaved comparison that BENCHMARKS.md reports is
bench/report.py (`make bench`).
"""
import pytest
import torch

from apnt import benchcases


def pytest_collect_file(file_path, parent):
    # bench_<family>.py, named like the op family (DESIGN §1), not test_*.py
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.fixture
def run_case(benchmark):
    """Time `benchcases.setup(case, provider, mode).step` after a compiling warmup; record memory held for backward."""
    def run(case, provider, mode):
        torch._dynamo.reset()
        bench = benchcases.setup(case, provider, mode)
        bench.step()   # compiles for the torch.compile providers: excluded from the timing
        benchmark.group = f"{case.id} {mode}"
        benchmark.extra_info["provider"] = provider.name
        if mode == "train":
            benchmark.extra_info["saved_bytes"] = benchcases.saved_bytes(bench)
        benchmark.pedantic(bench.step, rounds=5, warmup_rounds=1)
    return run
