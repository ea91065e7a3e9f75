"""Online activation-entropy estimation (pure torch/numpy, no Lightning) and EAFO's entropy tools.

See docs/entropy.md and docs/eafo.md. The EAFO names resolve lazily (PEP 562), so importing the
histogram estimators does not import the activations package.
"""
from typing import Any

from crrelu_lightning.entropy.cells import CellHistogram
from crrelu_lightning.entropy.estimators import entropy_from_counts
from crrelu_lightning.entropy.histogram import HistogramEstimator
from crrelu_lightning.entropy.pushforward import choose_bin_width, entropies_from_cells

# EAFO names -> defining module (also reachable as crrelu_lightning.entropy.eafo.<name>).
_EAFO_EXPORTS = {
    "BranchSumEstimator": "branch_estimator",
    "HistogramInput": "distributions",
    "NormalInput": "distributions",
    "quadrature": "distributions",
    "branch_cut": "cr_branch",
    "monotone_eps_interval": "cr_branch",
    "branch_record": "eafo_tables",
    "eafo_table": "eafo_tables",
    "wafbc": "bounded",
}

__all__ = [
    "CellHistogram",
    "HistogramEstimator",
    "choose_bin_width",
    "entropies_from_cells",
    "entropy_from_counts",
    *sorted(_EAFO_EXPORTS),
]


def __getattr__(name: str) -> Any:
    if name in _EAFO_EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"crrelu_lightning.entropy.{_EAFO_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'crrelu_lightning.entropy' has no attribute {name!r}")
