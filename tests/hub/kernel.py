"""Run code in a user's kernel behind a real JupyterHub, over the Jupyter kernel protocol.

The kernel is started in the user's single-user server through the Hub's proxy
(``POST /user/NAME/api/kernels`` with one of the user's own tokens) and code goes over the
server's kernel WebSocket (``/user/NAME/api/kernels/<id>/channels``) as jupyter_client's
``execute_request`` messages, exactly as JupyterLab sends them.
"""

from __future__ import annotations

import datetime
import json
import time
import uuid
from typing import TYPE_CHECKING, Any

import requests
import websocket

if TYPE_CHECKING:
    from tests.hub.rig import Hub


class KernelError(RuntimeError):
    """A kernel could not be started or did not answer (not an error raised by the code run in it)."""


class Kernel:
    """A kernel in ``user``'s server, as a context manager: ``run(code)`` any number of times, then deleted."""

    def __init__(self, hub: Hub, user: str, *, token: str | None = None, kernel_name: str = "python3"):
        self.hub = hub
        self.user = user
        self.token = token or hub.token_for(user, note="rig kernel")
        self.kernel_name = kernel_name
        self.base = f"{hub.url}/user/{user}/api/kernels"
        self.session = uuid.uuid4().hex
        self.id: str | None = None
        self.ws: websocket.WebSocket | None = None

    @property
    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def __enter__(self) -> Kernel:
        r = requests.post(self.base, json={"name": self.kernel_name}, headers=self._headers, timeout=60)
        if r.status_code != 201:
            raise KernelError(f"starting a kernel for {self.user}: {r.status_code} {r.text[:300]}")
        self.id = r.json()["id"]
        ws_url = self.base.replace("http://", "ws://", 1) + f"/{self.id}/channels?session_id={self.session}"
        try:
            self.ws = websocket.create_connection(ws_url, header=self._headers, timeout=60)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
            self.ws = None
        if self.id is not None:
            requests.delete(f"{self.base}/{self.id}", headers=self._headers, timeout=30)
            self.id = None

    def _message(self, msg_type: str, content: dict[str, Any]) -> dict[str, Any]:
        return {
            "header": {"msg_id": uuid.uuid4().hex, "msg_type": msg_type, "username": self.user,
                       "session": self.session, "version": "5.3",
                       "date": datetime.datetime.now(datetime.timezone.utc).isoformat()},
            "parent_header": {}, "metadata": {}, "content": content, "channel": "shell", "buffers": [],
        }

    def run(self, code: str, timeout: float = 120.0) -> tuple[str, tuple[str, str] | None]:
        """Execute ``code``; ``(stdout, None)`` or ``(stdout, (ename, evalue))`` if it raised."""
        assert self.ws is not None, "use Kernel as a context manager"
        msg = self._message("execute_request", {"code": code, "silent": False, "store_history": False,
                                                "user_expressions": {}, "allow_stdin": False,
                                                "stop_on_error": True})
        msg_id = msg["header"]["msg_id"]
        self.ws.send(json.dumps(msg))
        out: list[str] = []
        error: tuple[str, str] | None = None
        replied = idle = False
        end = time.monotonic() + timeout
        while not (replied and idle):
            self.ws.settimeout(max(0.1, end - time.monotonic()))
            try:
                reply = json.loads(self.ws.recv())
            except websocket.WebSocketTimeoutException:
                raise KernelError(f"no answer from {self.user}'s kernel in {timeout:.0f}s; stdout so far: "
                               f"{''.join(out)[-500:]!r}") from None
            if reply.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = reply["msg_type"], reply["content"]
            if kind == "stream" and content.get("name") == "stdout":
                out.append(content["text"])
            elif kind == "error":
                error = (content["ename"], content["evalue"])
            elif kind == "execute_reply":
                replied = True
                if content.get("status") == "error" and error is None:
                    error = (content.get("ename", ""), content.get("evalue", ""))
            elif kind == "status" and content.get("execution_state") == "idle":
                idle = True
        return "".join(out), error


def run_in_kernel(hub: Hub, user: str, code: str, *, token: str | None = None,
                  timeout: float = 120.0) -> tuple[str, tuple[str, str] | None]:
    """Start a kernel in ``user``'s server, run ``code``, delete the kernel: ``(stdout, error)``.

    ``error`` is ``None`` or ``(ename, evalue)``. ``token`` defaults to a fresh token of the user's own.
    """
    with Kernel(hub, user, token=token) as k:
        return k.run(code, timeout=timeout)
