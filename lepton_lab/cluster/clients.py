"""Dask clients that never leave a half-made client to the garbage collector.

A ``distributed.Client`` whose constructor fails (an unreachable scheduler, a refused
certificate) is still alive in the exception's traceback, and its ``__del__`` closes it
whenever the garbage collector gets to it. That close stops its loop runner under a lock
every loop runner of the process shares; when the collection happens inside another
client's start, which holds that lock, the process deadlocks for good. Closing the failed
client at once, here, leaves ``__del__`` nothing to do.
"""

from __future__ import annotations

import contextlib
from typing import Any

from distributed import Client


def open_client(address: Any, **kwargs: Any) -> Client:
    """``Client(address, **kwargs)``; if it cannot be made, it is closed before the error is raised."""
    client = Client.__new__(Client)
    try:
        Client.__init__(client, address, **kwargs)
    except BaseException:
        with contextlib.suppress(Exception):
            client.close(timeout=5)
        raise
    return client
