"""Accuracy of the monitor's default estimators against quadrature over every preimage (docs/entropy.md).

2·10⁶ samples of X ~ N(0, σ²), σ ∈ {1, 2}, through CRReLU (ε ∈ {+0.01, −0.01, −0.3, +0.5}), GELU, SiLU,
Mish, ReLU (mixed entropy) and tanh. References are computed here, independently of the estimators:
scipy quadrature of −∫ p_X(x) ln p_Y(f(x)) dx with p_Y(y) = Σ_preimages p_X(x')/|f′(x')| found by
root-finding on each monotone piece (analytic f′), and H(X|B) + E[ln f′(X) | X∈B] for the branch.
Tolerances (the issue's): whole line 0.02 nats, branch 0.01, bf16-rounded inputs 0.03.

Run with ``-s`` to see the table.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from scipy import integrate, optimize, special, stats
from torch import nn

from crrelu_lightning.activations import build_activation
from crrelu_lightning.callbacks import ActivationEntropyMonitor
from crrelu_lightning.entropy import CellHistogram, entropies_from_cells

N = 2_000_000
SIGMAS = (1.0, 2.0)
CASES = ("crrelu+0.01", "crrelu-0.01", "crrelu-0.3", "crrelu+0.5", "gelu", "silu", "mish", "relu", "tanh")
TOL_WHOLE, TOL_BRANCH, TOL_BF16 = 0.02, 0.01, 0.03


# ----------------------------------------------------------------------------- references (scipy)
def _sigmoid(x):
    return special.expit(x)


def _functions(case):
    """(f, f′, branch start b, minimum of the left part or None) in plain numpy/scipy."""
    if case.startswith("crrelu"):
        eps = float(case[len("crrelu"):])
        return (lambda x: max(x, 0.0) + eps * x * math.exp(-x * x / 2),
                lambda x: (1.0 if x > 0 else 0.0) + eps * (1 - x * x) * math.exp(-x * x / 2), 0.0, -1.0)
    if case == "gelu":
        f, fp = (lambda x: x * stats.norm.cdf(x)), (lambda x: stats.norm.cdf(x) + x * stats.norm.pdf(x))
    elif case == "silu":
        f, fp = (lambda x: x * _sigmoid(x)), (lambda x: _sigmoid(x) * (1 + x * (1 - _sigmoid(x))))
    elif case == "mish":
        def f(x):
            return x * math.tanh(np.logaddexp(0.0, x))

        def fp(x):
            t = math.tanh(np.logaddexp(0.0, x))
            return t + x * (1 - t * t) * _sigmoid(x)
    elif case == "tanh":
        return math.tanh, (lambda x: 1 / math.cosh(x) ** 2), -math.inf, None
    else:
        raise KeyError(case)
    xmin = optimize.minimize_scalar(f, bounds=(-3, 0), method="bounded", options={"xatol": 1e-12}).x
    return f, fp, float(xmin), float(xmin)


def _pieces(case, sigma):
    f, fp, b, xmin = _functions(case)
    L = 12 * sigma
    if case.startswith("crrelu"):
        return f, fp, b, [(-L, -1.0), (-1.0, 0.0), (0.0, L)]
    if xmin is None:
        return f, fp, b, [(-L, L)]
    return f, fp, b, [(-L, xmin), (xmin, L)]


@functools.lru_cache(maxsize=None)
def reference(case, sigma):
    """(whole-line entropy, branch entropy) of f(X), X ~ N(0, σ²), by quadrature."""
    if case == "relu":  # mixed: atom ½ at 0 plus half of a half-normal of scale σ
        half_normal = 0.5 * math.log(math.pi * math.e * sigma**2 / 2)
        return math.log(2) + 0.5 * half_normal, half_normal
    f, fp, b, pieces = _pieces(case, sigma)
    p = lambda x: stats.norm.pdf(x, scale=sigma)  # noqa: E731

    def p_y_at(x, own):
        """p_Y(f(x)) for x on piece ``own``: its own term plus every other piece's preimage of f(x)."""
        y = f(x)
        total = p(x) / abs(fp(x))
        for j, (a, c) in enumerate(pieces):
            fa, fc = f(a), f(c)
            if j != own and min(fa, fc) < y < max(fa, fc):
                x = optimize.brentq(lambda t: f(t) - y, a, c, xtol=1e-14, rtol=1e-15)
                total += p(x) / abs(fp(x))
        return total

    # Split each piece where another piece's image begins or ends: p_Y jumps there.
    images = sorted({f(a) for a, _ in pieces} | {f(c) for _, c in pieces})
    whole = 0.0
    for own, (a, c) in enumerate(pieces):
        fa, fc = f(a), f(c)
        cuts = [a, c]
        for v in images:
            if min(fa, fc) < v < max(fa, fc):
                cuts.append(optimize.brentq(lambda t: f(t) - v, a, c, xtol=1e-14, rtol=1e-15))
        cuts = sorted(cuts)
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            whole -= integrate.quad(lambda x: p(x) * math.log(p_y_at(x, own)), lo, hi, limit=200, epsabs=1e-9)[0]
    lo_b = max(b, -12 * sigma)
    mass = stats.norm.sf(lo_b, scale=sigma)
    h_x = -integrate.quad(lambda x: p(x) / mass * math.log(p(x) / mass), lo_b, 12 * sigma, limit=200)[0]
    e_log = integrate.quad(lambda x: p(x) / mass * math.log(fp(x)), lo_b, 12 * sigma, limit=200)[0]
    return whole, h_x + e_log


# ----------------------------------------------------------------------------- the project's side
def _module(case):
    if case.startswith("crrelu"):
        return build_activation("crrelu", eps_init=float(case[len("crrelu"):]), impl="reference")
    return build_activation(case)



def _f(module):
    def f(x):
        with torch.no_grad():
            return module.forward(torch.as_tensor(x, dtype=torch.float64)).numpy()

    return f


@pytest.fixture(scope="module")
def samples():
    gen = torch.Generator().manual_seed(20261202)
    return torch.randn(N, generator=gen)


def _estimate(case, x):
    from crrelu_lightning.callbacks.entropy_monitor import _branch_start

    module = _module(case)
    est = CellHistogram(1)
    est.update(x)
    return entropies_from_cells(est.state_tensor()[0].numpy(), _f(module), branch_start=_branch_start(module))


def test_accuracy_table_of_the_estimators(samples):
    lines = ["", "| output | σ | whole line: estimate | true | error | branch: estimate | true | error | bf16 whole error | bf16 branch error |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    failures = []
    for sigma in SIGMAS:
        x = samples * sigma
        xb = x.to(torch.bfloat16)
        for case in CASES:
            ref_w, ref_b = reference(case, sigma)
            est, est_b16 = _estimate(case, x), _estimate(case, xb)
            ew, eb = est["whole_line"] - ref_w, est["branch"] - ref_b
            bw, bb = est_b16["whole_line"] - ref_w, est_b16["branch"] - ref_b
            lines.append(f"| {case} | {sigma:g} | {est['whole_line']:+.4f} | {ref_w:+.4f} | {ew:+.4f} | "
                         f"{est['branch']:+.4f} | {ref_b:+.4f} | {eb:+.4f} | {bw:+.4f} | {bb:+.4f} |")
            if not (abs(ew) <= TOL_WHOLE and abs(eb) <= TOL_BRANCH and abs(bw) <= TOL_BF16 and abs(bb) <= TOL_BF16):
                failures.append(lines[-1])
    print("\n".join(lines))
    assert not failures, "outside tolerance:\n" + "\n".join(failures)


class ActivationBank(LightningModule):
    """Applies every case's activation to the same N(0, σ²) batch; a learnable scale and the CR ε train (lr 1),
    so a monitor that evaluated f after the optimizer step instead of at the forward pass would be off."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.sigma = sigma
        self.acts = nn.ModuleDict({c.replace("+", "p").replace("-", "m").replace(".", "_"): _module(c) for c in CASES})
        self.scale = nn.Parameter(torch.ones(()))

    def training_step(self, batch, batch_idx):
        x = batch * self.sigma
        return sum((act(x) * self.scale).square().mean() for act in self.acts.values())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1.0)


def test_accuracy_through_a_real_trainer_fit(samples, tmp_path):
    for sigma in SIGMAS:
        model = ActivationBank(sigma)
        monitor = ActivationEntropyMonitor(every_n_steps=1, max_samples_per_call=None)
        trainer = Trainer(accelerator="cpu", devices=1, max_steps=1, callbacks=[monitor], logger=False,
                          default_root_dir=str(tmp_path), enable_progress_bar=False, enable_model_summary=False,
                          enable_checkpointing=False, num_sanity_val_steps=0)
        trainer.fit(model, torch.utils.data.DataLoader([samples], batch_size=None))
        eps_after = model.acts["crrelup0_01"].eps.item()
        assert abs(eps_after - 0.01) > 0.05  # ε did move in the optimizer step
        metrics = trainer.callback_metrics
        for case in CASES:
            key = "acts." + case.replace("+", "p").replace("-", "m").replace(".", "_")
            ref_w, ref_b = reference(case, sigma)
            assert float(metrics[f"entropy/{key}"]) == pytest.approx(ref_w, abs=TOL_WHOLE), (case, sigma)
            assert float(metrics[f"entropy_branch/{key}"]) == pytest.approx(ref_b, abs=TOL_BRANCH), (case, sigma)
