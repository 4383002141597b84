"""``OperationProxy``: record attribute reads, subscriptions and calls as an operation chain."""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType, NoneType
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

from ._chain import GET_OPS, NO_ARGUMENTS, ItemOp, Operation, OperationChain, call_op
from ._errors import MixedRootsError
from ._markers import Marker

if TYPE_CHECKING:
    from typing import Self

_new = object.__new__
_get_attribute = object.__getattribute__
_P = TypeVar("_P", bound="OperationProxy")

# Argument types that never are or hold a proxy: scalars, and the markers (c.result in
# nearly every handler chain), which are passed as they are.
_NO_PROXY: Final = frozenset({NoneType, bool, int, float, str, bytes, Marker})

# The slot descriptors of ``type`` itself, read without running any user code.
_type_mro: Final = type.__dict__["__mro__"].__get__
_type_namespace: Final = type.__dict__["__dict__"].__get__


def _read_attribute(self: OperationProxy, name: str) -> Any:
    """``OperationProxy.__getattribute__``: normal lookup, with a shortcut for the names that
    ``__getattr__`` would record.

    Python calls ``__getattr__`` only once the normal lookup has failed, and before 3.12 that
    failure builds an ``AttributeError`` with a formatted message, which costs more than the
    recording itself. A public name that no class along the MRO defines cannot be found by
    normal lookup when the instances have no ``__dict__``, so when ``__getattr__`` is this
    class's own, the read is recorded here at once. Anything else takes the normal lookup and,
    if it fails, ``__getattr__`` (a subclass's own included), exactly as without this method.
    Code in this module reads the proxy's slots through their descriptors, not through here.
    """
    if name[0] != "_":
        cls = type(self)
        entry = _NAMESPACES.get(cls)
        if entry is None or entry[0] is not _type_mro(cls):
            entry = _namespaces(cls)
        if entry[1] is not None and cls.__getattr__ is _record_read:
            for namespace in entry[1]:
                if name in namespace:
                    break
            else:
                # _derive, inlined: attribute reads are the commonest step.
                child = _new(cls)
                child._proxy_root = _root_of(self)
                child._proxy_ops = (*_ops_of(self), GET_OPS[name])
                child._proxy_chain = None
                return child
    return _get_attribute(self, name)


class OperationProxy:
    """Records what is done to it: ``p.a(1).b[2]`` records get, call, get, item.

    Every step returns a new proxy; nothing runs. ``chain_of(proxy)`` extracts the record.
    A proxy passed as an argument becomes a nested chain, executed against the same target
    before the outer call; the same unawaited proxy passed twice runs once, and both places
    receive the same object, as a Python variable would.

    Assigning attributes is refused (the class has slots only), since it could not be
    recorded. Dunder names are not recorded (they raise ``AttributeError``), so copy, pickle and
    introspection tools that probe for them do not silently build chains. Subclasses may
    define class attributes (as ``Continuation`` does for ``result`` and ``error``); only
    names that normal lookup does not find are recorded.
    """

    __slots__ = ("_proxy_chain", "_proxy_ops", "_proxy_root")

    _proxy_root: OperationProxy
    _proxy_ops: tuple[Operation, ...]
    _proxy_chain: OperationChain | None

    def __init__(self) -> None:
        self._proxy_root = self
        self._proxy_ops = ()
        self._proxy_chain = None

    def _proxy_derive(self, op: Operation) -> Self:
        """A child proxy of the same type and root, one operation further along."""
        return _derive(self, op)

    def __getattr__(self, name: str) -> Self:
        if name[0] == "_" and name[:2] == "__" and name[-2:] == "__":
            raise AttributeError(name)
        return _derive(self, GET_OPS[name])

    if not TYPE_CHECKING:  # pragma: no branch
        # Hidden from type checkers, which would otherwise type every recorded read by its
        # return type rather than by ``__getattr__``'s.
        __getattribute__ = _read_attribute

    def __getitem__(self, key: Any) -> Self:
        if type(key) in _NO_PROXY or not _has_proxy((key,)):
            return _derive(self, ItemOp(key))
        return _derive(self, ItemOp(_Arguments(_root_of(self)).convert(key)))

    def __call__(self, *args: Any, **kwargs: Any) -> Self:
        if kwargs:
            if _has_proxy(args) or _has_proxy(kwargs.values()):
                convert = _Arguments(_root_of(self)).convert
                args = tuple([convert(a) for a in args])
                kwargs = {k: convert(v) for k, v in kwargs.items()}
        elif not args:
            return _derive(self, NO_ARGUMENTS)
        else:
            for value in args:
                if type(value) not in _NO_PROXY:
                    args = _convert_args(_root_of(self), args)
                    break
        # _derive, inlined: calls are the other common step.
        child = _new(type(self))
        child._proxy_root = _root_of(self)
        child._proxy_ops = (*_ops_of(self), call_op(args, kwargs))
        child._proxy_chain = None
        return child

    def __iter__(self) -> Any:
        # Without this, __getitem__ would make ``list(proxy)`` record p[0], p[1], ... forever.
        raise TypeError("an OperationProxy is not iterable")

    def __contains__(self, item: object) -> bool:
        raise TypeError("an OperationProxy does not support 'in'")

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(chain_of(self))!r})"


# The proxy's own slots, read through their descriptors: ``__getattribute__`` is Python code,
# and these reads are on every recorded step.
_root_of: Final = cast(
    "Callable[[OperationProxy], OperationProxy]", OperationProxy.__dict__["_proxy_root"].__get__
)
_ops_of: Final = cast(
    "Callable[[OperationProxy], tuple[Operation, ...]]",
    OperationProxy.__dict__["_proxy_ops"].__get__,
)
_chain_slot: Final = OperationProxy.__dict__["_proxy_chain"]
_cached_chain_of: Final = cast(
    "Callable[[OperationProxy], OperationChain | None]", _chain_slot.__get__
)
_build_chain: Final = OperationChain._build
_record_read: Final = OperationProxy.__dict__["__getattr__"]
_cache_chain: Final = cast("Callable[[OperationProxy, OperationChain], None]", _chain_slot.__set__)


def _derive(parent: _P, op: Operation) -> _P:
    """A child proxy of the parent's type and root, one operation further along."""
    child = _new(type(parent))
    child._proxy_root = _root_of(parent)
    child._proxy_ops = (*_ops_of(parent), op)
    child._proxy_chain = None
    return child


_NamespacesEntry = tuple[tuple[type, ...], tuple[MappingProxyType[str, Any], ...] | None]
_NAMESPACES: Final[dict[type, _NamespacesEntry]] = {}
_NAMESPACES_LIMIT: Final = 1024  # bounded because classes can be made at run time


def _namespaces(cls: type) -> _NamespacesEntry:
    """The MRO of ``cls`` and the live namespaces where normal lookup looks for a public name
    on its instances.

    The namespaces are ``None`` when the instances have a ``__dict__``, which can hold any
    name. ``object``'s namespace is left out: it holds no public name and cannot change. The
    namespaces are views, so a class attribute added later is seen; the entry is keyed to the
    MRO, which changes when ``__bases__`` is assigned.
    """
    mro = _type_mro(cls)
    namespaces = (
        None
        if cls.__dictoffset__
        else tuple([_type_namespace(base) for base in mro if base is not object])
    )
    entry = (mro, namespaces)
    if len(_NAMESPACES) < _NAMESPACES_LIMIT:
        _NAMESPACES[cls] = entry
    return entry


class _Arguments:
    """One conversion of a call's arguments: proxies inside them become their chains.

    Only containers that hold a proxy are rebuilt. Each is rebuilt once, so a container
    shared between arguments, or one that contains itself, keeps that shape in the recorded
    arguments, as the codec and the executor keep it later.
    """

    __slots__ = ("built", "root")

    def __init__(self, root: OperationProxy) -> None:
        self.root = root
        self.built: dict[int, Any] = {}  # id of a rebuilt container -> its copy

    def convert(self, value: Any) -> Any:
        kind = type(value)
        if kind is list or kind is tuple or kind is dict:
            return self._container(value, kind)
        if isinstance(value, OperationProxy):
            if _root_of(value) is not self.root:
                raise MixedRootsError(
                    f"the proxy {value!r} belongs to another root than the chain it is used in;"
                    " record every part of one chain on the same proxy"
                )
            return _chain_of(value)
        return value

    def _container(self, value: Any, kind: type) -> Any:
        key = id(value)
        if key in self.built:
            return self.built[key]
        if not _has_proxy(value.values() if kind is dict else value):
            self.built[key] = value
            return value
        convert = self.convert
        if kind is list:
            new_list: list[Any] = []
            self.built[key] = new_list  # before the items, so that a cycle finds the copy
            new_list.extend([convert(item) for item in value])
            return new_list
        if kind is dict:
            new_dict: dict[Any, Any] = {}
            self.built[key] = new_dict
            for name, item in value.items():
                new_dict[name] = convert(item)
            return new_dict
        # A tuple reaches itself only through a list or dict, registered above; if that path
        # already converted this tuple, keep that copy.
        return self.built.setdefault(key, tuple([convert(item) for item in value]))


def _convert_args(root: OperationProxy, values: tuple[Any, ...]) -> tuple[Any, ...]:
    """Positional arguments with their proxies turned into chains: ``_Arguments.convert``
    on each, but quick for proxies passed directly, as pipelined calls are. ``values``
    itself when it holds no proxy."""
    arguments: _Arguments | None = None
    out: list[Any] = []
    changed = False
    for value in values:
        if type(value) in _NO_PROXY:
            out.append(value)
        elif isinstance(value, OperationProxy) and _root_of(value) is root:
            out.append(_chain_of(value))
            changed = True
        else:
            if arguments is None:
                arguments = _Arguments(root)
            converted = arguments.convert(value)
            out.append(converted)
            changed = changed or converted is not value
    return tuple(out) if changed else values


def _has_proxy(values: Any, seen: set[int] | None = None) -> bool:
    """Whether a proxy is among ``values`` or inside their lists, tuples and dict values."""
    for v in values:
        kind = type(v)
        if kind is list or kind is tuple or kind is dict:
            if seen is None:
                seen = set()
            elif id(v) in seen:
                continue  # met before: shared, or a cycle back to a container being searched
            seen.add(id(v))
            if _has_proxy(v.values() if kind is dict else v, seen):
                return True
        elif kind not in _NO_PROXY and isinstance(v, OperationProxy):
            return True
    return False


def chain_of(proxy: OperationProxy) -> OperationChain:
    """The chain a proxy recorded, from its root to it.

    The result is cached on the proxy, so a proxy used twice yields the same chain object;
    executors and the codec rely on that identity to run a shared argument once.
    """
    if not isinstance(proxy, OperationProxy):
        raise TypeError(f"chain_of() takes an OperationProxy, not {type(proxy).__name__}")
    return _chain_of(proxy)


def _chain_of(proxy: OperationProxy) -> OperationChain:
    """``chain_of`` for a proxy known to be one."""
    chain = _cached_chain_of(proxy)
    if chain is None:
        chain = _build_chain(_ops_of(proxy))
        _cache_chain(proxy, chain)
    return chain
