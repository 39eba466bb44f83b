"""``%lepton`` lines parsed without a shell or a cluster: every subcommand's good and bad lines."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError

from lepton_lab.kernel.magics import parse
from lepton_lab.kernel.magics.parser import build_parser

LINE_VERBS = ["clusters", "compress", "connect", "down", "federate", "help", "load", "models", "plan", "predict",
              "publish", "scale", "serve", "start", "status", "train", "tune", "up"]


def _refusal(line: str, *, cell: bool = False) -> str:
    with pytest.raises(UsageError) as err:
        parse(line, cell=cell)
    message = str(err.value)
    assert "\n" not in message, message
    return message


def _args(line: str, *, cell: bool = False) -> dict:
    verb, args = parse(line, cell=cell)
    assert verb == args.verb == line.split()[0] if line else verb == "help"
    return {k: v for k, v in vars(args).items() if k not in ("handler", "verb")}


GOOD = [
    ("up", {"profile": None, "name": None, "cloud": None, "edge": None, "gpus": None, "threads": None,
            "memory": None, "replace": False, "no_view": False}),
    ("up --profile hybrid --name lab --cloud 2 --edge 3 --gpus auto --threads 2 --memory 2GiB --replace --no-view",
     {"profile": "hybrid", "name": "lab", "cloud": 2, "edge": 3, "gpus": "auto", "threads": 2, "memory": "2GiB",
      "replace": True, "no_view": True}),
    ("up --gpus 1", {"gpus": 1}),
    ("connect tcp://10.0.0.5:8786 --name shared --timeout 5",
     {"address": "tcp://10.0.0.5:8786", "name": "shared", "timeout": 5.0}),
    ("status lab --static", {"name": "lab", "static": True}),
    ("status", {"name": None, "static": False}),
    ("clusters", {}),
    ("scale 2 --site edge-branch-b --name lab", {"n": 2, "site": "edge-branch-b", "name": "lab"}),
    ("scale 0", {"n": 0, "site": "edge", "name": None}),
    ("start ward", {"name": "ward", "no_view": False}),
    ("start ward --no-view", {"name": "ward", "no_view": True}),
    ("down --all", {"name": None, "all": True}),
    ("down lab", {"name": "lab", "all": False}),
    ("help", {"topic": None}),
    ("help train", {"topic": "train"}),
    ("", {"topic": None}),
    ("compress fraud --data df --target is_fraud --test-size 0.25 --trees best --as small",
     {"model": "fraud", "data": "df", "target": "is_fraud", "test_size": 0.25, "trees": "best", "var": "small"}),
    ("compress net --data digits --quantize int8 --prune 0.3 --distill --tolerance 1 --force --trees 40",
     {"quantize": "int8", "prune": 0.3, "distill": True, "tolerance": 1.0, "force": True, "trees": 40}),
    ("publish fraud --team finance --alias production --tag a --tag b",
     {"model": "fraud", "team": "finance", "alias": "production", "tag": ["a", "b"], "description": ""}),
    ("load fraud@production --team finance --as fraud_prod",
     {"ref": "fraud@production", "team": "finance", "target": "fraud_prod"}),
    ("models --team finance", {"team": "finance"}),
    ("serve fraud@production --site edge --team finance --as scorer --cluster lab",
     {"ref": "fraud@production", "site": "edge", "deployment": "scorer", "cluster": "lab", "stop": False}),
    ("serve fraud --stop", {"ref": "fraud", "stop": True, "list": False}),
    ("serve --list", {"ref": None, "list": True}),
    ("predict fraud --data X_new", {"name": "fraud", "data": "X_new", "target": "predictions", "cluster": None}),
    ("plan train --workers 1 --data-site edge-hospital-a --data-gb 2 --data-stays --hours 0.5",
     {"kind": "train", "workers": 1, "data_site": "edge-hospital-a", "data_gb": 2.0, "data_moves": False,
      "hours": 0.5, "gpus": 0}),
    ("plan federate", {"kind": "federate", "workers": None, "data_moves": True}),
    ("""train xgboost --data df --target is_fraud --name fraud --site cloud --rounds 200 --early-stopping 10 """
     """--params '{"max_depth": 4}'""",
     {"kind": "xgboost", "data": "df", "target": "is_fraud", "name": "fraud", "site": "cloud", "rounds": 200,
      "early_stopping": 10, "params": '{"max_depth": 4}', "strategy": "auto", "test_size": 0.2}),
    ("train torch --model net --data X,y --epochs 2 --workers 2 --optimizer sgd --name digits --test-size 300 "
     "--no-progress",
     {"kind": "torch", "model": "net", "data": "X,y", "epochs": 2, "workers": 2, "optimizer": "sgd",
      "test_size": 300, "progress": False}),
    ("tune xgboost --data X,y --space 'max_depth=int:2..8 eta=float:0.01..0.3:log' --study fraud-hpo "
     "--team finance --trials 32 --sampler random --pruner none --direction maximize --no-view",
     {"kind": "xgboost", "space": "max_depth=int:2..8 eta=float:0.01..0.3:log", "study": "fraud-hpo",
      "trials": 32, "sampler": "random", "pruner": "none", "direction": "maximize", "view": False}),
    ("tune federate --model net --loader load_site --eval held --space 'lr=float:0.01..0.5:log' --no-secure",
     {"kind": "federate", "loader": "load_site", "eval": "held", "secure": False, "dp_noise": 1.0}),
    ("federate --model net --loader load_site --sites a,b --rounds 20 --strategy fedprox --mu 0.1 --no-secure "
     "--dp-noise 1.1 --quiet",
     {"model": "net", "loader": "load_site", "sites": "a,b", "rounds": 20, "strategy": "fedprox", "mu": 0.1,
      "secure": False, "dp_noise": 1.1, "quiet": True}),
    ("federate --model net --loader load_site", {"secure": True, "strategy": "fedavg", "optimizer": "sgd"}),
]


@pytest.mark.parametrize("line, expected", GOOD, ids=[g[0][:40] or "empty" for g in GOOD])
def test_good_lines_parse(line, expected):
    got = _args(line)
    assert {k: got[k] for k in expected} == expected


def test_every_line_verb_has_a_good_line_here():
    assert {line.split()[0] for line, _ in GOOD if line} == set(LINE_VERBS)


def test_run_is_a_cell_subcommand():
    args = _args("run --site edge-hospital-a --job ward-count --return rows,n --gpus 1 --timeout 30", cell=True)
    assert args == {"site": "edge-hospital-a", "job": "ward-count", "returns": "rows,n", "gpus": 1,
                    "name": None, "timeout": 30.0}


BAD = [
    ("frob", "%lepton: unknown line subcommand 'frob' (valid: " + ", ".join(LINE_VERBS) + ")"),
    ("--profile hybrid", "unknown line subcommand '--profile'"),
    ("run --site edge", "; 'run' is a cell magic"),
    ("up 'hybrid", "%lepton: cannot parse the line (No closing quotation)"),
    ("up --bogus 3", "%lepton up: unrecognized arguments: --bogus 3 (valid options: --cloud, --edge, --gpus, "
                     "--memory, --name, --no-view, --profile, --replace, --team, --threads)"),
    ("up --cloud two", "%lepton up: argument --cloud: not a whole number: 'two'"),
    ("up --edge -1", "%lepton up: argument --edge: must be >= 0: '-1'"),
    ("up --gpus some", "%lepton up: argument --gpus: not a whole number: 'some'"),
    ("up --memory lots", "%lepton up: argument --memory: not a size such as 2GiB or 512MiB: 'lots'"),
    ("connect", "%lepton connect: the following arguments are required: address"),
    ("connect tcp://h:1 --timeout soon", "%lepton connect: argument --timeout: invalid float value: 'soon'"),
    ("status a b", "%lepton status: unrecognized arguments: b (valid options: --static)"),
    ("start", "%lepton start: the following arguments are required: name"),
    ("start ward --workers 3", "%lepton start: unrecognized arguments: --workers 3 (valid options: --no-view)"),
    ("clusters --all", "%lepton clusters: unrecognized arguments: --all"),
    ("scale many", "%lepton scale: argument n: not a whole number: 'many'"),
    ("scale", "%lepton scale: the following arguments are required: n"),
    ("down --force", "%lepton down: unrecognized arguments: --force (valid options: --all)"),
    ("help frob", "%lepton help: argument VERB: invalid choice: 'frob' (choose from 'up', 'connect'"),
    ("compress fraud", "%lepton compress: the following arguments are required: --data"),
    ("compress fraud --data d --quantize int4", "argument --quantize: invalid choice: 'int4' (choose from 'int8')"),
    ("compress fraud --data d --trees 0", "argument --trees: a number of trees >= 1 or 'best', not '0'"),
    ("compress fraud --data d --prune much", "argument --prune: invalid float value: 'much'"),
    ("compress fraud --data d --test-size a", "argument --test-size: not a number: 'a'"),
    ("publish", "%lepton publish: the following arguments are required: model"),
    ("load", "%lepton load: the following arguments are required: ref"),
    ("models finance", "%lepton models: unrecognized arguments: finance (valid options: --team)"),
    ("serve fraud --port 80", "%lepton serve: unrecognized arguments: --port 80 (valid options: --as, --cluster"),
    ("predict fraud", "%lepton predict: the following arguments are required: --data"),
    ("plan", "%lepton plan: the following arguments are required: kind"),
    ("plan sing", "%lepton plan: argument kind: invalid choice: 'sing' (choose from 'train', 'federate', 'serve', "
                  "'tune')"),
    ("plan train --hours -2", "%lepton plan: argument --hours: must be a number >= 0: '-2'"),
    ("plan train --data-gb inf", "%lepton plan: argument --data-gb: must be a number >= 0: 'inf'"),
    ("train", "%lepton train: the following arguments are required: kind, --data, --name"),
    ("train catboost --data df --name a", "%lepton train: argument kind: invalid choice: 'catboost' "
                                          "(choose from 'xgboost', 'torch', 'pytorch')"),
    ("train xgboost --data df --name a --rounds many", "argument --rounds: invalid int value: 'many'"),
    ("train xgboost --data df --name a --strategy fast", "argument --strategy: invalid choice: 'fast' "
                                                         "(choose from 'auto', 'single', 'distributed')"),
    ("train torch --data X,y --name a --optimizer rmsprop", "invalid choice: 'rmsprop' (choose from 'adam', 'sgd')"),
    ("train xgboost --data df --name a --lr", "%lepton train: argument --lr: expected one argument"),
    ("tune xgboost --data X,y", "%lepton tune: the following arguments are required: --space"),
    ("tune lightgbm --space a", "argument kind: invalid choice: 'lightgbm' (choose from 'xgboost', 'torch', "
                                "'pytorch', 'federate')"),
    ("tune xgboost --space a --sampler x", "%lepton tune: argument --sampler: invalid choice: 'x' "
                                           "(choose from 'tpe', 'random', 'grid')"),
    ("tune xgboost --space a --pruner always", "argument --pruner: invalid choice: 'always'"),
    ("tune xgboost --space a --direction up", "argument --direction: invalid choice: 'up'"),
    ("tune xgboost --space a --trials lots", "argument --trials: invalid int value: 'lots'"),
    ("federate --model net", "%lepton federate: the following arguments are required: --loader"),
    ("federate --model net --loader l --strategy fedsgd", "argument --strategy: invalid choice: 'fedsgd' "
                                                          "(choose from 'fedavg', 'fedprox')"),
    ("federate --model net --loader l --secure --no-secure", "argument --no-secure: not allowed with argument "
                                                             "--secure"),
    ("federate --model net --loader l --rounds 2.5", "argument --rounds: invalid int value: '2.5'"),
]


@pytest.mark.parametrize("line, message", BAD, ids=[b[0][:40] for b in BAD])
def test_bad_lines_are_one_usage_error_line(line, message):
    assert message in _refusal(line)


def test_cell_subcommands():
    assert _refusal("frob", cell=True) == "%lepton: unknown cell subcommand 'frob' (valid: run)"
    assert _refusal("up", cell=True).endswith("; 'up' is a line magic")
    assert _refusal("run", cell=True) == "%lepton run: the following arguments are required: --site"
    assert "argument --gpus: must be >= 0: '-2'" in _refusal("run --site edge --gpus -2", cell=True)


def test_one_parser_with_a_sub_parser_per_verb():
    from IPython.core.magic_arguments import MagicArgumentParser

    parser = build_parser()
    assert isinstance(parser, MagicArgumentParser) and parser.prog == "%lepton"
    verbs = parser.verbs
    assert sorted(verbs) == sorted(LINE_VERBS + ["run"])
    assert all(isinstance(p, MagicArgumentParser) and p.prog == f"%lepton {name}" for name, p in verbs.items())
    assert [name for name, p in verbs.items() if p.cell] == ["run"]
    # a verb's help names its options and their choices
    text = verbs["train"].format_help()
    assert "{xgboost,torch,pytorch}" in text and "--early-stopping N" in text


def test_an_extra_verb_goes_to_its_own_parser():
    parser = build_parser()
    from lepton_lab.kernel.magics.arguments import add_verb

    seen = []
    add_verb(parser.subcommands, "nap", "sleeps", lambda magics, a: seen.append(a)).add_argument("--for", type=int)
    verb, args = parse("nap --for 3", parser=parser)
    assert verb == "nap" and getattr(args, "for") == 3
    args.handler(None, args)
    assert seen == [args]
    with pytest.raises(UsageError, match="unknown line subcommand 'nap'"):
        parse("nap")  # the default parser is another one


def test_help_lists_every_subcommand_and_a_subcommand_its_options(capsys):
    from types import SimpleNamespace

    magics = SimpleNamespace(parser=build_parser())
    verb, args = parse("help")
    args.handler(magics, args)
    out = capsys.readouterr().out
    for name, p in magics.parser.verbs.items():
        assert f"  %lepton {name}" in out and f"      {p.description}\n" in out
    assert "%lepton up [--profile PROFILE]" in out and "%lepton run --site SITE" in out
    verb, args = parse("help tune")
    args.handler(magics, args)
    out = capsys.readouterr().out
    assert out.startswith("usage: %lepton tune ") and "{tpe,random,grid}" in out
    assert "--trials TRIALS       finished trials the study should have" in out
