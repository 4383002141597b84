"""``ActorRef``: a proxy whose awaited method calls run as turns of one actor."""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from operation_chain import OperationProxy, chain_of

if TYPE_CHECKING:
    from ._system import ActorSystem


class ActorRef(OperationProxy):
    """Returned by ``system.get(ActorClass, "id")``: ``await ref.increment(2)``.

    Each awaited expression is one chain and runs as one turn (``await ref.rooms.get("a")
    .post("hi")`` runs entirely inside the actor's turn); the await returns once the turn's
    effects are durable.
    """

    __slots__ = ("_ref_binding", "_ref_instance", "_ref_system")

    _ref_system: ActorSystem
    _ref_binding: str
    _ref_instance: str

    def __init__(self, system: ActorSystem, binding: str, instance: str) -> None:
        super().__init__()
        self._ref_system = system
        self._ref_binding = binding
        self._ref_instance = instance

    def __await__(self) -> Generator[Any, None, Any]:
        root = self._proxy_root
        assert isinstance(root, ActorRef)
        if root is self:
            raise TypeError("await a method call or attribute of the ref, not the ref itself")
        call = root._ref_system.call(root._ref_binding, root._ref_instance, chain_of(self))
        return call.__await__()

    def __repr__(self) -> str:
        root = self._proxy_root
        assert isinstance(root, ActorRef)
        where = f"{root._ref_binding}/{root._ref_instance}"
        return f"ActorRef({where})" if root is self else f"ActorRef({where}: {chain_of(self)})"
