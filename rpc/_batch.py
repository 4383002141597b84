"""Turning the calls of one event-loop tick into one batch, with pipelined references.

A call's proxy passed, unawaited, as an argument of another call is recorded by the proxy as
a nested chain. Inside one chain the executor already runs a nested chain once, in the same
turn. Across the calls of a batch it would run once per call, so a nested chain that appears
in two or more calls of the batch, or that is itself awaited in the batch, is *hoisted*: sent
as a call of its own, before the calls that use it, and replaced in them by a ``CallRef``
(see ``_messages``). The server runs it once and substitutes its result.

The same chain object awaited twice in a batch is sent once and settles both awaits.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from operation_chain import CHAIN_VERSION, ChainValidationError, OperationChain, encode

from ._graph import ValueGraph, has_values
from ._messages import WIRE_VERSION, CallRef


@dataclass(slots=True, eq=False)
class PendingCall:
    """One awaited proxy: its chain and the future its ``await`` is waiting on."""

    chain: OperationChain
    future: asyncio.Future[Any]


@dataclass(slots=True)
class Plan:
    """A batch ready to send, and how its answer maps back to the awaiting calls.

    Attributes:
        payload: the batch envelope, a JSON-compatible tree.
        waiting: for each wire id sent with ``reply``, the calls its result settles.
        needs: for each wire id, the wire ids of the calls it refers to.
        failed: calls that could not be sent (an argument the codec cannot encode, or a
            call they depend on that could not be), with the error to settle them with.
    """

    payload: dict[str, Any]
    waiting: dict[int, list[PendingCall]] = field(default_factory=dict)
    needs: dict[int, set[int]] = field(default_factory=dict)
    failed: list[tuple[PendingCall, Exception]] = field(default_factory=list)

    def dependents(self, wire_ids: set[int]) -> set[int]:
        """``wire_ids`` and every wire id that refers to one of them, directly or not."""
        found = set(wire_ids)
        changed = True
        while changed:
            changed = False
            for wire_id, needed in self.needs.items():
                if wire_id not in found and needed & found:
                    found.add(wire_id)
                    changed = True
        return found


def chain_form(chain: OperationChain) -> dict[str, Any]:
    """The chain's versioned JSON form as a tree, raising the codec's own errors."""
    tree = encode(chain)
    ops = tree.get("$chain") if type(tree) is dict else None
    if ops is None:  # a chain reachable from its own arguments is wrapped in "$id"
        raise ChainValidationError("a chain that contains itself cannot be sent")
    return {"v": CHAIN_VERSION, "ops": ops}


def plan_batch(calls: list[PendingCall]) -> Plan:
    """Number the calls, hoist shared nested chains, and encode everything."""
    if len(calls) > 1:
        return _Planner(calls).plan()
    # One call, the common case: nothing to share or hoist.
    (call,) = calls
    plan = Plan({"v": WIRE_VERSION, "calls": []})
    try:
        form = chain_form(call.chain)
    except Exception as exc:  # the codec's refusal of an argument, with its path
        plan.failed.append((call, exc))
        return plan
    plan.payload["calls"].append({"id": 0, "chain": form})
    plan.waiting[0] = [call]
    plan.needs[0] = set()
    return plan


class _Planner:
    __slots__ = ("errors", "hoisted", "ids", "plan_", "tops", "wire_calls")

    def __init__(self, calls: list[PendingCall]) -> None:
        self.tops: dict[int, list[PendingCall]] = {}
        for call in calls:
            self.tops.setdefault(id(call.chain), []).append(call)
        self.hoisted = self._hoisted([group[0].chain for group in self.tops.values()])
        self.ids: dict[int, int] = {}
        self.errors: dict[int, Exception] = {}
        self.wire_calls: list[dict[str, Any]] = []
        self.plan_ = Plan({"v": WIRE_VERSION, "calls": self.wire_calls})

    def _hoisted(self, chains: list[OperationChain]) -> set[int]:
        """The nested chains used by two or more calls, or awaited themselves."""
        uses: dict[int, int] = {}
        for chain in chains:
            if not has_values(chain):
                continue
            for nested in ValueGraph(chain).chains:
                uses[id(nested)] = uses.get(id(nested), 0) + 1
        return {key for key, count in uses.items() if count > 1 or key in self.tops}

    def plan(self) -> Plan:
        for key, group in self.tops.items():
            self._emit(group[0].chain)
            if key in self.ids:
                self.plan_.waiting[self.ids[key]] = group
            else:
                self.plan_.failed += [(call, self.errors[key]) for call in group]
        return self.plan_

    def _emit(self, chain: OperationChain) -> None:
        """Add ``chain`` as a wire call after the hoisted chains it needs; once per chain."""
        key = id(chain)
        if key in self.ids or key in self.errors:
            return
        hoisted = self.hoisted
        graph = ValueGraph(chain, stop=lambda nested: id(nested) in hoisted) if hoisted else None
        needed = [c for c in graph.chains if id(c) in hoisted] if graph is not None else []
        refs: dict[int, CallRef] = {}
        for dependency in needed:
            self._emit(dependency)
            if id(dependency) in self.errors:
                self.errors[key] = self.errors[id(dependency)]
                return
            refs[id(dependency)] = CallRef(self.ids[id(dependency)])
        sent = graph.replace(refs) if graph is not None and refs else chain
        try:
            form = chain_form(sent)
        except Exception as exc:  # the codec's refusal of an argument, with its path
            self.errors[key] = exc
            return
        wire_id = len(self.wire_calls)
        self.ids[key] = wire_id
        wire_call: dict[str, Any] = {"id": wire_id, "chain": form}
        if key not in self.tops:
            wire_call["reply"] = False
        self.wire_calls.append(wire_call)
        self.plan_.needs[wire_id] = {ref.call for ref in refs.values()}
