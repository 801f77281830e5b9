"""One registry from method name to method, so the CLI and scenarios choose coding methods by name."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from coin.errors import CodingError
from coin.params import check_beta, check_experts
from coin.task import CodingTask, EncodeResult

MethodFn = Callable[..., EncodeResult]
_ADDED: dict[str, MethodFn] = {}  # methods registered at run time, beside the built-in table


def register(name: str) -> Callable[[MethodFn], MethodFn]:
    """Decorator: make ``fn(task, **options) -> EncodeResult`` available as ``name`` (a method of your own; the
    built-in ones are listed in coin.methods.METHODS)."""

    def deco(fn: MethodFn) -> MethodFn:
        _ADDED[name] = fn
        return fn

    return deco


def _methods() -> dict[str, MethodFn]:
    from coin.methods import METHODS  # torch-heavy: loaded when a method is first asked for

    return {**METHODS, **_ADDED}


def available() -> list[str]:
    """Method names: the built-in ones in their table's order, then any registered at run time."""
    return list(_methods())


def get_method(name: str) -> MethodFn:
    """The method named ``name``; CodingError listing the choices otherwise."""
    methods = _methods()
    if name not in methods:
        raise CodingError(f"unknown coding method '{name}'; choose from {', '.join(methods)}")
    return methods[name]


def encode(
    method: str,
    experts: Sequence[nn.Module],
    beta: Sequence[float] | Tensor,
    x: Tensor,
    *,
    y: Tensor | None = None,
    owner: Tensor | None = None,
    base: nn.Module | None = None,
    seed: int = 0,
    **options,
) -> EncodeResult:
    """Validate inputs, run a coding method and time it (wall clock, everything the method does)."""
    fn = get_method(method)
    check_experts(list(experts), base)
    b = check_beta(beta, len(experts))
    if x.ndim < 1 or x.shape[0] < 1:
        raise CodingError("coding needs at least one sample (P ≥ 1)")
    if y is not None and y.shape[0] != x.shape[0]:
        raise CodingError(f"{y.shape[0]} labels for {x.shape[0]} samples")
    if owner is not None and owner.shape[0] != x.shape[0]:
        raise CodingError(f"{owner.shape[0]} owner entries for {x.shape[0]} samples")
    dev = next(experts[0].parameters()).device
    task = CodingTask(list(experts), b, x.to(dev), None if y is None else y.to(dev),
                      None if owner is None else owner.to(dev), base, seed)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    res = fn(task, **options)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    res.seconds = time.perf_counter() - t0 - float(res.info.get("eval_seconds", 0.0))
    res.method = method
    return res
