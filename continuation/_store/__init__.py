"""Durable stores for actor state and continuations; all SQL lives in this package."""
