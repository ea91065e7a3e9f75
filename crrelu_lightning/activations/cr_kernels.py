"""Fused CR-family forward/backward: backward keeps only the input, dε is reduced inside the backward pass.

One ``autograd.Function`` (``CRFunction``) runs the bodies written once in ``cr_math`` (``cr_forward`` /
``cr_backward``). Where they run (``impl``):

- ``"eager"``: the bodies as eager torch ops (no compiler; the fallback).
- ``"compiled"``: in eager mode, fused kernels: on CUDA (float32/16, bfloat16) the hand-written Triton
  kernels (``cr_triton``), elsewhere the bodies compiled by ``torch.compile`` (Inductor: one C++/OpenMP loop
  for the forward, one for the backward that writes dx and reduces dε in the same pass). If a compiler is
  missing or fails, it falls back (Triton → Inductor → eager) with one warning per device type.
  Inside a user's ``torch.compile`` the Function's bodies are traced instead (no kernel dispatch, no graph
  break), so Inductor fuses the activation with its neighbours and AOTAutograd still saves only x.
- ``"reference"``: the plain expression differentiated by autograd (the paper's; keeps ~3 extra tensors).
- ``"auto"``: ``"compiled"`` where the backend can build it, else ``"eager"``. ``CRRELU_DISABLE_COMPILE=1``
  makes ``"auto"`` mean ``"eager"`` (tests, debugging); ``CRRELU_DISABLE_TRITON=1`` makes CUDA use Inductor.

The eager-mode compiled bodies take the flattened tensor with its length marked dynamic, so there is one
graph per (forward/backward, base, σ, dtype) whatever the input shape (plus one for one-element inputs).
σ is specialised (a constant in the kernel): with ``dynamic=True`` Dynamo would turn it into a runtime
argument that Inductor reloads in every loop iteration (measured: ~2× slower CPU kernels). Each
(base, σ, device) gets its own copy of the body function, because Dynamo's recompile limit counts per code
object. ε is passed as a tensor, never as a Python number: ``eps.item()`` would synchronise host and
device on every call.

Half-precision inputs are computed in float32 and cast back; ε stays float32 (or float64), and so does dε.
"""
from __future__ import annotations

import contextlib
import os
import types
import warnings
from typing import Callable, Dict, Optional, Tuple

import torch

from crrelu_lightning.activations import cr_math

IMPLS = ("auto", "compiled", "eager", "reference")
_HALF = (torch.float16, torch.bfloat16)
gauss_f32 = cr_math.gauss_f32  # kept importable from here

# --------------------------------------------------------------------------- compiled bodies (eager mode)
_compiled: Dict[Tuple[str, float, str], Tuple[Callable, Callable]] = {}
_compile_failed: Dict[str, bool] = {}  # device type -> Inductor unavailable
_triton_failed = False
_torch_compile = torch.compile  # indirection so tests can simulate a broken compiler
# Let the C++ compiler fuse a*b + c into FMAs (Inductor compiles with -ffp-contract=off by default). This is
# not fast-math: no reassociation or other value-changing rewrites. ``dynamic_threads``: the bodies take a
# dynamic length, and Inductor decides from the *first* call's length whether the loop gets an OpenMP region
# at all; a small first call (a probe, a one-sample batch) left every later call single-threaded. With it,
# the loop always has one and OpenMP uses the thread count at call time.
INDUCTOR_OPTIONS = {"cpp.enable_floating_point_contract_flag": "fast", "cpp.dynamic_threads": True}


def env_flag(name: str) -> bool:
    """Whether the environment variable ``name`` is set to 1/true/yes/on."""
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def compile_enabled() -> bool:
    return not env_flag("CRRELU_DISABLE_COMPILE")


def reset_caches() -> None:
    """Forget compiled bodies and compile failures (tests)."""
    global _triton_failed
    _compiled.clear()
    _compile_failed.clear()
    _triton_failed = False


def own_copy(fn: Callable) -> Callable:
    """``fn`` with a code object of its own, so its Dynamo cache (and recompile limit) is not shared."""
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


def _bodies(base: str, sigma: float) -> Tuple[Callable, Callable]:
    """The ``cr_math`` bodies with base, σ and ``fused`` bound, each with its own code object."""

    def forward_body(x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return cr_math.cr_forward(base, x, eps, sigma, fused=True)

    def backward_body(x: torch.Tensor, dy: torch.Tensor, eps: torch.Tensor):
        return cr_math.cr_backward(base, x, dy, eps, sigma, fused=True)

    return own_copy(forward_body), own_copy(backward_body)


def _compiled_bodies(base: str, sigma: float, device_type: str) -> Optional[Tuple[Callable, Callable]]:
    if _compile_failed.get(device_type):
        return None
    key = (base, sigma, device_type)
    bodies = _compiled.get(key)
    if bodies is None:
        try:
            bodies = tuple(
                _torch_compile(body, fullgraph=True, options=INDUCTOR_OPTIONS) for body in _bodies(base, sigma)
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
    if _triton_failed or x.device.type != "cuda" or env_flag("CRRELU_DISABLE_TRITON"):
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


def flat(t: torch.Tensor) -> torch.Tensor:
    """1-D contiguous view with its length marked dynamic (one compiled graph for every shape)."""
    out = t.contiguous().view(-1)
    torch._dynamo.maybe_mark_dynamic(out, 0)
    return out


def _run_kernels(which: int, args: Tuple[torch.Tensor, ...], base: str, sigma: float):
    """Eager mode, impl="compiled": forward (``which=0``, args = x, eps) or backward (1: x, dy, eps).

    The Triton kernel on CUDA, else the Inductor-compiled body; each falls back (warning once) to the next,
    down to the eager body. Returns tensors shaped like x.
    """
    x = args[0]
    if _use_triton(x):
        try:
            from crrelu_lightning.activations import cr_triton

            dense = tuple(a.contiguous() for a in args[:-1]) + (args[-1],)
            out = (cr_triton.cr_forward, cr_triton.cr_backward)[which](*dense, base, sigma)
            return out.view(x.shape) if which == 0 else (out[0].view(x.shape), out[1])
        except Exception as err:  # pragma: no cover - needs a GPU
            _disable_triton(err)
    bodies = _compiled_bodies(base, sigma, x.device.type)
    if bodies is not None:
        try:
            out = bodies[which](*(flat(a) for a in args[:-1]), args[-1])
            return out.view(x.shape) if which == 0 else (out[0].view(x.shape), out[1])
        except Exception as err:  # Inductor compiles lazily, on the first call
            _disable_compile(x.device.type, err)
    return (cr_math.cr_forward, cr_math.cr_backward)[which](base, *args, sigma)


def _autocast_off(x: torch.Tensor):
    """The bodies choose their own compute dtype; autocast must not recast inside them."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(device_type=x.device.type, enabled=False)
    return contextlib.nullcontext()


class CRFunction(torch.autograd.Function):
    """y = g(x) + ε·k_σ(x); saves only x (and the one-element ε).

    ``compiled``: dispatch to fused kernels in eager mode. Under ``torch.compile`` the bodies are always
    traced (``fused`` polynomial Gaussian in float32), whatever ``compiled`` says.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: torch.Tensor, base: str, sigma: float, compiled: bool):
        e = eps.detach().reshape(())
        with _autocast_off(x):
            if torch.compiler.is_compiling():
                y = cr_math.cr_forward(base, x, e, sigma, fused=True)
            elif compiled:
                y = _run_kernels(0, (x, e), base, sigma)
            else:
                y = cr_math.cr_forward(base, x, e, sigma)
        ctx.save_for_backward(x, eps)
        ctx.base, ctx.sigma, ctx.compiled = base, sigma, compiled
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, eps = ctx.saved_tensors
        e = eps.detach().reshape(())
        with _autocast_off(x):
            if torch.compiler.is_compiling():
                dx, deps = cr_math.cr_backward(ctx.base, x, dy, e, ctx.sigma, fused=True)
            elif ctx.compiled:
                dx, deps = _run_kernels(1, (x, dy, e), ctx.base, ctx.sigma)
            else:
                dx, deps = cr_math.cr_backward(ctx.base, x, dy, e, ctx.sigma)
        dx = dx if ctx.needs_input_grad[0] else None
        deps = deps.to(eps.dtype).reshape(eps.shape) if ctx.needs_input_grad[1] else None
        return dx, deps, None, None, None


def resolve_impl(impl: str, device: torch.device) -> str:
    if impl not in IMPLS:
        raise ValueError(f"Unknown CR implementation {impl!r}; expected one of {IMPLS}")
    if impl == "auto":
        if torch.compiler.is_compiling():
            return "compiled"  # traced either way; skip the environment lookups
        if not compile_enabled() or _compile_failed.get(device.type):
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
