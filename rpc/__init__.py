"""RPC clients, transports and the ASGI server (see DESIGN.md; built in a later issue)."""

from __future__ import annotations

__all__: list[str] = []
