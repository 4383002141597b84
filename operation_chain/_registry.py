"""Names for the user types the codec may rebuild: dataclasses, pydantic models, enums and
exceptions.

Decoding never imports anything by a name found in the data; it rebuilds only classes that
were registered here, under the name both sides agreed on.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, TypeVar, overload

from pydantic import BaseModel

T = TypeVar("T", bound=type[Any])


class TypeRegistry:
    """A two-way map between registered classes and their wire names."""

    def __init__(self) -> None:
        self._by_name: dict[str, type[Any]] = {}
        self._by_type: dict[type[Any], str] = {}

    def add(self, cls: type[Any], name: str | None = None) -> None:
        """Register ``cls`` under ``name`` (default ``module.QualName``).

        Raises:
            TypeError: ``cls`` is not a dataclass, pydantic model, enum or exception class.
            ValueError: the name is taken by another class, or the class has another name.
        """
        if not _is_registrable(cls):
            raise TypeError(
                f"register_type() takes a dataclass, pydantic model, Enum or exception class,"
                f" not {cls!r}"
            )
        wire_name = name if name is not None else f"{cls.__module__}.{cls.__qualname__}"
        if not isinstance(wire_name, str) or not wire_name:
            raise ValueError("a registered type's name must be a non-empty string")
        taken = self._by_name.get(wire_name)
        if taken is not None and taken is not cls:
            raise ValueError(f"the codec name {wire_name!r} is already registered for {taken!r}")
        known = self._by_type.get(cls)
        if known is not None and known != wire_name:
            raise ValueError(f"{cls!r} is already registered as {known!r}")
        self._by_name[wire_name] = cls
        self._by_type[cls] = wire_name

    def name_of(self, cls: type[Any]) -> str | None:
        """The wire name of a registered class, or ``None``."""
        return self._by_type.get(cls)

    def type_named(self, name: str) -> type[Any] | None:
        """The class registered under ``name``, or ``None``."""
        return self._by_name.get(name)


_FIELDS: dict[type[Any], dict[str, dataclasses.Field[Any]]] = {}


def dataclass_fields(cls: type[Any]) -> dict[str, dataclasses.Field[Any]]:
    """The fields of a registered dataclass by name, looked up once per class: every
    encoding and decoding of one needs them, and ``dataclasses.fields`` builds them anew
    each time. Only registered classes get here, and the registry keeps them alive anyway."""
    fields = _FIELDS.get(cls)
    if fields is None:
        fields = _FIELDS[cls] = {spec.name: spec for spec in dataclasses.fields(cls)}
    return fields


def _is_registrable(cls: object) -> bool:
    if not isinstance(cls, type):
        return False
    return dataclasses.is_dataclass(cls) or issubclass(cls, (BaseModel, enum.Enum, BaseException))


DEFAULT_REGISTRY = TypeRegistry()


@overload
def register_type(cls: T, /, *, name: str | None = None) -> T: ...
@overload
def register_type(*, name: str | None = None) -> Any: ...
def register_type(cls: Any = None, /, *, name: str | None = None) -> Any:
    """Allow the codec to encode and rebuild a dataclass, pydantic model, enum or exception.

    Usable as ``register_type(Point)`` or as a decorator, ``@register_type`` or
    ``@register_type(name="shop.Order")``. Both sides of a wire must register the class under
    the same name; the default is ``module.QualName``, so pass ``name=`` for a name that
    survives moving the class.
    """
    if cls is None:

        def decorate(target: T) -> T:
            DEFAULT_REGISTRY.add(target, name)
            return target

        return decorate
    DEFAULT_REGISTRY.add(cls, name)
    return cls
