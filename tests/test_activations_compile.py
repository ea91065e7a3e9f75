"""CR activations inside a user's ``torch.compile``: no graph breaks, eager = compiled (float64),
backward keeps only x, Inductor fuses the activation with its neighbours."""
import pytest
import timm
import torch
from torch import nn

import crrelu_lightning.models.presets  # noqa: F401  (registers vit_fmnist)
from crrelu_lightning.activations import CRGELU, CRMish, CRReLU, CRSiLU, cr_math

CR = {"crrelu": CRReLU, "crgelu": CRGELU, "crsilu": CRSiLU, "crmish": CRMish}


def _vit(act_cls, **kwargs):
    torch.manual_seed(0)
    return timm.create_model("vit_fmnist", act_layer=lambda **_: act_cls(eps_init=-0.3), **kwargs)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("name", sorted(CR))
def test_vit_fmnist_has_zero_graph_breaks(name):
    model = _vit(CR[name])
    x = torch.randn(2, 1, 28, 28, requires_grad=True)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    # and fullgraph=True traces forward and backward (AOTAutograd) without complaint
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    compiled(x).sum().backward()
    assert all(m.eps.grad is not None for m in model.modules() if isinstance(m, CR[name]))


class _Block(nn.Module):
    """Linear → CR activation → Linear + residual: the shape of a transformer MLP."""

    def __init__(self, act: nn.Module, dim: int = 16) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, 2 * dim), act, nn.Linear(2 * dim, dim)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(x)))


@pytest.mark.parametrize("name", sorted(CR))
def test_inductor_float64_matches_reference_expression(name):
    torch.manual_seed(1)
    block = _Block(CR[name](eps_init=0.7, sigma=0.8)).double()
    x = (torch.randn(4, 5, 16, dtype=torch.float64) * 2).requires_grad_(True)
    compiled = torch.compile(block, fullgraph=True)
    y = compiled(x)
    dy = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, block.fc1.weight, block.act.eps], dy)

    # independent reference: the plain expression, differentiated by autograd, eager
    act = block.act
    ref_act = lambda t: cr_math.cr_reference(act.base, t, act.eps, act.sigma)  # noqa: E731
    y_ref = x + block.fc2(ref_act(block.fc1(x)))
    want = torch.autograd.grad(y_ref, [x, block.fc1.weight, block.act.eps], dy)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["crrelu", "crgelu"])
def test_compiled_backward_saves_only_the_input(name):
    """AOTAutograd's forward graph returns (y, *saved): the only input-sized saved tensor is x itself."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.partitioners import min_cut_rematerialization_partition

    saved = {}

    def fw(gm, example_inputs):
        out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        saved["nodes"] = list(out[1:])  # out[0] is y
        saved["placeholders"] = placeholders
        return make_boxed_func(gm)

    backend = aot_autograd(fw_compiler=fw, bw_compiler=lambda gm, _: make_boxed_func(gm),
                           partition_fn=min_cut_rematerialization_partition)
    act = CR[name](eps_init=0.2)
    x = torch.randn(64, 33, requires_grad=True)
    torch.compile(act, fullgraph=True, backend=backend)(x).sum().backward()
    big = [n for n in saved["nodes"] if n.meta["val"].numel() == x.numel()]
    assert len(big) == 1 and big[0] in saved["placeholders"], saved["nodes"]  # x, not a temporary


def test_inductor_fuses_activation_with_neighbours():
    """scale → CRReLU → residual add compiles to ONE forward kernel (the activation is not an opaque call)."""
    from torch._inductor import metrics
    from torch._inductor.utils import run_and_get_code

    act = CRReLU(eps_init=0.3)
    fn = torch.compile(lambda x, r: act(x * 2.0 + 1.0) + r, fullgraph=True)
    x, r = torch.randn(1000), torch.randn(1000)
    metrics.reset()
    with torch.no_grad():
        y, code = run_and_get_code(fn, x, r)
    assert metrics.generated_kernel_count == 1, code
    torch.testing.assert_close(y, cr_math.cr_reference("relu", x * 2.0 + 1.0, act.eps.detach(), 1.0) + r,
                               rtol=2e-5, atol=2e-5)


def test_autocast_bfloat16_under_compile_matches_eager():
    """Under autocast the Function turns autocast off inside (its own compute dtype); also when traced."""
    torch.manual_seed(2)
    block = _Block(CRReLU(eps_init=0.4))
    x = torch.randn(3, 7, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = block(x)
        got = torch.compile(block, fullgraph=True, backend="aot_eager")(x)
    assert got.dtype == want.dtype
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)


def test_compile_vit_benchmark_eager_smoke():
    """The benchmark's CPU path runs; its memory column shows CRReLU keeping what GELU keeps, the paper's more."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "compile_vit.py")
    spec = importlib.util.spec_from_file_location("compile_vit", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    table = bench.run(bench.parse_args(["--modes", "eager", "--repeats", "1", "--warmup", "0", "--batch-size", "4"]))
    rows = {line.split("|")[1].strip(): line.split("|") for line in table.splitlines() if line.startswith("| ")}
    assert float(rows["crrelu"][6]) == 1.0  # saved-for-backward bytes × GELU
    assert float(rows["paper expression"][6]) > 1.2


@pytest.mark.parametrize("name", ["crrelu", "eafo_gelu"])
def test_eager_compiled_bodies_stay_parallel_after_a_small_first_call_on_one_thread(name, monkeypatch):
    """Inductor decides from the first call whether a dynamic-length loop gets an OpenMP region; the bodies
    must keep one (OpenMP then uses the thread count at call time), or every later call runs on one core.
    (EAFO's float32 CPU calls go to the native kernel first; its Inductor bodies are the fallback tested here.)"""
    from torch._inductor.utils import run_and_get_code

    monkeypatch.setenv("CRRELU_DISABLE_NATIVE", "1")

    from crrelu_lightning.activations import build_activation, cr_kernels, eafo_kernels

    cr_kernels.reset_caches()
    eafo_kernels._compiled.clear()
    act = build_activation(name, impl="compiled")
    x = torch.randn(16, requires_grad=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch._inductor.config.patch(fx_graph_cache=False):
            _, codes = run_and_get_code(lambda: act(x).sum().backward())
    finally:
        torch.set_num_threads(threads)
    assert len(codes) == 2 and all("#pragma omp parallel" in c for c in codes)
