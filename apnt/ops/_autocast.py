"""Autocast for custom ops (DESIGN §2): compute in float32, return the autocast dtype.

`torch.library.register_autocast` would return float32; AMP training wants the autocast dtype back, so
these implementations are written by hand for AutocastCPU and AutocastCUDA."""
from __future__ import annotations

import torch
from torch.utils._pytree import tree_map

_LIBS: dict[str, torch.library.Library] = {}


def _cast(t, dtype):
    if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64:
        return t.to(dtype)
    return t


def register(qualname: str, cast_outputs: bool = True) -> None:
    """cast_outputs=False keeps float32 outputs (patch_match's score is float32 by contract)."""
    namespace, name = qualname.split("::")
    lib = _LIBS.setdefault(namespace, torch.library.Library(namespace, "IMPL"))
    op = getattr(getattr(torch.ops, namespace), name).default

    for device, key in (("cpu", "AutocastCPU"), ("cuda", "AutocastCUDA")):
        keyset = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))

        def impl(*args, _device=device, _keyset=keyset, **kwargs):  # noqa: ANN001
            dtype = torch.get_autocast_dtype(_device)
            with torch._C._ExcludeDispatchKeyGuard(_keyset):
                out = op(*tree_map(lambda t: _cast(t, torch.float32), args),
                         **tree_map(lambda t: _cast(t, torch.float32), kwargs))
            return tree_map(lambda t: _cast(t, dtype), out) if cast_outputs else out

        lib.impl(name, impl, key)
