"""``OperationProxy``: record attribute reads, subscriptions and calls as an operation chain."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._chain import GET_OPS, NO_ARGUMENTS, ItemOp, Operation, OperationChain, call_op
from ._errors import MixedRootsError

if TYPE_CHECKING:
    from typing import Self

_new = object.__new__


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
        return self._proxy_derive(GET_OPS[name])

    def __getitem__(self, key: Any) -> Self:
        return self._proxy_derive(ItemOp(self._proxy_argument(key)))

    def __call__(self, *args: Any, **kwargs: Any) -> Self:
        if not args and not kwargs:
            return self._proxy_derive(NO_ARGUMENTS)
        if (args and _has_proxy(args)) or (kwargs and _has_proxy(kwargs.values())):
            convert = self._proxy_argument
            args = tuple([convert(a) for a in args])
            kwargs = {k: convert(v) for k, v in kwargs.items()}
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

    def _proxy_argument(self, value: Any) -> Any:
        """Turn proxies inside an argument into chains, checking they share this root."""
        kind = type(value)
        if kind is list:
            return [self._proxy_argument(v) for v in value] if _has_proxy(value) else value
        if kind is tuple:
            return tuple([self._proxy_argument(v) for v in value]) if _has_proxy(value) else value
        if kind is dict:
            if not _has_proxy(value.values()):
                return value
            return {k: self._proxy_argument(v) for k, v in value.items()}
        if isinstance(value, OperationProxy):
            if value._proxy_root is not self._proxy_root:
                raise MixedRootsError(
                    f"the proxy {value!r} belongs to another root than the chain it is used in;"
                    " record every part of one chain on the same proxy"
                )
            return chain_of(value)
        return value


def _has_proxy(values: Any) -> bool:
    for v in values:
        kind = type(v)
        if kind is list or kind is tuple:
            if _has_proxy(v):
                return True
        elif kind is dict:
            if _has_proxy(v.values()):
                return True
        elif isinstance(v, OperationProxy):
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
