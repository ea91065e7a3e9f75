"""Fused CR-family forward/backward: backward keeps only the input, dε is reduced inside the backward pass.

Implementations (``impl``):
- ``"eager"``: a custom ``autograd.Function`` whose bodies are eager torch ops (no compiler; the fallback).
- ``"compiled"``: the same Function with fused kernels: on CUDA (float32/16, bfloat16) hand-written Triton
  kernels (``cr_triton``), elsewhere the bodies compiled by ``torch.compile`` (Inductor: one C++/OpenMP loop
  for the forward, one for the backward that writes dx and reduces dε in the same pass). If a compiler is
  missing or fails, it falls back (Triton → Inductor → eager) with one warning per device type.
- ``"reference"``: the plain expression differentiated by autograd (the paper's; keeps ~3 extra tensors).
- ``"auto"``: ``"compiled"`` where the backend can build it, else ``"eager"``. Setting the environment
  variable ``CRRELU_DISABLE_COMPILE=1`` makes ``"auto"`` mean ``"eager"`` (tests, debugging);
  ``CRRELU_DISABLE_TRITON=1`` makes CUDA use Inductor instead of the hand-written kernels.

The compiled bodies operate on the flattened tensor, with σ baked in as a constant, so there is one graph
per (forward/backward, base, σ, dtype) whatever the input shape (``dynamic=True``; the backward gets a
second graph for inputs of ≤ 4096 elements, where Inductor picks another reduction). ε is passed as a
tensor, never as a Python number: ``eps.item()`` would synchronise host and device on every call.
In float32 the Gaussian exp(−x²/(2σ²)) is a polynomial plus six squarings (``gauss_f32``, relative error
< 1e-5 where it matters) instead of Inductor's Sleef exp, which made the CPU kernels compute-bound.

Half-precision inputs are computed in float32 and cast back; ε stays float32 (or float64), and so does dε.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Callable, Dict, Optional, Tuple

import torch

from crrelu_lightning.activations import cr_math

IMPLS = ("auto", "compiled", "eager", "reference")
_HALF = (torch.float16, torch.bfloat16)


def _compute_dtype(x_dtype: torch.dtype, eps_dtype: torch.dtype) -> torch.dtype:
    xd = torch.float32 if x_dtype in _HALF else x_dtype
    return torch.promote_types(xd, torch.float32 if eps_dtype in _HALF else eps_dtype)


# The bodies are generated from source so that every constant (σ, polynomial coefficients) is a literal:
# torch.compile(dynamic=True) turns Python floats held in closures or globals into runtime arguments, which
# Inductor then reloads and converts in every loop iteration (measured: ~2× slower kernels on CPU).
_BODY_TEMPLATE = """
def gauss_f32(x2, c):
    # exp(c * x2) for float32 x2 >= 0 and a constant c < 0, as plain tensor ops that Inductor fuses into
    # ~14 vector instructions. Inductor's C++ backend would otherwise call Sleef's exp, and an exponent-bit
    # 2^n trick needs a bitcast that Inductor emits as a scalar loop; either makes the kernel compute-bound
    # at ~2x GELU's time. Here: u = c*x2/64 (clamped so that the result stays >= e^-85, never a slow
    # denormal), a degree-6 Taylor polynomial of e^u, then six squarings. Relative error < 1e-5 where
    # c*x2 >= -12.5 (that is |x| <= 5 at sigma = 1; beyond, the value is < 4e-6 and the absolute error < 1e-10).
    u = torch.clamp_min(x2 * (c * 0.015625), -1.328125)
    p = u * 0.001388888888888889 + 0.008333333333333333
    p = p * u + 0.041666666666666664
    p = p * u + 0.16666666666666666
    p = p * u + 0.5
    p = p * u + 1.0
    p = p * u + 1.0
    p = p * p
    p = p * p
    p = p * p
    p = p * p
    p = p * p
    return p * p


def _gauss(x2, c):
    # exp(c * x^2); the polynomial only pays off inside a fused kernel (eager, torch.exp is one MKL pass)
    if {FAST} and x2.dtype == torch.float32:
        return gauss_f32(x2, c)
    return torch.exp(x2 * c)


def forward_body(x, eps):
    cd = _compute_dtype(x.dtype, eps.dtype)
    xf = x.to(cd)
    y = {BASE_FWD} + eps.to(cd) * (xf * _gauss(xf * xf, {C!r}))
    return y.to(x.dtype)


def backward_body(x, dy, eps):
    cd = _compute_dtype(x.dtype, eps.dtype)
    xf = x.to(cd)
    dyf = dy.to(cd)
    x2 = xf * xf
    dyg = dyf * _gauss(x2, {C!r})  # dy * exp(-x^2 / (2 sigma^2))
{BASE_BWD}
    # dy * f'(x) = dy * g'(x) + eps * dy * (1 - x^2 / sigma^2) * exp(-x^2 / (2 sigma^2))
    dx = dybase + eps.to(cd) * (dyg - dyg * x2 * {INV_S2!r})
    deps = (dyg * xf).sum()  # dL/deps = sum dy * x * exp(-x^2 / (2 sigma^2)), same pass as dx
    return dx.to(x.dtype), deps
"""

_BASE_FWD = {
    "relu": "torch.relu(xf)",
    "gelu": "F.gelu(xf)",
    "silu": "F.silu(xf)",
    "mish": "F.mish(xf)",
}
_BASE_BWD = {  # dybase = dy * g'(x)
    "relu": "    dybase = torch.where(xf > 0, dyf, torch.zeros_like(dyf))",
    "gelu": (
        "    cdf = 0.5 * (1.0 + torch.erf(xf * 0.7071067811865476))\n"
        "    dybase = dyf * (cdf + xf * (_gauss(x2, -0.5) * 0.3989422804014327))"
    ),
    "silu": "    s = torch.sigmoid(xf)\n    dybase = dyf * (s * (1.0 + xf * (1.0 - s)))",
    "mish": (
        "    t = torch.tanh(F.softplus(xf))\n"
        "    dybase = dyf * (t + xf * (1.0 - t * t) * torch.sigmoid(xf))"
    ),
}


def make_bodies(base: str, sigma: float, fused: bool = True) -> Tuple[Callable, Callable]:
    """Forward ``f(x, eps) -> y`` and backward ``b(x, dy, eps) -> (dx, deps)`` bodies with σ baked in.

    ``fused``: the bodies will be compiled (float32 Gaussian by ``gauss_f32``); else eager (``torch.exp``).
    """
    if base not in cr_math.CR_BASES:
        raise ValueError(f"Unknown CR base {base!r}; expected one of {cr_math.CR_BASES}")
    src = _BODY_TEMPLATE.format(
        BASE_FWD=_BASE_FWD[base], BASE_BWD=_BASE_BWD[base], C=-0.5 / (sigma * sigma), INV_S2=1.0 / (sigma * sigma),
        FAST=bool(fused),
    )
    namespace = {"torch": torch, "F": torch.nn.functional, "_compute_dtype": _compute_dtype}
    exec(compile(src, f"<cr_kernels body {base} sigma={sigma!r}>", "exec"), namespace)
    return namespace["forward_body"], namespace["backward_body"]


def gauss_f32(x2: torch.Tensor, c: float) -> torch.Tensor:
    """The float32 exp(c·x2) used inside the compiled bodies (exposed for tests)."""
    return make_bodies("relu", 1.0)[0].__globals__["gauss_f32"](x2, c)


# --------------------------------------------------------------------------- body caches and compilation
_eager: Dict[Tuple[str, float], Tuple[Callable, Callable]] = {}
_compiled: Dict[Tuple[str, float, str], Tuple[Callable, Callable]] = {}
_compile_failed: Dict[str, bool] = {}  # device type -> Inductor unavailable
_triton_failed = False
_torch_compile = torch.compile  # indirection so tests can simulate a broken compiler
# Let the C++ compiler fuse a*b + c into FMAs (Inductor compiles with -ffp-contract=off by default). This is
# not fast-math: no reassociation or other value-changing rewrites.
_INDUCTOR_OPTIONS = {"cpp.enable_floating_point_contract_flag": "fast"}


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def _compile_enabled() -> bool:
    return not _env_flag("CRRELU_DISABLE_COMPILE")


def reset_caches() -> None:
    """Forget compiled bodies and compile failures (tests)."""
    global _triton_failed
    _eager.clear()
    _compiled.clear()
    _compile_failed.clear()
    _triton_failed = False


def _eager_bodies(base: str, sigma: float) -> Tuple[Callable, Callable]:
    key = (base, sigma)
    bodies = _eager.get(key)
    if bodies is None:
        bodies = _eager[key] = make_bodies(base, sigma, fused=False)
    return bodies


def _compiled_bodies(base: str, sigma: float, device_type: str) -> Optional[Tuple[Callable, Callable]]:
    if _compile_failed.get(device_type):
        return None
    key = (base, sigma, device_type)
    bodies = _compiled.get(key)
    if bodies is None:
        try:
            bodies = tuple(
                _torch_compile(b, dynamic=True, fullgraph=True, options=_INDUCTOR_OPTIONS)
                for b in make_bodies(base, sigma)
            )
        except Exception as err:  # pragma: no cover - depends on the installed backend
            _disable_compile(device_type, err)
            return None
        _compiled[key] = bodies
    return bodies


def _disable_compile(device_type: str, err: BaseException) -> None:
    _compile_failed[device_type] = True
    warnings.warn(
        f"CR activation: torch.compile is unavailable on {device_type} ({type(err).__name__}: {err}); "
        "using the eager fused kernel (same results, slower).",
        RuntimeWarning,
        stacklevel=4,
    )


def _use_triton(x: torch.Tensor) -> bool:
    if _triton_failed or x.device.type != "cuda" or _env_flag("CRRELU_DISABLE_TRITON"):
        return False
    from crrelu_lightning.activations import cr_triton

    return cr_triton.supported(x)


def _disable_triton(err: BaseException) -> None:
    global _triton_failed
    _triton_failed = True
    warnings.warn(
        f"CR activation: the Triton kernel failed ({type(err).__name__}: {err}); using torch.compile instead.",
        RuntimeWarning,
        stacklevel=4,
    )


def _run(which: int, args: Tuple[torch.Tensor, ...], base: str, sigma: float, compiled: bool):
    """Forward (``which=0``, args = x, eps) or backward (``which=1``, args = x, dy, eps); x flat, contiguous.

    Compiled: the Triton kernel on CUDA, else the Inductor-compiled body; each falls back (warning once) to
    the next, down to the eager body.
    """
    x = args[0]
    if compiled:
        if _use_triton(x):
            try:
                from crrelu_lightning.activations import cr_triton

                return (cr_triton.cr_forward, cr_triton.cr_backward)[which](*args, base, sigma)
            except Exception as err:  # pragma: no cover - needs a GPU
                _disable_triton(err)
        bodies = _compiled_bodies(base, sigma, x.device.type)
        if bodies is not None:
            try:
                return bodies[which](*args)
            except Exception as err:  # Inductor compiles lazily, on the first call
                _disable_compile(x.device.type, err)
    return _eager_bodies(base, sigma)[which](*args)


def _autocast_off(x: torch.Tensor):
    """The bodies choose their own compute dtype; autocast must not recast inside them."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(device_type=x.device.type, enabled=False)
    return contextlib.nullcontext()


def _flat(t: torch.Tensor) -> torch.Tensor:
    """A 1-D alias of (a contiguous copy of) ``t`` that is not a view.

    A ``view(-1)`` would carry ``_base``, and Dynamo guards on the base's rank and strides, recompiling the
    bodies for every input rank; a fresh tensor set to the same storage keeps one graph for all shapes.
    """
    if not t.is_contiguous():
        t = t.contiguous()
    return t.new_empty(0).set_(t.untyped_storage(), t.storage_offset(), (t.numel(),), (1,))


class CRFunction(torch.autograd.Function):
    """y = g(x) + ε·k_σ(x); saves only x (and the one-element ε)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: torch.Tensor, base: str, sigma: float, compiled: bool):
        with _autocast_off(x):
            y = _run(0, (_flat(x), eps.detach().reshape(())), base, sigma, compiled)
        ctx.save_for_backward(x, eps)
        ctx.base, ctx.sigma, ctx.compiled = base, sigma, compiled
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, eps = ctx.saved_tensors
        with _autocast_off(x):
            dx, deps = _run(1, (_flat(x), _flat(dy), eps.detach().reshape(())), ctx.base, ctx.sigma, ctx.compiled)
        dx = dx.view(x.shape) if ctx.needs_input_grad[0] else None
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
