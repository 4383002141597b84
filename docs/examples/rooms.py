"""Chat rooms: actors that keep messages, push them to members, and schedule reminders.

Serve it over RPC (HTTP and WebSocket) on SQLite, with its scheduler running::

    python -m continuation serve docs/examples/rooms.py:create_system --db rooms.db

and talk to it with ``docs/examples/rooms_client.py``. Run this file directly for a quick
tour without a server.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

from continuation import Actor, ActorSystem, AlarmInfo, Continuation, ManualClock

MAX_HISTORY = 100


class Room(Actor):
    """One chat room; its instance id is the room's name."""

    def join(self, client_id: str) -> list[dict[str, str]]:
        """Add a member (a client id that receives new messages downstream); return the
        recent history."""
        members = set(self.storage.get("members", set()))
        members.add(client_id)
        self.storage.put("members", members)
        return self.history()

    def leave(self, client_id: str) -> None:
        members = set(self.storage.get("members", set()))
        members.discard(client_id)
        self.storage.put("members", members)

    def post(self, author: str, text: str) -> int:
        """Store a message and push it to the members once it is durable; return its number."""
        if not text.strip():
            raise ValueError("a message needs some text")
        messages = self.storage.get("messages", [])
        message = {"author": author, "text": text, "room": self.instance}
        messages = [*messages, message][-MAX_HISTORY:]
        self.storage.put("messages", messages)
        count = int(self.storage.get("count", 0)) + 1
        self.storage.put("count", count)
        members = self.storage.get("members", set())
        if members:
            self.send_downstream(sorted(members), message)
        return count

    def remind(self, text: str, *, minutes: float = 0, at: datetime | None = None) -> str:
        """Post ``text`` as the room's bot later; return the reminder's continuation id."""
        c = Continuation(self)
        when = {"at": at} if at is not None else {"delay": minutes * 60}
        return self.continue_(c.deliver_reminder(text, c.result), strategy="alarm", **when)

    def deliver_reminder(self, text: str, fired: AlarmInfo) -> None:
        self.post("reminder-bot", text)

    def history(self) -> list[dict[str, str]]:
        return list(self.storage.get("messages", []))


def create_system(database: str = "rooms.db", **options: object) -> ActorSystem:
    """The application: ``python -m continuation serve`` calls this with ``--db``."""
    return ActorSystem(database, actors=[Room], **options)  # type: ignore[arg-type]


async def tour() -> None:
    """Post, remind and read back in-process, with a manual clock so nothing waits."""
    async with create_system(":memory:", clock=ManualClock()) as system:
        lobby = system.get(Room, "lobby")
        await lobby.post("ada", "hello")
        await lobby.remind("stand-up starts now", minutes=10)
        await system.advance(10 * 60)
        for message in await lobby.history():
            print(f"[{message['room']}] {message['author']}: {message['text']}")


if __name__ == "__main__":
    asyncio.run(tour())
