"""Dynamic EAFO's sample estimator: sum-reducible integer statistics of CR layers' inputs.

Over the inputs x of one layer that are finite and lie on the branch B = (b₀, ∞) where f_ε' > 0:

    S = Σ k_σ'(x) / f_ε'(x)        S/N estimates G = ∂H_B/∂ε = E[k_σ'(X)/f_ε'(X) | X∈B]
    D = Σ log(f_ε'(x) / g'(x))     D/N estimates ΔH_B(ε) = H_B(ε) − H_B(base)
    N = |{x ∈ B}|

and over all finite inputs the moments Σx, Σx² and their count M (for a running input σ).
Non-finite inputs are excluded from every sum and counted (``nonfinite``). Branch inputs where
f_ε' ≤ 0 (ε outside the monotone interval: there G is infinite and the theory does not apply) are
excluded from S and D and counted (``nonmonotone``); a caller should treat any such count as
"statistics not finite". docs/eafo.md §4.

**Representation.** Every per-sample term is put in fixed point, y = v·2^F with v clipped to ±C
(C·2^F ≤ 2^62), and round(y) is split into three integer limbs, h₂·2^42 + h₁·2^21 + h₀ (0 ≤ h₁, h₀ ≤ 2^21,
|h₂| ≤ 2^20), each summed in its own int64 column. Per sample |h| ≤ 2^21, so a column cannot overflow before 2^42 ≈ 4.4e12
samples per layer per reduction (all micro-batches and ranks together). Integer sums are exact and
independent of order: two ranks that see different shards reduce (one all-reduce of the state) to
the bit-identical totals one process computes over both.

| term | clip C | resolution 2^−F |
|---|---|---|
| k'/f', log(f'/g') | 2^20 (f' ≥ 1e-6·|k'|) | 2^−42 ≈ 2.3e-13 |
| x | 2^14 = 16384 | 2^−48 ≈ 3.6e-15 |
| x² | 2^28 (|x| ≤ 16384) | 2^−34 ≈ 5.8e-11 |

Inputs with |x| > 16384 are clipped in the moments only (they still count in S, D exactly).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Union

import torch

from crrelu_lightning.activations import cr_math
from crrelu_lightning.entropy.cr_branch import DEFAULT_SLOPE_FLOOR, branch_cut

__all__ = ["COLUMNS", "BranchSumEstimator", "branch_sums", "compute_branch_stats", "decode_sums"]

_LIMB_BITS = 21
_LIMBS = 3
# (fractional bits F, clip C) of the four fixed-point sums; C·2^F ≤ 2^62 keeps q inside int64.
_FIXED = (("S", 42, 2.0**20), ("D", 42, 2.0**20), ("X1", 48, 2.0**14), ("X2", 34, 2.0**28))
assert all(math.log2(c) + f <= 62 for _, f, c in _FIXED)

# Column layout of one row of the state tensor.
S, D, X1, X2 = (i * _LIMBS for i in range(4))  # first limb column of each fixed-point sum
N, M, NONFINITE, NONMONOTONE = 12, 13, 14, 15
COLUMNS = 16


def _limb_sums(v: torch.Tensor, frac_bits: int, clip: float, work: torch.Tensor) -> torch.Tensor:
    """Σ over samples of the fixed-point limbs of the 1-d float64 terms ``v`` (0 where excluded); float64 [3].

    The limbs of y = v·2^F are h₂ = ⌊y/2^42⌋, h₁ = ⌊(y − h₂2^42)/2^21⌋, h₀ = ⌊y − h₂2^42 − h₁2^21 + ½⌋: integers
    computed in float64 by a fixed sequence of operations, so each is a deterministic function of the
    sample. Their float64 sums are exact (every partial sum is an integer below 2^53 for n < 2^31 samples
    per call), hence independent of the summation order. Only the totals are converted to int64 (by the
    caller). ``v`` is overwritten and ``work`` (same shape) is scratch: fresh large buffers cost page
    faults on CPU, which made this several times slower than the arithmetic.
    """
    y = v.clamp_(-clip, clip).mul_(2.0**frac_bits)  # ±inf → ±C
    h = torch.mul(y, 2.0 ** (-2 * _LIMB_BITS), out=work).floor_()
    h2 = h.sum()
    y.sub_(h, alpha=2.0 ** (2 * _LIMB_BITS))
    h = torch.mul(y, 2.0**-_LIMB_BITS, out=work).floor_()
    h1 = h.sum()
    h0 = y.sub_(h, alpha=2.0**_LIMB_BITS).add_(0.5).floor_().sum()  # +0.5: the total is round(y), unbiased
    return torch.stack([h2, h1, h0])


def branch_sums(
    x: torch.Tensor, base: str, eps: torch.Tensor, sigma: float, b0: float, moments: bool = True
) -> torch.Tensor:
    """int64 statistics [COLUMNS] of the inputs ``x`` of one CR layer (see the module docstring).

    ``moments=False`` leaves the Σx, Σx² columns at 0 (mean/std then decode as NaN) and costs less.
    Tensor work only (no host sync, no data-dependent shapes); any dtype is upcast to float64. At most
    2^31 values per call. Decode with ``decode_sums`` or ``compute_branch_stats``.
    """
    n = x.numel()
    if n >= 2**31:
        raise ValueError(f"at most 2^31 values per call, got {n}; pass max_samples or split the tensor")
    xf = x.detach().reshape(-1).to(torch.float64, copy=True)  # own copy: updated in place below
    eps = torch.as_tensor(eps).detach().to(device=xf.device, dtype=torch.float64)
    finite = torch.isfinite(xf)
    xf.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    inb = finite & (xf > b0)
    not_b = ~inb
    g = cr_math.base_derivative(base, xf).masked_fill_(not_b, 1.0)  # g' > 0 on B; 1 elsewhere keeps terms finite
    kd = cr_math.correction_derivative(xf, sigma)
    ratio = torch.mul(kd, eps).div_(g)  # εk'/g'
    ok = inb & (ratio > -1)  # f' = g'(1 + εk'/g') > 0; a NaN ε makes nothing ok and everything nonmonotone
    not_ok = ~ok
    fp = g.addcmul_(g, ratio).masked_fill_(not_ok, 1.0)  # f' = g' + εk' (1 where excluded)
    s_terms = kd.div_(fp).masked_fill_(not_ok, 0.0)  # k'/f'
    d_terms = ratio.masked_fill_(not_ok, 0.0).log1p_()  # log(f'/g') = log1p(εk'/g'), accurate for small ε
    work = fp  # no longer needed: scratch for the limb sums
    parts = [_limb_sums(s_terms, *_FIXED[0][1:], work), _limb_sums(d_terms, *_FIXED[1][1:], work)]
    if moments:
        x2 = torch.mul(xf, xf, out=s_terms)
        parts += [_limb_sums(xf, *_FIXED[2][1:], work), _limb_sums(x2, *_FIXED[3][1:], work)]
    else:
        parts += [torch.zeros(2 * _LIMBS, dtype=torch.float64, device=xf.device)]
    n_ok, n_finite, n_inb = ok.sum(dtype=torch.int64), finite.sum(dtype=torch.int64), inb.sum(dtype=torch.int64)
    counts = torch.stack([n_ok, n_finite, n - n_finite, n_inb - n_ok])
    return torch.cat([torch.cat(parts).to(torch.int64), counts])


def _fixed_value(state: torch.Tensor, first: int, frac_bits: int) -> torch.Tensor:
    limbs = state[..., first : first + _LIMBS].to(torch.float64)
    total = limbs[..., 0] * 2.0 ** (2 * _LIMB_BITS) + limbs[..., 1] * 2.0**_LIMB_BITS + limbs[..., 2]
    return total * 2.0**-frac_bits


def compute_branch_stats(state: torch.Tensor, moments: bool = True) -> Dict[str, torch.Tensor]:
    """Estimates from a state [..., COLUMNS] (float64 tensors of shape [...]; NaN where a count is 0).

    Keys: ``dH_deps`` (S/N), ``delta_entropy`` (D/N), ``mean``, ``std`` (population std of the finite
    inputs), ``count`` (N), ``total`` (M), ``nonfinite``, ``nonmonotone``. A deterministic function of
    the integer state, so equal states give bit-equal estimates on every rank. ``moments=False`` (the
    state was summed without Σx, Σx²) reports ``mean`` and ``std`` as NaN.
    """
    if state.shape[-1] != COLUMNS or state.dtype.is_floating_point:
        raise ValueError(f"expected an integer state with {COLUMNS} columns, got {state.dtype} {tuple(state.shape)}")
    n = state[..., N].to(torch.float64)
    m = state[..., M].to(torch.float64)
    nan = torch.full_like(n, math.nan)
    s, d, x1, x2 = (_fixed_value(state, col, f) for col, (_, f, _) in zip((S, D, X1, X2), _FIXED))
    have = (m > 0) & moments
    mean = torch.where(have, x1 / m.clamp_min(1), nan)
    var = torch.where(have, (x2 / m.clamp_min(1) - mean * mean).clamp_min(0), nan)
    return {
        "dH_deps": torch.where(n > 0, s / n.clamp_min(1), nan),
        "delta_entropy": torch.where(n > 0, d / n.clamp_min(1), nan),
        "mean": mean,
        "std": var.sqrt(),
        "count": n,
        "total": m,
        "nonfinite": state[..., NONFINITE].to(torch.float64),
        "nonmonotone": state[..., NONMONOTONE].to(torch.float64),
    }


def decode_sums(sums: torch.Tensor, moments: bool = True) -> Dict[str, float]:
    """``compute_branch_stats`` of one row as Python floats (counts as ints)."""
    stats = compute_branch_stats(sums.reshape(COLUMNS).cpu(), moments)
    out = {k: float(v) for k, v in stats.items()}
    for k in ("count", "total", "nonfinite", "nonmonotone"):
        out[k] = int(out[k])
    return out


class BranchSumEstimator:
    """``branch_sums`` statistics of one or several CR layers in one int64 state tensor.

    Shaped like ``HistogramEstimator``: ``update`` adds samples (tensor work only, safe in a forward
    pass), ``state_tensor`` is the sum-reducible state (reduce it across processes), ``reset`` zeroes
    it and ``compute`` decodes it.

    Args:
        base: one CR base name (one row; ``compute`` returns 0-d tensors) or a sequence of base names,
            one row per layer (``update(..., index=k)``; ``compute`` returns shape ``(K,)``).
        slope_floor: start of the branch for the smooth bases (g'(b₀) = slope_floor).
        device: where the state lives.
        moments: also sum Σx and Σx² (for ``mean``/``std``); off, they decode as NaN and ``update``
            costs about half as much.
    """

    def __init__(
        self,
        base: Union[str, Sequence[str]] = "relu",
        slope_floor: float = DEFAULT_SLOPE_FLOOR,
        device: Union[str, torch.device, None] = None,
        moments: bool = True,
    ) -> None:
        self.moments = bool(moments)
        self.single = isinstance(base, str)
        self.bases: List[str] = [base] if isinstance(base, str) else list(base)
        if not self.bases:
            raise ValueError("BranchSumEstimator needs at least one base")
        self.slope_floor = float(slope_floor)
        self.branch_starts = [branch_cut(b, self.slope_floor) for b in self.bases]
        shape = (COLUMNS,) if self.single else (len(self.bases), COLUMNS)
        self._state = torch.zeros(shape, dtype=torch.int64, device=device)

    @property
    def num_estimators(self) -> Optional[int]:
        return None if self.single else len(self.bases)

    @property
    def device(self) -> torch.device:
        return self._state.device

    def to(self, device: Union[str, torch.device]) -> "BranchSumEstimator":
        self._state = self._state.to(device)
        return self

    def state_tensor(self) -> torch.Tensor:
        """The live int64 state (sum-reducible; reduce it in place across processes)."""
        return self._state

    def load_state_tensor(self, state: torch.Tensor) -> None:
        if state.shape != self._state.shape or state.dtype.is_floating_point:
            raise ValueError(f"expected an integer state of shape {tuple(self._state.shape)}, got {state.dtype} {tuple(state.shape)}")
        self._state.copy_(state)

    def merge(self, other: Union["BranchSumEstimator", torch.Tensor]) -> "BranchSumEstimator":
        """Add another estimator's state (same bases) or a state tensor in place."""
        if isinstance(other, BranchSumEstimator):
            if other.bases != self.bases or other.slope_floor != self.slope_floor:
                raise ValueError(f"cannot merge estimators of bases {self.bases} and {other.bases}")
            other = other._state
        if other.shape != self._state.shape or other.dtype.is_floating_point:
            raise ValueError(f"expected an integer state of shape {tuple(self._state.shape)}, got {other.dtype} {tuple(other.shape)}")
        self._state += other.to(self._state.device)
        return self

    def reset(self) -> None:
        self._state.zero_()

    @torch.no_grad()
    def update(
        self,
        values: torch.Tensor,
        eps: Union[torch.Tensor, float],
        sigma: float = 1.0,
        index: int = 0,
        max_samples: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
    ) -> None:
        """Add the inputs ``values`` (any shape) of layer ``index``, whose ε and correction width are given.

        With ``max_samples`` and more values than that, ``max_samples`` values drawn uniformly with
        replacement (with ``generator``, never the global RNG) are added instead.
        """
        if not 0 <= index < len(self.bases) or (self.single and index != 0):
            raise IndexError(f"index must be in [0, {len(self.bases)}), got {index!r}")
        flat = values.detach().reshape(-1)
        if max_samples is not None:
            if max_samples < 1:
                raise ValueError(f"max_samples must be None or >= 1, got {max_samples!r}")
            if flat.numel() > max_samples:
                pick = torch.randint(flat.numel(), (max_samples,), generator=generator, device=flat.device)
                flat = flat[pick]
        sums = branch_sums(flat, self.bases[index], eps, sigma, self.branch_starts[index], self.moments)
        sums = sums.to(self._state.device)
        if self.single:
            self._state += sums
        else:
            self._state[index] += sums

    def compute(self) -> Dict[str, torch.Tensor]:
        """``compute_branch_stats`` of every row."""
        return compute_branch_stats(self._state, self.moments)

    def __repr__(self) -> str:
        return f"BranchSumEstimator(base={self.bases[0] if self.single else self.bases!r}, slope_floor={self.slope_floor})"
