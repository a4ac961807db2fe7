"""Family `dense`: every case x provider x mode of apnt/benchcases/ under pytest-benchmark."""
import pytest

from apnt import benchcases

MATRIX = benchcases.matrix("dense")


@pytest.mark.parametrize(("case", "provider", "mode"), MATRIX, ids=[benchcases.bench_id(*m) for m in MATRIX])
def test_dense(run_case, case, provider, mode):
    run_case(case, provider, mode)
