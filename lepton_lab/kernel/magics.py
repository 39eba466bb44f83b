"""``%lepton`` and ``%%lepton``: parse, call the Python API, display.

Every subcommand is a thin door onto a function of :mod:`lepton_lab.api`. Bad input
and refused requests surface as IPython ``UsageError``: one line, no traceback. An
interrupted subcommand ends the cell as an error too, shown as one ``interrupted: ...``
line (the verb has cancelled its cluster work by then).
"""

from __future__ import annotations

import argparse
import shlex
from typing import Any, Callable

from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.display import display

from .. import api
from ..errors import Interrupted, LeptonError
from . import federate_magics, model_magics, plan_magics, train_magics, tune_magics
from .parsing import MagicParser as _Parser
from .parsing import count


def _size(text: str) -> str:
    from dask.utils import parse_bytes

    try:
        parse_bytes(text)
    except (ValueError, TypeError):
        raise argparse.ArgumentTypeError(f"not a size such as 2GiB or 512MiB: {text!r}") from None
    return text


def _gpus(text: str) -> int | str:
    return "auto" if text == "auto" else count(text)


def _parsers() -> dict[str, _Parser]:
    p: dict[str, _Parser] = {}

    up = p["up"] = _Parser(prog="up", add_help=False,
                           description="start (or reuse) a cluster and bind `client`")
    up.add_argument("--profile", default=None, help="local (default), hybrid, edge-fleet or a profile of yours")
    up.add_argument("--name", default=None,
                    help="a running cluster of this name is reused when the options match")
    up.add_argument("--cloud", type=count, help="workers per cloud site")
    up.add_argument("--edge", type=count, help="workers per edge site")
    up.add_argument("--gpus", type=_gpus, help="GPU workers on cloud sites (a number or auto)")
    up.add_argument("--threads", type=count, help="threads per worker")
    up.add_argument("--memory", type=_size, help="memory per worker, e.g. 2GiB")
    up.add_argument("--replace", action="store_true",
                    help="stop a running cluster of this --name and start it with these options")
    up.add_argument("--no-view", action="store_true", help="do not show the live view")

    connect = p["connect"] = _Parser(prog="connect", add_help=False,
                                     description="attach to a running scheduler and bind `client`")
    connect.add_argument("address")
    connect.add_argument("--name", default=None)
    connect.add_argument("--timeout", type=float, default=None, help="seconds (default 5)")

    status = p["status"] = _Parser(prog="status", add_help=False, description="the live allocation view")
    status.add_argument("name", nargs="?")
    status.add_argument("--static", action="store_true", help="one snapshot, no live refresh")

    p["clusters"] = _Parser(prog="clusters", add_help=False, description="clusters this kernel knows")

    scale = p["scale"] = _Parser(prog="scale", add_help=False, description="set the workers of a site")
    scale.add_argument("n", type=count)
    scale.add_argument("--site", default="edge", help="a site name or kind (default edge)")
    scale.add_argument("--name", default=None, help="cluster (default: the current one)")

    down = p["down"] = _Parser(prog="down", add_help=False, description="stop a cluster")
    down.add_argument("name", nargs="?")
    down.add_argument("--all", action="store_true")

    run = p["run"] = _Parser(prog="run", add_help=False,
                             description="(cell magic) run the cell on a worker of a site")
    run.add_argument("--site", required=True, help="a site name or kind (cloud, edge)")
    run.add_argument("--gpus", type=count, default=0)
    run.add_argument("--job", default=None, help="job name shown in the allocation view")
    run.add_argument("--return", dest="returns", default="", help="names to bind back, comma-separated")
    run.add_argument("--name", default=None, help="cluster (default: the current one)")
    run.add_argument("--timeout", type=float, default=None, help="seconds")

    p["help"] = _Parser(prog="help", add_help=False, description="this help")
    return p


@magics_class
class LeptonMagics(Magics):
    """The ``%lepton`` line magic and ``%%lepton`` cell magic."""

    shell: InteractiveShell  # load() always passes the kernel's shell

    def __init__(self, shell):
        super().__init__(shell)
        self.parsers = _parsers()
        self.line_commands: dict[str, Callable[[argparse.Namespace], Any]] = {
            "up": self._up, "connect": self._connect, "status": self._status,
            "clusters": self._clusters, "scale": self._scale, "down": self._down, "help": self._help,
        }
        self.cell_commands: dict[str, Callable[[argparse.Namespace, str], Any]] = {"run": self._run}
        self.views: list[Any] = []
        self.pending: list[Callable[[LeptonMagics], None]] = []

    def _register_pending(self) -> None:
        while self.pending:
            self.pending.pop(0)(self)

    def register(self, name: str, parser: _Parser, *, line: Callable | None = None,
                 cell: Callable | None = None) -> None:
        """Add a subcommand (used by the model, training and federated subcommand groups)."""
        self.parsers[name] = parser
        if line:
            self.line_commands[name] = line
        if cell:
            self.cell_commands[name] = cell

    @line_cell_magic
    def lepton(self, line: str = "", cell: str | None = None):
        """Lepton Lab: clusters on cloud and edge sites. `%lepton help` lists the subcommands."""
        try:
            words = shlex.split(line)
        except ValueError as e:
            raise UsageError(f"%lepton: cannot parse the line ({e})") from None
        if not words:
            words = ["help"]
        command, rest = words[0], words[1:]
        if self.pending and (command == "help" or command not in self.line_commands | self.cell_commands):
            self._register_pending()
        table = self.cell_commands if cell is not None else self.line_commands
        if command not in table:
            kind = "cell" if cell is not None else "line"
            other = self.line_commands if cell is not None else self.cell_commands
            extra = f"; {command!r} is a {'line' if cell is not None else 'cell'} magic" if command in other else ""
            raise UsageError(
                f"%lepton: unknown {kind} subcommand {command!r} (valid: {', '.join(sorted(table))}){extra}"
            )
        args = self.parsers[command].parse_args(rest)
        try:
            if cell is not None:
                return self.cell_commands[command](args, cell)
            return self.line_commands[command](args)
        except LeptonError as e:
            raise UsageError(f"%lepton {command}: {e}") from None
        except Interrupted:
            raise
        except KeyboardInterrupt:
            # One no verb turned into a cancelled job: a compression runs in this kernel, say.
            raise Interrupted(f"%lepton {command} stopped") from None

    # -- line subcommands ------------------------------------------------------------------

    def _bind(self, handle) -> None:
        self.shell.user_ns["client"] = handle.client

    def _show(self, handle) -> None:
        view = handle.view()
        self.views.append(view)
        display(view)

    def _up(self, a):
        handle = api.up(a.profile, name=a.name, cloud=a.cloud, edge=a.edge, gpus=a.gpus,
                        threads=a.threads, memory=a.memory, replace=a.replace)
        self._bind(handle)
        how = " (already running with these options)" if getattr(handle, "reused", False) else ""
        print(f"cluster {handle.name} at {handle.address}{how}; `client` is connected")
        if not a.no_view:
            self._show(handle)

    def _connect(self, a):
        handle = api.connect(a.address, name=a.name, timeout=a.timeout)
        self._bind(handle)
        print(f"connected to {handle.address}; `client` is connected")

    def _status(self, a):
        handle = api.current(a.name)
        if a.static:
            display(handle)
        else:
            self._show(handle)

    def _clusters(self, a):
        handles = api.clusters()
        # A cost column only where a profile sets a price: "$0.00/h" everywhere says nothing.
        costed = any(h.info.get("cost_per_hour") for h in handles)
        # What the cluster service has metered so far (a server's clusters; none in-process).
        listed = _listed(handles)
        spent = any("spend" in listed.get(h.id, {}) for h in handles)
        rows = [[h.name, h.address, h.info.get("profile", ""),
                 ", ".join(f"{s['name']}×{s['workers']}" for s in h.info.get("sites", [])),
                 "adopted" if h.adopted else "started"]
                + ([f"${h.info.get('cost_per_hour', 0):.2f}/h"] if costed else [])
                + ([f"${listed.get(h.id, {}).get('spend', 0):.2f}"] if spent else [])
                for h in handles]
        from ..views import _table

        head = ["name", "scheduler", "profile", "workers", "how"] + (["cost"] if costed else []) \
            + (["spent"] if spent else [])
        if not rows:
            print("no clusters; start one with %lepton up")
            return
        text = "\n".join("  ".join(map(str, r)) for r in [head] + rows)
        display({"text/plain": text, "text/html": _table(head, rows)}, raw=True)
        teams = {c["team"]: c for c in listed.values() if "team_spend" in c and c.get("team")}
        for team, c in sorted(teams.items()):
            cap = f" of its cap ${c['spend_cap']:.2f}" if c.get("spend_cap") is not None else ""
            print(f"team {team} has spent ${c['team_spend']:.2f}{cap} so far")

    def _scale(self, a):
        handle = api.scale(a.n, a.site, name=a.name)
        counts = ", ".join(f"{s['name']}={s['workers']}" for s in handle.info["sites"])
        print(f"cluster {handle.name}: {counts}")

    def _down(self, a):
        names = api.down(a.name, all=a.all)
        # The views of stopped clusters stay on the page with their last snapshot: a notebook
        # that ends with `%lepton down` still shows what ran.
        for view in [v for v in self.views if v.handle.name in names]:
            view.freeze(f"cluster {view.handle.name} stopped")
            self.views.remove(view)
        live = api.clusters()
        if live:
            self.shell.user_ns["client"] = live[-1].client
        elif "client" in self.shell.user_ns:
            del self.shell.user_ns["client"]
        print(f"stopped {', '.join(names)}")

    def _help(self, a):
        lines = ["%lepton SUBCOMMAND [options]    (%%lepton run ... for a cell)", ""]
        for name, parser in self.parsers.items():
            usage = parser.format_usage().replace("usage: ", "").strip()
            lines.append(f"  {usage}\n      {parser.description}")
        print("\n".join(lines))

    # -- cell subcommands ------------------------------------------------------------------

    def _run(self, a, cell: str):
        __tracebackhide__ = True  # noqa: F841  (IPython hides this frame in tracebacks)
        returns = [r.strip() for r in a.returns.split(",") if r.strip()]
        filename = self.shell.compile.cache(cell, self.shell.execution_count)
        try:
            result = api.run_on(a.site, cell, namespace=self.shell.user_ns, gpus=a.gpus, job=a.job,
                                returns=returns, name=a.name, filename=filename, timeout=a.timeout)
        except (LeptonError, KeyboardInterrupt):
            raise
        except BaseException as e:
            raise e.with_traceback(_from_cell(e.__traceback__, filename)) from None
        self.shell.user_ns.update(result.values)
        return None


def _listed(handles) -> dict[str, dict]:
    """The clusters' descriptions as their services list them now, by id (spend included)."""
    out: dict[str, dict] = {}
    for transport in {id(h.transport): h.transport for h in handles if h.transport is not None}.values():
        try:
            out.update({c["id"]: c for c in transport.list()})
        except LeptonError:
            pass
    return out


def _from_cell(tb, filename: str):
    """The part of a traceback that starts in the cell's own code (the worker's frames)."""
    start = tb
    while start is not None and start.tb_frame.f_code.co_filename != filename:
        start = start.tb_next
    return start or tb


#: What adds the other subcommands to a ``LeptonMagics``.
SUBCOMMANDS = (model_magics.register_magics, plan_magics.register_magics)
#: The same, for subcommands whose options come from the training modules (torch, XGBoost):
#: registered on first need, so that ``%load_ext lepton_lab`` stays quick.
HEAVY_SUBCOMMANDS = (train_magics.register_magics, federate_magics.register_magics, tune_magics.register_magics)


def load(shell) -> LeptonMagics:
    magics = LeptonMagics(shell)
    for register in SUBCOMMANDS:
        register(magics)
    magics.pending = list(HEAVY_SUBCOMMANDS)
    shell.register_magics(magics)
    return magics
