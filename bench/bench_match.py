"""Family `match`: patch_match (global search, C=256) and patch_transfer (scale 4) under pytest-benchmark.

These ops take an index map and no weights, so they do not fit apnt/benchcases/'s Case/Provider pattern
(channels_last / torch.compile providers, train mode); the cases live in bench/match_scaling.py, which also
does the side-by-side subprocess measurements (time and peak RSS vs map size) that BENCHMARKS.md reports.
Run: `pytest bench/bench_match.py --benchmark-enable`.
"""
import pytest

try:
    import match_scaling as ms          # bench/ is on sys.path when pytest collects it (rootdir conftest)
except ImportError:
    from bench import match_scaling as ms

MATCH = [(s, b) for s in ms.BENCH_MATCH_SIZES for b in ms.BACKENDS]
TRANSFER = [(s, b) for s in ms.BENCH_TRANSFER_SIZES for b in ms.BACKENDS]


@pytest.mark.parametrize(("size", "backend"), MATCH, ids=[f"patch_match-C256-{h}x{w}-{b}" for (h, w), b in MATCH])
def test_patch_match(benchmark, size, backend):
    run = ms.setup_match(size, backend)
    run()
    benchmark.group = f"patch_match C=256 {size[0]}x{size[1]} global"
    benchmark.pedantic(run, rounds=3, warmup_rounds=0)


@pytest.mark.parametrize(("size", "backend"), TRANSFER,
                         ids=[f"patch_transfer-s4-{h}x{w}-{b}" for (h, w), b in TRANSFER])
def test_patch_transfer(benchmark, size, backend):
    run = ms.setup_transfer(size, backend)
    run()
    benchmark.group = f"patch_transfer s=4 k=3 Cv=64 {size[0]}x{size[1]} indices"
    benchmark.pedantic(run, rounds=3, warmup_rounds=0)
