"""A Hub user's server when the control plane does not answer: one-line 502s, never a 500."""

import asyncio
import socket

import pytest
from tornado import httpclient, web

from lepton_lab.hub.forward import _fetch


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("timeout", [None, 0.001])
def test_an_unreachable_or_slow_control_plane_is_a_one_line_502(timeout):
    if timeout is None:  # nothing listens: the connection is refused
        url = f"http://127.0.0.1:{_closed_port()}/services/lepton/"
        server = None
    else:  # something listens but never answers
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen()
        url = f"http://127.0.0.1:{server.getsockname()[1]}/services/lepton/"
    try:
        request = httpclient.HTTPRequest(url + "lepton/api/whoami", request_timeout=timeout or 20)
        with pytest.raises(web.HTTPError) as e:
            asyncio.run(_fetch(url, request))
    finally:
        if server is not None:
            server.close()
    assert e.value.status_code == 502
    assert e.value.log_message.startswith(f"the Lepton control plane at {url} did not answer")
    assert "\n" not in e.value.log_message
