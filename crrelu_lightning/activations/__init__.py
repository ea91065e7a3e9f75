"""Activation registry and the CR family. See ``register_activation`` / ``get_activation``."""
from crrelu_lightning.activations.registry import (
    activation_class,
    available_activations,
    build_activation,
    get_activation,
    register_activation,
    UnknownActivationError,
)
from crrelu_lightning.activations import standard  # noqa: F401  (registers built-ins)
from crrelu_lightning.activations.standard import StarReLU
from crrelu_lightning.activations.cr import CRActivation, CRGELU, CRMish, CRReLU, CRSiLU
from crrelu_lightning.activations.wafbc import WAFBC
from crrelu_lightning.activations.eafo_activation import EAFOActivation, EAFOGELU, EAFOMish, EAFOReLU, EAFOSiLU

__all__ = [
    "register_activation",
    "get_activation",
    "available_activations",
    "activation_class",
    "build_activation",
    "UnknownActivationError",
    "CRActivation",
    "CRReLU",
    "CRGELU",
    "CRSiLU",
    "CRMish",
    "StarReLU",
    "WAFBC",
    "EAFOActivation",
    "EAFOReLU",
    "EAFOGELU",
    "EAFOSiLU",
    "EAFOMish",
]
