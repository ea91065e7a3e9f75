"""EAFO-corrected activations for any base: f(x) + ε·ĥ(x) with ĥ the derived correction (docs/eafo_general.md).

ĥ = (w·c)/s is ``crrelu_lightning.entropy.derive``'s correction, normalised so that f_ε is strictly increasing
on the branch for every ε in (−1, 1) (s = sup |h'/f'|). ε > 0 lowers the branch entropy. For ReLU on N(0, 1)
ĥ(x) = −x·exp(−x²/2): ``eafo_relu`` with ε is CRReLU with −ε.

The table (ĥ and ĥ' on a uniform grid) is interpolated by cubic Hermite pieces, which are C¹. The fused
forward and backward bodies keep only x for backward and reduce dε inside the backward body:

    forward:   y  = f(x) + ε·ĥ(x)
    backward:  dx = dy·(f'(x) + ε·ĥ'(x)),   dε = Σ dy·ĥ(x)

For relu/gelu/silu/mish, f and f' are the closed forms in ``cr_math`` and the bodies live in ``eafo_kernels``
(compiled once, or plain torch ops for ``impl="eager"``; under an outer ``torch.compile`` called as custom
ops, no graph break). Any other registered base is applied by its module and differentiated by autograd
(slower, eager).
"""
from __future__ import annotations

import hashlib
import math
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from crrelu_lightning.activations import cr_kernels, cr_math, eafo_fit, eafo_kernels, eafo_native
from crrelu_lightning.activations.registry import register_activation

IMPLS = ("auto", "compiled", "eager", "reference")
FORMS = ("auto", "table", "fit")
compute_dtype, interp, interp_with_slope = eafo_kernels.compute_dtype, eafo_kernels.interp, eafo_kernels.interp_with_slope


class EAFOFunction(torch.autograd.Function):
    """y = f(x) + ε·ĥ(x) for a closed-form base; saves x (and the one-element ε, the small table)."""

    @staticmethod
    def forward(ctx, x, eps, coef, grid, base: str, compiled: bool):
        ctx.save_for_backward(x, eps, coef, grid)
        ctx.base, ctx.compiled = base, compiled
        return eafo_kernels.run(0, (x, eps.detach(), coef, grid), base, compiled)

    @staticmethod
    def backward(ctx, dy):
        x, eps, coef, grid = ctx.saved_tensors
        dx, deps = eafo_kernels.run(1, (x, dy, eps.detach(), coef, grid), ctx.base, ctx.compiled)
        dx = dx if ctx.needs_input_grad[0] else None
        deps = deps.to(eps.dtype).reshape(eps.shape) if ctx.needs_input_grad[1] else None
        return dx, deps, None, None, None, None


class EAFOFitFunction(torch.autograd.Function):
    """y = f(x) + ε·ĥ(x) with ĥ the fitted closed form (``eafo_fit``); saves x (and ε).

    ``form``: ``eafo_kernels.FitForm`` (power, degree, standard envelope, parameters as Python floats).
    """

    @staticmethod
    def forward(ctx, x, eps, base: str, form: eafo_kernels.FitForm, compiled: bool):
        ctx.save_for_backward(x, eps)
        ctx.base, ctx.form, ctx.compiled = base, form, compiled
        return eafo_kernels.run(0, (x, eps.detach()), base, compiled, form)

    @staticmethod
    def backward(ctx, dy):
        x, eps = ctx.saved_tensors
        dx, deps = eafo_kernels.run(1, (x, dy, eps.detach()), ctx.base, ctx.compiled, ctx.form)
        dx = dx if ctx.needs_input_grad[0] else None
        deps = deps.to(eps.dtype).reshape(eps.shape) if ctx.needs_input_grad[1] else None
        return dx, deps, None, None, None


class EAFONativeFunction(torch.autograd.Function):
    """The closed form's native CPU kernel (``eafo_native``) for contiguous float32 x and a float32 ε; saves x.

    The shortest path from the module to the kernel (the module checked dtype, device and layout): in a training
    step the Python between two large kernels runs with cold caches, and the general dispatch
    (``EAFOFitFunction`` → ``eafo_kernels.run``) cost ≈ 0.2 ms per call there.
    """

    @staticmethod
    def forward(ctx, x, eps, kernel: eafo_native.NativeKernel):
        ctx.save_for_backward(x, eps)
        ctx.kernel = kernel
        return kernel.forward_unchecked(x, eps)

    @staticmethod
    def backward(ctx, dy):
        x, eps = ctx.saved_tensors
        dx, deps = ctx.kernel.backward_unchecked(x, dy if dy.is_contiguous() else dy.contiguous(), eps)
        return dx if ctx.needs_input_grad[0] else None, deps if ctx.needs_input_grad[1] else None, None


class _GenericEAFOFunction(torch.autograd.Function):
    """Any registered base: f and f' from its module by autograd (recomputed in backward), the table as above."""

    @staticmethod
    def forward(ctx, x, eps, coef, grid, module: nn.Module):
        ctx.save_for_backward(x, eps, coef, grid)
        ctx.module = module
        cd = compute_dtype(x.dtype, eps.dtype)
        xf = x.to(cd)
        return (module(xf) + eps.detach().to(cd) * interp(xf, coef.to(cd), grid.to(cd))).to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        x, eps, coef, grid = ctx.saved_tensors
        cd = compute_dtype(x.dtype, eps.dtype)
        xf, dyf = x.detach().to(cd), dy.to(cd)
        with torch.enable_grad():
            xr = xf.clone().requires_grad_(True)
            (dbase,) = torch.autograd.grad(ctx.module(xr), xr, dyf)
        h, dh = interp_with_slope(xf, coef.to(cd), grid.to(cd))
        dx = (dbase + eps.detach().to(cd) * dyf * dh).to(x.dtype) if ctx.needs_input_grad[0] else None
        deps = (dyf * h).sum().to(eps.dtype).reshape(eps.shape) if ctx.needs_input_grad[1] else None
        return dx, deps, None, None, None


# --------------------------------------------------------------------------- the module
class EAFOActivation(nn.Module):
    """f(x) + ε·ĥ(x): the EAFO correction of ``base`` derived for N(mu, sigma²) inputs, one learnable ε.

    Args:
        base: any registered elementwise activation name (class default for the ``eafo_*`` subclasses).
        eps_init: initial ε in normalised units: (−1, 1) is always monotone on the branch, ε > 0 lowers the
            branch entropy. The default 0.5 is half-way to the monotone bound (GELU on N(0, 1): ΔH_B = −0.125).
        mu, sigma: the input distribution the static table is derived for.
        taper_width, taper, grid_size: passed to ``derive_correction`` (taper width in units of sigma).
        learnable: whether ε is trained.
        impl: ``"auto"`` (compiled where possible), ``"compiled"``, ``"eager"`` or ``"reference"`` (the plain
            expression, differentiated by autograd).
        form: how ĥ is evaluated. ``"auto"``: the fitted closed form (``eafo_fit``, no table lookups) where
            one is within tolerance of the table and the compute dtype is float32 (float32 and half inputs),
            else the cubic-Hermite table; ``"table"``: always the table; ``"fit"``: the closed form in every
            dtype where there is one (tests).
        inplace: accepted for timm compatibility and ignored.

    State: ``eps`` (parameter), and the buffers ``table`` ([2, n + 1]: ĥ and ĥ' on the grid), ``grid``
    ([lo, hi]) and ``eps_interval`` (the normalised monotone interval), all in ``state_dict``. ``set_table``
    swaps in a new derivation (the dynamic mode, ``EAFODeriveCallback``). The closed form is refitted from
    the table (``set_table(..., envelope=(mean, std))``; the static table gets N(mu, sigma)) and never
    stored: a loaded table other than the fitted one drops it.
    """

    base: str = "gelu"

    def __init__(
        self,
        base: Optional[str] = None,
        eps_init: float = 0.5,
        mu: float = 0.0,
        sigma: float = 1.0,
        taper_width: float = 1.0,
        taper: str = "auto",
        grid_size: int = 1024,
        learnable: bool = True,
        impl: str = "auto",
        inplace: bool = False,
        form: str = "auto",
    ) -> None:
        super().__init__()
        from crrelu_lightning.entropy import derive

        if base is not None:
            self.base = str(base).strip().lower()
        eps_init = float(eps_init)
        if not math.isfinite(eps_init):
            raise ValueError(f"eps_init must be finite, got {eps_init!r}")
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        self.impl = impl
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {form!r}")
        self.form = form
        # (power, degree, standard envelope, parameters): Python floats, exact for float64 use (a float32 ``a``
        # alone moves the closed form's zero by ~1e-8, a 1 % change of ĥ'/f' within 1e-6 of the branch end).
        self._fit_form: Optional[eafo_kernels.FitForm] = None
        self._fit_key: Optional[str] = None
        # (kernel, impl, form) of the native fast path, resolved at the first float32 CPU call (``forward``)
        self._native: Optional[Tuple[Any, str, str]] = None
        self.taper_width, self.taper, self.grid_size = float(taper_width), taper, int(grid_size)
        self._generic: Optional[nn.Module] = None
        if self.base not in cr_math.CR_BASES:
            from crrelu_lightning.activations import build_activation

            self._generic = build_activation(self.base)  # raises listing the registered names on a miss
        x, h, dh, interval = derive.normal_table(self.base, float(mu), float(sigma), self.taper_width, taper, self.grid_size)
        self.eps = nn.Parameter(torch.tensor(eps_init, dtype=torch.float32), requires_grad=learnable)
        self.register_buffer("table", torch.zeros(2, self.grid_size + 1))
        self.register_buffer("grid", torch.zeros(2))
        self.register_buffer("eps_interval", torch.zeros(2))
        self.register_buffer("_coef", torch.zeros(4, self.grid_size), persistent=False)
        self.register_buffer("_grid", torch.zeros(2), persistent=False)
        self.register_load_state_dict_post_hook(_refresh_after_load)
        self.set_table(x, h, dh, interval, envelope=(float(mu), float(sigma)))
        self.input_description = f"N({mu:g}, {sigma:g}^2)"

    # ------------------------------------------------------------------ the table
    @torch.no_grad()
    def set_table(
        self,
        x: Union[np.ndarray, torch.Tensor],
        h: Union[np.ndarray, torch.Tensor],
        dh: Union[np.ndarray, torch.Tensor],
        eps_interval: Tuple[float, float],
        envelope: Optional[Tuple[float, float]] = None,
    ) -> None:
        """Replace the correction by ĥ, ĥ' on the uniform grid ``x`` (same number of nodes), in place.

        ``envelope``: (mean, std) of the input the table was derived for; given, the closed form is fitted
        (kept only within tolerance). Without it the table kernel is used.
        """
        x = torch.tensor(np.asarray(x, dtype=np.float64))
        if x.numel() != self.grid_size + 1:
            raise ValueError(f"table needs {self.grid_size + 1} grid nodes (grid_size={self.grid_size}), got {x.numel()}")
        self.table.copy_(torch.tensor(np.stack([np.asarray(h, dtype=np.float64), np.asarray(dh, dtype=np.float64)])))
        self.grid.copy_(torch.stack([x[0], x[-1]]))
        self.eps_interval.copy_(torch.tensor([float(v) for v in eps_interval], dtype=torch.float64))
        self._refresh()
        self._fit_form, self._fit_key, self._native = None, None, None
        if envelope is not None and self._generic is None:
            fit = _cached_fit(self.base, x.numpy(), np.asarray(h, dtype=np.float64), np.asarray(dh, dtype=np.float64),
                              float(envelope[0]), float(envelope[1]))
            if fit is not None:
                params = tuple(float(v) for v in fit.params[:eafo_fit.N_HEAD + fit.degree + 1])
                self._fit_form = (fit.power, fit.degree, bool(fit.standard_envelope), params)
                self._fit_key = _table_key(self.table)

    @property
    def uses_closed_form(self) -> bool:
        """Whether a fitted closed form is available (used for float32 compute with ``form="auto"``)."""
        return self._fit_form is not None

    def _fit_for(self, x: torch.Tensor, impl: Optional[str] = None) -> bool:
        """Closed form or table for this input: ``form``, the compute dtype and the implementation decide.

        ``"auto"`` keeps the table for the eager implementation: as separate eager ops the closed form's
        multiply-adds are each a pass over memory, slower than the table's lookups.
        """
        if self._fit_form is None or self.form == "table":
            return False
        if self.form == "fit":
            return True
        if compute_dtype(x.dtype, self.eps.dtype) != torch.float32:
            return False
        return torch.compiler.is_compiling() or (impl or self._resolve(x.device)) != "eager"

    @torch.no_grad()
    def _refresh(self) -> None:
        lo, hi = self.grid.double()
        dx = float(hi - lo) / self.grid_size
        if not dx > 0:
            return  # an all-zero grid before the first set_table
        t = self.table.double()
        self._coef.copy_(eafo_kernels.hermite_coefficients(t[0], t[1], dx))
        self._grid.copy_(torch.stack([lo, torch.tensor(1.0 / dx, dtype=torch.float64)]))

    def correction(self, x: torch.Tensor) -> torch.Tensor:
        """ĥ(x) as the forward evaluates it for x's dtype: the closed form or the interpolated table."""
        if self._fit_for(x):
            power, degree, _, params = self._fit_form
            return eafo_fit.correction_and_slope(x, params, power, degree, slope=False)
        return interp(x, self._coef.to(x.dtype), self._grid.to(x.dtype))

    # ------------------------------------------------------------------ forward
    def _resolve(self, device: torch.device) -> str:
        if self.impl != "auto":
            return self.impl
        if eafo_kernels.compile_failed(device.type) or not cr_kernels.compile_enabled():
            return "eager"
        return "compiled"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        native = self._native
        eps = self.eps
        if (native is not None and x.dtype is torch.float32 and eps.dtype is torch.float32 and x.is_cpu
                and native[1] == self.impl and native[2] == self.form and not torch.compiler.is_compiling()):
            return EAFONativeFunction.apply(x if x.is_contiguous() else x.contiguous(), eps, native[0])
        impl = self._resolve(x.device)
        if impl == "reference" or (self._generic is not None and torch.compiler.is_compiling()):
            return self.reference(x)
        if self._generic is not None:
            return _GenericEAFOFunction.apply(x, self.eps, self._coef, self._grid, self._generic)
        if self._fit_for(x, impl):
            if impl == "compiled" and not torch.compiler.is_compiling() and eafo_native.supports(x, self.eps):
                kernel = eafo_native.kernel(self.base, *self._fit_form)
                if kernel is not None:
                    self._native = (kernel, self.impl, self.form)
                    return EAFONativeFunction.apply(x.contiguous(), self.eps, kernel)
            return EAFOFitFunction.apply(x, self.eps, self.base, self._fit_form, impl == "compiled")
        return EAFOFunction.apply(x, self.eps, self._coef, self._grid, self.base, impl == "compiled")

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_native"] = None  # holds a loaded library (not picklable): resolved again at the next call
        return state

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The plain expression f(x) + ε·ĥ(x), differentiated by autograd (tests compare against it)."""
        cd = compute_dtype(x.dtype, self.eps.dtype)
        xf = x.to(cd)
        base = self._generic(xf) if self._generic is not None else cr_math.base_forward(self.base, xf)
        return (base + self.eps.to(cd) * self.correction(xf)).to(x.dtype)

    def extra_repr(self) -> str:
        form = "closed form" if self.uses_closed_form and self.form != "table" else "table"
        return f"base={self.base}, eps={self.eps.item():.4g}, table={self.input_description}, impl={self.impl}, kernel={form}"


def _refresh_after_load(module: "EAFOActivation", incompatible_keys) -> None:
    module._refresh()  # the interval coefficients derive from the loaded table and grid
    if module._fit_key is not None and _table_key(module.table) != module._fit_key:
        module._fit_form, module._fit_key, module._native = None, None, None  # a different table: its closed form is unknown


def _table_key(table: torch.Tensor) -> str:
    return hashlib.sha1(table.detach().cpu().double().numpy().tobytes()).hexdigest()


_FITS: Dict[Tuple[Any, ...], Optional[eafo_fit.ClosedForm]] = {}


def _cached_fit(base: str, x: np.ndarray, h: np.ndarray, dh: np.ndarray, mean: float, std: float):
    """``eafo_fit.fit_closed_form``, once per distinct table (every layer of a model shares the static one)."""
    key = (base, mean, std, hashlib.sha1(x.tobytes() + h.tobytes() + dh.tobytes()).hexdigest())
    if key not in _FITS:
        _FITS[key] = eafo_fit.fit_closed_form(x, h, dh, base, mean, std)
    return _FITS[key]


@register_activation("eafo")
class EAFOGeneric(EAFOActivation):
    """``EAFOActivation`` by name; choose the base with ``activation_kwargs: {base: ...}`` (default gelu)."""


@register_activation("eafo_relu")
class EAFOReLU(EAFOActivation):
    """ReLU + ε·ĥ; on N(0, 1), ĥ(x) = −x·exp(−x²/2), so this is CRReLU with −ε."""

    base = "relu"


@register_activation("eafo_gelu")
class EAFOGELU(EAFOActivation):
    """GELU + ε·ĥ, tapered at GELU's minimum."""

    base = "gelu"


@register_activation("eafo_silu", "eafo_swish")
class EAFOSiLU(EAFOActivation):
    """SiLU + ε·ĥ, tapered at SiLU's minimum."""

    base = "silu"


@register_activation("eafo_mish")
class EAFOMish(EAFOActivation):
    """Mish + ε·ĥ, tapered at Mish's minimum."""

    base = "mish"
