"""Find a model's activation modules and tap their inputs/outputs on demand.

Shared by ``ActivationEntropyMonitor`` and ``EAFOCallback``::

    modules = find_activation_modules(model, include=["blocks.*"], exclude=["*.head*"])
    taps = ActivationTaps(modules, fn)      # fn(index, name, module, input, output), tensors detached
    taps.enabled = True                     # only on collection steps; hooks are no-ops otherwise
    ...
    taps.remove()

Hooks are registered once (not per step) so a model compiled after ``ActivationTaps`` was built
traces them; toggling ``enabled`` then costs one guard (two graph variants), not a re-trace per step.
"""
from __future__ import annotations

import fnmatch
import sys
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Type

import torch
from torch import nn

# torch.nn.modules.activation also defines modules that are not elementwise activations.
_NOT_ACTIVATIONS = {"MultiheadAttention"}

TapFn = Callable[[int, str, nn.Module, Optional[torch.Tensor], torch.Tensor], None]


def activation_types() -> Tuple[Type[nn.Module], ...]:
    """Registry activation classes, torch.nn's activation modules, and timm's (if timm is loaded)."""
    from torch.nn.modules import activation as torch_act

    from crrelu_lightning.activations import registry

    registry.available_activations()  # makes sure the built-ins are registered
    types = set(registry._REGISTRY.values())
    for name in dir(torch_act):
        obj = getattr(torch_act, name)
        # Only classes defined there: the module also imports Linear-like helpers and Module itself.
        if (
            isinstance(obj, type)
            and issubclass(obj, nn.Module)
            and obj.__module__ == torch_act.__name__
            and name not in _NOT_ACTIVATIONS
        ):
            types.add(obj)
    # timm's own activation classes (used when a model passes act_layer by timm name). Only if timm
    # is already imported: a model built with timm has imported it, and importing it costs seconds.
    timm_act = sys.modules.get("timm.layers.activations")
    if timm_act is not None:
        types.update(
            obj for obj in vars(timm_act).values()
            if isinstance(obj, type) and issubclass(obj, nn.Module) and obj.__module__ == timm_act.__name__
        )
    return tuple(sorted(types, key=lambda t: (t.__module__, t.__qualname__)))


def _matches(name: str, patterns: Optional[Sequence[str]]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns or ())


def find_activation_modules(
    model: nn.Module,
    include: Optional[Sequence[str]] = None,
    exclude: Optional[Sequence[str]] = None,
    extra_types: Iterable[Type[nn.Module]] = (),
) -> Dict[str, nn.Module]:
    """Activation modules of ``model`` by qualified name, in ``named_modules`` order.

    Args:
        include: glob patterns (``fnmatch``, e.g. ``"blocks.*.mlp.act"``); if given, keep only matching names.
        exclude: glob patterns of names to drop (applied after ``include``).
        extra_types: further classes to treat as activations (e.g. a timm-only activation).

    A module reachable under several names is returned once (first name). Raises ``ValueError`` if
    ``include`` is given and some pattern matches no activation (a typo would otherwise silently
    monitor nothing).
    """
    if isinstance(include, str) or isinstance(exclude, str):
        raise TypeError(f"include/exclude must be lists of patterns, got include={include!r}, exclude={exclude!r}")
    types = activation_types() + tuple(extra_types)
    found = {name: m for name, m in model.named_modules() if name and isinstance(m, types)}
    if include:
        unmatched = [p for p in include if not any(fnmatch.fnmatchcase(n, p) for n in found)]
        if unmatched:
            raise ValueError(
                f"include patterns {unmatched} match no activation module; activation modules are: {sorted(found)}"
            )
        found = {n: m for n, m in found.items() if _matches(n, include)}
    return {n: m for n, m in found.items() if not _matches(n, exclude)}


class ActivationTaps:
    """Forward hooks on ``modules`` that call ``fn(index, name, module, input, output)`` while ``enabled``.

    ``input`` is the first positional tensor argument (``None`` if there is none), ``output`` the
    module's tensor output; both detached. Non-tensor outputs are skipped. ``fn`` runs inside the
    forward pass, so it must do tensor work only (no ``.item()``, ``.cpu()`` or logging).
    """

    def __init__(self, modules: Mapping[str, nn.Module], fn: TapFn) -> None:
        self.names: List[str] = list(modules)
        self.enabled = False
        self._fn = fn
        self._handles = [
            module.register_forward_hook(self._make_hook(i, name)) for i, (name, module) in enumerate(modules.items())
        ]

    def _make_hook(self, index: int, name: str):
        def hook(module: nn.Module, args: tuple, output):
            if not self.enabled or not isinstance(output, torch.Tensor):
                return None
            x = args[0].detach() if args and isinstance(args[0], torch.Tensor) else None
            with torch.no_grad():
                self._fn(index, name, module, x, output.detach())
            return None

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.enabled = False

    def __len__(self) -> int:
        return len(self.names)
