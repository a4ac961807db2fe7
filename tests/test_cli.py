"""The `apnt` console entry points, run as a user runs them: in a fresh process."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _apnt(*args, env=None):
    return subprocess.run([sys.executable, "-m", "apnt", *args], capture_output=True, text=True, timeout=600,
                          cwd=ROOT, env={**os.environ, **(env or {})})


def test_info_lists_every_backend_and_why():
    r = _apnt("info")
    assert r.returncode == 0, r.stderr
    for name in ("reference", "native", "triton"):
        assert name in r.stdout
    assert "torch 2." in r.stdout
    # triton cannot run on CPU tensors without the interpreter: info must say so, with the reason
    assert "TRITON_INTERPRET=1" in r.stdout


def test_selftest_passes_and_prints_a_row_per_op():
    r = _apnt("selftest")
    assert r.returncode == 0, r.stdout + r.stderr
    for op in ("conv2d", "attention_gate", "attention_blend", "dilated_dense_block", "patch_match", "patch_transfer"):
        assert any(line.startswith(op) and "PASS" in line for line in r.stdout.splitlines()), r.stdout


def test_unknown_backend_in_environment_is_a_clear_error():
    r = _apnt("info", env={"APNT_BACKEND": "cudnn"})
    assert r.returncode != 0
    assert "argument 'backend'" in r.stderr and "cudnn" in r.stderr


@pytest.mark.parametrize("args", [[], ["frobnicate"]])
def test_bad_command_line_exits_with_usage(args):
    r = _apnt(*args)
    assert r.returncode == 2
    assert "usage: apnt" in r.stderr
