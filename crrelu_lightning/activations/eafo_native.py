"""Native CPU kernels of the EAFO closed form: ``eafo_cpu.c`` built per form by the system C compiler (ctypes).

Why not Inductor here: at the demo's layer size the Inductor-compiled bodies took 2.8× ATen's GELU forward and
each call paid ~80 µs of Dynamo guard checks; with them the eager demo step took 1.06–1.075× GELU's
(docs/eafo_general.md §5).
The C kernel holds the closed form's numbers as compile-time constants, vectorises with the machine's own
instruction set (``-march=native``) and is called through ctypes (~2 µs).

A kernel is built once per (base, closed form) into ``$CRRELU_CACHE_DIR`` (default
``~/.cache/crrelu_lightning/kernels``), keyed by the source, the form, the compiler, its flags and the CPU, so a later
process loads it without compiling. Only float32 inputs with a float32 ε on the CPU use it; everything else,
a missing compiler (one warning) and ``CRRELU_DISABLE_NATIVE=1`` keep the Inductor/eager bodies.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from crrelu_lightning.activations import cr_kernels, cr_math
from crrelu_lightning.activations.eafo_fit import N_HEAD as _N_HEAD  # params = [a, b, α, β, m, c, p_0 … p_degree]

_SOURCE = Path(__file__).with_name("eafo_cpu.c")
_BASES = {"relu": 0, "gelu": 1, "silu": 2, "mish": 3}
_lock = threading.Lock()
_kernels: Dict[Tuple, Optional["NativeKernel"]] = {}
_failed: List[str] = []  # the first build error; later forms are not tried


def enabled() -> bool:
    return not cr_kernels.env_flag("CRRELU_DISABLE_NATIVE")


def cache_dir() -> Path:
    root = os.environ.get("CRRELU_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "crrelu_lightning")
    return Path(root) / "kernels"


def compiler() -> Optional[str]:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


class NativeKernel:
    """The built forward and backward of one closed form; ``forward(x, eps)``, ``backward(x, dy, eps)``.

    ``eps``: a float32 CPU tensor (the kernel reads the parameter itself) or a Python number.
    """

    def __init__(self, path: Path):
        self.path = path
        lib = ctypes.CDLL(str(path))
        self._fwd, self._bwd = lib.eafo_forward, lib.eafo_backward
        ptr, n, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        self._fwd.argtypes, self._fwd.restype = [ptr, ptr, n, ptr, i32], None
        self._bwd.argtypes, self._bwd.restype = [ptr, ptr, ptr, n, ptr, i32, ptr], ctypes.c_double
        self._lib = lib  # keeps the library loaded

    def forward(self, x: torch.Tensor, eps) -> torch.Tensor:
        return self.forward_unchecked(x.contiguous(), eps_tensor(eps))

    def backward(self, x: torch.Tensor, dy: torch.Tensor, eps) -> Tuple[torch.Tensor, float]:
        """dx and dε (a Python float, summed in double)."""
        return self._backward(x.contiguous(), dy.contiguous(), eps_tensor(eps), None)

    # For callers that guarantee contiguous float32 CPU x (and dy) and a one-element float32 CPU eps.
    def forward_unchecked(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        y = torch.empty_like(x)
        self._fwd(x.data_ptr(), y.data_ptr(), x.numel(), eps.data_ptr(), torch.get_num_threads())
        return y

    def backward_unchecked(self, x: torch.Tensor, dy: torch.Tensor, eps: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """dx and dε as a float32 tensor shaped like ``eps``, which the kernel writes: both outputs are allocated
        before the call, because after a large kernel the caches are cold and any tensor op costs ≈ 50 µs."""
        deps = torch.empty_like(eps)
        return self._backward(x, dy, eps, deps)[0], deps

    def _backward(self, x: torch.Tensor, dy: torch.Tensor, eps: torch.Tensor,
                  deps: Optional[torch.Tensor]) -> Tuple[torch.Tensor, float]:
        dx = torch.empty_like(x)
        total = self._bwd(x.data_ptr(), dy.data_ptr(), dx.data_ptr(), x.numel(), eps.data_ptr(),
                          torch.get_num_threads(), None if deps is None else deps.data_ptr())
        return dx, total


def eps_tensor(eps) -> torch.Tensor:
    """ε as the one-element float32 CPU tensor the kernel reads (a number becomes one); other tensors are refused."""
    if isinstance(eps, torch.Tensor):
        if eps.dtype != torch.float32 or eps.device.type != "cpu" or eps.numel() != 1:
            raise ValueError(f"the native EAFO kernel needs a one-element float32 CPU eps, got {eps.dtype} "
                             f"{tuple(eps.shape)} on {eps.device}")
        return eps.contiguous()
    return torch.tensor(float(eps), dtype=torch.float32)


def supports(x: torch.Tensor, eps: torch.Tensor) -> bool:
    """Whether this call can use a native kernel (the kernel itself may still be unavailable)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and eps.dtype == torch.float32
            and not _failed and enabled())


def kernel(base: str, power: int, degree: int, shared: bool, params: Sequence[float]) -> Optional[NativeKernel]:
    """The native kernel of this closed form, built or loaded on first use; None if it cannot be built."""
    key = (base, power, degree, shared, tuple(params))
    k = _kernels.get(key)
    if k is not None or key in _kernels:
        return k
    with _lock:
        if key not in _kernels:
            try:
                _kernels[key] = NativeKernel(_build(base, power, degree, shared, params))
            except Exception as err:  # no compiler, a compiler error, a library that does not load
                _kernels[key] = None
                if not _failed:
                    _failed.append(f"{type(err).__name__}: {err}")
                    warnings.warn(f"EAFO native CPU kernel unavailable ({_failed[0]}); using the torch.compile "
                                  "bodies (same results within float32 rounding, slower). Set CC to a C compiler "
                                  "with OpenMP, or CRRELU_DISABLE_NATIVE=1 to silence this.", RuntimeWarning,
                                  stacklevel=4)
    return _kernels[key]


def _defines(base: str, power: int, degree: int, shared: bool, params: Sequence[float]) -> List[str]:
    if base not in _BASES:
        raise ValueError(f"no native EAFO kernel for base {base!r}; expected one of {tuple(_BASES)}")
    if power not in (1, 2, 4):
        raise ValueError(f"closed-form power must be 1, 2 or 4, got {power}")
    if len(params) < _N_HEAD + degree + 1:
        raise ValueError(f"closed form of degree {degree} needs {_N_HEAD + degree + 1} parameters, got {len(params)}")
    a, b, alpha, beta, m, c = (float(v) for v in params[:_N_HEAD])
    if not c < 0:
        raise ValueError(f"closed-form envelope exp(c·(x − m)²) needs c < 0, got c = {c!r}")
    coefs = ",".join(f"{float(v)!r}f" for v in params[_N_HEAD:_N_HEAD + degree + 1])
    half_q = ",".join(f"{0.5 * float(v)!r}f" for v in cr_math._ERFC_Q)  # ½ folded in: one multiply fewer
    consts = dict(A=a, B=b, ALPHA=alpha, BETA=beta, M=m, C=c)
    return ([f"-DBASE={_BASES[base]}", f"-DPOWER={int(power)}", f"-DDEGREE={int(degree)}", f"-DSHARED={int(bool(shared))}",
             f"-DCOEFS={{{coefs}}}", f"-DHALF_ERFC_Q={{{half_q}}}"] + [f"-D{k}=({v!r}f)" for k, v in consts.items()])


def _arch_flags() -> List[str]:
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        # Wider vectors where the CPU has AVX-512 (GCC otherwise prefers 256-bit ones for auto-vectorised loops).
        return ["-march=native", "-mprefer-vector-width=512"]
    if machine in ("aarch64", "arm64"):
        return ["-mcpu=native"]
    return []


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            lines = [ln for ln in fh if ln.startswith(("model name", "flags", "Features", "CPU part"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def _build(base: str, power: int, degree: int, shared: bool, params: Sequence[float]) -> Path:
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (cc, gcc or clang on PATH, or CC)")
    source = _SOURCE.read_text()
    defines = _defines(base, power, degree, shared, params)
    common = ["-O3", "-fPIC", "-shared", "-fopenmp", "-std=gnu11", "-fno-trapping-math"]
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256("\0".join([source, cc, version, _cpu_signature(), *defines, *common, *_arch_flags()])
                         .encode()).hexdigest()[:24]
    out = cache_dir() / f"eafo_{base}_{key}.so"
    if out.exists():
        return out
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(out.parent, os.W_OK):
            raise PermissionError(f"{out.parent} is not writable")
    except OSError:  # a read-only home: a private folder under the temp dir instead
        out = Path(tempfile.gettempdir()) / f"crrelu_lightning_kernels_{os.getuid()}" / out.name
        if out.exists():
            return out
        out.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    errors = []
    for arch in (_arch_flags(), []):  # the native ISA first; portable code if the compiler refuses its flags
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
        try:
            proc = subprocess.run([cc, *common, *arch, *defines, str(_SOURCE), "-o", tmp, "-lm"],
                                  capture_output=True, text=True)
            if proc.returncode == 0:
                os.replace(tmp, out)  # atomic: a concurrent process sees the whole library or none
                return out
            errors.append(proc.stderr.strip()[-400:])
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise RuntimeError(f"{cc} failed to build {_SOURCE.name}: {errors[-1]}")


def reset() -> None:
    """Forget loaded kernels and a build failure (tests)."""
    _kernels.clear()
    _failed.clear()
