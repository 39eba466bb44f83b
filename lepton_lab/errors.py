"""Typed errors. Each carries a one-line message that tells the user what to do."""

from __future__ import annotations


class LeptonError(Exception):
    """Base class of every error Lepton Lab raises on purpose.

    ``str(err)`` is a single line meant for the user; front doors (magics, REST,
    CLI) show it as it is, without a traceback.
    """

    #: HTTP status the server answers with when this error crosses REST.
    status = 400

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class ConfigError(LeptonError):
    """A profile, policy or option is invalid; the message names the field."""


class NotFound(LeptonError):
    status = 404


class AlreadyExists(LeptonError):
    status = 409


class PermissionDenied(LeptonError):
    status = 403


class QuotaExceeded(PermissionDenied):
    """A request would go over a team or user quota; the message gives the numbers."""


class ClusterError(LeptonError):
    """A cluster could not be started, reached or changed."""

    status = 409


class NoGPUError(ClusterError):
    status = 400


class IntegrityError(LeptonError):
    """A signature, MAC or hash check failed: the data was changed or is not ours."""

    status = 422


class Interrupted(KeyboardInterrupt):
    """The user interrupted a call; the cluster work it waited for is cancelled.

    Still a ``KeyboardInterrupt``, so no ``except Exception`` on the way up takes it
    for an ordinary error. ``str(err)`` says what was stopped; IPython shows it as
    the single line ``interrupted: ...`` and nothing of the package's frames.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))

    def _render_traceback_(self) -> list[str]:
        return [f"interrupted: {self}"]


def first_line(error: BaseException, *, named: bool = False, limit: int = 200) -> str:
    """The first line of ``error``'s message, cut to ``limit`` characters.

    ``named`` puts the error's type in front (``ValueError: ...``). An error whose
    message says nothing gives its type's name alone, never an empty string.
    """
    lines = str(error).strip().splitlines()
    kind = type(error).__name__
    if not lines:
        return kind
    text = lines[0].strip()[:limit]
    return f"{kind}: {text}" if named else text


def by_kind(kind: str | None) -> type[LeptonError] | None:
    """The LeptonError subclass named ``kind`` (as a REST error body names it), or None."""
    todo: list[type[LeptonError]] = [LeptonError]
    while todo:
        cls = todo.pop()
        if cls.__name__ == kind:
            return cls
        todo.extend(cls.__subclasses__())
    return None
