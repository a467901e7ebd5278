"""Warmpool's Python SDK: warm containers from a pool, used and released.

::

    from warmpool import Client

    with Client("http://127.0.0.1:7070") as client:        # key: WARMPOOL_TOKEN or a token file
        with client.allocate("demo", wait_ms=2000) as sandbox:  # released when the block ends
            print(sandbox.url)
            print(sandbox.exec("echo hi").stdout)

:class:`AsyncClient` does the same with ``await`` / ``async with``. Errors are
:class:`WarmpoolError` subclasses; the server's answers are :class:`APIError` subclasses by
their ``code`` (:class:`NotFoundError`, :class:`NoCapacityError`, ...).
"""

from ._core import token_files
from .aio import AsyncClient, AsyncSandbox
from .client import Client, Sandbox
from .errors import *  # noqa: F401,F403
from .errors import __all__ as _error_names
from .models import (
    Access,
    Allocation,
    Counts,
    ExecEvent,
    ExecResult,
    FileWritten,
    LogLine,
    LogsDropped,
    Pool,
)

__version__ = "0.1.0"

__all__ = [
    "Client",
    "AsyncClient",
    "Sandbox",
    "AsyncSandbox",
    "Access",
    "Allocation",
    "Counts",
    "ExecEvent",
    "ExecResult",
    "FileWritten",
    "LogLine",
    "LogsDropped",
    "Pool",
    "token_files",
    *_error_names,
]
