"""`setup(case, provider, mode)`: inputs, weights and the callable of one case, ready to time or to measure."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

import apnt.ops
from apnt.benchcases.cases import AnyCase, Case, MODES, ModelCase, Provider

# ---- setup: one builder per kind of case, for speed and memory runs -------------------------------------------------

@dataclass
class Bench:
    """A ready-to-run case: `step()` is one timed iteration; `forward()` runs the forward with autograd
    recording (memory runs); `leaves` are the inputs and parameters (excluded from memory held for backward)."""
    step: Callable[[], object]
    forward: Callable[[], torch.Tensor]
    leaves: list[torch.Tensor]


def _call_args(names: list[str], tensors: list[torch.Tensor]) -> list:
    """Flat parameters → the op's positional arguments: consecutive `base[i]` entries become one list."""
    args: list = []
    lists: dict[str, list] = {}
    for name, t in zip(names, tensors):
        base, bracket, _ = name.partition("[")
        if not bracket:
            args.append(t)
        elif base in lists:
            lists[base].append(t)
        else:
            lists[base] = [t]
            args.append(lists[base])
    return args


class OpModule(nn.Module):
    """One apnt op with its weights as nn.Parameters, so inductor freezing can fold and prepack them."""

    def __init__(self, case: Case, params: dict[str, torch.Tensor], backend: str, extra_kwargs=()):
        super().__init__()
        self.op = getattr(apnt.ops, case.op)
        self.backend = backend
        self.kwargs = dict(case.kwargs) | dict(extra_kwargs)
        self.names = list(params)
        self.attrs = [n.replace("[", "_").replace("]", "") for n in self.names]   # `weights[0]` → `weights_0`
        for attr, t in zip(self.attrs, params.values()):
            self.register_parameter(attr, nn.Parameter(t))

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        args = _call_args(self.names, [getattr(self, a) for a in self.attrs])
        return self.op(*inputs, *args, backend=self.backend, **self.kwargs)


def _make_tensors(specs, seed: int, channels_last: bool, fan_in_scaled: bool) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in specs:
        t = torch.randn(shape, generator=gen)
        if fan_in_scaled and len(shape) == 4:   # keep activations O(1): no denormals, no saturated sigmoids
            t /= math.sqrt(shape[1] * shape[2] * shape[3])
        if channels_last and t.dim() == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        out[name] = t
    return out


def _compiled(module: nn.Module, freezing: bool) -> Callable:
    """torch.compile(module) with static shapes (each case its own graph, as a user compiling one model
    gets). Freezing must be on while dynamo traces, not only in inductor: only then are the parameters kept
    as constants that inductor folds and prepacks (`options={"freezing": True}` alone leaves them graph
    inputs). The options still make the backend differ from plain torch.compile's, so the two never share
    a dynamo cache entry."""
    compiled = torch.compile(module, fullgraph=True, dynamic=False, options={"freezing": True} if freezing else None)
    if not freezing:
        return compiled

    def call(*inputs):
        import torch._inductor.config as inductor_config
        with inductor_config.patch(freezing=True):
            return compiled(*inputs)
    return call


def _build_op(case: Case, provider: Provider, mode: str, seed: int) -> Bench:
    train = mode == "train"
    inputs = list(_make_tensors(case.inputs, seed, provider.channels_last, False).values())
    module = OpModule(case, _make_tensors(case.params, seed + 1, provider.channels_last, True), provider.backend,
                      provider.kwargs)
    module.requires_grad_(train)
    for t in inputs:
        t.requires_grad_(train)
    fn = _compiled(module, freezing=provider.compile == "freezing") if provider.compile else module
    leaves = inputs + list(module.parameters())
    grad_out: list[torch.Tensor] = []   # created on the first step, in the layout the provider returns

    def forward() -> torch.Tensor:
        return fn(*inputs)

    def step():
        if not train:
            with torch.no_grad():
                return fn(*inputs)
        for t in leaves:
            t.grad = None
        out = fn(*inputs)
        if not grad_out:
            grad_out.append(torch.randn_like(out))
        out.backward(grad_out[0])
        return out

    return Bench(step, forward, leaves)


def _bracket(batch: int, height: int, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random LDR frames in [0, 1] (a share of them above the saturation threshold, so APNT-Fusion's texture
    stream has work) and exposure times 1 : 4 : 16. Speed does not depend on the picture."""
    gen = torch.Generator().manual_seed(seed)
    ldr = torch.rand(batch, 3, 3, height, width, generator=gen)
    return ldr, torch.tensor([[1.0, 4.0, 16.0]]).expand(batch, 3).contiguous()


def _mu_law_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # apnt train's loss (apnt.train.mu_law_l1), written here so the benchmarks do not import the trainer.
    from apnt.tonemap import mu_law
    return (mu_law(pred.float()) - mu_law(target.float())).abs().mean()


def _build_model(case: ModelCase, provider: Provider, mode: str, seed: int) -> Bench:
    import apnt.models

    torch.manual_seed(seed)   # the same random weights for every provider
    model = apnt.models.create(case.model, backend=provider.backend)
    if provider.channels_last:   # weights in channels_last: every convolution's output follows them
        model = model.to(memory_format=torch.channels_last)
    model.train(mode == "train")
    ldr, exposure = _bracket(case.batch, case.height, case.width, seed)
    fn = _compiled(model, freezing=provider.compile == "freezing") if provider.compile else model
    if case.max_memory:
        if provider.compile or mode != "inference":
            raise ValueError("tiled model cases are eager inference only")
        from apnt.infer import fuse
        fn = lambda ldr, exposure: fuse(ldr, exposure, model=model, max_memory=case.max_memory)  # noqa: E731
    leaves = [ldr, exposure] + list(model.parameters())
    if mode == "inference":
        def step():
            with torch.no_grad():
                return fn(ldr, exposure)
        return Bench(step, lambda: fn(ldr, exposure), leaves)

    target = torch.rand(case.batch, 3, case.height, case.width, generator=torch.Generator().manual_seed(seed + 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def forward() -> torch.Tensor:
        return _mu_law_l1(fn(ldr, exposure), target)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = forward()
        loss.backward()
        optimizer.step()
        return loss

    return Bench(step, forward, leaves)


def setup(case: AnyCase, provider: Provider, mode: str, seed: int = 0) -> Bench:
    """Inputs, weights and the callable for `case` run by `provider` in `mode` ("inference" | "train").

    Compilation is lazy: the first `step()` compiles (callers warm up before timing)."""
    if mode not in MODES:
        raise ValueError(f"argument 'mode': expected one of {', '.join(MODES)}, got {mode!r}")
    if mode not in case.modes:
        raise ValueError(f"case {case.id!r} has no {mode} mode")
    if provider.key not in case.providers or mode not in provider.modes:
        raise ValueError(f"provider {provider.name!r} does not run {case.id!r} in {mode} mode")
    build = _build_model if isinstance(case, ModelCase) else _build_op
    return build(case, provider, mode, seed)
