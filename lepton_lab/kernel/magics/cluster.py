"""``%lepton up, connect, status, clusters, scale, start, down, help`` and ``%%lepton run``: cluster verbs."""

from __future__ import annotations

import argparse
from typing import Any

from IPython.display import display

from ... import api
from ...errors import LeptonError
from .arguments import Later, add_verb, count


def _size(text: str) -> str:
    from dask.utils import parse_bytes

    try:
        parse_bytes(text)
    except (ValueError, TypeError):
        raise argparse.ArgumentTypeError(f"not a size such as 2GiB or 512MiB: {text!r}") from None
    return text


def _gpus(text: str) -> int | str:
    return "auto" if text == "auto" else count(text)


def add_parsers(verbs: Any) -> None:
    """Add the cluster subcommands to ``%lepton``'s sub-parsers."""
    up = add_verb(verbs, "up", "start (or reuse) a cluster and bind `client`", _up)
    up.add_argument("--profile", default=None, help="local (default), hybrid, edge-fleet or a profile of yours")
    up.add_argument("--name", default=None,
                    help="a running cluster of this name is reused when the options match")
    up.add_argument("--cloud", type=count, help="workers per cloud site")
    up.add_argument("--edge", type=count, help="workers per edge site")
    up.add_argument("--gpus", type=_gpus, help="GPU workers on cloud sites (a number or auto)")
    up.add_argument("--threads", type=count, help="threads per worker")
    up.add_argument("--memory", type=_size, help="memory per worker, e.g. 2GiB")
    up.add_argument("--team", default=None,
                    help="the team the cluster belongs to (default: $LEPTON_TEAM, else your first team)")
    up.add_argument("--replace", action="store_true",
                    help="stop a running cluster of this --name and start it with these options")
    up.add_argument("--no-view", action="store_true", help="do not show the live view")

    connect = add_verb(verbs, "connect", "attach to a running scheduler and bind `client`", _connect)
    connect.add_argument("address")
    connect.add_argument("--name", default=None)
    connect.add_argument("--timeout", type=float, default=None, help="seconds (default 5)")

    status = add_verb(verbs, "status", "the live allocation view", _status)
    status.add_argument("name", nargs="?")
    status.add_argument("--static", action="store_true", help="one snapshot, no live refresh")

    add_verb(verbs, "clusters", "clusters this kernel knows", _clusters)

    scale = add_verb(verbs, "scale", "set the workers of a site", _scale)
    scale.add_argument("n", type=count)
    scale.add_argument("--site", default="edge", help="a site name or kind (default edge)")
    scale.add_argument("--name", default=None, help="cluster (default: the current one)")

    start = add_verb(verbs, "start", "start a stopped cluster again with its settings and bind `client`", _start)
    start.add_argument("name", help="the stopped cluster's name (see the sidebar or GET clusters)")
    start.add_argument("--no-view", action="store_true", help="do not show the live view")

    down = add_verb(verbs, "down", "stop a cluster", _down)
    down.add_argument("name", nargs="?")
    down.add_argument("--all", action="store_true")

    run = add_verb(verbs, "run", "(cell magic) run the cell on a worker of a site", _run, cell=True)
    run.add_argument("--site", required=True, help="a site name or kind (cloud, edge)")
    run.add_argument("--gpus", type=count, default=0)
    run.add_argument("--job", default=None, help="job name shown in the allocation view")
    run.add_argument("--return", dest="returns", default="", help="names to bind back, comma-separated")
    run.add_argument("--name", default=None, help="cluster (default: the current one)")
    run.add_argument("--timeout", type=float, default=None, help="seconds")

    topic = add_verb(verbs, "help", "this help; with a VERB, its options", _help)
    topic.add_argument("topic", nargs="?", metavar="VERB").choices = Later(lambda: list(verbs.choices))


# -- line subcommands ------------------------------------------------------------------------


def _bind(magics: Any, handle: Any) -> None:
    magics.shell.user_ns["client"] = handle.client


def _show(magics: Any, handle: Any) -> None:
    view = handle.view()
    magics.views.append(view)
    display(view)


def _up(magics: Any, a: argparse.Namespace) -> None:
    handle = api.up(a.profile, name=a.name, cloud=a.cloud, edge=a.edge, gpus=a.gpus,
                    threads=a.threads, memory=a.memory, replace=a.replace, team=a.team)
    _bind(magics, handle)
    how = " (already running with these options)" if getattr(handle, "reused", False) else ""
    print(f"cluster {handle.name} at {handle.address}{how}; `client` is connected")
    if not a.no_view:
        _show(magics, handle)


def _connect(magics: Any, a: argparse.Namespace) -> None:
    handle = api.connect(a.address, name=a.name, timeout=a.timeout)
    _bind(magics, handle)
    print(f"connected to {handle.address}; `client` is connected")


def _status(magics: Any, a: argparse.Namespace) -> None:
    handle = api.current(a.name)
    if a.static:
        display(handle)
    else:
        _show(magics, handle)


def _clusters(magics: Any, a: argparse.Namespace) -> None:
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
    from ...views import _table

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
        when = f"in {c['spend_month']} (UTC)" if c.get("spend_period") == "month" else "in all"
        print(f"team {team} has spent ${c['team_spend']:.2f}{cap} {when}")


def _scale(magics: Any, a: argparse.Namespace) -> None:
    handle = api.scale(a.n, a.site, name=a.name)
    counts = ", ".join(f"{s['name']}={s['workers']}" for s in handle.info["sites"])
    print(f"cluster {handle.name}: {counts}")


def _start(magics: Any, a: argparse.Namespace) -> None:
    handle = api.start_again(a.name)
    _bind(magics, handle)
    sizes = ", ".join(f"{s['name']}={s['workers']}" for s in handle.info["sites"])
    print(f"cluster {handle.name} started again at {handle.address} ({sizes}); `client` is connected")
    for name in handle.info.get("redeployed") or []:
        print(f"serving {name} again")
    for name, why in (handle.info.get("not_redeployed") or {}).items():
        print(f"not serving {name} again: {why}")
    if not a.no_view:
        _show(magics, handle)


def _down(magics: Any, a: argparse.Namespace) -> None:
    names = api.down(a.name, all=a.all)
    # The views of stopped clusters stay on the page with their last snapshot: a notebook
    # that ends with `%lepton down` still shows what ran.
    for view in [v for v in magics.views if v.handle.name in names]:
        view.freeze(f"cluster {view.handle.name} stopped")
        magics.views.remove(view)
    ns = magics.shell.user_ns
    live = api.clusters()
    if live:
        ns["client"] = live[-1].client
    elif "client" in ns:
        del ns["client"]
    print(f"stopped {', '.join(names)}")


def _help(magics: Any, a: argparse.Namespace) -> None:
    verbs = magics.parser.verbs
    if a.topic:
        print(verbs[a.topic].format_help().rstrip())
        return
    lines = ["%lepton SUBCOMMAND [options]    (%%lepton run ... for a cell; %lepton help VERB for its options)", ""]
    for parser in verbs.values():
        # "usage: " becomes two spaces: the wrapped lines move left by the difference
        first, *rest = parser.format_usage().rstrip().splitlines()
        lines += ["  " + first.removeprefix("usage: ")] + [line[5:] for line in rest]
        lines.append(f"      {parser.description}")
    print("\n".join(lines))


# -- cell subcommands ------------------------------------------------------------------------


def _run(magics: Any, a: argparse.Namespace, cell: str) -> None:
    __tracebackhide__ = True  # noqa: F841  (IPython hides this frame in tracebacks)
    shell = magics.shell
    returns = [r.strip() for r in a.returns.split(",") if r.strip()]
    number = _cell_number(shell)
    filename = shell.compile.cache(cell, number)
    try:
        result = api.run_on(a.site, cell, namespace=shell.user_ns, gpus=a.gpus, job=a.job,
                            returns=returns, name=a.name, filename=filename, timeout=a.timeout)
    except (LeptonError, KeyboardInterrupt):
        raise
    except BaseException as e:
        tb = _from_cell(e.__traceback__, filename)
        lines = remote_traceback(e, tb, filename, number, cell)
        try:
            # IPython shows exactly these lines (as ipyparallel's remote errors do): the cell's
            # own frames by In[n] with the failing lines, none of this package's.
            e._render_traceback_ = lambda: lines  # type: ignore[attr-defined]
        except AttributeError:
            pass
        raise e.with_traceback(tb) from None
    shell.user_ns.update(result.values)


def _cell_number(shell: Any) -> int:
    """The In[n] of the cell running this magic (the frame of the cell's own code names it)."""
    import sys

    known = getattr(shell.compile, "_filename_map", {})
    frame: Any = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename in known:
            return int(known[frame.f_code.co_filename])
        frame = frame.f_back
    return int(shell.execution_count)


def remote_traceback(e: BaseException, tb: Any, filename: str, number: int, cell: str,
                     context: int = 2) -> list[str]:
    """IPython-style traceback lines of ``e`` from a worker: frames in the cell as ``Cell In[n], line L``
    with the lines around the failing one, other frames as ``File path:L, in name``."""
    import linecache

    body = cell.splitlines()
    out = ["-" * 75, f"{type(e).__name__:<42}Traceback (most recent call last)"]
    while tb is not None:
        code, lineno = tb.tb_frame.f_code, tb.tb_lineno
        where = "" if code.co_name == "<module>" else f", in {code.co_name}"
        if code.co_filename == filename:
            out.append(f"Cell In[{number}], line {lineno}{where}")
            for n in range(max(1, lineno - context), min(len(body), lineno + context) + 1):
                out.append(f"{'---->' if n == lineno else '     '} {n} {body[n - 1]}")
        else:
            out.append(f"File {code.co_filename}:{lineno}{where}")
            text = linecache.getline(code.co_filename, lineno).rstrip()
            if text:
                out.append(f"----> {lineno} {text}")
        out.append("")
        tb = tb.tb_next
    out.append(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
    return out


def _listed(handles: list[Any]) -> dict[str, dict]:
    """The clusters' descriptions as their services list them now, by id (spend included)."""
    out: dict[str, dict] = {}
    for transport in {id(h.transport): h.transport for h in handles if h.transport is not None}.values():
        try:
            out.update({c["id"]: c for c in transport.list()})
        except LeptonError:
            pass
    return out


def _from_cell(tb: Any, filename: str) -> Any:
    """The part of a traceback that starts in the cell's own code (the worker's frames)."""
    start = tb
    while start is not None and start.tb_frame.f_code.co_filename != filename:
        start = start.tb_next
    return start or tb
