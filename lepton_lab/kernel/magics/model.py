"""``%lepton compress / publish / load / models / serve / predict``: the model verbs."""

from __future__ import annotations

import argparse
from typing import Any

from IPython.core.error import UsageError
from IPython.display import display

from ... import api
from ...errors import ConfigError
from .arguments import add_verb
from .train import _fraction_or_count, data_and_target


def _lookup(ns: dict[str, Any], name: str, what: str) -> Any:
    if name not in ns:
        raise UsageError(f"%lepton: no variable {name!r} in the notebook for {what}")
    return ns[name]


def _trees(text: str) -> int | str:
    if text == "best":
        return text
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"a number of trees >= 1 or 'best', not {text!r}")
    return n


def add_parsers(verbs: Any) -> None:
    """Add the model subcommands to ``%lepton``'s sub-parsers."""
    p = add_verb(verbs, "compress", "quantize/prune/distill a model, with a report", _compress)
    p.add_argument("model", help="variable holding a model or a train result")
    p.add_argument("--data", required=True,
                   help="a DataFrame variable (with --target), X,y (the holdout), or a variable holding "
                        "(X_test, y_test) or (X_train, y_train, X_test, y_test)")
    p.add_argument("--target", default=None, help="label column (or a variable holding the labels)")
    p.add_argument("--test-size", dest="test_size", type=_fraction_or_count, default=None,
                   help="with --target: the holdout, as train splits it (default 0.2)")
    p.add_argument("--quantize", choices=("int8",))
    p.add_argument("--prune", type=float)
    p.add_argument("--distill", action="store_true", help="distill into a smaller default student")
    p.add_argument("--trees", type=_trees, help="XGBoost: a number of trees or 'best'")
    p.add_argument("--tolerance", type=float, default=None, help="largest metric drop accepted, in points")
    p.add_argument("--force", action="store_true", help="keep the result even beyond the tolerance")
    p.add_argument("--as", dest="var", default=None, help="variable for the result (default MODEL_small)")

    p = add_verb(verbs, "publish", "publish a model version to a team's registry", _publish)
    p.add_argument("model", help="variable holding a model or a train/compress/federate result")
    p.add_argument("--name", default=None, help="model name (default: the variable's name)")
    p.add_argument("--team", default=None)
    p.add_argument("--alias", default=None, help="e.g. production, staging")
    p.add_argument("--description", default="")
    p.add_argument("--tag", action="append", default=[])

    p = add_verb(verbs, "load", "load a verified model version into a variable", _load)
    p.add_argument("ref", help="name, name@VERSION or name@ALIAS")
    p.add_argument("--team", default=None)
    p.add_argument("--as", dest="target", default=None)

    p = add_verb(verbs, "models", "the models you may read", _models)
    p.add_argument("--team", default=None)

    p = add_verb(verbs, "serve", "keep a published model loaded on a site's workers", _serve)
    p.add_argument("ref", nargs="?", help="name, name@ALIAS or name@VERSION")
    p.add_argument("--site", default=None, help="a site name or kind (default: the planner's choice)")
    p.add_argument("--team", default=None)
    p.add_argument("--as", dest="deployment", default=None, help="deployment name (default: the model's)")
    p.add_argument("--cluster", default=None, help="cluster name (default: the current one)")
    p.add_argument("--stop", action="store_true", help="stop deployment REF (or every one this kernel started)")
    p.add_argument("--list", action="store_true", help="the cluster's deployments")

    p = add_verb(verbs, "predict", "predictions from a deployment", _predict)
    p.add_argument("name", help="the deployment")
    p.add_argument("--data", required=True, help="variable holding rows of features")
    p.add_argument("--as", dest="target", default="predictions")
    p.add_argument("--cluster", default=None)


def _compress(magics: Any, a: argparse.Namespace) -> None:
    from ...ml.compress import CompressionRefused
    from ...ml.compress.arguments import CompressArgumentError

    ns = magics.shell.user_ns
    if a.test_size is not None and a.target is None:
        raise UsageError("%lepton compress: --test-size splits the data of --target; add --target COL")
    data, target = data_and_target(ns, a.data, a.target)
    kwargs: dict[str, Any] = {"data": data, "force": a.force}
    if target is not None:
        kwargs.update(target=target, test_size=0.2 if a.test_size is None else a.test_size)
    if a.quantize:
        kwargs["quantize"] = a.quantize
    if a.prune is not None:
        kwargs["prune"] = a.prune
    if a.distill:
        kwargs["distill"] = "auto"
    if a.trees is not None:
        kwargs["trees"] = a.trees
    if a.tolerance is not None:
        kwargs["tolerance"] = a.tolerance
    try:
        result = api.compress(_lookup(ns, a.model, "the model"), **kwargs)
    except CompressArgumentError as e:
        raise ConfigError(e.magic) from None
    except CompressionRefused as e:
        raise CompressionRefused(e.report.refusal(keep="--force") if e.report else str(e), e.report) from None
    ns[a.var or f"{a.model}_small"] = result
    display(result.report)


def _publish(magics: Any, a: argparse.Namespace) -> None:
    ns = magics.shell.user_ns
    manifest = api.publish(_lookup(ns, a.model, "the model"), (a.name or a.model).replace("_", "-"),
                           team=a.team, alias=a.alias, description=a.description, tags=tuple(a.tag))
    print(f"published {manifest['team']}/{manifest['name']} version {manifest['version']}"
          + (f" as {a.alias}" if a.alias else "") + f", signed by {manifest['signer']}")


def _load(magics: Any, a: argparse.Namespace) -> None:
    model = api.load(a.ref, team=a.team)
    target = a.target or a.ref.split("@")[0].replace("-", "_")
    magics.shell.user_ns[target] = model
    print(f"{a.ref} -> `{target}` ({type(model).__name__}), signature and tags verified")


def _models(magics: Any, a: argparse.Namespace) -> None:
    found = api.models(a.team)
    if not found:
        print("no models yet; publish one with %lepton publish")
        return
    display(models_table(found), raw=True)


def _serve(magics: Any, a: argparse.Namespace) -> None:
    if a.stop:
        print(f"stopped serving {', '.join(api.serve_stop(a.ref, cluster=a.cluster)) or 'nothing'}")
        return
    if a.list:
        found = api.deployments(a.cluster)
        print("\n".join(repr(d) for d in found) or "no deployments; start one with %lepton serve MODEL --site S")
        return
    if not a.ref:
        raise UsageError("%lepton serve: name the model, e.g. fraud@production")
    d = api.serve(a.ref, site=a.site, team=a.team, cluster=a.cluster, name=a.deployment)
    print(f"serving {d.model} v{d.version} as {d.name} on {len(d.workers)} {d.site} worker(s) of {d.cluster}; "
          f"predict with lepton_lab.predict({d.name!r}, X)")


def _predict(magics: Any, a: argparse.Namespace) -> None:
    ns = magics.shell.user_ns
    out = api.predict(a.name, _lookup(ns, a.data, "--data"), cluster=a.cluster)
    ns[a.target] = out["predictions"]
    print(f"{out['rows']} rows -> `{a.target}` on {out.get('worker', '?')}; model {out['latency_ms']} ms, "
          f"round trip {out['round_trip_ms']} ms")


MODEL_HEAD = ["team", "name", "versions", "aliases", "framework", "updated"]


def models_table(models: list[dict[str, Any]]) -> dict[str, str]:
    """The models as a table (HTML and plain text): latest version, aliases, last update."""
    from ...views import _table

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
