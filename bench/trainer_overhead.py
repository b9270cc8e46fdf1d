"""Per-run cost of the two ways engine.sweep runs a run: a plain Tune function trainable (the default) and a Ray
Train TorchTrainer started inside a Tune function trainable (what `--workers-per-run` above 1 does).

    python -m bench.trainer_overhead                    # 4 tiny digits runs per path; writes the JSON below
    python -m bench.trainer_overhead --runs 8 --epochs 5 --paths plain,trainer-1

    from bench import trainer_overhead
    result = trainer_overhead.run(runs=4, epochs=2)     # the same, as a function (returns what it writes)

Paths, each in a fresh process with its own local Ray (2 CPUs) and store, one run at a time (--max-concurrent 1),
through the functions the sweep itself calls (prepare_store, Runner, plain_trainable / trainer_trainable, grid):
  plain      tune_run in a Tune actor holding 1 CPU, reused from run to run;
  trainer-1  a TorchTrainer of one worker holding 1 CPU: the same training as plain, so the difference between
             the two is what starting a trainer (controller, worker group, process group) costs per run;
  trainer-2  a TorchTrainer of two gloo workers of 1 CPU each: what `--workers-per-run 2` runs.
Runs are MOCCA on digits with `--epochs` epochs per stage (classes 0, 1, ...), so a run's own time is small and the
per-run wall time is mostly overhead. Per path: wall time of the runs / N, the runs' own time (their `total_s`),
overhead per run = the difference, and the median gap between one run's end and the next one's start (from
engine.plan's training log). Ray's start-up is timed apart. Writes bench/results/trainer_overhead.json with its
provenance; the 1-minute load average is recorded (the numbers are wall times on a possibly shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "trainer_overhead.json"
PATHS = ("plain", "trainer-1", "trainer-2")


def configs(runs: int, epochs: int) -> list[dict]:
    """N distinct short MOCCA runs of the seeds phase (baselines would skip the trainer)."""
    return [{"normal_class": i % 10, "boundary": "soft", "seed": i // 10, "mode": "seeds", "ae_epochs": epochs,
             "oc_epochs": epochs} for i in range(runs)]  # fmt: skip


def measure(path: str, runs: int, epochs: int, storage: str) -> dict:
    """Run N runs through one path in this process (which starts and stops its own local Ray)."""
    from engine import sweep
    from engine.plan import TRAINING_LOG, SweepContext

    assert path in PATHS, path
    log = Path(storage) / "trainings.log"
    os.environ[TRAINING_LOG] = str(log)  # inherited by Ray's workers: one line per run as its training starts
    workers = 2 if path == "trainer-2" else 1
    argv = ["digits", "--storage", storage, "--name", "bench", "--num-cpus", "2", "--max-concurrent", "1",
            "--cpus-per-run", "1", "--workers-per-run", str(workers), "--no-sharing", "--quiet"]  # fmt: skip
    args = sweep.build_parser().parse_args(argv)
    store = sweep.prepare_store(args, "bench")
    ctx = SweepContext(dataset="digits", store_uri=store.root, sweep="bench", cpus_per_run=1.0)
    runner = sweep.Runner(ctx, store, args)
    start = time.perf_counter()
    try:
        runner._start()  # Ray's start-up, timed apart from the runs
        if path == "trainer-1":  # the sweep itself uses the trainer only from two workers on
            runner.trainable = sweep.trainer_trainable(ctx, 1, 1.0, 0.0)
        started = time.perf_counter()
        runner.grid("seeds", configs(runs, epochs), 0)
        finished = time.perf_counter()
    finally:
        runner.close()
    rows = store.load().set_index("run_key")
    assert len(rows) == runs and (rows["status"] == "ok").all(), rows["status"].value_counts()
    starts = sorted((float(line.split()[2]), line.split()[0]) for line in log.read_text().splitlines())
    gaps = [b - a - float(rows.loc[key, "total_s"]) for (a, key), (b, _) in zip(starts, starts[1:], strict=False)]
    wall = (finished - started) / runs
    in_run = float(rows["total_s"].mean())
    return {
        "path": path,
        "workers": workers,
        "runs": runs,
        "epochs_per_stage": epochs,
        "ray_start_s": started - start,
        "wall_per_run_s": wall,
        "in_run_s": in_run,
        "overhead_per_run_s": wall - in_run,
        "median_gap_between_runs_s": statistics.median(gaps) if gaps else None,
        "load_average_1min_after": os.getloadavg()[0],
    }


def _provenance() -> dict:
    import ray
    import torch

    from engine.trial import code_version

    cpu = platform.processor() or "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))  # fmt: skip
    except (OSError, StopIteration):
        pass
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_version": torch.__version__,
        "ray_version": ray.__version__,
        "python_version": platform.python_version(),
        "git_describe": code_version(),
        "hostname": platform.node(),
    }


def run(runs: int = 4, epochs: int = 2, paths: tuple[str, ...] = PATHS, output: Path | None = RESULTS) -> dict:
    """Measure every path in a process of its own (a fresh Ray each); write `output` (None: don't) and return it."""
    rows = []
    for path in paths:
        with tempfile.TemporaryDirectory(prefix="bench-trainer-") as storage:
            cmd = [sys.executable, "-m", "bench.trainer_overhead", "--one", path, "--runs", str(runs), "--epochs",
                   str(epochs), "--storage", storage]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parents[1])
            if out.returncode != 0:
                raise RuntimeError(f"bench.trainer_overhead {path} failed:\n{out.stderr[-3000:]}")
            row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{path:<10} wall/run {row['wall_per_run_s']:6.2f} s  in-run {row['in_run_s']:5.2f} s  "
              f"overhead/run {row['overhead_per_run_s']:6.2f} s  Ray start {row['ray_start_s']:5.1f} s  "
              f"load {row['load_average_1min_after']:.1f}", flush=True)  # fmt: skip
    by_path = {r["path"]: r for r in rows}
    result = {"benchmark": "trainer_overhead", "rows": rows, "provenance": _provenance()}
    if "plain" in by_path and "trainer-1" in by_path:
        extra = by_path["trainer-1"]["overhead_per_run_s"] - by_path["plain"]["overhead_per_run_s"]
        result["trainer_extra_per_run_s"] = extra  # what choosing the trainer costs per run, same training
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = output.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(output)
        print(f"wrote {output}")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.trainer_overhead", description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=4, help="runs per path")
    p.add_argument("--epochs", type=int, default=2, help="epochs of each stage per run")
    p.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated subset of {', '.join(PATHS)}")
    p.add_argument("--output", type=Path, default=RESULTS)
    p.add_argument("--one", choices=PATHS, help=argparse.SUPPRESS)  # child process mode: one path, one JSON line
    p.add_argument("--storage", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, args.runs, args.epochs, args.storage)))
        return 0
    paths = tuple(x.strip() for x in args.paths.split(",") if x.strip())
    if not paths or any(x not in PATHS for x in paths):
        p.error(f"--paths takes a comma-separated subset of {', '.join(PATHS)}")
    run(args.runs, args.epochs, paths, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
