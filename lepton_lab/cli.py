"""``lepton-lab``: the command line.

``lepton-lab worker`` joins this machine to a scheduler as workers of one site;
``lepton-lab profiles`` lists and checks cluster profiles. Errors are one line on
stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from typing import Callable

from .errors import LeptonError

#: Subcommands added by other modules: name -> (help, fill(parser) -> runner).
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], Callable[[argparse.Namespace], int]]]] = {}


def command(name: str, help: str):
    """Register a subcommand: the decorated function fills its parser and returns the runner."""

    def wrap(fn):
        COMMANDS[name] = (help, fn)
        return fn

    return wrap


# -- worker -------------------------------------------------------------------------------------


def _worker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scheduler",
                   help="scheduler address, e.g. tls://10.0.0.5:8786 (from the server with --join-token)")
    p.add_argument("--site", required=True, help="site name, e.g. edge-hospital-a or cloud")
    p.add_argument("--kind", choices=("cloud", "edge"), help="site kind (default: from the site name)")
    p.add_argument("--nworkers", type=int, default=1, help="CPU workers to start (default 1)")
    p.add_argument("--nthreads", type=int, default=1, help="threads per worker (default 1)")
    p.add_argument("--memory-limit", default="2GiB", help="memory per worker (default 2GiB)")
    p.add_argument("--gpus", default="0", help="GPU workers, one per GPU: a number or auto (default 0)")
    p.add_argument("--index", type=int, default=None, help="first worker number (default: from the process id)")
    p.add_argument("--host", default=None, help="address to listen on (default: the one that reaches the scheduler)")
    p.add_argument("--tls-ca-file", help="CA certificate of the cluster (TLS)")
    p.add_argument("--tls-cert", help="this worker's certificate (TLS)")
    p.add_argument("--tls-key", help="this worker's private key (TLS)")
    p.add_argument("--join-token", help="a one-time token from `lepton-lab join-token` (TLS)")
    p.add_argument("--server", help="the Jupyter server's URL, to redeem --join-token")
    p.add_argument("--death-timeout", type=float, default=60, help="seconds without a scheduler before exiting")


def _redeem(a: argparse.Namespace):
    """Trade the join token for a worker certificate at the server; returns (Security, scheduler)."""
    import json
    import socket
    import urllib.error
    import urllib.request

    from .security.certs import IssuedCert

    if not a.server:
        raise LeptonError("--join-token needs --server, the Jupyter server's URL")
    hosts = sorted({"127.0.0.1", "localhost", socket.gethostname(), *( [a.host] if a.host else [])})
    body = json.dumps({"token": a.join_token, "site": a.site, "hosts": hosts}).encode()
    req = urllib.request.Request(a.server.rstrip("/") + "/lepton/api/join", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            data = json.loads(resp.read())
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read()).get("message", e.reason)
        except ValueError:
            message = e.reason
        raise LeptonError(f"the server refused the join token: {message}") from None
    except urllib.error.URLError as e:
        raise LeptonError(f"could not reach {a.server}: {e.reason}") from None
    fields = ("cert_pem", "key_pem", "ca_pem", "role", "common_name", "expires")
    cert = IssuedCert.from_dict({k: data[k] for k in fields})
    return cert.security(), data["scheduler_address"]


def _worker_security(a: argparse.Namespace):
    if a.join_token:
        security, scheduler = _redeem(a)
        if a.scheduler and a.scheduler != scheduler:
            print(f"note: the server says the scheduler is {scheduler}; using {a.scheduler}", file=sys.stderr)
        a.scheduler = a.scheduler or scheduler
        return security
    if a.tls_ca_file or a.tls_cert or a.tls_key:
        if not (a.tls_ca_file and a.tls_cert and a.tls_key):
            raise LeptonError("--tls-ca-file, --tls-cert and --tls-key go together")
        from distributed import Security

        return Security(tls_ca_file=a.tls_ca_file, tls_worker_cert=a.tls_cert, tls_worker_key=a.tls_key,
                        require_encryption=True)
    return None


def run_worker(a: argparse.Namespace) -> int:
    """Start real Dask workers (distributed's nanny) for one site and serve until stopped."""
    from .cluster import gpus as gpu_discovery
    from .cluster.profiles import SiteSpec, _memory, _site_from_dict
    from .cluster.workers import SiteNanny, plan_site, worker_spec

    kind = a.kind or ("edge" if a.site.startswith("edge") else "cloud")
    gpus_arg = a.gpus if a.gpus == "auto" else _int_arg(a.gpus, "--gpus")
    site: SiteSpec = _site_from_dict(
        {"name": a.site, "kind": kind, "workers": a.nworkers, "threads": a.nthreads,
         "memory": _memory(a.memory_limit, "--memory-limit"), "gpus": gpus_arg},
        "site",
    )
    if not a.scheduler and not a.join_token:
        raise LeptonError("--scheduler is required (or --join-token with --server)")
    found = gpu_discovery.discover() if site.gpus else []
    start = a.index if a.index is not None else os.getpid() * 10
    plans = plan_site(site, found, start=start)
    security = _worker_security(a)
    base = {"security": security, "host": a.host, "death_timeout": a.death_timeout}

    async def serve() -> None:
        # The stop signals are ours before any nanny starts: a SIGTERM while the workers
        # are still joining closes them like one after, instead of killing this process
        # and leaving its worker processes to find out by themselves.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        waiter = asyncio.ensure_future(stop.wait())
        nannies = [SiteNanny(a.scheduler, **worker_spec(plan, base)["options"]) for plan in plans]
        starting = asyncio.ensure_future(asyncio.gather(*nannies))
        try:
            await asyncio.wait([waiter, starting], return_when=asyncio.FIRST_COMPLETED)
            if starting.done():
                starting.result()  # a nanny that failed to start raises here
                for plan, n in zip(plans, nannies):
                    print(f"worker {plan.name} ({site.kind}, resources {plan.resources}) joined {a.scheduler} "
                          f"from {n.worker_address}", flush=True)
                finished = [asyncio.ensure_future(n.finished()) for n in nannies]
                await asyncio.wait([waiter, *finished], return_when=asyncio.FIRST_COMPLETED)
            else:
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
                print(f"stopped before joining {a.scheduler}", file=sys.stderr, flush=True)
        finally:
            waiter.cancel()
        await asyncio.gather(*(n.close(reason="lepton-lab worker stopped") for n in nannies),
                             return_exceptions=True)

    try:
        asyncio.run(serve())
    except (OSError, TimeoutError) as e:
        raise LeptonError(f"could not join {a.scheduler}: {e}") from None
    except RuntimeError as e:  # distributed's "Nanny failed to start.", with the scheduler's answer below it
        raise _refusal(e, a.scheduler) from None
    return 0


def _refusal(error: BaseException, scheduler: str) -> LeptonError:
    """The scheduler's own words from a worker that failed to start, as one line."""
    import re

    from .errors import PermissionDenied, first_line

    chain: list[BaseException] = []
    cause: BaseException | None = error
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    for each in chain:
        said = re.search(r"""['"]message['"]: ['"](.+?)['"]\s*[,}]""", str(each))
        if said and "refused" in said[1]:
            return PermissionDenied(said[1])
    return LeptonError(f"could not join {scheduler}: {first_line(chain[-1])}")


def _int_arg(text: str, flag: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise LeptonError(f"{flag}: a whole number or auto, got {text!r}") from None


# -- profiles ------------------------------------------------------------------------------------


def _profiles_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--file", help="a profiles.yaml to check (default: $LEPTON_HOME/profiles.yaml)")


def run_profiles(a: argparse.Namespace) -> int:
    from .cluster.profiles import all_profiles

    for prof in all_profiles(a.file).values():
        sites = ", ".join(f"{s.name}({s.kind})×{s.workers}" + (f" gpus={s.gpus}" if s.gpus else "")
                          for s in prof.sites)
        print(f"{prof.name:12} {sites}  {prof.description}")
    return 0


# -- administration ------------------------------------------------------------------------------


def run_policy_check(a: argparse.Namespace) -> int:
    from .security.policy import load_policy

    policy = load_policy(a.file)
    print(f"{a.file}: ok ({len(policy.teams)} teams, {len(policy.members)} members, {len(policy.groups)} groups)")
    return 0


def run_token_add(a: argparse.Namespace) -> int:
    from .security.policy import load_policy
    from .security.tokens import TokenStore

    policy = load_policy()
    if not policy.teams_of(a.user):
        raise LeptonError(f"{a.user} is in no team of {policy.source}; add them under 'members:' first")
    token = TokenStore().add(a.user)
    print(token)
    print(f"personal token for {a.user}; it is shown only this once", file=sys.stderr)
    return 0


def run_token_list(a: argparse.Namespace) -> int:
    from .security.tokens import TokenStore

    for info in TokenStore().list():
        print(f"{info.user:16} {info.token_id}  {info.created}")
    return 0


def run_token_revoke(a: argparse.Namespace) -> int:
    from .security.tokens import TokenStore

    n = TokenStore().revoke(a.user)
    print(f"revoked {n} token(s) of {a.user}")
    return 0


def run_audit_verify(a: argparse.Namespace) -> int:
    from . import config
    from .security.audit import verify

    path = a.file or config.audit_path()
    result = verify(path)
    if result.ok:
        print(f"{path}: ok, {result.entries} entries, chain intact")
        return 0
    print(f"{path}: TAMPERED at line {result.bad_line}: {result.reason}", file=sys.stderr)
    return 1


def run_join_token(a: argparse.Namespace) -> int:
    from .services import issue_join_token

    token, address = issue_join_token(a.cluster, a.site)
    print(token)
    print(f"scheduler: {address}", file=sys.stderr)
    print(f"on the joining machine: lepton-lab worker --site {a.site} --join-token TOKEN "
          f"--server <Jupyter server URL>", file=sys.stderr)
    host = address.rpartition("://")[2].rpartition(":")[0].strip("[]")
    if host in ("127.0.0.1", "localhost", "::1", "0.0.0.0", ""):
        print(f"note: {address} is reachable from this machine only; set LEPTON_SCHEDULER_HOST and "
              "LEPTON_SCHEDULER_ADVERTISE for the Jupyter server so other machines can join", file=sys.stderr)
    return 0


def run_revoke(a: argparse.Namespace) -> int:
    from .security.identity import local_user
    from .services.certs import revoke_offline

    revoked = revoke_offline(a.user, by=local_user())
    total = sum(revoked.values())
    print(f"revoked {total} certificate(s) of {a.user} on {sum(1 for n in revoked.values() if n)} cluster(s)")
    return 0


def run_registry_migrate(a: argparse.Namespace) -> int:
    from .security.identity import local_user
    from .security.policy import load_policy
    from .services import Actor, Services

    services = Services(load_policy(), tls=False)
    try:
        done = services.migrate_registry(Actor(local_user()), a.team)
    finally:
        services.close()
    for m in done:
        aliases = ", ".join(f"{k}={v}" for k, v in m["aliases"].items()) or "no aliases"
        print(f"{m['team']}/{m['name']}: signed alias log written for versions {m['versions']} ({aliases})")
    print(f"migrated {len(done)} model(s); every other model already has its alias log")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lepton-lab", description="Lepton Lab command line")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker", help="join this machine to a scheduler as workers of a site")
    _worker_args(w)
    w.set_defaults(run=run_worker)
    pr = sub.add_parser("profiles", help="list cluster profiles (built-in and yours), checking yours")
    _profiles_args(pr)
    pr.set_defaults(run=run_profiles)
    pol = sub.add_parser("policy", help="check a policy file")
    pol_sub = pol.add_subparsers(dest="action", required=True)
    chk = pol_sub.add_parser("check", help="validate a policy file; one line per problem")
    chk.add_argument("file")
    chk.set_defaults(run=run_policy_check)
    tok = sub.add_parser("token", help="personal access tokens")
    tok_sub = tok.add_subparsers(dest="action", required=True)
    add = tok_sub.add_parser("add", help="issue a token for USER (printed once)")
    add.add_argument("user")
    add.set_defaults(run=run_token_add)
    tok_sub.add_parser("list", help="users and token ids (never the tokens)").set_defaults(run=run_token_list)
    rev = tok_sub.add_parser("revoke", help="revoke every token of USER")
    rev.add_argument("user")
    rev.set_defaults(run=run_token_revoke)
    aud = sub.add_parser("audit", help="the audit log")
    aud_sub = aud.add_subparsers(dest="action", required=True)
    ver = aud_sub.add_parser("verify", help="check the hash chain; exit 1 if a line was changed or removed")
    ver.add_argument("--file", default=None)
    ver.set_defaults(run=run_audit_verify)
    rv = sub.add_parser("revoke", help="revoke USER's client certificates on every cluster; running ones "
                        "close USER's connections at once")
    rv.add_argument("user")
    rv.set_defaults(run=run_revoke)
    reg = sub.add_parser("registry", help="the model registry")
    reg_sub = reg.add_subparsers(dest="action", required=True)
    mig = reg_sub.add_parser("migrate", help="give models published before alias logs their signed log, "
                             "after verifying every version (admins of the team)")
    mig.add_argument("--team", default=None, help="one team (default: every team of the policy)")
    mig.set_defaults(run=run_registry_migrate)
    jt = sub.add_parser("join-token", help="a one-time token for a worker joining CLUSTER over TLS")
    jt.add_argument("cluster")
    jt.add_argument("--site", required=True)
    jt.set_defaults(run=run_join_token)
    for name, (help_text, fill) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        runner = fill(p)
        p.set_defaults(run=runner)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except LeptonError as e:
        print(f"lepton-lab {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
