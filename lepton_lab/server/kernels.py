"""Kernels and sessions belong to whoever started them.

The authorizer names, within each request, who would own a kernel started now and
which owners the caller may see; these wrappers around the server's kernel and
session managers record the owner at start and leave others' kernels out of lists.
"""

from __future__ import annotations

import functools
from typing import Any

from ..security.authz import KERNEL_STARTER, KERNEL_VIEWER, KernelOwners


def watch_kernels(server_app: Any, owners: KernelOwners) -> None:
    """Record each kernel's owner and filter the kernel and session lists by the caller."""
    km = getattr(server_app, "kernel_manager", None)
    sm = getattr(server_app, "session_manager", None)
    if km is None:
        return
    start, listing = km.start_kernel, km.list_kernels

    @functools.wraps(start)
    async def start_kernel(*args: Any, **kwargs: Any) -> str:
        kernel_id = await start(*args, **kwargs)
        owners.record(kernel_id, KERNEL_STARTER.get() or owners.default)
        return kernel_id

    @functools.wraps(listing)
    def list_kernels() -> list[dict[str, Any]]:
        kernels = listing()
        visible = KERNEL_VIEWER.get()
        if visible is None:  # the server itself (culling, shutdown) sees every kernel
            return kernels
        return [k for k in kernels if visible(owners.owner(k["id"]))]

    km.start_kernel = start_kernel
    km.list_kernels = list_kernels
    if sm is None:
        return
    sessions = sm.list_sessions

    @functools.wraps(sessions)
    async def list_sessions() -> list[dict[str, Any]]:
        found = await sessions()
        visible = KERNEL_VIEWER.get()
        if visible is None:
            return found
        return [s for s in found if visible(owners.owner(((s.get("kernel") or {}).get("id")) or ""))]

    sm.list_sessions = list_sessions
