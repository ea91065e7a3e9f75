"""Static EAFO (crrelu_lightning.entropy.eafo and the ``eafo`` CLI) against independent references:
scipy.integrate.quad, closed forms (docs/eafo.md §2–§3), finite differences and autograd."""
import json
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from crrelu_lightning.eafo_cli import main as eafo_main
from crrelu_lightning.entropy import eafo as E

# The ΔH_B(ε) column of docs/eafo.md §2 (7 decimals): the docs must agree with the code and with scipy.
DOC_DELTA_H = {0.01: 0.0035164, -0.01: -0.0035549, 0.1: 0.0335208, -0.1: -0.0373835, 0.5: 0.1375436,
               -0.5: -0.2436686}


def _quad_delta_h_relu(eps, mu=0.0, sigma=1.0, cr_sigma=1.0):
    """ΔH on x > 0 for f = ReLU + ε·k_σ, X ~ N(μ, σ²), by scipy (independent of the module)."""
    pdf = stats.norm(mu, sigma).pdf
    mass = stats.norm(mu, sigma).sf(0.0)

    def kd(x):
        return (1 - x * x / cr_sigma**2) * np.exp(-x * x / (2 * cr_sigma**2))

    val = integrate.quad(lambda x: pdf(x) * np.log1p(eps * kd(x)), 0, np.inf, epsabs=1e-14, epsrel=1e-12)[0]
    return val / mass


def _run_cli(capsys, *argv):
    assert eafo_main(list(argv)) == 0
    return capsys.readouterr().out


def test_cli_json_reproduces_the_docs_table(capsys):
    out = _run_cli(capsys, "--base", "relu", "--input", "normal", "--eps", "-0.5,-0.1,-0.01,0.01,0.1,0.5",
                   "--format", "json")
    records = json.loads(out)
    assert [r["eps"] for r in records] == [-0.5, -0.1, -0.01, 0.01, 0.1, 0.5]
    for r in records:
        assert set(r) >= {"eps", "delta_entropy", "d_entropy_d_eps", "monotone"}
        assert r["monotone"] is True
        exact = _quad_delta_h_relu(r["eps"])
        assert r["delta_entropy"] == pytest.approx(exact, abs=1e-10)
        assert abs(r["delta_entropy"] - DOC_DELTA_H[r["eps"]]) <= 5e-8  # rounding of the 7-decimal print
        # sign fact: ε < 0 lowers the branch entropy
        assert (r["delta_entropy"] < 0) == (r["eps"] < 0)


def test_derivative_at_zero_is_one_over_two_sqrt2():
    rec = E.branch_record("relu", E.NormalInput(), 0.0)
    assert rec["d_entropy_d_eps"] == pytest.approx(1 / (2 * math.sqrt(2)), abs=1e-12)
    assert rec["delta_entropy"] == 0.0
    assert rec["input_entropy"] == pytest.approx(0.5 * math.log(math.pi * math.e / 2), abs=1e-12)  # half-normal


@pytest.mark.parametrize("base", ["relu", "gelu", "silu", "mish"])
@pytest.mark.parametrize("eps,mu,sigma,cr_sigma", [(-0.12, 0.0, 1.0, 1.0), (0.2, 0.4, 1.7, 0.6), (0.8, -0.2, 0.5, 2.0)])
def test_d_entropy_d_eps_matches_finite_differences(base, eps, mu, sigma, cr_sigma):
    dist = E.NormalInput(mu, sigma)
    h = 1e-5
    up = E.branch_record(base, dist, eps + h, cr_sigma)["delta_entropy"]
    dn = E.branch_record(base, dist, eps - h, cr_sigma)["delta_entropy"]
    g = E.branch_record(base, dist, eps, cr_sigma)["d_entropy_d_eps"]
    assert g == pytest.approx((up - dn) / (2 * h), rel=1e-6, abs=1e-8)


def test_smooth_base_delta_h_matches_scipy():
    base, eps, dist, cr_sigma = "gelu", -0.2, E.NormalInput(0.3, 1.5), 0.7
    rec = E.branch_record(base, dist, eps, cr_sigma)
    b0 = rec["branch_start"]
    assert E.base_slope(base, np.array([b0]))[0] == pytest.approx(0.1, abs=1e-12)
    x_t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    gprime = lambda x: float(torch.autograd.functional.jacobian(torch.nn.functional.gelu, x_t(x)))  # noqa: E731
    kd = lambda x: (1 - x * x / cr_sigma**2) * math.exp(-x * x / (2 * cr_sigma**2))  # noqa: E731
    pdf = stats.norm(0.3, 1.5).pdf
    num = integrate.quad(lambda x: pdf(x) * math.log1p(eps * kd(x) / gprime(x)), b0, 25, limit=200)[0]
    assert rec["delta_entropy"] == pytest.approx(num / stats.norm(0.3, 1.5).sf(b0), abs=1e-9)


@pytest.mark.parametrize("base", ["relu", "gelu", "silu", "mish"])
@pytest.mark.parametrize("cr_sigma", [0.5, 1.0, 2.0])
def test_monotone_eps_interval_per_base(base, cr_sigma):
    lo, hi = E.monotone_eps_interval(base, cr_sigma)
    if base == "relu":  # closed form, independent of σ (docs/eafo.md §2)
        assert (lo, hi) == (-1.0, math.exp(1.5) / 2)
    for e, ok in ((lo + 1e-3, True), (hi - 1e-3, True), (lo - 1e-3, False), (hi + 1e-3, False)):
        assert E.branch_record(base, E.NormalInput(), e, cr_sigma)["monotone"] is ok


def test_relu_monotone_interval_from_the_range_of_k_prime():
    """k_σ'(x) = (1 − x²/σ²)e^{−x²/2σ²} spans [−2e^{−3/2}, 1] on x > 0 for every σ, so 1 + ε k' > 0 iff
    −1 < ε < e^{3/2}/2; checked on a grid, independently of the module's closed form."""
    lo, hi = E.monotone_eps_interval("relu")
    assert hi == pytest.approx(2.2408, abs=1e-4)
    for s in (0.3, 1.0, 2.5):
        x = np.linspace(1e-6, 12 * s, 200001)
        kd = (1 - x * x / s**2) * np.exp(-x * x / (2 * s**2))
        assert kd.max() == pytest.approx(1.0, abs=1e-9) and kd.min() == pytest.approx(-2 * math.exp(-1.5), rel=1e-6)
        for eps in (lo + 1e-3, 0.0, 0.5, hi - 1e-3):
            assert (1 + eps * kd).min() > 0
        for eps in (lo - 1e-2, hi + 1e-2):
            assert (1 + eps * kd).min() < 0
        assert E.monotone_eps_interval("relu", s) == (lo, hi)


def test_monotone_interval_edges():
    lo, hi = -1.0, math.exp(1.5) / 2
    assert not E.branch_record("relu", E.NormalInput(), lo)["monotone"]
    assert E.branch_record("relu", E.NormalInput(), lo + 1e-3)["monotone"]
    assert E.branch_record("relu", E.NormalInput(), hi - 1e-3)["monotone"]
    bad = E.branch_record("relu", E.NormalInput(), hi + 1e-3)
    assert not bad["monotone"] and bad["delta_entropy"] is None and bad["d_entropy_d_eps"] is None


def test_correction_direction_relu_normal_correlates_with_closed_form():
    x = np.linspace(1e-3, 6, 2000)
    d = E.correction_direction("relu", E.NormalInput(), x)
    ref = -x * np.exp(-x * x / 2)
    assert np.corrcoef(d, ref)[0, 1] > 0.999
    np.testing.assert_allclose(d, ref / math.sqrt(2 * math.pi), atol=1e-8)


def test_correction_direction_gelu_matches_autograd():
    dist, eps, cr_sigma = E.NormalInput(0.2, 1.3), 0.3, 0.8
    x = np.linspace(0.0, 4, 400)
    xt = torch.tensor(x, requires_grad=True)
    p = torch.exp(-0.5 * ((xt - 0.2) / 1.3) ** 2) / (1.3 * math.sqrt(2 * math.pi))
    # f'(x) by autograd of the plain expression, then d/dx[p/f'] by a second autograd pass
    f = torch.nn.functional.gelu(xt) + eps * xt * torch.exp(-xt**2 / (2 * cr_sigma**2))
    (fp,) = torch.autograd.grad(f.sum(), xt, create_graph=True)
    (ref,) = torch.autograd.grad((p / fp).sum(), xt)
    d = E.correction_direction("gelu", dist, x, eps, cr_sigma)
    np.testing.assert_allclose(d, ref.numpy(), atol=1e-7)


def _binned_normal(width=0.01, lim=8.0):
    edges = np.arange(-lim, lim + width / 2, width)
    cdf = stats.norm.cdf(edges)
    return np.diff(cdf) * 1e9, edges


def test_histogram_input_approximates_normal(tmp_path):
    counts, edges = _binned_normal()
    hist = E.HistogramInput.from_arrays(counts, edges)
    for eps in (-0.5, 0.1):
        got = E.branch_record("relu", hist, eps)
        ref = E.branch_record("relu", E.NormalInput(), eps)
        assert got["delta_entropy"] == pytest.approx(ref["delta_entropy"], abs=2e-5)
        assert got["d_entropy_d_eps"] == pytest.approx(ref["d_entropy_d_eps"], abs=2e-5)
        # H(X|B) of a fine histogram = half-normal entropy + O(Δ²)
        assert got["input_entropy"] == pytest.approx(ref["input_entropy"], abs=1e-4)
    # file formats: JSON and NPZ give the same records through the CLI spec
    jpath, npath = tmp_path / "h.json", tmp_path / "h.npz"
    jpath.write_text(json.dumps({"edges": edges.tolist(), "counts": counts.tolist(), "layer": "x"}))
    np.savez(npath, edges=edges, counts=counts)
    a = E.branch_record("relu", E.parse_input(f"histogram:{jpath}"), 0.2)
    b = E.branch_record("relu", E.parse_input(f"histogram:{npath}"), 0.2)
    assert a == b
    # WAFBC of a histogram input is its scaled CDF: edges map to cumulative fractions
    w = E.wafbc(edges[[0, 800, -1]], hist, -1.0, 3.0)
    np.testing.assert_allclose(w, [-1.0, -1 + 4 * counts[:800].sum() / counts.sum(), 3.0])


def test_histogram_bad_input(tmp_path):
    with pytest.raises(ValueError, match="len\\(edges\\) == len\\(counts\\) \\+ 1"):
        E.HistogramInput.from_arrays([1, 2], [0, 1])
    with pytest.raises(ValueError, match="strictly increasing"):
        E.HistogramInput.from_arrays([1, 2], [0, 1, 1])
    with pytest.raises(FileNotFoundError, match="nope.json"):
        E.parse_input(f"histogram:{tmp_path / 'nope.json'}")
    p = tmp_path / "bad.json"
    p.write_text(json.dumps({"counts": [1]}))
    with pytest.raises(ValueError, match="'counts' and 'edges'"):
        E.HistogramInput.load(p)
    with pytest.raises(ValueError, match="no mass on the branch"):
        E.branch_record("relu", E.HistogramInput.from_arrays([1, 1], [-2, -1, 0]), 0.1)


def test_wafbc_entropy_is_log_width_and_beats_bounded_activations():
    a, b = -0.5, 2.5
    assert E.wafbc_entropy(a, b) == math.log(3.0)
    got = E.bounded_activation_entropies(E.NormalInput(), a, b)
    assert {"sigmoid", "tanh", "wafbc"} <= set(got)
    assert got["wafbc"] == pytest.approx(math.log(b - a), abs=1e-9)
    # reference values of docs/eafo.md §3, rescaled from (0,1) resp. (-1,1) to (a, b)
    assert got["sigmoid"] == pytest.approx(-0.193180 + math.log(3.0), abs=1e-6)
    assert got["tanh"] == pytest.approx(0.669804 + math.log(3.0 / 2.0), abs=1e-6)
    assert all(h < got["wafbc"] - 1e-3 for name, h in got.items() if name != "wafbc")
    # unbounded activations are not in the comparison
    assert not {"relu", "gelu", "crrelu", "elu"} & set(got)
    # a clipped (hardtanh-like) activation has atoms at its bounds: differential entropy −∞
    assert E.output_entropy(torch.nn.Hardtanh(), E.NormalInput(), (a, b)) == -math.inf


def test_wafbc_module_output_is_uniform():
    x = np.linspace(-3, 3, 7)
    np.testing.assert_allclose(E.wafbc(x, E.NormalInput(), 0, 1), stats.norm.cdf(x), atol=1e-15)


def test_cli_table_and_plot(capsys, tmp_path):
    png = tmp_path / "eafo.png"
    out = _run_cli(capsys, "--eps", "-0.1,3.0", "--bounds", "-1,1", "--plot", str(png))
    assert "-0.037384" in out and "n/a" in out and "wafbc" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["--bounds", "1,0"], "a < b"),
        (["--eps", "0.1,abc"], "comma-separated numbers"),
        (["--eps", "nan"], "finite"),
        (["--input", "uniform"], "'normal' or 'histogram:PATH'"),
        (["--sigma", "0"], "sigma must be finite and > 0"),
        (["--base", "tanh"], "unknown CR base 'tanh'"),
    ],
)
def test_cli_bad_input(capsys, argv, msg):
    with pytest.raises(SystemExit) as exc:
        eafo_main(argv)
    assert exc.value.code == 2
    assert msg in capsys.readouterr().err


def test_histogram_from_entropy_estimator_roundtrip(tmp_path):
    """Pre-activations recorded by the entropy package's HistogramEstimator feed the static tool."""
    from crrelu_lightning.entropy import HistogramEstimator

    est = HistogramEstimator(-8.0, 8.0, bin_width=0.01)
    x = torch.randn(2_000_000, generator=torch.Generator().manual_seed(4))
    est.update(torch.cat([x, torch.zeros(7)]))
    hist = E.HistogramInput.from_estimator(est)
    assert sum(hist.counts) == x.numel() + 7  # the zero atom went back into the bin at 0
    path = tmp_path / "layer.json"
    hist.save(path)
    rec = E.branch_record("relu", E.HistogramInput.load(path), -0.1)
    ref = E.branch_record("relu", E.NormalInput(), -0.1)
    assert rec["delta_entropy"] == pytest.approx(ref["delta_entropy"], abs=2e-3)  # sampling noise, 1e6 on B
    assert rec["d_entropy_d_eps"] == pytest.approx(ref["d_entropy_d_eps"], rel=1e-2)
