"""EAFO kernels: the fused forward/backward bodies, compiled once per (base, device, form), and their dispatch.

Two ways to evaluate the correction ĥ (docs/eafo_general.md §2):

- the table: cubic-Hermite pieces on a uniform grid (C¹), four lookups per element;
- the fitted closed form (``eafo_fit``): a polynomial times a Gaussian, no lookups (float32 compute).

The bodies keep only x for backward and reduce dε inside the backward body:

    forward:   y  = f(x) + ε·ĥ(x)
    backward:  dx = dy·(f'(x) + ε·ĥ'(x)),   dε = Σ dy·ĥ(x)

``run`` executes them. In eager mode with ``compiled``: the bodies compiled by ``torch.compile`` (one graph
for every shape), falling back to eager ops with one warning if the compiler fails. Under a user's
``torch.compile`` the compiled bodies are called as the opaque custom ops ``crrelu::eafo_forward`` /
``crrelu::eafo_backward`` (no graph break). Traced into the caller's graph instead, AOTAutograd's common-
subexpression pass merged the backward's ĥ with the forward's and the partitioner saved ĥ and a mask beside
x (two more activation-sized tensors), and the caller's Inductor options dropped the FMA contraction the
Horner loops need: the compiled step was slower than the eager one. With ``compiled=False`` the bodies
are plain ops, traced under an outer compile.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from crrelu_lightning.activations import cr_kernels, cr_math, eafo_fit, eafo_native

_HALF = (torch.float16, torch.bfloat16)
_INDUCTOR_OPTIONS = cr_kernels.INDUCTOR_OPTIONS

# --------------------------------------------------------------------------- table → cubic pieces
def hermite_coefficients(h: torch.Tensor, dh: torch.Tensor, dx: float) -> torch.Tensor:
    """[4, n] coefficients a0..a3 of h(x_k + s·Δ) = a0 + a1 s + a2 s² + a3 s³ per interval (C¹ Hermite)."""
    v0, v1 = h[:-1], h[1:]
    m0, m1 = dh[:-1] * dx, dh[1:] * dx
    return torch.stack([v0, m0, 3.0 * (v1 - v0) - 2.0 * m0 - m1, 2.0 * (v0 - v1) + m0 + m1])


def _locate(x: torch.Tensor, coef: torch.Tensor, grid: torch.Tensor):
    """Interval coefficients and local coordinate s of every x; ``inside`` is False off the table (ĥ = 0)."""
    n = coef.shape[1]
    t = (x - grid[0]) * grid[1]
    inside = (t >= 0.0) & (t <= n)
    t = torch.where(t > 0.0, t, 0.0)  # NaN lands here too: comparisons with NaN are False
    k = torch.floor(t)
    k = torch.where(k < n - 1, k, n - 1)
    s = t - k
    idx = k.to(torch.int32)
    # The index is clamped into [0, n − 1] above: the unchecked gather saves a bounds check per load.
    a = [torch.ops.aten._unsafe_index(coef[j], [idx]) for j in range(4)]
    return a, s, inside


def interp(x: torch.Tensor, coef: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    (a0, a1, a2, a3), s, inside = _locate(x, coef, grid)
    return torch.where(inside, ((a3 * s + a2) * s + a1) * s + a0, 0.0)


def interp_with_slope(x: torch.Tensor, coef: torch.Tensor, grid: torch.Tensor):
    (a0, a1, a2, a3), s, inside = _locate(x, coef, grid)
    h = torch.where(inside, ((a3 * s + a2) * s + a1) * s + a0, 0.0)
    dh = torch.where(inside, ((3.0 * a3 * s + 2.0 * a2) * s + a1) * grid[1], 0.0)
    return h, dh


def compute_dtype(x_dtype: torch.dtype, eps_dtype: torch.dtype) -> torch.dtype:
    xd = torch.float32 if x_dtype in _HALF else x_dtype
    return torch.promote_types(xd, torch.float32 if eps_dtype in _HALF else eps_dtype)


# --------------------------------------------------------------------------- bodies (closed-form bases)
def eafo_fwd(x: torch.Tensor, eps: torch.Tensor, coef: torch.Tensor, grid: torch.Tensor, base: str) -> torch.Tensor:
    cd = compute_dtype(x.dtype, eps.dtype)
    xf = x.to(cd)
    y = cr_math.base_forward(base, xf) + eps.to(cd) * interp(xf, coef.to(cd), grid.to(cd))
    return y.to(x.dtype)


def eafo_bwd(x: torch.Tensor, dy: torch.Tensor, eps: torch.Tensor, coef: torch.Tensor, grid: torch.Tensor, base: str):
    cd = compute_dtype(x.dtype, eps.dtype)
    xf, dyf = x.to(cd), dy.to(cd)
    h, dh = interp_with_slope(xf, coef.to(cd), grid.to(cd))
    dx = cr_math.base_backward(base, xf, dyf) + eps.to(cd) * (dyf * dh)
    deps = (dyf * h).sum()  # dL/dε in the same pass as dx
    return dx.to(x.dtype), deps


# --------------------------------------------------------------------------- bodies (the fitted closed form)
def _fast_base(base: str, x: torch.Tensor, g: Optional[torch.Tensor], dy: Optional[torch.Tensor] = None):
    """f(x) (or dy·f'(x) when dy is given); with ``g`` = exp(−x²/2), GELU without Sleef's erf."""
    if base == "gelu" and g is not None:
        return cr_math.gelu_fused(x, g, dy)
    return cr_math.base_forward(base, x) if dy is None else cr_math.base_backward(base, x, dy)


def _gelu_gauss(base: str, x: torch.Tensor) -> Optional[torch.Tensor]:
    return cr_math.gauss_f32(x * x, -0.5) if base == "gelu" and x.dtype == torch.float32 else None


# (power k, degree, standard envelope, parameters): the closed form's structure and its numbers, as Python
# floats, so that compiled bodies hold them as constants (loaded from a tensor, the 20 parameters were 20
# scalar loads per vector iteration; measured 1.3× slower).
FitForm = Tuple[int, int, bool, Tuple[float, ...]]


def fit_fwd(x: torch.Tensor, eps: torch.Tensor, base: str, form: FitForm):
    power, degree, shared, params = form
    cd = compute_dtype(x.dtype, eps.dtype)
    xf = x.to(cd)
    g = _gelu_gauss(base, xf)
    h = eafo_fit.correction_and_slope(xf, params, power, degree, env=g if shared else None, slope=False)
    return (_fast_base(base, xf, g) + eps.to(cd) * h).to(x.dtype)


def fit_bwd(x: torch.Tensor, dy: torch.Tensor, eps: torch.Tensor, base: str, form: FitForm):
    power, degree, shared, params = form
    cd = compute_dtype(x.dtype, eps.dtype)
    xf, dyf = x.to(cd), dy.to(cd)
    g = _gelu_gauss(base, xf)
    h, dh = eafo_fit.correction_and_slope(xf, params, power, degree, env=g if shared else None)
    dx = _fast_base(base, xf, g, dyf) + eps.to(cd) * (dyf * dh)
    return dx.to(x.dtype), (dyf * h).sum()


_compiled: Dict[Tuple[Any, ...], Tuple[Callable, Callable]] = {}
_compile_failed: Dict[str, bool] = {}


def _plain_bodies(base: str, form: Optional[FitForm]):
    """Forward/backward bodies: the table's (``form`` None: args x, eps, coef, grid) or the closed form's (x, eps)."""
    if form is None:
        def fwd(x, eps, coef, grid):
            return eafo_fwd(x, eps, coef, grid, base)

        def bwd(x, dy, eps, coef, grid):
            return eafo_bwd(x, dy, eps, coef, grid, base)
    else:
        def fwd(x, eps):
            return fit_fwd(x, eps, base, form)

        def bwd(x, dy, eps):
            return fit_bwd(x, dy, eps, base, form)
    return fwd, bwd


def _bodies(base: str, device_type: str, compiled: bool, form: Optional[FitForm] = None):
    """The bodies compiled once per (base, device, form), or plain (eager, traced into an outer graph)."""
    if not compiled or _compile_failed.get(device_type) or torch.compiler.is_compiling():
        return _plain_bodies(base, form)
    key = (base, device_type, form)
    bodies = _compiled.get(key)
    if bodies is None:
        # Not dynamic=True: that would turn every Python float in the bodies (Φ's coefficients, the closed form's
        # parameters) into a runtime argument reloaded per loop iteration. ``_run_bodies`` marks the flattened
        # length dynamic instead. Each key gets its own code object: Dynamo's recompile limit counts per code.
        bodies = _compiled[key] = tuple(
            torch.compile(cr_kernels.own_copy(body), fullgraph=True, options=_INDUCTOR_OPTIONS)
            for body in _plain_bodies(base, form)
        )
    return bodies


def _native(which: int, args, base: str, form: FitForm):
    """The native CPU kernel's result (``eafo_native``), or None where it does not apply or cannot be built."""
    eps = args[1 + which]
    if not eafo_native.supports(args[0], eps) or (which == 1 and args[1].dtype != torch.float32):
        return None
    k = eafo_native.kernel(base, *form)
    if k is None:
        return None
    if which == 0:
        return k.forward(args[0], eps)
    # dε written by the kernel into a 0-d tensor allocated before the call (see NativeKernel.backward_unchecked)
    return k.backward_unchecked(args[0].contiguous(), args[1].contiguous(), eafo_native.eps_tensor(eps).reshape(()))


def _run_bodies(which: int, args, base: str, compiled: bool, form: Optional[FitForm] = None):
    x = args[0]
    device_type = x.device.type
    if compiled and form is not None and device_type == "cpu":
        out = _native(which, args, base, form)
        if out is not None:
            return out
    bodies = _bodies(base, device_type, compiled, form)
    if compiled and not torch.compiler.is_compiling():
        # One graph for every shape: flattened tensors with the length marked dynamic (as the CR kernels).
        n_big = 1 if which == 0 else 2
        args = tuple(cr_kernels.flat(a) for a in args[:n_big]) + tuple(args[n_big:])
    try:
        out = bodies[which](*args)
    except Exception as err:  # Inductor compiles lazily; a missing compiler shows up here
        if not compiled or _compile_failed.get(device_type) or torch.compiler.is_compiling():
            raise
        _compile_failed[device_type] = True
        warnings.warn(
            f"EAFO activation: torch.compile failed on {device_type} ({type(err).__name__}: {err}); "
            "using the eager bodies (same results, slower).",
            RuntimeWarning,
            stacklevel=3,
        )
        out = _bodies(base, device_type, False, form)[which](*args)
    return out.view(x.shape) if which == 0 else (out[0].view(x.shape), out[1])


# --------------------------------------------------------------------------- custom ops (under an outer compile)
def _form_args(form: Optional[FitForm]) -> Tuple[List[int], List[float]]:
    if form is None:
        return [], []
    return [int(form[0]), int(form[1]), int(bool(form[2]))], [float(v) for v in form[3]]


def _form_of(structure: List[int], params: List[float]) -> Optional[FitForm]:
    if len(structure) == 0:
        return None
    return int(structure[0]), int(structure[1]), bool(structure[2]), tuple(float(v) for v in params)


@torch.library.custom_op("crrelu::eafo_forward", mutates_args=())
def eafo_forward_op(x: torch.Tensor, eps: torch.Tensor, table: List[torch.Tensor], base: str, structure: List[int],
                    params: List[float]) -> torch.Tensor:
    """The compiled forward body: the table's (``table`` = [coef, grid]) or the closed form's (``structure`` =
    [power, degree, standard envelope], ``params``)."""
    return _run_bodies(0, (x, eps, *table), base, True, _form_of(structure, params))  # flattens x


@eafo_forward_op.register_fake
def _(x, eps, table, base, structure, params):
    return x.new_empty(x.shape)


@torch.library.custom_op("crrelu::eafo_backward", mutates_args=())
def eafo_backward_op(x: torch.Tensor, dy: torch.Tensor, eps: torch.Tensor, table: List[torch.Tensor], base: str,
                     structure: List[int], params: List[float]) -> Tuple[torch.Tensor, torch.Tensor]:
    """The compiled backward body: (dx, dε), dε in the compute dtype."""
    return _run_bodies(1, (x, dy, eps, *table), base, True, _form_of(structure, params))


@eafo_backward_op.register_fake
def _(x, dy, eps, table, base, structure, params):
    return x.new_empty(x.shape), x.new_empty((), dtype=compute_dtype(x.dtype, eps.dtype))


def run(which: int, args: Tuple[torch.Tensor, ...], base: str, compiled: bool, form: Optional[FitForm] = None):
    """Forward (``which`` 0, args = x, eps[, coef, grid]) or backward (1: x, dy, eps[, coef, grid]), shaped
    like x; ``form`` None for the table, else the closed form (no table tensors)."""
    if compiled and torch.compiler.is_compiling():
        n = 2 if which == 0 else 3
        op = eafo_forward_op if which == 0 else eafo_backward_op
        return op(*args[:n], list(args[n:]), base, *_form_args(form))
    return _run_bodies(which, args, base, compiled, form)


def compile_failed(device_type: str) -> bool:
    """Whether Inductor failed on this device type (``impl="auto"`` then means eager)."""
    return bool(_compile_failed.get(device_type))
