"""Speed options leave results alone: bf16 autocast stays within seed noise of fp32, channels_last within rounding
of contiguous, and compiled runs equal eager runs while compiling once per process (engine/compiled.py)."""

import statistics

import pytest
import torch

import engine.compiled as compiled
from engine.training import resolve_memory_format
from engine.trial import TrialSpec, run_key, run_trial

FAST = dict(dataset="digits", ae_epochs=3, oc_epochs=3, batch_size=64, ae_lr=3e-3, oc_lr=1e-3, warmup_epochs=1)
SMOKE = dict(dataset="digits", ae_epochs=20, oc_epochs=20, batch_size=64, ae_lr=3e-3, oc_lr=1e-3, warmup_epochs=5)


@pytest.mark.parametrize("normal_class", [3, 8])  # ~7 s each on 2 cores
def test_bf16_auc_is_within_seed_noise_of_fp32(normal_class):
    seeds = range(4)

    def aucs(precision: str) -> list[float]:
        specs = [TrialSpec(normal_class=normal_class, seed=s, precision=precision, **SMOKE) for s in seeds]
        return [run_trial(spec).row["test_auc"] for spec in specs]

    auc = {p: aucs(p) for p in ("fp32", "bf16")}
    assert auc["fp32"] != auc["bf16"], "bf16 autocast changed nothing: it is not in effect"
    # two standard errors of the difference of the means, with a floor for classes where every seed agrees
    noise = 2 * ((statistics.variance(auc["fp32"]) + statistics.variance(auc["bf16"])) / len(seeds)) ** 0.5
    gap = abs(statistics.mean(auc["bf16"]) - statistics.mean(auc["fp32"]))
    assert gap <= max(noise, 0.01), (auc, gap, noise)


def test_channels_last_changes_only_rounding():
    a = run_trial(TrialSpec(normal_class=2, memory_format="contiguous", **FAST)).row
    b = run_trial(TrialSpec(normal_class=2, memory_format="channels_last", **FAST)).row
    assert a["status"] == b["status"] == "ok"
    assert abs(a["test_auc"] - b["test_auc"]) < 0.01
    assert a["run_key"] == b["run_key"]  # a layout is not part of what the run is
    assert resolve_memory_format("contiguous", torch.device("cuda")) == torch.contiguous_format
    assert resolve_memory_format("channels_last", torch.device("cpu")) == torch.channels_last
    with pytest.raises(ValueError, match="memory format must be one of"):
        run_trial(TrialSpec(memory_format="nhwc", **FAST))


def test_compiled_runs_equal_eager_runs_and_compile_once_per_process(monkeypatch):
    monkeypatch.setattr(compiled, "BACKEND", "aot_eager")  # the real wiring, without building kernels
    compiled.clear_cache()
    torch._dynamo.reset()
    calls = []
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda *a, **k: calls.append(1) or real_compile(*a, **k))
    try:
        # different seeds and layer sets in one process: each compiled run must see its own fresh weights
        for seed, layers in ((0, (0, 3)), (1, (1, 2, 3)), (0, (0, 3))):
            spec = dict(normal_class=1, seed=seed, layers=layers, **FAST)
            eager = run_trial(TrialSpec(**spec)).row
            fast = run_trial(TrialSpec(compile=True, **spec)).row
            assert fast["status"] == "ok" and fast["run_key"] == eager["run_key"]
            assert fast["test_auc"] == pytest.approx(eager["test_auc"], abs=1e-6)
            assert fast["final_radii"] == pytest.approx(eager["final_radii"], abs=1e-5)
        assert len(calls) == 2  # stage 1 forward and stage 2 features, compiled by the first run only
        (cached,) = compiled._CACHE.values()
        assert cached.runs == 3
    finally:
        compiled.clear_cache()
        torch._dynamo.reset()


def test_compile_and_layout_are_not_part_of_the_run_key():
    base = TrialSpec(normal_class=1)
    assert run_key(base) == run_key(TrialSpec(normal_class=1, compile=True, memory_format="channels_last"))


def test_sweep_compile_flag_reaches_every_run_without_changing_its_key():
    from engine.plan import SweepContext, spec_from_config
    from engine.sweep import build_parser

    assert build_parser().parse_args(["digits", "--compile"]).compile
    plain = spec_from_config(SweepContext(dataset="digits", store_uri="", sweep="s"), {"normal_class": 0})
    fast = spec_from_config(SweepContext(dataset="digits", store_uri="", sweep="s", compile=True), {"normal_class": 0})
    assert fast.compile and not plain.compile and run_key(fast) == run_key(plain)
