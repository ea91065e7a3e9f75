"""``crrelu-lightning eafo --derive``: the general EAFO correction of any registered activation.

    crrelu-lightning eafo --base gelu --derive                          # N(0, 1) input, table on stdout
    crrelu-lightning eafo --base silu --derive --mu 0.3 --sigma 1.5 --table silu.npz --plot silu.png
    crrelu-lightning eafo --base gelu --derive --input histogram:layer_inputs.json --format json

Prints the branch, the taper, dH_B/dε at 0 both ways (E[h'/f'] and −∫w·c²/P), the monotone ε interval and
ΔH_B(ε) for the requested ε; ``--eps`` is in the activation modules' normalised units (ε̂ = s·ε, monotone for
ε̂ ∈ (−1, 1)). ``--table`` writes the grid, ĥ and ĥ' (JSON or NPZ) that ``EAFOActivation.set_table`` takes.
See docs/eafo_general.md.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Dict

import numpy as np

from crrelu_lightning.entropy.derive import TAPERS, Derivation, derive_correction


def add_derive_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("general EAFO (--derive)")
    g.add_argument("--derive", action="store_true",
                   help="derive the EAFO correction of --base numerically (any registered activation)")
    g.add_argument("--taper-width", type=float, default=1.0, help="taper width L in units of the input std")
    g.add_argument("--taper", choices=TAPERS, default="auto", help="where the taper applies (default auto)")
    g.add_argument("--grid-size", type=int, default=1024, help="table intervals (default 1024)")
    g.add_argument("--bandwidth", type=float, default=None, help="kernel bandwidth for a histogram input")
    g.add_argument("--table", default=None, help="write the table (.json or .npz)")


def summary(d: Derivation, eps_values) -> Dict[str, Any]:
    lo, hi = d.eps_interval
    return {
        "base": d.base,
        "input": d.input,
        "branch": [float(v) for v in d.branch],
        "tapered_ends": [round(float(v), 12) for v in d.tapered_ends],
        "taper_width": d.taper_width,
        "branch_prob": d.branch_prob,
        "d_entropy_d_eps_raw": d.d_entropy_d_eps(0.0),
        "integration_by_parts_raw": d.integration_by_parts(),
        "eps_interval_raw": [lo, hi],
        "scale": d.scale,
        "eps_interval": [lo * d.scale, hi * d.scale],
        "records": d.records(eps_values, normalized=True),
    }


def _jsonable(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def write_table(d: Derivation, path: str) -> None:
    x, h, dh = d.table(normalized=True)
    lo, hi = d.eps_interval
    data = {"x": x, "h": h, "dh": dh, "eps_interval": np.array([lo * d.scale, hi * d.scale]),
            "scale": np.array(d.scale), "branch": np.array(d.branch)}
    p = Path(path)
    if p.suffix == ".npz":
        np.savez(p, **data)
    else:
        p.write_text(json.dumps({k: [_jsonable(float(t)) for t in np.ravel(v)] for k, v in data.items()}))


def render(s: Dict[str, Any]) -> str:
    b0, b1 = s["branch"]
    lines = [
        f"base {s['base']}, input {s['input']}",
        f"branch B = ({b0:.6g}, {b1:.6g}):  P(B) = {s['branch_prob']:.6f};  taper at {s['tapered_ends'] or 'none'}"
        f" (L = {s['taper_width']:g} std)",
        f"raw correction h = w·d/dx[p/f']:  dH_B/deps(0) = {s['d_entropy_d_eps_raw']:.6f} nats "
        f"(−∫w·c²/P = {s['integration_by_parts_raw']:.6f});  monotone for eps in "
        f"({s['eps_interval_raw'][0]:.4g}, {s['eps_interval_raw'][1]:.4g})",
        f"normalised ĥ = h/{s['scale']:.6g}: monotone for eps in ({s['eps_interval'][0]:.4g}, "
        f"{s['eps_interval'][1]:.4g}); eps > 0 lowers the branch entropy",
        "",
        f"{'eps':>9} {'dH_B [nats]':>12} {'dH_B/deps':>10} {'monotone':>9}",
    ]
    for r in s["records"]:
        dh = "n/a" if r["delta_entropy"] is None else f"{r['delta_entropy']:+.6f}"
        g = "n/a" if r["d_entropy_d_eps"] is None else f"{r['d_entropy_d_eps']:.6f}"
        lines.append(f"{r['eps']:>9.4g} {dh:>12} {g:>10} {str(r['monotone']):>9}")
    return "\n".join(lines)


def plot(d: Derivation, eps_values, path: str) -> None:
    """Base, correction ĥ, corrected activations and ΔH_B(ε) over the monotone interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from crrelu_lightning.entropy.derive import activation_function

    fn = activation_function(d.base)
    x, h, dh = d.table(normalized=True)
    lo_x = max(x[0] - 1.0, x[0] - 0.25 * (x[-1] - x[0])) if math.isfinite(d.branch[0]) else x[0]
    big = np.flatnonzero(np.abs(h) > 1e-3 * np.max(np.abs(h)))
    hi_x = min(x[-1], x[big[-1]] + 0.25 * (x[big[-1]] - x[big[0]])) if big.size else x[-1]
    xs = np.linspace(lo_x, hi_x, 801)
    hs = np.interp(xs, x, h, left=0.0, right=0.0)
    with torch.no_grad():
        base = fn(torch.as_tensor(xs)).numpy()
    lo, hi = (v * d.scale for v in d.eps_interval)
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    axes[0].plot(xs, base, "k")
    axes[0].set(title=f"base {d.base}", xlabel="x")
    axes[1].plot(xs, hs)
    for b in d.tapered_ends:
        axes[1].axvline(b, color="grey", ls=":", lw=1)
    axes[1].set(title="correction ĥ (normalised)", xlabel="x")
    axes[2].plot(xs, base, "k", lw=2, label="base")
    for e in eps_values:
        axes[2].plot(xs, base + e * hs, lw=1, label=f"ε={e:g}")
    axes[2].set(title="corrected activation f + ε·ĥ", xlabel="x")
    axes[2].legend(fontsize=7)
    grid = np.linspace(max(lo, -3.0) * 0.999, hi * 0.999, 200)
    axes[3].plot(grid, [d.delta_entropy(e / d.scale) for e in grid], "k")
    axes[3].axhline(0, color="grey", lw=0.5)
    axes[3].set(title="ΔH_B(ε) [nats]", xlabel="ε (normalised)")
    fig.suptitle(f"General EAFO: {d.base} on {d.input}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_derive(args: argparse.Namespace, parser: argparse.ArgumentParser, base: str) -> int:
    from crrelu_lightning.entropy.eafo import parse_input

    try:
        dist = parse_input(args.input, args.mu, args.sigma)
        d = derive_correction(base, dist, args.taper_width, args.taper, args.grid_size, args.bandwidth)
    except (ValueError, KeyError, FileNotFoundError) as err:
        parser.error(str(err))
    s = summary(d, args.eps)
    if args.format == "json":
        s["branch"] = [_jsonable(v) for v in s["branch"]]  # ±inf (an unbounded branch end) is null in JSON
        s["eps_interval_raw"] = [_jsonable(v) for v in s["eps_interval_raw"]]
        s["eps_interval"] = [_jsonable(v) for v in s["eps_interval"]]
        print(json.dumps(s, indent=2))
    else:
        print(render(s))
    if args.table:
        write_table(d, args.table)
        print(f"wrote {args.table}", file=sys.stderr)
    if args.plot:
        plot(d, args.eps, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0
