"""A small name → factory registry used for backbones, heads and datasets.

Configs name components by string; a registry turns the name into a constructor and
suggests the closest valid name on a typo. Nothing here imports or executes code named in
a config: only factories registered in this package (or by an explicit `register` call in
user code) can be built. A registry may name one package of ours (``populate=``) that it
imports on its first lookup, so that the config layer can validate component arguments
(:meth:`Registry.validate_args`) without importing the models itself.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Mapping
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from imgcls.errors import ConfigError, describe_validation_error


class ComponentArgs(BaseModel):
    """Typed arguments of a registered component (``model.head_args``, ``model.backbone_args``).

    Each head/backbone declares a subclass next to its code (field defaults = the component's
    defaults, ``Field(..., description=...)`` for ``imgcls config show``, ranges and literals for
    validation, a ``model_validator`` for rules between fields) and registers it with
    ``@HEADS.register(name, args=ThatArgs)``. Unknown keys are errors. The config validates the
    arguments when it loads; the component validates them again when built directly
    (:meth:`from_init`), so both paths give the same one-line :class:`ConfigError`.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, arbitrary_types_allowed=True)

    @classmethod
    def parse(cls, values: Mapping[str, Any], where: str, keys_label: str | None = None) -> Self:
        """Validate ``values``; a problem becomes one line located at ``where`` (e.g. ``model.head_args``)."""
        try:
            return cls.model_validate(dict(values))
        except ValidationError as exc:
            label = keys_label or f"Valid keys of {where}"
            message = describe_validation_error(
                exc.errors(), where.split("."), lambda _: list(cls.model_fields), label, list_empty=True
            )
            raise ConfigError(message) from None

    @classmethod
    def from_init(cls, component: str, local_vars: Mapping[str, Any]) -> Self:
        """Validate a component's constructor arguments: pass ``locals()`` first thing in ``__init__`` (the
        names that are fields of this model are taken, the others ignored)."""
        return cls.parse({k: v for k, v in local_vars.items() if k in cls.model_fields}, component)

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments the component's constructor receives (every field, defaults included)."""
        return {name: getattr(self, name) for name in type(self).model_fields}


class Registry:
    """Maps names to factories; `build(name, **kwargs)` constructs one.

    A name may carry a prefix handled by a *prefix factory*: ``timm:resnet18`` is resolved by
    the factory registered for ``timm:`` with ``name="resnet18"``.
    """

    def __init__(self, kind: str, populate: str | None = None) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., Any]] = {}
        self._prefixes: dict[str, Callable[..., Any]] = {}
        self._args: dict[str, type[ComponentArgs]] = {}
        #: our own package whose import registers the built-in components (never a name from a config)
        self._populate = populate

    def _ensure_populated(self) -> None:
        if self._populate is not None:
            module, self._populate = self._populate, None
            try:
                importlib.import_module(module)
            except BaseException:
                self._populate = module
                raise

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
        self._ensure_populated()
        return sorted(self._items) + [f"{p}:<name>" for p in sorted(self._prefixes)]

    def __contains__(self, name: str) -> bool:
        try:
            self.get(name)
        except ConfigError:
            return False
        return True

    def get(self, name: str) -> Callable[..., Any]:
        self._ensure_populated()
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

    def validate_args(self, name: str, args: Mapping[str, Any], where: str) -> ComponentArgs | None:
        """``args`` checked against the argument model of ``name`` (None when it has none); a problem is a
        one-line :class:`ConfigError` located at ``where`` (e.g. ``stages.1.head_args``), with the closest
        valid key for a typo."""
        model = self.args_model(name)
        if model is None:
            return None
        return model.parse(args, where, f"Valid keys of {self.kind} '{name}'")

    def resolved_args(self, name: str, args: Mapping[str, Any]) -> dict[str, Any]:
        """``args`` with every default filled in (JSON-compatible values), as ``imgcls config show`` prints."""
        typed = self.validate_args(name, args, f"{self.kind} '{name}'")
        return dict(args) if typed is None else typed.model_dump(mode="json")

    def build(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)


BACKBONES = Registry("backbone", populate="imgcls.models.backbones")
HEADS = Registry("head", populate="imgcls.models.heads")
DATASETS = Registry("dataset")
