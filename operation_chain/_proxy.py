"""``OperationProxy``: record attribute reads, subscriptions and calls as an operation chain."""

from __future__ import annotations

from types import NoneType
from typing import TYPE_CHECKING, Any, Final

from ._chain import GET_OPS, NO_ARGUMENTS, ItemOp, Operation, OperationChain, call_op
from ._errors import MixedRootsError

if TYPE_CHECKING:
    from typing import Self

_new = object.__new__

_SCALARS: Final = frozenset({NoneType, bool, int, float, str, bytes})


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
        child = _new(type(self))
        child._proxy_root = self._proxy_root
        child._proxy_ops = (*self._proxy_ops, op)
        child._proxy_chain = None
        return child

    def __getattr__(self, name: str) -> Self:
        if name[0] == "_" and name[:2] == "__" and name[-2:] == "__":
            raise AttributeError(name)
        # _proxy_derive, inlined: attribute reads are the commonest step.
        child = _new(type(self))
        child._proxy_root = self._proxy_root
        child._proxy_ops = (*self._proxy_ops, GET_OPS[name])
        child._proxy_chain = None
        return child

    def __getitem__(self, key: Any) -> Self:
        if type(key) in _SCALARS or not _has_proxy((key,)):
            return self._proxy_derive(ItemOp(key))
        return self._proxy_derive(ItemOp(_Arguments(self._proxy_root).convert(key)))

    def __call__(self, *args: Any, **kwargs: Any) -> Self:
        if kwargs:
            if _has_proxy(args) or _has_proxy(kwargs.values()):
                convert = _Arguments(self._proxy_root).convert
                args = tuple([convert(a) for a in args])
                kwargs = {k: convert(v) for k, v in kwargs.items()}
        elif not args:
            return self._proxy_derive(NO_ARGUMENTS)
        elif _has_proxy(args):
            args = _convert_args(self._proxy_root, args)
        return self._proxy_derive(call_op(args, kwargs))

    def __iter__(self) -> Any:
        # Without this, __getitem__ would make ``list(proxy)`` record p[0], p[1], ... forever.
        raise TypeError("an OperationProxy is not iterable")

    def __contains__(self, item: object) -> bool:
        raise TypeError("an OperationProxy does not support 'in'")

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(chain_of(self))!r})"


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
            if value._proxy_root is not self.root:
                raise MixedRootsError(
                    f"the proxy {value!r} belongs to another root than the chain it is used in;"
                    " record every part of one chain on the same proxy"
                )
            return chain_of(value)
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
    on each, but quick for proxies passed directly, as pipelined calls are."""
    arguments: _Arguments | None = None
    out: list[Any] = []
    for value in values:
        if type(value) in _SCALARS:
            out.append(value)
        elif isinstance(value, OperationProxy) and value._proxy_root is root:
            out.append(chain_of(value))
        else:
            if arguments is None:
                arguments = _Arguments(root)
            out.append(arguments.convert(value))
    return tuple(out)


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
        elif kind not in _SCALARS and isinstance(v, OperationProxy):
            return True
    return False


def chain_of(proxy: OperationProxy) -> OperationChain:
    """The chain a proxy recorded, from its root to it.

    The result is cached on the proxy, so a proxy used twice yields the same chain object;
    executors and the codec rely on that identity to run a shared argument once.
    """
    if not isinstance(proxy, OperationProxy):
        raise TypeError(f"chain_of() takes an OperationProxy, not {type(proxy).__name__}")
    chain = proxy._proxy_chain
    if chain is None:
        chain = proxy._proxy_chain = OperationChain._build(proxy._proxy_ops)
    return chain
