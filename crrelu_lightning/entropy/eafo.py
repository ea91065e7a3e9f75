"""EAFO in one namespace: ``from crrelu_lightning.entropy import eafo as E``.

The code lives in modules with one job each; this module re-exports their public names so that
existing imports keep working:

- ``distributions``: input distributions (``NormalInput``, ``HistogramInput``, ``parse_input``) and
  Gauss–Legendre ``quadrature``;
- ``cr_branch``: float64 CR math, the branch start ``branch_cut`` and ``monotone_eps_interval``;
- ``eafo_tables``: static EAFO (``branch_record``, ``eafo_table``, ``correction_direction``);
- ``bounded``: WAFBC and the entropies of bounded activations;
- ``branch_estimator``: dynamic EAFO's sum-reducible estimator (``BranchSumEstimator``).

The math is in docs/eafo.md.
"""
from crrelu_lightning.entropy.branch_estimator import (
    COLUMNS,
    BranchSumEstimator,
    branch_sums,
    compute_branch_stats,
    decode_sums,
)
from crrelu_lightning.entropy.cr_branch import (
    DEFAULT_SLOPE_FLOOR,
    base_forward,
    base_slope,
    branch_cut,
    correction,
    correction_slope,
    cr_forward,
    cr_slope,
    min_slope_on_branch,
    monotone_eps_interval,
)
from crrelu_lightning.entropy.distributions import HistogramInput, InputDistribution, NormalInput, parse_input, quadrature
from crrelu_lightning.entropy.eafo_tables import branch_record, correction_direction, eafo_table
from crrelu_lightning.entropy.bounded import (
    activation_range,
    bounded_activation_entropies,
    output_entropy,
    wafbc,
    wafbc_entropy,
)

__all__ = [
    "COLUMNS",
    "DEFAULT_SLOPE_FLOOR",
    "BranchSumEstimator",
    "HistogramInput",
    "InputDistribution",
    "NormalInput",
    "activation_range",
    "base_forward",
    "base_slope",
    "bounded_activation_entropies",
    "branch_cut",
    "branch_record",
    "branch_sums",
    "compute_branch_stats",
    "correction",
    "correction_direction",
    "correction_slope",
    "cr_forward",
    "cr_slope",
    "decode_sums",
    "eafo_table",
    "min_slope_on_branch",
    "monotone_eps_interval",
    "output_entropy",
    "parse_input",
    "quadrature",
    "wafbc",
    "wafbc_entropy",
]
