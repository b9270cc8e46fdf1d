"""What a sweep runs, without Ray: run configs, the plans of the seeds and ablation phases, choosing a class's
best configuration, and `run_and_store` (one run, idempotent against the results store).

A *run config* is a flat dict: TrialSpec fields chosen by the sweep (`normal_class`, `seed`, `method`,
`boundary`, and the searched parameters such as `ae_lr`, `oc_lr`, `nu`, `layers` as "0,1,3") plus `mode`.
`spec_from_config` completes it with the search space's fixed settings at the sweep's budget.
A *pack* is {"pack": [run configs]}: runs trained together (engine/packing.py: one stage 1 for the runs that
share it, seeds side by side in one packed model) by `run_pack_and_store`; `packed_plan` groups a phase's runs.
engine/sweep.py hands these dicts to Ray Tune; tests and benchmarks call `run_and_store` directly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass

import pandas as pd
import torch

from engine import distributed
from engine.data import class_names
from engine.packing import packing_problem, run_packed, sharing_problem
from engine.trial import BASELINES, TrialResult, TrialSpec, config_key, failed_row, run_key, run_trial, stage1_key
from results import ResultsStore
from search_spaces import get_space, layers_to_str, params_to_fields

MODES = ("paper", "search", "seeds", "ablation")
SPEC_FIELDS = {f.name for f in dataclasses.fields(TrialSpec)}
SEARCHED = ("ae_lr", "oc_lr", "nu", "layers", "boundary")  # what a selection carries over to the seeds phase
TRAINING_LOG = "MOCCA_TRAINING_LOG"  # debugging aid: append one line per training started (tests count them)
INJECT_FAILURE = "MOCCA_INJECT_FAILURE"  # fault injection for tests: "<class>:<seed>" raises inside that run


@dataclass(frozen=True)
class SweepContext:
    """Everything a worker needs besides the run config; shipped to the workers once per experiment."""

    dataset: str
    store_uri: str
    sweep: str
    budget: str = "smoke"
    selection: str = "val"
    data_root: str | None = None
    data_options: tuple[tuple[str, object], ...] = ()
    cpus_per_run: float = 1.0
    device: str = "auto"
    compile: bool = False  # torch.compile the training steps; each worker process compiles once (engine/compiled.py)


def spec_from_config(ctx: SweepContext, config: dict) -> TrialSpec:
    fields = dict(get_space(ctx.dataset).fixed(ctx.budget, int(config["normal_class"])))
    fields.update(params_to_fields({k: v for k, v in config.items() if k in SPEC_FIELDS}))
    options = {**dict(fields.pop("data_options", ())), **dict(ctx.data_options)}
    fields.update(
        selection=ctx.selection,
        data_root=ctx.data_root,
        data_options=tuple(sorted(options.items())),
        device=ctx.device,
        compile=ctx.compile,
    )
    return TrialSpec(**fields)


def _searched_params(config: dict) -> str:
    return json.dumps({k: v for k, v in sorted(config.items()) if k not in ("normal_class", "seed", "mode")})


def _maybe_inject_failure(spec: TrialSpec) -> None:
    target = os.environ.get(INJECT_FAILURE)
    if target and target == f"{spec.normal_class}:{spec.seed}" and spec.method == "mocca":
        raise RuntimeError(f"injected failure for class {spec.normal_class} seed {spec.seed}")


def _log_training(key: str) -> None:
    path = os.environ.get(TRAINING_LOG)
    if path:
        with open(path, "a") as f:
            f.write(f"{key} {os.getpid()} {time.time():.3f}\n")


def run_and_store(config: dict, ctx: SweepContext, node_id: str = "", trial_id: str = "") -> tuple[dict | None, bool]:
    """Train the run unless its key is already stored; store it; return (row, trained).

    Any error inside the run becomes a row with status `failed` (the sweep goes on); divergence becomes
    `diverged` inside run_trial. Re-running after a crash therefore never trains a stored run again.

    A data-parallel run (a torch.distributed process group of several processes, engine/distributed.py) calls
    this on every rank: rank 0 reads the store and tells the others whether to train, every rank trains its
    shard, rank 0 alone scores and writes the row; the other ranks return (None, trained). There an error is
    raised instead of stored, on every rank that hits it, so the group fails as a whole rather than leaving ranks
    waiting on one that gave up; the driver stores it (`store_failure`).
    """
    spec = spec_from_config(ctx, config)
    store = ResultsStore(ctx.store_uri)
    key = run_key(spec)
    main = distributed.is_main_process()
    stored = store.read_run(key) if main else None
    if distributed.broadcast_object(stored is not None):
        return stored, False
    torch.set_num_threads(max(1, int(ctx.cpus_per_run)))
    if main:
        _log_training(key)
    try:
        _maybe_inject_failure(spec)
        result = run_trial(spec)
    except Exception as exc:  # a failed run is data, not a crash of the sweep
        if distributed.active():
            raise
        result = TrialResult(row=failed_row(spec, exc))
    if not main:
        return None, True
    _store_row(store, result, config, ctx, node_id, trial_id)
    return result.row, True


def run_pack_and_store(
    configs: list[dict], ctx: SweepContext, node_id: str = "", trial_id: str = ""
) -> list[tuple[dict, bool]]:
    """`run_and_store` for runs trained together (engine/packing.py): those not yet stored train together and
    each is stored as its own row as soon as it is done; returns (row, trained) per config, in order. An error
    inside the group becomes a `failed` row for each of its runs not stored by then."""
    store = ResultsStore(ctx.store_uri)
    specs = [spec_from_config(ctx, c) for c in configs]
    out: list[tuple[dict, bool] | None] = [None] * len(configs)

    def store_result(i: int, result: TrialResult) -> None:
        out[i] = (_store_row(store, result, configs[i], ctx, node_id, trial_id), True)

    todo = []
    for i, spec in enumerate(specs):
        stored = store.read_run(run_key(spec))
        if stored is not None:
            out[i] = (stored, False)
            continue
        _log_training(run_key(spec))
        try:
            _maybe_inject_failure(spec)
        except RuntimeError as exc:
            store_result(i, TrialResult(failed_row(spec, exc)))
        else:
            todo.append(i)
    torch.set_num_threads(max(1, int(ctx.cpus_per_run)))
    try:
        if todo:
            run_packed([specs[i] for i in todo], on_result=lambda j, result: store_result(todo[j], result))
    except Exception as exc:  # a failed group is data, not a crash of the sweep
        for i in todo:
            if out[i] is None:
                store_result(i, TrialResult(failed_row(specs[i], exc)))
    return out


def packed_plan(
    ctx: SweepContext, configs: list[dict], size: int, share: bool = True, min_trials: int = 1
) -> list[dict]:
    """A phase's runs as Tune trials of runs trained together (engine/packing.py), each at the place of its first
    run: with `share`, the runs that train the same autoencoder (same stage-1 settings and seed) go in one trial;
    up to `size` seeds of them train side by side. {"pack": [...]} for a trial of several runs, the run alone
    otherwise. Fewer trials than `min_trials` (the cluster's run slots) would leave slots idle: then the trials
    sharing a stage 1 among most configurations are split by configuration (each configuration keeps its seeds
    together, so no run changes) until there are enough, or nothing is left to split."""
    trials: list[dict | list] = []
    groups: dict[str, list[tuple[set, list]]] = {}
    keys: dict[int, str] = {}  # id(config) -> config_key, for splitting
    for config in configs:
        spec = spec_from_config(ctx, config)
        seeds_per_trial = size if not packing_problem(spec) else 1
        if sharing_problem(spec) or (not share and seeds_per_trial == 1):
            trials.append(config)
            continue
        keys[id(config)] = config_key(spec)
        key = stage1_key(spec) if share else keys[id(config)]
        open_trials = groups.setdefault(key, [])  # (seeds, configs) of this key's trials so far
        seeds, members = next(((s, m) for s, m in open_trials if spec.seed in s or len(s) < seeds_per_trial),
                              (set(), []))  # fmt: skip
        if not members:
            open_trials.append((seeds, members))
            trials.append(members)
        seeds.add(spec.seed)
        members.append(config)
    _split_until(trials, min_trials, keys)
    return [t if isinstance(t, dict) else (t[0] if len(t) == 1 else {"pack": t}) for t in trials]


def _split_until(trials: list[dict | list], count: int, keys: dict[int, str]) -> None:
    """Split, in place, the trial with the most configurations into two halves of its configurations, until there
    are `count` trials or every trial holds one configuration."""

    def by_config(trial) -> list[list[dict]]:
        parts: dict[str, list[dict]] = {}
        for config in trial if isinstance(trial, list) else ():
            parts.setdefault(keys[id(config)], []).append(config)
        return list(parts.values())

    while len(trials) < count:
        widest = max(range(len(trials)), key=lambda i: len(by_config(trials[i])))
        parts = by_config(trials[widest])
        if len(parts) < 2:
            return
        half = len(parts) // 2
        trials[widest : widest + 1] = [[c for p in parts[:half] for c in p], [c for p in parts[half:] for c in p]]


def stored_run(config: dict, ctx: SweepContext) -> dict | None:
    """The stored row of a run config, or None."""
    return ResultsStore(ctx.store_uri).read_run(run_key(spec_from_config(ctx, config)))


def store_failure(config: dict, ctx: SweepContext, error: BaseException, node_id: str = "", trial_id: str = "") -> dict:
    """Store a run that failed outside `run_and_store` (a data-parallel run whose process group failed) as a row
    with status `failed`, unless the store already holds the run; return the stored row."""
    stored = stored_run(config, ctx)
    if stored is not None:
        return stored
    result = TrialResult(row=failed_row(spec_from_config(ctx, config), error))
    _store_row(ResultsStore(ctx.store_uri), result, config, ctx, node_id, trial_id)
    return result.row


def _store_row(store: ResultsStore, result: TrialResult, config: dict, ctx: SweepContext, node_id: str,
               trial_id: str) -> dict:  # fmt: skip
    result.row.update(
        sweep=ctx.sweep, mode=config.get("mode", "single"), node_id=node_id, trial_id=trial_id,
        params=_searched_params(config),
    )  # fmt: skip
    store.write_run(result.row, result.scores, result.curves)
    return result.row


# -- plans ---------------------------------------------------------------------------------------------------------
def selection_name(dataset: str, normal_class: int, boundary: str) -> str:
    return f"selected/{dataset}-{normal_class}-{boundary}.json"


def best_config(runs: pd.DataFrame, normal_class: int, boundary: str) -> dict | None:
    """The search run with the best validation AUC (ties: best validation maxBA, then run key) as a selection."""
    rows = runs[
        (runs["mode"] == "search")
        & (runs["normal_class"] == normal_class)
        & (runs["boundary"] == boundary)
        & (runs["status"] == "ok")
    ]
    if rows.empty:
        return None
    best = rows.sort_values(["val_auc", "val_max_ba", "run_key"], ascending=[False, False, True]).iloc[0]
    params = {k: v for k, v in json.loads(best["params"]).items() if k in SEARCHED}
    return {
        "dataset": best["dataset"],
        "normal_class": int(normal_class),
        "class_name": best["class_name"],
        "boundary": boundary,
        "config_key": best["config_key"],
        "run_key": best["run_key"],
        "params": params,
        "val_auc": float(best["val_auc"]),
        "selection": best["selection"],
        "trials": int(len(rows)),
    }


def seeds_plan(dataset: str, classes, boundaries, seeds, selections: dict) -> list[dict]:
    """For every class: the selected config of each boundary with every seed, its last-layer-only twin (for the
    paper's multi-layer vs last-layer claim) and the baselines. `selections[(class, boundary)]` -> params; a
    missing selection means the search space's default settings."""
    space = get_space(dataset)
    last = layers_to_str((space.NUM_LAYERS - 1,))
    plan = []
    for c in classes:
        for b in boundaries:
            params = dict(selections.get((c, b), {}))
            params["boundary"] = b
            variants = [params]
            if params.get("layers", "") != last:
                variants.append({**params, "layers": last})
            plan += [{**v, "normal_class": c, "seed": s, "mode": "seeds"} for v in variants for s in seeds]
        baselines = getattr(space, "BASELINES", BASELINES)
        plan += [{"method": m, "normal_class": c, "seed": s, "mode": "seeds"} for m in baselines for s in seeds]
    return plan


def ablation_plan(dataset: str, classes, boundaries, seeds, selections: dict) -> list[dict]:
    """Every layer subset of the space's ABLATION_LAYER_SETS x boundary x seed, other settings as selected."""
    space = get_space(dataset)
    plan = []
    for c in classes:
        for b in boundaries:
            params = {**selections.get((c, b), {}), "boundary": b}
            for layers in space.ABLATION_LAYER_SETS:
                for s in seeds:
                    plan.append({**params, "layers": layers_to_str(layers), "normal_class": c, "seed": s,
                                 "mode": "ablation"})  # fmt: skip
    return plan


def unique_pending(ctx: SweepContext, plan: list[dict], done: set[str]) -> tuple[list[dict], int]:
    """(configs still to run, without duplicates of the same run key; number already done)."""
    pending, seen, already = [], set(), 0
    for config in plan:
        key = run_key(spec_from_config(ctx, config))
        if key in seen:
            continue
        seen.add(key)
        if key in done:
            already += 1
        else:
            pending.append(config)
    return pending, already


# -- summary -------------------------------------------------------------------------------------------------------
def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per class and model: mean +- std over seeds of test AUC and maxBA of the configurations the seeds phase
    trained (ok runs only; a config's seed that the search already trained counts too)."""
    configs = set(runs.loc[runs["mode"] == "seeds", "config_key"])
    rows = runs[runs["config_key"].isin(configs) & (runs["status"] == "ok")].copy()
    if rows.empty:
        return pd.DataFrame()
    names = {"ocsvm": "OC-SVM", "iforest": "IsolationForest"}

    def label(r) -> str:
        if r["method"] != "mocca":
            return names[r["method"]]
        return f"MOCCA {r['boundary']} layers {','.join(str(k) for k in r['layers'])}"

    rows["model"] = rows.apply(label, axis=1)
    grouped = rows.groupby(["normal_class", "class_name", "model"])
    table = grouped.agg(
        auc_mean=("test_auc", "mean"), auc_std=("test_auc", "std"), max_ba_mean=("test_max_ba", "mean"),
        max_ba_std=("test_max_ba", "std"), seeds=("seed", "nunique"),
    ).reset_index()  # fmt: skip
    return table.fillna({"auc_std": 0.0, "max_ba_std": 0.0})


def format_summary(table: pd.DataFrame) -> str:
    if table.empty:
        return "no finished runs of the seeds phase yet"
    lines = [f"{'class':<14} {'model':<34} {'test AUC':>16} {'test maxBA':>16} {'seeds':>5}"]
    for r in table.itertuples():
        lines.append(
            f"{f'{r.normal_class}:{r.class_name}':<14} {r.model:<34} "
            f"{r.auc_mean:>8.4f} ± {r.auc_std:.4f} {r.max_ba_mean:>8.4f} ± {r.max_ba_std:.4f} {r.seeds:>5}"
        )
    return "\n".join(lines)


def class_label(dataset: str, normal_class: int) -> str:
    return f"{normal_class}:{class_names(dataset)[normal_class]}"
