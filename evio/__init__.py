"""evio for Python: a small, fast, single-threaded event loop for servers.

Owns: the public surface: every name a user imports, each named as `evio`'s
own; nothing is API that is not here.

A server is a set of callbacks (`Events`) and one call to
`serve()`. Every callback runs on the loop's thread; each may answer
with output to send and an `Action`.

```python
import evio

def data(id, data):
    return data  # echo

evio.serve(evio.Events(data=data), "tcp://127.0.0.1:5000")
```
"""

from types import FunctionType as _FunctionType

from ._addresses import Address, BindError, SockAddr, parse_address
from ._detach import DetachedConn
from ._events import (
    Action,
    Events,
    Info,
    InputStream,
    OpenedReply,
    Options,
    OutputLimitError,
    Reply,
    TickReply,
)
from ._inherit import listen_fds
from ._loop import serve
from ._pollers import READ, WRITE, Poller, PollerName, available_pollers
from ._server import Server
from ._timers import Timer
from ._translate import (
    Passthrough,
    TLSTranslator,
    Translator,
    ZlibTranslator,
    client_context,
    server_context,
    translate,
)

__all__ = [
    "READ",
    "WRITE",
    "Action",
    "Address",
    "BindError",
    "DetachedConn",
    "Events",
    "Info",
    "InputStream",
    "OpenedReply",
    "Options",
    "OutputLimitError",
    "Passthrough",
    "Poller",
    "PollerName",
    "Reply",
    "Server",
    "SockAddr",
    "TLSTranslator",
    "TickReply",
    "Timer",
    "Translator",
    "ZlibTranslator",
    "available_pollers",
    "client_context",
    "listen_fds",
    "parse_address",
    "serve",
    "server_context",
    "translate",
]

__version__ = "0.1.0"

# The modules behind these names are private; name each class and function
# after the package that is its API, so reprs, tracebacks, pickles and
# help() say ``evio.Events``, not ``evio._events.Events``.
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type | _FunctionType):
        _obj.__module__ = __name__
del _name, _obj
