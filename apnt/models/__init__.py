"""Models: AHDRNet, APNT-Fusion and their building blocks; creating and loading them by name."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from apnt.models.ahdrnet import AHDRNet
from apnt.models.apnt_fusion import APNTFusion
from apnt.models.blocks import DilatedDenseBlock

__all__ = ["AHDRNet", "APNTFusion", "DilatedDenseBlock", "MODELS", "create", "load", "load_authors_checkpoint",
           "save_weights", "demo_weights_path"]

MODELS: dict[str, type[nn.Module]] = {"ahdrnet": AHDRNet, "apnt": APNTFusion}
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def create(name: str, backend: str = "auto", **config) -> nn.Module:
    """A freshly initialised model by name (`ahdrnet`, `apnt`), with its configuration keywords."""
    if name not in MODELS:
        raise ValueError(f"argument 'name': unknown model {name!r}; expected one of {', '.join(MODELS)}")
    return MODELS[name](backend=backend, **config)


def demo_weights_path(name: str) -> Path:
    return WEIGHTS_DIR / f"{name}_demo.safetensors"


def save_weights(model: nn.Module, path: str | os.PathLike, **metadata: str) -> None:
    """The model's weights as safetensors, its name and config in the header (atomic write); for models with a
    frozen VGG (APNT-Fusion) its source and sha256 too, which `load` checks."""
    from safetensors.torch import save_file

    path = Path(path)
    meta = {"model": model.name, "config": json.dumps(model.config, sort_keys=True), **metadata}
    if getattr(model, "vgg_info", None) is not None:
        meta["vgg"] = json.dumps(model.vgg_info, sort_keys=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, path)


def _read_safetensors(path: Path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    return state, meta


def _resolve_checkpoint(path: Path) -> tuple[Path, dict]:
    """A training run dir (its newest complete checkpoint), a `step_<n>/` dir, or a .safetensors file →
    (tensors file, state.json contents)."""
    if path.is_dir():
        from apnt import checkpoint

        if not (path / "model.safetensors").exists():  # a run directory, not one checkpoint
            newest = checkpoint.latest(path)
            if newest is None:
                raise FileNotFoundError(f"argument 'weights': {path} holds no complete checkpoint "
                                        "(step_<n>/ with model.safetensors and state.json)")
            path = newest
        state_json = path / "state.json"
        try:
            info = json.loads(state_json.read_text()) if state_json.exists() else {}
        except ValueError as e:
            raise ValueError(f"argument 'weights': {state_json}: not JSON ({e})") from None
        if not isinstance(info, dict):
            raise ValueError(f"argument 'weights': {state_json}: expected a JSON object, got {type(info).__name__}")
        return path / "model.safetensors", info
    return path, {}


def load(name: str, weights: str | os.PathLike | None = "demo", backend: str = "auto",
         config: dict | None = None) -> nn.Module:
    """A model by name with weights: "demo" (shipped), a path (safetensors file, `apnt train` checkpoint or
    run directory, or for AHDRNet the authors' `.pt`), or None / "none" (random). Returned in eval mode.

    `config` overrides entries of the saved configuration (`apnt eval --config use_scale_attention=false`):
    switches that only change how the network runs load as usual; a switch that removes layers loads the
    remaining tensors (with a warning naming the unused ones); one that needs tensors the weights lack is
    an error — train with that configuration instead."""
    overrides = dict(config or {})
    if weights is None or (isinstance(weights, str) and weights == "none"):
        return create(name, backend=backend, **overrides).eval()
    if isinstance(weights, str) and weights == "demo":
        path = demo_weights_path(name)
        if name in MODELS and not path.exists():
            raise FileNotFoundError(f"no demo weights shipped for {name!r} (expected {path.name})")
    else:
        path = Path(weights)
        if not path.exists():
            raise FileNotFoundError(f"argument 'weights': {path} does not exist")
    if path.suffix in (".pt", ".pth", ".tar"):
        if name != "ahdrnet":
            raise ValueError(f"argument 'weights': {path.name} is a PyTorch pickle; only AHDRNet loads the "
                             "authors' checkpoints, other models take apnt safetensors")
        if overrides:
            raise ValueError(f"argument 'config': the authors' checkpoint {path.name} has a fixed configuration")
        model = load_authors_checkpoint(path)
        model.backend = backend
        return model
    file, info = _resolve_checkpoint(path)
    try:
        state, meta = _read_safetensors(file)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own type for bad headers and short files
        raise ValueError(f"argument 'weights': {file}: not a readable safetensors file ({_first_line(e)})") from e
    saved = meta.get("model") or info.get("model")
    if saved and saved != name:
        raise ValueError(f"argument 'weights': {path} holds a {saved!r} model, not {name!r}")
    config = {**(_json_object(meta, info, "config", path) or {}), **overrides}
    try:  # the config comes from the file: unknown keys or bad values must be a clear error
        model = create(name, backend=backend, **config)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"argument 'weights': {path}: its config {config} does not make a {name!r} model "
                         f"({_first_line(e)})") from e
    _check_vgg(model, _json_object(meta, info, "vgg", path), path)
    if overrides:  # an ablation may drop layers: their tensors are left out, nothing else may differ
        unused = sorted(set(state) - set(model.state_dict()))
        if unused:
            warnings.warn(f"{path}: {len(unused)} tensors unused with {overrides} (e.g. {unused[0]})",
                          stacklevel=2)
            state = {k: v for k, v in state.items() if k not in unused}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:  # torch lists each mismatch on its own line under a generic heading
        details = str(e).splitlines()[1:] or [str(e)]
        hint = f" (the override {overrides} needs tensors these weights lack: train with it)" if overrides else ""
        raise ValueError(f"argument 'weights': {path}: tensors do not fit {name!r} {model.config}{hint}: "
                         f"{details[0].strip()[:300]}") from e
    return model.eval()


def parse_config(items: list[str]) -> dict:
    """`KEY=VALUE` strings (the CLIs' repeatable `--config`) → dict; values parsed as JSON when they are
    (numbers, true/false, null), else kept as strings."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"argument '--config': expected KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:300] if lines else type(e).__name__


def _json_object(meta: dict, info: dict, key: str, path) -> dict | None:
    """`key` of the safetensors header (a JSON string there) or of state.json: a dict, or None if absent."""
    value = info.get(key)
    if key in meta:
        try:
            value = json.loads(meta[key])
        except ValueError as e:
            raise ValueError(f"argument 'weights': {path}: metadata {key!r} is not JSON ({e})") from None
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"argument 'weights': {path}: metadata {key!r} must be a JSON object, "
                         f"got {type(value).__name__}")
    return value


def _check_vgg(model: nn.Module, recorded: dict | None, path) -> None:
    """Refuse weights trained on other VGG features than the ones this model was rebuilt with (DESIGN §4.2)."""
    vgg = getattr(model, "vgg", None)
    if not recorded or vgg is None:
        return
    try:
        vgg.check_source(recorded.get("sha256"), recorded.get("source"))
    except ValueError as e:
        raise ValueError(f"argument 'weights': {path}: {e}") from None


_AUTHORS_UNUSED = ("attConv1.", "attConv3.")


def load_authors_checkpoint(path: str | os.PathLike, backend: str = "auto") -> AHDRNet:
    """AHDRNet with weights from the authors' PyTorch checkpoint (their `AHDR` class state dict).

    Read with `torch.load(weights_only=True)` — a pickle that would run code is refused. Strips the
    `module.` prefix of DataParallel checkpoints and drops the unused attConv1/attConv3 layers (with a
    warning). Returns the model in eval mode."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure becomes one clear message
        raise ValueError(f"{path}: not a loadable weights-only PyTorch checkpoint ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    dropped = sorted(k for k in state if k.startswith(_AUTHORS_UNUSED))
    if dropped:
        warnings.warn(f"{Path(path).name}: dropped {len(dropped)} unused parameters "
                      f"({', '.join(dropped)}): the authors' forward never uses attConv1/attConv3", stacklevel=2)
    state = {k: v for k, v in state.items() if not k.startswith(_AUTHORS_UNUSED)}
    model = AHDRNet(backend=backend)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: not an AHDRNet state dict (missing {missing[:4]}, unexpected {unexpected[:4]})")
    return model.eval()
