"""A tour of operation chains: record a call, send it as JSON, run it later.

    python docs/examples/chains_demo.py

This is what the continuation and rpc packages do under the hood: a chain is recorded on a
proxy, travels or waits as versioned JSON, and is replayed against a real object with the
result of slow work injected where ``RESULT`` stood.
"""

from __future__ import annotations

import datetime as dt

from operation_chain import (
    RESULT,
    ChainSecurityError,
    OperationChain,
    OperationProxy,
    chain_of,
    execute_operation_chain,
)


class Reminders:
    """A tiny stand-in for an actor: state plus short, synchronous methods."""

    def __init__(self) -> None:
        self.delivered: list[str] = []

    def deliver(self, text: str, fired_at: dt.datetime) -> str:
        line = f"{fired_at:%H:%M} {text}"
        self.delivered.append(line)
        return line

    def drop_all(self) -> None:
        self.delivered.clear()


def main() -> None:
    p = OperationProxy()
    chain = chain_of(p.deliver("stretch your legs", RESULT))
    wire = chain.to_json()
    print(f"recorded:  {chain}")
    print(f"as JSON:   {wire.decode()}")

    later = OperationChain.from_json(wire)
    reminders = Reminders()
    fired = dt.datetime(2026, 11, 21, 15, 0, tzinfo=dt.UTC)
    print(f"replayed:  {execute_operation_chain(reminders, later, inject={'result': fired})}")

    forged = OperationChain.from_json(
        b'{"v":1,"ops":[{"op":"get","name":"__class__"},{"op":"call","args":[],"kwargs":{}}]}'
    )
    try:
        execute_operation_chain(reminders, forged)
    except ChainSecurityError as exc:
        print(f"refused:   {exc}")
    print(f"state:     {reminders.delivered}")


if __name__ == "__main__":
    main()
