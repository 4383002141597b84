"""Call actors over the network: an awaitable proxy, batched and pipelined calls, transports.

```python
from rpc import HttpTransport, create_rpc_client

async with create_rpc_client("counter", "a", transport=HttpTransport(url)) as counter:
    await counter.increment(2)
```

The server side is ``rpc.server.create_rpc_app``; tests use ``rpc.testing.create_test_client``.
See ``docs/rpc.md``.
"""

from __future__ import annotations

from types import FunctionType as _FunctionType

from ._client import RpcClient, RpcProxy, create_rpc_client
from ._errors import (
    AuthenticationError,
    BindingNotFoundError,
    ChainRefusedError,
    ClientClosedError,
    ConnectionLostError,
    RequestRejectedError,
    RpcError,
    RpcTimeoutError,
    TransportError,
)
from ._host import ActorHost, DownstreamMessage
from ._messages import CallRef
from ._transports.base import RpcRequest, RpcResponse, Transport
from ._transports.http import HttpTransport
from ._transports.inprocess import InProcessTransport
from ._transports.websocket import WebSocketTransport

__all__ = [
    "ActorHost",
    "AuthenticationError",
    "BindingNotFoundError",
    "CallRef",
    "ChainRefusedError",
    "ClientClosedError",
    "ConnectionLostError",
    "DownstreamMessage",
    "HttpTransport",
    "InProcessTransport",
    "RequestRejectedError",
    "RpcClient",
    "RpcError",
    "RpcProxy",
    "RpcRequest",
    "RpcResponse",
    "RpcTimeoutError",
    "Transport",
    "TransportError",
    "WebSocketTransport",
    "create_rpc_client",
]

# Users see ``rpc.RpcClient``, not the private module it lives in.
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type | _FunctionType) and _obj.__module__.startswith("rpc._"):
        _obj.__module__ = __name__
del _name, _obj
