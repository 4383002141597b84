"""The host of the end-to-end tests, served by ``python -m continuation serve``: an
ActorSystem whose only timer is the bouncer. Configured by environment variables, as a
deployed host would be."""

from __future__ import annotations

import os

from continuation import Actor, ActorSystem, AlarmInfo, BouncerTimer, Continuation, RetryPolicy


class Note(Actor):
    """send, wait, delete: the text is gone only once the continuation has run."""

    def send(self, text: str, delay: float) -> str:
        self.storage.put("text", text)
        c = Continuation(self)
        return self.continue_(c.delete(c.result), strategy="alarm", delay=delay)

    def delete(self, fired: AlarmInfo) -> None:
        self.storage.delete("text")
        self.storage.put("deleted_at", fired.fired_at.timestamp())

    def text(self) -> str | None:
        text: str | None = self.storage.get("text")
        return text


def create_system(database: str) -> ActorSystem:
    timer = BouncerTimer(
        os.environ["BOUNCER_URL"],
        token=os.environ["BOUNCER_TOKEN"],
        callback_url=os.environ["HOST_CALLBACK_URL"],
        signing_key=os.environ["BOUNCER_SIGNING_KEY"],
        min_delay=float(os.environ.get("BOUNCER_MIN_DELAY", "60")),
        # Quick retries: the test starts the host before the bouncer is up.
        retry=RetryPolicy(base_delay=0.2, max_delay=0.5, jitter=0.2),
    )
    return ActorSystem(database, actors=[Note], timer=timer)
