"""The two stages and one run end to end on the real digits data."""

import time

import pytest
import torch

import engine.trial as trial_module
from engine.data import load_split
from engine.models import create_model
from engine.training import StageConfig, batch_indices, train_autoencoder, train_one_class
from engine.trial import TrialSpec, run_key, run_trial

FAST = dict(dataset="digits", ae_epochs=3, oc_epochs=3, batch_size=64, ae_lr=3e-3, oc_lr=1e-3, warmup_epochs=1)


def test_stage_two_starts_from_stage_one_encoder_in_train_mode(monkeypatch):
    seen = {}
    real_ae, real_oc = trial_module.train_autoencoder, trial_module.train_one_class

    def spy_ae(model, *args, **kwargs):
        curves = real_ae(model, *args, **kwargs)
        seen["after_stage1"] = {k: v.clone() for k, v in model.encoder.state_dict().items()}
        return curves

    def spy_oc(encoder, *args, **kwargs):
        seen["at_stage2"] = {k: v.clone() for k, v in encoder.state_dict().items()}
        modes = []
        hook = encoder.norms[0].register_forward_pre_hook(lambda m, _: modes.append(m.training))
        state = real_oc(encoder, *args, **kwargs)
        hook.remove()
        seen["modes"] = modes
        seen["bn_batches"] = int(encoder.norms[0].num_batches_tracked)
        return state

    monkeypatch.setattr(trial_module, "train_autoencoder", spy_ae)
    monkeypatch.setattr(trial_module, "train_one_class", spy_oc)
    result = run_trial(TrialSpec(normal_class=1, **FAST))
    assert result.row["status"] == "ok"
    assert seen["after_stage1"].keys() == seen["at_stage2"].keys()
    for key, value in seen["after_stage1"].items():
        assert torch.equal(value, seen["at_stage2"][key]), key
    # a pretrained encoder has non-trivial BN statistics (the reference's bug left them at 0/1)
    assert seen["at_stage2"]["norms.0.running_var"].ne(1).any()
    # centroids are computed in eval mode, then every training step runs BatchNorm in train mode
    assert seen["modes"][0] is False and any(seen["modes"]) and seen["modes"][-1] is True
    assert seen["bn_batches"] > int(seen["at_stage2"]["norms.0.num_batches_tracked"])


def test_same_seed_same_result_other_seed_differs():
    a = run_trial(TrialSpec(normal_class=2, seed=5, **FAST)).row
    b = run_trial(TrialSpec(normal_class=2, seed=5, **FAST)).row
    c = run_trial(TrialSpec(normal_class=2, seed=6, **FAST)).row
    assert a["test_auc"] == b["test_auc"] and a["layer_test_auc"] == b["layer_test_auc"]
    assert a["run_key"] == b["run_key"] != c["run_key"]
    assert a["test_auc"] != c["test_auc"]


def test_digits_class0_reaches_auc_09_within_a_minute():
    start = time.perf_counter()
    spec = TrialSpec(dataset="digits", normal_class=0, ae_epochs=20, oc_epochs=20, batch_size=64, ae_lr=3e-3,
                     oc_lr=1e-3, warmup_epochs=5)  # fmt: skip
    row = run_trial(spec).row
    assert time.perf_counter() - start < 60
    assert row["status"] == "ok" and row["test_auc"] >= 0.9, row["test_auc"]
    assert len(row["layer_test_auc"]) == 4 and row["n_train"] > 100


def test_soft_boundary_updates_radii_after_warmup_only():
    split = load_split("digits", 4)
    torch.manual_seed(0)
    ae = create_model("lenet_digits")
    gen = torch.Generator().manual_seed(0)
    cfg = StageConfig(epochs=3, lr=1e-3, batch_size=64)
    train_autoencoder(ae, split, StageConfig(epochs=1, lr=1e-3, batch_size=64), gen)
    state = train_one_class(ae.encoder, split, (1, 3), "soft", 0.1, cfg, gen, warmup_epochs=2)
    radii = [[row[f"radius_{k}"] for k in (1, 3)] for row in state.curves]
    assert radii[0] == [0.0, 0.0] and radii[1] == [0.0, 0.0]
    assert all(r > 0 for r in radii[2])
    hard = train_one_class(ae.encoder, split, (3,), "hard", 0.1, cfg, gen, warmup_epochs=0)
    assert hard.radii.tolist() == [0.0]


def test_nan_loss_is_diverged_and_recorded(monkeypatch):
    import engine.training as training

    monkeypatch.setattr(training, "reconstruction_losses", lambda rec, x, k: (rec * float("nan")).sum().reshape(1))
    row = run_trial(TrialSpec(normal_class=0, **FAST)).row
    assert row["status"] == "diverged" and "autoencoder loss became nan" in row["error"]


def test_batches_cover_every_sample_once_and_never_leave_a_single():
    gen = torch.Generator().manual_seed(0)
    batches = batch_indices(129, 64, gen, torch.device("cpu"))
    assert [len(b) for b in batches] == [64, 64]  # the trailing batch of one is dropped
    assert len(torch.cat(batches).unique()) == 128
    assert sorted(torch.cat(batch_indices(130, 64, gen, torch.device("cpu"))).tolist()) == list(range(130))


def test_run_key_ignores_location_and_device_but_not_settings():
    base = TrialSpec(normal_class=1)
    assert run_key(base) == run_key(TrialSpec(normal_class=1, data_root="/x", device="cpu"))
    assert run_key(base) == run_key(TrialSpec(normal_class=1, layers=(0, 1, 2, 3)))  # None = all layers
    assert run_key(base) != run_key(TrialSpec(normal_class=1, nu=0.05))
    # baselines ignore deep-model settings
    assert run_key(TrialSpec(method="ocsvm", ae_lr=1)) == run_key(TrialSpec(method="ocsvm", ae_lr=2))


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(nu=0.0), "nu must lie in"),
        (dict(nu=1.5), "nu must lie in"),
        (dict(layers=(0, 4)), "layers must be distinct indices in 0..3"),
        (dict(boundary="round"), "boundary must be one of"),
        (dict(normal_class=10), "out of range"),
    ],
)
def test_bad_specs_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        run_trial(TrialSpec(**{**FAST, **bad}))


def test_clear_caches_drops_decoded_data():
    import engine.data.digits as digits
    from engine.data import clear_caches

    load_split("digits", 1)
    assert digits._raw.cache_info().currsize == 1
    clear_caches()
    assert digits._raw.cache_info().currsize == 0
