"""apnt/benchcases/: the case matrix builds, and every new kind of case (dense block, model inference, model
training step) runs through `setup(...).step()` for each eager / native provider it lists, at tiny sizes.
The compile providers are left out (an inductor compile per case would take minutes); `apnt bench` and
bench/ run them."""
from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
import sys

import pytest

from apnt import benchcases as B
from apnt_test_helpers import requires_native

DENSE = next(c for c in B.CASES if c.family == "dense")


def _tiny_cases():
    """One tiny case per new kind: the dense block, and each model's inference and training step."""
    models = [next(c for c in B.MODEL_CASES if c.model == m and c.mode == mode)
              for m in B.SWEEP_MODELS for mode in B.MODES]
    return [DENSE.shrunk(8, 12)] + [c.shrunk(16, 20) for c in models]


def test_matrix_builds():
    ids = [B.bench_id(*m) for family in B.FAMILIES for m in B.matrix(family)]
    assert ids and len(ids) == len(set(ids))
    assert {c.family for c in B.ALL_CASES} == set(B.FAMILIES)
    for family in B.FAMILIES:
        for case, provider, mode in B.matrix(family):
            assert case.family == family and mode in case.modes and mode in provider.modes
    dense_train = {p.key for p in B.providers_for(DENSE, "train")}
    assert {"eager", "eager_cl", "compile", "native", "native_ckpt"} == dense_train
    assert "compile_freezing" in {p.key for p in B.providers_for(DENSE, "inference")}
    sizes = {(c.model, c.mode, c.batch, c.width, c.height) for c in B.MODEL_CASES}
    for model in ("ahdrnet", "apnt"):
        assert {(model, "inference", 1, 512, 512), (model, "inference", 1, 1500, 1000),
                (model, "train", 4, 128, 128)} <= sizes
    assert B.find_case(B._case_spec(B.MODEL_CASES[0].shrunk())) == B.MODEL_CASES[0].shrunk()


def test_setup_refuses_what_a_case_does_not_run():
    with pytest.raises(ValueError, match="does not run"):
        B.setup(DENSE, B.find_provider("compile_freezing"), "train")
    with pytest.raises(ValueError, match="no train mode"):
        B.setup(B.MODEL_CASES[0], B.find_provider("native"), "train")


@requires_native
@pytest.mark.parametrize("case", _tiny_cases(), ids=lambda c: c.id)
def test_tiny_case_runs_for_each_provider(case):
    for mode in case.modes:
        for provider in B.providers_for(case, mode):
            if provider.compile:
                continue
            bench = B.setup(case, provider, mode)
            out = bench.step()
            assert out is not None
            if mode == "train":
                held = B.saved_bytes(bench)
                # checkpoint=True keeps only x, an input: nothing beyond inputs and parameters is held.
                assert held == 0 if provider.key == "native_ckpt" else held > 0


def test_oom_is_estimated_not_tried(monkeypatch):
    apnt_big = B.find_case("apnt-inference-1500x1000")
    status = B.oom_status(apnt_big, B.find_provider("eager"), "inference", available=23 * 10**9)
    assert status.startswith("OOM (needs ~") and "GB" in status
    assert B.oom_status(apnt_big, B.find_provider("native"), "inference", available=23 * 10**9) is None
    # measure() reports every provider as OOM without building anything when nothing fits
    monkeypatch.setattr(B.memory, "available_bytes", lambda: 1)
    monkeypatch.setattr(B.timing, "setup", lambda *a: pytest.fail("setup called for a case that cannot fit"))
    results = B.measure(B.MODEL_CASES[0], "inference", repeats=1, warmup=1)
    assert results and all(r.status.startswith("OOM") and not r.samples_ms for r in results)


@requires_native
def test_measure_interleaves_and_summarizes():
    case = dataclasses.replace(DENSE.shrunk(8, 8), providers=("eager", "eager_cl", "native"))
    rows = B.summarize(B.measure(case, "train", repeats=2, warmup=1, min_seconds=0, max_repeats=2))
    assert {r["provider"] for r in rows} == {"eager", "eager_cl", "native"}
    assert all(r["status"] == "ok" and len(r["samples_ms"]) == 2 for r in rows)
    eager = next(r for r in rows if r["provider"] == "eager")
    assert eager["speedup_vs_eager"] == pytest.approx(1.0) and eager["memory_vs_eager"] == pytest.approx(1.0)


def test_parse_options():
    assert B.parse_resolutions("256x256, 1500x1000") == ((256, 256), (1500, 1000))
    with pytest.raises(ValueError, match="resolutions"):
        B.parse_resolutions("1500")
    assert B.parse_families("dense,models") == ("dense", "models") and B.parse_families("") is None
    with pytest.raises(ValueError, match="family"):
        B.selected_cases(False, ("dense", "nope"))
    assert {c.family for c in B.selected_cases(False, ("dense",))} == {"dense"}


def test_report_merge_keeps_other_families(monkeypatch):
    path = pathlib.Path(__file__).resolve().parent.parent / "bench" / "report.py"
    spec = importlib.util.spec_from_file_location("bench_report", path)
    report = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, report)   # its dataclasses look their module up
    spec.loader.exec_module(report)
    point = {"model": "ahdrnet", "provider": "native", "width": 256, "height": 256, "status": "ok"}
    old = {"version": 2, "families": {"conv": {"rows": ["old conv"]}, "dense": {"rows": ["old dense"]},
                                      "sweep": {"rows": [point, dict(point, width=512, height=512)]}}}
    new = {"version": 2, "families": {"dense": {"rows": ["new dense"]},
                                      "sweep": {"rows": [dict(point, status="OOM")]}}}
    merged = report.merge(old, new)["families"]
    assert merged["conv"]["rows"] == ["old conv"] and merged["dense"]["rows"] == ["new dense"]
    sweep = {(p["width"], p["status"]) for p in merged["sweep"]["rows"]}
    assert sweep == {(256, "OOM"), (512, "ok")}
