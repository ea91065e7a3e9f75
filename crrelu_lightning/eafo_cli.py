"""``crrelu-lightning eafo``: static EAFO table (ΔH(ε), ∂H/∂ε, monotonicity) and plot.

Example::

    crrelu-lightning eafo --base relu --input normal --eps -0.5,-0.1,-0.01,0.01,0.1,0.5 --format json
    crrelu-lightning eafo --input histogram:layer3.json --bounds 0,1 --plot eafo.png

Entropies are in nats, on the invertible branch B of the base; the math is in docs/eafo.md.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from typing import List, Optional, Sequence

import numpy as np

from crrelu_lightning.entropy import eafo as E

_BASE_ALIASES = {"crrelu": "relu", "crgelu": "gelu", "crsilu": "silu", "swish": "silu", "crswish": "silu",
                 "crmish": "mish"}
# Options whose values may start with '-' (argparse would read "-0.5,0.1" as an option otherwise).
_VALUE_OPTIONS = ("--eps", "--bounds", "--mu")


def _floats(text: str, what: str) -> List[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if not vals or not all(math.isfinite(v) for v in vals):
        raise argparse.ArgumentTypeError(f"{what} must be finite numbers, got {text!r}")
    return vals


def _bounds(text: str) -> List[float]:
    vals = _floats(text, "--bounds")
    if len(vals) != 2 or not vals[1] > vals[0]:
        raise argparse.ArgumentTypeError(f"--bounds must be 'a,b' with a < b, got {text!r}")
    return vals


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="crrelu-lightning eafo",
        description="Static EAFO: entropy change of CR-corrected activations on the invertible branch.",
    )
    p.add_argument("--base", default="relu", help="base activation: relu, gelu, silu or mish (default relu)")
    p.add_argument("--input", default="normal", help="'normal' or 'histogram:PATH' (JSON/NPZ counts+edges)")
    p.add_argument("--mu", type=float, default=0.0, help="mean of the normal input")
    p.add_argument("--sigma", type=float, default=1.0, help="std of the normal input")
    p.add_argument("--cr-sigma", type=float, default=1.0, help="width σ of the correction x·exp(-x²/2σ²)")
    p.add_argument("--eps", type=lambda t: _floats(t, "--eps"), default=[-0.5, -0.1, -0.01, 0.01, 0.1, 0.5],
                   help="comma-separated ε values")
    p.add_argument("--bounds", type=_bounds, default=[0.0, 1.0], help="WAFBC / rescaling bounds 'a,b'")
    p.add_argument("--slope-floor", type=float, default=0.1,
                   help="smooth bases: the branch starts where g' reaches this value")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--plot", default=None, help="write a PNG of base, correction, corrected function and WAFBC")
    from crrelu_lightning.eafo_derive_cli import add_derive_arguments

    add_derive_arguments(p)  # --derive: the general EAFO correction of any activation (docs/eafo_general.md)
    return p


def _join_values(argv: Sequence[str]) -> List[str]:
    out: List[str] = []
    it = iter(argv)
    for arg in it:
        if arg in _VALUE_OPTIONS:
            nxt = next(it, None)
            out.append(arg if nxt is None else f"{arg}={nxt}")
        else:
            out.append(arg)
    return out


def _fmt(v: Optional[float], spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def render_table(records, dist, base: str, cr_sigma: float, bounded, bounds) -> str:
    r0 = records[0]
    lines = [
        f"base {base}, input {dist.describe()}, correction width σ = {cr_sigma:g}",
        f"branch B = x > {r0['branch_start']:.6g}:  P(B) = {r0['branch_prob']:.6f},  "
        f"H(X|B) = {r0['input_entropy']:.6f} nats",
        "ε < 0 decreases the branch entropy (docs/eafo.md §2).",
        "",
        f"{'eps':>9} {'dH [nats]':>12} {'dH/deps':>10} {'monotone':>9} {'min f_prime':>12} {'H(Y|B)':>10}",
    ]
    for r in records:
        lines.append(
            f"{r['eps']:>9.4g} {_fmt(r['delta_entropy'], '+.6f'):>12} {_fmt(r['d_entropy_d_eps'], '.6f'):>10} "
            f"{str(r['monotone']):>9} {r['min_slope']:>12.4g} {_fmt(r['entropy'], '.6f'):>10}"
        )
    a, b = bounds
    lines += ["", f"Bounded activations rescaled to ({a:g}, {b:g}); WAFBC's ln(b-a) = {math.log(b - a):.6f} is the maximum:"]
    for name, h in sorted(bounded.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {name:<12} {h:+.6f}")
    return "\n".join(lines)


def plot_eafo(path, base: str, dist, eps_values, cr_sigma: float, bounds, records) -> None:
    """PNG with (1) base, corrected functions and WAFBC, (2) correction k_σ and the EAFO direction
    d/dx[p/g'], (3) ΔH(ε) over the monotone interval with the requested ε marked."""
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    lo, hi = dist.support
    lo, hi = max(lo, -4.0), min(hi, 4.0)
    x = np.linspace(lo, hi, 801)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    ax.plot(x, E.base_forward(base, x), "k", lw=2, label=f"base {base}")
    for e in eps_values:
        ax.plot(x, E.cr_forward(base, x, e, cr_sigma), lw=1, label=f"CR, ε={e:g}")
    ax.plot(x, E.wafbc(x, dist, *bounds), "r--", lw=1.5, label=f"WAFBC ({bounds[0]:g}, {bounds[1]:g})")
    ax.set(title="activation", xlabel="x")
    ax.legend(fontsize=7)
    ax = axes[1]
    b0 = records[0]["branch_start"]
    xb = x[x > b0]
    k = E.correction(xb, cr_sigma)
    d = E.correction_direction(base, dist, xb, 0.0, cr_sigma)
    ax.plot(xb, k / np.nanmax(np.abs(k)), label="correction k_σ(x) (scaled)")
    ax.plot(xb, d / np.nanmax(np.abs(d)), "--", label="EAFO direction d/dx[p/g'] (scaled)")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set(title="entropy-decreasing direction on the branch", xlabel="x")
    ax.legend(fontsize=7)
    ax = axes[2]
    grid = np.linspace(-0.95, 2.2, 64)
    dh = [E.branch_record(base, dist, e, cr_sigma)["delta_entropy"] for e in grid]
    ax.plot(grid, [np.nan if v is None else v for v in dh], "k")
    ax.plot([r["eps"] for r in records], [np.nan if r["delta_entropy"] is None else r["delta_entropy"]
                                          for r in records], "o")
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set(title="ΔH(ε) on the branch [nats]", xlabel="ε")
    fig.suptitle(f"Static EAFO: base {base}, input {dist.describe()}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_join_values(sys.argv[1:] if argv is None else argv))
    base = _BASE_ALIASES.get(args.base.lower(), args.base.lower())
    if args.derive:
        from crrelu_lightning.eafo_derive_cli import run_derive

        return run_derive(args, parser, base)
    try:
        dist = E.parse_input(args.input, args.mu, args.sigma)
        records = E.eafo_table(base, dist, args.eps, args.cr_sigma, args.slope_floor)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    if args.format == "json":
        print(json.dumps(records, indent=2))
    else:
        bounded = E.bounded_activation_entropies(dist, *args.bounds)
        print(render_table(records, dist, base, args.cr_sigma, bounded, args.bounds))
    if args.plot:
        plot_eafo(args.plot, base, dist, args.eps, args.cr_sigma, args.bounds, records)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
