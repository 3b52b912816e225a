"""A small name → factory registry used for backbones, heads and datasets.

Configs name components by string; a registry turns the name into a constructor and
suggests the closest valid name on a typo. Nothing here imports or executes code named in
a config: only factories registered in this package (or by an explicit `register` call in
user code) can be built. A registry may name one package of ours (``populate=``) that it
imports on its first lookup, so that the config layer can validate component arguments
(:meth:`Registry.validate_args`) without importing the models itself.

Argument models and the experiment config share two validation helpers defined here (the lowest
layer both import): NaN/inf are refused everywhere (:func:`first_nonfinite` for untyped values), and
a numeric error names the field's whole allowed range (:func:`with_allowed_ranges`).
"""

from __future__ import annotations

import difflib
import importlib
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal, Self, Union

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo

from imgcls.errors import ConfigError, describe_validation_error

#: pydantic errors about a number that name no bound (a NaN/inf, a string), to which
#: :func:`with_allowed_ranges` adds the field's range; a bound error already names the bound crossed
NUMBER_ERRORS = frozenset(
    {"finite_number", "int_parsing", "int_from_float", "int_type", "float_parsing", "float_type"}
)


def _children(value: Any) -> Iterable[tuple[Any, Any]]:
    """``(key, item)`` of a mapping's items or a list's/tuple's entries (none for anything else)."""
    if isinstance(value, Mapping):
        return value.items()
    if isinstance(value, (list, tuple)):
        return enumerate(value)
    return ()


def first_nonfinite(value: Any, path: str = "") -> tuple[str, float] | None:
    """``(dotted location, value)`` of the first NaN/inf float inside ``value`` (nested mappings, lists and
    tuples), or None: for untyped values (``Any``) that pydantic's ``allow_inf_nan=False`` does not see."""
    if isinstance(value, float) and not math.isfinite(value):
        return path, value
    for key, item in _children(value):
        found = first_nonfinite(item, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None


def _numeric_slot(annotation: Any) -> bool:
    """Whether ``annotation`` takes a number but no boolean (``float``, ``int | None``, ``Literal[1, 2]``)."""
    annotation, _ = _unwrap(annotation)
    members = (
        typing.get_args(annotation)
        if typing.get_origin(annotation) in (Union, types.UnionType)
        else (annotation,)
    )
    kinds: list[Any] = []
    for member in members:
        member, _ = _unwrap(member)
        if typing.get_origin(member) is Literal:
            kinds.extend(type(v) for v in typing.get_args(member))
        else:
            kinds.append(member)
    return bool not in kinds and any(kind in (int, float) for kind in kinds)


def first_bool_as_number(annotation: Any, value: Any, path: str = "") -> str | None:
    """The dotted location inside ``value`` (``''``: the value itself) of the first boolean that ``annotation``
    would turn into a number (pydantic's lax mode reads true as 1 and 1.0), or None. Lists, tuples and
    mappings are followed; nested models check their own fields, untyped values (``Any``) take anything."""
    if isinstance(value, bool):
        return path if _numeric_slot(annotation) else None
    annotation, _ = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return None
    for key, item in _children(value):
        below = _step(annotation, key)
        found = (
            None
            if below is None
            else first_bool_as_number(below[0], item, f"{path}.{key}" if path else str(key))
        )
        if found is not None:
            return found
    return None


def refuse_bool_as_number(model: type[BaseModel], field: str | None, value: Any) -> Any:
    """``value`` unchanged, unless it (or an item of it) is a boolean where ``model.field`` takes a number:
    then a ValueError that says so (configs use true/false for on/off fields only). For a before-validator."""
    info = model.model_fields.get(field or "")
    found = None if info is None else first_bool_as_number(info.annotation, value)
    if found is None:
        return value
    span = allowed_range(model, [field, *found.split(".")] if found else [field])
    where = f"item {found} is" if found else "got"
    allowed = f" (allowed: {span})" if span else ""
    raise ValueError(f"{where} a boolean (true/false), which is not a number here; write a number{allowed}")


def _unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    """``(type, constraints)`` of an annotation: ``Annotated`` metadata collected, ``X | None`` → X."""
    metadata: list[Any] = []
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation, *extra = typing.get_args(annotation)
            for item in extra:
                metadata.extend(item.metadata if isinstance(item, FieldInfo) else [item])
        elif origin in (Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation, metadata
            annotation = members[0]
        else:
            return annotation, metadata


def _step(annotation: Any, part: str | int) -> tuple[Any, list[Any]] | None:
    """The annotation (and constraints) one location ``part`` below ``annotation``, or None if unknown."""
    annotation, _ = _unwrap(annotation)
    fields = getattr(annotation, "model_fields", None) if isinstance(annotation, type) else None
    if fields is not None:
        info = fields.get(str(part))
        return None if info is None else _unwrap_field(info)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (list, set, frozenset, Sequence) and args:
        return _unwrap(args[0])
    if origin is tuple and args:
        if len(args) == 2 and args[1] is Ellipsis:
            return _unwrap(args[0])
        index = int(part) if str(part).isdigit() else -1
        return _unwrap(args[index]) if 0 <= index < len(args) else None
    if origin in (dict, Mapping) and len(args) == 2:
        return _unwrap(args[1])
    return None


def _unwrap_field(info: FieldInfo) -> tuple[Any, list[Any]]:
    annotation, metadata = _unwrap(info.annotation)
    return annotation, [*info.metadata, *metadata]


def allowed_range(model: type[BaseModel], loc: Sequence[str | int]) -> str:
    """The numeric range allowed at ``loc`` inside ``model`` (``0 <= value < 1``, ``value > 0``), or ''."""
    current: tuple[Any, list[Any]] | None = (model, [])
    for part in loc:
        current = _step(current[0], part)
        if current is None:
            return ""
    low = high = None
    for constraint in current[1]:  # annotated_types' Gt/Ge/Lt/Le (an Interval has several)
        for name, op in (("gt", "<"), ("ge", "<=")):
            if getattr(constraint, name, None) is not None:
                low = (op, getattr(constraint, name))
        for name, op in (("lt", "<"), ("le", "<=")):
            if getattr(constraint, name, None) is not None:
                high = (op, getattr(constraint, name))
    if low and high:
        return f"{_number(low[1])} {low[0]} value {high[0]} {_number(high[1])}"
    if low:
        return f"value {low[0].replace('<', '>')} {_number(low[1])}"
    if high:
        return f"value {high[0]} {_number(high[1])}"
    return ""


def _number(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def with_allowed_ranges(errors: list[dict], model: type[BaseModel]) -> list[dict]:
    """pydantic ``errors`` of ``model`` with the field's allowed range appended to each error about a number
    that names no bound (``Input should be a finite number (allowed: value > 0)``)."""
    out = []
    for err in errors:
        span = allowed_range(model, err["loc"]) if err["type"] in NUMBER_ERRORS else ""
        out.append({**err, "msg": f"{err['msg']} (allowed: {span})"} if span else err)
    return out


class ComponentArgs(BaseModel):
    """Typed arguments of a registered component (``model.head_args``, ``model.backbone_args``).

    Each head/backbone declares a subclass next to its code (field defaults = the component's
    defaults, ``Field(..., description=...)`` for ``imgcls config show``, ranges and literals for
    validation, a ``model_validator`` for rules between fields) and registers it with
    ``@HEADS.register(name, args=ThatArgs)``. Unknown keys are errors. The config validates the
    arguments when it loads; the component validates them again when built directly
    (:meth:`from_init`), so both paths give the same one-line :class:`ConfigError`.
    """

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, arbitrary_types_allowed=True, allow_inf_nan=False
    )

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, value: Any, info: ValidationInfo) -> Any:
        return refuse_bool_as_number(cls, info.field_name, value)

    @model_validator(mode="after")
    def _finite_extras(self) -> Self:
        """Untyped extra arguments (``extra="allow"`` models such as timm's) may not hold NaN/inf either."""
        found = first_nonfinite(self.model_extra or {})
        if found is not None:
            raise ValueError(f"{found[0]} is {found[1]}; use a finite number")
        return self

    @classmethod
    def parse(cls, values: Mapping[str, Any], where: str, keys_label: str | None = None) -> Self:
        """Validate ``values``; a problem becomes one line located at ``where`` (e.g. ``model.head_args``)."""
        try:
            return cls.model_validate(dict(values))
        except ValidationError as exc:
            label = keys_label or f"Valid keys of {where}"
            message = describe_validation_error(
                with_allowed_ranges(exc.errors(), cls),
                where.split("."),
                lambda _: list(cls.model_fields),
                label,
                list_empty=True,
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
