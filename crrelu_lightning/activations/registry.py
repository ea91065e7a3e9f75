"""Open activation registry: names -> zero-argument ``nn.Module`` factories.

``get_activation`` returns something timm accepts as ``act_layer``: a class, or a
``functools.partial`` of one when keyword arguments are given. Names are case-insensitive.
"""
from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, Dict, List, Type, Union

from torch import nn

_REGISTRY: Dict[str, Type[nn.Module]] = {}


def _normalize(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def register_activation(name: str, *aliases: str) -> Callable[[Type[nn.Module]], Type[nn.Module]]:
    """Class decorator registering an activation module under ``name`` (and ``aliases``).

    Re-registering an existing name overwrites it and warns. The class must be constructible
    with no arguments and accept ``inplace`` (timm's Mlp calls ``act_layer()``; some callers
    pass ``inplace=True``).
    """

    def decorator(cls: Type[nn.Module]) -> Type[nn.Module]:
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise TypeError(f"register_activation expects an nn.Module subclass, got {cls!r}")
        for key in (name, *aliases):
            key = _normalize(key)
            if key in _REGISTRY and _REGISTRY[key] is not cls:
                warnings.warn(
                    f"Activation {key!r} is already registered as {_REGISTRY[key].__name__}; "
                    f"overwriting it with {cls.__name__}.",
                    stacklevel=2,
                )
            _REGISTRY[key] = cls
        return cls

    return decorator


def available_activations() -> List[str]:
    """Sorted list of every registered name (aliases included)."""
    _ensure_builtins()
    return sorted(_REGISTRY)


def activation_class(name: str) -> Type[nn.Module]:
    """The registered class for ``name``; ``KeyError`` listing every name on a miss."""
    _ensure_builtins()
    key = _normalize(name)
    if key not in _REGISTRY:
        raise KeyError(
            f"Unknown activation {name!r}. Registered activations: {', '.join(sorted(_REGISTRY))}. "
            "Register your own with @crrelu_lightning.activations.register_activation('name')."
        )
    return _REGISTRY[key]


def get_activation(
    name_or_class: Union[str, Type[nn.Module], functools.partial], **kwargs: Any
) -> Union[Type[nn.Module], functools.partial]:
    """Zero-argument module factory for a registered name or a module class.

    Returns the class itself, or ``functools.partial(cls, **kwargs)`` when kwargs are given.
    Classes and partials pass through (kwargs are applied on top).
    """
    if isinstance(name_or_class, str):
        cls: Any = activation_class(name_or_class)
    elif isinstance(name_or_class, functools.partial) or (
        isinstance(name_or_class, type) and issubclass(name_or_class, nn.Module)
    ):
        cls = name_or_class
    else:
        raise TypeError(
            f"get_activation expects a registered name, an nn.Module class or a partial, got {name_or_class!r}"
        )
    return functools.partial(cls, **kwargs) if kwargs else cls


def build_activation(name_or_class: Union[str, Type[nn.Module]], **kwargs: Any) -> nn.Module:
    """Instantiate an activation module (``get_activation(...)()``)."""
    return get_activation(name_or_class, **kwargs)()


def _ensure_builtins() -> None:
    # Built-ins register on import of the package; importing here keeps the registry
    # complete even if only this module was imported.
    from crrelu_lightning.activations import standard, cr, wafbc  # noqa: F401
