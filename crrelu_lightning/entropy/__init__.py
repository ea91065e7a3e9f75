"""Online activation-entropy estimation (pure torch/numpy, no Lightning). See docs/entropy.md."""
from crrelu_lightning.entropy.cells import CellHistogram
from crrelu_lightning.entropy.estimators import entropy_from_counts
from crrelu_lightning.entropy.histogram import HistogramEstimator
from crrelu_lightning.entropy.pushforward import choose_bin_width, entropies_from_cells

__all__ = ["CellHistogram", "HistogramEstimator", "choose_bin_width", "entropies_from_cells", "entropy_from_counts"]
