"""Test suite. A package, so shared helpers import as ``tests.strategies`` and test packages
such as ``tests/operation_chain/`` never shadow the real ``operation_chain`` package."""
