"""A local stand-in for `func start` that serves a v2 Python app's triggers against Azurite.

It reads the app the way the Functions host does (`function_app.py`, `get_functions()`, the
bindings JSON) and serves queue, HTTP, timer and Event Grid blob triggers with the host's
semantics, so code that works here behaves the same under the real host. See
devhost/README.md for what is and is not emulated.
"""

from devhost.host import LocalHost
from devhost.indexing import FunctionInfo, load_functions

__all__ = ["FunctionInfo", "LocalHost", "load_functions"]
