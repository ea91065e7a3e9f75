"""Lightning callbacks of crrelu-lightning.

Exports resolve lazily (PEP 562) so that importing one callback does not import the others' dependencies.
"""
from typing import Any

# name -> module that defines it; add new callbacks here.
_EXPORTS = {
    "ActivationEntropyMonitor": "crrelu_lightning.callbacks.entropy_monitor",
    "ActivationParameterLogger": "crrelu_lightning.callbacks.activation_params",
    "EAFOCallback": "crrelu_lightning.callbacks.eafo",
    "EAFODeriveCallback": "crrelu_lightning.callbacks.eafo_derive",
    "PredictionWriter": "crrelu_lightning.callbacks.prediction_writer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'crrelu_lightning.callbacks' has no attribute {name!r}")
