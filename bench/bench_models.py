"""Family `models`: AHDRNet and APNT-Fusion inference and training steps of apnt/benchcases.py, every provider,
under pytest-benchmark (slow: a 1500x1000 eager AHDRNet call is about a minute; cases whose estimated memory
does not fit are skipped as OOM). The side-by-side comparison is bench/report.py --family models."""
import pytest

from apnt import benchcases

MATRIX = benchcases.matrix("models")


@pytest.mark.parametrize(("case", "provider", "mode"), MATRIX, ids=[benchcases.bench_id(*m) for m in MATRIX])
def test_models(run_case, case, provider, mode):
    run_case(case, provider, mode)
