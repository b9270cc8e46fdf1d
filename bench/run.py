"""`make bench`: training throughput against a bare loop, packing, the sweep's overhead, the demo's wall time, and on a
GPU runs per GPU-hour. Writes bench/results/<name>.json and bench/results/README.md (the tables, also printed).

    python -m bench.run                      # throughput, layouts, packing, sweep overhead (~10 min on 2 cores)
    python -m bench.run --quick              # a smoke pass of every section (numbers meaningless)
    python -m bench.run --demo --compile     # also time `make demo`'s sweep and torch.compile
    python -m bench.run --only overhead --overhead-runs 20

Sections:
  throughput  images/s of stage 1 and 2, engine loop vs bare loop, same model/batch/layout/precision, for
              lenet_cifar10 (batch 256, random 3x32x32 images, 5000 resident) and lenet_digits (the real digits
              split of class 0, batch 64 as the digits budget trains); also the engine loop in the other memory
              layout (what engine.training.AUTO_MEMORY_FORMAT is set from)
  packed      stage-1 images/s of K packed models (engine.models.packed) vs the same K models one after another,
              and whole digits runs trained together (engine.packing.run_packed: K seeds side by side, one stage 1
              for a config and its last-layer twin or for the ablation's layer sets) vs one by one, with AUC gaps
  overhead    N digits runs of ~10 s through engine.sweep vs the same runs in a plain loop (bench.overhead), and N
              tiny runs the same way: the per-run cost of the function-trainable path
  trainer     (--trainer) per-run cost of the plain function trainable vs a TorchTrainer (bench.trainer_overhead)
  demo        (--demo) wall time of `make demo`'s sweep, `python -m engine.sweep digits --name demo --pack 3`
  compile     (--compile) one digits run eager, compiled (first run pays the compile), compiled again
  gpu         only where CUDA is available: throughput at 5000 images/epoch in both layouts and precisions, host
              syncs per epoch, completed CIFAR-10 runs per GPU-hour at the paper budget with 1, 2, 4, 8 concurrent
              runs per GPU and with K packed models (extrapolated from measured per-epoch times)

Measurements on a shared machine are noisy: the bench waits (up to --wait-max-s) for the 1-minute load average
to drop below --wait-load, records the load next to every section, alternates the loops it compares and
reports medians and paired ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from bench import throughput as tp
from bench.provenance import cpu_name

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_LOOP_RATIO = 0.9  # engine loop >= 0.9x the bare loop's images/s
TARGET_SWEEP_OVERHEAD = 0.10  # sweep wall <= 1.1x the plain loop's for ~10 s runs
TARGET_GPU_RUNS_PER_HOUR = 600  # CIFAR-10 runs at the paper budget per GPU-hour


# -- provenance and load -----------------------------------------------------------------------------------------------
def provenance(device: torch.device, precision: str) -> dict:
    from engine.trial import code_version

    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "cpu_cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "precision": precision,
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda or "",
        "python_version": platform.python_version(),
        "git_describe": code_version(),
        "hostname": platform.node(),
    }


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def wait_for_quiet(threshold: float, max_s: float) -> float:
    """Sleep until the 1-minute load average is below `threshold` or `max_s` has passed; returns the load then."""
    deadline = time.monotonic() + max_s
    while load_average() >= threshold and time.monotonic() < deadline:
        print(f"  load average {load_average()} >= {threshold}: waiting 30 s", flush=True)
        time.sleep(30)
    return load_average()


# -- sections ----------------------------------------------------------------------------------------------------------
def section_throughput(device: torch.device, args) -> list[dict]:
    from engine.data import load_split
    from engine.training import resolve_memory_format

    default = resolve_memory_format("auto", device)
    other = torch.contiguous_format if default == torch.channels_last else torch.channels_last
    cifar_n = args.cifar_images or (5000 if device.type == "cuda" else 1280)
    resident = tp.random_split((3, 32, 32), 5000, device)  # CIFAR-10 has 5000 training images per class
    cases = [
        ("lenet_cifar10", dataclasses.replace(resident, x_train=resident.x_train[:cifar_n]), 256,
         args.cifar_epochs or (3 if device.type == "cuda" else 1)),
        ("lenet_digits", load_split("digits", 0).to(device), 64, args.digits_epochs or 100),
    ]  # fmt: skip
    rows = []
    for model, split, batch, epochs in cases:
        print(f"  {model}: {len(split.x_train)} images/epoch, batch {batch}, {epochs} epochs x {args.reps}", flush=True)
        variants = [("ours", default), ("bare", default), ("ours", other)]
        new = tp.loop_comparison(model, split, batch, epochs, args.reps, args.precision, variants)
        for row in new:
            row["load_average"] = load_average()
        rows += new
    return rows


def section_packed(device: torch.device, args) -> list[dict]:
    cases = [("lenet_digits", 4, 64, 20), ("lenet_digits", 8, 64, 20), ("lenet_cifar10", 4, 32, 2)]
    if args.quick:
        cases = [("lenet_digits", 2, 16, 2)]
    rows = []
    for model, k, batch, steps in cases:
        row = tp.packed_vs_sequential(model, k, batch, steps, device, args.reps)
        row["load_average"] = load_average()
        print(f"  {model} K={k}: packed {row['speedup']:.2f}x sequential", flush=True)
        rows.append(row)
    for case, specs in tp.together_cases(device, args.quick):
        row = tp.runs_together_vs_alone(case, specs, 1 if args.quick else args.reps)
        row["load_average"] = load_average()
        print(f"  whole digits runs, {case}: {row['speedup']:.2f}x one by one", flush=True)
        rows.append(row)
    return rows


def _bench_subprocess(cmd: list[str], timeout: float, env: dict | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    env = {**os.environ, **(env or {})}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=RESULTS.parent.parent, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr[-2000:]}")
    return time.perf_counter() - start, out.stdout


def calibrate_epochs(target_s: float) -> tuple[int, float]:
    """Epochs per stage that make one digits run (both stages, smoke budget's batch) last about `target_s` here,
    with one torch thread as the sweep's runs have; returns (epochs, seconds of a 20-epoch run)."""
    from engine.trial import TrialSpec, run_trial

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        spec = TrialSpec(dataset="digits", normal_class=0, ae_epochs=20, oc_epochs=20, batch_size=64, ae_lr=3e-3,
                         oc_lr=1e-3, warmup_epochs=5)  # fmt: skip
        run_trial(spec)  # warm-up: data load, allocator
        t = time.perf_counter()
        run_trial(spec)
        seconds = time.perf_counter() - t
    finally:
        torch.set_num_threads(threads)
    return max(1, round(20 * target_s / seconds)), seconds


def _overhead_pair(runs: int, epochs: int, timeout: float, reps: int = 1) -> dict:
    """Loop and sweep sides, each in a fresh process and store; with reps > 1 in ABBA order (loop, sweep, sweep,
    loop, ...) so that a load that drifts over the measurement weighs on both sides alike. Three measures:
    `overhead` = (sweep wall - loop wall) / loop wall; `overhead_vs_summed_runs` = the sweep's wall over its own runs'
    summed time, one window, so other jobs' load cancels; `overhead_cpu` = extra CPU seconds of the sweep's
    processes (driver, Ray's daemons and worker) over the loop's."""
    sides: dict[str, list[dict]] = {"loop": [], "sweep": []}
    loads: dict[str, list[float]] = {"loop": [], "sweep": []}
    for rep in range(reps):
        for side in ("loop", "sweep") if rep % 2 == 0 else ("sweep", "loop"):
            storage = tempfile.mkdtemp(prefix=f"bench-{side}-")
            try:
                cmd = [sys.executable, "-m", "bench.overhead", "--side", side, "--runs", str(runs), "--epochs",
                       str(epochs), "--storage", storage]  # fmt: skip
                loads[side].append(load_average())
                # Ray starts a 1-CPU worker with OMP_NUM_THREADS=1: the loop gets the same thread environment
                process_s, stdout = _bench_subprocess(cmd, timeout, env={"OMP_NUM_THREADS": "1"})
                sides[side].append({**json.loads(stdout.strip().splitlines()[-1]), "process_s": process_s})
            finally:
                shutil.rmtree(storage, ignore_errors=True)

    def mean(side: str, key: str) -> float:
        return statistics.mean(r[key] for r in sides[side])

    out = {side: {k: mean(side, k) for k, v in rows[0].items() if isinstance(v, int | float)} for side, rows in
           sides.items()}  # fmt: skip
    out.update(reps=reps, each=sides, loop_load_average=loads["loop"], sweep_load_average=loads["sweep"])
    loop, sweep = out["loop"], out["sweep"]
    out["overhead"] = (sweep["wall_s"] - loop["wall_s"]) / loop["wall_s"]
    out["overhead_vs_summed_runs"] = (sweep["wall_s"] - sweep["summed_run_s"]) / sweep["summed_run_s"]
    out["overhead_cpu"] = (sweep["cpu_s"] - loop["cpu_s"]) / loop["cpu_s"]
    out["fixed_s"] = sweep["ray_start_s"] + sweep["first_run_wait_s"] + sweep["ray_shutdown_s"]
    out["per_run_extra_s"] = sweep["between_runs_s"] - loop["between_runs_s"]
    return out


def section_overhead(args) -> dict:
    epochs, seconds = calibrate_epochs(args.run_seconds)
    if args.quick:
        epochs = 2
    print(f"  a 20+20-epoch digits run takes {seconds:.2f} s here: {epochs}+{epochs} epochs for ~{args.run_seconds} s",
          flush=True)  # fmt: skip
    timeout = 60 + 20 * args.overhead_runs * args.run_seconds
    main = _overhead_pair(args.overhead_runs, epochs, timeout, args.overhead_reps)
    print(
        f"  {args.overhead_runs} runs: sweep overhead {main['overhead']:+.1%} (wall vs loop), "
        f"{main['overhead_vs_summed_runs']:+.1%} (vs its runs), {main['overhead_cpu']:+.1%} (CPU)",
        flush=True,
    )
    tiny = _overhead_pair(args.tiny_runs, 1, timeout)
    n = args.tiny_runs
    return {
        "calibration_s_per_20_epochs": seconds,
        "epochs": epochs,
        "runs": args.overhead_runs,
        "main": main,
        "tiny": {**tiny, "runs": n, "per_run_overhead_s": (tiny["sweep"]["wall_s"] - tiny["loop"]["wall_s"]) / n},
        "torch_trainer": "see the trainer section (--trainer) or python -m bench.trainer_overhead",
    }


def section_trainer(args) -> dict:
    """The issue-3 question, plain function trainable vs TorchTrainer per run: bench.trainer_overhead's paths."""
    from bench import trainer_overhead

    load = load_average()
    return {**trainer_overhead.run(runs=args.trainer_runs, epochs=2, output=None), "load_average": load}


def section_demo(args) -> dict:
    storage = tempfile.mkdtemp(prefix="bench-demo-")
    try:
        load = load_average()
        cmd = [sys.executable, "-m", "engine.sweep", "digits", "--name", "demo", "--pack", "3", "--storage", storage,
               "--fresh"]  # `make demo`'s sweep  # fmt: skip
        wall, stdout = _bench_subprocess(cmd, timeout=3600)
        from results import ResultsStore

        runs = ResultsStore(f"{storage}/demo").load()
        return {"command": " ".join(cmd[1:]), "wall_s": wall, "runs": int(len(runs)),
                "summed_run_s": float(runs["total_s"].sum()), "load_average": load}  # fmt: skip
    finally:
        shutil.rmtree(storage, ignore_errors=True)


def section_compile(device: torch.device, args) -> dict:
    """One digits run eager, compiled twice, eager again. Inductor keeps compiled kernels in an on-disk cache
    shared by later processes; a fresh cache folder here makes the first compiled run pay a cold compile."""
    from engine.trial import TrialSpec, run_trial

    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-inductor-")

    fields = dict(dataset="digits", normal_class=0, ae_epochs=20, oc_epochs=20, batch_size=64, ae_lr=3e-3,
                  oc_lr=1e-3, warmup_epochs=5, device=str(device))  # fmt: skip
    out = {"load_average": load_average()}
    for label, compiled in (("eager_s", False), ("compiled_first_s", True), ("compiled_again_s", True),
                            ("eager_again_s", False)):  # fmt: skip
        row = run_trial(TrialSpec(compile=compiled, **fields)).row
        out[label] = row["total_s"]
        out[label.replace("_s", "_train_s")] = row["autoencoder_s"] + row["one_class_s"]
        out[label.replace("_s", "_auc")] = row["test_auc"]
    return out


def section_gpu(device: torch.device, args) -> dict:
    """Throughput in both layouts and precisions, host syncs, runs per GPU-hour (k concurrent, K packed)."""
    from search_spaces import cifar10

    budget = cifar10.BUDGETS["paper"]
    n, batch = (5000, 256) if not args.quick else (64, 32)
    epochs = 3 if not args.quick else 1
    out: dict = {"load_average": load_average()}
    split = tp.random_split((3, 32, 32), n, device)
    out["throughput"] = []
    for precision in ("fp32", "bf16"):
        variants = [("ours", torch.contiguous_format), ("bare", torch.contiguous_format),
                    ("ours", torch.channels_last), ("bare", torch.channels_last)]  # fmt: skip
        out["throughput"] += tp.loop_comparison("lenet_cifar10", split, batch, epochs, args.reps, precision, variants)
    if device.type == "cuda":
        out["host_syncs"] = tp.host_syncs_per_epoch(device, batch)
    best = max((r for r in out["throughput"] if r["loop"] == "ours" and r["stage"] == "autoencoder"),
               key=lambda r: r["images_per_s"])  # fmt: skip
    fmt, precision = best["memory_format"], best["precision"]
    out["concurrent"] = []
    for k in args.gpu_runs_per_device:
        results = tp.concurrent_epoch_times(
            k, str(device), fmt, n=n, batch=batch, epochs=epochs, precision=precision, n_test=10000 if n > 64 else n
        )
        errors = [r["error"] for r in results if "error" in r]
        if errors:
            out["concurrent"].append({"k": k, "error": errors[0]})
            break
        run_s = [budget["ae_epochs"] * r["autoencoder_epoch_s"] + budget["oc_epochs"] * r["one_class_epoch_s"]
                 + r["score_s"] for r in results]  # fmt: skip
        per_hour = sum(3600 / s for s in run_s)
        out["concurrent"].append({"k": k, "memory_format": fmt, "precision": precision, "runs": results,
                                  "run_s": statistics.mean(run_s), "runs_per_gpu_hour": per_hour})  # fmt: skip
        print(f"  {k} concurrent runs: {per_hour:.0f} CIFAR-10 runs per GPU-hour", flush=True)
    out["packed"] = []
    for k in args.gpu_packed:
        mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
        r = tp.packed_epoch_times(k, device, n, batch, epochs, precision, mf, n_test=10000 if n > 64 else n)
        r["run_s"] = (budget["ae_epochs"] * r["autoencoder_epoch_s"] + budget["oc_epochs"] * r["one_class_epoch_s"]
                      + r["score_s"])  # the K runs of the pack, scoring included  # fmt: skip
        r["runs_per_gpu_hour"] = k * 3600 / r["run_s"]
        # the seeds phase trains each config with its last-layer twin: one stage 1 for both (engine/packing.py);
        # the twin's stage 2 is timed as a stage 2 on every layer, an upper bound
        twin_s = r["run_s"] + budget["oc_epochs"] * r["one_class_epoch_s"] + r["score_s"]
        r["runs_per_gpu_hour_with_twin"] = 2 * k * 3600 / twin_s
        out["packed"].append(r)
        print(
            f"  {k} packed models: {r['runs_per_gpu_hour']:.0f} CIFAR-10 runs per GPU-hour, "
            f"{r['runs_per_gpu_hour_with_twin']:.0f} with their last-layer twins on a shared stage 1",
            flush=True,
        )
    out["budget"] = {"ae_epochs": budget["ae_epochs"], "oc_epochs": budget["oc_epochs"], "images_per_epoch": n}
    return out


# -- targets and the markdown table ------------------------------------------------------------------------------------
def targets(result: dict) -> dict:
    out = {}
    rows = result.get("throughput") or []
    ratios = [r["ratio_to_bare"] for r in rows if r["loop"] == "ours" and r.get("ratio_to_bare") is not None]
    if ratios:
        out["loop_vs_bare"] = {"target": f">= {TARGET_LOOP_RATIO}", "worst": min(ratios),
                               "holds": min(ratios) >= TARGET_LOOP_RATIO}  # fmt: skip
    overhead = (result.get("overhead") or {}).get("main")
    if overhead:
        out["sweep_overhead"] = {
            "target": f"<= {TARGET_SWEEP_OVERHEAD:.0%}",
            "measured": overhead["overhead"],
            "holds": overhead["overhead"] <= TARGET_SWEEP_OVERHEAD,
            "vs_summed_runs": overhead["overhead_vs_summed_runs"],
            "cpu": overhead.get("overhead_cpu"),
        }
    gpu = result.get("gpu") or {}
    per_hour = [c["runs_per_gpu_hour"] for c in gpu.get("concurrent", []) + gpu.get("packed", [])
                if "runs_per_gpu_hour" in c]  # fmt: skip
    if per_hour:
        out["gpu_runs_per_hour"] = {"target": f">= {TARGET_GPU_RUNS_PER_HOUR}", "best": max(per_hour),
                                    "holds": max(per_hour) >= TARGET_GPU_RUNS_PER_HOUR}  # fmt: skip
    return out


def _fmt_ratio(value) -> str:
    return f"{value:.2f}x" if isinstance(value, int | float) else ""


def markdown(result: dict) -> str:
    p = result["provenance"]
    lines = [
        f"## {result['name']}",
        "",
        f"{p['date']} · {p['device']} ({p['device_name']}, {p['cpu_cores']} cores) · torch {p['torch_version']} · "
        f"{p['precision']} · {p['threads']} threads · {p['git_describe']} · load average {result['load_average']}",
        "",
    ]
    rows = result.get("throughput") or []
    if rows:
        lines += [
            "| model | stage | loop | layout | images/epoch | images/s | vs bare | img/CPU-s | vs bare (CPU) | load |",
            "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            lines.append(
                f"| {r['model']} | {r['stage']} | {r['loop']} | {r['memory_format']} | {r['images_per_epoch']} | "
                f"{r['images_per_s']:.0f} | {_fmt_ratio(r.get('ratio_to_bare'))} | {r['images_per_cpu_s']:.0f} | "
                f"{_fmt_ratio(r.get('cpu_ratio_to_bare'))} | {r.get('load_average', '')} |"
            )
        lines.append("")
    for r in result.get("packed") or []:
        if "case" in r:
            lines.append(f"- {r['runs']} whole {r['model']} runs ({r['epochs']}+{r['epochs']} epochs), {r['case']}: "
                         f"{r['together_s_per_run']:.2f} s per run vs {r['alone_s_per_run']:.2f} s one by one = "
                         f"{r['speedup']:.2f}x; test AUC gap together vs alone: median {r['median_auc_gap']:.4f}, "
                         f"max {r['max_auc_gap']:.4f} (load {r['load_average']})")  # fmt: skip
            continue
        lines.append(f"- packed {r['model']} K={r['k']} (batch {r['batch_size']} each): "
                     f"{r['packed_images_per_s']:.0f} images/s packed vs {r['sequential_images_per_s']:.0f} "
                     f"sequential = {r['speedup']:.2f}x (load {r['load_average']})")  # fmt: skip
    o = result.get("overhead")
    if o:
        m, t = o["main"], o["tiny"]
        loop, sweep, each = m["loop"], m["sweep"], m["loop"]["summed_run_s"] / o["runs"]
        lines += [
            f"- sweep overhead, {o['runs']} digits runs of {o['epochs']}+{o['epochs']} epochs (~{each:.1f} s each), "
            f"one at a time, {m.get('reps', 1)} pair(s): plain loop {loop['wall_s']:.1f} s, sweep "
            f"{sweep['wall_s']:.1f} s -> {m['overhead']:+.1%} wall vs loop; {m['overhead_vs_summed_runs']:+.1%} over "
            f"the sweep's own summed run time; {m.get('overhead_cpu', math.nan):+.1%} in CPU seconds. Fixed: Ray "
            f"start {sweep['ray_start_s']:.1f} s, wait for the first run {sweep['first_run_wait_s']:.1f} s, shutdown "
            f"{sweep['ray_shutdown_s']:.1f} s; between runs {sweep['between_runs_s'] * 1000:.0f} ms vs "
            f"{loop['between_runs_s'] * 1000:.0f} ms in the loop (load {m['loop_load_average']} / "
            f"{m['sweep_load_average']})",
            f"- plain function trainable, {t['runs']} tiny runs: Tune experiment {t['sweep']['wall_s']:.1f} s vs "
            f"{t['loop']['wall_s']:.1f} s of direct calls = {t['per_run_overhead_s']:.2f} s per run including "
            f"start-up, {t['per_run_extra_s'] * 1000:.0f} ms per run after it",
        ]
    for r in (result.get("trainer") or {}).get("rows", []):
        lines.append(f"- {r['path']} ({r['workers']} worker(s)), {r['runs']} tiny runs: {r['wall_per_run_s']:.1f} s "
                     f"wall per run, {r['overhead_per_run_s']:.1f} s of it overhead, "
                     f"{r['median_gap_between_runs_s']:.2f} s between runs")  # fmt: skip
    d = result.get("demo")
    if d:
        lines.append(f"- `{d['command']}`: {d['wall_s']:.0f} s wall, {d['runs']} runs, {d['summed_run_s']:.0f} s "
                     f"summed run time (load {d['load_average']})")  # fmt: skip
    c = result.get("compile")
    if c:
        lines.append(f"- torch.compile, digits run (20+20 epochs): eager {c['eager_train_s']:.2f} s training, compiled "
                     f"first run {c['compiled_first_train_s']:.1f} s (pays the compile), compiled again "
                     f"{c['compiled_again_train_s']:.2f} s, eager again {c['eager_again_train_s']:.2f} s")  # fmt: skip
    g = result.get("gpu")
    if isinstance(g, dict) and "skipped" in g:
        lines.append(f"- GPU section: {g['skipped']}")
    elif g:
        for c in g["concurrent"] + g["packed"]:
            if "runs_per_gpu_hour" in c:
                what = f"{c['k']} concurrent runs" if "runs" in c else f"{c['k']} packed models"
                twin = c.get("runs_per_gpu_hour_with_twin")
                twin = f" ({twin:.0f} with their last-layer twins sharing stage 1)" if twin else ""
                lines.append(
                    f"- GPU, {what}: {c['runs_per_gpu_hour']:.0f} CIFAR-10 runs per GPU-hour at the paper budget{twin}"
                )
        if "host_syncs" in g:
            lines.append(
                f"- GPU host syncs in one epoch of {g['host_syncs']['steps_per_epoch']} steps: {g['host_syncs']}"
            )
    for name, t in result.get("targets", {}).items():
        shown = {k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in t.items()}
        lines.append(f"- target {name}: {shown}")
    return "\n".join(lines) + "\n"


def write_readme() -> Path:
    """bench/results/README.md: the table of every bench.run result file here."""
    parts = [
        "# Benchmark results (`make bench` = `python -m bench.run`)",
        "",
        "Regenerated from the JSON files in this folder; each section says where and when it was measured.",
        "",
    ]
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        if data.get("bench") == "bench.run":
            parts.append(markdown(data))
    readme = RESULTS / "README.md"
    readme.write_text("\n".join(parts))
    return readme


# -- command line ------------------------------------------------------------------------------------------------------
SECTIONS = ("throughput", "packed", "overhead", "trainer", "demo", "compile", "gpu")


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    p.add_argument("--name", help="result file name (default: <device>-<precision>[-quick])")
    p.add_argument("--device", default="cpu", help="device of the throughput and packing sections (cpu or cuda)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--threads", type=int, help="torch threads (default: torch's, i.e. the cores)")
    p.add_argument("--reps", type=int, default=3, help="alternating repetitions of every comparison")
    p.add_argument("--only", help=f"comma-separated sections to run, of {', '.join(SECTIONS)}")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that every section runs")
    p.add_argument("--demo", action="store_true", help="also time the demo sweep (minutes)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile on a digits run")
    p.add_argument("--trainer", action="store_true", help="also time the TorchTrainer path (bench.trainer_overhead)")
    p.add_argument("--trainer-runs", type=int, default=4, help="tiny runs per path of the trainer section")
    p.add_argument("--cifar-images", type=int, help="CIFAR images per epoch (default 5000 on a GPU, 1280 on a CPU)")
    p.add_argument("--cifar-epochs", type=int, help="epochs per CIFAR measurement (default 3 on a GPU, 1 on a CPU)")
    p.add_argument("--digits-epochs", type=int, help="epochs per digits measurement (default 100)")
    p.add_argument("--overhead-runs", type=int, default=20, help="runs of ~--run-seconds each, sweep vs loop")
    p.add_argument("--run-seconds", type=float, default=10.0, help="target length of one overhead run")
    p.add_argument("--overhead-reps", type=int, default=1, help="loop/sweep pairs, in ABBA order when > 1")
    p.add_argument("--tiny-runs", type=int, default=10, help="1-epoch runs for the per-run overhead")
    p.add_argument("--gpu-device", default="cuda", help="device of the GPU section (runs only if available)")
    p.add_argument("--gpu-runs-per-device", type=_ints, default=[1, 2, 4, 8], help="concurrent runs per GPU")
    p.add_argument("--gpu-packed", type=_ints, default=[4, 8], help="models packed into one process")
    p.add_argument("--wait-load", type=float, default=2.0, help="wait for the 1-minute load average to drop below")
    p.add_argument("--wait-max-s", type=float, default=600, help="longest wait for a quiet machine")
    return p


def _device_available(name: str) -> bool:
    return name == "cpu" or (name.startswith("cuda") and torch.cuda.is_available())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sections = _ints_or_names(args)
    if args.quick:
        args.reps, args.cifar_images, args.cifar_epochs, args.digits_epochs = 1, 64, 1, 2
        args.overhead_runs, args.tiny_runs, args.run_seconds = 2, 2, 1.0
        args.gpu_runs_per_device, args.gpu_packed = [1, 2], [2]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = args.name or f"{device.type}-{args.precision}" + ("-quick" if args.quick else "")
    print(f"bench {name}: waiting for load average < {args.wait_load} (now {load_average()})", flush=True)
    result: dict = {"bench": "bench.run", "name": name, "load_average": wait_for_quiet(args.wait_load, args.wait_max_s),
                    "provenance": provenance(device, args.precision), "sections": sections}  # fmt: skip
    steps = {
        "throughput": lambda: section_throughput(device, args),
        "packed": lambda: section_packed(device, args),
        "overhead": lambda: section_overhead(args),
        "trainer": lambda: section_trainer(args),
        "demo": lambda: section_demo(args),
        "compile": lambda: section_compile(device, args),
        "gpu": lambda: (
            section_gpu(torch.device(args.gpu_device), args)
            if _device_available(args.gpu_device)
            else {"skipped": f"no {args.gpu_device} device here (torch.cuda.is_available() is False)"}
        ),
    }
    for section in sections:
        print(f"[{section}] load average {load_average()}", flush=True)
        start = time.perf_counter()
        result[section] = steps[section]()
        print(f"[{section}] {time.perf_counter() - start:.0f} s", flush=True)
    result["load_average_end"] = load_average()
    result["targets"] = targets(result)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    readme = write_readme()
    print()
    print(markdown(result))
    print(f"wrote {path} and {readme}")
    return 0


def _ints_or_names(args) -> list[str]:
    if args.only:
        chosen = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = set(chosen) - set(SECTIONS)
        if unknown:
            raise SystemExit(
                f"error: unknown section(s) {', '.join(sorted(unknown))}: choose from {', '.join(SECTIONS)}"
            )
        return chosen
    chosen = ["throughput", "packed", "overhead"]
    chosen += ["trainer"] * args.trainer + ["demo"] * args.demo + ["compile"] * args.compile
    return chosen + ["gpu"]


if __name__ == "__main__":
    sys.exit(main())
