"""Shared test settings.

torch.compile is switched off for ``impl="auto"`` so model-level tests don't pay Inductor's
compile time; kernel tests request ``impl="compiled"`` explicitly and still exercise it.
"""
import os

os.environ.setdefault("CRRELU_DISABLE_COMPILE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _deterministic_seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _restore_thread_count():
    threads = torch.get_num_threads()
    yield
    # A test (or a benchmark's main) that changed the thread count must not leak it: float32 reductions split
    # by thread, and the exact-resume tests compare an in-process run with a subprocess's bit for bit.
    torch.set_num_threads(threads)
