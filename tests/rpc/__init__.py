"""Tests of the rpc package: client, transports, dispatch, the ASGI app."""
