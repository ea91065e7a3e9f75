"""A gather-free closed form of an EAFO correction table, for fast float32 kernels (docs/eafo_general.md §5).

The cubic-Hermite table needs four table lookups per element, which Inductor's CPU backend emits as scalar
loops (≈ 4× GELU for the whole activation). A correction derived for a normal input is smooth enough to be
written, on its table range [a, b], as

    ĥ(x) ≈ (x − a)^k · exp(−(x − m)²/(2s²)) · P(t),    t = α·x + β ∈ [−1, 1],  0 outside (a, b)

with P a polynomial of degree ≤ 16 (the lowest of ``DEGREES`` that fits) (Horner: one multiply-add per degree) and exp from ``gauss_f32``.
``fit_closed_form`` fits P by least squares on the values and slopes of the table, for k ∈ {1, 2, 4} and two
envelope widths, rescales it so that sup |ĥ'/f'| ≤ 1 still holds on the grid (ε ∈ (−1, 1) stays monotone), and
keeps it only if, **evaluated in float32 by the kernel body itself**, it is within ``VALUE_TOL`` of the
table's values and ``SLOPE_TOL`` of its slopes (relative to their maxima). Histogram-derived tables (the
dynamic mode) carry the histogram's bumps and usually miss the tolerance; they keep the table kernel.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

from crrelu_lightning.activations import cr_math

DEGREES = (4, 6, 8, 10, 12, 14, 16)  # tried in order; the first that meets the tolerance is kept (fewer multiply-adds)
MAX_DEGREE = DEGREES[-1]
VALUE_TOL = 1e-4  # max |ĥ_fit − ĥ| / max |ĥ|
SLOPE_TOL = 1e-3  # max |ĥ'_fit − ĥ'| / max |ĥ'|
REACH = 7.0  # the fit (and the kernel's support) ends at m + REACH·s, where the envelope is < 3e-11
_POWERS = (1, 2, 4)
NEAR_END = 0.5  # ratio rows within 0.5σ of the left end
RATIO_WEIGHT, END_WEIGHT = 1.0, 10.0
_WIDTHS = (1.0, 0.9)  # envelope width / input std; for GELU on N(0, 1), 1.0 is GELU's own exp(−x²/2)
_ENVELOPE_OPS = 16  # gauss_f32 and (x − m)², saved where the kernel already has the envelope
N_HEAD = 6  # params = [a, b_fit, α, β, m, c = −1/(2s²), p_0 … p_degree, 0 …]
N_PARAMS = N_HEAD + MAX_DEGREE + 1


@dataclass(frozen=True)
class ClosedForm:
    power: int
    degree: int
    params: np.ndarray  # float64, N_PARAMS values (zeros after p_degree)
    value_error: float  # relative, float32 kernel vs table
    slope_error: float

    @property
    def standard_envelope(self) -> bool:
        """Envelope exp(−x²/2) exactly (m = 0, s = 1): a GELU kernel reuses its own Gaussian."""
        return self.params[4] == 0.0 and self.params[5] == -0.5


def correction_and_slope(x: torch.Tensor, params: Union[torch.Tensor, Sequence[float]], power: int, degree: int,
                         env: Optional[torch.Tensor] = None, slope: bool = True):
    """ĥ(x) (and ĥ'(x)) of the closed form, as plain ops a compiler fuses.

    ``params``: a tensor in x's dtype, or Python floats (the kernels': constants in the compiled code).

    ``env``: the envelope exp(c·(x − m)²) when the caller already has it (GELU's exp(−x²/2)).
    """
    a, b, alpha, beta, m, c = (params[i] for i in range(N_HEAD))
    u = x - a
    t = x * alpha + beta
    top = N_HEAD + degree
    p = params[top] * t + params[top - 1]
    dp = params[top] * torch.ones_like(t) if slope else None
    for j in range(degree - 2, -1, -1):
        if slope:
            dp = dp * t + p
        p = p * t + params[N_HEAD + j]
    d = x - m
    if env is None:
        env = _envelope(d * d, c)
    uk = u if power == 1 else (u * u if power == 2 else (u * u) * (u * u))
    inside = (x > a) & (x < b)
    h = torch.where(inside, uk * env * p, 0.0)
    if not slope:
        return h
    # d/dx [u^k·E·P] = E·u^(k−1)·(k·P + u·(α·P' + 2c·(x − m)·P))
    uk1 = torch.ones_like(u) if power == 1 else (u if power == 2 else u * u * u)
    dh = torch.where(inside, env * uk1 * (power * p + u * (alpha * dp + (2.0 * c) * d * p)), 0.0)
    return h, dh


def _envelope(d2: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """exp(c·d2) for c < 0: the fused polynomial in float32 (``gauss_f32``'s scheme, c a tensor), else exp."""
    if d2.dtype == torch.float32:
        return cr_math.gauss_f32(d2, c)
    return torch.exp(d2 * c)


def fit_closed_form(x: np.ndarray, h: np.ndarray, dh: np.ndarray, base: str, mean: float, std: float) -> Optional[ClosedForm]:
    """The closed form of the table (x uniform, node 0 the branch's left end), or None if none is within tolerance."""
    x, h, dh = (np.asarray(v, dtype=np.float64) for v in (x, h, dh))
    hmax, dmax = float(np.abs(h).max()), float(np.abs(dh).max())
    if not (hmax > 0 and dmax > 0 and std > 0) or base not in cr_math.CR_BASES:
        return None
    a = float(x[0])
    b = float(min(x[-1], mean + REACH * std))
    if not b > a:
        return None
    sel = (x > a) & (x < b)
    if np.abs(h[~sel]).max(initial=0.0) > VALUE_TOL * hmax:
        return None  # the table has mass the closed form's support would cut off
    xs = x[sel]
    alpha = 2.0 / (b - a)
    beta = -2.0 * a / (b - a) - 1.0
    t = xs * alpha + beta
    # sup |ĥ'/f'| is checked on the grid and on points crowding the left end, where f' → 0 for a smooth base
    # (the ratio is 0/0 there, with a finite limit the fit must also keep ≤ 1).
    xr = np.concatenate([xs, a + (b - a) * np.geomspace(1e-7, 1e-2, 64)])
    f1 = cr_math.base_derivative(base, torch.tensor(xr)).numpy()
    tr = xr * alpha + beta
    def cost(width: float, degree: int) -> int:  # ≈ vector operations per element
        shared = base == "gelu" and mean == 0.0 and std * width == 1.0
        return degree + (0 if shared else _ENVELOPE_OPS)

    # Rows for ĥ'/f' near the left end, where sup |ĥ'/f'| = 1 is attained for a smooth base: fitted there in
    # relative terms, the rescale below stays ≈ 1 (a fit that overshoots by δ would be scaled down by δ).
    f1s = cr_math.base_derivative(base, torch.tensor(xs)).numpy()
    near = (f1s > 0) & (xs - a < NEAR_END * std)
    ratio_near = dh[sel][near] / f1s[near]
    r1, r2, r3 = (dh[i] / f1 for i, f1 in zip((1, 2, 3), cr_math.base_derivative(base, torch.tensor(x[1:4])).numpy()))
    x_end = np.array([a + 1e-6 * std])
    f1_end = cr_math.base_derivative(base, torch.tensor(x_end)).numpy()
    limit = 3.0 * r1 - 3.0 * r2 + r3  # the ratio's limit at a, extrapolated from nodes 1–3

    for width, degree in sorted(((w, d) for w in _WIDTHS for d in DEGREES), key=lambda wd: cost(*wd)):
        c = -0.5 / (std * width) ** 2
        best = None
        for k in _POWERS:
            basis, dbasis = _basis(xs, a, mean, c, k, t, alpha, degree)
            dend = _basis(x_end, a, mean, c, k, x_end * alpha + beta, alpha, degree)[1]
            lhs = np.concatenate([basis / hmax, dbasis / dmax, RATIO_WEIGHT * dbasis[near] / f1s[near, None],
                                  END_WEIGHT * dend / f1_end[:, None]])
            rhs = np.concatenate([h[sel] / hmax, dh[sel] / dmax, RATIO_WEIGHT * ratio_near, END_WEIGHT * np.array([limit])])
            coef = np.linalg.lstsq(lhs, rhs, rcond=None)[0]
            ratio = np.abs(_basis(xr, a, mean, c, k, tr, alpha, degree)[1] @ coef)[f1 > 0] / f1[f1 > 0]
            sup = float(ratio.max()) if ratio.size else 0.0
            if sup > 1.0:
                coef = coef / sup  # keep ε ∈ (−1, 1) monotone on the grid
            params = np.zeros(N_PARAMS)
            params[:N_HEAD] = (a, b, alpha, beta, mean, c)
            params[N_HEAD:N_HEAD + degree + 1] = coef
            ev, ed = _float32_errors(x, h, dh, params, k, degree, hmax, dmax)
            score = max(ev / VALUE_TOL, ed / SLOPE_TOL)
            if best is None or score < best[0]:
                best = (score, ClosedForm(k, degree, params, ev, ed))
        if best[0] <= 1.0:
            return best[1]  # the cheapest (width, degree) within tolerance
    return None


def _basis(x, a, mean, c, k, t, alpha, degree):
    """Columns (x − a)^k·E·t^j and their x-derivatives, j = 0 … degree."""
    u = x - a
    env = np.exp(c * (x - mean) ** 2)
    g = u**k * env
    dg = (k * u ** (k - 1) + u**k * 2.0 * c * (x - mean)) * env
    tp = t[:, None] ** np.arange(degree + 1)
    dtp = np.concatenate([np.zeros((len(t), 1)), tp[:, :-1] * np.arange(1, degree + 1)], 1) * alpha
    return g[:, None] * tp, dg[:, None] * tp + g[:, None] * dtp


def _float32_errors(x, h, dh, params, power, degree, hmax, dmax) -> Tuple[float, float]:
    xt = torch.tensor(x, dtype=torch.float32)
    with torch.no_grad():
        hf, dhf = correction_and_slope(xt, torch.from_numpy(params).float(), power, degree)
    # The end nodes hold one-sided limits (0 at a tapered end); compare inside.
    ev = float(np.abs(hf.double().numpy() - h)[1:-1].max()) / hmax
    ed = float(np.abs(dhf.double().numpy() - dh)[1:-1].max()) / dmax
    return ev, ed
