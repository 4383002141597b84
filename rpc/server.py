"""The server side of ``rpc``: an ASGI application that serves an actor runtime.

```python
from rpc.server import create_rpc_app

app = create_rpc_app(system)  # uvicorn module:app, or Mount("/api", app=app)
```
"""

from __future__ import annotations

from ._asgi import Authenticate, create_rpc_app

create_rpc_app.__module__ = __name__

__all__ = ["Authenticate", "create_rpc_app"]
