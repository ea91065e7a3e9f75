"""crrelu-lightning: activation-function research with PyTorch Lightning (CRReLU, EAFO, WAFBC)."""

__version__ = "0.1.0"
