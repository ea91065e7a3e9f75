"""Fused CR-family forward/backward: backward keeps only the input, dε is reduced in backward.

Implementations (``impl``):
- ``"eager"``: a custom ``autograd.Function`` with eager ops (no compiler needed; the fallback).
- ``"compiled"``: the same Function with its forward/backward bodies compiled by ``torch.compile``
  (Inductor: C++ on CPU, Triton on CUDA). Falls back to eager, with one warning, if compilation fails.
- ``"reference"``: the plain expression differentiated by autograd (the paper's; keeps ~3 extra tensors).
- ``"auto"``: ``"compiled"`` where the backend can build it, else ``"eager"``. Setting the
  environment variable ``CRRELU_DISABLE_COMPILE=1`` makes ``"auto"`` mean ``"eager"`` (tests, debugging).

Half-precision inputs are computed in float32 and cast back; ε stays float32 (or float64).
"""
from __future__ import annotations

import os
import warnings
from typing import Callable, Dict, Optional, Tuple

import torch

from crrelu_lightning.activations import cr_math

IMPLS = ("auto", "compiled", "eager", "reference")
_HALF = (torch.float16, torch.bfloat16)


def _compute_dtype(x: torch.Tensor, eps: torch.Tensor) -> torch.dtype:
    xd = torch.float32 if x.dtype in _HALF else x.dtype
    return torch.promote_types(xd, eps.dtype if eps.dtype not in _HALF else torch.float32)


def _forward_body(x: torch.Tensor, eps: torch.Tensor, base: str, sigma: float) -> torch.Tensor:
    cd = _compute_dtype(x, eps)
    xf = x.to(cd)
    y = cr_math.base_forward(base, xf) + eps.to(cd) * cr_math.correction(xf, sigma)
    return y.to(x.dtype)


def _backward_body(
    x: torch.Tensor, dy: torch.Tensor, eps: torch.Tensor, base: str, sigma: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    cd = _compute_dtype(x, eps)
    xf = x.to(cd)
    dyf = dy.to(cd)
    inv_s2 = 1.0 / (sigma * sigma)
    x2 = xf * xf
    gauss = torch.exp(x2 * (-0.5 * inv_s2))
    dfdx = cr_math.base_derivative(base, xf) + eps.to(cd) * (1.0 - x2 * inv_s2) * gauss
    dx = (dyf * dfdx).to(x.dtype)
    deps = (dyf * xf * gauss).sum()
    return dx, deps


_compiled: Dict[Tuple[str, str, str], Callable] = {}
_compile_failed: Dict[str, bool] = {}


def _compile_enabled() -> bool:
    return os.environ.get("CRRELU_DISABLE_COMPILE", "0") not in ("1", "true", "True")


def _get_compiled(kind: str, base: str, device_type: str) -> Optional[Callable]:
    """Compiled body for (kind, base, device type), or None if compilation is unavailable."""
    if _compile_failed.get(device_type):
        return None
    key = (kind, base, device_type)
    fn = _compiled.get(key)
    if fn is None:
        body = _forward_body if kind == "fwd" else _backward_body
        try:
            fn = torch.compile(body, dynamic=True, fullgraph=True)
        except Exception as err:  # pragma: no cover - depends on the installed backend
            _disable_compile(device_type, err)
            return None
        _compiled[key] = fn
    return fn


def _disable_compile(device_type: str, err: BaseException) -> None:
    _compile_failed[device_type] = True
    warnings.warn(
        f"CR activation: torch.compile is unavailable on {device_type} ({type(err).__name__}: {err}); "
        "using the eager fused kernel (same results, slower).",
        RuntimeWarning,
        stacklevel=3,
    )


def _run(kind: str, compiled: bool, base: str, *args):
    """Run the forward (args = x, eps, sigma) or backward (args = x, dy, eps, sigma) body."""
    body = _forward_body if kind == "fwd" else _backward_body
    call_args = (*args[:-1], base, args[-1])
    if compiled:
        device_type = args[0].device.type
        fn = _get_compiled(kind, base, device_type)
        if fn is not None:
            try:
                return fn(*call_args)
            except Exception as err:  # Inductor compiles lazily, on the first call
                _disable_compile(device_type, err)
    return body(*call_args)


class CRFunction(torch.autograd.Function):
    """y = g(x) + ε·k_σ(x); saves only x (and the 0-d ε)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: torch.Tensor, base: str, sigma: float, compiled: bool):
        with torch.autocast(device_type=x.device.type, enabled=False):
            y = _run("fwd", compiled, base, x, eps.detach(), sigma)
        ctx.save_for_backward(x, eps)
        ctx.base, ctx.sigma, ctx.compiled = base, sigma, compiled
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, eps = ctx.saved_tensors
        with torch.autocast(device_type=x.device.type, enabled=False):
            dx, deps = _run("bwd", ctx.compiled, ctx.base, x, dy.contiguous(), eps.detach(), ctx.sigma)
        dx = dx if ctx.needs_input_grad[0] else None
        deps = deps.to(eps.dtype).reshape(eps.shape) if ctx.needs_input_grad[1] else None
        return dx, deps, None, None, None


def resolve_impl(impl: str, device: torch.device) -> str:
    if impl not in IMPLS:
        raise ValueError(f"Unknown CR implementation {impl!r}; expected one of {IMPLS}")
    if impl == "auto":
        if not _compile_enabled() or _compile_failed.get(device.type):
            return "eager"
        return "compiled"
    return impl


def cr_activation(
    x: torch.Tensor, eps: torch.Tensor, base: str = "relu", sigma: float = 1.0, impl: str = "auto"
) -> torch.Tensor:
    """Apply the CR-corrected ``base`` with the chosen implementation."""
    impl = resolve_impl(impl, x.device)
    if impl == "reference":
        return cr_math.cr_reference(base, x, eps.to(x.dtype) if x.dtype in _HALF else eps, sigma)
    return CRFunction.apply(x, eps, base, float(sigma), impl == "compiled")
