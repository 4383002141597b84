"""Suite-wide pytest configuration; fixtures for one package live beside its tests."""

from __future__ import annotations

import os

from hypothesis import settings

# CI runs on a shared two-core machine where a slow example says nothing about the code, so
# the per-example deadline is off there; failures print a blob that reproduces them exactly.
settings.register_profile("ci", deadline=None, print_blob=True)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default")
)
