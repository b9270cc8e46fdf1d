"""K packed LeNet autoencoders behave exactly like K separate ones: outputs, features, gradients, BatchNorm
statistics and an Adam step (engine/models/packed.py); K runs trained as one pack are the K runs trained one by
one, and a diverging model leaves its neighbours untouched (engine/packing.py)."""

import numpy as np
import pytest
import torch

from engine.models import create_model
from engine.models.packed import pack, pack_inputs, unpack, unpack_outputs
from engine.packing import packing_problem, run_packed, sharing_problem
from engine.trial import BASELINES, TrialSpec, run_trial

K = 3
TOL = dict(rtol=1e-5, atol=1e-5)


def _separate(name: str) -> list:
    models = []
    for seed in range(K):  # separately initialised: different weights per model
        torch.manual_seed(seed)
        models.append(create_model(name))
    return models


def _inputs(model, batch: int = 5) -> torch.Tensor:
    enc = model.encoder
    side = enc.final_size * 2 ** len(enc.convs)
    return torch.rand(K, batch, enc.convs[0].in_channels, side, side, generator=torch.Generator().manual_seed(7))


def _losses(reconstruction: torch.Tensor, x: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
    """A per-model loss touching the reconstruction and every layer: (B, C, H, W), list of (B, D) -> scalar."""
    loss = ((reconstruction - x) ** 2).flatten(1).sum(1).mean()
    return loss + sum(((f - 0.1) ** 2).sum(1).mean() for f in features)


@pytest.mark.parametrize("name", ["lenet_digits", "lenet_cifar10"])
def test_packed_matches_separate_models(name):
    models = _separate(name)
    packed = pack(models)
    assert packed.k == K and not torch.equal(models[0].encoder.fc.weight, models[1].encoder.fc.weight)
    xs = _inputs(models[0])  # (K, B, C, H, W): every model gets its own batch
    layers = tuple(range(models[0].encoder.num_layers))

    # train mode: BatchNorm normalises with batch statistics and updates its running statistics
    sep_out = [m(x) for m, x in zip(models, xs, strict=True)]
    sep_feats = [m.encoder.features(x, layers) for m, x in zip(models, xs, strict=True)]
    packed_in = pack_inputs(xs)
    packed_out = unpack_outputs(packed(packed_in), K)  # (K, B, C, H, W)
    packed_feats = packed.encoder.features(packed_in, layers)  # list of (B, K, D)
    for k in range(K):
        torch.testing.assert_close(packed_out[k], sep_out[k], **TOL)
        for layer in layers:
            torch.testing.assert_close(packed_feats[layer][:, k], sep_feats[k][layer], **TOL)

    # gradients: the sum of per-model losses gives every model the gradient of its own loss
    for m in models:
        m.zero_grad()
    for m, x in zip(models, xs, strict=True):
        _losses(m(x), x, m.encoder.features(x, layers)).backward()
    packed.zero_grad()
    rec = unpack_outputs(packed(packed_in), K)
    feats = packed.encoder.features(packed_in, layers)
    sum(_losses(rec[k], xs[k], [f[:, k] for f in feats]) for k in range(K)).backward()
    grads = {n: p.grad for n, p in packed.named_parameters()}
    for k, m in enumerate(models):
        for n, p in m.named_parameters():
            g = grads[n][k] if n == "encoder.fc.weight" else grads[n].chunk(K)[k]
            # float32 sums over B*H*W terms in another order: agree to ~1e-5 of the gradient's scale
            scale = float(p.grad.abs().max())
            torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-4 * scale, msg=f"gradient of {n}, model {k}")

    # running statistics are kept per model: unpacking gives back each model's own state
    for k, m in enumerate(models):
        back = unpack(packed, k)
        for n, value in m.state_dict().items():
            torch.testing.assert_close(back.state_dict()[n], value, **TOL, msg=f"{n}, model {k}")

    # eval mode (running statistics) agrees too
    packed.eval()
    for m in models:
        m.eval()
    out = unpack_outputs(packed(packed_in), K)
    for k, m in enumerate(models):
        torch.testing.assert_close(out[k], m(xs[k]), **TOL)


def test_one_adam_step_on_the_packed_model_is_k_separate_steps():
    models = _separate("lenet_digits")
    packed = pack(models)
    xs = _inputs(models[0], batch=8)
    opts = [torch.optim.Adam(m.parameters(), lr=1e-2, weight_decay=1e-3) for m in models]
    for m, opt, x in zip(models, opts, xs, strict=True):
        ((m(x) - x) ** 2).flatten(1).sum(1).mean().backward()
        opt.step()
    opt = torch.optim.Adam(packed.parameters(), lr=1e-2, weight_decay=1e-3)
    rec = unpack_outputs(packed(pack_inputs(xs)), K)
    ((rec - xs) ** 2).flatten(2).sum(2).mean(1).sum().backward()  # sum over models of each model's mean loss
    opt.step()
    for k, m in enumerate(models):
        back = unpack(packed, k)
        for n, value in m.state_dict().items():
            torch.testing.assert_close(back.state_dict()[n], value, **TOL, msg=f"{n}, model {k}")


def test_packing_models_of_different_architectures_is_refused():
    with pytest.raises(ValueError, match="one architecture"):
        pack([create_model("lenet_digits"), create_model("lenet_digits", code_size=16)])


# -- whole runs: engine/packing.py -----------------------------------------------------------------------------------
RUN = dict(dataset="digits", normal_class=3, ae_epochs=3, oc_epochs=3, batch_size=64, ae_lr=3e-3, oc_lr=1e-3,
           warmup_epochs=1, boundary="soft", layers=(1, 3))  # fmt: skip


def _specs(**changes) -> list[TrialSpec]:
    return [TrialSpec(**{**RUN, **changes}, seed=s) for s in (0, 1, 2)]


def test_packed_runs_are_the_runs_trained_one_by_one():
    specs = _specs()
    alone = [run_trial(s) for s in specs]
    packed = run_packed(specs)
    assert len({r.row["test_auc"] for r in alone}) == K  # the seeds differ, so the check below can fail
    for a, p in zip(alone, packed, strict=True):
        assert p.row["run_key"] == a.row["run_key"] and p.row["status"] == a.row["status"] == "ok"
        assert p.row["pack_size"] == K and a.row["pack_size"] == 1
        # same weights, batches and steps; only float rounding of grouped kernels differs
        assert p.row["test_auc"] == pytest.approx(a.row["test_auc"], abs=1e-3)
        assert p.row["val_auc"] == pytest.approx(a.row["val_auc"], abs=1e-3)
        np.testing.assert_allclose(p.row["final_radii"], a.row["final_radii"], rtol=1e-3)
        np.testing.assert_allclose(p.curves["loss"], a.curves["loss"], rtol=1e-3)
        np.testing.assert_allclose(p.scores["score"], a.scores["score"], rtol=1e-3, atol=1e-4)
        assert set(p.curves["run_key"]) == set(p.scores["run_key"]) == {a.row["run_key"]}


def test_a_diverging_model_leaves_the_rest_of_its_pack_untouched(monkeypatch):
    import engine.packing as packing

    clean = run_packed(_specs())

    packs = []

    def pack_with_a_broken_model(models):  # the first pack is stage 1's: break its model 1
        if not packs:
            with torch.no_grad():
                models[1].encoder.convs[0].weight.fill_(float("nan"))
        packs.append(len(models))
        return pack(models)

    monkeypatch.setattr(packing, "pack", pack_with_a_broken_model)
    broken = run_packed(_specs())
    assert broken[1].row["status"] == "diverged" and "autoencoder loss became nan" in broken[1].row["error"]
    assert packs == [3, 2]  # stage 2 trains the two survivors only
    for k in (0, 2):  # NaN in model 1's channels never reaches its neighbours: stage 1 is bit for bit the clean one
        assert broken[k].row["status"] == "ok" and broken[k].row["pack_size"] == 2
        np.testing.assert_array_equal(
            broken[k].curves.query("stage == 'autoencoder'")["loss"],
            clean[k].curves.query("stage == 'autoencoder'")["loss"],
        )
        # stage 2 packs 2 models instead of 3: grouped kernels of another width round differently
        assert broken[k].row["test_auc"] == pytest.approx(clean[k].row["test_auc"], abs=1e-4)
        np.testing.assert_allclose(broken[k].scores["score"], clean[k].scores["score"], rtol=1e-5, atol=1e-5)


def test_a_pack_of_diverging_models_is_all_diverged(monkeypatch):
    import engine.training as training

    monkeypatch.setattr(training, "reconstruction_losses", lambda rec, x, k: (rec * float("nan")).sum() * torch.ones(k))
    rows = [r.row for r in run_packed(_specs())]
    assert [r["status"] for r in rows] == ["diverged"] * K


def test_what_cannot_be_trained_together_says_why():
    assert "baseline" in packing_problem(TrialSpec(method="ocsvm"))
    assert "only the LeNet models" in packing_problem(TrialSpec(dataset="mvtec"))
    assert sharing_problem(TrialSpec(dataset="mvtec")) is None  # MVTec's runs share stage 1, one seed at a time
    assert "end to end" in sharing_problem(TrialSpec(dataset="shanghaitech"))
    assert "--compile" in packing_problem(TrialSpec(compile=True))
    assert packing_problem(TrialSpec(dataset="cifar10")) is None
    with pytest.raises(ValueError, match="stage-2 ones"):  # a stage-1 setting differs
        run_packed([TrialSpec(**RUN, seed=0), TrialSpec(**{**RUN, "ae_lr": 0.1}, seed=1)])
    with pytest.raises(ValueError, match="appears twice"):
        run_packed([TrialSpec(**RUN, seed=0), TrialSpec(**RUN, seed=0)])


def test_runs_sharing_stage1_are_exactly_their_lone_twins():
    """A configuration, its last-layer twin and a hard-boundary variant train one autoencoder: each run's stage 2
    starts from it and from the generator state it left, as the run alone would, so on a CPU nothing differs."""
    specs = [TrialSpec(**RUN, seed=4), TrialSpec(**{**RUN, "layers": (3,)}, seed=4),
             TrialSpec(**{**RUN, "boundary": "hard", "oc_lr": 3e-3, "nu": 0.05}, seed=4)]  # fmt: skip
    together = run_packed(specs)
    for spec, t in zip(specs, together, strict=True):
        alone = run_trial(spec)
        assert t.row["run_key"] == alone.row["run_key"] and t.row["status"] == "ok"
        assert t.row["stage1_shared_by"] == 3 and t.row["pack_size"] == 1 and alone.row["stage1_shared_by"] == 1
        assert t.row["test_auc"] == alone.row["test_auc"] and t.row["final_radii"] == alone.row["final_radii"]
        np.testing.assert_array_equal(t.scores["score"], alone.scores["score"])
        np.testing.assert_array_equal(t.curves["loss"], alone.curves["loss"])
    assert len({t.row["test_auc"] for t in together}) == 3  # three different runs, not one copied
    assert len({t.row["autoencoder_s"] for t in together}) == 1  # one stage 1, timed once
    for t in together:
        row = t.row
        assert row["total_s"] == pytest.approx(
            row["data_s"] + row["autoencoder_s"] + row["one_class_s"] + row["score_s"]
        )


def test_seeds_side_by_side_and_one_stage1_for_two_configurations():
    specs = [TrialSpec(**{**RUN, "layers": layers}, seed=seed) for layers in ((1, 3), (3,)) for seed in (0, 1, 2)]
    specs = specs[:5]  # the last-layer twin without seed 2: a configuration may miss a seed
    together = run_packed(specs)
    for spec, t in zip(specs, together, strict=True):
        alone = run_trial(spec)
        assert t.row["run_key"] == alone.row["run_key"] and t.row["stage1_shared_by"] == 5
        assert t.row["pack_size"] == (3 if spec.layers == (1, 3) else 2)
        assert t.row["test_auc"] == pytest.approx(alone.row["test_auc"], abs=1e-3)
        np.testing.assert_allclose(t.curves["loss"], alone.curves["loss"], rtol=1e-3)


def test_a_packed_feed_gives_each_model_its_own_runs_batches_and_augmentation():
    from engine.data.base import OneClassSplit
    from engine.training import Feed, batch_indices, training_batch

    x = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(40, dtype=torch.int64)

    def jitter(batch, generator):  # an augmentation that draws from the run's generator
        return batch + torch.rand(batch.shape, generator=generator)

    split = OneClassSplit("t", 0, "t", x_train=x, x_val=x[:2], y_val=y[:2], x_test=x, y_test=y, train_transform=jitter)
    seeds = (3, 4, 5)
    feed = Feed.packed_models([torch.Generator().manual_seed(s) for s in seeds])
    feed.start_stage()
    packed = [unpack_outputs(feed.batch(split, idx), K) for idx in feed.epoch(len(x), 16, torch.device("cpu"))]
    for k, seed in enumerate(seeds):  # what run k alone draws from its own generator, in the same order
        gen = torch.Generator().manual_seed(seed)
        alone = [training_batch(split, idx, gen) for idx in batch_indices(len(x), 16, gen, torch.device("cpu"))]
        assert len(alone) == len(packed)
        for a, p in zip(alone, packed, strict=True):
            torch.testing.assert_close(p[k], a)


def test_a_phase_is_cut_into_trials_of_runs_trained_together_each_run_once():
    from engine.plan import SweepContext, packed_plan, seeds_plan, spec_from_config
    from engine.trial import config_key, stage1_key

    ctx = SweepContext(dataset="digits", store_uri="unused", sweep="t")
    # no selections: both boundaries and their last-layer twins train the same autoencoder per class and seed
    plan = seeds_plan("digits", [0, 1], ["soft", "hard"], [0, 1, 2, 3, 4], {})
    for share, key in ((True, stage1_key), (False, config_key)):
        trials = packed_plan(ctx, plan, 2, share=share)
        runs = [c for t in trials for c in t.get("pack", [t])]
        assert sorted(map(str, runs)) == sorted(map(str, plan))  # every run once, none added
        packs = [t["pack"] for t in trials if "pack" in t]
        for p in packs:  # what trains together shares the key, at most 2 seeds side by side, never a baseline
            assert len({key(spec_from_config(ctx, c)) for c in p}) == 1 and len({c["seed"] for c in p}) <= 2
            assert all(c.get("method", "mocca") == "mocca" for c in p)
        assert sum(t.get("method") in BASELINES for t in trials) == 2 * len(BASELINES) * 5  # each alone
        if share:  # per class: seeds {0, 1}, {2, 3}, {4}, each with the 4 configurations
            assert sorted(len(p) for p in packs) == [4, 4] + [8] * 4
        else:  # per configuration: seeds {0, 1}, {2, 3}; seed 4 alone
            assert len(packs) == 2 * 4 * 2 and all(len(p) == 2 for p in packs)  # classes x configurations x 2
    assert packed_plan(ctx, plan, 1, share=False) == plan


def test_a_group_stores_each_run_when_done_so_a_crash_midway_keeps_the_finished_ones(tmp_path, monkeypatch):
    import engine.packing as packing
    from engine.plan import SweepContext, run_pack_and_store
    from results import ResultsStore

    ctx = SweepContext(dataset="digits", store_uri=str(tmp_path / "s"), sweep="t")
    configs = [{"normal_class": 0, "seed": seed, "layers": layers, "mode": "seeds"}
               for layers in ("0,1,2,3", "3") for seed in (0, 1)]  # fmt: skip
    real, calls = packing.train_one_class_models, []

    def second_configuration_crashes(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return real(*args, **kwargs)

    monkeypatch.setattr(packing, "train_one_class_models", second_configuration_crashes)
    out = run_pack_and_store(configs, ctx)
    assert [row["status"] for row, _ in out] == ["ok", "ok", "failed", "failed"]
    assert "out of memory" in out[2][0]["error"] and all(trained for _, trained in out)
    runs = ResultsStore(ctx.store_uri).load().set_index("run_key")
    assert len(runs) == 4 and runs.loc[out[0][0]["run_key"], "stage1_shared_by"] == 4
    # run again: the stored runs are not trained again
    monkeypatch.setattr(packing, "train_one_class_models", real)
    assert [trained for _, trained in run_pack_and_store(configs, ctx)] == [False] * 4


def test_groups_split_by_configuration_until_every_run_slot_has_a_trial():
    from engine.plan import SweepContext, ablation_plan, packed_plan, spec_from_config
    from engine.trial import config_key, stage1_key

    ctx = SweepContext(dataset="digits", store_uri="unused", sweep="t")
    plan = ablation_plan("digits", [3], ["soft", "hard"], [0, 1], {})  # 15 layer sets x 2 boundaries x 2 seeds
    whole = packed_plan(ctx, plan, 2)
    assert len(whole) == 1  # one autoencoder per seed, both seeds side by side: one trial of all 60 runs
    for slots in (4, 7, 100):
        trials = packed_plan(ctx, plan, 2, min_trials=slots)
        assert len(trials) == min(slots, 30)  # at most one trial per configuration
        runs = [c for t in trials for c in t.get("pack", [t])]
        assert sorted(map(str, runs)) == sorted(map(str, plan))
        seeds_of = {}
        for t in trials:
            members = t.get("pack", [t])
            assert len({stage1_key(spec_from_config(ctx, c)) for c in members}) == 1
            for c in members:  # a configuration's seeds stay side by side in one trial: no run changes
                seeds_of.setdefault(config_key(spec_from_config(ctx, c)), set()).add(id(t))
        assert all(len(ids) == 1 for ids in seeds_of.values())
