"""evio for Python: a small, fast, single-threaded event loop for servers.

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

from .addresses import Address, BindError, parse_address
from .detach import DetachedConn
from .events import (
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
from .inherit import listen_fds
from .loop import serve
from .pollers import Poller, PollerName, available_pollers
from .server import Server
from .timers import Timer
from .translate import translate
from .translators import Passthrough, Translator, ZlibTranslator

__all__ = [
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
    "TickReply",
    "Timer",
    "Translator",
    "ZlibTranslator",
    "available_pollers",
    "listen_fds",
    "parse_address",
    "serve",
    "translate",
]

__version__ = "0.1.0"
