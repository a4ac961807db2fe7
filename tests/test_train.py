"""apnt train: loss goes down, checkpoints are atomic, resume is bit-identical, DDP and AMP run."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from apnt import checkpoint, models
from apnt.data import KalantariDataset, synthesize
from apnt.train import TrainConfig, mu_law_l1, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    synthesize(root, "Training", scenes=2, height=48, width=48, seed=11, progress=False)
    return root


def _cfg(dataset, out, **kw):
    base = dict(data=str(dataset), out=str(out), steps=3, batch=2, crop=32, lr=1e-3, save_every=100,
                seed=5, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def _fixed_batch(dataset):
    ds = KalantariDataset(dataset, "Training", crop=None, augment=False)
    items = [ds[i] for i in range(len(ds))]
    return {k: torch.stack([it[k] for it in items]) for k in ("ldr", "exposure", "hdr")}


def test_three_steps_reduce_the_loss(dataset, tmp_path):
    batch = _fixed_batch(dataset)
    torch.manual_seed(5)  # train() seeds the same way before creating its model
    initial = models.create("ahdrnet")
    train(_cfg(dataset, tmp_path / "run", steps=3))
    trained = models.load("ahdrnet", tmp_path / "run")
    with torch.no_grad():
        before = float(mu_law_l1(initial(batch["ldr"], batch["exposure"]), batch["hdr"]))
        after = float(mu_law_l1(trained(batch["ldr"], batch["exposure"]), batch["hdr"]))
    assert after < 0.9 * before, (before, after)


def test_resume_continues_bit_identically(dataset, tmp_path):
    train(_cfg(dataset, tmp_path / "straight", steps=4, save_every=2))
    train(_cfg(dataset, tmp_path / "split", steps=2, save_every=2))
    assert checkpoint.latest(tmp_path / "split").name == "step_2"
    train(_cfg(dataset, tmp_path / "split", steps=4, save_every=2, resume=True))
    a = load_file(str(tmp_path / "straight" / "step_4" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "step_4" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    oa = load_file(str(tmp_path / "straight" / "step_4" / "optimizer.safetensors"))
    ob = load_file(str(tmp_path / "split" / "step_4" / "optimizer.safetensors"))
    assert all(torch.equal(oa[k], ob[k]) for k in oa)
    log = (tmp_path / "split" / "log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in log[1:]] == ["1", "2", "3", "4"]


def test_resume_skips_incomplete_checkpoints(dataset, tmp_path):
    run = tmp_path / "run"
    train(_cfg(dataset, run, steps=2, save_every=1, keep=5))
    # A crash while writing step 3 leaves a hidden temporary dir; a corrupted newest dir fails its hash.
    (run / ".tmp_step_3_999").mkdir()
    (run / "step_2" / "model.safetensors").write_bytes(b"truncated")
    assert checkpoint.latest(run).name == "step_1"
    with pytest.raises(ValueError, match="incomplete or corrupted"):
        checkpoint.load(run / "step_2", models.create("ahdrnet"))


def test_amp_bf16_step_runs(dataset, tmp_path):
    row = train(_cfg(dataset, tmp_path / "amp", steps=1, amp="bf16"))
    assert torch.isfinite(torch.tensor(float(row["loss"])))


def test_bad_settings_name_the_argument(dataset, tmp_path):
    with pytest.raises(ValueError, match="--amp"):
        train(_cfg(dataset, tmp_path / "x", amp="fp8"))
    with pytest.raises(ValueError, match="--data"):
        train(_cfg(tmp_path / "nowhere", tmp_path / "x"))
    with pytest.raises(ValueError, match="--model"):
        train(_cfg(dataset, tmp_path / "x", model="resnet"))


@pytest.mark.slow
def test_two_process_ddp(dataset, tmp_path):
    """Real torch.distributed: torchrun starts 2 gloo processes with 1 crop each. The data stream gives
    rank r sample 2s+r at step s, so averaged gradients must match one process taking both crops."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "apnt", "train", "--data", str(dataset), "--out", str(tmp_path / "ddp"), "--steps", "2",
           "--batch", "1", "--crop", "32", "--save-every", "1", "--seed", "5", "--no-progress"]
    # Own session, so a timeout takes the workers down with torchrun instead of orphaning them.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        pytest.fail(f"torchrun timed out:\n{err[-3000:]}")
    assert proc.returncode == 0, err[-3000:]
    state = (tmp_path / "ddp" / "step_2" / "state.json").read_text()
    assert '"world_size": 2' in state
    assert checkpoint.latest(tmp_path / "ddp").name == "step_2"
    train(_cfg(dataset, tmp_path / "single", steps=2, batch=2, lr=1e-4))
    a = load_file(str(tmp_path / "ddp" / "step_2" / "model.safetensors"))
    b = load_file(str(tmp_path / "single" / "step_2" / "model.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6), k
