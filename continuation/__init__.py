"""Actors and durable continuations (see DESIGN.md; built in a later issue)."""

from __future__ import annotations

__all__: list[str] = []
