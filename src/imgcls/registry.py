"""A small name → factory registry used for backbones, heads and datasets.

Configs name components by string; a registry turns the name into a constructor and
suggests the closest valid name on a typo. Nothing here imports or executes code named in
a config: only factories registered in this package (or by an explicit `register` call in
user code) can be built.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict

from imgcls.errors import ConfigError


class ComponentArgs(BaseModel):
    """Typed arguments of a registered component (``model.head_args``, ``model.backbone_args``).

    Each head/backbone declares a subclass next to its code (field defaults = the component's
    defaults, ``Field(..., description=...)`` for ``imgcls config show``) and registers it with
    ``@HEADS.register(name, args=ThatArgs)``. Unknown keys are errors.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, arbitrary_types_allowed=True)


class Registry:
    """Maps names to factories; `build(name, **kwargs)` constructs one.

    A name may carry a prefix handled by a *prefix factory*: ``timm:resnet18`` is resolved by
    the factory registered for ``timm:`` with ``name="resnet18"``.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., Any]] = {}
        self._prefixes: dict[str, Callable[..., Any]] = {}
        self._args: dict[str, type[ComponentArgs]] = {}

    def register(
        self, name: str, *, prefix: bool = False, args: type[ComponentArgs] | None = None
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorator(factory: Callable[..., Any]) -> Callable[..., Any]:
            table = self._prefixes if prefix else self._items
            if name in table:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            table[name] = factory
            if args is not None:
                self._args[f"{name}:" if prefix else name] = args
            return factory

        return decorator

    def names(self) -> list[str]:
        return sorted(self._items) + [f"{p}:<name>" for p in sorted(self._prefixes)]

    def __contains__(self, name: str) -> bool:
        try:
            self.get(name)
        except ConfigError:
            return False
        return True

    def get(self, name: str) -> Callable[..., Any]:
        if ":" in name:
            prefix, _, rest = name.partition(":")
            if prefix in self._prefixes and rest:
                factory = self._prefixes[prefix]
                return lambda **kw: factory(name=rest, **kw)
        if name in self._items:
            return self._items[name]
        close = difflib.get_close_matches(name, self.names(), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown {self.kind} '{name}'. Valid: {', '.join(self.names())}.{hint}")

    def args_model(self, name: str) -> type[ComponentArgs] | None:
        """The typed argument model registered for ``name`` (``timm:x`` → the ``timm:`` prefix's), or None."""
        self.get(name)  # unknown names raise with a suggestion
        if ":" in name and name.partition(":")[0] in self._prefixes:
            return self._args.get(name.partition(":")[0] + ":")
        return self._args.get(name)

    def build(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)


BACKBONES = Registry("backbone")
HEADS = Registry("head")
DATASETS = Registry("dataset")
