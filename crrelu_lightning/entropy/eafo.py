"""Static EAFO: entropy of CR-corrected activations by quadrature (EAFO.md §1–§5).

For an activation f, strictly increasing on the branch B = (b0, ∞), and an input X with density p,

    H(Y | X∈B) = H(X | X∈B) + E[ log f'(X) | X∈B ]                          (change of variables)
    ΔH(ε)      = E[ log f_ε'(X) − log g'(X) | X∈B ],   f_ε = g + ε·k_σ
    ∂H/∂ε      = E[ k_σ'(X) / f_ε'(X) | X∈B ]                               (exact, no density estimate)
    δH/δf (x)  = − d/dx [ p(x) / f'(x) ]                                    (correction direction)

Sign fact (EAFO.md §4): ε < 0 DECREASES the branch entropy; the paper's ε₀ = +0.01 raises it slightly.

The branch start b0 is 0 for ReLU. For smooth bases (GELU, SiLU, Mish) g' vanishes at the base's minimum,
which would make ∂H/∂ε diverge logarithmically there; b0 is therefore the point right of the minimum where
g'(b0) = ``slope_floor`` (fixed in ε, so ∂H/∂ε stays the exact derivative of H_B). Pure numpy/torch:
composite Gauss–Legendre quadrature on panels where the integrand is smooth (no scipy at run time).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from crrelu_lightning.activations import cr_math

_GL_NODES = 16
_TAIL = 14.0  # normal tails beyond μ ± 14σ carry < 1e-44 of the mass
_DEFAULT_SLOPE_FLOOR = 0.1

ArrayFn = Callable[[np.ndarray], np.ndarray]


# --------------------------------------------------------------------------- input distributions
@dataclass(frozen=True)
class NormalInput:
    """X ~ N(μ, σ²)."""

    mu: float = 0.0
    sigma: float = 1.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.mu):
            raise ValueError(f"input mu must be finite, got {self.mu!r}")
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            raise ValueError(f"input sigma must be finite and > 0, got {self.sigma!r}")

    @property
    def support(self) -> Tuple[float, float]:
        return (self.mu - _TAIL * self.sigma, self.mu + _TAIL * self.sigma)

    def panels(self, lo: float, hi: float, width: float) -> np.ndarray:
        """Panel edges covering [lo, hi] ∩ support with panels no wider than ``width``."""
        a, b = max(lo, self.support[0]), min(hi, self.support[1])
        if not b > a:
            return np.array([a, a])
        n = max(1, int(math.ceil((b - a) / min(width, self.sigma / 8.0))))
        return np.linspace(a, b, n + 1)

    def pdf(self, x: np.ndarray) -> np.ndarray:
        z = (x - self.mu) / self.sigma
        return np.exp(-0.5 * z * z) / (self.sigma * math.sqrt(2.0 * math.pi))

    def dpdf(self, x: np.ndarray) -> np.ndarray:
        return -(x - self.mu) / self.sigma**2 * self.pdf(x)

    def cdf(self, x: np.ndarray) -> np.ndarray:
        z = torch.as_tensor((np.asarray(x, dtype=np.float64) - self.mu) / (self.sigma * math.sqrt(2.0)))
        return (0.5 * (1.0 + torch.erf(z))).numpy()

    def describe(self) -> str:
        return f"N({self.mu:g}, {self.sigma:g}^2)"


@dataclass(frozen=True)
class HistogramInput:
    """Empirical input: piecewise-constant density from ``counts`` over bins ``edges`` (len = counts + 1).

    File formats (``load``): JSON ``{"edges": [...], "counts": [...]}`` or NPZ with arrays ``edges`` and
    ``counts``; other keys are ignored. Out-of-range mass is not represented (record it as empty bins).
    """

    counts: Tuple[float, ...]
    edges: Tuple[float, ...]

    def __post_init__(self) -> None:
        c = np.asarray(self.counts, dtype=np.float64)
        e = np.asarray(self.edges, dtype=np.float64)
        if c.ndim != 1 or e.ndim != 1 or e.size != c.size + 1 or c.size == 0:
            raise ValueError(
                f"histogram needs len(edges) == len(counts) + 1 >= 2, got {e.size} edges and {c.size} counts"
            )
        if not (np.all(np.isfinite(e)) and np.all(np.diff(e) > 0)):
            raise ValueError("histogram edges must be finite and strictly increasing")
        if not (np.all(np.isfinite(c)) and np.all(c >= 0) and c.sum() > 0):
            raise ValueError("histogram counts must be finite, non-negative and not all zero")

    @classmethod
    def from_arrays(cls, counts: Sequence[float], edges: Sequence[float]) -> "HistogramInput":
        return cls(tuple(float(v) for v in np.ravel(counts)), tuple(float(v) for v in np.ravel(edges)))

    @classmethod
    def load(cls, path: Union[str, Path]) -> "HistogramInput":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"histogram file {str(path)!r} does not exist")
        if path.suffix == ".npz":
            with np.load(path) as data:
                missing = {"counts", "edges"} - set(data.files)
                if missing:
                    raise ValueError(f"{path}: NPZ histogram lacks arrays {sorted(missing)}")
                return cls.from_arrays(data["counts"], data["edges"])
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not {"counts", "edges"} <= set(data):
            raise ValueError(f"{path}: JSON histogram must be an object with keys 'counts' and 'edges'")
        return cls.from_arrays(data["counts"], data["edges"])

    @classmethod
    def from_estimator(cls, estimator, row: Optional[int] = None) -> "HistogramInput":
        """From a ``crrelu_lightning.entropy.HistogramEstimator`` that recorded a layer's *inputs*.

        Exact zeros (a separate column there) go back into the bin holding 0. Under/overflow and
        non-finite counts have no place on the bins and are dropped: choose the range to cover the data.
        """
        from crrelu_lightning.entropy.estimators import EXTRA_COLUMNS, ZEROS

        counts = estimator.state_tensor()
        counts = counts if row is None else counts[row]
        if counts.dim() != 1:
            raise ValueError(f"estimator has {counts.shape[0]} rows: pass row=<layer index>")
        c = counts[:-EXTRA_COLUMNS].double().cpu().numpy().copy()
        edges = estimator.bin_edges().numpy()
        if edges[0] <= 0.0 < edges[-1]:
            c[int(np.searchsorted(edges, 0.0, side="right")) - 1] += float(counts[-EXTRA_COLUMNS + ZEROS])
        return cls.from_arrays(c, edges)

    def save(self, path: Union[str, Path]) -> None:
        """Write the JSON (``.json``) or NPZ (``.npz``) format that ``load`` reads."""
        path = Path(path)
        if path.suffix == ".npz":
            np.savez(path, counts=np.asarray(self.counts), edges=np.asarray(self.edges))
        else:
            path.write_text(json.dumps({"counts": list(self.counts), "edges": list(self.edges)}))

    @property
    def _density(self) -> np.ndarray:
        c = np.asarray(self.counts)
        return c / c.sum() / np.diff(self.edges)

    @property
    def support(self) -> Tuple[float, float]:
        return (self.edges[0], self.edges[-1])

    def panels(self, lo: float, hi: float, width: float) -> np.ndarray:
        # Bin edges are where the density jumps: they must be panel edges; subdivide wide bins.
        e = np.asarray(self.edges)
        a, b = max(lo, e[0]), min(hi, e[-1])
        if not b > a:
            return np.array([a, a])
        inner = e[(e > a) & (e < b)]
        coarse = np.concatenate([[a], inner, [b]])
        out = [coarse[:1]]
        for left, right in zip(coarse[:-1], coarse[1:]):
            n = max(1, int(math.ceil((right - left) / width)))
            out.append(np.linspace(left, right, n + 1)[1:])
        return np.concatenate(out)

    def pdf(self, x: np.ndarray) -> np.ndarray:
        """Piecewise-constant density (what the quadrature integrates)."""
        x = np.asarray(x, dtype=np.float64)
        idx = np.searchsorted(self.edges, x, side="right") - 1
        inside = (idx >= 0) & (idx < len(self.counts))
        out = np.zeros_like(x)
        out[inside] = self._density[idx[inside]]
        return out

    def smooth_pdf(self, x: np.ndarray) -> np.ndarray:
        """Density interpolated linearly through bin centres: differentiable stand-in for d/dx p."""
        e = np.asarray(self.edges)
        centres = 0.5 * (e[:-1] + e[1:])
        return np.interp(x, centres, self._density, left=0.0, right=0.0)

    def dpdf(self, x: np.ndarray) -> np.ndarray:
        e = np.asarray(self.edges)
        centres = 0.5 * (e[:-1] + e[1:])
        slopes = np.diff(self._density) / np.diff(centres)
        idx = np.searchsorted(centres, x, side="right") - 1
        inside = (idx >= 0) & (idx < len(slopes))
        out = np.zeros_like(np.asarray(x, dtype=np.float64))
        out[inside] = slopes[idx[inside]]
        return out

    def cdf(self, x: np.ndarray) -> np.ndarray:
        e = np.asarray(self.edges)
        c = np.asarray(self.counts)
        cum = np.concatenate([[0.0], np.cumsum(c) / c.sum()])
        return np.interp(x, e, cum)  # exact CDF of the piecewise-constant density

    def describe(self) -> str:
        return f"histogram({len(self.counts)} bins on [{self.edges[0]:g}, {self.edges[-1]:g}))"


InputDistribution = Union[NormalInput, HistogramInput]


def parse_input(spec: str, mu: float = 0.0, sigma: float = 1.0) -> InputDistribution:
    """``"normal"`` → N(mu, sigma²); ``"histogram:PATH"`` → ``HistogramInput.load(PATH)``."""
    if spec == "normal":
        return NormalInput(mu, sigma)
    if spec.startswith("histogram:") and len(spec) > len("histogram:"):
        return HistogramInput.load(spec[len("histogram:"):])
    raise ValueError(f"input must be 'normal' or 'histogram:PATH', got {spec!r}")


# --------------------------------------------------------------------------- quadrature
def quadrature(dist: InputDistribution, lo: float, hi: float, width: float = 0.05) -> Tuple[np.ndarray, np.ndarray]:
    """Nodes x and weights w with Σ w·h(x) ≈ ∫_lo^hi p(x)·h(x) dx (composite Gauss–Legendre)."""
    edges = dist.panels(lo, hi, width)
    t, wt = np.polynomial.legendre.leggauss(_GL_NODES)
    left, right = edges[:-1, None], edges[1:, None]
    half = 0.5 * (right - left)
    x = (left + right) * 0.5 + half * t[None, :]
    w = half * wt[None, :]
    x, w = x.ravel(), w.ravel()
    return x, w * dist.pdf(x)


# --------------------------------------------------------------------------- CR math in float64 numpy
def _t(x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def base_forward(base: str, x: np.ndarray) -> np.ndarray:
    return cr_math.base_forward(base, _t(x)).numpy()


def base_slope(base: str, x: np.ndarray) -> np.ndarray:
    """g'(x)."""
    return cr_math.base_derivative(base, _t(x)).numpy()


def cr_forward(base: str, x: np.ndarray, eps: float, cr_sigma: float = 1.0) -> np.ndarray:
    """f_ε(x) = g(x) + ε·x·exp(−x²/(2σ²))."""
    return base_forward(base, x) + eps * cr_math.correction(_t(x), cr_sigma).numpy()


def cr_slope(base: str, x: np.ndarray, eps: float, cr_sigma: float = 1.0) -> np.ndarray:
    """f_ε'(x) = g'(x) + ε·k_σ'(x)."""
    return base_slope(base, x) + eps * cr_math.correction_derivative(_t(x), cr_sigma).numpy()


def branch_cut(base: str, slope_floor: float = _DEFAULT_SLOPE_FLOOR) -> float:
    """Left end b0 of the branch B = (b0, ∞): 0 for ReLU, else the x right of g's minimum with g'(x) = floor."""
    start = cr_math.BRANCH_START.get(base)
    if start is None:
        raise ValueError(f"unknown CR base {base!r}; expected one of {sorted(cr_math.BRANCH_START)}")
    if base == "relu":
        return 0.0
    if not 0.0 < slope_floor < 1.0:
        raise ValueError(f"slope_floor must lie in (0, 1), got {slope_floor!r}")
    lo, hi = start, start + 10.0  # g' rises from 0 at the minimum towards 1: bisect
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if base_slope(base, np.array([mid]))[0] < slope_floor:
            lo = mid
        else:
            hi = mid
    return hi


def min_slope_on_branch(base: str, eps: float, cr_sigma: float, b0: float) -> float:
    """inf f_ε' on (b0, ∞), including the limit at b0⁺; beyond b0 + 12σ + 12 the correction is negligible."""
    x = np.linspace(b0, b0 + 12.0 * cr_sigma + 12.0, 20001)
    x[0] = np.nextafter(b0, math.inf)  # the one-sided limit: ε = −1 gives f'(0⁺) = 0 for ReLU
    return float(np.min(cr_slope(base, x, eps, cr_sigma)))


def monotone_eps_interval(
    base: str, cr_sigma: float = 1.0, slope_floor: float = _DEFAULT_SLOPE_FLOOR
) -> Tuple[float, float]:
    """Open ε interval on which f_ε' = g' + ε·k_σ' > 0 on the whole branch (b0, ∞).

    ε > −g'/k' where k' > 0 and ε < −g'/k' where k' < 0; for ReLU this is (−1, e^{3/2}/2) for every σ.
    """
    b0 = branch_cut(base, slope_floor)
    x = np.linspace(b0, b0 + 12.0 * cr_sigma + 12.0, 200001)
    x[0] = np.nextafter(b0, math.inf)
    g = base_slope(base, x)
    k = cr_math.correction_derivative(_t(x), cr_sigma).numpy()
    with np.errstate(divide="ignore"):
        ratio = -g / k
    lo = float(np.max(ratio[k > 0])) if np.any(k > 0) else -math.inf
    hi = float(np.min(ratio[k < 0])) if np.any(k < 0) else math.inf
    return lo, hi


# --------------------------------------------------------------------------- branch entropy
def branch_record(
    base: str,
    dist: InputDistribution,
    eps: float,
    cr_sigma: float = 1.0,
    slope_floor: float = _DEFAULT_SLOPE_FLOOR,
) -> Dict[str, Optional[float]]:
    """ΔH(ε), ∂H/∂ε, the branch entropy and the monotonicity of f_ε on B, all in nats.

    Keys: eps, delta_entropy, d_entropy_d_eps, monotone, min_slope, entropy (H(Y|B)), input_entropy
    (H(X|B)), branch_prob (P(X∈B)), branch_start (b0). Entropy fields are None where f_ε is not
    monotone on B (the change of variables, hence the theory, does not apply).
    """
    eps = float(eps)
    if not math.isfinite(eps):
        raise ValueError(f"eps must be finite, got {eps!r}")
    if not (math.isfinite(cr_sigma) and cr_sigma > 0):
        raise ValueError(f"cr_sigma must be finite and > 0, got {cr_sigma!r}")
    b0 = branch_cut(base, slope_floor)
    x, w = quadrature(dist, b0, math.inf, width=min(0.05, cr_sigma / 16.0))
    mass = float(w.sum())
    if not mass > 0:
        raise ValueError(f"the input {dist.describe()} puts no mass on the branch x > {b0:g}")
    w = w / mass
    px = dist.pdf(x) / mass
    pos = px > 0
    input_entropy = float(-np.sum(w[pos] * np.log(px[pos])))
    min_slope = min_slope_on_branch(base, eps, cr_sigma, b0)
    rec: Dict[str, Optional[float]] = {
        "eps": eps,
        "delta_entropy": None,
        "d_entropy_d_eps": None,
        "monotone": bool(min_slope > 0),
        "min_slope": min_slope,
        "entropy": None,
        "input_entropy": input_entropy,
        "branch_prob": mass,
        "branch_start": b0,
    }
    if min_slope > 0:
        fs = cr_slope(base, x, eps, cr_sigma)
        gs = base_slope(base, x)
        kd = cr_math.correction_derivative(_t(x), cr_sigma).numpy()
        # log1p keeps ΔH accurate for tiny ε (log f' − log g' = log(1 + ε k'/g')).
        delta = float(np.sum(w * np.log1p(eps * kd / gs)))
        rec["delta_entropy"] = delta
        rec["d_entropy_d_eps"] = float(np.sum(w * kd / fs))
        rec["entropy"] = input_entropy + float(np.sum(w * np.log(gs))) + delta
    return rec


def eafo_table(
    base: str,
    dist: InputDistribution,
    eps_values: Sequence[float],
    cr_sigma: float = 1.0,
    slope_floor: float = _DEFAULT_SLOPE_FLOOR,
) -> List[Dict[str, Optional[float]]]:
    """``branch_record`` for every ε, in the order given."""
    return [branch_record(base, dist, e, cr_sigma, slope_floor) for e in eps_values]


def correction_direction(
    base: str,
    dist: InputDistribution,
    x: np.ndarray,
    eps: float = 0.0,
    cr_sigma: float = 1.0,
) -> np.ndarray:
    """d/dx [p(x)/f'(x)] = p'/f' − p·f''/f'² on a grid (steepest entropy descent: f ← f + η·this).

    f'' is a central difference of the closed-form f'. For a histogram input, p is the density
    interpolated through bin centres. Points where f' ≤ 0 (outside the invertible branch) give NaN.
    """
    x = np.asarray(x, dtype=np.float64)
    p = dist.smooth_pdf(x) if isinstance(dist, HistogramInput) else dist.pdf(x)
    dp = dist.dpdf(x)
    h = 1e-5
    fs = cr_slope(base, x, eps, cr_sigma)
    fss = (cr_slope(base, x + h, eps, cr_sigma) - cr_slope(base, x - h, eps, cr_sigma)) / (2 * h)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = dp / fs - p * fss / (fs * fs)
    out[fs <= 0] = np.nan
    return out


# --------------------------------------------------------------------------- WAFBC and bounded activations
def wafbc(x: np.ndarray, dist: InputDistribution, a: float = 0.0, b: float = 1.0) -> np.ndarray:
    """WAFBC(x) = a + (b − a)·F_X(x): the output is uniform on (a, b) (EAFO.md §2)."""
    _check_bounds(a, b)
    return a + (b - a) * dist.cdf(np.asarray(x, dtype=np.float64))


def wafbc_entropy(a: float, b: float) -> float:
    """H(WAFBC(X)) = ln(b − a), the maximum over all functions with range (a, b)."""
    _check_bounds(a, b)
    return math.log(b - a)


def _check_bounds(a: float, b: float) -> None:
    if not (math.isfinite(a) and math.isfinite(b) and b > a):
        raise ValueError(f"bounds must be finite with a < b, got a={a!r}, b={b!r}")


def output_entropy(
    fn: Callable[[torch.Tensor], torch.Tensor],
    dist: InputDistribution,
    bounds: Optional[Tuple[float, float]] = None,
) -> float:
    """H(f(X)) = H(X) + E[log f'(X)] for a non-decreasing f, optionally rescaled to ``bounds``.

    f' comes from autograd in float64. If f' = 0 on a set of positive probability (flat pieces, e.g.
    hardtanh's clipped tails) the output has atoms and the differential entropy is −∞. Rescaling the
    range (lo, hi) = (f(−∞), f(+∞)) onto (a, b) adds ln((b − a)/(hi − lo)).
    """
    lo_s, hi_s = dist.support
    x, w = quadrature(dist, lo_s, hi_s)
    keep = w > 0
    x, w = x[keep], w[keep] / w[keep].sum()
    xt = _t(x).requires_grad_(True)
    (slope,) = torch.autograd.grad(fn(xt).sum(), xt)
    slope = slope.detach().numpy()
    if np.any(slope < 0):
        raise ValueError("output_entropy needs a non-decreasing function; f' < 0 somewhere on the support")
    h_in = float(-np.sum(w * np.log(dist.pdf(x))))
    with np.errstate(divide="ignore"):
        h = h_in + float(np.sum(w * np.log(slope)))
    if bounds is not None:
        a, b = bounds
        _check_bounds(a, b)
        lo, hi = activation_range(fn)
        if lo is None:
            raise ValueError("cannot rescale an unbounded activation to bounds")
        h += math.log((b - a) / (hi - lo))
    return h


def activation_range(fn: Callable[[torch.Tensor], torch.Tensor]) -> Tuple[Optional[float], Optional[float]]:
    """(f(−∞), f(+∞)) if f has finite, distinct limits in both tails (checked at ±100 and ±1000), else (None, None)."""
    with torch.no_grad():
        v = fn(torch.tensor([-1000.0, -100.0, 100.0, 1000.0], dtype=torch.float64)).double().numpy()
    if not np.all(np.isfinite(v)):
        return (None, None)
    if abs(v[0] - v[1]) > 1e-9 or abs(v[3] - v[2]) > 1e-9 or not v[3] > v[0]:
        return (None, None)
    return (float(v[0]), float(v[3]))


def bounded_activation_entropies(
    dist: InputDistribution, a: float = 0.0, b: float = 1.0
) -> Dict[str, float]:
    """Output entropy, rescaled to (a, b), of every registered activation that is bounded and increasing.

    Keyed by the first registered name of each class; WAFBC is fitted to ``dist`` when it is normal.
    """
    from crrelu_lightning.activations import CRActivation, activation_class, available_activations

    out: Dict[str, float] = {}
    seen = set()
    for name in available_activations():
        cls = activation_class(name)
        if cls in seen:
            continue
        seen.add(cls)
        kwargs = {}
        if name == "wafbc" and isinstance(dist, NormalInput):
            kwargs = {"mu": dist.mu, "sigma": dist.sigma}
        if issubclass(cls, CRActivation):
            kwargs = {"impl": "eager"}  # a probe of a few points must not wait for torch.compile
        module = cls(**kwargs).double()
        if activation_range(module)[0] is None:
            continue
        try:
            out[name] = output_entropy(module, dist, (a, b))
        except ValueError:  # bounded but not monotone: no change-of-variables entropy
            continue
    return out


# --------------------------------------------------------------------------- sample estimator (dynamic EAFO)
# Integer fixed-point sums make the reduction exact and order-independent: the sum over two DDP shards
# equals, bit for bit, the sum a single process computes over both (float sums depend on the order).
SUM_FIELDS = ("grad", "count", "delta", "x", "x2", "total")
_TERM_SCALE = 2.0**30  # resolution 1e-9 per sample for k'/f' and log(f'/g')
_TERM_CLIP = 2.0**12  # |k'/f'| ≤ 4096 (f' ≥ 2.4e-4): 2^29 typical samples fit in int64
_X_SCALE = 2.0**20
_X_CLIP = 2.0**10  # |x| ≤ 1024, x² ≤ 2^20 for the running σ


def _fixed(t: torch.Tensor, scale: float, clip: float) -> torch.Tensor:
    return torch.round(t.clamp(-clip, clip) * scale).to(torch.int64).sum()


def branch_sums(x: torch.Tensor, base: str, eps: torch.Tensor, sigma: float, b0: float) -> torch.Tensor:
    """Sum-reducible int64 statistics of the inputs ``x`` of one CR layer (EAFO.md §5).

    Returns the fixed-point sums [S, N, D, Σx, Σx², M] with, over the branch B = {x > b0},
    S = Σ k_σ'(x)/f_ε'(x) (so S/N estimates ∂H_B/∂ε) and D = Σ log(f_ε'(x)/g'(x)) (D/N estimates ΔH_B),
    and over all M inputs the moments for the running σ. Decode with ``decode_sums``. Tensor work only
    (no host sync); any dtype is upcast to float64.
    """
    x = x.detach().reshape(-1).to(torch.float64)
    eps = eps.detach().to(device=x.device, dtype=torch.float64)
    inb = x > b0
    xb = x[inb]
    g = cr_math.base_derivative(base, xb)
    kd = cr_math.correction_derivative(xb, sigma)
    fp = g + eps * kd
    return torch.stack(
        [
            _fixed(kd / fp, _TERM_SCALE, _TERM_CLIP),
            inb.sum(dtype=torch.int64),
            # log1p(εk'/g'): accurate for small ε; NaN (f' ≤ 0, outside the theory) counts as the clip value
            _fixed(torch.nan_to_num(torch.log1p(eps * kd / g), nan=-_TERM_CLIP), _TERM_SCALE, _TERM_CLIP),
            _fixed(x, _X_SCALE, _X_CLIP),
            _fixed(x * x, _X_SCALE, _X_CLIP * _X_CLIP),
            torch.tensor(x.numel(), dtype=torch.int64, device=x.device),
        ]
    )


def decode_sums(sums: torch.Tensor) -> Dict[str, float]:
    """Estimates from ``branch_sums`` totals: dH_deps = S/N, delta_entropy = D/N, mean and std of x.

    Values are NaN where their count is zero.
    """
    s = [int(v) for v in sums.tolist()]
    n, m = s[1], s[5]
    nan = float("nan")
    mean = s[3] / _X_SCALE / m if m else nan
    var = max(s[4] / _X_SCALE / m - mean * mean, 0.0) if m else nan
    return {
        "dH_deps": s[0] / _TERM_SCALE / n if n else nan,
        "delta_entropy": s[2] / _TERM_SCALE / n if n else nan,
        "count": n,
        "mean": mean,
        "std": math.sqrt(var) if m else nan,
        "total": m,
    }
