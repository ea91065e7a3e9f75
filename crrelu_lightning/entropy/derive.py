"""General EAFO: the entropy-decreasing correction of any elementwise activation, derived numerically.

The math (docs/eafo_general.md §1): on the invertible branch B of a base f (f' > 0 on B) with input
density p, the functional derivative of the branch entropy is δH/δf = −d/dx[p/f'], so

    c(x)  = d/dx [ p(x) / f'(x) ]                 steepest-descent direction (c from the full density p)
    h(x)  = w(x)·c(x) on B, 0 elsewhere           w ≥ 0 a taper that vanishes where the boundary term would not
    f_ε   = f + ε·h,   r = h'/f'
    ΔH_B(ε)      = E[ log(1 + ε·r(X)) | X∈B ]     exact for f_ε monotone on B (change of variables)
    dH_B/dε(0)   = E[ r(X) | X∈B ] = −(1/P(X∈B))·∫_B w·c² dx  < 0      (integration by parts)
    monotone on B  ⇔  1 + ε·r > 0 on B  ⇔  ε ∈ (−1/max r, −1/min r)

Taper (the documented choice): at every finite end b of B where the boundary term h·p/f' would not vanish by
itself, w = (1 − exp(−((x − b)/L)²))², L = ``taper_width`` × the input's standard deviation. "Would not
vanish": f'(b) = 0 (a smooth base's minimum, where p/f' diverges: GELU, SiLU, Mish) or c(b) ≠ 0. ReLU on a
centred normal input needs no taper (c(0) = p'(0) = 0), so its correction is exactly −x·φ(x), CRReLU's shape.

Every derivative of the base comes from autograd in float64 (f', f'', f'''); the input densities' derivatives
are closed forms. Pure numpy/torch, no scipy at run time.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from crrelu_lightning.entropy.distributions import HistogramInput, NormalInput

_GL_NODES = 16
_NORMAL_REACH = 9.0  # support used for the table and the quadrature: μ ± 9σ (mass outside < 3e-19)
_KERNEL_REACH = 8.0  # a smoothed histogram reaches 8 bandwidths beyond its outer bin centres
_SCAN_POINTS = 20001
TAPERS = ("auto", "always", "none")

ActivationLike = Union[str, nn.Module, Callable[[torch.Tensor], torch.Tensor]]


# --------------------------------------------------------------------------- input densities
@dataclass(frozen=True)
class SmoothedHistogram:
    """A measured histogram smoothed by a Gaussian kernel: p(x) = Σ_i π_i·φ((x − m_i)/b)/b.

    ``m_i`` are the bin centres, ``π_i`` the bin frequencies and ``b`` the bandwidth. The default bandwidth,
    ``max(bin width, s·n^(−1/9))`` (s = the histogram's standard deviation, n = its count), follows the rate of
    the normal-reference rule for estimating a density's *second* derivative, which the correction needs
    (c' involves p''); the rule for the density itself (n^(−1/5)) leaves p'' noisy.
    """

    centres: Tuple[float, ...]
    weights: Tuple[float, ...]
    bandwidth: float
    count: float

    @classmethod
    def from_counts(
        cls, counts: Sequence[float], edges: Sequence[float], bandwidth: Optional[float] = None
    ) -> "SmoothedHistogram":
        hist = HistogramInput.from_arrays(counts, edges)  # validates the layout and the counts
        c = np.asarray(hist.counts, dtype=np.float64)
        e = np.asarray(hist.edges, dtype=np.float64)
        keep = c > 0
        centres = 0.5 * (e[:-1] + e[1:])
        n = float(c.sum())
        pi = c / n
        mean = float(np.sum(pi * centres))
        std = math.sqrt(max(float(np.sum(pi * (centres - mean) ** 2)), 0.0))
        width = float(np.max(np.diff(e)))
        if bandwidth is None:
            bandwidth = max(width, std * n ** (-1.0 / 9.0))
        bandwidth = float(bandwidth)
        if not (math.isfinite(bandwidth) and bandwidth > 0):
            raise ValueError(f"bandwidth must be finite and > 0, got {bandwidth!r}")
        return cls(tuple(centres[keep].tolist()), tuple(pi[keep].tolist()), bandwidth, n)

    @classmethod
    def from_histogram(cls, hist: HistogramInput, bandwidth: Optional[float] = None) -> "SmoothedHistogram":
        return cls.from_counts(hist.counts, hist.edges, bandwidth)

    @property
    def mean(self) -> float:
        return float(np.dot(self.weights, self.centres))

    @property
    def std(self) -> float:
        m, w = np.asarray(self.centres), np.asarray(self.weights)
        return math.sqrt(float(np.sum(w * (m - self.mean) ** 2)) + self.bandwidth**2)

    @property
    def support(self) -> Tuple[float, float]:
        r = _KERNEL_REACH * self.bandwidth
        return (min(self.centres) - r, max(self.centres) + r)

    @property
    def panel_width(self) -> float:
        return min(0.05 * self.std, 0.25 * self.bandwidth)

    def derivatives(self, x: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """p, p', p'' at ``x`` (chunked: the mixture has one term per occupied bin)."""
        x = np.asarray(x, dtype=np.float64)
        m = np.asarray(self.centres)[None, :]
        w = np.asarray(self.weights)[None, :]
        b = self.bandwidth
        out = [np.empty_like(x) for _ in range(3)]
        step = max(1, 4_000_000 // max(1, m.size))
        for s in range(0, x.size, step):
            z = (x[s:s + step, None] - m) / b
            k = w * np.exp(-0.5 * z * z) / (b * math.sqrt(2.0 * math.pi))
            out[0][s:s + step] = k.sum(1)
            out[1][s:s + step] = (-z * k).sum(1) / b
            out[2][s:s + step] = ((z * z - 1.0) * k).sum(1) / (b * b)
        return out[0], out[1], out[2]

    def cdf(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, dtype=np.float64)[:, None] - np.asarray(self.centres)[None, :]) / self.bandwidth
        return (np.asarray(self.weights)[None, :] * torch.special.ndtr(torch.as_tensor(z)).numpy()).sum(1)

    def describe(self) -> str:
        return f"smoothed histogram ({len(self.centres)} bins, bandwidth {self.bandwidth:.4g})"


Density = Union[NormalInput, SmoothedHistogram]


def as_density(dist: Union[Density, HistogramInput], bandwidth: Optional[float] = None) -> Density:
    """A ``NormalInput`` passes through; a ``HistogramInput`` is smoothed (``SmoothedHistogram``)."""
    if isinstance(dist, (NormalInput, SmoothedHistogram)):
        return dist
    if isinstance(dist, HistogramInput):
        return SmoothedHistogram.from_histogram(dist, bandwidth)
    raise TypeError(f"input must be NormalInput, HistogramInput or SmoothedHistogram, got {type(dist).__name__}")


def _density_derivatives(dist: Density, x: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    if isinstance(dist, SmoothedHistogram):
        return dist.derivatives(x)
    z = (np.asarray(x, dtype=np.float64) - dist.mu) / dist.sigma
    p = np.exp(-0.5 * z * z) / (dist.sigma * math.sqrt(2.0 * math.pi))
    return p, -z * p / dist.sigma, (z * z - 1.0) * p / dist.sigma**2


def _cdf(dist: Density, x: np.ndarray) -> np.ndarray:
    if isinstance(dist, SmoothedHistogram):
        return dist.cdf(x)
    return torch.special.ndtr(torch.as_tensor((np.asarray(x, dtype=np.float64) - dist.mu) / dist.sigma)).numpy()


def _scale(dist: Density) -> float:
    return dist.sigma if isinstance(dist, NormalInput) else dist.std


def _support(dist: Density) -> Tuple[float, float]:
    if isinstance(dist, NormalInput):
        return (dist.mu - _NORMAL_REACH * dist.sigma, dist.mu + _NORMAL_REACH * dist.sigma)
    return dist.support


def _panel_width(dist: Density) -> float:
    return 0.05 * dist.sigma if isinstance(dist, NormalInput) else dist.panel_width


# --------------------------------------------------------------------------- the base and its derivatives
def activation_function(base: ActivationLike) -> Callable[[torch.Tensor], torch.Tensor]:
    """A float64 callable for a registered name, a module or a function (CR modules use their plain expression)."""
    if isinstance(base, str):
        from crrelu_lightning.activations import build_activation

        base = build_activation(base)
    if isinstance(base, nn.Module):
        from crrelu_lightning.activations import CRActivation

        if isinstance(base, CRActivation):
            base.impl = "reference"  # the fused kernel has no higher-order derivatives
        base = base.double()
    if not callable(base):
        raise TypeError(f"base must be an activation name, an nn.Module or a callable, got {base!r}")
    return base


def base_derivatives(fn: Callable[[torch.Tensor], torch.Tensor], x: np.ndarray, order: int = 3) -> List[np.ndarray]:
    """[f', f'', …] up to ``order`` at ``x`` by repeated autograd in float64 (elementwise f)."""
    xt = torch.as_tensor(np.asarray(x, dtype=np.float64)).clone().requires_grad_(True)
    with torch.enable_grad():
        y = fn(xt)
        if not isinstance(y, torch.Tensor) or y.shape != xt.shape:
            raise ValueError("the base must be elementwise: same output shape as its input")
        out, cur = [], y
        for k in range(order):
            try:
                (cur,) = torch.autograd.grad(cur.sum(), xt, create_graph=k + 1 < order, allow_unused=True)
            except RuntimeError as err:
                raise ValueError(f"the base has no autograd derivative of order {k + 1}: {err}") from err
            if cur is None:  # the derivative is identically zero (e.g. ReLU's f'')
                cur = torch.zeros_like(xt)
            out.append(cur.detach().numpy().copy())
            if not cur.requires_grad:
                out.extend(np.zeros_like(out[-1]) for _ in range(order - k - 1))
                break
    return out


def _slope(fn, x: np.ndarray) -> np.ndarray:
    return base_derivatives(fn, x, order=1)[0]


# --------------------------------------------------------------------------- the branch
def find_branch(fn, dist: Density) -> Tuple[float, float]:
    """B: the interval on which f' > 0 that carries the most input probability.

    Ends inside the input's support are refined by bisection on the sign of f' to float64 precision; an end
    at the edge of the support is ±inf.
    """
    lo, hi = _support(dist)
    x = np.linspace(lo, hi, _SCAN_POINTS)
    pos = _slope(fn, x) > 0
    if not pos.any():
        raise ValueError("the base has f' <= 0 wherever the input lives: no increasing branch to correct")
    # Runs of f' > 0 on the scan grid, and the probability each carries (CDF differences).
    change = np.flatnonzero(np.diff(np.concatenate([[False], pos, [False]]).astype(np.int8)))
    runs = list(zip(change[::2], change[1::2] - 1))
    cdf = _cdf(dist, np.array([x[i] for run in runs for i in run]))
    masses = cdf[1::2] - cdf[::2]
    i0, i1 = runs[int(np.argmax(masses))]

    def refine(inside_x: float, outside_x: float) -> float:
        a, b = inside_x, outside_x  # f'(a) > 0 >= f'(b)
        for _ in range(200):
            mid = 0.5 * (a + b)
            if mid in (a, b) or abs(a - b) <= 1e-15 * max(1.0, abs(a)):
                break
            if _slope(fn, np.array([mid]))[0] > 0:
                a = mid
            else:
                b = mid
        return a  # the innermost point with f' > 0 found; the true end is within one ulp

    left = -math.inf if i0 == 0 else refine(x[i0], x[i0 - 1])
    right = math.inf if i1 == len(x) - 1 else refine(x[i1], x[i1 + 1])
    return left, right


# --------------------------------------------------------------------------- the derivation
@dataclass
class Derivation:
    """Result of ``derive_correction``: the correction on a grid and its entropy calculus (raw units of ε).

    ``x``, ``h``, ``dh``: the table grid (uniform; the branch's finite left end is node 0) with h = w·c and h'.
    ``scale``: s = sup_B |h'/f'|; the activation modules use ĥ = h/s, for which (−1, 1) is always monotone
    and ε̂ = s·ε. ``eps_interval``: the open ε interval on which f_ε is strictly increasing on B.
    """

    base: str
    input: str
    branch: Tuple[float, float]
    tapered_ends: Tuple[float, ...]
    taper_width: float
    x: np.ndarray
    h: np.ndarray
    dh: np.ndarray
    scale: float
    eps_interval: Tuple[float, float]
    branch_prob: float
    nodes: np.ndarray = field(repr=False)  # quadrature nodes on B ∩ support
    weights: np.ndarray = field(repr=False)  # p·GL weights / P(X∈B): Σ weights·g ≈ E[g(X) | X∈B]
    ratio: np.ndarray = field(repr=False)  # r = h'/f' at the nodes
    wc2: np.ndarray = field(repr=False)  # w·c² at the nodes (unweighted by p)
    gl_weights: np.ndarray = field(repr=False)

    def delta_entropy(self, eps: float) -> Optional[float]:
        """ΔH_B(ε) = E[log(1 + ε·r) | B] in nats; None where f_ε is not monotone on B."""
        if not self.monotone(eps):
            return None
        return float(np.sum(self.weights * np.log1p(eps * self.ratio)))

    def d_entropy_d_eps(self, eps: float = 0.0) -> Optional[float]:
        """dH_B/dε = E[r/(1 + ε·r) | B]; None where f_ε is not monotone on B."""
        if not self.monotone(eps):
            return None
        return float(np.sum(self.weights * self.ratio / (1.0 + eps * self.ratio)))

    def integration_by_parts(self) -> float:
        """−(1/P(X∈B))·∫_B w·c² dx: equals ``d_entropy_d_eps(0)`` when the boundary terms vanish."""
        return -float(np.sum(self.gl_weights * self.wc2)) / self.branch_prob

    def monotone(self, eps: float) -> bool:
        lo, hi = self.eps_interval
        return lo < eps < hi

    def table(self, normalized: bool = True) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x, h, h') on the grid; ``normalized`` divides h and h' by ``scale``."""
        s = self.scale if normalized else 1.0
        return self.x, self.h / s, self.dh / s

    def records(self, eps_values: Sequence[float], normalized: bool = False) -> List[dict]:
        """One dict per ε: eps, monotone, delta_entropy, d_entropy_d_eps (ε in normalized units if asked)."""
        s = self.scale if normalized else 1.0
        out = []
        for e in eps_values:
            raw = float(e) / s
            d = self.d_entropy_d_eps(raw)
            out.append(
                {
                    "eps": float(e),
                    "monotone": self.monotone(raw),
                    "delta_entropy": self.delta_entropy(raw),
                    "d_entropy_d_eps": None if d is None else d / s,
                }
            )
        return out


def _taper(x: np.ndarray, ends: Sequence[float], length: float) -> Tuple[np.ndarray, np.ndarray]:
    """w = Π_b g_b², g_b = 1 − exp(−((x − b)/L)²), and its derivative w'."""
    factors = []
    for b in ends:
        z = (x - b) / length
        g = -np.expm1(-z * z)  # 1 − e^{−z²} without cancellation near b
        factors.append((g, 2.0 * z * np.exp(-z * z) / length))
    w = np.ones_like(x)
    for g, _ in factors:
        w = w * g * g
    dw = np.zeros_like(x)
    for k, (g, dg) in enumerate(factors):
        term = 2.0 * g * dg
        for j, (gj, _) in enumerate(factors):
            if j != k:
                term = term * gj * gj
        dw = dw + term
    return w, dw


def _correction(fn, dist: Density, x: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """f', c = (p/f')' and c' = (p/f')'' at x."""
    f1, f2, f3 = base_derivatives(fn, x, order=3)
    p, p1, p2 = _density_derivatives(dist, x)
    with np.errstate(divide="ignore", invalid="ignore"):
        c = p1 / f1 - p * f2 / f1**2
        dc = p2 / f1 - 2.0 * p1 * f2 / f1**2 - p * f3 / f1**2 + 2.0 * p * f2**2 / f1**3
    return f1, c, dc


def _gauss_legendre(lo: float, hi: float, width: float) -> Tuple[np.ndarray, np.ndarray]:
    n = max(1, int(math.ceil((hi - lo) / width)))
    edges = np.linspace(lo, hi, n + 1)
    t, wt = np.polynomial.legendre.leggauss(_GL_NODES)
    half = 0.5 * (edges[1:] - edges[:-1])[:, None]
    x = 0.5 * (edges[1:] + edges[:-1])[:, None] + half * t[None, :]
    return x.ravel(), (half * wt[None, :]).ravel()


def derive_correction(
    base: ActivationLike,
    dist: Union[Density, HistogramInput],
    taper_width: float = 1.0,
    taper: str = "auto",
    grid_size: int = 1024,
    bandwidth: Optional[float] = None,
) -> Derivation:
    """The EAFO correction of ``base`` for the input ``dist`` (module docstring for the math).

    Args:
        base: a registered activation name, an elementwise module or a function (derivatives by autograd).
        dist: ``NormalInput(μ, σ)``, a ``HistogramInput`` (smoothed here) or a ``SmoothedHistogram``.
        taper_width: L in units of the input's standard deviation.
        taper: ``"auto"`` (only at ends whose boundary term would not vanish), ``"always"`` or ``"none"``.
        grid_size: number of table intervals over B ∩ support.
        bandwidth: kernel bandwidth for a histogram input (default in ``SmoothedHistogram``).
    """
    if taper not in TAPERS:
        raise ValueError(f"taper must be one of {TAPERS}, got {taper!r}")
    taper_width = float(taper_width)
    if not (math.isfinite(taper_width) and taper_width > 0):
        raise ValueError(f"taper_width must be finite and > 0, got {taper_width!r}")
    if int(grid_size) != grid_size or grid_size < 16:
        raise ValueError(f"grid_size must be an integer >= 16, got {grid_size!r}")
    name = base if isinstance(base, str) else getattr(base, "__name__", type(base).__name__)
    dist = as_density(dist, bandwidth)
    fn = activation_function(base)
    scale = _scale(dist)
    b_lo, b_hi = find_branch(fn, dist)
    s_lo, s_hi = _support(dist)
    lo, hi = max(b_lo, s_lo), min(b_hi, s_hi)

    # Which finite ends need the taper: f'(b) = 0 or c(b) ≠ 0 (probed just inside B).
    probe_c = _correction(fn, dist, np.linspace(lo, hi, 2001)[1:-1])[1]
    cmax = float(np.nanmax(np.abs(probe_c)))
    ends = []
    for b, inward in ((b_lo, 1.0), (b_hi, -1.0)):
        if not math.isfinite(b):
            continue
        if taper == "always":
            ends.append(b)
            continue
        if taper == "none":
            continue
        xb = np.array([b + inward * 1e-9 * scale])
        f1, c, _ = _correction(fn, dist, xb)
        if not (f1[0] > 1e-6) or not abs(c[0]) <= 1e-6 * cmax:
            ends.append(b)
    length = taper_width * scale

    def hvals(x: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        f1, c, dc = _correction(fn, dist, x)
        w, dw = _taper(x, ends, length)
        h = w * c
        dh = dw * c + w * dc
        return f1, c, w, h, dh

    # Table: uniform grid on [lo, hi]; a finite left end of B is node 0. Values at the exact ends are limits
    # (0 where tapered), so the end nodes are evaluated just inside and the outermost support nodes set to 0.
    x = np.linspace(lo, hi, int(grid_size) + 1)
    xe = x.copy()
    tiny = 1e-12 * scale  # one-sided limits at untapered ends (f' > 1e-6 there, so this is safe)
    xe[0], xe[-1] = x[0] + tiny, x[-1] - tiny
    f1_table, _, _, h, dh = hvals(xe)
    r_table = dh / f1_table
    for k, b_end, b in ((0, b_lo, lo), (-1, b_hi, hi)):
        # Zero at a support end (negligible density) and at a tapered branch end (h ~ (x − b)² there).
        if b != b_end or b in ends:
            h[k] = dh[k] = 0.0
    if not (np.all(np.isfinite(h)) and np.all(np.isfinite(dh))):
        raise ValueError(f"the correction of {name!r} is not finite on its branch {(b_lo, b_hi)}; try taper='always'")

    # Quadrature on B ∩ support.
    nodes, glw = _gauss_legendre(lo, hi, _panel_width(dist))
    f1, c, w, hn, dhn = hvals(nodes)
    p = _density_derivatives(dist, nodes)[0]
    mass = float(np.sum(glw * p))
    if not mass > 0:
        raise ValueError(f"the input {dist.describe()} puts no mass on the branch {(b_lo, b_hi)}")
    ratio = dhn / f1
    weights = glw * p / mass

    # Monotone interval from r = h'/f' at the quadrature nodes (16 per panel of ≤ 0.05σ). Near a tapered
    # critical end r is 0/0 with a finite limit: it is extrapolated linearly from 1e-3σ and 2e-3σ inside.
    rs = [ratio, r_table[[k for k, b in ((0, lo), (len(x) - 1, hi)) if b not in ends]]]
    delta = 1e-3 * scale
    for b, sgn in ((lo, 1.0), (hi, -1.0)):
        if b in ends:
            f1e, _, _, _, dhe = hvals(np.array([b + sgn * delta, b + 2.0 * sgn * delta]))
            rs.append(np.array([2.0 * dhe[0] / f1e[0] - dhe[1] / f1e[1]]))
    rs = np.concatenate(rs)
    rs = rs[np.isfinite(rs)]
    rmax, rmin = float(rs.max()), float(rs.min())
    eps_lo = -1.0 / rmax if rmax > 0 else -math.inf
    eps_hi = -1.0 / rmin if rmin < 0 else math.inf
    s = max(abs(rmax), abs(rmin))
    if not s > 0:
        raise ValueError(f"the correction of {name!r} vanishes on its branch")
    return Derivation(
        base=name,
        input=dist.describe(),
        branch=(b_lo, b_hi),
        tapered_ends=tuple(ends),
        taper_width=taper_width,
        x=x,
        h=h,
        dh=dh,
        scale=s,
        eps_interval=(eps_lo, eps_hi),
        branch_prob=mass,
        nodes=nodes,
        weights=weights,
        ratio=ratio,
        wc2=w * c * c,
        gl_weights=glw,
    )


@functools.lru_cache(maxsize=64)
def normal_table(
    base: str, mu: float = 0.0, sigma: float = 1.0, taper_width: float = 1.0, taper: str = "auto", grid_size: int = 1024
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, Tuple[float, float]]:
    """Cached normalized table (x, ĥ, ĥ') and the normalized monotone interval for a normal input."""
    d = derive_correction(base, NormalInput(mu, sigma), taper_width, taper, grid_size)
    x, h, dh = d.table(normalized=True)
    lo, hi = d.eps_interval
    for a in (x, h, dh):
        a.setflags(write=False)
    return x, h, dh, (lo * d.scale, hi * d.scale)
