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

**Representation.** Every per-sample term is rounded to fixed point, q = round(v·2^F) with v clipped
to ±C (C·2^F ≤ 2^62), and q is split into three 21-bit limbs, q = h₂·2^42 + h₁·2^21 + h₀, each
summed in its own int64 column. Per sample |h| < 2^21, so a column cannot overflow before 2^42 ≈ 4.4e12
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
_LIMB_MASK = (1 << _LIMB_BITS) - 1
# (fractional bits F, clip C) of the four fixed-point sums; C·2^F ≤ 2^62 keeps q inside int64.
_FIXED = (("S", 42, 2.0**20), ("D", 42, 2.0**20), ("X1", 48, 2.0**14), ("X2", 34, 2.0**28))
assert all(math.log2(c) + f <= 62 for _, f, c in _FIXED)

# Column layout of one row of the state tensor.
S, D, X1, X2 = (i * _LIMBS for i in range(4))  # first limb column of each fixed-point sum
N, M, NONFINITE, NONMONOTONE = 12, 13, 14, 15
COLUMNS = 16


def _limb_sums(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Σ over samples of the fixed-point limbs of each row of ``values`` [4, n] where ``keep``; int64 [12]."""
    dev = values.device
    scale = torch.tensor([2.0**f for _, f, _ in _FIXED], dtype=torch.float64, device=dev)[:, None]
    clip = torch.tensor([c for _, _, c in _FIXED], dtype=torch.float64, device=dev)[:, None]
    v = torch.where(keep, values, torch.zeros((), dtype=values.dtype, device=dev))
    v = torch.maximum(torch.minimum(v, clip), -clip)  # ±inf → ±C; NaN cannot occur (masked above)
    q = torch.round(v * scale).to(torch.int64)
    limbs = torch.stack([q >> (2 * _LIMB_BITS), (q >> _LIMB_BITS) & _LIMB_MASK, q & _LIMB_MASK], dim=-1)
    return limbs.sum(dim=1).reshape(-1)


def branch_sums(x: torch.Tensor, base: str, eps: torch.Tensor, sigma: float, b0: float) -> torch.Tensor:
    """int64 statistics [COLUMNS] of the inputs ``x`` of one CR layer (see the module docstring).

    Tensor work only (no host sync, no data-dependent shapes); any dtype is upcast to float64.
    Decode with ``decode_sums`` or ``compute_branch_stats``.
    """
    x = x.detach().reshape(-1).to(torch.float64)
    eps = torch.as_tensor(eps).detach().to(device=x.device, dtype=torch.float64)
    finite = torch.isfinite(x)
    xf = torch.where(finite, x, torch.zeros((), dtype=x.dtype, device=x.device))
    inb = finite & (xf > b0)
    g = cr_math.base_derivative(base, xf)
    kd = cr_math.correction_derivative(xf, sigma)
    fp = g + eps * kd
    ok = inb & (fp > 0)  # NaN ε makes fp NaN: then nothing is ok and everything is nonmonotone
    one = torch.ones((), dtype=x.dtype, device=x.device)
    g_safe = torch.where(ok, g, one)
    fp_safe = torch.where(ok, fp, one)
    terms = torch.stack([
        kd / fp_safe,
        torch.log1p(eps * kd / g_safe),  # log(f'/g') = log1p(εk'/g'): accurate for small ε
        xf,
        xf * xf,
    ])
    keep = torch.stack([ok, ok, finite, finite])
    counts = torch.stack([
        ok.sum(dtype=torch.int64),
        finite.sum(dtype=torch.int64),
        (~finite).sum(dtype=torch.int64),
        (inb & ~ok).sum(dtype=torch.int64),
    ])
    return torch.cat([_limb_sums(terms, keep), counts])


def _fixed_value(state: torch.Tensor, first: int, frac_bits: int) -> torch.Tensor:
    limbs = state[..., first : first + _LIMBS].to(torch.float64)
    total = limbs[..., 0] * 2.0 ** (2 * _LIMB_BITS) + limbs[..., 1] * 2.0**_LIMB_BITS + limbs[..., 2]
    return total * 2.0**-frac_bits


def compute_branch_stats(state: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Estimates from a state [..., COLUMNS] (float64 tensors of shape [...]; NaN where a count is 0).

    Keys: ``dH_deps`` (S/N), ``delta_entropy`` (D/N), ``mean``, ``std`` (population std of the finite
    inputs), ``count`` (N), ``total`` (M), ``nonfinite``, ``nonmonotone``. A deterministic function of
    the integer state, so equal states give bit-equal estimates on every rank.
    """
    if state.shape[-1] != COLUMNS or state.dtype.is_floating_point:
        raise ValueError(f"expected an integer state with {COLUMNS} columns, got {state.dtype} {tuple(state.shape)}")
    n = state[..., N].to(torch.float64)
    m = state[..., M].to(torch.float64)
    nan = torch.full_like(n, math.nan)
    s, d, x1, x2 = (_fixed_value(state, col, f) for col, (_, f, _) in zip((S, D, X1, X2), _FIXED))
    mean = torch.where(m > 0, x1 / m.clamp_min(1), nan)
    var = torch.where(m > 0, (x2 / m.clamp_min(1) - mean * mean).clamp_min(0), nan)
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


def decode_sums(sums: torch.Tensor) -> Dict[str, float]:
    """``compute_branch_stats`` of one row as Python floats (counts as ints)."""
    stats = compute_branch_stats(sums.reshape(COLUMNS).cpu())
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
    """

    def __init__(
        self,
        base: Union[str, Sequence[str]] = "relu",
        slope_floor: float = DEFAULT_SLOPE_FLOOR,
        device: Union[str, torch.device, None] = None,
    ) -> None:
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
        sums = branch_sums(flat, self.bases[index], eps, sigma, self.branch_starts[index]).to(self._state.device)
        if self.single:
            self._state += sums
        else:
            self._state[index] += sums

    def compute(self) -> Dict[str, torch.Tensor]:
        """``compute_branch_stats`` of every row."""
        return compute_branch_stats(self._state)

    def __repr__(self) -> str:
        return f"BranchSumEstimator(base={self.bases[0] if self.single else self.bases!r}, slope_floor={self.slope_floor})"
