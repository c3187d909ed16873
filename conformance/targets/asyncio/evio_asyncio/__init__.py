"""evio_asyncio: the evio API on asyncio transports -- a conformance target.

A second, independent implementation of the evio API (serve, Events,
Action, Options, Info, Server with wake, dial and stop), written from the
public spec pages in docs/spec/ and the evio docstrings, on top of asyncio's
event loop and transports instead of a poller of its own. It exists to show
that the conformance suite checks the API and not one implementation of it:
it is not a product. What it does not do is listed as features it lacks in
conformance/targets/asyncio/manifest.toml.
"""

from .loop import Address, Server, available_pollers, parse_address, serve
from .records import Action, Events, Info, InputStream, Options, OutputLimitError

__all__ = [
    "Action",
    "Address",
    "Events",
    "Info",
    "InputStream",
    "Options",
    "OutputLimitError",
    "Server",
    "available_pollers",
    "parse_address",
    "serve",
]

__version__ = "0.1.0"
