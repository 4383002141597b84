"""Record method chains on a proxy, store or send them safely, and run them later.

```python
from operation_chain import OperationProxy, chain_of, execute_operation_chain

p = OperationProxy()
chain = chain_of(p.greet("Ada").upper())
execute_operation_chain(greeter, chain)
```

See ``docs/operation-chains.md`` for chaining, nesting, markers, the codec and the policy.
"""

from __future__ import annotations

from types import FunctionType as _FunctionType

from ._chain import CHAIN_VERSION, CallOp, GetOp, ItemOp, Operation, OperationChain
from ._codec import Codec, decode, dumps, encode, loads
from ._errors import (
    AwaitableResultError,
    ChainLimitError,
    ChainSecurityError,
    ChainValidationError,
    CodecError,
    DecodeError,
    MarkerNotInjectedError,
    MixedRootsError,
    OperationChainError,
    RemoteError,
    SignatureError,
    UnsupportedTypeError,
)
from ._executor import execute_operation_chain, execute_operation_chain_async
from ._markers import ERROR, RESULT, Marker
from ._policy import DEFAULT_POLICY, ExecutionPolicy, expose
from ._proxy import OperationProxy, chain_of
from ._registry import register_type

__all__ = [
    "CHAIN_VERSION",
    "DEFAULT_POLICY",
    "ERROR",
    "RESULT",
    "AwaitableResultError",
    "CallOp",
    "ChainLimitError",
    "ChainSecurityError",
    "ChainValidationError",
    "Codec",
    "CodecError",
    "DecodeError",
    "ExecutionPolicy",
    "GetOp",
    "ItemOp",
    "Marker",
    "MarkerNotInjectedError",
    "MixedRootsError",
    "Operation",
    "OperationChain",
    "OperationChainError",
    "OperationProxy",
    "RemoteError",
    "SignatureError",
    "UnsupportedTypeError",
    "chain_of",
    "decode",
    "dumps",
    "encode",
    "execute_operation_chain",
    "execute_operation_chain_async",
    "expose",
    "loads",
    "register_type",
]

# Users see ``operation_chain.OperationChain``, not the private module it lives in.
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type | _FunctionType) and _obj.__module__.startswith("operation_chain._"):
        _obj.__module__ = __name__
del _name, _obj
