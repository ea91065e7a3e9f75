"""Hand-written Triton kernels for the CR family on CUDA (optional; imported lazily and guarded).

Forward: one pass (read x, write y). Backward: one pass that reads x and dy, writes dx and one partial
sum of dε = Σ dy·x·exp(−x²/(2σ²)) per block; the partials (n/4096 floats) are summed on the device.
ε is read from device memory inside the kernels, so no call synchronises host and device.

Computation is in float32 for float32/float16/bfloat16 inputs; float64 goes through Inductor instead.
The kernels also run under ``TRITON_INTERPRET=1`` on CPU tensors, which is how the CPU test suite checks them.
"""
from __future__ import annotations

import math

import torch

try:  # pragma: no cover - depends on the installation
    import triton
    import triton.language as tl

    HAS_TRITON = True
except Exception:  # pragma: no cover
    triton = None
    tl = None
    HAS_TRITON = False

BASE_IDS = {"relu": 0, "gelu": 1, "silu": 2, "mish": 3}
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BLOCK = 4096
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)


if HAS_TRITON:

    @triton.jit
    def _tanh_softplus(x):
        # tanh(softplus(x)) = n / (n + 2) with n = e^x (e^x + 2); exact identity, no overflow for x ≤ 20
        e = tl.exp(tl.minimum(x, 20.0))
        n = e * (e + 2.0)
        return n / (n + 2.0)

    @triton.jit
    def _cr_fwd_kernel(x_ptr, eps_ptr, y_ptr, n_elements, C: tl.constexpr, BASE: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n_elements
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        eps = tl.load(eps_ptr).to(tl.float32)
        g = tl.exp(x * x * C)
        if BASE == 0:
            b = tl.maximum(x, 0.0)
        elif BASE == 1:
            b = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
        elif BASE == 2:
            b = x * tl.sigmoid(x)
        else:
            b = x * _tanh_softplus(x)
        y = b + eps * (x * g)
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _cr_bwd_kernel(
        x_ptr, dy_ptr, eps_ptr, dx_ptr, part_ptr, n_elements,
        C: tl.constexpr, INV_S2: tl.constexpr, BASE: tl.constexpr, BLOCK: tl.constexpr,
    ):
        pid = tl.program_id(0)
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n_elements
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        eps = tl.load(eps_ptr).to(tl.float32)
        x2 = x * x
        g = tl.exp(x2 * C)
        if BASE == 0:
            slope = tl.where(x > 0.0, 1.0, 0.0)
        elif BASE == 1:
            cdf = 0.5 * (1.0 + tl.math.erf(x * 0.7071067811865476))
            slope = cdf + x * tl.exp(-0.5 * x2) * 0.3989422804014327
        elif BASE == 2:
            s = tl.sigmoid(x)
            slope = s * (1.0 + x * (1.0 - s))
        else:
            t = _tanh_softplus(x)
            slope = t + x * (1.0 - t * t) * tl.sigmoid(x)
        dyg = dy * g
        dx = dy * slope + eps * (dyg - dyg * x2 * INV_S2)
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        tl.store(part_ptr + pid, tl.sum(dyg * x, axis=0))


def supported(x: torch.Tensor) -> bool:
    return HAS_TRITON and x.dtype in SUPPORTED_DTYPES


def _grid(n: int):
    return (max(1, triton.cdiv(n, BLOCK)),)


def cr_forward(x: torch.Tensor, eps: torch.Tensor, base: str, sigma: float) -> torch.Tensor:
    """y for a contiguous x (any shape); ε a one-element tensor on x's device."""
    y = torch.empty_like(x)
    n = x.numel()
    if n:
        _cr_fwd_kernel[_grid(n)](x, eps, y, n, C=-0.5 / (sigma * sigma), BASE=BASE_IDS[base], BLOCK=BLOCK, num_warps=8)
    return y


def cr_backward(x: torch.Tensor, dy: torch.Tensor, eps: torch.Tensor, base: str, sigma: float):
    """(dx, dε) for contiguous x and dy; dε is a float32 0-d tensor."""
    dx = torch.empty_like(x)
    n = x.numel()
    grid = _grid(n)
    partials = torch.zeros(grid[0], device=x.device, dtype=torch.float32)
    if n:
        _cr_bwd_kernel[grid](
            x, dy, eps, dx, partials, n,
            C=-0.5 / (sigma * sigma), INV_S2=1.0 / (sigma * sigma), BASE=BASE_IDS[base], BLOCK=BLOCK, num_warps=8,
        )
    return dx, partials.sum()
