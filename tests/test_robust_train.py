"""Robustness of training (issue 8): a run SIGKILLed inside checkpoint.save resumes with nothing corrupted and at
most one save interval lost, bit-identical to an uninterrupted run; deterministic-algorithms mode gives
bitwise-identical weights from run to run."""
import csv
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from apnt import checkpoint
from apnt.cli import main
from apnt.data import synthesize
from apnt.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
TINY = {"features": 8, "growth": 8, "dense_layers": 2}

# Runs `apnt train` (argv) and SIGKILLs its own process at KILL_AT=<point>:<step> inside apnt.checkpoint.save, by
# wrapping the library functions save() calls: no test-only code path in apnt itself. If save() stops calling
# them, the run is not killed and the test's return-code check fails.
DRIVER = r'''
import os, shutil, signal, sys

import safetensors.torch
import torch

from apnt.cli import main

torch.set_num_threads(1)
point, step = os.environ["KILL_AT"].split(":")
step_dir = f"step_{step}"


def die():
    os.kill(os.getpid(), signal.SIGKILL)


if point == "tensors":  # model.safetensors written, optimizer.safetensors half-written, not yet renamed
    save_file = safetensors.torch.save_file

    def save_file_then_die(tensors, filename, metadata=None):
        save_file(tensors, filename, metadata)
        if os.path.basename(filename) == "optimizer.safetensors" and f"_step_{step}_" in filename:
            with open(filename, "r+b") as f:
                f.truncate(os.path.getsize(filename) // 2)
            die()

    safetensors.torch.save_file = save_file_then_die
elif point == "latest":  # step_<n>/ renamed into place, `latest` still names the previous one
    replace = os.replace

    def replace_or_die(src, dst, *args, **kwargs):
        if os.path.basename(dst) == "latest" and open(src).read().strip() == step_dir:
            die()
        return replace(src, dst, *args, **kwargs)

    os.replace = replace_or_die
elif point == "prune":  # step_<n>/ and `latest` done; deleting the oldest kept checkpoint, one file gone
    rmtree = shutil.rmtree

    def rmtree_or_die(path, *args, **kwargs):
        path = str(path)
        if os.path.basename(path).startswith("step_") and os.path.isdir(os.path.join(os.path.dirname(path),
                                                                                      step_dir)):
            os.remove(os.path.join(path, "model.safetensors"))
            die()
        return rmtree(path, *args, **kwargs)

    shutil.rmtree = rmtree_or_die
sys.exit(main(sys.argv[1:]))
'''


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    synthesize(root, "Training", scenes=2, height=48, width=48, seed=11, progress=False)
    return root


def _tensors_equal(a: Path, b: Path, name: str) -> bool:
    x, y = load_file(str(a / name)), load_file(str(b / name))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _log(run: Path) -> list[tuple]:
    with open(run / "log.csv", newline="") as f:  # seconds and samples/s differ from run to run
        return [(r["step"], r["epoch"], r["loss"], r["lr"]) for r in csv.DictReader(f)]


def test_sigkill_inside_checkpoint_save_resumes_bit_identically(dataset, tmp_path, capsys):
    steps, keep = 5, 2
    argv = ["train", "--data", str(dataset), "--steps", str(steps), "--batch", "2", "--crop", "32", "--lr", "1e-3",
            "--save-every", "1", "--keep", str(keep), "--seed", "5", "--no-progress"]
    for key, value in TINY.items():
        argv += ["--config", f"{key}={value}"]
    run = tmp_path / "killed"
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)

    def launch(kill_at, resume):
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", KILL_AT=kill_at)
        cmd = [sys.executable, str(driver), *argv, "--out", str(run)] + (["--resume"] if resume else [])
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        resumed = re.search(r"resuming from .*step_(\d+) \(step (\d+)\)", proc.stdout)
        return proc, int(resumed.group(2)) if resumed else None

    # 1. killed while writing step 2's tensor files: the hidden temporary holds a half-written file
    proc, _ = launch("tensors:2", resume=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert [p.name for p in checkpoint.complete_checkpoints(run)] == ["step_1"]
    tmp, = run.glob(".tmp_step_2_*")
    assert (tmp / "model.safetensors").is_file() and not (tmp / "state.json").exists()
    # 2. resumes from step 1 (step 2 is the one interval lost); killed after step_3/ is in place, before `latest`
    proc, start = launch("latest:3", resume=True)
    assert proc.returncode == -signal.SIGKILL and start == 1, proc.stdout + proc.stderr[-2000:]
    assert (run / "latest").read_text().strip() == "step_2" and checkpoint.latest(run).name == "step_3"
    assert not list(run.glob(".tmp_step_2_*"))  # the dead run's temporary was cleared by the next save
    # 3. resumes from step 3 (nothing lost: a complete step dir counts, whatever `latest` says); killed while
    #    pruning step_2/ after saving step 4
    proc, start = launch("prune:4", resume=True)
    assert proc.returncode == -signal.SIGKILL and start == 3, proc.stdout + proc.stderr[-2000:]
    assert not checkpoint.is_complete(run / "step_2") and checkpoint.latest(run).name == "step_4"
    # 4. resumes from step 4 and finishes (here: the test process is as new to the run as a fresh one)
    assert main([*argv, "--out", str(run), "--resume"]) == 0
    assert f"resuming from {run / 'step_4'} (step 4)" in capsys.readouterr().out

    straight = tmp_path / "straight"
    train(TrainConfig(data=str(dataset), out=str(straight), steps=steps, batch=2, crop=32, lr=1e-3, save_every=1,
                      keep=keep, seed=5, progress=False, model_config=dict(TINY)))
    final = f"step_{steps}"
    assert _tensors_equal(run / final, straight / final, "model.safetensors")
    assert _tensors_equal(run / final, straight / final, "optimizer.safetensors")
    # nothing corrupted or left behind: the kept checkpoints verify, no temporaries, `latest` and the log are right
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in straight.iterdir())
    assert all(checkpoint.is_complete(p) for p in run.glob("step_*"))
    assert (run / "latest").read_text() == (straight / "latest").read_text()
    assert _log(run) == _log(straight) and [row[0] for row in _log(run)] == [str(s + 1) for s in range(steps)]


@pytest.fixture
def deterministic():
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)


def test_deterministic_mode_gives_bitwise_identical_weights(dataset, tmp_path, deterministic, threads):
    """Two 5-step runs of the full-size AHDRNet, native backend (`auto` on the CPU), on two intra-op threads: the
    parallel loops (Winograd chunks, elementwise epilogues, oneDNN/ATen convolution backward) are exercised."""
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        train(TrainConfig(data=str(dataset), out=str(run), steps=5, batch=2, crop=32, lr=1e-3, save_every=100,
                          seed=5, backend="native", progress=False))
    assert _tensors_equal(*(run / "step_5" for run in runs), "model.safetensors")
    assert _tensors_equal(*(run / "step_5" for run in runs), "optimizer.safetensors")
