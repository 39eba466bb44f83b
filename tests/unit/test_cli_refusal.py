"""What `lepton-lab worker` says when its nanny fails to start: one line, the scheduler's words if any."""

from lepton_lab.cli import _refusal
from lepton_lab.errors import LeptonError, PermissionDenied


def _chained(outer: BaseException, inner: BaseException) -> BaseException:
    outer.__cause__ = inner
    return outer


def test_the_schedulers_refusal_is_a_permission_error():
    e = _chained(RuntimeError("Nanny failed to start."),
                 OSError("{'status': 'error', 'message': 'refused: not a worker name of site edge-a', 'x': 1}"))
    out = _refusal(e, "tls://127.0.0.1:1")
    assert isinstance(out, PermissionDenied) and str(out) == "refused: not a worker name of site edge-a"


def test_otherwise_the_first_line_of_the_deepest_cause():
    e = _chained(RuntimeError("Nanny failed to start."), OSError("Timed out trying to connect\n  Traceback ..."))
    out = _refusal(e, "tls://127.0.0.1:1")
    assert type(out) is LeptonError and str(out) == "could not join tls://127.0.0.1:1: Timed out trying to connect"


def test_a_cause_with_no_message_is_named_by_its_type():
    e = _chained(RuntimeError("Nanny failed to start."), TimeoutError())
    assert str(_refusal(e, "tcp://h:1")) == "could not join tcp://h:1: TimeoutError"
