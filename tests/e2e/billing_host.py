"""A second host for the two-process remote-call test: ``Billing`` served over RPC.

python -m continuation serve tests/e2e/billing_host.py:create_system --db FILE
"""

from __future__ import annotations

from continuation import Actor, ActorSystem


class Billing(Actor):
    def charge(self, amount: int) -> str:
        if amount < 0:
            raise ValueError(f"cannot charge {amount}")
        self.storage.put("charged", self.storage.get("charged", 0) + amount)
        self.storage.put("charges", self.storage.get("charges", 0) + 1)
        return f"receipt-{amount}"

    def totals(self) -> tuple[int, int]:
        return self.storage.get("charged", 0), self.storage.get("charges", 0)


def create_system(database: str = "billing.db") -> ActorSystem:
    return ActorSystem(database, actors=[Billing])
