"""Training checkpoints (DESIGN §6): `step_<n>/` directories written whole or not at all.

A checkpoint holds `model.safetensors`, `optimizer.safetensors` (the optimizer state flattened to named
tensors; its scalars and param groups go to JSON) and `state.json` (model name and config, step, RNG states,
metrics, sha256 of both tensor files). It is written into a hidden temporary directory, fsynced and renamed
into place; `latest` is replaced last. A run killed at any point leaves either the previous checkpoint or the
new one, never a half-written one that resume would take: resume verifies the hashes.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

_TENSOR_FILES = ("model.safetensors", "optimizer.safetensors")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def flatten_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state → (named tensors, JSON-able rest). Inverse: `unflatten_optimizer`."""
    tensors, scalars = {}, {}
    for pid, entries in state_dict["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in list(tensors.items()) + list(rest["scalars"].items()):
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": rest["param_groups"]}


def rng_state() -> dict:
    return {"torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}


def set_rng_state(state: dict) -> None:
    raw = base64.b64decode(state["torch"])
    torch.set_rng_state(torch.frombuffer(bytearray(raw), dtype=torch.uint8))


def save(run_dir: str | os.PathLike, step: int, model: torch.nn.Module, optimizer, info: dict,
         keep: int | None = 3) -> Path:
    """Write `run_dir/step_<step>/` atomically, then point `latest` at it; keep the newest `keep`."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"step_{step}"
    # temporaries of a run killed while saving were never renamed into place (so never read): remove them
    for stale in run_dir.glob(".tmp_step_*"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in run_dir.glob(".latest_*"):
        stale.unlink(missing_ok=True)
    tmp = run_dir / f".tmp_step_{step}_{os.getpid()}"
    tmp.mkdir()
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(weights, str(tmp / "model.safetensors"))
    opt_tensors, opt_rest = flatten_optimizer(optimizer.state_dict())
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    state = dict(info, step=step, optimizer=opt_rest, rng=rng_state(),
                 sha256={name: _sha256(tmp / name) for name in _TENSOR_FILES})
    (tmp / "state.json").write_text(json.dumps(state, indent=1, sort_keys=True))
    for name in (*_TENSOR_FILES, "state.json"):
        _fsync(tmp / name)
    if final.exists():  # a re-run of the same step replaces it
        shutil.rmtree(final)
    os.rename(tmp, final)
    latest_tmp = run_dir / f".latest_{os.getpid()}"
    latest_tmp.write_text(final.name + "\n")
    os.replace(latest_tmp, run_dir / "latest")
    if keep:
        for old in complete_checkpoints(run_dir, verify=False)[keep:]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _step_of(path: Path) -> int:
    try:
        return int(path.name.removeprefix("step_"))
    except ValueError:
        return -1


def is_complete(path: Path) -> bool:
    """All files present and their hashes match state.json."""
    try:
        state = json.loads((path / "state.json").read_text())
        return all(_sha256(path / name) == state["sha256"][name] for name in _TENSOR_FILES)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def complete_checkpoints(run_dir: str | os.PathLike, verify: bool = True) -> list[Path]:
    """`step_<n>/` directories of a run, newest first (only verified ones when `verify`)."""
    run_dir = Path(run_dir)
    found = sorted((p for p in run_dir.glob("step_*") if p.is_dir() and _step_of(p) >= 0), key=_step_of,
                   reverse=True)
    return [p for p in found if not verify or is_complete(p)]


def latest(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    found = complete_checkpoints(run_dir)
    return found[0] if found else None


def load(path: str | os.PathLike, model: torch.nn.Module, optimizer=None) -> dict:
    """Restore model (and optimizer, RNG) from a checkpoint directory; returns its state.json."""
    from safetensors.torch import load_file

    path = Path(path)
    if not is_complete(path):
        raise ValueError(f"{path}: incomplete or corrupted checkpoint (hash mismatch or missing file)")
    state = json.loads((path / "state.json").read_text())
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    if optimizer is not None:
        optimizer.load_state_dict(unflatten_optimizer(load_file(str(path / "optimizer.safetensors")),
                                                      state["optimizer"]))
    set_rng_state(state["rng"])
    return state
