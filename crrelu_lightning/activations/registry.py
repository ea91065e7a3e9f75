"""Open activation registry: names -> zero-argument ``nn.Module`` factories.

``get_activation`` returns something timm accepts as ``act_layer``: a class, or a
``functools.partial`` of one when keyword arguments are given. Names are case-insensitive.

Where a name can come from (``activation_class``), in this order:

1. ``@register_activation("name")`` in any module that has been imported (the built-ins are);
2. an installed package's entry point in the group ``crrelu_lightning.activations``
   (``my_act = "mypkg.acts:MyAct"`` registers ``MyAct`` as ``my_act``; an entry point naming a
   module just imports it, so its decorators run). Loaded on the first name not found in 1;
3. an import path: ``"mypkg.acts.MyAct"`` / ``"mypkg.acts:MyAct"`` (an ``nn.Module`` class), or
   ``"mypkg.acts.my_act"`` (a name that module registers when imported).

Hyperparameters keep the string as given, so checkpoints and saved configs resolve it again.
"""
from __future__ import annotations

import functools
import importlib
import warnings
from typing import Any, Callable, Dict, List, Type, Union

from torch import nn

ENTRY_POINT_GROUP = "crrelu_lightning.activations"
_REGISTRY: Dict[str, Type[nn.Module]] = {}
_entry_points_loaded = False


class UnknownActivationError(KeyError):
    """An activation name or import path that resolves to nothing (a ``KeyError`` with a readable message)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


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
    """Sorted list of every registered name (aliases and installed entry points included)."""
    _ensure_builtins()
    _load_entry_points()
    return sorted(_REGISTRY)


def _unknown(name: str, why: str = "") -> UnknownActivationError:
    return UnknownActivationError(
        f"Unknown activation {name!r}{why}. Registered: {', '.join(sorted(_REGISTRY))}. "
        "Or give an import path to an nn.Module class, e.g. 'mypkg.acts.MyAct'."
    )


def activation_class(name: str) -> Type[nn.Module]:
    """The class for a registered name or an import path; ``UnknownActivationError`` (a ``KeyError``) on a miss.

    The error lists every registered name and shows the import-path form.
    """
    if not isinstance(name, str):
        raise TypeError(f"activation must be a name or an import path (a str), got {name!r}")
    _ensure_builtins()
    key = _normalize(name)
    if key not in _REGISTRY:
        _load_entry_points()
    if key in _REGISTRY:
        return _REGISTRY[key]
    path = name.strip()
    if "." in path.strip(".") or ":" in path:
        return _import_activation(path)
    raise _unknown(name)


def _import_activation(path: str) -> Type[nn.Module]:
    """``mod.sub.Attr`` or ``mod.sub:Attr``: an ``nn.Module`` class there, or a name the module registers."""
    module_name, sep, attr = path.partition(":") if ":" in path else path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise _unknown(
            path, f" (cannot import {module_name!r}: {err}; pip install it or add its folder to PYTHONPATH)"
        ) from None
    obj = getattr(module, attr, None)
    if obj is None:
        key = _normalize(attr)
        if key in _REGISTRY:  # the import registered it
            return _REGISTRY[key]
        raise _unknown(path, f" (module {module_name!r} has no attribute {attr!r} and registers no such name)")
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise _unknown(path, f" ({path} is {type(obj).__name__} {obj!r}, not an nn.Module class)")
    return obj


def _load_entry_points() -> None:
    """Import every ``crrelu_lightning.activations`` entry point once; a broken one warns and is skipped."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as err:
            dist = getattr(getattr(ep, "dist", None), "name", "?")
            warnings.warn(
                f"Activation entry point {ep.name!r} = {ep.value!r} (package {dist}) failed to load: "
                f"{type(err).__name__}: {err}; skipping it.",
                stacklevel=3,
            )
            continue
        if isinstance(obj, type) and issubclass(obj, nn.Module) and _normalize(ep.name) not in _REGISTRY:
            _REGISTRY[_normalize(ep.name)] = obj


def reload_entry_points() -> None:
    """Look for entry points again (after installing a package in a running process; tests)."""
    global _entry_points_loaded
    _entry_points_loaded = False
    _load_entry_points()


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
    from crrelu_lightning.activations import standard, cr, wafbc, eafo_activation  # noqa: F401
