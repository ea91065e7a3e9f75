"""Welch's two-sample t interval for "activation minus baseline", with its own Student-t quantile.

The difference of means d = x̄_a − x̄_b has standard error se = sqrt(s_a²/n_a + s_b²/n_b) and, by the
Welch–Satterthwaite approximation, ν = se⁴ / ((s_a²/n_a)²/(n_a−1) + (s_b²/n_b)²/(n_b−1)) degrees of
freedom (not an integer in general). The 95 % interval is d ± t_{0.975, ν}·se and the two-sided p-value
2·(1 − F_ν(|d|/se)). F_ν is computed from the regularized incomplete beta function,
F_ν(t) = 1 − ½·I_{ν/(ν+t²)}(ν/2, ½) for t ≥ 0, so the runner needs no scipy at run time; the tests check
both functions against scipy.stats.t.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Optional, Sequence


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of I_x(a, b), evaluated with the modified Lentz method (converges for x < (a+1)/(a+b+2))."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),             # even step
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):  # odd step
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= c * d
        if abs(c * d - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def betainc(a: float, b: float, x: float, one_minus_x: Optional[float] = None) -> float:
    """Regularized incomplete beta I_x(a, b) for a, b > 0 and 0 <= x <= 1.

    ``one_minus_x`` may pass 1 − x computed without cancellation (it matters when x is close to 1)."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc: x must be in [0, 1], got {x}")
    y = 1.0 - x if one_minus_x is None else one_minus_x
    if x == 0.0 or y == 0.0:
        return 0.0 if x == 0.0 else 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(y)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, y) / b  # symmetry I_x(a,b) = 1 − I_{1−x}(b,a)


def t_cdf(t: float, df: float) -> float:
    """Student-t cumulative distribution F_ν(t) for real ν > 0."""
    if not df > 0:
        raise ValueError(f"t_cdf: degrees of freedom must be > 0, got {df}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t), t * t / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Inverse of ``t_cdf`` in t: bracket, then bisect to machine precision (F_ν is strictly increasing)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile: p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class Difference:
    """``mean(a) − mean(b)`` with Welch's interval; NaN fields when either sample has n < 2."""

    diff: float
    lo: float
    hi: float
    p: float
    df: float
    n_a: int
    n_b: int
    level: float = 0.95

    @property
    def resolved(self) -> bool:
        """The interval excludes 0: only then may a doc call one side better."""
        return math.isfinite(self.lo) and (self.lo > 0 or self.hi < 0)


def welch(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Difference:
    """Welch's t interval for mean(a) − mean(b) over the finite values of ``a`` and ``b``."""
    xa = [float(v) for v in a if v is not None and math.isfinite(float(v))]
    xb = [float(v) for v in b if v is not None and math.isfinite(float(v))]
    na, nb = len(xa), len(xb)
    nan = math.nan
    if na == 0 or nb == 0:
        return Difference(nan, nan, nan, nan, nan, na, nb, level)
    diff = statistics.fmean(xa) - statistics.fmean(xb)
    if na < 2 or nb < 2:
        return Difference(diff, nan, nan, nan, nan, na, nb, level)
    va, vb = statistics.variance(xa) / na, statistics.variance(xb) / nb
    se = math.sqrt(va + vb)
    if se == 0.0:  # no spread on either side: the interval is the point itself
        return Difference(diff, diff, diff, 1.0 if diff == 0 else 0.0, math.inf, na, nb, level)
    df = (va + vb) ** 2 / (va ** 2 / (na - 1) + vb ** 2 / (nb - 1))
    half = t_quantile(0.5 + level / 2.0, df) * se
    p = 2.0 * (1.0 - t_cdf(abs(diff) / se, df))
    return Difference(diff, diff - half, diff + half, p, df, na, nb, level)


def reading(d: Difference, mode: Optional[str]) -> str:
    """Words a doc may use for ``d``: "better"/"worse" (when the metric's direction is known) or "higher"/
    "lower" only when the interval excludes 0, else "not resolved"."""
    if not math.isfinite(d.lo):
        return "n < 2" if math.isfinite(d.diff) else "no data"
    if not d.resolved:
        return "not resolved"
    up = d.lo > 0
    if mode == "max":
        return "better" if up else "worse"
    if mode == "min":
        return "worse" if up else "better"
    return "higher" if up else "lower"
