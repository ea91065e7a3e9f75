"""The native float32 CPU kernel of the EAFO closed form (``eafo_native`` / ``eafo_cpu.c``).

References are computed here in float64 from the closed form's parameters and torch's own erf/sigmoid/
softplus (``cr_math.base_forward``/``base_derivative``): independent of the kernel's exp, erfc polynomial and
float32 Horner loops.
"""
import math
import warnings

import pytest
import torch

from crrelu_lightning.activations import build_activation, cr_math, eafo_fit, eafo_native

BASES = ["relu", "gelu", "silu", "mish"]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CRRELU_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CRRELU_DISABLE_NATIVE", raising=False)
    eafo_native.reset()
    yield
    eafo_native.reset()


def _kernel(base):
    m = build_activation(f"eafo_{base}", impl="compiled")
    assert m.uses_closed_form
    k = eafo_native.kernel(m.base, *m._fit_form)
    assert k is not None, eafo_native._failed
    return m, k


def _reference(base, form, x, dy, eps):
    """float64 y, dx, dε of f + ε·ĥ with ĥ the closed form."""
    power, degree, _, params = form
    xd, dyd = x.double(), dy.double()
    h, dh = eafo_fit.correction_and_slope(xd, torch.tensor(params, dtype=torch.float64), power, degree)
    y = cr_math.base_forward(base, xd) + eps * h
    dx = dyd * (cr_math.base_derivative(base, xd) + eps * dh)
    return y, dx, float((dyd * h).sum()), h


@pytest.mark.parametrize("base", BASES)
def test_native_kernel_matches_a_float64_reference(base):
    m, k = _kernel(base)
    g = torch.Generator().manual_seed(1)
    a = cr_math.BRANCH_START[base]
    special = torch.tensor([0.0, a, a + 1e-4, a - 1e-4, 6.99, 7.01, -8.0, 8.0, -30.0, 30.0, 1e-30, -1e-30])
    x = torch.cat([torch.randn(200_003, generator=g) * 2.5, special])
    dy = torch.randn(x.numel(), generator=g)
    eps = 0.7
    y = k.forward(x, eps)
    dx, deps = k.backward(x, dy, eps)
    ry, rdx, rdeps, h = _reference(base, m._fit_form, x, dy, eps)
    hmax = float(h.abs().max())
    # Base: float32 rounding of f (relative); correction: float32 Horner with float32 coefficients (of max|ĥ|).
    assert ((y.double() - ry).abs() - 2e-6 * ry.abs()).max() <= 2e-5 * hmax + 1e-7
    assert ((dx.double() - rdx).abs() - 1e-5 * rdx.abs()).max() <= 2e-4 * dy.abs().max()
    assert math.isclose(deps, rdeps, rel_tol=1e-5, abs_tol=1e-3)


def test_native_kernel_gives_the_same_bits_for_any_thread_count():
    _, k = _kernel("gelu")
    g = torch.Generator().manual_seed(2)
    x, dy = torch.randn(100_001, generator=g), torch.randn(100_001, generator=g)  # 13 chunks
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y1, (dx1, d1) = k.forward(x, 0.5), k.backward(x, dy, 0.5)
        torch.set_num_threads(2)
        y2, (dx2, d2) = k.forward(x, 0.5), k.backward(x, dy, 0.5)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(y1, y2) and torch.equal(dx1, dx2) and d1 == d2


@pytest.mark.parametrize("base", BASES)
def test_native_kernel_edge_inputs(base):
    _, k = _kernel(base)
    empty = torch.empty(0)
    assert k.forward(empty, 0.5).numel() == 0 and k.backward(empty, empty, 0.5)[1] == 0.0
    x = torch.randn(40, 3)[:, 1]  # not contiguous
    assert not x.is_contiguous()
    torch.testing.assert_close(k.forward(x, 0.5), k.forward(x.contiguous(), 0.5), rtol=0, atol=0)
    nan = k.forward(torch.tensor([float("nan"), 1.0]), 0.5)
    assert math.isnan(nan[0]) and math.isfinite(nan[1])  # NaN propagates, as in torch's bases
    # Far outside the correction's support: the base alone, no overflow or denormal garbage from the kernel's exp.
    big = torch.tensor([-1e30, 1e30, -100.0, 100.0, -40.0, 40.0])
    torch.testing.assert_close(k.forward(big, 0.5), cr_math.base_forward(base, big), rtol=1e-6, atol=1e-30)
    dx, _ = k.backward(big, torch.ones(6), 0.5)
    torch.testing.assert_close(dx, cr_math.base_derivative(base, big), rtol=1e-6, atol=1e-30)


def test_module_dispatches_float32_cpu_calls_to_the_native_kernel(tmp_path):
    m = build_activation("eafo_gelu", impl="compiled")
    x = torch.randn(4, 7, 33, requires_grad=True)
    y = m(x)
    assert list((tmp_path / "cache" / "kernels").glob("eafo_gelu_*.so")), "no kernel was built"
    ry = m.reference(x)
    torch.testing.assert_close(y, ry, rtol=1e-5, atol=1e-5)
    dy = torch.randn_like(y)
    gx, ge = torch.autograd.grad(y, (x, m.eps), dy)
    rx, re = torch.autograd.grad(ry, (x, m.eps), dy)
    torch.testing.assert_close(gx, rx, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ge, re, rtol=1e-4, atol=1e-4)
    assert gx.shape == x.shape and ge.shape == m.eps.shape


def test_a_built_kernel_is_reused_and_another_form_gets_its_own(tmp_path):
    m = build_activation("eafo_gelu", impl="compiled")
    power, degree, shared, params = m._fit_form
    p1 = eafo_native._build("gelu", power, degree, shared, params)
    mtime = p1.stat().st_mtime_ns
    assert eafo_native._build("gelu", power, degree, shared, params) == p1 and p1.stat().st_mtime_ns == mtime
    other = (params[0], params[1] * 0.99) + tuple(params[2:])
    assert eafo_native._build("gelu", power, degree, shared, other) != p1
    assert not list(p1.parent.glob("*.so.tmp*")) and len(list(p1.parent.glob("*.so"))) == 2


def test_without_a_compiler_the_module_warns_once_and_keeps_the_compiled_bodies(monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    m = build_activation("eafo_gelu", impl="compiled")
    x = torch.randn(300)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = m(x)
        m(x)
    msgs = [str(w.message) for w in caught if "native CPU kernel unavailable" in str(w.message)]
    assert len(msgs) == 1 and "/nonexistent/cc" in msgs[0]
    torch.testing.assert_close(y, m.reference(x), rtol=1e-5, atol=1e-5)


def test_bad_forms_are_refused_with_the_value():
    with pytest.raises(ValueError, match="base 'tanh'"):
        eafo_native._defines("tanh", 2, 4, False, [0.0] * 11)
    with pytest.raises(ValueError, match="power must be 1, 2 or 4, got 3"):
        eafo_native._defines("gelu", 3, 4, False, [0.0] * 11)
    with pytest.raises(ValueError, match="needs 11 parameters, got 5"):
        eafo_native._defines("gelu", 2, 4, False, [0.0] * 5)
    with pytest.raises(ValueError, match="needs c < 0, got c = 0.5"):
        eafo_native._defines("gelu", 2, 4, False, [0.0] * 5 + [0.5] + [0.0] * 5)


def test_an_unusable_cache_dir_falls_back_to_a_private_temp_folder(tmp_path, monkeypatch):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv("CRRELU_CACHE_DIR", str(blocker / "sub"))
    monkeypatch.setattr(eafo_native.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    m = build_activation("eafo_relu", impl="compiled")
    path = eafo_native._build("relu", *m._fit_form)
    assert path.parent.parent == tmp_path / "tmp" and path.exists()
    assert blocker.read_text().startswith("a file")  # nothing overwritten


def test_the_fast_path_survives_deepcopy_pickle_dtype_and_table_changes():
    import copy
    import pickle

    from crrelu_lightning.activations.eafo_activation import EAFONativeFunction

    m = build_activation("eafo_gelu", impl="compiled")
    x = torch.randn(64, requires_grad=True)
    y = m(x)
    assert y.grad_fn is not None and type(y.grad_fn).__name__ == EAFONativeFunction.__name__ + "Backward"
    for clone in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        torch.testing.assert_close(clone(x), y)
    m64 = copy.deepcopy(m).double()  # float64: the table path, not the float32 kernel
    torch.testing.assert_close(m64(x.double()), m.reference(x.double()), rtol=1e-6, atol=1e-6)
    with torch.no_grad():  # a new table drops the fast path and its closed form
        m.set_table(*(t.numpy() for t in (torch.linspace(-1, 7, 1025, dtype=torch.float64),
                                          torch.zeros(1025, dtype=torch.float64), torch.zeros(1025, dtype=torch.float64))),
                    (-1.0, 1.0))
    torch.testing.assert_close(m(x), cr_math.base_forward("gelu", x.detach()), rtol=1e-5, atol=1e-6)


def test_the_fast_path_takes_non_contiguous_inputs_and_frozen_eps():
    m = build_activation("eafo_silu", impl="compiled", learnable=False)
    base = torch.randn(33, 20, requires_grad=True)
    x = base.t()  # not contiguous
    m(x.detach())  # resolves the fast path
    y = m(x)
    dy = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, base, dy)
    ry = m.reference(x)
    (rx,) = torch.autograd.grad(ry, base, dy)
    torch.testing.assert_close(y, ry, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx, rx, rtol=1e-4, atol=1e-4)
    assert m.eps.grad is None


def test_unchecked_backward_writes_deps_into_a_float32_tensor_shaped_like_eps():
    _, k = _kernel("gelu")
    g = torch.Generator().manual_seed(3)
    x, dy = torch.randn(50_001, generator=g), torch.randn(50_001, generator=g)
    for eps in (torch.tensor(0.3), torch.tensor([0.3])):
        dx1, d1 = k.backward(x, dy, eps)  # dε summed in double, as a Python float
        dx2, d2 = k.backward_unchecked(x, dy, eps)
        assert torch.equal(dx1, dx2)
        assert d2.shape == eps.shape and d2.dtype == torch.float32
        assert d2.item() == torch.tensor(d1, dtype=torch.float32).item()  # the same sum, rounded once


def test_the_general_dispatch_reaches_the_native_kernel_with_a_0d_deps(monkeypatch):
    """``EAFOFitFunction`` (the path of the custom ops under an outer torch.compile) → ``eafo_kernels._native``."""
    from crrelu_lightning.activations.eafo_activation import EAFOFitFunction

    m, k = _kernel("silu")
    calls = []
    unchecked = eafo_native.NativeKernel.backward_unchecked
    monkeypatch.setattr(eafo_native.NativeKernel, "backward_unchecked",
                        lambda self, *a: calls.append(1) or unchecked(self, *a))
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 1000, generator=g, requires_grad=True)
    eps = torch.tensor([0.4], requires_grad=True)  # one element, not 0-d: dε must come back in its shape
    y = EAFOFitFunction.apply(x, eps, m.base, m._fit_form, True)
    dy = torch.randn(3, 1000, generator=g)
    gx, ge = torch.autograd.grad(y, (x, eps), dy)
    ry, rdx, rdeps, _ = _reference("silu", m._fit_form, x.detach().reshape(-1), dy.reshape(-1), 0.4)
    torch.testing.assert_close(y.detach().double().reshape(-1), ry, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx.double().reshape(-1), rdx, rtol=1e-4, atol=1e-4)
    assert ge.shape == eps.shape and math.isclose(ge.item(), rdeps, rel_tol=1e-5, abs_tol=1e-3)
    assert calls == [1]  # the native kernel ran the backward
