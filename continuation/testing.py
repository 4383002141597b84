"""Helpers for testing actors: a manual clock, so time-based tests never sleep.

```python
from continuation.testing import ManualClock

async with ActorSystem(":memory:", actors=[Reminder], clock=ManualClock()) as system:
    await system.get(Reminder, "r").remind("stretch")
    await system.advance(60)      # the alarm fires here, with the clock at its due time
```
"""

from __future__ import annotations

from ._clock import ManualClock

__all__ = ["ManualClock"]
