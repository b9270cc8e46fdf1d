"""The sweep: the command line and the Ray side (the only module that imports Ray).

    python -m engine.sweep digits                                   # local Ray, every class, search + seeds
    python -m engine.sweep cifar10 --data-root ~/data --classes cat,dog --budget paper
    python -m engine.sweep mvtec --data-root /data/mvtec --address auto       # on a running Ray cluster

Phases (`--mode`): `search` runs one Ray Tune experiment with an Optuna searcher per (class, boundary) and writes
the best configuration on the validation split to `selected/`; `seeds` trains every class's selected config with
every seed, its last-layer-only twin and the baselines; `paper` = search then seeds; `ablation` trains every layer
subset of the search space with every seed. Every run becomes rows in the results store (results/).

Resume: the same command again. Search experiments are restored from `tune/`; a run whose key is already in the
store is never trained again (workers check the store before training), so a sweep killed at any moment completes
with every run exactly once. `--fresh` deletes the sweep folder first.

A run is a Tune function trainable (`tune_run`) holding its CPUs and GPUs; with `--workers-per-run` W > 1 it is a
Ray Train TorchTrainer of W data-parallel workers (`tune_run_distributed`, training code in engine/distributed.py)
started inside a Tune function trainable, since Ray 2.60's Tuner no longer takes a trainer. The plain trainable is
the default because it is far cheaper per run: bench/trainer_overhead.py measured 0.03 s between consecutive plain
runs (reused actor, data cached in the process) against about 30 s per TorchTrainer run (a controller, fresh
worker processes, a process group and the data loaded again, every run) on a 2-core CPU machine. In the seeds and
ablation grids, runs that train the same autoencoder are one trial that trains it once (unless `--no-sharing`),
with up to `--pack K` seeds side by side as one packed model (engine/packing.py); each run is stored as its own
row, and the trial holds the resources of one run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import logging
import math
import os
import sys
import time
from datetime import UTC, datetime

import pyarrow.fs as pafs
from ray.tune.search import Searcher

from engine.cli import Parser
from engine.data import DATASETS, DatasetError, class_names, clear_caches, dataset_module, load_split
from engine.data.base import resolve_class
from engine.packing import packing_problem
from engine.plan import (
    BASELINES,
    MODES,
    SweepContext,
    ablation_plan,
    best_config,
    class_label,
    format_summary,
    packed_plan,
    run_and_store,
    run_pack_and_store,
    seeds_plan,
    selection_name,
    spec_from_config,
    store_failure,
    stored_run,
    summary_table,
    unique_pending,
)
from engine.trial import code_version
from results import ResultsStore, StoreError
from results.store import join_uri
from search_spaces import get_space

os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no per-trial TensorBoard/CSV files
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# the store, not Tune's result files, is the record of every run: silence Tune's complaint that they are missing
logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


# -- the Ray trainable and search space (module level: Ray pickles them and restores them) -------------------------
def tune_run(config: dict, context: SweepContext) -> None:
    """Function trainable: one run, idempotent against the store, reported to Tune once."""
    import ray
    from ray import tune

    config = config.get("run", config)
    where = dict(node_id=ray.get_runtime_context().get_node_id(), trial_id=tune.get_context().get_trial_id())
    if "pack" in config:  # several seeds of one configuration as one packed model (engine/packing.py)
        return _report(run_pack_and_store(config["pack"], context, **where))
    _report([run_and_store(config, context, **where)])


def tune_run_distributed(config: dict, context: SweepContext, workers: int, cpus: float, gpus: float) -> None:
    """Function trainable of a data-parallel run: a Ray Train TorchTrainer of `workers` processes, each holding
    `cpus` CPUs and `gpus` GPUs (gloo on CPUs, NCCL on GPUs), trains and stores the run; reported to Tune once.

    A stored run is reported without starting the trainer, and a baseline (scikit-learn, not data-parallel) runs
    in this process as in `tune_run`, without the trainer's start-up, which costs more than the fit itself. A run
    whose code raised becomes a `failed` row, as in `tune_run`; a worker that died (an error from Ray itself) fails
    the trial, which Tune then retries.
    """
    from ray import train, tune
    from ray.train.torch import TorchConfig, TorchTrainer

    config = config.get("run", config)
    if config.get("method", "mocca") in BASELINES:
        return tune_run(config, context)
    trial_id = tune.get_context().get_trial_id()
    row = stored_run(config, context)
    if row is not None:
        return _report([(row, False)])
    store = ResultsStore(context.store_uri)
    storage = f"{store.root}/tune/train"  # Ray Train's run folder: a storage marker only (no checkpoints)
    resources = {"CPU": cpus, "GPU": gpus} if gpus else {"CPU": cpus}
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"run": config, "context": context, "trial_id": trial_id},
        torch_config=TorchConfig(backend="nccl" if gpus else "gloo"),
        scaling_config=train.ScalingConfig(num_workers=workers, use_gpu=bool(gpus), resources_per_worker=resources),
        run_config=train.RunConfig(
            name=trial_id, storage_path=storage, storage_filesystem=store.fs,
            failure_config=train.FailureConfig(max_failures=0),  # retrying is Tune's job, and only after a crash
        ),
    )  # fmt: skip
    try:
        trainer.fit()
    except train.WorkerGroupError as exc:
        if any(type(error).__module__.startswith("ray.") for error in exc.worker_failures.values()):
            raise  # a worker died or stopped answering: let Tune retry the trial
        store_failure(config, context, _worker_error(exc.worker_failures), trial_id=trial_id)
    finally:
        with contextlib.suppress(OSError):
            store.fs.delete_dir(f"{storage}/{trial_id}")
    row = stored_run(config, context)
    if row is None:
        raise RuntimeError(f"the data-parallel run of trial {trial_id} ended without storing its row")
    _report([(row, row.get("trial_id") == trial_id)])


def train_worker(loop_config: dict) -> None:
    """Ray Train's loop of one worker of a data-parallel run, inside the process group Ray Train set up: every
    rank calls run_and_store, where rank 0 checks the store, every rank trains its shard and rank 0 writes."""
    import ray
    from ray.train.torch import get_device

    context = dataclasses.replace(loop_config["context"], device=str(get_device()))  # this worker's GPU or the CPU
    node_id = ray.get_runtime_context().get_node_id()
    run_and_store(loop_config["run"], context, node_id=node_id, trial_id=loop_config["trial_id"])


def _worker_error(failures: dict[int, BaseException]) -> BaseException:
    """The error to store for a data-parallel run from its workers' errors: the error itself when every worker
    raised the same one (a deterministic failure), else each rank's (one rank's error can break the others')."""
    messages = {f"{type(e).__name__}: {e}" for e in failures.values()}
    if len(messages) == 1:
        return next(iter(failures.values()))
    return RuntimeError("; ".join(f"rank {r}: {type(e).__name__}: {e}" for r, e in sorted(failures.items())))


def _report(runs: list[tuple[dict, bool]]) -> None:
    """Report a trial's runs (one, or a pack's) to Tune once: the best of their metrics, how many it trained."""
    from ray import tune

    def best(key: str) -> float:
        values = [float(v) for v in (row.get(key) for row, _ in runs) if v is not None and v == v]
        return max(values, default=math.nan)

    statuses = [row["status"] for row, _ in runs]
    status = (
        statuses[0] if len(set(statuses)) == 1 else ", ".join(f"{statuses.count(s)} {s}" for s in sorted(set(statuses)))
    )
    tune.report({
        **{k: best(k) for k in ("val_auc", "test_auc", "test_max_ba", "total_s")},
        "status": status, "run_key": ",".join(row["run_key"] for row, _ in runs),
        "runs": len(runs), "trained": sum(trained for _, trained in runs),
    })  # fmt: skip


def optuna_space(trial, dataset: str, constants: dict) -> dict:
    """Optuna define-by-run: the dataset's searched parameters; the returned constants ride along in the config."""
    get_space(dataset).define_search(trial, constants.get("boundary"))
    return dict(constants)


def optuna_distributions(dataset: str, boundary: str | None) -> dict:
    """The distributions define_search uses, read off one dry call (to add stored trials to a study)."""
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    get_space(dataset).define_search(trial, boundary)
    return trial.distributions


def warm_study(dataset: str, boundary: str, name: str, history: list[tuple[dict, float | None]]):
    """An in-memory Optuna study holding the stored runs of one (class, boundary) as finished trials, so a
    resumed or extended search continues from what the store holds instead of starting over."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
    dists = optuna_distributions(dataset, boundary)
    for params, value in history:
        if not set(dists) <= set(params):
            continue  # a run from a different search space: not part of this study
        ok = value is not None and value == value
        study.add_trial(
            optuna.trial.create_trial(
                params={k: params[k] for k in dists},
                distributions=dists,
                value=value if ok else None,
                state=optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL,
            )
        )
    return storage


class MultiStudySearch(Searcher):
    """Several Optuna studies (Ray's OptunaSearch, one per class and boundary) served to one Tune experiment.

    One experiment for all classes keeps every slot of the cluster busy and every worker, with its loaded data,
    reused across classes; each study still sees its own trials only, at most `per_study` at once.
    """

    def __init__(self, studies: dict, remaining: dict, per_study: int):
        super().__init__(metric="val_auc", mode="max")
        self._studies, self._remaining, self._per_study = studies, dict(remaining), per_study
        self._live = dict.fromkeys(studies, 0)
        self._owner: dict[str, str] = {}

    def suggest(self, trial_id: str):
        ready = [n for n in self._studies if self._remaining[n] > 0 and self._live[n] < self._per_study]
        if not ready:
            return self.FINISHED if not any(self._remaining.values()) else None
        name = min(ready, key=lambda n: (self._live[n], -self._remaining[n], n))
        config = self._studies[name].suggest(trial_id)
        self._owner[trial_id] = name
        self._remaining[name] -= 1
        self._live[name] += 1
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        name = self._owner.pop(trial_id, None)
        if name is None:
            return
        self._live[name] -= 1
        if result is None or result.get("status") != "ok":
            result, error = None, True  # Optuna records the trial as failed
        self._studies[name].on_trial_complete(trial_id, result=result, error=error)

    def save(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


def _search_rows(runs, normal_class: int, boundary: str):
    return runs[(runs["mode"] == "search") & (runs["normal_class"] == normal_class) & (runs["boundary"] == boundary)]


def pending_searches(studies: list[tuple[int, str]], trials: int, runs) -> int:
    """Search trials still to run: `trials` per study minus the search runs the store already holds."""
    return sum(max(trials - len(_search_rows(runs, c, b)), 0) for c, b in studies)


def build_searcher(dataset: str, studies: list[tuple[int, str]], trials: int, seed: int, runs, slots: int):
    """(searcher, trials still to run, trials already in the store) for the given (class, boundary) studies."""
    import json

    from ray.tune.search.optuna import OptunaSearch

    searchers, remaining, done = {}, {}, 0
    for normal_class, boundary in studies:
        rows = _search_rows(runs, normal_class, boundary)
        history = [(json.loads(p), v if st == "ok" else None) for p, v, st in
                   zip(rows["params"], rows["val_auc"], rows["status"], strict=True)]  # fmt: skip
        name = f"{dataset}-{normal_class}-{boundary}"
        left = max(trials - len(history), 0)
        done += min(len(history), trials)
        if left == 0:
            continue
        constants = {"normal_class": normal_class, "boundary": boundary, "seed": seed, "mode": "search"}
        searchers[name] = OptunaSearch(
            space=functools.partial(optuna_space, dataset=dataset, constants=constants),
            metric="val_auc",
            mode="max",
            storage=warm_study(dataset, boundary, name, history),
            study_name=name,
            seed=1000 * normal_class + seed + len(history),
        )
        remaining[name] = left
    per_study = max(1, -(-slots // max(len(searchers), 1)))
    return MultiStudySearch(searchers, remaining, per_study), sum(remaining.values()), done


# -- command line --------------------------------------------------------------------------------------------------
def build_parser() -> Parser:
    p = Parser(
        prog="python -m engine.sweep",
        description="Search, seed and ablate MOCCA per class with Ray Tune + Optuna; every run lands in a Parquet "
        "results store; running the same command again resumes.",
    )
    p.add_argument("dataset", choices=sorted(DATASETS), help="dataset to sweep")
    p.add_argument("--data-root", help="folder holding the dataset (not needed for digits)")
    p.add_argument("--classes", help="comma-separated class indices or names (default: all)")
    p.add_argument(
        "--mode",
        default="paper",
        choices=MODES,
        help="paper = search then seeds; search; seeds (of the selected or default config); ablation",
    )
    p.add_argument("--boundaries", default="soft,hard", help="boundaries to sweep, each its own search")
    p.add_argument("--trials", type=int, help="Optuna trials per (class, boundary) (default: the budget's)")
    p.add_argument("--seeds", help="comma-separated seeds of the seeds/ablation phases (default: the budget's)")
    p.add_argument(
        "--budget",
        default="smoke",
        choices=("smoke", "paper"),
        help="epoch budget: smoke = seconds per run on a CPU; paper = the paper's recipe",
    )
    p.add_argument(
        "--selection",
        default="val",
        choices=("val", "test"),
        help="select on a validation split carved from the test set (val) or on the test set (paper)",
    )
    p.add_argument(
        "--data-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dataset-specific setting passed to every run, e.g. image_size=64 (repeatable)",
    )
    p.add_argument("--custom-dataset", action="store_true", help="skip the official checksums of the dataset")
    p.add_argument("--storage", default="sweeps", help="folder or pyarrow URI (s3://...) holding sweeps")
    p.add_argument("--name", help="sweep name, a folder under --storage (default: the dataset)")
    p.add_argument("--fresh", action="store_true", help="delete this sweep's results first and start over")
    p.add_argument("--retry-failed", action="store_true", help="train runs stored as failed again")
    p.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS"),
        help="Ray cluster to join ('auto' or host:port; default: RAY_ADDRESS or a new local Ray)",
    )
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all); ignored with --address")
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the training steps, once per worker process (pays off on GPUs and over many runs)",
    )
    p.add_argument(
        "--cpus-per-run",
        type=float,
        default=1.0,
        help="CPUs reserved by each run (by each worker with --workers-per-run)",
    )
    p.add_argument(
        "--gpus-per-run",
        type=float,
        help="GPUs per run, fractions allowed (0.25 = four runs per GPU; default: 1 if the cluster has GPUs, else 0); "
        "per worker with --workers-per-run, then at least 1",
    )
    p.add_argument(
        "--workers-per-run",
        type=int,
        default=1,
        help="data-parallel worker processes per run; above 1 each run is a Ray Train TorchTrainer (DDP: gloo on CPUs, "
        "NCCL on GPUs) inside its Tune trial, ~30 s more per run on a small machine (bench/trainer_overhead.py)",
    )
    p.add_argument(
        "--pack",
        type=int,
        default=1,
        metavar="K",
        help="train up to K seeds side by side as one packed model (grouped convolutions; LeNet models: digits, "
        "cifar10) in the seeds and ablation phases: same runs, keys and results as alone, for a fraction of the cost "
        "on a GPU, where one small run leaves most of it idle (bench/: packed)",
    )
    p.add_argument(
        "--no-sharing",
        action="store_true",
        help="train every run's autoencoder itself; by default runs that train the same one (same stage-1 settings "
        "and seed: a configuration and its last-layer twin, the layer sets of an ablation) train it once, in one "
        "trial (split by configuration where the cluster has more run slots than such trials)",
    )
    p.add_argument(
        "--max-concurrent",
        type=int,
        help="runs at once (default: what the cluster holds now; on an autoscaling cluster, what it holds at full "
        "size: the queued runs make it add nodes)",
    )
    p.add_argument("--quiet", action="store_true", help="print only the final summary")
    return p


def _parse_options(items: list[str]) -> tuple[tuple[str, object], ...]:
    import json

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--data-option takes KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return tuple(sorted(out.items()))


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated integers, got {text!r}") from None
    if not values:
        raise UsageError(f"{flag} is empty")
    return values


def resolve_args(args: argparse.Namespace):
    """Validate everything the user gave before anything is written; raise UsageError with the fix."""
    space = get_space(args.dataset)
    names = class_names(args.dataset)
    if args.classes:
        classes = [resolve_class(c, names, args.dataset) for c in args.classes.split(",") if c.strip()]
    else:
        classes = list(range(len(names)))
    boundaries = [b.strip() for b in args.boundaries.split(",") if b.strip()]
    if not boundaries or any(b not in ("soft", "hard") for b in boundaries):
        raise UsageError(f"--boundaries takes soft, hard or soft,hard, got {args.boundaries!r}")
    seeds = _int_list(args.seeds, "--seeds") if args.seeds else list(space.SEEDS[args.budget])
    trials = args.trials if args.trials is not None else space.DEFAULT_TRIALS[args.budget]
    if trials < 1:
        raise UsageError("--trials must be at least 1")
    if args.cpus_per_run <= 0 or (args.gpus_per_run is not None and args.gpus_per_run < 0):
        raise UsageError("--cpus-per-run must be positive and --gpus-per-run not negative")
    if min(args.workers_per_run, args.pack, args.max_concurrent or 1) < 1:
        raise UsageError("--workers-per-run, --pack and --max-concurrent must be at least 1")
    if args.pack > 1 and args.workers_per_run > 1:
        raise UsageError("a packed model trains in one process: use --pack or --workers-per-run, not both")
    if args.workers_per_run > 1:
        if getattr(dataset_module(args.dataset), "VIDEO", False):
            raise UsageError(f"{args.dataset} runs train with a loop of their own that is not data-parallel: "
                             "use --workers-per-run 1")  # fmt: skip
        cpus = args.num_cpus or os.cpu_count() or 1
        if not args.address and args.workers_per_run * args.cpus_per_run > cpus:
            raise UsageError(
                f"--workers-per-run {args.workers_per_run} x --cpus-per-run {args.cpus_per_run:g} needs more CPUs "
                f"than the local Ray's {cpus}: lower either, or raise --num-cpus"
            )
    options = dict(_parse_options(args.data_option))
    if args.custom_dataset:
        options["custom"] = True
    name = args.name or args.dataset
    if not name or "/" in name or name.startswith("."):
        raise UsageError(f"--name must be a plain folder name, got {name!r}")
    return classes, boundaries, seeds, trials, tuple(sorted(options.items())), name


# -- Ray -----------------------------------------------------------------------------------------------------------
def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Raise UsageError unless something listens at a cluster address: ray.init retries an unreachable address
    forever (measured: still waiting after 6 minutes), so a plain TCP connect with a timeout goes first."""
    import socket

    target = address.removeprefix("ray://")
    if target == "auto":
        try:  # the address `ray start` recorded on this machine (None: ray.init itself fails fast)
            from ray._private.services import canonicalize_bootstrap_address

            target = canonicalize_bootstrap_address("auto")
        except Exception:
            target = None
        if target is None:
            return
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UsageError(f"--address takes 'auto' or host:port (e.g. 10.0.0.5:6379), got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise UsageError(
            f"no Ray cluster answers at {address} ({exc}): start one with `ray start --head` or "
            "`ray up cluster.yaml`, check the address and firewall, or drop --address to run locally"
        ) from exc


def start_ray(args: argparse.Namespace) -> None:
    import ray

    try:
        if args.address:
            check_reachable(args.address)
            ray.init(address=args.address, logging_level=logging.WARNING, log_to_driver=False)
        else:
            ray.init(num_cpus=args.num_cpus, include_dashboard=False, logging_level=logging.WARNING,
                     log_to_driver=False)  # fmt: skip
    except (ConnectionError, RuntimeError, ValueError) as exc:
        target = f"the Ray cluster at {args.address}" if args.address else "a local Ray"
        raise UsageError(
            f"cannot start or reach {target} ({str(exc).splitlines()[0][:200]}): start it with `ray start --head` "
            "or `ray up cluster.yaml`, or drop --address to run locally"
        ) from exc


def capacity(args: argparse.Namespace) -> tuple[float, int]:
    """(GPUs per run, or per worker of a data-parallel run; runs the cluster holds at once). On a cluster,
    --max-concurrent is taken as given: an autoscaling cluster may have no GPU node yet, and the runs queued for it
    are what make the autoscaler add one."""
    import ray

    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 1), resources.get("GPU", 0)
    gpus_per_run = args.gpus_per_run if args.gpus_per_run is not None else (1.0 if gpus else 0.0)
    workers = args.workers_per_run
    if workers > 1 and 0 < gpus_per_run < 1:
        raise UsageError(
            f"--gpus-per-run {gpus_per_run:g} could put two workers of one data-parallel run on one GPU, which NCCL "
            "refuses: give each worker at least 1 GPU or use --workers-per-run 1"
        )
    if args.address and args.max_concurrent:
        return gpus_per_run, args.max_concurrent
    grows = ", or pass --max-concurrent if the cluster's autoscaler will add nodes" if args.address else ""
    if gpus_per_run > 0 and gpus == 0:
        raise UsageError(f"--gpus-per-run {gpus_per_run} asks for GPUs but the cluster has none: use 0{grows}")
    per_worker = "" if workers == 1 else f" ({workers} workers)"
    slots = int(cpus // (args.cpus_per_run * workers))
    if slots < 1:
        raise UsageError(f"one run{per_worker} needs {args.cpus_per_run * workers:g} CPUs but the cluster has "
                         f"{cpus:g}: lower --cpus-per-run or --workers-per-run{grows}")  # fmt: skip
    if gpus_per_run > 0:
        slots = min(slots, int(gpus // (gpus_per_run * workers)))
        if slots < 1:
            raise UsageError(f"one run{per_worker} needs {gpus_per_run * workers:g} GPUs but the cluster has "
                             f"{gpus:g}: lower --gpus-per-run or --workers-per-run{grows}")  # fmt: skip
    return gpus_per_run, args.max_concurrent or slots


class Progress:
    """Prints one line per finished run: runs done of total, best validation AUC, elapsed and estimated time left."""

    def __init__(self, title: str, total: int, done_before: int, quiet: bool):
        self.title, self.total, self.done, self.quiet = title, total, done_before, quiet
        self.start = time.monotonic()
        self.trained = 0
        self.best = -math.inf

    def update(self, result: dict) -> None:
        """Count a trial's result: one run, or a pack of `runs` runs."""
        self.done += int(result.get("runs", 1))
        self.trained += int(result.get("trained") or 0)
        val = result.get("val_auc", math.nan)
        if val == val:
            self.best = max(self.best, val)
        if self.quiet:
            return
        elapsed = time.monotonic() - self.start
        left = elapsed / max(self.trained, 1) * max(self.total - self.done, 0)
        best = f"{self.best:.4f}" if self.best > -math.inf else "  —  "
        status = result.get("status", "?")
        print(
            f"[{self.title}] {self.done}/{self.total} runs  best val AUC {best}  "
            f"elapsed {_hms(elapsed)}  left ~{_hms(left)}  (last: {status}, val AUC {val:.4f})",
            flush=True,
        )


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _callback(progress: Progress):
    from ray import tune

    class _ProgressCallback(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            progress.update(result)

    return _ProgressCallback()


def plain_trainable(ctx: SweepContext, cpus: float, gpus: float):
    """The default run: `tune_run` in a Tune actor holding the run's CPUs and GPUs (reused from run to run)."""
    from ray import tune

    return tune.with_resources(tune.with_parameters(tune_run, context=ctx), {"cpu": cpus, "gpu": gpus})


def trainer_trainable(ctx: SweepContext, workers: int, cpus: float, gpus: float):
    """A data-parallel run: `tune_run_distributed`, whose TorchTrainer's `workers` each hold `cpus` and `gpus`."""
    from ray import tune

    trainable = tune.with_parameters(tune_run_distributed, context=ctx, workers=workers, cpus=cpus, gpus=gpus)
    # the trial only waits for its trainer, whose workers hold the run's CPUs and GPUs: were the trial to hold some
    # too, a cluster full of trials would leave their trainers nothing (deadlock). Tune refuses an empty request,
    # hence one byte of memory.
    return tune.with_resources(trainable, {"cpu": 0, "memory": 1})


class Runner:
    """Runs Tune experiments for one sweep: trainable resources, storage, concurrency, progress."""

    def __init__(self, ctx: SweepContext, store: ResultsStore, args: argparse.Namespace):
        self.ctx, self.store, self.args = ctx, store, args
        self.started = False

    def _start(self) -> None:
        """Start or join Ray on the first experiment, so a sweep with nothing left to do never starts it."""
        if self.started:
            return
        start_ray(self.args)
        self.started = True
        gpus_per_run, self.slots = capacity(self.args)
        workers, cpus = self.args.workers_per_run, self.args.cpus_per_run
        if workers > 1:
            self.trainable = trainer_trainable(self.ctx, workers, cpus, gpus_per_run)
        else:
            self.trainable = plain_trainable(self.ctx, cpus, gpus_per_run)

    def close(self) -> None:
        if self.started:
            import ray

            ray.shutdown()

    def _run_config(self, name: str, progress: Progress):
        from ray import tune

        return tune.RunConfig(
            name=name,
            storage_path=f"{self.store.root}/tune",
            storage_filesystem=self.store.fs,
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=2),  # a crashed worker is retried
            callbacks=[_callback(progress)],
        )

    def search(self, studies: list[tuple[int, str]], trials: int, seed: int, runs) -> None:
        """One Tune experiment serving one Optuna study per (class, boundary), each warm-started from the store."""
        from ray import tune

        if not pending_searches(studies, trials, runs):
            return
        self._start()
        searcher, remaining, done = build_searcher(self.ctx.dataset, studies, trials, seed, runs, self.slots)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        progress = Progress("search", remaining + done, done, self.args.quiet)
        tuner = tune.Tuner(
            self.trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher, num_samples=remaining, max_concurrent_trials=self.slots, reuse_actors=True
            ),
            run_config=self._run_config(f"search-{stamp}", progress),
        )
        tuner.fit()

    def grid(self, mode: str, configs: list[dict], done_before: int) -> None:
        """One Tune experiment over the runs `configs`, those trained together (engine/packing.py) in one trial, in
        at least as many trials as the cluster has run slots where splitting groups allows."""
        from ray import tune

        if not configs:
            return
        self._start()
        trials = packed_plan(self.ctx, configs, self.args.pack, share=not self.args.no_sharing, min_trials=self.slots)
        if not self.args.quiet and len(trials) < len(configs):
            print(f"[{mode}] {len(configs)} runs to train in {len(trials)} trial{'s' * (len(trials) > 1)} "
                  "(runs trained together)", flush=True)  # fmt: skip
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        progress = Progress(mode, len(configs) + done_before, done_before, self.args.quiet)
        tuner = tune.Tuner(
            self.trainable,
            param_space={"run": tune.grid_search(trials)},
            tune_config=tune.TuneConfig(max_concurrent_trials=self.slots, reuse_actors=True),
            run_config=self._run_config(f"{mode}-{stamp}", progress),
        )
        tuner.fit()


# -- the sweep -----------------------------------------------------------------------------------------------------
def open_store(storage: str, name: str) -> ResultsStore:
    """The sweep's store under `storage` (a path or a URI whose query, e.g. ?endpoint_override=..., is kept),
    checked to be reachable so a wrong URI or missing credentials fail in one sentence before anything runs."""
    store = ResultsStore(join_uri(storage, name))
    store.check_reachable()
    return store


def prepare_store(args: argparse.Namespace, name: str) -> ResultsStore:
    store = open_store(args.storage, name)
    if args.fresh:
        store.delete()
    manifest = store.manifest()
    now = datetime.now(UTC).isoformat(timespec="seconds")
    settings = {"dataset": args.dataset, "budget": args.budget, "selection": args.selection}
    if manifest is None:
        if store.exists() and store.fs.get_file_info(pafs.FileSelector(store.root)):
            raise UsageError(f"{store.uri} exists and is not a sweep folder (no sweep.json): choose another --name")
        manifest = {**settings, "name": name, "created_at": now, "code_version": code_version(), "history": []}
    else:
        for key, value in settings.items():
            if manifest.get(key) != value:
                raise UsageError(
                    f"sweep {name!r} was started with {key} {manifest.get(key)!r}, not {value!r}: resume it with "
                    f"the same settings, pick another --name, or pass --fresh to start over"
                )
    manifest["history"].append({"started_at": now, "command": sys.argv, "code_version": code_version()})
    store.write_json("sweep.json", manifest)
    return store


def check_data(ctx: SweepContext, classes: list[int]) -> None:
    """Build and load the first class's run in the driver, with exactly the settings workers will use, so a
    missing or malformed dataset fails before anything is written or started."""
    spec = spec_from_config(ctx, {"normal_class": classes[0]}).validate()
    load_split(spec.dataset, spec.normal_class, data_root=spec.data_root, selection=spec.selection,
               **dict(spec.data_options))  # fmt: skip
    clear_caches()  # the driver trains nothing: do not hold the dataset (GBs for ShanghaiTech) for the whole sweep


def run_sweep(args: argparse.Namespace) -> int:
    classes, boundaries, seeds, trials, options, name = resolve_args(args)
    ctx = SweepContext(
        dataset=args.dataset, store_uri="", sweep=name, budget=args.budget, selection=args.selection,
        data_root=os.path.abspath(os.path.expanduser(args.data_root)) if args.data_root else None,
        data_options=options, cpus_per_run=args.cpus_per_run, compile=args.compile,
    )  # fmt: skip
    check_data(ctx, classes)
    problem = packing_problem(spec_from_config(ctx, {"normal_class": classes[0]}))
    if args.pack > 1 and problem:
        raise UsageError(f"--pack {args.pack}: {problem}")
    store = prepare_store(args, name)
    # absolute paths: Ray Train starts its workers in a folder of their own
    local = isinstance(store.fs, pafs.LocalFileSystem)
    ctx = dataclasses.replace(ctx, store_uri=store.root if local else store.uri)
    if args.retry_failed:
        _forget_failed(store)
    runner = Runner(ctx, store, args)
    try:
        started = time.monotonic()
        before = len(store.done_keys())
        if args.mode in ("paper", "search"):
            studies = [(c, b) for c in classes for b in boundaries]
            runner.search(studies, trials, seeds[0], store.load())
            runs = store.load()
            for c, b in studies:
                choice = best_config(runs, c, b)
                if choice is None:
                    print(f"no successful search run for {class_label(args.dataset, c)} {b}: its seeds phase uses "
                          "the default settings", flush=True)  # fmt: skip
                else:
                    store.write_json(selection_name(args.dataset, c, b), choice)
        selections = {
            (s["normal_class"], s["boundary"]): s["params"] for s in store.selections() if s["dataset"] == args.dataset
        }
        if args.mode in ("paper", "seeds", "ablation"):
            make_plan = ablation_plan if args.mode == "ablation" else seeds_plan
            phase = "ablation" if args.mode == "ablation" else "seeds"
            plan = make_plan(args.dataset, classes, boundaries, seeds, selections)
            pending, done = unique_pending(ctx, plan, store.done_keys())
            if not args.quiet:
                print(f"[{phase}] {len(pending) + done} runs, {done} already in the store", flush=True)
            runner.grid(phase, pending, done)
        trained = len(store.done_keys()) - before
        runs = store.load()
    finally:
        runner.close()
    if trained == 0:
        print("nothing to train: every run of this sweep is already in the store")
    else:
        print(f"trained {trained} runs in {_hms(time.monotonic() - started)}")
    if args.mode != "ablation":  # the ablation's table is analysis.tables' Table VII (see the last line)
        print(format_summary(summary_table(runs[runs["dataset"] == args.dataset])))
    failed = runs[runs["status"] != "ok"]
    if len(failed):
        print(f"{len(failed)} runs did not finish ok (see the `status` and `error` columns)")
    print(f"results: {store.uri}  (python -m analysis.tables {store.uri})")
    return 0


def _forget_failed(store: ResultsStore) -> None:
    runs = store.load()
    for key in runs.loc[runs["status"] == "failed", "run_key"]:
        for folder in ("runs", "scores", "curves"):
            path = f"{store.root}/{folder}/{key}.parquet"
            if store.fs.get_file_info(path).type.name == "File":
                store.fs.delete_file(path)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run_sweep(args)
    except (UsageError, DatasetError, StoreError, ValueError) as exc:
        parser.exit(2, f"error: {exc}\n")
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
