"""XGBoost compression steps: fewer trees (best-iteration slicing) and XGBoost's ``prune`` updater."""

from __future__ import annotations

import json
import sys
import warnings
from typing import Any

from lepton_lab.ml.compress.arguments import no_best_iteration, trees_cut_nothing


def _booster(model):
    return model.get_booster() if isinstance(model, sys.modules["xgboost"].XGBModel) else model


def _compress_xgboost(model, evald, gamma, trees):
    import xgboost as xgb

    booster = _booster(model)
    rounds = booster.num_boosted_rounds()
    details: dict[str, Any] = {"rounds_before": rounds, "nodes_before": _n_nodes(booster)}
    steps: list[str] = []
    new = booster
    if trees is not None:
        if trees == "best":
            best = booster.attr("best_iteration")
            if best is None:
                raise no_best_iteration(rounds)
            keep = int(best) + 1
        elif trees >= rounds:
            raise trees_cut_nothing(trees, rounds)
        else:
            keep = trees
        # Slicing drops best_iteration, which described the uncut model.
        new = booster[:keep]
        steps.append(f"trees {keep}")
    if gamma is not None:
        dtrain = xgb.DMatrix(evald.X_train, label=evald.y_train)
        with warnings.catch_warnings():
            # Asking for an updater by name makes xgboost warn that tree_method is ignored.
            warnings.filterwarnings("ignore", message=".*updater.*", category=UserWarning)
            new = xgb.train({"process_type": "update", "updater": "prune", "gamma": gamma},
                            dtrain, num_boost_round=new.num_boosted_rounds(), xgb_model=new)
        new = _compact_trees(new)
        steps.append(f"prune gamma {gamma:g}")
    details.update(rounds_after=new.num_boosted_rounds(), nodes_after=_n_nodes(new))
    if isinstance(model, xgb.XGBModel):
        wrapped = type(model)(**model.get_params())
        wrapped.load_model(bytearray(new.save_raw("ubj")))
        return wrapped, steps, details
    return new, steps, details


def _trees_json(model: dict) -> list[dict] | None:
    booster = model["learner"]["gradient_booster"]
    booster = booster.get("gbtree", booster)  # dart nests its trees one level deeper
    return booster.get("model", {}).get("trees")


def _n_nodes(booster) -> int:
    trees = _trees_json(json.loads(booster.save_raw("json"))) or []
    return sum(int(t["tree_param"]["num_nodes"]) - int(t["tree_param"]["num_deleted"])
               for t in trees)


def _compact_trees(booster):
    """Drop the nodes the prune updater marked deleted; XGBoost keeps them in its files."""
    import xgboost as xgb

    model = json.loads(booster.save_raw("json"))
    trees = _trees_json(model)
    if not trees:
        return booster
    for tree in trees:
        param = tree["tree_param"]
        if int(param["num_deleted"]) == 0:
            continue
        if tree.get("categories_nodes") or int(param.get("size_leaf_vector", "1")) > 1:
            return booster  # categorical or vector leaves: leave the layout to XGBoost
        n = int(param["num_nodes"])
        order, i = [0], 0
        while i < len(order):
            node = order[i]
            order += [c for c in (tree["left_children"][node], tree["right_children"][node])
                      if c != -1]
            i += 1
        new_id = {old: new for new, old in enumerate(order)}
        for key, values in list(tree.items()):
            if isinstance(values, list) and len(values) == n:
                tree[key] = [values[o] for o in order]
        for key in ("left_children", "right_children"):
            tree[key] = [new_id.get(c, -1) for c in tree[key]]
        tree["parents"] = [new_id.get(p, p) for p in tree["parents"]]
        param["num_nodes"], param["num_deleted"] = str(len(order)), "0"
    compact = xgb.Booster()
    compact.load_model(bytearray(json.dumps(model).encode()))
    return compact
