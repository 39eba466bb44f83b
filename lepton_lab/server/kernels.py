"""Kernels and sessions belong to whoever started them.

The authorizer names, within each request, who would own a kernel started now and
which owners the caller may see; these wrappers around the server's kernel and
session managers record the owner at start and leave others' kernels out of lists.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from ..security.authz import KERNEL_STARTER, KERNEL_VIEWER, KernelOwners
from ..security.tokens import KernelTokens


def watch_kernels(server_app: Any, owners: KernelOwners) -> None:
    """Record each kernel's owner and filter the kernel and session lists by the caller."""
    km = getattr(server_app, "kernel_manager", None)
    sm = getattr(server_app, "session_manager", None)
    if km is None:
        return
    start, listing, shutdown = km.start_kernel, km.list_kernels, km.shutdown_kernel
    tokens: KernelTokens = server_app.web_app.settings.setdefault("lepton_kernel_tokens", KernelTokens())

    @functools.wraps(start)
    async def start_kernel(*args: Any, **kwargs: Any) -> str:
        starter = KERNEL_STARTER.get() or owners.default
        handle = None
        if starter != owners.default:
            # Not the owner's kernel: it reaches this server as its own user, with a token of
            # its own, and never finds the server's token (the owner's identity) by itself.
            token, handle = tokens.issue(starter)
            env = dict(kwargs.get("env") or os.environ)
            env.update(LEPTON_SERVER_URL=server_app.connection_url, LEPTON_TOKEN=token, LEPTON_KERNEL_USER=starter)
            kwargs["env"] = env
        try:
            kernel_id = await start(*args, **kwargs)
        except BaseException:
            if handle is not None:
                tokens.revoke(handle)
            raise
        owners.record(kernel_id, starter)
        if handle is not None:
            tokens.bind(handle, kernel_id)
        return kernel_id

    @functools.wraps(shutdown)
    async def shutdown_kernel(kernel_id: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return await shutdown(kernel_id, *args, **kwargs)
        finally:
            tokens.revoke_kernel(kernel_id)
            owners.forget(kernel_id)

    @functools.wraps(listing)
    def list_kernels() -> list[dict[str, Any]]:
        kernels = listing()
        visible = KERNEL_VIEWER.get()
        if visible is None:  # the server itself (culling, shutdown) sees every kernel
            return kernels
        return [k for k in kernels if visible(owners.owner(k["id"]))]

    km.start_kernel = start_kernel
    km.list_kernels = list_kernels
    km.shutdown_kernel = shutdown_kernel
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
