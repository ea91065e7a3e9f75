"""Online activation-entropy estimation (pure torch, no Lightning). See docs/entropy.md and EAFO.md §6."""
from crrelu_lightning.entropy.estimators import entropy_from_counts
from crrelu_lightning.entropy.histogram import HistogramEstimator

__all__ = ["HistogramEstimator", "entropy_from_counts"]
