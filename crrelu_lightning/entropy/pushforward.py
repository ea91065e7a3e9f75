"""Whole-line and branch entropy of Y = f(X) from a histogram of the activation's *input* X.

The definitions, the argument for them and their biases are in docs/entropy.md ("Estimators").

1. The input cell counts (``cells.CellHistogram``) are merged into bins of width Δ (a power of two
   chosen from the data's robust scale and the sample size, ``choose_bin_width``). The estimated input
   density p̂ is constant on each bin; exact zeros of the input are an atom.
2. Each bin is cut into ``subdivisions`` pieces and f is evaluated at the piece edges; between edges
   f is taken as linear. Under p̂ a piece of mass P whose image is [a, b] (a < b) contributes the
   uniform density P/(b − a) to p_Y; a piece on which f is constant (ReLU for x < 0) contributes an
   atom. Summing over pieces sums over every preimage of y, so narrow non-monotone lobes (CRReLU's
   x < 0 band of width ≈ 0.6|ε|, GELU's dip) are resolved however thin they are in y.
3. ``whole_line`` = H_mix(Y) = −Σ_a A_a ln A_a − ∫ p_Y ln p_Y (atoms A_a at their values, the rest a
   density), plus the Miller–Madow term (m − 1)/(2n) of the m occupied bins that carry density.
4. ``branch`` = H(Y | X ∈ B) = H(X | X ∈ B) + E[ln f′(X) | X ∈ B], both as sums over the pieces
   in B = [b, ∞) under p̂ (b is made a piece edge), Miller–Madow on the bins in B. Where f is not
   strictly monotone on B the change of variables does not apply and the pushforward of p̂
   restricted to B is used instead (``branch_monotone`` False).

Only integer counts enter, so the result is a deterministic function of the summed counts and of f:
identical for any split of the data over micro-batches, steps or ranks.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from crrelu_lightning.entropy.cells import cell_table, sorted_cell_counts

ArrayFn = Callable[[np.ndarray], np.ndarray]

DEFAULT_SUBDIVISIONS = 32


def _weighted_quantile(values: np.ndarray, counts: np.ndarray, q: float) -> float:
    cum = np.cumsum(counts)
    return float(values[min(int(np.searchsorted(cum, q * cum[-1])), values.size - 1)])


def choose_bin_width(cell_counts: np.ndarray, resolution: float = 1 / 16) -> float:
    """Δ = the power of two at or below s·max(resolution, 2 n^(−1/3)), s = IQR/1.349 of the non-zero values.

    The n^(−1/3) floor keeps the number of occupied bins well below n for small samples (the
    plug-in bias is ≈ −(m − 1)/(2n) before Miller–Madow corrects it).
    """
    _, values, _, zero = cell_table()
    c = np.asarray(cell_counts, dtype=np.float64).copy()
    c[zero] = 0
    n = c.sum()
    if n <= 0:
        return 1.0
    q25, q75 = _weighted_quantile(values, c, 0.25), _weighted_quantile(values, c, 0.75)
    scale = (q75 - q25) / 1.349
    if not scale > 0:
        mean = float((c * values).sum() / n)
        scale = math.sqrt(max(float((c * (values - mean) ** 2).sum() / n), 0.0))
    if not (scale > 0 and math.isfinite(scale)):
        scale = max(abs(q25), abs(q75), 1e-30)
    target = scale * max(resolution, 2.0 * n ** (-1.0 / 3.0))
    return 2.0 ** math.floor(math.log2(target))


def merge_cells(cell_counts: np.ndarray, bin_width: float) -> Tuple[np.ndarray, np.ndarray, float]:
    """Sum consecutive cells narrower than Δ whose values share ⌊x/Δ⌋; wider cells stay single bins.

    Returns ``(edges, counts, atom)``: bin edges (len B + 1, exact cell edges, so bins nest the
    cells), bin counts (the zero cell's count removed) and the count of exact zeros.
    """
    _, values, edges, zero = cell_table()
    c = np.asarray(cell_counts, dtype=np.float64).copy()
    atom = float(c[zero])
    c[zero] = 0.0
    narrow = np.diff(edges) <= bin_width
    key = np.floor(values / bin_width)
    start = np.ones(values.size, dtype=bool)
    start[1:] = ~(narrow[1:] & narrow[:-1] & (key[1:] == key[:-1]))
    bin_id = np.cumsum(start) - 1
    counts = np.bincount(bin_id, weights=c)
    bin_edges = np.concatenate([edges[:-1][start], edges[-1:]])
    return bin_edges, counts, atom


def _pieces(bin_edges: np.ndarray, counts: np.ndarray, total: float, subdivisions: int, cut: Optional[float]):
    """Piece edges over the occupied span, the density of p̂ on each piece and each piece's bin."""
    occupied = np.flatnonzero(counts > 0)
    first, last = int(occupied[0]), int(occupied[-1])
    lo_e, hi_e = bin_edges[first : last + 1], bin_edges[first + 1 : last + 2]
    c = counts[first : last + 1]
    dens = c / (total * (hi_e - lo_e))
    sub = np.where(c > 0, subdivisions, 1)
    bin_of = np.repeat(np.arange(c.size), sub)
    frac = (np.arange(bin_of.size) - np.repeat(np.cumsum(sub) - sub, sub)) / sub[bin_of]
    left = lo_e[bin_of] + frac * (hi_e - lo_e)[bin_of]
    edges = np.concatenate([left, hi_e[-1:]])
    piece_dens = dens[bin_of]
    if cut is not None and edges[0] < cut < edges[-1] and not np.any(edges == cut):
        k = int(np.searchsorted(edges, cut))  # edges[k-1] < cut < edges[k]
        edges = np.insert(edges, k, cut)
        piece_dens = np.insert(piece_dens, k - 1, piece_dens[k - 1])
        bin_of = np.insert(bin_of, k - 1, bin_of[k - 1])
    return edges, piece_dens, bin_of + first


def pushforward_density(F: np.ndarray, P: np.ndarray):
    """Atoms and piecewise-constant density of Y when piece k (mass P[k]) maps linearly onto [F[k], F[k+1]].

    Returns ``(atom_values, atom_masses, breaks, density)`` with ``density[j]`` on ``[breaks[j], breaks[j+1])``.

    Pieces are grouped into runs on which f is strictly monotone; within a run the images are
    disjoint, so each run's density is exact, and runs are summed on the common breakpoints. (A
    running sum of +density/−density over all pieces would cancel catastrophically: far-tail pieces
    of CRReLU's x < 0 branch have densities of 10¹⁵ and more on images of width 10⁻²⁰.)
    """
    a, b = F[:-1], F[1:]
    keep = P > 0
    flat = keep & (a == b)
    atom_vals, inv = np.unique(a[flat], return_inverse=True)
    atom_mass = np.bincount(inv, weights=P[flat], minlength=atom_vals.size) if atom_vals.size else np.zeros(0)
    sign = np.sign(b - a)
    if not np.any(keep & (sign != 0)):
        return atom_vals, atom_mass, np.zeros(1), np.zeros(0)
    # Runs of equal non-zero sign; flat pieces end a run.
    run_start = np.ones(sign.size, dtype=bool)
    run_start[1:] = sign[1:] != sign[:-1]
    run_id = np.cumsum(run_start) - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        dens = np.where(sign != 0, P / np.abs(b - a), 0.0)
    runs = []
    for r in np.unique(run_id[keep & (sign != 0)]):
        idx = np.flatnonzero(run_id == r)
        ys = np.concatenate([F[idx], F[idx[-1] + 1 : idx[-1] + 2]])
        d = dens[idx]
        if sign[idx[0]] < 0:
            ys, d = ys[::-1], d[::-1]
        runs.append((ys, d))
    breaks = np.unique(np.concatenate([ys for ys, _ in runs]))
    mid = (breaks[1:] + breaks[:-1]) / 2
    density = np.zeros(mid.size)
    for ys, d in runs:
        j = np.searchsorted(ys, mid, side="right") - 1
        ok = (j >= 0) & (j < d.size)
        density[ok] += d[j[ok]]
    return atom_vals, atom_mass, breaks, density


def _mixed_entropy_terms(F: np.ndarray, P: np.ndarray, atoms: List[Tuple[float, float]]) -> Tuple[float, float]:
    """(−Σ A ln A − ∫ p ln p, total atom mass) of the pushforward plus extra ``atoms`` (value, mass)."""
    vals, mass, breaks, density = pushforward_density(F, P)
    atom = {float(v): float(m) for v, m in zip(vals, mass)}
    for v, m in atoms:
        if m > 0:
            atom[float(v)] = atom.get(float(v), 0.0) + m
    a = np.array(list(atom.values()), dtype=np.float64)
    h = -float(np.sum(a * np.log(a))) if a.size else 0.0
    if density.size:
        d = density[density > 0]
        h -= float(np.sum(d * np.log(d) * np.diff(breaks)[density > 0]))
    return h, float(a.sum()) if a.size else 0.0


def _monotone_run_start(F: np.ndarray) -> Optional[int]:
    """Index of the edge where the maximal strictly monotone run ending at the right end begins."""
    s = np.sign(np.diff(F))
    if s.size == 0 or s[-1] == 0:
        return None
    differs = np.flatnonzero(s != s[-1])
    return 0 if differs.size == 0 else int(differs[-1]) + 1


def find_branch_start(f: ArrayFn, edges: np.ndarray) -> float:
    """Left end b of the invertible branch: the strictly monotone run of f reaching the right end of ``edges``.

    −∞ if f is monotone over the whole span; at a smooth extremum b is refined by a parabola
    through the three grid points around it.
    """
    F = np.asarray(f(edges), dtype=np.float64)
    k = _monotone_run_start(F)
    if k is None:
        return math.nan
    if k == 0:
        return -math.inf
    if 0 < k < F.size - 1 and F[k - 1] != F[k]:
        x0, x1, x2 = edges[k - 1 : k + 2]
        y0, y1, y2 = F[k - 1 : k + 2]
        denom = (x0 - x1) * (x0 - x2) * (x1 - x2)
        a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denom
        b = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / denom
        if a != 0:
            vertex = -b / (2 * a)
            if x0 <= vertex <= x2:
                return float(vertex)
    return float(edges[k])


def entropies_from_cells(
    cell_row: np.ndarray,
    f: Optional[ArrayFn] = None,
    branch_start: Optional[float] = None,
    bin_width: Optional[float] = None,
    subdivisions: int = DEFAULT_SUBDIVISIONS,
    miller_madow: bool = True,
) -> Dict[str, float]:
    """Entropy statistics of Y = f(X) from one row of input cell counts (see the module docstring).

    Args:
        cell_row: counts per bf16 bit pattern (``CellHistogram.state_tensor()[row]``).
        f: the elementwise activation on float64 numpy arrays; ``None`` = identity (entropy of X).
        branch_start: b of B = [b, ∞); ``None`` finds it from f (``find_branch_start``); −∞ = the
            whole line.
        bin_width: Δ of the input bins; ``None`` = ``choose_bin_width``.

    Returns floats: ``whole_line`` (H_mix(Y)), ``branch`` (H(Y | X∈B)), ``input`` (H_mix(X)),
    ``p0`` (total atom mass of Y), ``branch_start``, ``branch_mass`` (P(X∈B)), ``branch_monotone``
    (1.0/0.0), ``bin_width``, ``num_samples`` (finite inputs), ``nonfinite_count``.
    NaN where undefined (no finite values; empty branch).
    """
    counts_sorted, nonfinite = sorted_cell_counts(cell_row)
    total = float(counts_sorted.sum())
    nan = math.nan
    out = dict(whole_line=nan, branch=nan, input=nan, p0=nan, branch_start=nan, branch_mass=nan,
               branch_monotone=nan, bin_width=nan, num_samples=total, nonfinite_count=float(nonfinite))
    if total <= 0:
        return out
    fn = f if f is not None else (lambda x: x)
    delta = choose_bin_width(counts_sorted) if bin_width is None else float(bin_width)
    edges_b, counts_b, atom = merge_cells(counts_sorted, delta)
    out["bin_width"] = delta
    f0 = float(np.asarray(fn(np.zeros(1)), dtype=np.float64)[0])
    if counts_b.sum() <= 0:  # only exact zeros
        out.update(whole_line=0.0, input=0.0, p0=1.0)
        return out

    if branch_start is None:
        probe, _, _ = _pieces(edges_b, counts_b, total, subdivisions, None)
        branch_start = find_branch_start(fn, probe)
    out["branch_start"] = float(branch_start)
    cut = branch_start if math.isfinite(branch_start) else None
    E, dens, bin_of = _pieces(edges_b, counts_b, total, subdivisions, cut)
    P = dens * np.diff(E)
    F = np.asarray(fn(E), dtype=np.float64)
    if F.shape != E.shape:
        raise ValueError(f"the activation must be elementwise: f of {E.shape[0]} points returned shape {F.shape}")
    good = np.isfinite(F[:-1]) & np.isfinite(F[1:])
    P_used = np.where(good, P, 0.0)
    mm = (lambda m, n: (m - 1) / (2 * n) if miller_madow and n > 0 and m > 0 else 0.0)

    # Whole line: MM over bins that carry density of Y (not those mapped onto an atom).
    h_mix, atom_mass = _mixed_entropy_terms(F, P_used, [(f0, atom / total)])
    cont_bins = np.unique(bin_of[(P_used > 0) & (F[:-1] != F[1:])])
    out["whole_line"] = h_mix + mm(cont_bins.size, total)
    out["p0"] = atom_mass

    # Input entropy (identity map), MM over all occupied bins.
    h_in, _ = _mixed_entropy_terms(E, P, [(0.0, atom / total)])
    out["input"] = h_in + mm(int((counts_b > 0).sum()), total)

    # Branch B = [b, ∞).
    in_b = E[:-1] >= branch_start if math.isfinite(branch_start) else np.ones(P.size, dtype=bool)
    zero_in_b = branch_start < 0.0  # B = (0, ∞) for the CR family: an input atom at 0 is not in it
    PB_pieces = np.where(in_b, P_used, 0.0)
    atom_b = atom / total if zero_in_b else 0.0
    PB = float(PB_pieces.sum()) + atom_b
    out["branch_mass"] = PB
    if PB <= 0:
        return out
    nB = PB * total
    mB = np.unique(bin_of[PB_pieces > 0]).size
    slope = np.diff(F) / np.diff(E)
    used = PB_pieces > 0
    monotone = atom_b == 0 and used.any() and (np.all(slope[used] > 0) or np.all(slope[used] < 0))
    out["branch_monotone"] = 1.0 if monotone else 0.0
    if monotone:
        q = PB_pieces[used] / PB
        out["branch"] = float(-np.sum(q * np.log(dens[used] / PB)) + np.sum(q * np.log(np.abs(slope[used])))) + mm(mB, nB)
    else:
        h_b, _ = _mixed_entropy_terms(F, PB_pieces, [(f0, atom_b)])
        out["branch"] = h_b / PB + math.log(PB) + mm(mB, nB)
    return out
