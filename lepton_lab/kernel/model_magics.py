"""``%lepton compress / publish / load / models / serve / predict``: the model verbs as magics."""

from __future__ import annotations

from typing import Any

from IPython.core.error import UsageError
from IPython.display import display

from .. import api
from .parsing import MagicParser as _Parser


def _lookup(ns: dict[str, Any], name: str, what: str) -> Any:
    if name not in ns:
        raise UsageError(f"%lepton: no variable {name!r} in the notebook for {what}")
    return ns[name]


def register_magics(magics) -> None:
    ns = magics.shell.user_ns

    p = _Parser(prog="compress", add_help=False, description="quantize/prune/distill a model, with a report")
    p.add_argument("model", help="variable holding a model or a train result")
    p.add_argument("--data", required=True, help="variable holding (X_train, y_train, X_test, y_test)")
    p.add_argument("--quantize", choices=("int8",))
    p.add_argument("--prune", type=float)
    p.add_argument("--distill", action="store_true", help="distill into a smaller default student")
    p.add_argument("--trees", help="XGBoost: a number of trees or 'best'")
    p.add_argument("--tolerance", type=float, default=None, help="largest metric drop accepted, in points")
    p.add_argument("--force", action="store_true", help="keep the result even beyond the tolerance")
    p.add_argument("--as", dest="target", default=None, help="variable for the result (default MODEL_small)")

    def compress(a):
        kwargs: dict[str, Any] = {"data": _lookup(ns, a.data, "--data"), "force": a.force}
        if a.quantize:
            kwargs["quantize"] = a.quantize
        if a.prune is not None:
            kwargs["prune"] = a.prune
        if a.distill:
            kwargs["distill"] = "auto"
        if a.trees:
            kwargs["trees"] = "best" if a.trees == "best" else int(a.trees)
        if a.tolerance is not None:
            kwargs["tolerance"] = a.tolerance
        result = api.compress(_lookup(ns, a.model, "the model"), **kwargs)
        ns[a.target or f"{a.model}_small"] = result
        display(result.report)

    magics.register("compress", p, line=compress)

    p = _Parser(prog="publish", add_help=False, description="publish a model version to a team's registry")
    p.add_argument("model", help="variable holding a model or a train/compress/federate result")
    p.add_argument("--name", default=None, help="model name (default: the variable's name)")
    p.add_argument("--team", default=None)
    p.add_argument("--alias", default=None, help="e.g. production, staging")
    p.add_argument("--description", default="")
    p.add_argument("--tag", action="append", default=[])

    def publish(a):
        manifest = api.publish(_lookup(ns, a.model, "the model"), (a.name or a.model).replace("_", "-"),
                               team=a.team, alias=a.alias, description=a.description, tags=tuple(a.tag))
        print(f"published {manifest['team']}/{manifest['name']} version {manifest['version']}"
              + (f" as {a.alias}" if a.alias else "") + f", signed by {manifest['signer']}")

    magics.register("publish", p, line=publish)

    p = _Parser(prog="load", add_help=False, description="load a verified model version into a variable")
    p.add_argument("ref", help="name, name@VERSION or name@ALIAS")
    p.add_argument("--team", default=None)
    p.add_argument("--as", dest="target", default=None)

    def load(a):
        model = api.load(a.ref, team=a.team)
        target = a.target or a.ref.split("@")[0].replace("-", "_")
        ns[target] = model
        print(f"{a.ref} -> `{target}` ({type(model).__name__}), signature and tags verified")

    magics.register("load", p, line=load)

    p = _Parser(prog="models", add_help=False, description="the models you may read")
    p.add_argument("--team", default=None)

    def models(a):
        found = api.models(a.team)
        if not found:
            print("no models yet; publish one with %lepton publish")
            return
        display(models_table(found), raw=True)

    magics.register("models", p, line=models)

    p = _Parser(prog="serve", add_help=False, description="load a published model onto a site's workers")
    p.add_argument("ref", nargs="?", help="name@ALIAS or name@VERSION")
    p.add_argument("--site", default=None, help="a site name or kind (default: the planner's choice)")
    p.add_argument("--team", default=None)
    p.add_argument("--stop", action="store_true", help="stop serving REF (or everything)")

    def serve(a):
        if a.stop:
            print(f"stopped serving {', '.join(api.serve_stop(a.ref))}")
            return
        if not a.ref:
            raise UsageError("%lepton serve: name the model, e.g. fraud@production")
        served = api.serve(a.ref, site=a.site, team=a.team)
        print(f"serving {a.ref} on {len(served.workers)} {served.site} worker(s); predict with "
              f"lepton_lab.predict({a.ref.split('@')[0]!r}, X)")

    magics.register("serve", p, line=serve)

    p = _Parser(prog="predict", add_help=False, description="predictions from a served model")
    p.add_argument("name")
    p.add_argument("--data", required=True, help="variable holding rows of features")
    p.add_argument("--as", dest="target", default="predictions")

    def predict(a):
        out = api.predict(a.name, _lookup(ns, a.data, "--data"))
        ns[a.target] = out["predictions"]
        print(f"{out['rows']} rows -> `{a.target}`; model {out['latency_ms']} ms, "
              f"round trip {out['round_trip_ms']} ms")

    magics.register("predict", p, line=predict)


MODEL_HEAD = ["team", "name", "versions", "aliases", "framework", "updated"]


def models_table(models: list[dict[str, Any]]) -> dict[str, str]:
    """The models as a table (HTML and plain text): latest version, aliases, last update."""
    from ..views import _table

    rows = []
    for m in sorted(models, key=lambda m: (m.get("team", ""), m.get("name", ""))):
        versions = m.get("versions", "")
        latest = m.get("latest_version")
        aliases = ", ".join(f"{k}→v{v}" for k, v in sorted((m.get("aliases") or {}).items())) or "–"
        updated = str(m.get("updated") or "–").replace("T", " ")[:16]
        rows.append([m.get("team", ""), m.get("name", ""),
                     f"{versions} (latest v{latest})" if latest is not None else str(versions),
                     aliases, m.get("framework", "") or "–", updated])
    cols = [MODEL_HEAD] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cols) for i in range(len(MODEL_HEAD))]
    text = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cols)
    return {"text/plain": text, "text/html": _table(MODEL_HEAD, rows)}
