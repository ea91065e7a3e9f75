"""CR family kernels: reference equality, gradients, gradcheck (eager and compiled), dtypes, autocast, memory,
compile fallback, the Triton kernels (via the Triton interpreter on CPU) and the closed forms in cr_math."""
import math
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from crrelu_lightning.activations import CRGELU, CRMish, CRReLU, CRSiLU, cr_kernels, cr_math
from crrelu_lightning.activations.cr_kernels import CRFunction

CLASSES = {"relu": CRReLU, "gelu": CRGELU, "silu": CRSiLU, "mish": CRMish}
EPS_VALUES = (0.01, -0.4, 1.5)


def _x(n=257, dtype=torch.float64, scale=2.5):
    x = torch.randn(n, dtype=dtype) * scale
    x[:3] = torch.tensor([0.0, 1.0, -1.0], dtype=dtype)  # kinks and the correction's extrema
    return x


def _reference_grads(base, x, eps, sigma, dy):
    xr = x.detach().clone().requires_grad_(True)
    er = eps.detach().clone().requires_grad_(True)
    y = cr_math.cr_reference(base, xr, er, sigma)
    y.backward(dy)
    return y.detach(), xr.grad, er.grad


@pytest.fixture
def fresh_caches():
    cr_kernels.reset_caches()
    yield
    cr_kernels.reset_caches()


# --------------------------------------------------------------------------- float64: eager, all variants
@pytest.mark.parametrize("base", sorted(CLASSES))
@pytest.mark.parametrize("sigma", [1.0, 0.6])
@pytest.mark.parametrize("eps_value", EPS_VALUES)
def test_eager_float64_matches_reference(base, sigma, eps_value):
    m = CLASSES[base](eps_init=eps_value, sigma=sigma, impl="eager").double()
    _assert_float64_matches_reference(m, base, sigma)
    assert m.eps.grad.shape == m.eps.shape


def _assert_float64_matches_reference(m, base, sigma):
    """Forward, dx and dε of module ``m`` equal autograd of the reference expression (float64)."""
    x = _x().requires_grad_(True)
    dy = torch.randn_like(x)
    y = m(x)
    y.backward(dy)
    y_ref, dx_ref, deps_ref = _reference_grads(base, x, m.eps, sigma, dy)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, dx_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(m.eps.grad, deps_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("base", sorted(CLASSES))
@pytest.mark.parametrize("sigma", [1.0, 0.6])
def test_eager_gradcheck(base, sigma):
    x = _x(24).requires_grad_(True)
    x.data[0] = 0.3  # gradcheck's finite differences must not straddle ReLU's kink
    eps = torch.tensor(-0.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, e: CRFunction.apply(a, e, base, sigma, False), (x, eps))


# --------------------------------------------------------------------------- float64: compiled (fewer cases)
# Each (base, σ, dtype) costs one Inductor compilation (seconds on 2 cores, much more on a cold cache under
# load); CR-ReLU is compiled in the default suite, the other bases under the "slow" marker.
_SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "base,sigma",
    [("relu", 1.0), ("relu", 0.6)] + [pytest.param(b, 1.0, marks=_SLOW) for b in ("gelu", "silu", "mish")],
)
def test_compiled_float64_reference_and_gradcheck(base, sigma):
    eps_value = -0.4
    m = CLASSES[base](eps_init=eps_value, sigma=sigma, impl="compiled").double()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a compile fallback would warn: fail instead
        _assert_float64_matches_reference(m, base, sigma)
    xs = _x(24).requires_grad_(True)
    xs.data[0] = 0.3
    es = torch.tensor(1.2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, e: CRFunction.apply(a, e, base, sigma, True), (xs, es))


# --------------------------------------------------------------------------- float32 / bfloat16
@pytest.mark.parametrize(
    "base,impl",
    [(b, "eager") for b in sorted(CLASSES)]
    + [("relu", "compiled")]
    + [pytest.param(b, "compiled", marks=_SLOW) for b in ("gelu", "silu", "mish")],
)
def test_float32_matches_reference(base, impl):
    m = CLASSES[base](eps_init=-0.4, impl=impl)
    x = (torch.randn(4, 333) * 3).requires_grad_(True)  # non-multiple of the vector width: tail loop
    dy = torch.randn_like(x)
    y = m(x)
    y.backward(dy)
    assert y.dtype == torch.float32 and y.shape == x.shape
    y_ref, dx_ref, deps_ref = _reference_grads(base, x.double(), m.eps.double(), 1.0, dy.double())
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad.double(), dx_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m.eps.grad.double(), deps_ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("impl", ["eager", "compiled"])
def test_bfloat16_input(impl):
    m = CRReLU(eps_init=0.5, impl=impl)
    x = (torch.randn(2048) * 2).to(torch.bfloat16).requires_grad_(True)
    dy = torch.randn(2048).to(torch.bfloat16)
    y = m(x)
    y.backward(dy)
    assert y.dtype == torch.bfloat16 and x.grad.dtype == torch.bfloat16
    assert m.eps.dtype == torch.float32 and m.eps.grad.dtype == torch.float32
    y_ref, dx_ref, deps_ref = _reference_grads("relu", x.double(), m.eps.double(), 1.0, dy.double())
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(x.grad.double(), dx_ref, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(m.eps.grad.double(), deps_ref, rtol=1e-3, atol=1e-2)


def test_float16_input_eager():
    m = CRGELU(eps_init=-0.2, impl="eager")
    x = torch.randn(512).half().requires_grad_(True)
    y = m(x)
    y.sum().backward()
    assert y.dtype == torch.float16 and x.grad.dtype == torch.float16 and m.eps.grad.dtype == torch.float32


@pytest.mark.parametrize("impl", ["eager", "compiled", "reference"])
def test_autocast_bfloat16(impl):
    lin = torch.nn.Linear(16, 32)
    act = CRReLU(eps_init=-0.3, impl=impl)
    x = torch.randn(8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = lin(x)
        assert h.dtype == torch.bfloat16
        y = act(h)
        y_fp32_in = act(x)  # a float32 input stays float32
    assert y.dtype == torch.bfloat16
    assert y_fp32_in.dtype == torch.float32
    (y.float().sum() + y_fp32_in.sum()).backward()
    assert act.eps.dtype == torch.float32 and act.eps.grad.dtype == torch.float32
    assert torch.isfinite(act.eps.grad).all() and lin.weight.grad is not None
    ref = cr_math.cr_reference("relu", h.detach().double(), act.eps.detach().double())
    torch.testing.assert_close(y.detach().double(), ref, rtol=1e-2, atol=1e-2)


def test_noncontiguous_input_and_grad():
    m = CRSiLU(eps_init=0.7, impl="eager")
    base = torch.randn(6, 10, dtype=torch.float64, requires_grad=True)
    x = base.t()  # non-contiguous view
    y = m(x)
    assert y.shape == x.shape
    dy = torch.randn(6, 10, dtype=torch.float64).t()  # non-contiguous grad too
    y.backward(dy)
    _, dx_ref, _ = _reference_grads("silu", x, m.eps, 1.0, dy)
    torch.testing.assert_close(base.grad.t(), dx_ref)


# --------------------------------------------------------------------------- ε as a parameter
def test_eps_is_single_element_parameter_updated_by_sgd():
    m = CRReLU(impl="eager")
    assert isinstance(m.eps, torch.nn.Parameter) and m.eps.numel() == 1 and m.eps.requires_grad
    assert len(list(m.parameters())) == 1
    assert m.eps.item() == pytest.approx(0.01)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    before = m.eps.item()
    x = torch.randn(1000)
    m(x).sum().backward()
    opt.step()
    assert m.eps.item() != before
    assert m.eps.item() == pytest.approx(before - 0.1 * cr_math.correction(x).sum().item(), rel=1e-4)
    assert CRReLU(learnable=False).eps.requires_grad is False


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_eps_init_raises_with_value(bad):
    with pytest.raises(ValueError, match=repr(bad).replace("(", r"\(").replace(")", r"\)")):
        CRReLU(eps_init=bad)


def test_bad_sigma_and_impl():
    with pytest.raises(ValueError, match="-1"):
        CRGELU(sigma=-1.0)
    with pytest.raises(ValueError, match="triton"):
        CRReLU(impl="triton")


# --------------------------------------------------------------------------- memory
def _saved(module, x):
    saved = []

    def pack(t):
        saved.append((t.numel(), t.dtype, t.untyped_storage().data_ptr()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return saved


@pytest.mark.parametrize("impl", ["eager", "compiled"])
def test_backward_keeps_only_the_input(impl):
    x = torch.randn(4096, requires_grad=True)
    fused = _saved(CRReLU(impl=impl), x)
    big = [s for s in fused if s[0] == x.numel()]
    assert len(big) == 1 and big[0][2] == x.untyped_storage().data_ptr()  # x itself, no copy
    assert all(s[0] <= 1 for s in fused if s[0] != x.numel())  # plus the one-element ε
    reference = _saved(CRReLU(impl="reference"), x)
    assert len([s for s in reference if s[0] == x.numel()]) >= 3  # the paper's expression keeps ~4


# --------------------------------------------------------------------------- implementation selection / fallback
def test_auto_respects_disable_env(monkeypatch):
    monkeypatch.setenv("CRRELU_DISABLE_COMPILE", "1")
    assert cr_kernels.resolve_impl("auto", torch.device("cpu")) == "eager"
    monkeypatch.setenv("CRRELU_DISABLE_COMPILE", "0")
    assert cr_kernels.resolve_impl("auto", torch.device("cpu")) in ("compiled", "eager")
    with pytest.raises(ValueError):
        cr_kernels.resolve_impl("fast", torch.device("cpu"))


def test_compile_failure_falls_back_to_eager_with_one_warning(monkeypatch, fresh_caches):
    def broken_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError("simulated Inductor failure")

        return run

    monkeypatch.setattr(cr_kernels, "_torch_compile", broken_compile)
    m = CRMish(eps_init=-0.2, impl="compiled").double()
    x = _x(64).requires_grad_(True)
    with pytest.warns(RuntimeWarning, match="simulated Inductor failure"):
        y = m(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # only one warning, then silently eager
        y.sum().backward()
        m(x)
    y_ref, dx_ref, _ = _reference_grads("mish", x, m.eps, 1.0, torch.ones_like(x))
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(x.grad, dx_ref)
    monkeypatch.setenv("CRRELU_DISABLE_COMPILE", "0")
    assert cr_kernels.resolve_impl("auto", x.device) == "eager"  # auto stops trying


def test_torch_compile_raising_at_wrap_time_falls_back(monkeypatch, fresh_caches):
    def broken_compile(fn, **kwargs):
        raise RuntimeError("no compiler")

    monkeypatch.setattr(cr_kernels, "_torch_compile", broken_compile)
    with pytest.warns(RuntimeWarning, match="no compiler"):
        y = CRReLU(impl="compiled")(torch.randn(10))
    assert y.shape == (10,)


# --------------------------------------------------------------------------- fast float32 exp
@pytest.mark.parametrize("c", [-0.5, -2.0, -0.125])
def test_fast_gauss_accuracy(c):
    x2 = torch.linspace(0.0, 400.0, 40001) ** 1  # x² up to 400 (|x| ≤ 20 at σ = 1)
    got = cr_kernels.gauss_f32(x2, c).double()
    ref = torch.exp(c * x2.double())
    core = c * x2.double() >= -12.5
    assert ((got - ref) / ref)[core].abs().max().item() < 1e-5
    assert (got - ref).abs().max().item() < 5e-6
    assert (got > 1e-38).all()  # never a denormal or zero (slow on x86), even far out


# --------------------------------------------------------------------------- Triton kernels (interpreter, CPU)
def test_triton_kernels_under_interpreter():
    pytest.importorskip("triton")
    code = textwrap.dedent(
        """
        import torch
        from crrelu_lightning.activations import cr_triton as T, cr_math
        torch.manual_seed(0)
        for base in ("relu", "gelu", "silu", "mish"):
            for sigma in (1.0, 0.7):
                x = torch.randn(5000) * 3; dy = torch.randn(5000); eps = torch.tensor(-0.3)
                y = T.cr_forward(x, eps, base, sigma)
                dx, de = T.cr_backward(x, dy, eps, base, sigma)
                xr = x.double().requires_grad_(); er = eps.double().requires_grad_()
                yr = cr_math.cr_reference(base, xr, er, sigma); yr.backward(dy.double())
                torch.testing.assert_close(y.double(), yr.detach(), rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(dx.double(), xr.grad, rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(de.double(), er.grad, rtol=1e-5, atol=1e-4)
        print("ok")
        """
    )
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    if res.returncode != 0 and "interpret" in res.stderr.lower() and "not supported" in res.stderr.lower():
        pytest.skip("this Triton build has no interpreter")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "ok" in res.stdout


# --------------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("base", cr_math.CR_BASES)
def test_base_derivative_closed_form(base):
    x = torch.linspace(-6, 6, 1201, dtype=torch.float64)
    x = x[x.abs() > 1e-9].requires_grad_(True)  # ReLU's kink
    cr_math.base_forward(base, x).sum().backward()
    torch.testing.assert_close(cr_math.base_derivative(base, x.detach()), x.grad, rtol=1e-10, atol=1e-12)
    dy = torch.randn_like(x)
    torch.testing.assert_close(cr_math.base_backward(base, x.detach(), dy), dy * x.grad)


def test_correction_derivative_closed_form():
    for sigma in (1.0, 0.5, 2.0):
        x = torch.linspace(-6, 6, 301, dtype=torch.float64, requires_grad=True)
        cr_math.correction(x, sigma).sum().backward()
        torch.testing.assert_close(cr_math.correction_derivative(x.detach(), sigma), x.grad)
