"""The sweep's overhead: N digits runs through engine.sweep (Ray Tune, function trainable) against the same N runs
in a plain loop in one process (engine.plan.run_and_store), each side in a fresh process with a fresh store.

    python -m bench.overhead --side loop --runs 8 --epochs 300 --storage /tmp/bench-store    # prints one JSON line
    python -m bench.overhead --side sweep --runs 8 --epochs 300 --storage /tmp/bench-store

Both sides run one run at a time with one torch thread each (the sweep with --max-concurrent 1 and
--cpus-per-run 1, which is also what run_and_store sets), so the difference is what Ray and Tune add: starting
Ray and its worker, scheduling each trial, shipping the config and the reported result. The sweep side goes
through the same functions `python -m engine.sweep digits --mode seeds` calls (prepare_store, Runner.grid), with
configs that set the epochs, so every run lasts about as long as the caller asks.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from engine.plan import TRAINING_LOG

BOUNDARIES = ("soft", "hard")


def bench_configs(runs: int, epochs: int) -> list[dict]:
    """N distinct MOCCA runs (classes cycle, then boundaries, then seeds), the same list for both sides."""
    return [
        {"normal_class": i % 10, "boundary": BOUNDARIES[i // 10 % 2], "seed": i // 20, "mode": "seeds",
         "ae_epochs": epochs, "oc_epochs": epochs}
        for i in range(runs)
    ]  # fmt: skip


def _store_summary(store, start: float) -> dict:
    """Counts and summed in-run time from the store; from the training log (engine.plan.TRAINING_LOG, one line
    per run started: key, pid, unix time), the wait before the first run and the median gap between one run's end
    and the next one's start (what each further run costs on top of its own time)."""
    runs = store.load().set_index("run_key")
    starts = []
    with open(os.environ[TRAINING_LOG]) as f:
        for line in f:
            key, _, stamp = line.split()
            starts.append((float(stamp), key))
    starts.sort()
    gaps = [b - a - float(runs.loc[key, "total_s"]) for (a, key), (b, _) in zip(starts, starts[1:], strict=False)]
    return {
        "runs_ok": int((runs["status"] == "ok").sum()),
        "runs_stored": int(len(runs)),
        "summed_run_s": float(runs["total_s"].sum()),
        "first_run_wait_s": starts[0][0] - start if starts else math.nan,
        "between_runs_s": statistics.median(gaps) if gaps else math.nan,
    }


def cpu_seconds() -> float:
    """CPU seconds of this process and of every live process it started, directly or not (Ray's daemons and
    workers: sample before ray.shutdown), from /proc; NaN where there is no /proc. Unlike wall time this is the work
    a side did, whatever else the machine was running."""
    procs = {}
    try:
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                with contextlib.suppress(OSError):
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    # ppid; utime, stime, cutime, cstime in clock ticks (the last two: its exited children)
                    procs[int(pid)] = (int(fields[1]), sum(int(v) for v in fields[11:15]))
    except OSError:
        return math.nan
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, [os.getpid()]
    while todo:
        pid = todo.pop()
        total += procs.get(pid, (0, 0))[1]
        todo += children.get(pid, [])
    return total / os.sysconf("SC_CLK_TCK")


def loop_side(configs: list[dict], storage: str) -> dict:
    from engine.plan import SweepContext, run_and_store
    from results import ResultsStore

    store = ResultsStore(f"{storage}/bench-loop")
    ctx = SweepContext(dataset="digits", store_uri=store.uri, sweep="bench-loop", cpus_per_run=1.0)
    start, unix_start, cpu = time.perf_counter(), time.time(), cpu_seconds()
    for config in configs:
        run_and_store(config, ctx)
    wall = time.perf_counter() - start
    return {"wall_s": wall, "cpu_s": cpu_seconds() - cpu, **_store_summary(store, unix_start)}


def sweep_side(configs: list[dict], storage: str) -> dict:
    from engine import sweep
    from engine.plan import SweepContext

    name = "bench-sweep"
    args = sweep.build_parser().parse_args(
        [
            "digits",
            "--storage",
            storage,
            "--name",
            name,
            "--max-concurrent",
            "1",
            "--cpus-per-run",
            "1",
            "--no-sharing",
            "--quiet",
        ]  # one run per trial, as in the loop
    )
    store = sweep.prepare_store(args, name)
    ctx = SweepContext(dataset="digits", store_uri=store.uri, sweep=name, cpus_per_run=1.0)
    start, cpu = time.perf_counter(), cpu_seconds()
    runner = sweep.Runner(ctx, store, args)
    try:
        runner._start()  # Ray start-up, timed apart from the runs
        started, unix_started = time.perf_counter(), time.time()
        runner.grid("seeds", configs, 0)
        finished = time.perf_counter()
        cpu = cpu_seconds() - cpu  # driver + Ray's processes, while they still exist (shutdown's CPU is left out)
    finally:
        runner.close()
    end = time.perf_counter()
    return {
        "wall_s": end - start,
        "cpu_s": cpu,
        "ray_start_s": started - start,
        "runs_wall_s": finished - started,
        "ray_shutdown_s": end - finished,
        **_store_summary(store, unix_started),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.splitlines()[0])
    p.add_argument("--side", choices=("loop", "sweep"), required=True)
    p.add_argument("--runs", type=int, default=8, help="number of runs")
    p.add_argument("--epochs", type=int, default=20, help="epochs of each stage per run")
    p.add_argument("--storage", required=True, help="a fresh folder for this side's results store")
    args = p.parse_args(argv)
    configs = bench_configs(args.runs, args.epochs)
    # the training log (inherited by Ray's workers) tells when each run started
    os.environ[TRAINING_LOG] = tempfile.mkstemp(prefix="bench-overhead-", suffix=".log")[1]
    result = (loop_side if args.side == "loop" else sweep_side)(configs, args.storage)
    print(json.dumps({"side": args.side, "runs": args.runs, "epochs": args.epochs, **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
